//! `TypeFilter::parse` (the `types=` parameter) on arbitrary text: never panics; an accepted
//! filter matches every exact type it lists, and every listed type is a valid event type.
#![no_main]

use event_gateway::event::EventType;
use event_gateway::policy::TypeFilter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    let Ok(filter) = TypeFilter::parse(raw) else {
        return;
    };
    for item in raw.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        match item.strip_suffix('*') {
            None => {
                let event_type = EventType::parse(item)
                    .unwrap_or_else(|_| panic!("accepted filter {raw:?} lists invalid type {item:?}"));
                assert!(
                    filter.matches(&event_type),
                    "filter {raw:?} does not match its own {item:?}"
                );
            }
            Some(prefix) => {
                // A prefix matches the types it is a prefix of, when that is a type.
                if let Ok(event_type) = EventType::parse(&format!("{prefix}x")) {
                    assert!(
                        filter.matches(&event_type),
                        "filter {raw:?} misses {event_type:?}"
                    );
                }
            }
        }
    }
});
