//! `OrgId::parse` and `EventId::from_str` on arbitrary text: never panic; an accepted org id is
//! `[A-Za-z0-9_-]{1,64}` and displays as itself; an accepted event id displays as a string that
//! parses to the same id.
#![no_main]

mod common;

use event_gateway::event::{EventId, OrgId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    if let Ok(org) = OrgId::parse(raw) {
        assert_eq!(org.as_str(), raw);
        assert_eq!(org.to_string(), raw);
        assert!((1..=64).contains(&raw.len()));
        assert!(raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        assert_eq!(OrgId::parse(&org.to_string()).as_ref(), Ok(&org));
    }
    if let Ok(id) = raw.parse::<EventId>() {
        common::check_id_round_trip(id);
        let shown = id.to_string();
        assert!(!shown.contains(['\n', '\r', ' ']), "{shown:?}");
    }
});
