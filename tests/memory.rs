//! What an idle stream costs in heap memory. Its own test binary, because it counts every
//! allocation of the process with a global allocator.

use std::alloc::System;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use event_gateway::auth::{TokenMinter, TokenRequest};
use event_gateway::settings::Settings;
use event_gateway::startup::Application;
use secrecy::SecretString;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes currently allocated by the whole process.
fn live_bytes() -> isize {
    let stats = ALLOCATOR.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated
}

const SECRET: &str = "memory-test-secret";
/// The budget per idle stream, every layer included (HTTP dispatcher, task, hub, registry).
const BUDGET_PER_STREAM: isize = 4096;

/// Starts an embedded-broker gateway on its own thread; returns its port.
fn start_gateway() -> u16 {
    let (port_sender, port) = mpsc::channel();
    std::thread::spawn(move || {
        let env = HashMap::from([
            ("GATEWAY__SERVER__HOST".to_string(), "127.0.0.1".to_string()),
            ("GATEWAY__SERVER__PORT".to_string(), "0".to_string()),
            ("GATEWAY__SERVER__WORKERS".to_string(), "1".to_string()),
            ("GATEWAY__AUTH__JWT_SECRET".to_string(), SECRET.to_string()),
            (
                "GATEWAY__LIMITS__CONNECT_RATE_PER_USER".to_string(),
                "100000".to_string(),
            ),
            (
                "GATEWAY__LIMITS__CONNECT_RATE_PER_IP".to_string(),
                "100000".to_string(),
            ),
        ]);
        let settings = Settings::load_from(None, Some(env)).expect("settings load");
        actix_web::rt::System::new().block_on(async move {
            let application = Application::build(settings).await.expect("gateway builds");
            port_sender.send(application.port()).expect("test thread waits");
            application.run_until_stopped().await.expect("gateway runs");
        });
    });
    port.recv_timeout(Duration::from_secs(20))
        .expect("gateway started")
}

/// Sends `request` and reads until `marker` (the `connected` event) has arrived.
fn open(port: u16, request: &str, marker: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("sets a timeout");
    stream.write_all(request.as_bytes()).expect("sends the request");
    let mut seen = Vec::new();
    let mut chunk = [0u8; 2048];
    while !seen.windows(marker.len()).any(|w| w == marker) {
        let read = stream.read(&mut chunk).expect("reads the stream");
        assert!(
            read > 0,
            "stream closed before `connected`: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&chunk[..read]);
    }
    stream
}

fn open_sse(port: u16, token: &str) -> TcpStream {
    let request =
        format!("GET /api/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
    open(port, &request, b"event: connected")
}

/// A compressed SSE stream: read until its opening (a stored piece after the gzip header).
fn open_sse_gzip(port: u16, token: &str) -> TcpStream {
    let request = format!(
        "GET /api/events HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: gzip\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    open(port, &request, b"event: connected")
}

/// A WebSocket, offering `extensions` when not empty.
fn open_ws(port: u16, token: &str, extensions: &str) -> TcpStream {
    let offer = if extensions.is_empty() {
        String::new()
    } else {
        format!("Sec-WebSocket-Extensions: {extensions}\r\n")
    };
    let request = format!(
        "GET /api/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n{offer}\r\n"
    );
    open(port, &request, b"\"event\":\"connected\"")
}

/// The tests share the process's allocation counters: one measures at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Heap per idle stream of a fresh gateway, streams opened by `open`.
fn heap_per_idle_stream(open: impl Fn(u16, &str) -> TcpStream) -> isize {
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let port = start_gateway();
    let settings = Settings::load_from(None, Some(HashMap::new())).expect("defaults load");
    let minter = TokenMinter::new(&SecretString::from(SECRET), &settings.auth);
    let token = |i: usize| {
        minter
            .mint(&TokenRequest {
                sub: &format!("user-{i}"),
                role: "ops",
                orgs: &[format!("org-{}", i % 10)],
                tenant_id: None,
                contractor_id: None,
                ttl_secs: 600,
            })
            .expect("mints")
    };
    // Warm up: lazily built state (maps, pools, the first org entries) is not per stream.
    let warm: Vec<TcpStream> = (0..200).map(|i| open(port, &token(i))).collect();
    let tokens: Vec<String> = (200..1200).map(token).collect();
    std::thread::sleep(Duration::from_millis(200));
    let before = live_bytes();
    let streams: Vec<TcpStream> = tokens.iter().map(|t| open(port, t)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let per_stream = (live_bytes() - before) / streams.len() as isize;
    drop((warm, streams));
    per_stream
}

fn assert_within_budget(what: &str, per_stream: isize) {
    eprintln!("heap per {what}: {per_stream} bytes");
    assert!(
        per_stream <= BUDGET_PER_STREAM,
        "{what} holds {per_stream} bytes of heap, over the {BUDGET_PER_STREAM}-byte budget"
    );
}

#[test]
fn an_idle_stream_costs_less_than_4_kb_of_heap() {
    assert_within_budget("idle SSE stream", heap_per_idle_stream(open_sse));
}

#[test]
fn an_idle_compressed_stream_costs_less_than_4_kb_of_heap() {
    assert_within_budget("idle gzip SSE stream", heap_per_idle_stream(open_sse_gzip));
}

#[test]
fn an_idle_websocket_costs_less_than_4_kb_of_heap() {
    assert_within_budget(
        "idle WebSocket",
        heap_per_idle_stream(|port, token| open_ws(port, token, "")),
    );
}

#[test]
fn an_idle_compressed_websocket_costs_less_than_4_kb_of_heap() {
    let per_stream = heap_per_idle_stream(|port, token| open_ws(port, token, "permessage-deflate"));
    assert_within_budget("idle WebSocket with permessage-deflate", per_stream);
}
