//! The client side of the gateway's WebSocket transport (`GET /api/ws`, RFC 6455 with
//! permessage-deflate, RFC 7692), as lean as the SSE side: the upgrade request and the check of
//! its `101` answer, an incremental frame decoder that hands each complete frame to a callback
//! straight from the read buffer (a frame cut by a read is the only thing a connection buffers,
//! and only until it completes), the masked frames a client sends, one inflater per thread, and
//! the scan of each JSON message for what the SSE decoder reads from an event: its name, whether
//! it carries an `id`, and the bench payload's `data.seq` and `data.ts` (in any key order).
//!
//! permessage-deflate is only accepted with `server_no_context_takeover`: every compressed
//! message is inflated on its own (the 4 bytes `00 00 ff ff` appended), so one inflater reset
//! per message serves every connection of a thread.

use std::fmt;

use base64::Engine as _;
use flate2::{Decompress, FlushDecompress, Status};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// RFC 6455's key suffix for `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// What the client offers when asked to compress.
pub const DEFLATE_OFFER: &str = "permessage-deflate; client_no_context_takeover";
/// Appended to a compressed message's payload before inflating it (RFC 7692, 7.2.2).
const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Largest message (after inflating) a connection accepts.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The upgrade request of one stream, with a fresh random key.
pub fn request(host: &str, path: &str, token: Option<&str>, deflate: bool) -> Vec<u8> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if deflate {
        request.push_str("Sec-WebSocket-Extensions: ");
        request.push_str(DEFLATE_OFFER);
        request.push_str("\r\n");
    }
    if let Some(token) = token {
        request.push_str("Authorization: Bearer ");
        request.push_str(token);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// The `Sec-WebSocket-Key` of a request built by [`request`].
pub fn request_key(request: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(request).ok()?;
    text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim())
    })
}

/// The `Sec-WebSocket-Accept` a server must answer to `key`.
pub fn accept_for(key: &str) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

fn has_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks a `101` response head (the bytes up to and including the blank line) against the
/// request: `Upgrade`, `Connection`, `Sec-WebSocket-Accept`, and the extensions the server
/// chose. Returns whether permessage-deflate was negotiated; the error is a failure reason.
pub fn check_upgrade(head: &[u8], expected_accept: &str, offered_deflate: bool) -> Result<bool, String> {
    let text = std::str::from_utf8(head).map_err(|_| "ws_bad_upgrade: head is not text".to_string())?;
    let (mut upgrade, mut connection, mut accept) = (false, false, None);
    let mut extensions: Vec<&str> = Vec::new();
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            extensions.extend(value.split(',').map(str::trim).filter(|e| !e.is_empty()));
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            return Err("ws_bad_upgrade: a subprotocol that was not asked for".into());
        }
    }
    if !upgrade {
        return Err("ws_bad_upgrade: no Upgrade: websocket".into());
    }
    if !connection {
        return Err("ws_bad_upgrade: no Connection: upgrade".into());
    }
    match accept {
        None => return Err("ws_bad_upgrade: no Sec-WebSocket-Accept".into()),
        Some(accept) if accept != expected_accept => {
            return Err("ws_bad_upgrade: wrong Sec-WebSocket-Accept".into())
        }
        Some(_) => {}
    }
    negotiate(&extensions, offered_deflate)
}

/// The server's extension answer (each extension of `Sec-WebSocket-Extensions`): only
/// permessage-deflate, only when offered, and with `server_no_context_takeover`.
fn negotiate(extensions: &[&str], offered_deflate: bool) -> Result<bool, String> {
    let mut deflate = false;
    for extension in extensions {
        let mut params = extension.split(';').map(str::trim);
        let name = params.next().unwrap_or_default();
        if !name.eq_ignore_ascii_case("permessage-deflate") {
            return Err(format!("ws_bad_extension: {name} was not offered"));
        }
        if !offered_deflate {
            return Err("ws_bad_extension: permessage-deflate was not offered".into());
        }
        if deflate {
            return Err("ws_bad_extension: permessage-deflate twice".into());
        }
        let mut server_no_context_takeover = false;
        for param in params.filter(|p| !p.is_empty()) {
            let (key, value) = match param.split_once('=') {
                Some((key, value)) => (key.trim(), Some(value.trim().trim_matches('"'))),
                None => (param, None),
            };
            match (key.to_ascii_lowercase().as_str(), value) {
                ("server_no_context_takeover", None) => server_no_context_takeover = true,
                ("client_no_context_takeover", None) => {}
                // A smaller window than 15 bits is inflated by the 15-bit inflater as well.
                ("server_max_window_bits", Some(bits))
                    if bits.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b)) => {}
                _ => return Err(format!("ws_bad_extension: parameter {param}")),
            }
        }
        if !server_no_context_takeover {
            return Err("ws_bad_extension: no server_no_context_takeover".into());
        }
        deflate = true;
    }
    Ok(deflate)
}

/// Appends one masked client frame (FIN set) to `out`.
pub fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
}

/// Appends a masked close frame with `code` (no reason) to `out`; `None`: an empty close.
pub fn close_frame(code: Option<u16>, out: &mut Vec<u8>) {
    let payload = code.map(u16::to_be_bytes);
    client_frame(
        OP_CLOSE,
        payload.as_ref().map_or(&[][..], |p| &p[..]),
        rand::random(),
        out,
    );
}

/// One complete frame (control) or message (data), borrowed from the decoder or the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole data message: its first frame's RSV1 says it is compressed.
    Message {
        text: bool,
        compressed: bool,
        /// It came in more than one frame.
        fragmented: bool,
        payload: &'a [u8],
    },
    Ping(&'a [u8]),
    Pong,
    Close {
        code: Option<u16>,
        reason: &'a [u8],
    },
}

/// The head of the frame being read.
#[derive(Debug, Clone, Copy)]
struct Head {
    fin: bool,
    compressed: bool,
    opcode: u8,
}

/// Decodes the server's frames. Holds no buffer unless a frame is cut by a read (or a message
/// comes in fragments); a frame wholly in the input is handed over in place.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    deflate: bool,
    header: [u8; 10],
    header_len: u8,
    /// The frame whose payload is being read.
    frame: Option<Head>,
    remaining: u64,
    /// A data message in progress: `(text, compressed)` of its first frame.
    message: Option<(bool, bool)>,
    /// Payload bytes of the data message in progress that had to be kept.
    data: Vec<u8>,
    /// Payload of a control frame cut by a read.
    control: Vec<u8>,
    /// A close frame was decoded: whatever follows is ignored.
    closed: bool,
}

/// The header's length once its first two bytes are known.
fn header_len(second: u8) -> usize {
    match second & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

impl FrameDecoder {
    /// A decoder for a connection with (`deflate`) or without permessage-deflate.
    pub fn new(deflate: bool) -> Self {
        Self {
            deflate,
            ..Self::default()
        }
    }

    /// Whether a close frame was decoded.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Decodes `input`, calling `on_frame` for each complete frame; an error (the decoder's,
    /// as `ws_protocol: ...`, or the callback's) ends decoding.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_frame: impl FnMut(Frame<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut at = 0;
        loop {
            if self.closed {
                return Ok(());
            }
            let Some(head) = self.frame else {
                if at == input.len() {
                    return Ok(());
                }
                // The header: 2 bytes, then its extended length (server frames are unmasked).
                let have = self.header_len as usize;
                let need = if have >= 2 { header_len(self.header[1]) } else { 2 };
                let take = (need - have).min(input.len() - at);
                self.header[have..have + take].copy_from_slice(&input[at..at + take]);
                self.header_len += take as u8;
                at += take;
                let have = self.header_len as usize;
                if have < 2 || have < header_len(self.header[1]) {
                    continue;
                }
                self.start_frame().map_err(|e| format!("ws_protocol: {e}"))?;
                continue;
            };
            let available = (input.len() - at) as u64;
            if self.remaining > available {
                // The frame goes on in a later read: keep what this one has.
                let kept = if head.opcode >= OP_CLOSE {
                    &mut self.control
                } else {
                    &mut self.data
                };
                kept.extend_from_slice(&input[at..]);
                self.remaining -= available;
                return Ok(());
            }
            let end = at + self.remaining as usize;
            let piece = &input[at..end];
            at = end;
            self.remaining = 0;
            self.frame = None;
            self.end_frame(head, piece, &mut on_frame)?;
        }
    }

    /// Validates the complete header and starts its frame.
    fn start_frame(&mut self) -> Result<(), &'static str> {
        let [first, second, ..] = self.header;
        let header_len = self.header_len as usize;
        self.header_len = 0;
        let (fin, compressed, opcode) = (first & 0x80 != 0, first & 0x40 != 0, first & 0x0F);
        if first & 0x30 != 0 {
            return Err("RSV2 or RSV3 set");
        }
        if second & 0x80 != 0 {
            return Err("masked server frame");
        }
        let len = match header_len {
            4 => {
                let len = u16::from_be_bytes([self.header[2], self.header[3]]) as u64;
                if len < 126 {
                    return Err("16-bit length under 126");
                }
                len
            }
            10 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&self.header[2..10]);
                let len = u64::from_be_bytes(bytes);
                if len >> 63 != 0 {
                    return Err("64-bit length with its top bit set");
                }
                if len <= 0xFFFF {
                    return Err("64-bit length under 65536");
                }
                len
            }
            _ => (second & 0x7F) as u64,
        };
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err("fragmented control frame");
                }
                if len > 125 {
                    return Err("control frame over 125 bytes");
                }
                if compressed {
                    return Err("RSV1 on a control frame");
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.message.is_some() {
                    return Err("a new message inside a fragmented one");
                }
                if compressed && !self.deflate {
                    return Err("RSV1 without permessage-deflate");
                }
                if !fin {
                    self.message = Some((opcode == OP_TEXT, compressed));
                }
            }
            OP_CONTINUATION => {
                if self.message.is_none() {
                    return Err("continuation without a message");
                }
                if compressed {
                    return Err("RSV1 on a continuation frame");
                }
            }
            _ => return Err("unknown opcode"),
        }
        if opcode < OP_CLOSE && self.data.len() as u64 + len > MAX_MESSAGE as u64 {
            return Err("message too big");
        }
        self.frame = Some(Head {
            fin,
            compressed,
            opcode,
        });
        self.remaining = len;
        Ok(())
    }

    /// A frame's payload is complete: `piece` is its part in the current input (all of it,
    /// unless an earlier part was kept).
    fn end_frame(
        &mut self,
        head: Head,
        piece: &[u8],
        on_frame: &mut impl FnMut(Frame<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        if head.opcode >= OP_CLOSE {
            let kept = std::mem::take(&mut self.control);
            let payload = if kept.is_empty() {
                piece
            } else {
                self.control = kept;
                self.control.extend_from_slice(piece);
                &self.control
            };
            let frame = match head.opcode {
                OP_PING => Frame::Ping(payload),
                OP_PONG => Frame::Pong,
                _ => {
                    self.closed = true;
                    match payload {
                        [] => Frame::Close {
                            code: None,
                            reason: &[],
                        },
                        [_] => return Err("ws_protocol: close payload of 1 byte".into()),
                        [high, low, reason @ ..] => {
                            if std::str::from_utf8(reason).is_err() {
                                return Err("ws_protocol: close reason is not UTF-8".into());
                            }
                            Frame::Close {
                                code: Some(u16::from_be_bytes([*high, *low])),
                                reason,
                            }
                        }
                    }
                }
            };
            let result = on_frame(frame);
            self.control = Vec::new();
            return result;
        }
        if !head.fin {
            self.data.extend_from_slice(piece);
            return Ok(());
        }
        let (text, compressed, fragmented) = match self.message.take() {
            Some((text, compressed)) => (text, compressed, true),
            None => (head.opcode == OP_TEXT, head.compressed, false),
        };
        let kept = std::mem::take(&mut self.data);
        if kept.is_empty() {
            on_frame(Frame::Message {
                text,
                compressed,
                fragmented,
                payload: piece,
            })
        } else {
            let mut kept = kept;
            kept.extend_from_slice(piece);
            on_frame(Frame::Message {
                text,
                compressed,
                fragmented,
                payload: &kept,
            })
        }
    }
}

/// Inflates compressed messages, one at a time, each from a fresh state (no context is carried
/// between messages): one per thread serves every connection.
pub struct Inflater {
    decompress: Decompress,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Self {
            decompress: Decompress::new(false),
            out: Vec::with_capacity(4096),
        }
    }
}

impl Inflater {
    /// The message whose compressed payload (without the `00 00 ff ff` tail) is `payload`.
    pub fn inflate(&mut self, payload: &[u8]) -> Result<&[u8], String> {
        self.decompress.reset(false);
        self.out.clear();
        for chunk in [payload, &DEFLATE_TAIL[..]] {
            let mut input = chunk;
            loop {
                if self.out.capacity() - self.out.len() < 1024 {
                    self.out.reserve(self.out.capacity().max(4096));
                }
                let (before_in, before_out) = (self.decompress.total_in(), self.decompress.total_out());
                let status = self
                    .decompress
                    .decompress_vec(input, &mut self.out, FlushDecompress::Sync)
                    .map_err(|e| format!("ws_inflate: {e}"))?;
                let consumed = (self.decompress.total_in() - before_in) as usize;
                let produced = self.decompress.total_out() - before_out;
                input = &input[consumed..];
                if self.out.len() > MAX_MESSAGE {
                    return Err("ws_inflate: message too big".into());
                }
                if status == Status::StreamEnd {
                    // A final block: nothing after it belongs to the message.
                    return Ok(&self.out);
                }
                let room_left = self.out.len() < self.out.capacity();
                if input.is_empty() && room_left {
                    break;
                }
                if consumed == 0 && produced == 0 {
                    if input.is_empty() {
                        break;
                    }
                    return Err("ws_inflate: stuck".into());
                }
            }
        }
        Ok(&self.out)
    }
}

/// Longest event name kept (as the SSE decoder).
const NAME_CAPACITY: usize = 32;

/// What a gateway message `{"event":..,"data":{..},"id":..}` says, for the counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Message {
    name: [u8; NAME_CAPACITY],
    name_len: u8,
    /// `(data.seq, data.ts)` when both are unsigned integers.
    pub bench: Option<(u64, u64)>,
    /// The message has a non-null `id`.
    pub has_id: bool,
}

impl Message {
    /// The `event` name (truncated to 32 bytes; empty when absent).
    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len as usize]
    }

    /// Scans one text message (any key order, escapes, unknown keys).
    pub fn parse(text: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(text)
    }
}

/// A key of the message object, or of its `data`.
enum Key {
    Event,
    Data,
    Id,
    Seq,
    Ts,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "event" => Key::Event,
                    "data" => Key::Data,
                    "id" => Key::Id,
                    "seq" => Key::Seq,
                    "ts" => Key::Ts,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// The event name, copied into a fixed buffer.
struct Name([u8; NAME_CAPACITY], u8);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Name, E> {
                let len = name.len().min(NAME_CAPACITY);
                let mut buffer = [0u8; NAME_CAPACITY];
                buffer[..len].copy_from_slice(&name.as_bytes()[..len]);
                Ok(Name(buffer, len as u8))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

/// An unsigned integer, or anything else (skipped).
struct MaybeU64(Option<u64>);

impl<'de> Deserialize<'de> for MaybeU64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MaybeVisitor;
        impl<'de> Visitor<'de> for MaybeVisitor {
            type Value = MaybeU64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MaybeU64, E> {
                Ok(MaybeU64(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<MaybeU64, E> {
                Ok(MaybeU64(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<MaybeU64, E> {
                Ok(MaybeU64(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<MaybeU64, E> {
                Ok(MaybeU64(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<MaybeU64, E> {
                Ok(MaybeU64(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<MaybeU64, E> {
                Ok(MaybeU64(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeU64, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeU64(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeU64, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeU64(None))
            }
        }
        deserializer.deserialize_any(MaybeVisitor)
    }
}

/// `data`: its `seq` and `ts`.
struct Data(Option<(u64, u64)>);

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DataVisitor;
        impl<'de> Visitor<'de> for DataVisitor {
            type Value = Data;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
                let (mut seq, mut ts) = (None, None);
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Seq => seq = map.next_value::<MaybeU64>()?.0,
                        Key::Ts => ts = map.next_value::<MaybeU64>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Data(seq.zip(ts)))
            }
        }
        deserializer.deserialize_map(DataVisitor)
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MessageVisitor;
        impl<'de> Visitor<'de> for MessageVisitor {
            type Value = Message;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a gateway message object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
                let mut message = Message::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Event => {
                            let Name(name, len) = map.next_value()?;
                            (message.name, message.name_len) = (name, len);
                        }
                        Key::Data => message.bench = map.next_value::<Data>()?.0,
                        Key::Id => message.has_id = map.next_value::<Option<IgnoredAny>>()?.is_some(),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(message)
            }
        }
        deserializer.deserialize_map(MessageVisitor)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// An unmasked server frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut wire = vec![first];
        let len = payload.len();
        if len < 126 {
            wire.push(len as u8);
        } else if len <= 0xFFFF {
            wire.push(126);
            wire.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            wire.push(127);
            wire.extend_from_slice(&(len as u64).to_be_bytes());
        }
        wire.extend_from_slice(payload);
        wire
    }

    /// A message compressed as a server with no context takeover sends it: raw deflate, sync
    /// flush, the trailing `00 00 ff ff` stripped.
    pub fn deflate(message: &[u8]) -> Vec<u8> {
        let mut compress = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(message.len() + 64);
        compress
            .compress_vec(message, &mut out, FlushCompress::Sync)
            .expect("compress");
        assert_eq!(
            out[out.len() - 4..],
            DEFLATE_TAIL,
            "a sync flush ends with 00 00 ff ff"
        );
        out.truncate(out.len() - 4);
        out
    }

    /// Everything decoded, owned, with compressed messages inflated.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Message {
            text: bool,
            compressed: bool,
            fragmented: bool,
            payload: Vec<u8>,
        },
        Ping(Vec<u8>),
        Pong,
        Close(Option<u16>, Vec<u8>),
    }

    fn decode(deflate: bool, pieces: &[&[u8]]) -> Result<Vec<Seen>, String> {
        let mut decoder = FrameDecoder::new(deflate);
        let mut inflater = Inflater::default();
        let mut seen = Vec::new();
        for piece in pieces {
            decoder.feed(piece, |frame| {
                seen.push(match frame {
                    Frame::Message {
                        text,
                        compressed,
                        fragmented,
                        payload,
                    } => Seen::Message {
                        text,
                        compressed,
                        fragmented,
                        payload: if compressed {
                            inflater.inflate(payload)?.to_vec()
                        } else {
                            payload.to_vec()
                        },
                    },
                    Frame::Ping(payload) => Seen::Ping(payload.to_vec()),
                    Frame::Pong => Seen::Pong,
                    Frame::Close { code, reason } => Seen::Close(code, reason.to_vec()),
                });
                Ok(())
            })?;
        }
        Ok(seen)
    }

    fn text(payload: &[u8], compressed: bool) -> Seen {
        Seen::Message {
            text: true,
            compressed,
            fragmented: false,
            payload: payload.to_vec(),
        }
    }

    fn tick(seq: u64, pad: usize) -> Vec<u8> {
        format!(
            r#"{{"event":"bench.tick","data":{{"seq":{seq},"ts":17,"pad":"{}"}}}}"#,
            "x".repeat(pad)
        )
        .into_bytes()
    }

    /// A stream with 7-bit, 16-bit and 64-bit lengths, a ping, a pong, an empty message and a
    /// close, and what it decodes to.
    fn mixed_stream() -> (Vec<u8>, Vec<Seen>) {
        let (small, medium, large) = (tick(1, 10), tick(2, 300), tick(3, 70_000));
        let mut wire = Vec::new();
        wire.extend(frame(0x81, &small));
        wire.extend(frame(0x89, b"hi"));
        wire.extend(frame(0x81, &medium));
        wire.extend(frame(0x8A, b""));
        wire.extend(frame(0x81, b""));
        wire.extend(frame(0x81, &large));
        wire.extend(frame(0x88, &[0x03, 0xE9, b'b', b'y', b'e']));
        // Nothing after a close is read.
        wire.extend(frame(0x81, b"ignored"));
        let seen = vec![
            text(&small, false),
            Seen::Ping(b"hi".to_vec()),
            text(&medium, false),
            Seen::Pong,
            text(b"", false),
            text(&large, false),
            Seen::Close(Some(1001), b"bye".to_vec()),
        ];
        (wire, seen)
    }

    #[test]
    fn decodes_7_16_and_64_bit_lengths_whatever_the_cuts() {
        let (wire, seen) = mixed_stream();
        assert_eq!(decode(false, &[&wire]), Ok(seen.clone()));
        for size in [1, 2, 3, 7, 100, 4096, 65_536] {
            let pieces: Vec<&[u8]> = wire.chunks(size).collect();
            assert_eq!(decode(false, &pieces), Ok(seen.clone()), "pieces of {size}");
        }
        // Every single cut (in the large frame's payload, one byte in 997), and every pair of
        // cuts around the headers of the small frames.
        let every = (0..=wire.len()).filter(|&c| c < 1000 || c + 1000 > wire.len() || c % 997 == 0);
        for cut in every {
            assert_eq!(
                decode(false, &[&wire[..cut], &wire[cut..]]),
                Ok(seen.clone()),
                "cut {cut}"
            );
        }
        for first in 0..200 {
            for second in first..200 {
                let pieces = [&wire[..first], &wire[first..second], &wire[second..]];
                assert_eq!(decode(false, &pieces), Ok(seen.clone()), "cuts {first} {second}");
            }
        }
    }

    #[test]
    fn a_frame_wholly_in_a_read_is_not_buffered() {
        let wire = frame(0x81, &tick(1, 10));
        let mut decoder = FrameDecoder::new(false);
        decoder.feed(&wire[..5], |_| Ok(())).expect("feed");
        assert!(!decoder.data.is_empty(), "a cut frame is kept");
        decoder.feed(&wire[5..], |_| Ok(())).expect("feed");
        assert_eq!((decoder.data.capacity(), decoder.control.capacity()), (0, 0));
        decoder.feed(&wire, |_| Ok(())).expect("feed");
        assert_eq!((decoder.data.capacity(), decoder.control.capacity()), (0, 0));
    }

    #[test]
    fn inflates_compressed_messages_each_on_its_own() {
        let (first, second) = (tick(1, 200), tick(2, 200));
        let mut wire = frame(0xC1, &deflate(&first));
        wire.extend(frame(0x81, &tick(3, 5)));
        wire.extend(frame(0xC1, &deflate(&second)));
        // An empty compressed message: the sync flush of nothing.
        wire.extend(frame(0xC1, &deflate(b"")));
        let seen = vec![
            text(&first, true),
            text(&tick(3, 5), false),
            text(&second, true),
            text(b"", true),
        ];
        for cut in 0..=wire.len() {
            assert_eq!(
                decode(true, &[&wire[..cut], &wire[cut..]]),
                Ok(seen.clone()),
                "cut {cut}"
            );
        }
        // Compression did something.
        assert!(deflate(&first).len() < first.len() / 2);
        // A large message whose inflated size grows the output several times.
        let big = tick(4, 200_000);
        assert_eq!(
            decode(true, &[&frame(0xC1, &deflate(&big))]),
            Ok(vec![text(&big, true)])
        );
        // Without the extension negotiated, RSV1 is a protocol error.
        assert!(decode(false, &[&wire]).is_err_and(|e| e.contains("RSV1 without")));
        // A payload that is not deflate data is an inflate error.
        assert!(
            decode(true, &[&frame(0xC1, b"\xff\xff\xff\xff")]).is_err_and(|e| e.starts_with("ws_inflate"))
        );
    }

    #[test]
    fn assembles_fragments_around_control_frames() {
        let message = tick(9, 40);
        let compressed = deflate(&message);
        let mut wire = frame(0x01, &message[..10]);
        wire.extend(frame(0x89, b"p"));
        wire.extend(frame(0x00, &message[10..20]));
        wire.extend(frame(0x80, &message[20..]));
        // A compressed message in fragments: RSV1 on the first only.
        wire.extend(frame(0x41, &compressed[..3]));
        wire.extend(frame(0x80, &compressed[3..]));
        let seen = vec![
            Seen::Ping(b"p".to_vec()),
            Seen::Message {
                text: true,
                compressed: false,
                fragmented: true,
                payload: message.clone(),
            },
            Seen::Message {
                text: true,
                compressed: true,
                fragmented: true,
                payload: message.clone(),
            },
        ];
        for cut in 0..=wire.len() {
            assert_eq!(
                decode(true, &[&wire[..cut], &wire[cut..]]),
                Ok(seen.clone()),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn close_frames() {
        assert_eq!(
            decode(false, &[&frame(0x88, b"")]),
            Ok(vec![Seen::Close(None, vec![])])
        );
        assert_eq!(
            decode(false, &[&frame(0x88, &[0x0F, 0xA8])]),
            Ok(vec![Seen::Close(Some(4008), vec![])])
        );
        let mut reason = vec![0x0F, 0xA1];
        reason.extend_from_slice("token expired".as_bytes());
        let wire = frame(0x88, &reason);
        for cut in 0..=wire.len() {
            assert_eq!(
                decode(false, &[&wire[..cut], &wire[cut..]]),
                Ok(vec![Seen::Close(Some(4001), b"token expired".to_vec())])
            );
        }
        assert!(decode(false, &[&frame(0x88, b"x")]).is_err());
        assert!(decode(false, &[&frame(0x88, b"\x03\xe8\xff")]).is_err());
    }

    #[test]
    fn rejects_what_a_server_must_not_send() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2],
                "masked server frame",
            ),
            (frame(0xA1, b"x"), "RSV2 or RSV3"),
            (frame(0x83, b"x"), "unknown opcode"),
            (frame(0x09, b"x"), "fragmented control"),
            (frame(0x89, &[0u8; 126]), "over 125"),
            (frame(0xC9, b""), "RSV1 on a control"),
            (frame(0x80, b"x"), "continuation without"),
            (
                [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
                "new message inside",
            ),
            (
                [frame(0x41, b"a"), frame(0xC0, b"b")].concat(),
                "RSV1 on a continuation",
            ),
            (vec![0x81, 126, 0, 5, 1, 2, 3, 4, 5], "16-bit length under 126"),
            (
                [vec![0x81, 127], 300u64.to_be_bytes().to_vec()].concat(),
                "64-bit length under",
            ),
            (
                [vec![0x81, 127], (1u64 << 63).to_be_bytes().to_vec()].concat(),
                "top bit",
            ),
            (
                [vec![0x81, 127], (1u64 << 40).to_be_bytes().to_vec()].concat(),
                "too big",
            ),
        ];
        for (wire, expected) in cases {
            let result = decode(true, &[&wire]);
            assert!(
                result
                    .as_ref()
                    .is_err_and(|e| e.starts_with("ws_protocol: ") && e.contains(expected)),
                "{expected}: {result:?}"
            );
        }
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        client_frame(OP_TEXT, b"Hello", mask, &mut out);
        // RFC 6455, 5.7: a masked "Hello".
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        for len in [125usize, 126, 65_535, 65_536] {
            let payload = vec![7u8; len];
            let mut out = Vec::new();
            client_frame(OP_BINARY, &payload, mask, &mut out);
            let (header, masked) = match len {
                0..=125 => (2, &out[6..]),
                126..=65_535 => (4, &out[8..]),
                _ => (10, &out[14..]),
            };
            assert_eq!(out[1] & 0x80, 0x80);
            assert_eq!(out.len(), header + 4 + len);
            let unmasked: Vec<u8> = masked.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(unmasked, payload);
        }
        let mut close = Vec::new();
        close_frame(Some(1000), &mut close);
        assert_eq!(close[..2], [0x88, 0x82]);
        let code: Vec<u8> = close[6..].iter().zip(&close[2..6]).map(|(b, m)| b ^ m).collect();
        assert_eq!(code, [0x03, 0xE8]);
    }

    #[test]
    fn handshake_key_and_accept() {
        // RFC 6455, 1.3.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let request = request("127.0.0.1:8080", "/api/ws?types=bench.*", Some("t0k"), true);
        let text = String::from_utf8(request.clone()).expect("text");
        assert!(text.starts_with("GET /api/ws?types=bench.* HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(
            text.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n")
        );
        assert!(text.contains("\r\nAuthorization: Bearer t0k\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
        let key = request_key(&request).expect("key");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(key)
                .map(|k| k.len()),
            Ok(16)
        );
        let plain = String::from_utf8(super::request("h", "/api/ws", None, false)).expect("text");
        assert!(!plain.contains("Extensions") && !plain.contains("Authorization"));
    }

    #[test]
    fn checks_the_upgrade_answer() {
        let accept = accept_for("dGhlIHNhbXBsZSBub25jZQ==");
        let head = |extra: &str| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\n\
                 sec-websocket-accept: {accept}\r\n{extra}\r\n"
            )
        };
        let check = |extra: &str, offered| check_upgrade(head(extra).as_bytes(), &accept, offered);
        assert_eq!(check("", false), Ok(false));
        assert_eq!(check("", true), Ok(false), "the server may decline");
        let answer = "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n";
        assert_eq!(check(answer, true), Ok(true));
        assert_eq!(
            check("Sec-WebSocket-Extensions: permessage-deflate;server_no_context_takeover;server_max_window_bits=\"12\"\r\n", true),
            Ok(true)
        );
        for (extra, expected) in [
            (answer, "was not offered"),
            (
                "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n",
                "was not offered",
            ),
        ] {
            assert!(
                check(extra, false).is_err_and(|e| e.contains(expected)),
                "{extra}"
            );
        }
        for (extra, expected) in [
            ("Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n", "no server_no_context_takeover"),
            ("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_max_window_bits=10\r\n", "parameter"),
            ("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_max_window_bits=16\r\n", "parameter"),
            ("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover, permessage-deflate; server_no_context_takeover\r\n", "twice"),
            ("Sec-WebSocket-Protocol: chat\r\n", "subprotocol"),
        ] {
            assert!(check(extra, true).is_err_and(|e| e.contains(expected)), "{extra}");
        }
        assert!(check_upgrade(head("").as_bytes(), "wrong", false).is_err_and(|e| e.contains("Accept")));
        let no_upgrade = head("").replace("upgrade: WebSocket\r\n", "");
        assert!(check_upgrade(no_upgrade.as_bytes(), &accept, false).is_err_and(|e| e.contains("Upgrade")));
        let no_connection = head("").replace("keep-alive, Upgrade", "keep-alive");
        assert!(
            check_upgrade(no_connection.as_bytes(), &accept, false).is_err_and(|e| e.contains("Connection"))
        );
    }

    #[test]
    fn scans_messages_in_any_key_order() {
        let parse = |text: &str| Message::parse(text.as_bytes()).expect(text);
        let tick = parse(r#"{"event":"bench.tick","data":{"seq":7,"ts":1700000000123456789,"pad":"xx"}}"#);
        assert_eq!(
            (tick.name(), tick.bench, tick.has_id),
            (&b"bench.tick"[..], Some((7, 1_700_000_000_123_456_789)), false)
        );
        let reordered = parse(
            r#"{"id":"1700000000000-0","data":{"pad":"a\"}b","ts":42,"x":[1,{"seq":0}],"seq":8},"event":"bench\u002etick"}"#,
        );
        assert_eq!(
            (reordered.name(), reordered.bench, reordered.has_id),
            (&b"bench.tick"[..], Some((8, 42)), true)
        );
        let connected = parse(
            r#"{"event":"connected","data":{"connectionId":"ab","userId":"u1","role":"ops","orgs":["o"],"replica":"r","keepaliveSecs":15}}"#,
        );
        assert_eq!((connected.name(), connected.bench), (&b"connected"[..], None));
        assert!(!parse(r#"{"event":"x","data":{},"id":null}"#).has_id);
        // seq or ts that are not unsigned integers: not the bench payload.
        for data in [
            r#"{"seq":"1","ts":2}"#,
            r#"{"seq":1}"#,
            r#"{"seq":-1,"ts":2}"#,
            r#"{"seq":1.5,"ts":2}"#,
            r#"{"seq":null,"ts":2}"#,
        ] {
            assert_eq!(
                parse(&format!(r#"{{"event":"bench.tick","data":{data}}}"#)).bench,
                None,
                "{data}"
            );
        }
        assert_eq!(
            parse(&format!(r#"{{"event":"{}","data":{{}}}}"#, "x".repeat(100)))
                .name()
                .len(),
            NAME_CAPACITY
        );
        for bad in [
            "",
            "[]",
            "{\"event\":1}",
            "{\"data\":\"s\"}",
            "{\"event\":\"x\"",
            "{} x",
        ] {
            assert!(Message::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
