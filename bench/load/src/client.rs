//! One SSE client connection: a raw `TcpStream` (bound to its own 127.0.0.x source address), a
//! hand-written `GET` request, and the incremental decoders of `sse.rs` fed from one read buffer
//! per thread, so an open connection holds no buffer of its own.

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

use crate::sse::{parse_head, ChunkDecoder, SseDecoder, SseEvent};
use crate::tally::ConnTally;

/// Size of each thread's read buffer.
const READ_BUFFER: usize = 64 * 1024;
/// Latency histograms are sharded by connection so that threads rarely share a lock.
const LATENCY_SHARDS: usize = 16;
/// Source addresses used: 127.0.0.2 ..= 127.0.0.251.
const SOURCE_ADDRESSES: u32 = 250;

/// When a connection counts as established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EstablishedOn {
    /// The `connected` event (the gateway sends it once subscribed to every org of the token).
    Connected,
    /// A `200` response head (targets without a `connected` event, such as Nchan).
    Headers,
}

/// State shared by every connection of a run.
pub struct ClientShared {
    pub target: SocketAddr,
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
        spread_sources: bool,
        established_on: EstablishedOn,
        handshake_timeout: Duration,
        event_orgs: Arc<[u32]>,
    ) -> Self {
        Self {
            target,
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
}

/// Scratch space of one thread: the read buffer and the latencies of one read.
struct Scratch {
    buffer: Box<[u8]>,
    latencies: Vec<u64>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        buffer: vec![0; READ_BUFFER].into_boxed_slice(),
        latencies: Vec::with_capacity(1024),
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

/// How the response body is framed.
enum Body {
    Chunked(ChunkDecoder),
    /// Read until the connection closes.
    Identity,
}

/// Per-connection decoding and counting state.
struct Receiver<'a> {
    shared: &'a ClientShared,
    record: ConnRecord,
    body: Body,
    sse: SseDecoder,
    /// A `connected` event was decoded in the current read.
    connected: bool,
}

impl Receiver<'_> {
    /// Feeds body bytes; returns false when the body has ended.
    fn feed(&mut self, bytes: &[u8], received_ns: u64, latencies: &mut Vec<u64>) -> Result<bool, String> {
        let Self {
            shared,
            record,
            body,
            sse,
            connected,
        } = self;
        let mut on_event = |event: &SseEvent<'_>| {
            if event.has_id {
                record.with_id += 1;
            }
            if let Some((seq, ts)) = event.bench {
                let org = shared.event_orgs.get(seq as usize).copied();
                record.tally.record(seq, org);
                latencies.push(received_ns.saturating_sub(ts) / 1000);
                return;
            }
            match event.name {
                b"connected" => *connected = true,
                b"keepalive" => record.keepalives += 1,
                crate::plan::EVENT_TYPE_BYTES => record.unparsed += 1,
                _ => record.other_events += 1,
            }
        };
        match body {
            Body::Chunked(chunks) => {
                chunks
                    .feed(bytes, |piece| sse.feed(piece, &mut on_event))
                    .map_err(|e| format!("bad_chunk: {e}"))?;
                Ok(!chunks.is_done())
            }
            Body::Identity => {
                sse.feed(bytes, &mut on_event);
                Ok(true)
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
    drop(head_bytes);
    if head.status != 200 {
        let text = String::from_utf8_lossy(&leftover);
        let code = text
            .split_once("\"code\":\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(code, _)| format!(" {code}"))
            .unwrap_or_default();
        return fail(record, format!("http_{}{code}", head.status));
    }

    let mut receiver = Receiver {
        shared: &shared,
        record,
        body: if head.chunked {
            Body::Chunked(ChunkDecoder::default())
        } else {
            Body::Identity
        },
        sse: SseDecoder::default(),
        connected: false,
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
    let mut pending: Option<Vec<u8>> = (!leftover.is_empty()).then_some(leftover);

    loop {
        let outcome = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let Scratch { buffer, latencies } = &mut *scratch;
            let result = match pending.take() {
                Some(bytes) => receiver.feed(&bytes, now_nanos(), latencies),
                None => match read_available(&stream, buffer) {
                    Ok(0) => Err("eof".to_string()),
                    Ok(n) => {
                        receiver.record.reads += 1;
                        receiver.feed(&buffer[..n], now_nanos(), latencies)
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
                Ok(false) => Err("stream_ended".to_string()),
                Err(reason) => Err(reason),
            }
        });
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
            tokio::select! {
                ready = stream.readable() => if let Err(error) = ready {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    let mut record = receiver.record;
                    record.dropped = Some(io_reason(&error));
                    return record;
                },
                _ = stop.changed() => return receiver.record,
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
pub fn stream_request(host: &str, path: &str, token: Option<&str>) -> Vec<u8> {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
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
mod tests {
    use super::*;
    use crate::tally::{SeqSet, Verdict};
    use tokio::sync::Semaphore;

    /// A scripted gateway: answers one request with `response`, written in pieces of the given
    /// sizes with a flush between them, then keeps the connection open until told to stop.
    async fn scripted_server(response: Vec<u8>, pieces: Vec<usize>) -> (SocketAddr, watch::Sender<bool>) {
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
            assert!(request.starts_with(b"GET /api/events HTTP/1.1\r\n"));
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
            false,
            EstablishedOn::Connected,
            Duration::from_secs(5),
            event_orgs.into(),
        ));
        let (stop_tx, stop_rx) = watch::channel(false);
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.expect("permit");
        let request = stream_request("127.0.0.1", "/api/events", Some("t0k"));
        let task = tokio::spawn(run_connection(0, request, shared.clone(), permit, stop_rx));
        let deadline = Instant::now() + Duration::from_secs(5);
        let delivered = event_orgs.len() as u64;
        while shared.deliveries.load(Ordering::Relaxed) < delivered && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Let anything extra (duplicates) arrive too.
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop_tx.send(true).expect("stop");
        let record = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the client stops when told")
            .expect("the client task does not panic");
        let _ = server_stop.send(true);
        assert_eq!(shared.established.load(Ordering::Relaxed), 1);
        assert_eq!(shared.merged_latency().len(), record.tally.deliveries);
        record
    }

    #[tokio::test]
    async fn counts_a_known_stream_exactly_whatever_the_cuts() {
        // 3 orgs; the gateway script delivers 0..60 except 17, plus a duplicate of 20, 41
        // after 44 (same org: out of order), a durable event, keepalives and comments.
        let event_orgs: Vec<u32> = (0..60).map(|seq| seq % 3).collect();
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
        let parts: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let expected: SeqSet = (0..60).collect();
        for pieces in [vec![1], vec![7, 3, 100], vec![4096]] {
            let record = receive(chunked(&parts), pieces.clone(), &event_orgs).await;
            let verdict = Verdict::of(&expected, &record.tally);
            assert_eq!(record.failure, None, "{pieces:?}");
            assert_eq!(record.dropped, None, "{pieces:?}");
            assert!(record.connect_us.is_some());
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
                "{pieces:?}"
            );
            assert_eq!(record.tally.deliveries, 60, "{pieces:?}");
            assert_eq!(record.keepalives, 3, "{pieces:?}");
            assert_eq!(record.with_id, 1, "{pieces:?}");
            assert_eq!(record.other_events, 0, "{pieces:?}");
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
            false,
            EstablishedOn::Connected,
            Duration::from_secs(5),
            Arc::from(Vec::new()),
        ));
        let (_stop_tx, stop_rx) = watch::channel(false);
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.expect("permit");
        let request = stream_request("127.0.0.1", "/api/events", Some("t0k"));
        let record = run_connection(0, request, shared.clone(), permit, stop_rx).await;
        assert_eq!(record.failure.as_deref(), Some("http_429 rate_limited"));
        assert_eq!(shared.failed.load(Ordering::Relaxed), 1);
    }
}
