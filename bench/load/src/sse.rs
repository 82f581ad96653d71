//! Incremental decoding of a streamed HTTP/1.1 body (chunked or read-until-close) and of the
//! Server-Sent Events inside it, byte by byte, with no allocation: a read of any size, cut at
//! any byte, is fed as it comes, and each complete event is handed to a callback.
//!
//! The load generator reads up to a million events a second on one core, so the SSE decoder
//! does not build strings: it recognises the event name into a small fixed buffer and scans the
//! `data` field only for the bench payload's leading `{"seq":N,"ts":T` with a tiny state machine.
//! A `Content-Encoding: gzip` body is inflated (`gzip.rs`) between the chunks and the events.

use crate::gzip::GzipDecoder;

/// A malformed chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hexadecimal chunk size.
    Size,
    /// Skipping a chunk extension up to the end of the size line.
    Extension,
    /// Saw the size line's CR; expecting LF.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// After chunk data; expecting CR (or a bare LF).
    DataCr,
    /// Expecting the LF that ends chunk data.
    DataLf,
    /// After the last (zero-size) chunk: trailer lines up to an empty line.
    Trailer,
    /// The body is complete.
    Done,
}

/// Decodes `Transfer-Encoding: chunked`.
#[derive(Debug)]
pub struct ChunkDecoder {
    state: ChunkState,
    size: u64,
    size_digits: u8,
    remaining: u64,
    trailer_line_len: usize,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        Self {
            state: ChunkState::Size,
            size: 0,
            size_digits: 0,
            remaining: 0,
            trailer_line_len: 0,
        }
    }
}

impl ChunkDecoder {
    /// Whether the terminating zero-size chunk (and its trailer) has been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes `input`, calling `body` with each run of body bytes (slices of `input`).
    pub fn feed(&mut self, input: &[u8], mut body: impl FnMut(&[u8])) -> Result<(), ChunkError> {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                ChunkState::Data => {
                    let available = (input.len() - at) as u64;
                    let take = available.min(self.remaining) as usize;
                    body(&input[at..at + take]);
                    at += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Done => return Ok(()),
                _ => {}
            }
            let byte = input[at];
            at += 1;
            match self.state {
                ChunkState::Size => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (byte as char).to_digit(16).unwrap_or(0) as u64;
                        if self.size_digits >= 15 {
                            return Err(ChunkError("chunk size too large"));
                        }
                        self.size = self.size * 16 + digit;
                        self.size_digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.size_digits > 0 => self.state = ChunkState::Extension,
                    b'\r' if self.size_digits > 0 => self.state = ChunkState::SizeLf,
                    b'\n' if self.size_digits > 0 => self.end_size_line(),
                    _ => return Err(ChunkError("bad chunk size")),
                },
                ChunkState::Extension => match byte {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if byte != b'\n' {
                        return Err(ChunkError("chunk size line not ended by CRLF"));
                    }
                    self.end_size_line();
                }
                ChunkState::DataCr => match byte {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => self.start_size(),
                    _ => return Err(ChunkError("chunk data longer than its size")),
                },
                ChunkState::DataLf => {
                    if byte != b'\n' {
                        return Err(ChunkError("chunk data not ended by CRLF"));
                    }
                    self.start_size();
                }
                ChunkState::Trailer => match byte {
                    b'\n' if self.trailer_line_len == 0 => self.state = ChunkState::Done,
                    b'\n' => self.trailer_line_len = 0,
                    b'\r' => {}
                    _ => self.trailer_line_len += 1,
                },
                ChunkState::Data | ChunkState::Done => unreachable!("handled above"),
            }
        }
        Ok(())
    }

    fn start_size(&mut self) {
        self.state = ChunkState::Size;
        self.size = 0;
        self.size_digits = 0;
    }

    fn end_size_line(&mut self) {
        if self.size == 0 {
            self.state = ChunkState::Trailer;
            self.trailer_line_len = 0;
        } else {
            self.remaining = self.size;
            self.state = ChunkState::Data;
        }
    }
}

/// Which SSE field a line carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Event,
    Data,
    Id,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// At the start of a line.
    Start,
    /// Reading a field name.
    Name,
    /// Just after `name:`: one optional space is skipped.
    ValueStart(Field),
    Value(Field),
    /// A `:` comment line.
    Comment,
}

/// The bench payload the data scanner recognises: `{"seq":<digits>,"ts":<digits>...`.
const SEQ_PREFIX: &[u8] = b"{\"seq\":";
const TS_PREFIX: &[u8] = b",\"ts\":";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataScan {
    /// No `data` line yet in this event.
    Idle,
    SeqPrefix(u8),
    Seq,
    TsPrefix(u8),
    Ts,
    /// Both numbers read.
    Done,
    /// The data is not the bench payload (or a second `data` line came).
    Other,
}

/// Longest event name kept; longer names are truncated (they are not bench names).
const NAME_CAPACITY: usize = 32;

/// One dispatched event, borrowed from the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` name, or `message` when absent.
    pub name: &'a [u8],
    /// `(seq, ts)` when the data is the bench payload.
    pub bench: Option<(u64, u64)>,
    /// Whether the event carried an `id:` line (durable events do).
    pub has_id: bool,
}

/// Decodes an SSE stream (any line ending: LF, CRLF or CR).
#[derive(Debug)]
pub struct SseDecoder {
    line: LineState,
    /// The previous byte was CR: a following LF belongs to the same line ending.
    after_cr: bool,
    field_name: [u8; 8],
    field_name_len: u8,
    event_name: [u8; NAME_CAPACITY],
    event_name_len: u8,
    has_data: bool,
    has_id: bool,
    scan: DataScan,
    seq: u64,
    ts: u64,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self {
            line: LineState::Start,
            after_cr: false,
            field_name: [0; 8],
            field_name_len: 0,
            event_name: [0; NAME_CAPACITY],
            event_name_len: 0,
            has_data: false,
            has_id: false,
            scan: DataScan::Idle,
            seq: 0,
            ts: 0,
        }
    }
}

impl SseDecoder {
    /// Decodes `input`, calling `on_event` for each complete event.
    pub fn feed(&mut self, input: &[u8], mut on_event: impl FnMut(&SseEvent<'_>)) {
        let mut at = 0;
        while at < input.len() {
            let byte = input[at];
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    at += 1;
                    continue;
                }
            }
            match self.line {
                LineState::Start => {
                    at += 1;
                    match byte {
                        b'\n' | b'\r' => {
                            self.after_cr = byte == b'\r';
                            self.dispatch(&mut on_event);
                        }
                        b':' => self.line = LineState::Comment,
                        _ => {
                            self.field_name[0] = byte;
                            self.field_name_len = 1;
                            self.line = LineState::Name;
                        }
                    }
                }
                LineState::Name => {
                    at += 1;
                    match byte {
                        b':' => self.line = LineState::ValueStart(self.field()),
                        b'\n' | b'\r' => {
                            // A field with no colon has an empty value.
                            let field = self.field();
                            self.begin_value(field);
                            self.end_line(field, byte);
                        }
                        _ => {
                            let len = self.field_name_len as usize;
                            if len < self.field_name.len() {
                                self.field_name[len] = byte;
                            }
                            self.field_name_len = self.field_name_len.saturating_add(1);
                        }
                    }
                }
                LineState::ValueStart(field) => {
                    self.begin_value(field);
                    self.line = LineState::Value(field);
                    if byte == b' ' {
                        at += 1;
                    }
                }
                LineState::Value(field) => {
                    let rest = &input[at..];
                    let end = rest
                        .iter()
                        .position(|&b| b == b'\n' || b == b'\r')
                        .unwrap_or(rest.len());
                    self.value_bytes(field, &rest[..end]);
                    at += end;
                    if end < rest.len() {
                        self.end_line(field, rest[end]);
                        at += 1;
                    }
                }
                LineState::Comment => {
                    let rest = &input[at..];
                    match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                        Some(end) => {
                            self.after_cr = rest[end] == b'\r';
                            self.line = LineState::Start;
                            at += end + 1;
                        }
                        None => at = input.len(),
                    }
                }
            }
        }
    }

    fn field(&self) -> Field {
        match &self.field_name[..(self.field_name_len as usize).min(self.field_name.len())] {
            _ if self.field_name_len as usize > self.field_name.len() => Field::Other,
            b"data" => Field::Data,
            b"event" => Field::Event,
            b"id" => Field::Id,
            _ => Field::Other,
        }
    }

    fn begin_value(&mut self, field: Field) {
        match field {
            Field::Data => {
                self.has_data = true;
                self.scan = match self.scan {
                    DataScan::Idle => DataScan::SeqPrefix(0),
                    _ => DataScan::Other,
                };
            }
            Field::Event => self.event_name_len = 0,
            Field::Id => self.has_id = true,
            Field::Other => {}
        }
    }

    fn value_bytes(&mut self, field: Field, bytes: &[u8]) {
        match field {
            Field::Data => {
                for &byte in bytes {
                    if !self.scanning() || !self.scan_byte(byte) {
                        break;
                    }
                }
            }
            Field::Event => {
                for &byte in bytes {
                    let len = self.event_name_len as usize;
                    if len < NAME_CAPACITY {
                        self.event_name[len] = byte;
                        self.event_name_len += 1;
                    }
                }
            }
            Field::Id | Field::Other => {}
        }
    }

    /// Whether the payload scanner still needs bytes.
    fn scanning(&self) -> bool {
        matches!(
            self.scan,
            DataScan::SeqPrefix(_) | DataScan::Seq | DataScan::TsPrefix(_) | DataScan::Ts
        )
    }

    /// Advances the payload scanner by one byte; false once the outcome is known.
    fn scan_byte(&mut self, byte: u8) -> bool {
        self.scan = match self.scan {
            DataScan::SeqPrefix(i) => {
                if SEQ_PREFIX[i as usize] != byte {
                    DataScan::Other
                } else if i as usize + 1 == SEQ_PREFIX.len() {
                    self.seq = 0;
                    DataScan::Seq
                } else {
                    DataScan::SeqPrefix(i + 1)
                }
            }
            DataScan::Seq if byte.is_ascii_digit() => {
                self.seq = self.seq.wrapping_mul(10).wrapping_add((byte - b'0') as u64);
                DataScan::Seq
            }
            DataScan::Seq if byte == TS_PREFIX[0] => DataScan::TsPrefix(1),
            DataScan::TsPrefix(i) => {
                if TS_PREFIX[i as usize] != byte {
                    DataScan::Other
                } else if i as usize + 1 == TS_PREFIX.len() {
                    self.ts = 0;
                    DataScan::Ts
                } else {
                    DataScan::TsPrefix(i + 1)
                }
            }
            DataScan::Ts if byte.is_ascii_digit() => {
                self.ts = self.ts.wrapping_mul(10).wrapping_add((byte - b'0') as u64);
                DataScan::Ts
            }
            DataScan::Ts => DataScan::Done,
            DataScan::Seq | DataScan::Idle | DataScan::Done | DataScan::Other => DataScan::Other,
        };
        self.scanning()
    }

    fn end_line(&mut self, field: Field, terminator: u8) {
        if field == Field::Data && self.scan == DataScan::Ts {
            // `{"seq":1,"ts":2` cut by the line end: the numbers are complete, the JSON is not
            // ours to judge.
            self.scan = DataScan::Done;
        } else if field == Field::Data && !matches!(self.scan, DataScan::Done) {
            self.scan = DataScan::Other;
        }
        self.after_cr = terminator == b'\r';
        self.line = LineState::Start;
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&SseEvent<'_>)) {
        if self.has_data {
            let name: &[u8] = if self.event_name_len == 0 {
                b"message"
            } else {
                &self.event_name[..self.event_name_len as usize]
            };
            let bench = (self.scan == DataScan::Done).then_some((self.seq, self.ts));
            on_event(&SseEvent {
                name,
                bench,
                has_id: self.has_id,
            });
        }
        self.has_data = false;
        self.has_id = false;
        self.event_name_len = 0;
        self.scan = DataScan::Idle;
    }
}

/// A parsed HTTP/1.1 response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub chunked: bool,
    /// The `Content-Encoding`, lowercased, when there is one.
    pub content_encoding: Option<String>,
    /// Length of the head including the blank line.
    pub len: usize,
}

/// Parses a response head from the start of `buffer`: `Ok(None)` until the blank line arrives.
pub fn parse_head(buffer: &[u8]) -> Result<Option<ResponseHead>, &'static str> {
    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buffer.len() > 16 * 1024 {
            return Err("response head too large");
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buffer[..end]).map_err(|_| "response head is not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
        return Err("not an HTTP/1.x response");
    }
    let status = parts
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("bad status line")?;
    let mut chunked = false;
    let mut content_encoding: Option<String> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim().to_ascii_lowercase());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked |= value.contains("chunked");
        } else if name.eq_ignore_ascii_case("content-encoding") {
            // Repeated headers are one list (RFC 9110, 5.3).
            content_encoding = Some(match content_encoding {
                Some(before) => format!("{before}, {value}"),
                None => value,
            });
        }
    }
    Ok(Some(ResponseHead {
        status,
        chunked,
        content_encoding,
        len: end + 4,
    }))
}

/// An SSE response body as it comes off the socket: chunked or read until close, gzip or not,
/// decoded down to events. The inflater exists only for a compressed body.
#[derive(Debug)]
pub struct SseBody {
    /// `None`: read until the connection closes.
    chunks: Option<ChunkDecoder>,
    gzip: Option<Box<GzipDecoder>>,
    sse: SseDecoder,
    /// Bytes of the event stream itself: after the chunk framing and, for a compressed body,
    /// once inflated.
    pub inflated_bytes: u64,
}

impl SseBody {
    /// The decoder of the body `head` announces; refuses a content coding it cannot undo.
    pub fn new(head: &ResponseHead) -> Result<Self, String> {
        let gzip = match head.content_encoding.as_deref() {
            None | Some("identity") | Some("") => None,
            Some("gzip") | Some("x-gzip") => Some(Box::default()),
            Some(other) => return Err(format!("unsupported_content_encoding: {other}")),
        };
        Ok(Self {
            chunks: head.chunked.then(ChunkDecoder::default),
            gzip,
            sse: SseDecoder::default(),
            inflated_bytes: 0,
        })
    }

    /// Whether the body is gzip.
    pub fn is_compressed(&self) -> bool {
        self.gzip.is_some()
    }

    /// Whether a gzip body's final block and trailer were read and matched (false for plain).
    pub fn gzip_complete(&self) -> bool {
        self.gzip.as_ref().is_some_and(|gzip| gzip.is_done())
    }

    /// Decodes `bytes` (any cut of the body), calling `on_event` for each complete event;
    /// `scratch` is the inflater's output buffer. False once the body has ended (the last chunk).
    pub fn feed(
        &mut self,
        bytes: &[u8],
        scratch: &mut Vec<u8>,
        mut on_event: impl FnMut(&SseEvent<'_>),
    ) -> Result<bool, String> {
        let Self {
            chunks,
            gzip,
            sse,
            inflated_bytes,
        } = self;
        let mut error = None;
        let mut body = |piece: &[u8]| {
            if error.is_some() {
                return;
            }
            match gzip {
                Some(gzip) => {
                    let inflated = gzip.feed(piece, scratch, |plain| {
                        *inflated_bytes += plain.len() as u64;
                        sse.feed(plain, &mut on_event);
                    });
                    error = inflated.err();
                }
                None => {
                    *inflated_bytes += piece.len() as u64;
                    sse.feed(piece, &mut on_event);
                }
            }
        };
        let more = match chunks {
            Some(chunks) => {
                chunks
                    .feed(bytes, &mut body)
                    .map_err(|e| format!("bad_chunk: {e}"))?;
                !chunks.is_done()
            }
            None => {
                body(bytes);
                true
            }
        };
        match error {
            Some(error) => Err(error),
            None => Ok(more),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything an SSE stream delivered, owned, for comparisons.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        name: String,
        bench: Option<(u64, u64)>,
        has_id: bool,
    }

    fn decode_sse(pieces: &[&[u8]]) -> Vec<Seen> {
        let mut decoder = SseDecoder::default();
        let mut seen = Vec::new();
        for piece in pieces {
            decoder.feed(piece, |event| {
                seen.push(Seen {
                    name: String::from_utf8_lossy(event.name).into_owned(),
                    bench: event.bench,
                    has_id: event.has_id,
                })
            });
        }
        seen
    }

    fn every_split(stream: &[u8]) -> impl Iterator<Item = Vec<Seen>> + '_ {
        (0..=stream.len()).map(move |cut| decode_sse(&[&stream[..cut], &stream[cut..]]))
    }

    const GATEWAY_STREAM: &[u8] = b"retry: 3000\n\n\
        event: connected\ndata: {\"connectionId\":\"00ab\",\"userId\":\"u1\"}\n\n\
        event: bench.tick\ndata: {\"seq\":7,\"ts\":1700000000123456789,\"pad\":\"xx\"}\n\n\
        : a comment\n\
        id: 1700000000000-0\nevent: bench.tick\ndata: {\"seq\":8,\"ts\":42}\n\n\
        event: keepalive\ndata: {\"time\":\"2026-11-27T06:09:03Z\"}\n\n";

    fn gateway_events() -> Vec<Seen> {
        let seen = |name: &str, bench, has_id| Seen {
            name: name.into(),
            bench,
            has_id,
        };
        vec![
            seen("connected", None, false),
            seen("bench.tick", Some((7, 1_700_000_000_123_456_789)), false),
            seen("bench.tick", Some((8, 42)), true),
            seen("keepalive", None, false),
        ]
    }

    #[test]
    fn decodes_a_gateway_stream_cut_at_every_byte() {
        for (cut, seen) in every_split(GATEWAY_STREAM).enumerate() {
            assert_eq!(seen, gateway_events(), "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = GATEWAY_STREAM.chunks(1).collect();
        assert_eq!(decode_sse(&bytes), gateway_events());
    }

    #[test]
    fn accepts_crlf_and_cr_line_endings() {
        let crlf = String::from_utf8_lossy(GATEWAY_STREAM).replace('\n', "\r\n");
        let cr = String::from_utf8_lossy(GATEWAY_STREAM).replace('\n', "\r");
        for stream in [crlf.as_bytes(), cr.as_bytes()] {
            for seen in every_split(stream) {
                assert_eq!(seen, gateway_events());
            }
        }
    }

    #[test]
    fn data_that_is_not_the_bench_payload_is_an_event_without_numbers() {
        let seen = decode_sse(&[b"data: {\"ts\":1,\"seq\":2}\n\n\
            data: {\"seq\":x}\n\n\
            data: {\"seq\":1,\"ts\":2}\ndata: second line\n\n\
            data:{\"seq\":3,\"ts\":4}\n\n\
            data\n\n\
            event: no-data\n\n"]);
        let benches: Vec<_> = seen.iter().map(|s| s.bench).collect();
        assert_eq!(benches, vec![None, None, None, Some((3, 4)), None]);
        assert!(seen.iter().all(|s| s.name == "message"));
    }

    #[test]
    fn a_long_event_name_is_truncated_not_overflowed() {
        let long = "x".repeat(100);
        let stream = format!("event: {long}\nverylongfieldname: 1\ndata: {{}}\n\n");
        let seen = decode_sse(&[stream.as_bytes()]);
        assert_eq!(seen[0].name.len(), NAME_CAPACITY);
    }

    fn decode_chunked(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool), ChunkError> {
        let mut decoder = ChunkDecoder::default();
        let mut body = Vec::new();
        for piece in pieces {
            decoder.feed(piece, |bytes| body.extend_from_slice(bytes))?;
        }
        Ok((body, decoder.is_done()))
    }

    #[test]
    fn decodes_chunks_cut_at_every_byte() {
        let wire: &[u8] =
            b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        let body = b"helloabcdefghijklmnopqrstuvwxyz0123456789".to_vec();
        for cut in 0..=wire.len() {
            for second in cut..=wire.len() {
                let decoded = decode_chunked(&[&wire[..cut], &wire[cut..second], &wire[second..]]);
                assert_eq!(decoded, Ok((body.clone(), true)), "cuts {cut} {second}");
            }
        }
    }

    #[test]
    fn rejects_malformed_chunks() {
        assert!(decode_chunked(&[b"zz\r\n"]).is_err());
        assert!(decode_chunked(&[b"\r\n"]).is_err());
        assert!(decode_chunked(&[b"2\r\nabc\r\n"]).is_err());
        assert!(decode_chunked(&[b"2\rX"]).is_err());
        assert!(decode_chunked(&[b"ffffffffffffffffff\r\n"]).is_err());
    }

    #[test]
    fn parses_a_response_head() {
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nrest";
        assert_eq!(
            parse_head(head),
            Ok(Some(ResponseHead {
                status: 200,
                chunked: true,
                content_encoding: None,
                len: head.len() - 4
            }))
        );
        assert_eq!(parse_head(b"HTTP/1.1 429 Too Many"), Ok(None));
        assert_eq!(
            parse_head(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\n\r\n{}")
                .ok()
                .flatten()
                .map(|h| (h.status, h.chunked)),
            Some((429, false))
        );
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn reads_the_content_coding_and_refuses_one_it_cannot_undo() {
        let head = |extra: &str| {
            let text = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n{extra}\r\n");
            parse_head(text.as_bytes()).expect("parses").expect("complete")
        };
        assert_eq!(head("").content_encoding, None);
        assert_eq!(
            head("Content-Encoding: GZIP\r\n").content_encoding.as_deref(),
            Some("gzip")
        );
        assert_eq!(
            head("content-encoding: gzip\r\ncontent-encoding: br\r\n")
                .content_encoding
                .as_deref(),
            Some("gzip, br")
        );
        for (extra, compressed) in [
            ("", Some(false)),
            ("content-encoding: identity\r\n", Some(false)),
            ("content-encoding: gzip\r\n", Some(true)),
            ("content-encoding: x-gzip\r\n", Some(true)),
            ("content-encoding: br\r\n", None),
            ("content-encoding: gzip, gzip\r\n", None),
        ] {
            let body = SseBody::new(&head(extra));
            assert_eq!(
                body.as_ref().ok().map(SseBody::is_compressed),
                compressed,
                "{extra}"
            );
        }
    }

    #[test]
    fn a_body_is_dechunked_and_inflated_down_to_its_events() {
        use crate::gzip::tests::{gzip_stream, Block};
        let frames: Vec<Vec<u8>> = vec![GATEWAY_STREAM[..13].to_vec(), GATEWAY_STREAM[13..].to_vec()];
        let (wire, _) = gzip_stream(&frames, &[Block::Compressed], true);
        let mut chunked = format!("{:x}\r\n", wire.len()).into_bytes();
        chunked.extend_from_slice(&wire);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let head =
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n")
                .expect("parses")
                .expect("complete");
        for cut in 0..=chunked.len() {
            let mut body = SseBody::new(&head).expect("gzip");
            let mut scratch = Vec::new();
            let mut seen = Vec::new();
            let mut more = true;
            for piece in [&chunked[..cut], &chunked[cut..]] {
                more = body
                    .feed(piece, &mut scratch, |event| {
                        seen.push(Seen {
                            name: String::from_utf8_lossy(event.name).into_owned(),
                            bench: event.bench,
                            has_id: event.has_id,
                        })
                    })
                    .expect("valid");
            }
            assert_eq!(seen, gateway_events(), "cut {cut}");
            assert!(!more && body.gzip_complete(), "cut {cut}");
            assert_eq!(body.inflated_bytes, GATEWAY_STREAM.len() as u64);
        }
    }
}
