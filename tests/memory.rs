//! What an idle stream costs in heap memory. Its own test binary, because it counts every
//! allocation of the process with a global allocator.

use std::alloc::System;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
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

/// Opens a stream and reads until its `connected` event has arrived.
fn open_stream(port: u16, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("sets a timeout");
    write!(
        stream,
        "GET /api/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .expect("sends the request");
    let mut seen = Vec::new();
    let mut chunk = [0u8; 2048];
    while !seen.windows(16).any(|w| w == b"event: connected") {
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

#[test]
fn an_idle_stream_costs_less_than_4_kb_of_heap() {
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
    let warm: Vec<TcpStream> = (0..200).map(|i| open_stream(port, &token(i))).collect();
    let tokens: Vec<String> = (200..1200).map(token).collect();
    std::thread::sleep(Duration::from_millis(200));
    let before = live_bytes();
    let streams: Vec<TcpStream> = tokens.iter().map(|t| open_stream(port, t)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let per_stream = (live_bytes() - before) / streams.len() as isize;
    eprintln!("heap per idle stream: {per_stream} bytes");
    assert!(
        per_stream <= BUDGET_PER_STREAM,
        "an idle stream holds {per_stream} bytes of heap, over the {BUDGET_PER_STREAM}-byte budget"
    );
    drop((warm, streams));
}
