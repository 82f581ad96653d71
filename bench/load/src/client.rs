//! One client connection: a raw `TcpStream` (bound to its own 127.0.0.x source address), a
//! hand-written `GET` request, and the incremental decoders of `sse.rs` (SSE) or `ws.rs`
//! (WebSocket) fed from one read buffer per thread, so an open connection holds no buffer of its
//! own. Both transports feed the same counting: an event's name, whether it has an id, and the
//! bench payload's `seq` and `ts`.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tokio::io::Interest;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::sse::{parse_head, SseBody, SseEvent};
use crate::tally::ConnTally;
use crate::ws::{self, FrameDecoder, Inflater};

/// Size of each thread's read buffer.
const READ_BUFFER: usize = 64 * 1024;
/// Latency histograms are sharded by connection so that threads rarely share a lock.
const LATENCY_SHARDS: usize = 16;
/// Source addresses used: 127.0.0.2 ..= 127.0.0.251.
const SOURCE_ADDRESSES: u32 = 250;

/// How streams are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Server-Sent Events (`GET /api/events`).
    Sse,
    /// WebSocket (`GET /api/ws`): one JSON text message per event.
    Ws,
}

/// What an SSE request accepts as `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AcceptEncoding {
    /// `Accept-Encoding: identity`: the stream as is.
    Identity,
    /// `Accept-Encoding: gzip`: a gzip stream, inflated incrementally per connection.
    Gzip,
}

impl AcceptEncoding {
    pub fn header_value(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Gzip => "gzip",
        }
    }
}

/// When a connection counts as established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EstablishedOn {
    /// The `connected` event (the gateway sends it once subscribed to every org of the token).
    Connected,
    /// A `200` (SSE) or `101` (WebSocket) response head (targets without a `connected` event,
    /// such as Nchan).
    Headers,
}

/// State shared by every connection of a run.
pub struct ClientShared {
    pub target: SocketAddr,
    pub transport: Transport,
    /// WebSocket: the requests offer permessage-deflate.
    pub ws_deflate: bool,
    /// WebSocket: send `{"op":"ping"}` this often once established.
    pub ws_ping: Option<Duration>,
    /// Bind each socket to 127.0.0.(2 + i % 250) before connecting (loopback targets only).
    pub spread_sources: bool,
    pub established_on: EstablishedOn,
    pub handshake_timeout: Duration,
    /// Org index of each published sequence number.
    pub event_orgs: Arc<[u32]>,
    /// Publish-to-receive latency, in microseconds.
    pub latency: Vec<Mutex<Histogram<u64>>>,
    /// Connect start to established, in microseconds.
    pub connect_time: Mutex<Histogram<u64>>,
    pub established: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    /// Bench events delivered, duplicates included.
    pub deliveries: AtomicU64,
}

impl ClientShared {
    pub fn new(
        target: SocketAddr,
        transport: Transport,
        spread_sources: bool,
        established_on: EstablishedOn,
        handshake_timeout: Duration,
        event_orgs: Arc<[u32]>,
    ) -> Self {
        Self {
            target,
            transport,
            ws_deflate: false,
            ws_ping: None,
            spread_sources,
            established_on,
            handshake_timeout,
            event_orgs,
            latency: (0..LATENCY_SHARDS)
                .map(|_| Mutex::new(latency_histogram()))
                .collect(),
            connect_time: Mutex::new(latency_histogram()),
            established: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
        }
    }

    /// All latency shards merged.
    pub fn merged_latency(&self) -> Histogram<u64> {
        let mut merged = latency_histogram();
        for shard in &self.latency {
            if let Ok(shard) = shard.lock() {
                let _ = merged.add(&*shard);
            }
        }
        merged
    }
}

/// A histogram of microseconds from 1 µs to 10 minutes, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

/// What became of one connection.
#[derive(Debug, Default)]
pub struct ConnRecord {
    pub index: usize,
    /// Connect start to established, when it was.
    pub connect_us: Option<u64>,
    /// Why it never became established.
    pub failure: Option<String>,
    /// Why it ended after being established, before the run closed it.
    pub dropped: Option<String>,
    pub tally: ConnTally,
    pub keepalives: u64,
    /// Events that are neither `connected`, `keepalive` nor bench events.
    pub other_events: u64,
    /// Bench-named events whose data did not scan.
    pub unparsed: u64,
    /// Events that carried an `id:` line.
    pub with_id: u64,
    /// Reads that returned bytes after the response head: deliveries per read show how many
    /// frames the server sends per write when the client keeps up.
    pub reads: u64,
    /// Bytes received after the response head (chunk framing or WebSocket framing included,
    /// compressed as sent).
    pub wire_bytes: u64,
    /// SSE: bytes of the event stream itself, after the chunk framing and, for a gzip stream,
    /// once inflated.
    pub inflated_bytes: u64,
    /// SSE: the response was `Content-Encoding: gzip`.
    pub gzip: bool,
    /// SSE: the gzip stream ended cleanly (final block, CRC-32 and length checked).
    pub gzip_complete: bool,
    pub ws: WsCounts,
}

/// What a WebSocket connection saw besides events.
#[derive(Debug, Default, Clone, Copy)]
pub struct WsCounts {
    /// permessage-deflate was negotiated.
    pub deflate: bool,
    /// Data messages received.
    pub messages: u64,
    /// Of which compressed (RSV1).
    pub compressed: u64,
    /// Of which sent in more than one frame.
    pub fragmented: u64,
    /// Of which binary.
    pub binary: u64,
    /// Bytes of the messages once inflated.
    pub message_bytes: u64,
    /// Text messages that are not a JSON object with a string `event` and object `data`.
    pub bad_messages: u64,
    /// Server pings answered.
    pub server_pings: u64,
    /// `{"op":"ping"}` sent, and `pong` events received.
    pub pings_sent: u64,
    pub pongs: u64,
    /// `error` events.
    pub errors: u64,
    /// The server's close code (`Some(None)`: a close frame without one).
    pub close: Option<Option<u16>>,
}

/// Scratch space of one thread: the read buffer and the latencies of one read.
struct Scratch {
    buffer: Box<[u8]>,
    latencies: Vec<u64>,
    /// Made when a thread first reads a compressed message.
    inflater: Option<Box<Inflater>>,
    /// What gzip streams inflate into, grown when a thread first reads one.
    inflated: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        buffer: vec![0; READ_BUFFER].into_boxed_slice(),
        latencies: Vec::with_capacity(1024),
        inflater: None,
        inflated: Vec::new(),
    });
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A short name for an IO failure.
pub fn io_reason(error: &io::Error) -> String {
    if error.raw_os_error() == Some(24) {
        return "too_many_open_files".into();
    }
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connect_refused".into(),
        io::ErrorKind::ConnectionReset => "reset".into(),
        io::ErrorKind::ConnectionAborted => "aborted".into(),
        io::ErrorKind::BrokenPipe => "broken_pipe".into(),
        io::ErrorKind::AddrNotAvailable => "addr_not_available".into(),
        io::ErrorKind::AddrInUse => "addr_in_use".into(),
        io::ErrorKind::TimedOut => "timeout".into(),
        kind => format!("io_{kind:?}").to_lowercase(),
    }
}

/// Reads what is available. A short read means the socket's receive queue was drained, so the
/// readiness is cleared then and there (tokio would otherwise need one more `read` returning
/// `EAGAIN` per wake-up); readiness that arrived meanwhile is kept, as tokio compares ticks.
fn read_available(stream: &TcpStream, buffer: &mut [u8]) -> io::Result<usize> {
    let capacity = buffer.len();
    let mut got = 0;
    let result = stream.try_io(Interest::READABLE, || {
        let n = stream.try_read(buffer)?;
        got = n;
        if n > 0 && n < capacity {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match result {
        Err(error) if error.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

async fn connect(shared: &ClientShared, index: usize) -> io::Result<TcpStream> {
    let socket = match shared.target.ip() {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if shared.spread_sources && shared.target.is_ipv4() {
        let last = 2 + (index as u32 % SOURCE_ADDRESSES) as u8;
        socket.bind(SocketAddr::new(Ipv4Addr::new(127, 0, 0, last).into(), 0))?;
    }
    let stream = socket.connect(shared.target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The decoders of one connection.
enum Decoder {
    Sse(SseBody),
    Ws(FrameDecoder),
}

/// Per-connection decoding and counting state.
struct Receiver<'a> {
    shared: &'a ClientShared,
    record: ConnRecord,
    decoder: Decoder,
    /// A `connected` event was decoded in the current read.
    connected: bool,
    /// WebSocket frames to send (pongs, the close reply); empty (no allocation) otherwise.
    outgoing: Vec<u8>,
}

/// Counts one event, whichever transport carried it.
fn count_event(
    shared: &ClientShared,
    record: &mut ConnRecord,
    connected: &mut bool,
    (name, bench, has_id): (&[u8], Option<(u64, u64)>, bool),
    received_ns: u64,
    latencies: &mut Vec<u64>,
) {
    if has_id {
        record.with_id += 1;
    }
    if let Some((seq, ts)) = bench {
        let org = shared.event_orgs.get(seq as usize).copied();
        record.tally.record(seq, org);
        latencies.push(received_ns.saturating_sub(ts) / 1000);
        return;
    }
    match name {
        b"connected" => *connected = true,
        b"keepalive" => record.keepalives += 1,
        b"pong" if shared.transport == Transport::Ws => record.ws.pongs += 1,
        b"error" if shared.transport == Transport::Ws => {
            record.ws.errors += 1;
            record.other_events += 1;
        }
        crate::plan::EVENT_TYPE_BYTES => record.unparsed += 1,
        _ => record.other_events += 1,
    }
}

impl Receiver<'_> {
    /// Feeds body bytes; returns false when the body has ended. `inflater`: the thread's, made
    /// on first use; `inflated`: the thread's output buffer for gzip streams.
    fn feed(
        &mut self,
        bytes: &[u8],
        received_ns: u64,
        latencies: &mut Vec<u64>,
        inflater: &mut Option<Box<Inflater>>,
        inflated: &mut Vec<u8>,
    ) -> Result<bool, String> {
        let Self {
            shared,
            record,
            decoder,
            connected,
            outgoing,
        } = self;
        match decoder {
            Decoder::Sse(body) => {
                let fed = body.feed(bytes, inflated, |event: &SseEvent<'_>| {
                    let event = (event.name, event.bench, event.has_id);
                    count_event(shared, record, connected, event, received_ns, latencies);
                });
                record.inflated_bytes = body.inflated_bytes;
                record.gzip_complete = body.gzip_complete();
                fed
            }
            Decoder::Ws(frames) => {
                frames.feed(bytes, |frame| {
                    match frame {
                        ws::Frame::Message {
                            text,
                            compressed,
                            fragmented,
                            payload,
                        } => {
                            let counts = &mut record.ws;
                            counts.messages += 1;
                            counts.fragmented += fragmented as u64;
                            let payload = if compressed {
                                counts.compressed += 1;
                                inflater.get_or_insert_with(Box::default).inflate(payload)?
                            } else {
                                payload
                            };
                            counts.message_bytes += payload.len() as u64;
                            if !text {
                                counts.binary += 1;
                                return Ok(());
                            }
                            if std::str::from_utf8(payload).is_err() {
                                return Err("ws_protocol: text message is not UTF-8".into());
                            }
                            match ws::Message::parse(payload) {
                                Ok(message) => {
                                    let event = (message.name(), message.bench, message.has_id);
                                    count_event(shared, record, connected, event, received_ns, latencies);
                                }
                                Err(_) => counts.bad_messages += 1,
                            }
                        }
                        ws::Frame::Ping(payload) => {
                            record.ws.server_pings += 1;
                            ws::client_frame(ws::OP_PONG, payload, rand::random(), outgoing);
                        }
                        ws::Frame::Pong => {}
                        ws::Frame::Close { code, .. } => {
                            record.ws.close = Some(code);
                            // Echo the code (RFC 6455, 5.5.1); an empty close for none.
                            ws::close_frame(code, outgoing);
                        }
                    }
                    Ok(())
                })?;
                Ok(!frames.is_closed())
            }
        }
    }
}

/// Opens connection `index`, sends `request`, reads the stream until `stop` changes (or the
/// peer ends it) and returns what it received. `permit` (a slot of the in-flight handshake cap)
/// is released once the connection is established or has failed.
pub async fn run_connection(
    index: usize,
    request: Vec<u8>,
    shared: Arc<ClientShared>,
    permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) -> ConnRecord {
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + shared.handshake_timeout);
    let mut permit = Some(permit);
    let record = ConnRecord {
        index,
        ..ConnRecord::default()
    };
    let fail = |mut record: ConnRecord, reason: String| {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        record.failure = Some(reason);
        record
    };

    let stream = match tokio::time::timeout_at(deadline, connect(&shared, index)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return fail(record, io_reason(&error)),
        Err(_) => return fail(record, "connect_timeout".into()),
    };
    // WebSocket: the answer the key of the request calls for.
    let expected_accept = match shared.transport {
        Transport::Sse => None,
        Transport::Ws => match ws::request_key(&request) {
            Some(key) => Some(ws::accept_for(key)),
            None => return fail(record, "ws_request_without_key".into()),
        },
    };
    match tokio::time::timeout_at(deadline, write_all(&stream, &request)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return fail(record, io_reason(&error)),
        Err(_) => return fail(record, "handshake_timeout".into()),
    }
    drop(request);

    // The response head, then whatever body bytes came with it.
    let mut head_bytes: Vec<u8> = Vec::with_capacity(512);
    let (head, leftover) = loop {
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return fail(record, io_reason(&error)),
            Err(_) => return fail(record, "handshake_timeout".into()),
        }
        let read = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let n = read_available(&stream, &mut scratch.buffer)?;
            head_bytes.extend_from_slice(&scratch.buffer[..n]);
            Ok::<usize, io::Error>(n)
        });
        match read {
            Ok(0) => return fail(record, "eof_before_response".into()),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return fail(record, io_reason(&error)),
        }
        match parse_head(&head_bytes) {
            Ok(Some(head)) => {
                let leftover = head_bytes.split_off(head.len);
                break (head, leftover);
            }
            Ok(None) => {}
            Err(reason) => return fail(record, format!("bad_response: {reason}")),
        }
    };
    let accepted = match shared.transport {
        Transport::Sse => 200,
        Transport::Ws => 101,
    };
    if head.status != accepted {
        let text = String::from_utf8_lossy(&leftover);
        let code = text
            .split_once("\"code\":\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(code, _)| format!(" {code}"))
            .unwrap_or_default();
        return fail(record, format!("http_{}{code}", head.status));
    }
    let mut record = record;
    let decoder = match &expected_accept {
        None => match SseBody::new(&head) {
            Ok(body) => {
                record.gzip = body.is_compressed();
                Decoder::Sse(body)
            }
            Err(reason) => return fail(record, reason),
        },
        Some(accept) => match ws::check_upgrade(&head_bytes[..head.len], accept, shared.ws_deflate) {
            Ok(deflate) => {
                record.ws.deflate = deflate;
                Decoder::Ws(FrameDecoder::new(deflate))
            }
            Err(reason) => return fail(record, reason),
        },
    };
    drop(head_bytes);
    let is_ws = matches!(decoder, Decoder::Ws(_));

    let mut receiver = Receiver {
        shared: &shared,
        record,
        decoder,
        connected: false,
        outgoing: Vec::new(),
    };
    let mut established = false;
    let establish = |receiver: &mut Receiver<'_>, permit: &mut Option<OwnedSemaphorePermit>| {
        let micros = started.elapsed().as_micros() as u64;
        receiver.record.connect_us = Some(micros);
        if let Ok(mut histogram) = shared.connect_time.lock() {
            histogram.saturating_record(micros.max(1));
        }
        shared.established.fetch_add(1, Ordering::Relaxed);
        permit.take();
    };
    if shared.established_on == EstablishedOn::Headers {
        establish(&mut receiver, &mut permit);
        established = true;
    }
    receiver.record.wire_bytes += leftover.len() as u64;
    let mut pending: Option<Vec<u8>> = (!leftover.is_empty()).then_some(leftover);
    // WebSocket: when the next `{"op":"ping"}` is due.
    let mut ping_at: Option<tokio::time::Instant> = None;

    loop {
        let outcome = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let Scratch {
                buffer,
                latencies,
                inflater,
                inflated,
            } = &mut *scratch;
            let result = match pending.take() {
                Some(bytes) => receiver.feed(&bytes, now_nanos(), latencies, inflater, inflated),
                None => match read_available(&stream, buffer) {
                    Ok(0) => Err("eof".to_string()),
                    Ok(n) => {
                        receiver.record.reads += 1;
                        receiver.record.wire_bytes += n as u64;
                        receiver.feed(&buffer[..n], now_nanos(), latencies, inflater, inflated)
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(true),
                    Err(error) => Err(io_reason(&error)),
                },
            };
            if !latencies.is_empty() {
                shared
                    .deliveries
                    .fetch_add(latencies.len() as u64, Ordering::Relaxed);
                if let Ok(mut histogram) = shared.latency[index % LATENCY_SHARDS].lock() {
                    for &micros in latencies.iter() {
                        histogram.saturating_record(micros.max(1));
                    }
                }
                latencies.clear();
            }
            match result {
                Ok(true) => Ok(()),
                Ok(false) if is_ws => Err(match receiver.record.ws.close {
                    Some(Some(code)) => format!("ws_close_{code}"),
                    _ => "ws_close_without_code".to_string(),
                }),
                // A gzip stream that ends cleanly ends with its final block and trailer.
                Ok(false) if receiver.record.gzip && !receiver.record.gzip_complete => {
                    Err("stream_ended_without_gzip_trailer".to_string())
                }
                Ok(false) => Err("stream_ended".to_string()),
                Err(reason) => Err(reason),
            }
        });
        // Pongs and the close reply go out before anything else happens.
        if !receiver.outgoing.is_empty() {
            let outgoing = std::mem::take(&mut receiver.outgoing);
            let sent = tokio::time::timeout(Duration::from_secs(2), write_all(&stream, &outgoing)).await;
            if !matches!(sent, Ok(Ok(()))) && outcome.is_ok() {
                let reason = match sent {
                    Ok(Err(error)) => io_reason(&error),
                    _ => "ws_write_timeout".into(),
                };
                let mut record = receiver.record;
                if established {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    record.dropped = Some(reason);
                    return record;
                }
                return fail(record, reason);
            }
        }
        if receiver.connected && !established {
            establish(&mut receiver, &mut permit);
            established = true;
        }
        receiver.connected = false;
        if let Err(reason) = outcome {
            let mut record = receiver.record;
            if established {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                record.dropped = Some(reason);
                return record;
            }
            let reason = if reason == "eof" {
                "eof_before_connected".into()
            } else {
                reason
            };
            return fail(record, reason);
        }
        if established {
            if let (None, Some(every)) = (ping_at, shared.ws_ping.filter(|_| is_ws)) {
                ping_at = Some(tokio::time::Instant::now() + every);
            }
            let ping_due = async {
                match ping_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ready = stream.readable() => if let Err(error) = ready {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    let mut record = receiver.record;
                    record.dropped = Some(io_reason(&error));
                    return record;
                },
                _ = ping_due => {
                    ping_at = ping_at.zip(shared.ws_ping).map(|(at, every)| at + every);
                    ws::client_frame(ws::OP_TEXT, br#"{"op":"ping"}"#, rand::random(), &mut receiver.outgoing);
                    receiver.record.ws.pings_sent += 1;
                    // Sent at the top of the loop, after a read that finds nothing.
                },
                _ = stop.changed() => {
                    if is_ws {
                        // A polite end, not waited for: the run is over.
                        let mut close = Vec::new();
                        ws::close_frame(Some(1000), &mut close);
                        let _ = stream.try_write(&close);
                    }
                    return receiver.record;
                }
            }
        } else {
            tokio::select! {
                ready = stream.readable() => if let Err(error) = ready {
                    return fail(receiver.record, io_reason(&error));
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return fail(receiver.record, "handshake_timeout".into());
                }
                _ = stop.changed() => return fail(receiver.record, "stopped_before_connected".into()),
            }
        }
    }
}

/// The `GET` request of one stream.
pub fn stream_request(host: &str, path: &str, token: Option<&str>, encoding: AcceptEncoding) -> Vec<u8> {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nAccept-Encoding: {}\r\n\
         Cache-Control: no-cache\r\n",
        encoding.header_value()
    );
    if let Some(token) = token {
        request.push_str("Authorization: Bearer ");
        request.push_str(token);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tally::{SeqSet, Verdict};
    use tokio::sync::Semaphore;

    /// A scripted gateway: answers one request with `response`, written in pieces of the given
    /// sizes with a flush between them, then keeps the connection open until told to stop.
    pub(crate) async fn scripted_server(
        response: Vec<u8>,
        pieces: Vec<usize>,
    ) -> (SocketAddr, watch::Sender<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop_tx, mut stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            let mut request = Vec::new();
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                stream.readable().await.expect("readable");
                let mut buffer = [0u8; 1024];
                match stream.try_read(&mut buffer) {
                    Ok(0) => return,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                    Err(_) => continue,
                }
            }
            assert!(request.starts_with(b"GET /api/events"));
            assert!(String::from_utf8_lossy(&request).contains("Authorization: Bearer t0k\r\n"));
            let mut at = 0;
            let mut sizes = pieces.into_iter().cycle();
            while at < response.len() {
                let size = sizes.next().unwrap_or(1).min(response.len() - at);
                write_all(&stream, &response[at..at + size]).await.expect("write");
                at += size;
                // Separate segments, so the client's reads see the cuts.
                tokio::task::yield_now().await;
            }
            let _ = stop_rx.changed().await;
        });
        (address, stop_tx)
    }

    fn chunked(parts: &[&[u8]]) -> Vec<u8> {
        let mut wire =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec();
        for part in parts {
            wire.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            wire.extend_from_slice(part);
            wire.extend_from_slice(b"\r\n");
        }
        wire
    }

    async fn receive(response: Vec<u8>, pieces: Vec<usize>, event_orgs: &[u32]) -> ConnRecord {
        let (address, server_stop) = scripted_server(response, pieces).await;
        let shared = Arc::new(ClientShared::new(
            address,
            Transport::Sse,
            false,
            EstablishedOn::Connected,
            Duration::from_secs(5),
            event_orgs.into(),
        ));
        let (stop_tx, stop_rx) = watch::channel(false);
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.expect("permit");
        let request = stream_request("127.0.0.1", "/api/events", Some("t0k"), AcceptEncoding::Identity);
        let task = tokio::spawn(run_connection(0, request, shared.clone(), permit, stop_rx));
        let deadline = Instant::now() + Duration::from_secs(5);
        let delivered = event_orgs.len() as u64;
        while shared.deliveries.load(Ordering::Relaxed) < delivered && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Let anything extra (duplicates) arrive too.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // (The stream may have ended already.)
        let _ = stop_tx.send(true);
        let record = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the client stops when told")
            .expect("the client task does not panic");
        let _ = server_stop.send(true);
        assert_eq!(shared.established.load(Ordering::Relaxed), 1);
        assert_eq!(shared.merged_latency().len(), record.tally.deliveries);
        record
    }

    /// The known stream: 3 orgs; the gateway script delivers 0..60 except 17, plus a duplicate
    /// of 20, 41 after 44 (same org: out of order), a durable event, keepalives and comments.
    fn known_frames() -> Vec<Vec<u8>> {
        let mut frames: Vec<Vec<u8>> = vec![
            b"retry: 3000\n\n".to_vec(),
            b"event: connected\ndata: {\"connectionId\":\"1\"}\n\n".to_vec(),
        ];
        let tick =
            |seq: u64| format!("event: bench.tick\ndata: {{\"seq\":{seq},\"ts\":1,\"pad\":\"xx\"}}\n\n");
        for seq in 0..60u64 {
            match seq {
                17 | 41 => continue,
                20 => frames.push(format!("{}{}", tick(20), tick(20)).into_bytes()),
                44 => frames.push(format!("{}{}", tick(44), tick(41)).into_bytes()),
                30 => frames.push(format!("id: 5-0\n{}", tick(30)).into_bytes()),
                _ => frames.push(tick(seq).into_bytes()),
            }
            if seq % 25 == 0 {
                frames.push(b": comment\nevent: keepalive\ndata: {\"time\":\"t\"}\n\n".to_vec());
            }
        }
        frames
    }

    /// What the client must count of the known stream.
    fn assert_known_stream_counted(record: &ConnRecord, case: &str) {
        let expected: SeqSet = (0..60).collect();
        let verdict = Verdict::of(&expected, &record.tally);
        assert_eq!(
            verdict,
            Verdict {
                expected: 60,
                received: 59,
                lost: 1,
                unexpected: 0,
                duplicates: 1,
                out_of_order: 1,
                unknown: 0,
            },
            "{case}"
        );
        assert_eq!(record.tally.deliveries, 60, "{case}");
        assert_eq!(record.keepalives, 3, "{case}");
        assert_eq!(record.with_id, 1, "{case}");
        assert_eq!(record.other_events, 0, "{case}");
    }

    /// The response head of a gzip stream, then `wire` (a gzip stream) in chunks cut at `ends`
    /// (the header alone first, then a chunk per block as the gateway flushes them), and the
    /// last chunk when `last_chunk`.
    pub(crate) fn gzip_chunked(wire: &[u8], ends: &[usize], last_chunk: bool) -> Vec<u8> {
        let mut response = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
            Content-Encoding: gzip\r\nvary: accept-encoding\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
        let mut cuts: Vec<usize> = vec![crate::gzip::tests::HEADER.len()];
        cuts.extend(ends.iter().copied());
        cuts.push(wire.len());
        cuts.dedup();
        let mut at = 0;
        for cut in cuts {
            if cut > at {
                response.extend_from_slice(format!("{:x}\r\n", cut - at).as_bytes());
                response.extend_from_slice(&wire[at..cut]);
                response.extend_from_slice(b"\r\n");
                at = cut;
            }
        }
        if last_chunk {
            response.extend_from_slice(b"0\r\n\r\n");
        }
        response
    }

    #[tokio::test]
    async fn counts_a_known_stream_exactly_whatever_the_cuts() {
        let event_orgs: Vec<u32> = (0..60).map(|seq| seq % 3).collect();
        let frames = known_frames();
        let parts: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let stream_len = frames.iter().map(Vec::len).sum::<usize>() as u64;
        for pieces in [vec![1], vec![7, 3, 100], vec![4096]] {
            let response = chunked(&parts);
            let head_len = parse_head(&response).expect("head").expect("head").len;
            let body_len = (response.len() - head_len) as u64;
            let record = receive(response, pieces.clone(), &event_orgs).await;
            assert_eq!(record.failure, None, "{pieces:?}");
            assert_eq!(record.dropped, None, "{pieces:?}");
            assert!(record.connect_us.is_some());
            assert_known_stream_counted(&record, &format!("{pieces:?}"));
            assert_eq!((record.gzip, record.gzip_complete), (false, false));
            assert_eq!(record.wire_bytes, body_len, "{pieces:?}");
            assert_eq!(record.inflated_bytes, stream_len, "{pieces:?}");
        }
    }

    #[tokio::test]
    async fn counts_a_known_gzip_stream_exactly_whatever_the_cuts() {
        use crate::gzip::tests::{gzip_stream, Block};
        let event_orgs: Vec<u32> = (0..60).map(|seq| seq % 3).collect();
        let frames = known_frames();
        let stream_len = frames.iter().map(Vec::len).sum::<usize>() as u64;
        let mixed = [
            Block::Compressed,
            Block::Stored,
            Block::Burst,
            Block::Burst,
            Block::Compressed,
        ];
        for blocks in [&[Block::Compressed][..], &mixed] {
            let (wire, ends) = gzip_stream(&frames, blocks, false);
            for pieces in [vec![1], vec![7, 3, 100], vec![4096]] {
                let case = format!("{blocks:?} {pieces:?}");
                let response = gzip_chunked(&wire, &ends, false);
                let head_len = parse_head(&response).expect("head").expect("head").len;
                let body_len = (response.len() - head_len) as u64;
                let record = receive(response, pieces.clone(), &event_orgs).await;
                assert_eq!(record.failure, None, "{case}");
                assert_eq!(record.dropped, None, "{case}");
                assert_known_stream_counted(&record, &case);
                // Compressed, still open (no trailer yet), every byte counted both ways.
                assert_eq!((record.gzip, record.gzip_complete), (true, false), "{case}");
                assert_eq!(record.wire_bytes, body_len, "{case}");
                assert_eq!(record.inflated_bytes, stream_len, "{case}");
            }
        }
    }

    #[tokio::test]
    async fn a_gzip_stream_that_ends_is_checked_to_its_trailer() {
        use crate::gzip::tests::{gzip_stream, Block};
        let event_orgs: Vec<u32> = (0..60).map(|seq| seq % 3).collect();
        let frames = known_frames();
        let (clean, clean_ends) = gzip_stream(&frames, &[Block::Compressed], true);
        let (cut, cut_ends) = gzip_stream(&frames, &[Block::Compressed], false);
        let mut bad_crc = clean.clone();
        let at = bad_crc.len() - 8;
        bad_crc[at] ^= 0xFF;
        let cases = [
            (gzip_chunked(&clean, &clean_ends, true), "stream_ended", true),
            (
                gzip_chunked(&cut, &cut_ends, true),
                "stream_ended_without_gzip_trailer",
                false,
            ),
            (
                gzip_chunked(&bad_crc, &clean_ends, true),
                "gzip_crc_mismatch",
                false,
            ),
        ];
        for (response, reason, complete) in cases {
            let record = receive(response, vec![4096], &event_orgs).await;
            assert_eq!(record.failure, None, "{reason}");
            let dropped = record.dropped.clone().unwrap_or_default();
            assert!(dropped.starts_with(reason), "{reason}: {dropped}");
            assert_known_stream_counted(&record, reason);
            assert_eq!(record.gzip_complete, complete, "{reason}");
        }
    }

    #[tokio::test]
    async fn an_unknown_content_coding_is_a_failure() {
        let mut response = chunked(&[b"retry: 3000\n\n"]);
        let at = response
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("status line")
            + 2;
        response.splice(at..at, b"content-encoding: br\r\n".iter().copied());
        let (address, _server_stop) = scripted_server(response, vec![4096]).await;
        let shared = Arc::new(ClientShared::new(
            address,
            Transport::Sse,
            false,
            EstablishedOn::Connected,
            Duration::from_secs(5),
            Arc::from(Vec::new()),
        ));
        let (_stop_tx, stop_rx) = watch::channel(false);
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.expect("permit");
        let request = stream_request("127.0.0.1", "/api/events", Some("t0k"), AcceptEncoding::Gzip);
        let record = run_connection(0, request, shared.clone(), permit, stop_rx).await;
        assert_eq!(
            record.failure.as_deref(),
            Some("unsupported_content_encoding: br")
        );
    }

    #[test]
    fn a_stream_request_says_which_encodings_it_accepts() {
        for (encoding, header) in [
            (AcceptEncoding::Identity, "Accept-Encoding: identity\r\n"),
            (AcceptEncoding::Gzip, "Accept-Encoding: gzip\r\n"),
        ] {
            let request =
                String::from_utf8(stream_request("h:1", "/api/events", Some("t"), encoding)).expect("text");
            assert!(
                request.starts_with("GET /api/events HTTP/1.1\r\nHost: h:1\r\n"),
                "{request}"
            );
            assert!(request.contains(header), "{request}");
            assert!(request.ends_with("Authorization: Bearer t\r\n\r\n"), "{request}");
        }
    }

    #[tokio::test]
    async fn a_refusal_is_a_failure_with_its_status_and_code() {
        let body = b"{\"error\":{\"code\":\"rate_limited\",\"message\":\"slow down\"}}";
        let mut response = format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        let (address, _server_stop) = scripted_server(response, vec![4096]).await;
        let shared = Arc::new(ClientShared::new(
            address,
            Transport::Sse,
            false,
            EstablishedOn::Connected,
            Duration::from_secs(5),
            Arc::from(Vec::new()),
        ));
        let (_stop_tx, stop_rx) = watch::channel(false);
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.expect("permit");
        let request = stream_request("127.0.0.1", "/api/events", Some("t0k"), AcceptEncoding::Identity);
        let record = run_connection(0, request, shared.clone(), permit, stop_rx).await;
        assert_eq!(record.failure.as_deref(), Some("http_429 rate_limited"));
        assert_eq!(shared.failed.load(Ordering::Relaxed), 1);
    }

    /// A scripted WebSocket gateway: reads the upgrade request, answers `101` with the accept
    /// its key calls for (and `extensions`, if any), writes `frames` in pieces of the given
    /// sizes, then collects what the client sends until told to stop or the client closes.
    async fn scripted_ws_server(
        extensions: Option<&'static str>,
        frames: Vec<u8>,
        pieces: Vec<usize>,
    ) -> (
        SocketAddr,
        watch::Sender<bool>,
        tokio::sync::oneshot::Receiver<Vec<u8>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            let mut request = Vec::new();
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                stream.readable().await.expect("readable");
                let mut buffer = [0u8; 1024];
                match stream.try_read(&mut buffer) {
                    Ok(0) => return,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                    Err(_) => continue,
                }
            }
            let text = String::from_utf8_lossy(&request).into_owned();
            assert!(text.starts_with("GET /api/ws HTTP/1.1\r\n"), "{text}");
            assert!(text.contains("\r\nAuthorization: Bearer t0k\r\n"));
            assert!(text.contains("\r\nUpgrade: websocket\r\n"));
            let accept = ws::accept_for(ws::request_key(&request).expect("a key"));
            let mut response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                 sec-websocket-accept: {accept}\r\n"
            );
            if let Some(extensions) = extensions {
                response.push_str(&format!("sec-websocket-extensions: {extensions}\r\n"));
            }
            response.push_str("\r\n");
            let mut response = response.into_bytes();
            response.extend_from_slice(&frames);
            let mut at = 0;
            let mut sizes = pieces.into_iter().cycle();
            while at < response.len() {
                let size = sizes.next().unwrap_or(1).min(response.len() - at);
                write_all(&stream, &response[at..at + size]).await.expect("write");
                at += size;
                tokio::task::yield_now().await;
            }
            let mut sent = Vec::new();
            loop {
                tokio::select! {
                    ready = stream.readable() => {
                        if ready.is_err() {
                            break;
                        }
                        let mut buffer = [0u8; 1024];
                        match stream.try_read(&mut buffer) {
                            Ok(0) => break,
                            Ok(n) => sent.extend_from_slice(&buffer[..n]),
                            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                            Err(_) => break,
                        }
                    }
                    _ = stop_rx.changed() => break,
                }
            }
            let _ = sent_tx.send(sent);
        });
        (address, stop_tx, sent_rx)
    }

    /// An unmasked server frame.
    fn server_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut wire = vec![first];
        match payload.len() {
            len @ 0..=125 => wire.push(len as u8),
            len @ 126..=65_535 => {
                wire.push(126);
                wire.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                wire.push(127);
                wire.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        wire.extend_from_slice(payload);
        wire
    }

    /// The client's frames: `(opcode, unmasked payload)`; every one must be masked.
    fn client_frames(mut wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !wire.is_empty() {
            assert_eq!(wire[0] & 0xF0, 0x80, "FIN set, no RSV bit");
            assert_eq!(wire[1] & 0x80, 0x80, "client frames are masked");
            let (len, at) = match wire[1] & 0x7F {
                126 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
                127 => panic!("no long client frames here"),
                len => (len as usize, 2),
            };
            let mask = [wire[at], wire[at + 1], wire[at + 2], wire[at + 3]];
            let payload = wire[at + 4..at + 4 + len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            frames.push((wire[0] & 0x0F, payload));
            wire = &wire[at + 4 + len..];
        }
        frames
    }

    /// The known stream of the SSE test as gateway WebSocket messages (keys in varying order),
    /// plus a server ping; each message compressed on its own when `deflate`.
    fn ws_known_stream(deflate: bool) -> Vec<u8> {
        let mut messages: Vec<String> = vec![
            r#"{"event":"connected","data":{"connectionId":"1","userId":"u","role":"ops","orgs":["o"],"replica":"r","keepaliveSecs":15}}"#.into(),
        ];
        let tick = |seq: u64| match seq % 3 {
            0 => format!(r#"{{"event":"bench.tick","data":{{"seq":{seq},"ts":1,"pad":"xx"}}}}"#),
            1 => format!(r#"{{"data":{{"pad":"xx","ts":1,"seq":{seq}}},"event":"bench.tick"}}"#),
            _ => format!(r#"{{"data":{{"ts":1,"seq":{seq},"pad":"x\"x"}},"event":"bench.tick"}}"#),
        };
        for seq in 0..60u64 {
            match seq {
                17 | 41 => continue,
                20 => messages.extend([tick(20), tick(20)]),
                44 => messages.extend([tick(44), tick(41)]),
                30 => messages.push(
                    r#"{"event":"bench.tick","id":"5-0","data":{"seq":30,"ts":1,"pad":"xx"}}"#.to_string(),
                ),
                _ => messages.push(tick(seq)),
            }
            if seq % 25 == 0 {
                messages.push(r#"{"event":"keepalive","data":{"time":"t"}}"#.into());
            }
        }
        let mut wire = Vec::new();
        for (n, message) in messages.iter().enumerate() {
            if n == 10 {
                wire.extend(server_frame(0x89, b"are you there"));
            }
            if deflate {
                wire.extend(server_frame(0xC1, &crate::ws::tests::deflate(message.as_bytes())));
            } else {
                wire.extend(server_frame(0x81, message.as_bytes()));
            }
        }
        wire
    }

    /// Runs one WebSocket connection against the scripted server until `delivered` bench
    /// events arrived (or the server closed it); returns its record and what it sent.
    async fn receive_ws(
        extensions: Option<&'static str>,
        offer_deflate: bool,
        frames: Vec<u8>,
        pieces: Vec<usize>,
        event_orgs: &[u32],
    ) -> (ConnRecord, Vec<(u8, Vec<u8>)>, Arc<ClientShared>) {
        let (address, server_stop, sent) = scripted_ws_server(extensions, frames, pieces).await;
        let mut shared = ClientShared::new(
            address,
            Transport::Ws,
            false,
            EstablishedOn::Connected,
            Duration::from_secs(5),
            event_orgs.into(),
        );
        shared.ws_deflate = offer_deflate;
        let shared = Arc::new(shared);
        let (stop_tx, stop_rx) = watch::channel(false);
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.expect("permit");
        let request = ws::request("127.0.0.1", "/api/ws", Some("t0k"), offer_deflate);
        let task = tokio::spawn(run_connection(0, request, shared.clone(), permit, stop_rx));
        let deadline = Instant::now() + Duration::from_secs(5);
        let delivered = event_orgs.len() as u64;
        while shared.deliveries.load(Ordering::Relaxed) < delivered
            && Instant::now() < deadline
            && !task.is_finished()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = stop_tx.send(true);
        let record = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the client stops when told")
            .expect("the client task does not panic");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = server_stop.send(true);
        let sent = tokio::time::timeout(Duration::from_secs(5), sent)
            .await
            .expect("the server hands over what it read")
            .expect("the server task does not panic");
        (record, client_frames(&sent), shared)
    }

    const DEFLATE_ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[tokio::test]
    async fn counts_a_known_websocket_stream_exactly_with_and_without_deflate() {
        let event_orgs: Vec<u32> = (0..60).map(|seq| seq % 3).collect();
        let expected: SeqSet = (0..60).collect();
        for deflate in [false, true] {
            let extensions = deflate.then_some(DEFLATE_ANSWER);
            for pieces in [vec![1], vec![7, 3, 100], vec![65_536]] {
                let frames = ws_known_stream(deflate);
                let wire = frames.len() as u64;
                let (record, sent, shared) =
                    receive_ws(extensions, deflate, frames, pieces.clone(), &event_orgs).await;
                let case = format!("deflate {deflate}, pieces {pieces:?}");
                assert_eq!(record.failure, None, "{case}");
                assert_eq!(record.dropped, None, "{case}");
                assert!(record.connect_us.is_some(), "{case}");
                assert_eq!(shared.established.load(Ordering::Relaxed), 1);
                assert_eq!(shared.merged_latency().len(), record.tally.deliveries);
                assert_eq!(
                    Verdict::of(&expected, &record.tally),
                    Verdict {
                        expected: 60,
                        received: 59,
                        lost: 1,
                        unexpected: 0,
                        duplicates: 1,
                        out_of_order: 1,
                        unknown: 0,
                    },
                    "{case}"
                );
                assert_eq!(record.tally.deliveries, 60, "{case}");
                assert_eq!(record.keepalives, 3, "{case}");
                assert_eq!(record.with_id, 1, "{case}");
                assert_eq!(record.other_events, 0, "{case}");
                assert_eq!(record.wire_bytes, wire, "{case}");
                let ws = record.ws;
                assert_eq!(ws.deflate, deflate, "{case}");
                assert_eq!(
                    (ws.messages, ws.bad_messages, ws.server_pings),
                    (64, 0, 1),
                    "{case}"
                );
                assert_eq!(ws.compressed, if deflate { 64 } else { 0 }, "{case}");
                // A pong with the ping's payload, then the close of the end of the run.
                assert_eq!(
                    sent,
                    vec![
                        (ws::OP_PONG, b"are you there".to_vec()),
                        (ws::OP_CLOSE, vec![0x03, 0xE8])
                    ],
                    "{case}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_websocket_close_ends_the_stream_with_its_code_and_is_answered() {
        let mut frames = server_frame(0x81, br#"{"event":"connected","data":{"connectionId":"1"}}"#);
        frames.extend(server_frame(
            0x81,
            br#"{"event":"bench.tick","data":{"seq":0,"ts":1}}"#,
        ));
        frames.extend(server_frame(
            0x81,
            br#"{"event":"error","data":{"code":"slow_consumer","message":"too slow"}}"#,
        ));
        frames.extend(server_frame(0x88, b"\x0f\xa8slow consumer"));
        let (record, sent, shared) = receive_ws(None, false, frames, vec![4096], &[0, 0]).await;
        assert_eq!(record.failure, None);
        assert_eq!(record.dropped.as_deref(), Some("ws_close_4008"));
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(record.tally.deliveries, 1);
        assert_eq!((record.ws.errors, record.other_events), (1, 1));
        assert_eq!(record.ws.close, Some(Some(4008)));
        // The close is echoed, and nothing follows it.
        assert_eq!(sent, vec![(ws::OP_CLOSE, vec![0x0F, 0xA8])]);
    }

    #[tokio::test]
    async fn a_websocket_answer_that_breaks_the_contract_is_a_failure() {
        let connected = server_frame(0x81, br#"{"event":"connected","data":{}}"#);
        // Deflate answered but never offered; offered and answered without
        // server_no_context_takeover; a compressed frame on a plain connection; a masked one.
        let cases: Vec<(Option<&'static str>, bool, Vec<u8>, &str)> = vec![
            (Some(DEFLATE_ANSWER), false, connected.clone(), "ws_bad_extension"),
            (
                Some("permessage-deflate"),
                true,
                connected.clone(),
                "no server_no_context_takeover",
            ),
            (
                None,
                true,
                server_frame(0xC1, b"x"),
                "RSV1 without permessage-deflate",
            ),
            (None, false, vec![0x81, 0x80, 1, 2, 3, 4], "masked server frame"),
        ];
        for (extensions, offer, frames, expected) in cases {
            let (record, _, shared) = receive_ws(extensions, offer, frames, vec![4096], &[0]).await;
            let failure = record.failure.unwrap_or_default();
            assert!(failure.contains(expected), "{expected}: {failure}");
            assert_eq!(shared.failed.load(Ordering::Relaxed), 1);
        }
    }

    #[tokio::test]
    async fn sends_masked_pings_and_counts_pongs() {
        let mut frames = server_frame(0x81, br#"{"event":"connected","data":{}}"#);
        frames.extend(server_frame(0x81, br#"{"event":"pong","data":{}}"#));
        let (address, server_stop, sent) = scripted_ws_server(None, frames, vec![4096]).await;
        let mut shared = ClientShared::new(
            address,
            Transport::Ws,
            false,
            EstablishedOn::Connected,
            Duration::from_secs(5),
            Arc::from(Vec::new()),
        );
        shared.ws_ping = Some(Duration::from_millis(30));
        let shared = Arc::new(shared);
        let (stop_tx, stop_rx) = watch::channel(false);
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.expect("permit");
        let request = ws::request("127.0.0.1", "/api/ws", Some("t0k"), false);
        let task = tokio::spawn(run_connection(0, request, shared.clone(), permit, stop_rx));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop_tx.send(true).expect("stop");
        let record = task.await.expect("no panic");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = server_stop.send(true);
        let sent = client_frames(&sent.await.expect("sent"));
        assert!(record.ws.pings_sent >= 3, "{:?}", record.ws);
        assert_eq!(record.ws.pongs, 1);
        let pings: Vec<_> = sent.iter().filter(|(op, _)| *op == ws::OP_TEXT).collect();
        assert_eq!(pings.len() as u64, record.ws.pings_sent);
        assert!(pings.iter().all(|(_, payload)| payload == br#"{"op":"ping"}"#));
    }

    #[tokio::test]
    async fn a_refused_upgrade_is_a_failure_with_its_status_and_code() {
        let body = br#"{"error":{"code":"unauthorized","message":"no token"}}"#;
        let mut response = format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        let (address, _server_stop) = scripted_server(response, vec![4096]).await;
        let shared = Arc::new(ClientShared::new(
            address,
            Transport::Ws,
            false,
            EstablishedOn::Connected,
            Duration::from_secs(5),
            Arc::from(Vec::new()),
        ));
        let (_stop_tx, stop_rx) = watch::channel(false);
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.expect("permit");
        // The SSE script checks the path and the token only.
        let request = ws::request("127.0.0.1", "/api/events", Some("t0k"), true);
        let record = run_connection(0, request, shared.clone(), permit, stop_rx).await;
        assert_eq!(record.failure.as_deref(), Some("http_401 unauthorized"));
    }
}
