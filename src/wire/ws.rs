//! The WebSocket wire (RFC 6455) as the gateway speaks it: server frames (never masked, never
//! fragmented), the JSON message of each event, the client frame decoder, the handshake's
//! accept key and the `permessage-deflate` negotiation (RFC 7692, no context takeover either
//! way). No IO.

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use sha1::{Digest, Sha1};

use super::deflate;

/// Largest client message (after reassembly and inflation); larger closes with 1009.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// Close codes of the contract.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_EXPIRED: u16 = 4001;
pub const CLOSE_SLOW: u16 = 4008;
pub const CLOSE_REFUSED: u16 = 4403;

/// Whether `code` may travel in a close frame (RFC 6455 §7.4): the defined codes but 1004-1006
/// and 1015, and the ranges left to libraries and applications.
pub fn may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The `id` and closing brace of a message without an id.
pub const TAIL_WITHOUT_ID: &[u8] = b"}";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// One unfragmented server frame whose payload is `parts` concatenated; `compressed` sets
/// RSV1 (a `permessage-deflate` message).
pub fn frame(opcode: Opcode, compressed: bool, parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let mut out = Vec::with_capacity(len + 10);
    out.push(0x80 | if compressed { 0x40 } else { 0 } | opcode.bits());
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    for part in parts {
        out.extend_from_slice(part);
    }
    Bytes::from(out)
}

/// A text message `{"event":"<name>","data":<data>}` (a message of the gateway's own, never
/// compressed).
pub fn message(name: &str, data: &serde_json::Value) -> Bytes {
    let name = serde_json::Value::from(name).to_string();
    let data = data.to_string();
    frame(
        Opcode::Text,
        false,
        &[
            b"{\"event\":",
            name.as_bytes(),
            b",\"data\":",
            data.as_bytes(),
            b"}",
        ],
    )
}

/// A close frame with `code` and a short `reason` (at most 123 bytes, cut on a char boundary).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    frame(
        Opcode::Close,
        false,
        &[&code.to_be_bytes(), &reason.as_bytes()[..end]],
    )
}

/// `,"id":"<position>"}`: ids and cursors are made of characters JSON needs no escape for.
pub fn id_tail(position: &str) -> Vec<u8> {
    let mut tail = Vec::with_capacity(position.len() + 9);
    tail.extend_from_slice(b",\"id\":\"");
    tail.extend_from_slice(position.as_bytes());
    tail.extend_from_slice(b"\"}");
    tail
}

/// An event's WebSocket message, built once per replica.
#[derive(Debug)]
pub struct EncodedEvent {
    /// `{"event":"<type>","data":<data>`: the message without its id and closing brace, shared
    /// by streams that write their own id after it.
    pub head: Bytes,
    /// The whole text frame, with the event's id if it has one.
    pub frame: Bytes,
}

impl EncodedEvent {
    pub fn new(event_type: &str, data: &str, id: Option<&str>) -> Self {
        let type_json = serde_json::to_string(event_type).unwrap_or_default();
        let mut head = Vec::with_capacity(type_json.len() + data.len() + 20);
        head.extend_from_slice(b"{\"event\":");
        head.extend_from_slice(type_json.as_bytes());
        head.extend_from_slice(b",\"data\":");
        head.extend_from_slice(data.as_bytes());
        let tail = id.map_or_else(|| TAIL_WITHOUT_ID.to_vec(), id_tail);
        let frame = frame(Opcode::Text, false, &[&head, &tail]);
        Self {
            head: Bytes::from(head),
            frame,
        }
    }

    /// The compressed forms, or `None` when the message is under `min_bytes` or does not
    /// shrink.
    pub fn deflated(&self, min_bytes: u32) -> Option<DeflatedEvent> {
        let plain = payload_of(&self.frame);
        if plain.len() < min_bytes as usize {
            return None;
        }
        let mut whole = deflate::compress_block(plain);
        if whole.len() >= plain.len() {
            return None;
        }
        // RFC 7692: the sync flush's empty stored block is left to the receiver to append.
        if whole.ends_with(&deflate::SYNC_TAIL) {
            whole.truncate(whole.len() - deflate::SYNC_TAIL.len());
        }
        Some(DeflatedEvent {
            head: Bytes::from(deflate::compress_block(&self.head)),
            frame: frame(Opcode::Text, true, &[&whole]),
        })
    }
}

/// An event's compressed WebSocket message, built once per replica.
#[derive(Debug)]
pub struct DeflatedEvent {
    /// The head as deflate blocks ending byte-aligned (sync flush), to which a stream appends
    /// its own tail as a stored block.
    pub head: Bytes,
    /// The whole compressed frame (RSV1 set), with the event's id if it has one.
    pub frame: Bytes,
}

/// The payload of a frame `frame` built.
fn payload_of(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(header..).unwrap_or_default()
}

/// A client frame, unmasked.
#[derive(Debug)]
pub struct ClientFrame {
    pub fin: bool,
    /// RSV1: the first frame of a compressed message.
    pub compressed: bool,
    pub opcode: Opcode,
    pub payload: BytesMut,
}

/// Why a client's bytes are not a WebSocket stream this gateway accepts; each closes the
/// connection with its code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("the frame is not valid WebSocket: {0}")]
    Protocol(&'static str),
    #[error("a message is larger than {MAX_CLIENT_MESSAGE} bytes")]
    TooBig,
}

impl FrameError {
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Protocol(_) => CLOSE_PROTOCOL_ERROR,
            Self::TooBig => CLOSE_TOO_BIG,
        }
    }
}

/// Takes the next whole client frame out of `buffer`, `None` when more bytes are needed.
/// `deflate`: `permessage-deflate` was negotiated (RSV1 allowed on data frames).
pub fn decode(buffer: &mut BytesMut, deflate: bool) -> Result<Option<ClientFrame>, FrameError> {
    let [first, second, ..] = buffer[..] else {
        return Ok(None);
    };
    if first & 0x30 != 0 {
        return Err(FrameError::Protocol("RSV2 and RSV3 must be 0"));
    }
    let fin = first & 0x80 != 0;
    let compressed = first & 0x40 != 0;
    let opcode = Opcode::from_bits(first & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    if compressed && (!deflate || opcode.is_control() || opcode == Opcode::Continuation) {
        return Err(FrameError::Protocol(
            "RSV1 is set outside a permessage-deflate message",
        ));
    }
    if second & 0x80 == 0 {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    let (len, header) = match second & 0x7F {
        126 => match buffer.get(2..4) {
            Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4),
            None => return Ok(None),
        },
        127 => match buffer.get(2..10) {
            Some(bytes) => {
                let mut raw = [0; 8];
                raw.copy_from_slice(bytes);
                (u64::from_be_bytes(raw), 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(FrameError::Protocol("control frames are short and unfragmented"));
    }
    if len > MAX_CLIENT_MESSAGE as u64 {
        return Err(FrameError::TooBig);
    }
    let len = len as usize;
    if buffer.len() < header + 4 + len {
        return Ok(None);
    }
    let mut mask = [0; 4];
    mask.copy_from_slice(&buffer[header..header + 4]);
    buffer.advance(header + 4);
    let mut payload = buffer.split_to(len);
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    Ok(Some(ClientFrame {
        fin,
        compressed,
        opcode,
        payload,
    }))
}

/// The `Sec-WebSocket-Accept` answer to a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The `Sec-WebSocket-Extensions` answer that accepts `permessage-deflate`.
pub const DEFLATE_RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Whether one of the client's `Sec-WebSocket-Extensions` offers is a `permessage-deflate`
/// the gateway can accept as `DEFLATE_RESPONSE`: its compressor always starts each message
/// afresh with a full window, so an offer that limits the server's window is declined.
pub fn accepts_deflate<'a>(offers: impl IntoIterator<Item = &'a str>) -> bool {
    offers
        .into_iter()
        .flat_map(|header| header.split(','))
        .any(|offer| {
            let mut params = offer.split(';').map(str::trim);
            params.next() == Some("permessage-deflate")
                && params.all(|param| {
                    let (name, value) = param.split_once('=').map_or((param, None), |(n, v)| {
                        (n.trim(), Some(v.trim().trim_matches('"')))
                    });
                    match name {
                        "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
                        "client_max_window_bits" => value
                            .is_none_or(|bits| bits.parse::<u8>().is_ok_and(|bits| (8..=15).contains(&bits))),
                        "server_max_window_bits" => value == Some("15"),
                        _ => false,
                    }
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser sends it.
    fn client_frame(first: u8, payload: &[u8]) -> BytesMut {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = BytesMut::new();
        out.extend_from_slice(&[first]);
        match payload.len() {
            0..=125 => out.extend_from_slice(&[0x80 | payload.len() as u8]),
            len @ 126..=0xFFFF => {
                out.extend_from_slice(&[0x80 | 126]);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.extend_from_slice(&[0x80 | 127]);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_masked_text_frame_decodes_to_its_text() {
        let mut buffer = client_frame(0x81, b"{\"op\":\"ping\"}");
        let frame = decode(&mut buffer, false).expect("valid").expect("whole");
        assert_eq!((frame.fin, frame.opcode), (true, Opcode::Text));
        assert_eq!(&frame.payload[..], b"{\"op\":\"ping\"}");
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_frame_split_across_reads_waits_for_its_last_byte() {
        let whole = client_frame(0x81, &[b'x'; 300]);
        let mut buffer = BytesMut::from(&whole[..whole.len() - 1]);
        assert!(decode(&mut buffer, false).expect("valid so far").is_none());
        buffer.extend_from_slice(&whole[whole.len() - 1..]);
        let frame = decode(&mut buffer, false).expect("valid").expect("whole");
        assert_eq!(frame.payload.len(), 300);
    }

    #[test]
    fn an_unmasked_client_frame_is_a_protocol_error() {
        let mut buffer = BytesMut::from(&[0x81, 0x01, b'x'][..]);
        assert_eq!(
            decode(&mut buffer, false).err().map(|e| e.close_code()),
            Some(CLOSE_PROTOCOL_ERROR)
        );
    }

    #[test]
    fn a_frame_over_64_kib_is_refused_before_it_arrives() {
        let mut buffer = client_frame(0x82, &vec![0; MAX_CLIENT_MESSAGE + 1]).split_to(10);
        assert_eq!(decode(&mut buffer, false).err(), Some(FrameError::TooBig));
    }

    #[test]
    fn rsv1_is_refused_unless_deflate_was_negotiated() {
        let mut buffer = client_frame(0xC1, b"x");
        assert!(decode(&mut buffer.clone(), false).is_err());
        assert!(decode(&mut buffer, true)
            .expect("valid")
            .is_some_and(|f| f.compressed));
    }

    #[test]
    fn server_frames_use_the_shortest_length_form() {
        assert_eq!(&frame(Opcode::Text, false, &[b"hi"])[..2], &[0x81, 2]);
        assert_eq!(
            &frame(Opcode::Text, true, &[&[0; 200]])[..4],
            &[0xC1, 126, 0, 200]
        );
        assert_eq!(
            &frame(Opcode::Text, false, &[&vec![0; 70_000]])[..2],
            &[0x81, 127]
        );
        assert_eq!(
            &close_frame(4008, "slow")[..],
            &[0x88, 6, 0x0F, 0xA8, b's', b'l', b'o', b'w']
        );
    }

    #[test]
    fn an_events_message_is_its_type_data_and_id() {
        let encoded = EncodedEvent::new("ticket.created", "{\"n\":1}", Some("5-1"));
        let json: serde_json::Value = serde_json::from_slice(payload_of(&encoded.frame)).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({"event":"ticket.created","data":{"n":1},"id":"5-1"})
        );
        let without: serde_json::Value =
            serde_json::from_slice(payload_of(&EncodedEvent::new("a.b", "{}", None).frame)).expect("JSON");
        assert_eq!(without, serde_json::json!({"event":"a.b","data":{}}));
    }

    #[test]
    fn a_deflated_event_inflates_to_the_same_message() {
        let data = format!("{{\"text\":\"{}\"}}", "abc".repeat(100));
        let encoded = EncodedEvent::new("a.b", &data, Some("5-1"));
        let deflated = encoded.deflated(0).expect("worth compressing");
        assert_eq!(deflated.frame[0], 0xC1);
        let inflated = deflate::inflate_message(payload_of(&deflated.frame), 1 << 20).expect("inflates");
        assert_eq!(inflated, payload_of(&encoded.frame));
    }

    #[test]
    fn a_small_event_is_not_compressed() {
        assert!(EncodedEvent::new("a.b", "{}", None).deflated(64).is_none());
    }

    #[test]
    fn deflate_offers_limiting_the_servers_window_are_declined() {
        assert!(accepts_deflate(["permessage-deflate; client_max_window_bits"]));
        assert!(accepts_deflate(["x-webkit-deflate-frame, permessage-deflate"]));
        assert!(accepts_deflate([
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ]));
        assert!(!accepts_deflate([
            "permessage-deflate; server_max_window_bits=10"
        ]));
        assert!(!accepts_deflate(["permessage-deflate; unknown"]));
        assert!(!accepts_deflate(["x-webkit-deflate-frame"]));
    }
}
