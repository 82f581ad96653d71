//! protocol §7, priority: a `priority: high` event jumps ahead of the normal events queued for a
//! client that is behind; one that overtakes queued durable events comes without its `id:` line.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::common::envelope::envelope;
use crate::common::raw::raw_stream;
use crate::common::token::ops;
use crate::common::{spawn_app, within, TestApp};

const ORG: &str = "org-1";
/// Normal events published while the client does not read: 60 kB each, 9 MB in all, more than
/// the socket buffers of a stalled loopback connection absorb (~2.8 MB here: the sender's buffer
/// grows to 4 MB), and far fewer than the connection's queue (1,024) so it is not cut off.
const BACKLOG: usize = 150;

fn normal_event(n: usize) -> Value {
    envelope(ORG, "document.uploaded", &format!("normal-{n}"))
        .padded_to(60_000)
        .into()
}

fn urgent_event() -> Value {
    envelope(ORG, "payment.failed", "urgent")
        .field("priority", Value::from("high"))
        .into()
}

/// A stream that the test does not read for now (see `raw_stream`), once it is subscribed.
async fn stalled_stream(app: &TestApp, token: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = raw_stream(app, token).await;
    let mut received = Vec::new();
    read_until(&mut stream, &mut received, &["event: connected"]).await;
    (stream, received)
}

/// Reads into `received` until every one of `markers` has been read.
async fn read_until(stream: &mut TcpStream, received: &mut Vec<u8>, markers: &[&str]) {
    let mut chunk = vec![0u8; 256 * 1024];
    let mut missing: Vec<&[u8]> = markers.iter().map(|marker| marker.as_bytes()).collect();
    let mut searched: usize = 0;
    within(
        Duration::from_secs(20),
        "the stream to deliver what was expected",
        async {
            loop {
                // Only the bytes not searched yet, plus room for a marker cut by a read.
                let window = &received[searched.saturating_sub(64)..];
                missing.retain(|marker| !window.windows(marker.len()).any(|part| part == *marker));
                searched = received.len();
                if missing.is_empty() {
                    return;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => panic!("the gateway closed the stream"),
                    Ok(n) => received.extend_from_slice(&chunk[..n]),
                }
            }
        },
    )
    .await;
}

/// Publishes the backlog while the stream is not read, then the urgent event, and reads
/// everything. Returns the raw text of the stream.
async fn backlog_then_urgent(app: &TestApp, durable: bool) -> String {
    let (mut stream, mut received) = stalled_stream(app, &ops("behind", ORG)).await;
    // A client that keeps reading tells when the gateway has dispatched the urgent event.
    let mut witness = app.connect_ready(&ops("witness", ORG), "").await;
    let backlog: Vec<Value> = (0..BACKLOG).map(normal_event).collect();
    if durable {
        app.publish_durable(&backlog).await;
        app.publish_durable(&[urgent_event()]).await;
    } else {
        let events = backlog
            .into_iter()
            .map(|event| (ORG.to_string(), event))
            .collect();
        app.publish_live_all(events).await;
        app.publish_live(ORG, urgent_event()).await;
    }
    loop {
        if witness.next_data_event().await.label() == "urgent" {
            break;
        }
    }
    let last = format!("\"label\":\"normal-{}\"", BACKLOG - 1);
    read_until(&mut stream, &mut received, &[&last, "\"label\":\"urgent\""]).await;
    String::from_utf8_lossy(&received).into_owned()
}

/// How many normal events the stream carried before the urgent one.
fn normal_events_before_urgent(text: &str) -> usize {
    let urgent = text
        .find("\"label\":\"urgent\"")
        .expect("the urgent event arrived");
    text[..urgent].matches("\"label\":\"normal-").count()
}

/// The lines of the frame that carries the urgent event (chunk-size lines left out).
fn urgent_frame(text: &str) -> Vec<&str> {
    let urgent = text
        .find("\"label\":\"urgent\"")
        .expect("the urgent event arrived");
    let start = text[..urgent].rfind("\n\n").map_or(0, |end| end + 2);
    text[start..urgent].lines().collect()
}

#[tokio::test]
async fn high_priority_event_overtakes_normal_events_queued_for_a_client_that_is_behind() {
    let app = spawn_app().await;
    let text = backlog_then_urgent(&app, false).await;
    let before = normal_events_before_urgent(&text);
    assert!(
        before < BACKLOG,
        "the urgent event came after all {BACKLOG} queued normal events ({before} before it)"
    );
    assert_eq!(
        text.matches("\"label\":\"normal-").count(),
        BACKLOG,
        "every normal event still arrives after the urgent one"
    );
}

#[tokio::test]
async fn high_priority_event_that_overtakes_durable_events_comes_without_its_id() {
    let app = spawn_app().await;
    let text = backlog_then_urgent(&app, true).await;
    assert!(normal_events_before_urgent(&text) < BACKLOG);
    let frame = urgent_frame(&text);
    assert!(
        frame.contains(&"event: payment.failed"),
        "the urgent frame was found: {frame:?}"
    );
    assert!(
        !frame.iter().any(|line| line.starts_with("id:")),
        "an event that overtook queued durable events must not move the client's cursor: {frame:?}"
    );
}
