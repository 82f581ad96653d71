//! `Envelope::parse` on arbitrary bytes (what a publisher sends over HTTP or Redis): never
//! panics, and an accepted envelope's `data` is one-line JSON, an object, equal as a value to the
//! `data` of the input.
#![no_main]

mod common;

use event_gateway::event::Envelope;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|raw: &[u8]| {
    let Ok(envelope) = Envelope::parse(raw, common::MAX_BYTES) else {
        return;
    };
    let data = &envelope.data;
    assert!(
        !data.contains('\n') && !data.contains('\r'),
        "data has a line break: {data:?}"
    );
    let compact: Value = match serde_json::from_str(data) {
        Ok(value) => value,
        // JSON numbers have no range; one beyond f64 (`1e3082`) is valid JSON that serde_json's
        // `Value` cannot hold. It passes through as written, like every other number.
        Err(error) if error.to_string().starts_with("number out of range") => return,
        Err(error) => panic!("data {data:?} is not JSON: {error}"),
    };
    assert!(compact.is_object(), "data {data:?} is not an object");
    // The input's own `data`, as a plain JSON value. serde's derive also accepts a struct
    // written as an array (fields in declaration order, `data` eighth). An input that strict
    // JSON refuses (serde_json does not check the UTF-8 of ignored fields) has no value to
    // compare with.
    if let Ok(input) = serde_json::from_slice::<Value>(raw) {
        let original = match &input {
            Value::Object(map) => map.get("data").cloned(),
            Value::Array(items) => items.get(7).cloned(),
            _ => None,
        }
        .unwrap_or_else(|| panic!("accepted input has no data: {input}"));
        assert_eq!(compact, original, "compacted data differs from the input's data");
    }
    // The event type is one SSE-safe token.
    let event_type = envelope.event_type.as_str();
    assert!(!event_type.is_empty() && event_type.len() <= 64);
    assert!(event_type
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
});
