//! Events at the boundary: org ids, event types, ids and envelopes, parsed and validated once and
//! encoded once into the SSE frame that every recipient shares.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::wire::gzip::Piece;
use crate::wire::ws::{DeflatedEvent, EncodedEvent};

/// Longest accepted organization id, in bytes.
const MAX_ORG_ID_LEN: usize = 64;
/// Longest accepted event type, in bytes.
const MAX_EVENT_TYPE_LEN: usize = 64;

/// An organization id: `[A-Za-z0-9_-]{1,64}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(Box<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("org id must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")]
pub struct InvalidOrgId;

impl OrgId {
    pub fn parse(raw: &str) -> Result<Self, InvalidOrgId> {
        let valid = !raw.is_empty()
            && raw.len() <= MAX_ORG_ID_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(raw.into()))
        } else {
            Err(InvalidOrgId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event type: dot-separated segments of `[a-z0-9_-]+`, at most 64 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventType(Box<str>);

impl EventType {
    pub fn parse(raw: &str) -> Result<Self, EnvelopeError> {
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        };
        if raw.len() <= MAX_EVENT_TYPE_LEN && raw.split('.').all(segment_ok) {
            Ok(Self(raw.into()))
        } else {
            Err(EnvelopeError::InvalidType)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A durable event's id: `<publish time in ms>-<sequence>`. Ids are handed out by one counter per
/// Redis (or per embedded broker), so they are totally ordered across every org and sort by
/// publish time. Clients treat them as opaque strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub millis: u64,
    pub seq: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("event id must look like <milliseconds>-<sequence>, with a time before the year 10000")]
pub struct InvalidEventId;

/// The last millisecond of the year 9999: no id of this gateway's is later, so any id it
/// parses also has a successor that Redis can range from.
pub const MAX_ID_MILLIS: u64 = 253_402_300_799_999;

impl EventId {
    /// The smallest id published at or after `millis`.
    pub fn first_at(millis: u64) -> Self {
        Self { millis, seq: 0 }
    }

    /// The id to publish after `self` at wall-clock time `now_millis`: time moves forward when the
    /// clock does, otherwise the sequence does, so ids never repeat or go backwards.
    pub fn next_after(self, now_millis: u64) -> Self {
        if now_millis > self.millis {
            Self::first_at(now_millis)
        } else {
            Self {
                millis: self.millis,
                seq: self.seq + 1,
            }
        }
    }
}

impl FromStr for EventId {
    type Err = InvalidEventId;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (millis, seq) = raw.split_once('-').ok_or(InvalidEventId)?;
        let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(millis) || !digits(seq) {
            return Err(InvalidEventId);
        }
        let millis = millis.parse().map_err(|_| InvalidEventId)?;
        if millis > MAX_ID_MILLIS {
            return Err(InvalidEventId);
        }
        Ok(Self {
            millis,
            seq: seq.parse().map_err(|_| InvalidEventId)?,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.millis, self.seq)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Priority {
    #[default]
    Normal,
    High,
}

/// Why an envelope was refused. The `reason()` label is what `gateway_events_dropped_total` counts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("envelope is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("envelope is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("envelope has no \"type\"")]
    MissingType,
    #[error("\"type\" must be dot-separated segments of a-z, 0-9, '_' or '-', at most 64 characters")]
    InvalidType,
    #[error("envelope has no \"data\"")]
    MissingData,
    #[error("\"data\" must be a JSON object")]
    InvalidData,
    #[error("\"orgId\" is missing")]
    MissingOrg,
    #[error("\"orgId\": {0}")]
    InvalidOrg(InvalidOrgId),
    #[error("\"orgId\" {envelope} does not match the channel's org {channel}")]
    OrgMismatch { envelope: String, channel: String },
    #[error("\"priority\" must be \"normal\" or \"high\"")]
    InvalidPriority,
    #[error("durable message has a malformed event id")]
    InvalidId,
}

impl EnvelopeError {
    /// A stable, low-cardinality label for metrics and rate-limited logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::InvalidJson(_) => "invalid_json",
            Self::MissingType => "missing_type",
            Self::InvalidType => "invalid_type",
            Self::MissingData => "missing_data",
            Self::InvalidData => "invalid_data",
            Self::MissingOrg | Self::InvalidOrg(_) => "invalid_org",
            Self::OrgMismatch { .. } => "org_mismatch",
            Self::InvalidPriority => "invalid_priority",
            Self::InvalidId => "invalid_id",
        }
    }

    /// Every reason (each spelled once, in `reason`), for exporting the drop counter at zero
    /// from start-up.
    pub fn all_reasons() -> [&'static str; 10] {
        [
            Self::TooLarge { size: 0, limit: 0 },
            Self::InvalidJson(String::new()),
            Self::MissingType,
            Self::InvalidType,
            Self::MissingData,
            Self::InvalidData,
            Self::InvalidOrg(InvalidOrgId),
            Self::OrgMismatch {
                envelope: String::new(),
                channel: String::new(),
            },
            Self::InvalidPriority,
            Self::InvalidId,
        ]
        .map(|error| error.reason())
    }
}

/// Who an event is for, read from the envelope's top level, falling back to `data`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Routing {
    pub landlord_id: Option<Box<str>>,
    pub tenant_id: Option<Box<str>>,
    pub contractor_id: Option<Box<str>>,
    pub user_ids: Box<[Box<str>]>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope<'a> {
    #[serde(rename = "type")]
    event_type: Option<String>,
    org_id: Option<String>,
    landlord_id: Option<String>,
    tenant_id: Option<String>,
    contractor_id: Option<String>,
    user_ids: Option<Vec<String>>,
    priority: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Routing fields inside `data`: used only when the top level lacks them, and ignored when they
/// are not strings (they are the publisher's payload, not instructions to the gateway).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DataRouting {
    landlord_id: Option<serde_json::Value>,
    tenant_id: Option<serde_json::Value>,
    contractor_id: Option<serde_json::Value>,
    user_ids: Option<serde_json::Value>,
}

/// A validated envelope, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub event_type: EventType,
    /// `orgId` from the envelope, when present.
    pub org: Option<OrgId>,
    pub routing: Routing,
    pub priority: Priority,
    /// `data` as compact one-line JSON: safe to put on one `data:` line.
    pub data: String,
}

impl Envelope {
    /// Parses and validates one envelope of at most `max_bytes` bytes.
    pub fn parse(raw: &[u8], max_bytes: usize) -> Result<Self, EnvelopeError> {
        if raw.len() > max_bytes {
            return Err(EnvelopeError::TooLarge {
                size: raw.len(),
                limit: max_bytes,
            });
        }
        let envelope: RawEnvelope<'_> =
            serde_json::from_slice(raw).map_err(|e| EnvelopeError::InvalidJson(e.to_string()))?;
        let event_type = EventType::parse(&envelope.event_type.ok_or(EnvelopeError::MissingType)?)?;
        let data = envelope.data.ok_or(EnvelopeError::MissingData)?;
        if !data.get().starts_with('{') {
            return Err(EnvelopeError::InvalidData);
        }
        let org = envelope
            .org_id
            .map(|raw| OrgId::parse(&raw).map_err(EnvelopeError::InvalidOrg))
            .transpose()?;
        let priority = match envelope.priority.as_deref() {
            None | Some("normal") => Priority::Normal,
            Some("high") => Priority::High,
            Some(_) => return Err(EnvelopeError::InvalidPriority),
        };
        let needs_fallback = envelope.landlord_id.is_none()
            || envelope.tenant_id.is_none()
            || envelope.contractor_id.is_none()
            || envelope.user_ids.is_none();
        let fallback: DataRouting = if needs_fallback {
            serde_json::from_str(data.get()).unwrap_or_default()
        } else {
            DataRouting::default()
        };
        let string_of = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => Some(s.into_boxed_str()),
            _ => None,
        };
        let user_ids = match envelope.user_ids {
            Some(ids) => ids.into_iter().map(String::into_boxed_str).collect(),
            None => match fallback.user_ids {
                Some(serde_json::Value::Array(ids)) => {
                    ids.into_iter().filter_map(|v| string_of(Some(v))).collect()
                }
                _ => Box::default(),
            },
        };
        let routing = Routing {
            landlord_id: envelope
                .landlord_id
                .map(String::into_boxed_str)
                .or_else(|| string_of(fallback.landlord_id)),
            tenant_id: envelope
                .tenant_id
                .map(String::into_boxed_str)
                .or_else(|| string_of(fallback.tenant_id)),
            contractor_id: envelope
                .contractor_id
                .map(String::into_boxed_str)
                .or_else(|| string_of(fallback.contractor_id)),
            user_ids,
        };
        Ok(Self {
            event_type,
            org,
            routing,
            priority,
            data: compact_json(data.get())?,
        })
    }

    /// Checks that the envelope belongs to `org` (an envelope without `orgId` belongs to the
    /// channel it arrived on).
    pub fn check_org(&self, org: &OrgId) -> Result<(), EnvelopeError> {
        match &self.org {
            Some(own) if own != org => Err(EnvelopeError::OrgMismatch {
                envelope: own.to_string(),
                channel: org.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// One event as every local recipient shares it: routing facts for the policy, and the SSE frame
/// encoded once.
#[derive(Debug)]
pub struct Event {
    pub org: OrgId,
    pub id: Option<EventId>,
    pub event_type: EventType,
    pub priority: Priority,
    pub routing: Routing,
    /// `id: ..\nevent: ..\ndata: ..\n\n`, shared by reference count across connections.
    frame: Bytes,
    /// Length of the leading `id:` line, so the frame can also be sent without it.
    id_line_len: usize,
    /// Where the event's data starts in `frame` (it ends before the closing blank line).
    data_start: usize,
    /// The WebSocket message, built when a WebSocket recipient first needs it.
    ws: OnceLock<EncodedEvent>,
    /// The compressed WebSocket message (`None`: not worth compressing), built likewise.
    ws_deflated: OnceLock<Option<DeflatedEvent>>,
    /// The frame as a piece of gzip streams, built when a compressed stream first needs it.
    sse_gzip: OnceLock<Piece>,
    /// `frame_body` as a piece of gzip streams, for streams that write their own `id:` after it.
    sse_gzip_body: OnceLock<Piece>,
    /// When this replica received the event, for `gateway_fanout_seconds`.
    pub received_at: Instant,
}

impl Event {
    pub fn new(org: OrgId, id: Option<EventId>, envelope: Envelope) -> Self {
        let id_line = id.map(|id| format!("id: {id}\n")).unwrap_or_default();
        let event_type = envelope.event_type.as_str();
        let mut frame = BytesMut::with_capacity(id_line.len() + event_type.len() + envelope.data.len() + 16);
        frame.put_slice(id_line.as_bytes());
        frame.put_slice(b"event: ");
        frame.put_slice(event_type.as_bytes());
        frame.put_slice(b"\ndata: ");
        let data_start = frame.len();
        frame.put_slice(envelope.data.as_bytes());
        frame.put_slice(b"\n\n");
        Self {
            org,
            id,
            event_type: envelope.event_type,
            priority: envelope.priority,
            routing: envelope.routing,
            frame: frame.freeze(),
            id_line_len: id_line.len(),
            data_start,
            ws: OnceLock::new(),
            ws_deflated: OnceLock::new(),
            sse_gzip: OnceLock::new(),
            sse_gzip_body: OnceLock::new(),
            received_at: Instant::now(),
        }
    }

    /// Decodes a message from the org's live channel: always a plain envelope, never an id.
    /// Whatever a publisher writes there (even text that looks like `<id> <envelope>`) is an
    /// envelope or nothing, so a plain `PUBLISH` cannot forge a durable id.
    pub fn decode_live(org: &OrgId, payload: &[u8], max_bytes: usize) -> Result<Self, EnvelopeError> {
        Self::decode_stored(org, None, payload, max_bytes)
    }

    /// Decodes a message from the org's durable channel, which only the publish Function writes:
    /// `<event id> <envelope>`.
    pub fn decode_durable(org: &OrgId, payload: &[u8], max_bytes: usize) -> Result<Self, EnvelopeError> {
        let space = payload
            .iter()
            .position(|&b| b == b' ')
            .ok_or(EnvelopeError::InvalidId)?;
        let id = std::str::from_utf8(&payload[..space])
            .ok()
            .and_then(|raw| raw.parse::<EventId>().ok())
            .ok_or(EnvelopeError::InvalidId)?;
        Self::decode_stored(org, Some(id), &payload[space + 1..], max_bytes)
    }

    /// Decodes an envelope kept in history (or published live) under `org` with an optional id.
    pub fn decode_stored(
        org: &OrgId,
        id: Option<EventId>,
        envelope: &[u8],
        max_bytes: usize,
    ) -> Result<Self, EnvelopeError> {
        let envelope = Envelope::parse(envelope, max_bytes)?;
        envelope.check_org(org)?;
        Ok(Self::new(org.clone(), id, envelope))
    }

    /// The frame as sent to clients, including the `id:` line of a durable event.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The frame without its `id:` line and its closing blank line (`event:` and `data:` lines):
    /// the part shared by every stream that writes its own `id:` after it (a resume cursor).
    pub fn frame_body(&self) -> Bytes {
        self.frame.slice(self.id_line_len..self.frame.len() - 1)
    }

    /// The frame without its `id:` line: sent when this event overtakes queued durable events,
    /// so the client's resume cursor never skips them.
    pub fn frame_without_id(&self) -> Bytes {
        self.frame.slice(self.id_line_len..)
    }

    /// The event's WebSocket message, encoded once per replica (by its first WebSocket
    /// recipient) and shared.
    pub fn ws(&self) -> &EncodedEvent {
        self.ws.get_or_init(|| {
            let data =
                std::str::from_utf8(&self.frame[self.data_start..self.frame.len() - 2]).unwrap_or("null");
            EncodedEvent::new(
                self.event_type.as_str(),
                data,
                self.id.map(|id| id.to_string()).as_deref(),
            )
        })
    }

    /// The frame as a piece of a gzip stream (compressed, or stored when under `min_bytes`, the
    /// same for every connection of a replica), built once per replica and shared.
    pub fn sse_gzip(&self, min_bytes: u32) -> &Piece {
        self.sse_gzip
            .get_or_init(|| Piece::compressed(&self.frame, min_bytes))
    }

    /// `frame_body` (the frame without its `id:` line and closing blank line) as a piece of a
    /// gzip stream, built once per replica: streams with a resume cursor write it, then their
    /// own `id:` line as a stored piece.
    pub fn sse_gzip_body(&self, min_bytes: u32) -> &Piece {
        self.sse_gzip_body
            .get_or_init(|| Piece::compressed(&self.frame_body(), min_bytes))
    }

    /// The event's compressed WebSocket message, compressed once per replica, or `None` when
    /// it is under `min_bytes` (the same for every connection of a replica) or does not shrink.
    pub fn ws_deflated(&self, min_bytes: u32) -> Option<&DeflatedEvent> {
        self.ws_deflated
            .get_or_init(|| self.ws().deflated(min_bytes))
            .as_ref()
    }
}

/// Removes the insignificant whitespace of a valid JSON text, so it fits on one `data:` line
/// (JSON strings cannot hold raw line breaks, so what remains has none). Refuses a `\u` escape
/// that is half of a UTF-16 surrogate pair: strict JSON parsers (and so some clients) reject
/// it, and the JSON syntax check the text passed does not look inside escapes.
pub fn compact_json(valid_json: &str) -> Result<String, EnvelopeError> {
    let lone_surrogate = || EnvelopeError::InvalidJson("data holds a lone UTF-16 surrogate escape".into());
    let bytes = valid_json.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut in_string = false;
    // A high surrogate escape was just read: the next thing must be a low surrogate escape.
    let mut expecting_low = false;
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        if !in_string {
            if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                in_string = byte == b'"';
                out.push(byte);
            }
            at += 1;
            continue;
        }
        if byte == b'\\' {
            let escape_len = if bytes.get(at + 1) == Some(&b'u') { 6 } else { 2 };
            let escape = bytes.get(at..at + escape_len).ok_or_else(lone_surrogate)?;
            let unit = (escape_len == 6)
                .then(|| {
                    std::str::from_utf8(&escape[2..])
                        .ok()
                        .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                })
                .flatten();
            match unit {
                Some(0xD800..=0xDBFF) if !expecting_low => expecting_low = true,
                Some(0xDC00..=0xDFFF) if expecting_low => expecting_low = false,
                Some(0xD800..=0xDFFF) => return Err(lone_surrogate()),
                _ if expecting_low => return Err(lone_surrogate()),
                _ => {}
            }
            out.extend_from_slice(escape);
            at += escape_len;
            continue;
        }
        if expecting_low {
            return Err(lone_surrogate());
        }
        in_string = byte != b'"';
        out.push(byte);
        at += 1;
    }
    // Only ASCII whitespace outside strings was removed, so the text is still UTF-8.
    String::from_utf8(out).map_err(|error| EnvelopeError::InvalidJson(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 65536;

    fn org(raw: &str) -> OrgId {
        OrgId::parse(raw).expect("valid org id")
    }

    #[test]
    fn org_ids_follow_the_contract_pattern() {
        for ok in ["a", "org-1", "ORG_2", &"x".repeat(64)] {
            assert!(OrgId::parse(ok).is_ok(), "{ok} should be valid");
        }
        for bad in ["", "org 1", "org/1", "org:1", "é", &"x".repeat(65)] {
            assert_eq!(OrgId::parse(bad), Err(InvalidOrgId), "{bad} should be invalid");
        }
    }

    #[test]
    fn event_types_follow_the_contract_pattern() {
        for ok in ["ticket.created", "a", "payment_received.v-2"] {
            assert!(EventType::parse(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "",
            "Ticket.created",
            "ticket..created",
            ".x",
            "x.",
            "a b",
            &"a".repeat(65),
        ] {
            assert!(EventType::parse(bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn event_ids_round_trip_and_order_by_time_then_sequence() {
        let id: EventId = "1700000000000-7".parse().expect("valid id");
        assert_eq!(id.to_string(), "1700000000000-7");
        assert!(id < "1700000000000-8".parse().expect("valid id"));
        assert!(id < "1700000000001-0".parse().expect("valid id"));
        for bad in [
            "",
            "1",
            "-1",
            "1-",
            "a-1",
            "1-1-1",
            "1--1",
            "1 -1",
            "253402300800000-0",
            "18446744073709551615-18446744073709551615",
        ] {
            assert_eq!(bad.parse::<EventId>(), Err(InvalidEventId), "{bad}");
        }
    }

    #[test]
    fn next_id_never_goes_backwards_when_the_clock_does() {
        let last = EventId { millis: 100, seq: 3 };
        assert_eq!(last.next_after(101), EventId { millis: 101, seq: 0 });
        assert_eq!(last.next_after(100), EventId { millis: 100, seq: 4 });
        assert_eq!(last.next_after(50), EventId { millis: 100, seq: 4 });
    }

    #[test]
    fn envelope_errors_name_the_problem() {
        let cases: &[(&str, EnvelopeError)] = &[
            ("not json", EnvelopeError::InvalidJson(String::new())),
            (r#"{"data":{}}"#, EnvelopeError::MissingType),
            (r#"{"type":"Bad Type","data":{}}"#, EnvelopeError::InvalidType),
            (r#"{"type":"a.b"}"#, EnvelopeError::MissingData),
            (r#"{"type":"a.b","data":[1]}"#, EnvelopeError::InvalidData),
            (r#"{"type":"a.b","data":"x"}"#, EnvelopeError::InvalidData),
            (
                r#"{"type":"a.b","data":{},"orgId":"no spaces"}"#,
                EnvelopeError::InvalidOrg(InvalidOrgId),
            ),
            (
                r#"{"type":"a.b","data":{},"priority":"urgent"}"#,
                EnvelopeError::InvalidPriority,
            ),
        ];
        for (raw, expected) in cases {
            let got = Envelope::parse(raw.as_bytes(), LIMIT).expect_err(raw);
            assert_eq!(got.reason(), expected.reason(), "{raw}: {got}");
        }
    }

    #[test]
    fn envelope_over_the_size_limit_is_refused_before_parsing() {
        let raw = format!(r#"{{"type":"a.b","data":{{"x":"{}"}}}}"#, "y".repeat(100));
        assert!(matches!(
            Envelope::parse(raw.as_bytes(), 50),
            Err(EnvelopeError::TooLarge { limit: 50, .. })
        ));
    }

    #[test]
    fn routing_fields_fall_back_to_data() {
        let raw = r#"{"type":"ticket.created","tenantId":"t-top",
            "data":{"tenantId":"t-data","landlordId":"l-data","contractorId":7,"userIds":["u1",2,"u2"]}}"#;
        let envelope = Envelope::parse(raw.as_bytes(), LIMIT).expect("valid envelope");
        assert_eq!(envelope.routing.tenant_id.as_deref(), Some("t-top"));
        assert_eq!(envelope.routing.landlord_id.as_deref(), Some("l-data"));
        assert_eq!(envelope.routing.contractor_id, None);
        let users: Vec<&str> = envelope.routing.user_ids.iter().map(|u| &**u).collect();
        assert_eq!(users, ["u1", "u2"]);
    }

    #[test]
    fn data_is_compacted_onto_one_line() {
        let raw =
            "{\"type\":\"a.b\",\"data\":{\n  \"title\" : \"Leaking faucet \\\" x\",\n  \"n\": [1, 2]\n}}";
        let envelope = Envelope::parse(raw.as_bytes(), LIMIT).expect("valid envelope");
        assert_eq!(envelope.data, r#"{"title":"Leaking faucet \" x","n":[1,2]}"#);
    }

    #[test]
    fn data_with_a_lone_surrogate_escape_is_refused_and_pairs_are_kept() {
        for lone in [
            r#"{"":"\ud800"}"#,
            r#"{"":"\udc00"}"#,
            r#"{"":"\ud800\u0041"}"#,
            r#"{"":"\ud800x"}"#,
        ] {
            let raw = format!(r#"{{"type":"a.b","data":{lone}}}"#);
            assert_eq!(
                Envelope::parse(raw.as_bytes(), LIMIT)
                    .map(|e| e.data)
                    .map_err(|e| e.reason()),
                Err("invalid_json"),
                "{lone}"
            );
        }
        let paired = r#"{"type":"a.b","data":{"smile":"\ud83d\ude00","q":"\"\\"}}"#;
        let envelope = Envelope::parse(paired.as_bytes(), LIMIT).expect("a surrogate pair is valid");
        assert_eq!(envelope.data, r#"{"smile":"\ud83d\ude00","q":"\"\\"}"#);
    }

    #[test]
    fn frame_carries_id_type_and_data() {
        let envelope =
            Envelope::parse(br#"{"type":"ticket.created","data":{"id":"t1"}}"#, LIMIT).expect("valid");
        let event = Event::new(org("o1"), Some(EventId { millis: 5, seq: 1 }), envelope);
        assert_eq!(
            &event.frame()[..],
            b"id: 5-1\nevent: ticket.created\ndata: {\"id\":\"t1\"}\n\n"
        );
        assert_eq!(
            &event.frame_without_id()[..],
            b"event: ticket.created\ndata: {\"id\":\"t1\"}\n\n"
        );
    }

    #[test]
    fn durable_messages_carry_their_id_before_the_envelope() {
        let event = Event::decode_durable(&org("o1"), br#"12-3 {"type":"a.b","data":{}}"#, LIMIT)
            .expect("valid message");
        assert_eq!(event.id, Some(EventId { millis: 12, seq: 3 }));
        assert_eq!(
            Event::decode_durable(&org("o1"), b"12x {}", LIMIT)
                .expect_err("bad id")
                .reason(),
            "invalid_id"
        );
    }

    #[test]
    fn live_messages_never_carry_an_id_even_when_they_imitate_the_durable_framing() {
        let forged = br#"99999999999999-0 {"type":"ticket.created","data":{}}"#;
        assert_eq!(
            Event::decode_live(&org("o1"), forged, LIMIT)
                .expect_err("not an envelope")
                .reason(),
            "invalid_json"
        );
        let live = Event::decode_live(&org("o1"), br#" {"type":"a.b","data":{}}"#, LIMIT)
            .expect("valid live message");
        assert_eq!(live.id, None);
    }

    #[test]
    fn envelope_for_another_org_is_refused() {
        let err = Event::decode_live(&org("o1"), br#"{"type":"a.b","orgId":"o2","data":{}}"#, LIMIT)
            .expect_err("org mismatch");
        assert_eq!(err.reason(), "org_mismatch");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::*;

    const LIMIT: usize = 65536;

    /// Any JSON value, with strings that hold line breaks, quotes, escapes and non-ASCII.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "(?s).{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("(?s).{0,6}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    fn data_object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("(?s).{0,6}", json_value(), 0..5)
            .prop_map(|map| map.into_iter().collect())
    }

    fn event_type() -> impl Strategy<Value = String> {
        "[a-z0-9_-]{1,10}(\\.[a-z0-9_-]{1,10}){0,3}"
    }

    fn envelope_text(event_type: &str, data: &Map<String, Value>, pretty: bool) -> String {
        let envelope = serde_json::json!({"type": event_type, "data": data});
        if pretty {
            serde_json::to_string_pretty(&envelope).expect("serializes")
        } else {
            envelope.to_string()
        }
    }

    proptest! {
        #[test]
        fn any_bytes_are_an_envelope_or_a_reason_never_a_panic(raw in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = Envelope::parse(&raw, LIMIT);
        }

        #[test]
        fn compacting_pretty_json_gives_the_compact_serialization(value in json_value()) {
            let pretty = serde_json::to_string_pretty(&value).expect("serializes");
            prop_assert_eq!(compact_json(&pretty), Ok(value.to_string()));
        }

        #[test]
        fn the_frame_of_any_data_is_one_sse_event_whose_data_line_is_that_data(
            event_type in event_type(),
            data in data_object(),
            pretty in any::<bool>(),
            id in prop::option::of((0..=MAX_ID_MILLIS, any::<u64>())),
        ) {
            let raw = envelope_text(&event_type, &data, pretty);
            let envelope = Envelope::parse(raw.as_bytes(), LIMIT).expect("a valid envelope");
            let id = id.map(|(millis, seq)| EventId { millis, seq });
            let event = Event::new(OrgId::parse("o1").expect("valid"), id, envelope);
            let frame = std::str::from_utf8(event.frame()).expect("frames are UTF-8");
            let block = frame.strip_suffix("\n\n").expect("a frame ends with a blank line");
            prop_assert!(!block.contains("\n\n") && !block.contains('\r'), "one event: {:?}", frame);
            let lines: Vec<&str> = block.split('\n').collect();
            let expected_lines = if id.is_some() { 3 } else { 2 };
            prop_assert_eq!(lines.len(), expected_lines);
            if let Some(id) = id {
                prop_assert_eq!(lines[0], format!("id: {id}"));
            }
            prop_assert_eq!(lines[expected_lines - 2], format!("event: {event_type}"));
            // The publisher's bytes, whitespace removed: exactly the compact serialization.
            prop_assert_eq!(lines[expected_lines - 1], format!("data: {}", Value::Object(data)));
        }

        #[test]
        fn a_live_message_never_carries_an_id(payload in prop::collection::vec(any::<u8>(), 0..128), prefix in "[0-9]{1,15}-[0-9]{1,5} ") {
            let org = OrgId::parse("o1").expect("valid");
            for candidate in [payload.clone(), [prefix.as_bytes(), &payload].concat()] {
                if let Ok(event) = Event::decode_live(&org, &candidate, LIMIT) {
                    prop_assert_eq!(event.id, None);
                }
            }
        }

        #[test]
        fn a_durable_message_keeps_its_id_and_data(
            millis in 0..=MAX_ID_MILLIS,
            seq in any::<u64>(),
            data in data_object(),
        ) {
            let org = OrgId::parse("o1").expect("valid");
            let id = EventId { millis, seq };
            let message = format!("{id} {}", envelope_text("ticket.created", &data, false));
            let event = Event::decode_durable(&org, message.as_bytes(), LIMIT).expect("a valid message");
            prop_assert_eq!(event.id, Some(id));
        }

        #[test]
        fn any_bytes_are_a_durable_message_or_a_reason_never_a_panic(payload in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = Event::decode_durable(&OrgId::parse("o1").expect("valid"), &payload, LIMIT);
        }

        #[test]
        fn event_ids_round_trip_through_their_text(millis in 0..=MAX_ID_MILLIS, seq in any::<u64>()) {
            let id = EventId { millis, seq };
            prop_assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
        }

        #[test]
        fn any_text_is_an_event_id_or_invalid_never_a_panic(raw in "(?s).{0,48}") {
            if let Ok(id) = raw.parse::<EventId>() {
                prop_assert!(id.millis <= MAX_ID_MILLIS);
            }
        }
    }
}
