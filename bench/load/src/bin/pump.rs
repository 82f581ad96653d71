//! event-gateway-pump: the floor a fan-out gateway is measured against. A bare SSE socket pump
//! with no HTTP framework, no authentication and no policy: it accepts connections, answers any
//! request with a chunked `text/event-stream` head and a `connected` event, subscribes to one
//! Redis channel, and writes each published envelope's `data` as one SSE frame, encoded once,
//! to every socket in one `write` each, from one thread. What a gateway spends per delivery
//! beyond this is the cost of its framework and features.
//!
//!   event-gateway-pump --port 8090 --redis-url redis://127.0.0.1:6379 --channel events:org:bench-o0
//!
//! Measured with the load generator as a target that needs no token:
//!   event-gateway-bench --url http://127.0.0.1:8090 --target nchan --via publish ...

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(
    name = "event-gateway-pump",
    about = "A bare SSE socket pump: the floor for fan-out figures"
)]
struct Args {
    #[arg(long, default_value_t = 8090)]
    port: u16,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The channel whose messages (gateway envelopes) are pumped to every stream.
    #[arg(long, default_value = "events:org:bench-o0")]
    channel: String,
    /// Seconds after which the pump exits by itself.
    #[arg(long, default_value_t = 600)]
    lifetime: u64,
}

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
transfer-encoding: chunked\r\n\r\n";
const CONNECTED: &[u8] = b"event: connected\ndata: {}\n\n";

/// One event as a chunk of the chunked body: size line, SSE frame, CRLF.
fn chunk(frame: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", frame.len()).into_bytes();
    out.extend_from_slice(frame);
    out.extend_from_slice(b"\r\n");
    out
}

/// The SSE frame of an envelope: its `type` as the event name, its `data` as the data line
/// (the bytes as published, so that the load generator finds its `{"seq":N,"ts":T` prefix).
fn frame(envelope: &[u8]) -> Option<Vec<u8>> {
    let fields: HashMap<String, Box<RawValue>> = serde_json::from_slice(envelope).ok()?;
    let name: String = serde_json::from_str(fields.get("type")?.get()).ok()?;
    let data = fields.get("data")?.get();
    let mut out = Vec::with_capacity(data.len() + name.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
    Some(out)
}

/// Writes all of `bytes` if the socket takes them now; a socket that cannot is dropped (the
/// floor keeps no queue).
fn write_now(stream: &TcpStream, bytes: &[u8]) -> bool {
    matches!(stream.try_write(bytes), Ok(n) if n == bytes.len())
}

async fn accept(stream: TcpStream, streams: Rc<RefCell<Vec<TcpStream>>>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut stream = stream;
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let mut opening = HEAD.to_vec();
    opening.extend_from_slice(&chunk(CONNECTED));
    stream.writable().await?;
    if write_now(&stream, &opening) {
        streams.borrow_mut().push(stream);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let lifetime = Duration::from_secs(args.lifetime);
    std::thread::spawn(move || {
        std::thread::sleep(lifetime);
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(("127.0.0.1", args.port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{}", args.port))?;
        let streams: Rc<RefCell<Vec<TcpStream>>> = Rc::default();
        let client = redis::Client::open(args.redis_url.as_str()).context("redis url")?;
        let mut pubsub = client.get_async_pubsub().await.context("connecting to Redis")?;
        pubsub.subscribe(&args.channel).await.context("SUBSCRIBE")?;
        let accepting = streams.clone();
        tokio::task::spawn_local(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::task::spawn_local(accept(stream, accepting.clone()));
            }
        });
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Some(frame) = frame(message.get_payload_bytes()) else {
                continue;
            };
            let bytes = chunk(&frame);
            streams.borrow_mut().retain(|stream| write_now(stream, &bytes));
        }
        Ok::<_, anyhow::Error>(())
    })
}
