//! `Event::new(..).frame()`: for any accepted envelope, org and optional id, the SSE frame is
//! exactly one event block (`id:`, `event:`, `data:` lines only) whose `data:` line is the
//! envelope's data.
#![no_main]

mod common;

use arbitrary::Arbitrary;
use event_gateway::event::{Envelope, Event, EventId, OrgId};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    org: &'a str,
    id: Option<(u64, u64)>,
    envelope: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let Ok(org) = OrgId::parse(input.org) else {
        return;
    };
    let Ok(envelope) = Envelope::parse(input.envelope, common::MAX_BYTES) else {
        return;
    };
    let id = input.id.map(|(millis, seq)| EventId { millis, seq });
    let event_type = envelope.event_type.as_str().to_string();
    let data = envelope.data.clone();
    let event = Event::new(org, id, envelope);
    common::check_frame(&event, &event_type, &data);
});
