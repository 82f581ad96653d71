//! SECURITY: `redact_query` (the access log's view of a query string). For any query string,
//! decoding the redacted text the way the gateway reads queries (`serde_urlencoded`) yields no
//! `access_token` pair whose value is non-empty and not `REDACTED`: no spelling of the key
//! (percent-encoding, ...) lets the token reach the logs.
#![no_main]

use event_gateway::auth::redact_query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|query: &str| {
    let redacted = redact_query(query);
    let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(&redacted) else {
        return;
    };
    for (key, value) in &pairs {
        assert!(
            !(key == "access_token" && !value.is_empty() && value != "REDACTED"),
            "token survives redaction: query {query:?} -> logged {redacted:?} -> access_token={value:?}"
        );
    }
});
