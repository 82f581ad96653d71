//! `EventsQuery::parse`: the query string of `GET /api/events` (`types`, `since`, `lastEventId`,
//! anything else ignored), on arbitrary text. Never panics; a query it accepts has `types`
//! values that `TypeFilter::parse` accepts.
#![no_main]

use event_gateway::policy::TypeFilter;
use event_gateway::routes::EventsQuery;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|query: &str| {
    let parsed = EventsQuery::parse(query);
    if parsed.is_ok() {
        if let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) {
            for (key, value) in pairs {
                if key == "types" {
                    assert!(TypeFilter::parse(&value).is_ok(), "accepted types={value:?}");
                }
            }
        }
    }
});
