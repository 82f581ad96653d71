//! Checks shared by several targets.
#![allow(dead_code)]

use event_gateway::event::{Event, EventId};
use event_gateway::settings::AuthSettings;

/// The envelope size limit the targets use (the gateway's default is of this order).
pub const MAX_BYTES: usize = 65536;

pub const SECRET: &str = "fuzz-secret-do-not-use-0123456789";
pub const MAX_ORGS: usize = 64;

/// HS256, a fixed secret, leeway 30, no issuer/audience/JWKS/public key.
pub fn auth_settings() -> AuthSettings {
    AuthSettings {
        jwt_secret: SECRET.into(),
        public_key_pem: String::new(),
        jwks_path: String::new(),
        algorithms: Vec::new(),
        issuer: String::new(),
        audience: String::new(),
        leeway_secs: 30,
        cookie_name: "access_token".into(),
    }
}

/// The SSE frame of `event` is exactly one event block: an `id:` line when the event has an id,
/// then `event:` and `data:`, nothing else, and `data:` carries `data` verbatim.
pub fn check_frame(event: &Event, event_type: &str, data: &str) {
    let frame = event.frame();
    let text = std::str::from_utf8(frame).expect("frame is UTF-8");
    assert!(!text.contains('\r'), "frame contains CR: {text:?}");
    let blocks: Vec<&str> = text.split("\n\n").collect();
    assert_eq!(blocks.len(), 2, "frame is not exactly one event block: {text:?}");
    assert_eq!(blocks[1], "", "text after the event block: {text:?}");
    let mut lines = blocks[0].split('\n');
    if let Some(id) = event.id {
        assert_eq!(
            lines.next(),
            Some(format!("id: {id}").as_str()),
            "id line: {text:?}"
        );
    }
    assert_eq!(
        lines.next(),
        Some(format!("event: {event_type}").as_str()),
        "event line: {text:?}"
    );
    let data_line = lines.next().expect("data line");
    assert_eq!(
        data_line.strip_prefix("data: "),
        Some(data),
        "data line: {text:?}"
    );
    assert_eq!(lines.next(), None, "extra line in frame: {text:?}");
    let without_id = event.frame_without_id();
    let expected = format!("event: {event_type}\ndata: {data}\n\n");
    assert_eq!(&without_id[..], expected.as_bytes(), "frame_without_id");
}

/// `EventId`'s display parses back to the same id.
pub fn check_id_round_trip(id: EventId) {
    let shown = id.to_string();
    assert_eq!(shown.parse::<EventId>(), Ok(id), "{shown:?} does not parse back");
}

/// The verifier every JWT target uses.
pub fn verifier() -> event_gateway::auth::JwtVerifier {
    let secret = secrecy::SecretString::from(SECRET);
    event_gateway::auth::JwtVerifier::new(&auth_settings(), Some(&secret), MAX_ORGS).expect("verifier builds")
}

/// What every verified token's claims must satisfy.
pub fn check_claims(claims: &event_gateway::auth::Claims) {
    assert!(!claims.sub.is_empty() && !claims.role.is_empty(), "{claims:?}");
    assert!(
        !claims.orgs.is_empty() && claims.orgs.len() <= MAX_ORGS,
        "{claims:?}"
    );
    for (i, org) in claims.orgs.iter().enumerate() {
        assert!(!claims.orgs[..i].contains(org), "duplicate org: {claims:?}");
    }
    assert!(claims.tenant_id.as_deref() != Some(""), "{claims:?}");
    assert!(claims.contractor_id.as_deref() != Some(""), "{claims:?}");
}
