//! Pub/sub messages: `Event::decode_live` (the live channel, any publisher can write to it) and
//! `Event::decode_durable` (`<event id> <envelope>` from the publish Function). Never panic;
//! `decode_live` never yields an id, for any bytes; a durable event's id round-trips; both
//! frames are one well-formed SSE event block.
#![no_main]

mod common;

use event_gateway::event::{Envelope, Event, OrgId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    let org = OrgId::parse("org-1").expect("valid org");
    let envelope = Envelope::parse(payload, common::MAX_BYTES).ok();
    match Event::decode_live(&org, payload, common::MAX_BYTES) {
        Ok(event) => {
            assert!(
                event.id.is_none(),
                "decode_live produced id {:?} from {payload:?}",
                event.id
            );
            let envelope = envelope.expect("decode_live accepted what Envelope::parse refuses");
            assert!(
                envelope.org.as_ref().is_none_or(|own| *own == org),
                "org mismatch accepted"
            );
            assert_eq!(event.org, org);
            common::check_frame(&event, envelope.event_type.as_str(), &envelope.data);
            assert!(
                !event.frame().starts_with(b"id:"),
                "live frame carries an id line"
            );
        }
        Err(_) => {
            // Refused only for a reason Envelope::parse or the org check gives.
            if let Some(envelope) = &envelope {
                assert!(
                    envelope.check_org(&org).is_err(),
                    "decode_live refused a valid envelope"
                );
            }
        }
    }
    if let Ok(event) = Event::decode_durable(&org, payload, common::MAX_BYTES) {
        let id = event.id.expect("decode_durable yields an id");
        common::check_id_round_trip(id);
        let space = payload
            .iter()
            .position(|&b| b == b' ')
            .expect("durable message has a space");
        let envelope = Envelope::parse(&payload[space + 1..], common::MAX_BYTES)
            .expect("decode_durable accepted an envelope Envelope::parse refuses");
        assert_eq!(event.org, org);
        common::check_frame(&event, envelope.event_type.as_str(), &envelope.data);
    }
});
