//! protocol §7, slow clients: a client that stops reading is cut off once its bounded queue is
//! full, the others are not delayed, and the cut-off client recovers from history.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::common::envelope::envelope;
use crate::common::raw::raw_stream;
use crate::common::sse::SseClient;
use crate::common::token::ops;
use crate::common::{eventually, spawn_app_with, within, TestApp, STEP_TIMEOUT};

const ORG: &str = "org-1";
/// Events per POST: small bodies, so publishing itself is never the bottleneck.
const BATCH: usize = 5;
/// Bounds the flood: 1,000 events of 60 kB, far beyond any socket buffer and queue.
const MAX_EVENTS: usize = 1000;
/// How long a reading client may take to receive a batch while another client stalls.
const PROMPTLY: Duration = Duration::from_secs(2);

fn big_event(n: usize) -> Value {
    envelope(ORG, "document.uploaded", &format!("event-{n}"))
        .padded_to(60_000)
        .into()
}

/// What a flood left behind.
struct Flood<Slow> {
    /// Durable events published, in order, by id.
    ids: Vec<String>,
    /// The client that never read while the flood went on.
    slow: Slow,
    /// How many events the reading client received, in order, before the control event.
    fast_received: usize,
    /// The longest the reading client took to catch up with a batch.
    slowest_catch_up: Duration,
}

/// Opens a client that stops reading after `connected` and floods it beside a reading client.
async fn flood_until_a_slow_client_is_cut(app: &TestApp) -> Flood<SseClient> {
    let slow = app.connect_ready(&ops("slow", ORG), "").await;
    flood_beside(app, slow).await
}

/// Opens a client that keeps reading beside `slow`, which never reads, then publishes durable
/// 60 kB events in batches, each batch once the reading client has caught up, until the
/// gateway reports a slow-consumer disconnect. Finishes with a control event.
async fn flood_beside<Slow>(app: &TestApp, slow: Slow) -> Flood<Slow> {
    let mut fast = app.connect_ready(&ops("fast", ORG), "").await;
    let (progress_sender, mut progress) = watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut received = 0;
        loop {
            let label = fast.next_data_event().await.label();
            if label == "control" {
                return received;
            }
            assert_eq!(
                label,
                format!("event-{received}"),
                "the reading client lost order"
            );
            received += 1;
            let _ = progress_sender.send(received);
        }
    });

    let mut ids = Vec::new();
    let mut slowest_catch_up = Duration::ZERO;
    while app.metric_total("gateway_slow_consumer_disconnects_total").await < 1.0 {
        assert!(
            ids.len() < MAX_EVENTS,
            "a client that never reads was not disconnected after {} events of 60 kB",
            ids.len()
        );
        let batch: Vec<Value> = (ids.len()..ids.len() + BATCH).map(big_event).collect();
        let started = tokio::time::Instant::now();
        ids.extend(app.publish_durable(&batch).await);
        let published = ids.len();
        within(
            Duration::from_secs(20),
            "the reading client to keep up while another client stalls",
            progress.wait_for(|received| *received >= published),
        )
        .await
        .expect("the reading client's task ended early");
        slowest_catch_up = slowest_catch_up.max(started.elapsed());
    }
    app.publish_durable(&[envelope(ORG, "document.uploaded", "control").into()])
        .await;
    let fast_received = within(Duration::from_secs(20), "the reading client to finish", reader)
        .await
        .expect("the reading client's task panicked");
    Flood {
        ids,
        slow,
        fast_received,
        slowest_catch_up,
    }
}

async fn spawn_app_with_small_queues() -> TestApp {
    spawn_app_with(|options| options.env("GATEWAY__SSE__QUEUE_CAPACITY", "8")).await
}

#[tokio::test]
async fn slow_client_is_cut_off_and_never_delays_the_others() {
    let app = spawn_app_with_small_queues().await;
    let mut flood = flood_until_a_slow_client_is_cut(&app).await;
    assert_eq!(flood.fast_received, flood.ids.len());

    // The stalled client gets what was already on its way, a prefix in order, and then the end.
    let mut received = 0;
    while let Some(frame) = flood.slow.next_frame_or_end(Duration::from_secs(10)).await {
        if let russe::Event::Message(message) = frame {
            if message.event.as_deref() == Some("document.uploaded") {
                assert_eq!(message.id.as_deref(), Some(flood.ids[received].as_str()));
                received += 1;
            }
        }
    }
    assert!(
        received < flood.ids.len(),
        "the stalled client was sent everything ({received} events) instead of being cut off"
    );
}

#[tokio::test]
async fn cut_off_client_resumes_from_history_without_missing_anything() {
    let app = spawn_app_with_small_queues().await;
    let mut flood = flood_until_a_slow_client_is_cut(&app).await;
    let mut last_id: Option<String> = None;
    while let Some(frame) = flood.slow.next_frame_or_end(Duration::from_secs(10)).await {
        if let russe::Event::Message(message) = frame {
            if let Some(id) = message.id {
                last_id = Some(id.to_string());
            }
        }
    }
    let resume_from = last_id
        .unwrap_or_else(|| panic!("the stalled client received no durable event before it was cut off"));
    let position = flood
        .ids
        .iter()
        .position(|id| *id == resume_from)
        .expect("the last id seen is one of the published ids");

    let request = app
        .events_request("")
        .bearer_auth(ops("slow", ORG))
        .header("Last-Event-ID", &resume_from);
    let mut resumed = SseClient::open(request).await;
    resumed.expect_connected().await;
    for id in &flood.ids[position + 1..] {
        let event = resumed.next_data_event().await;
        assert_eq!(event.id.as_ref(), Some(id), "resume must continue without gaps");
    }
    assert_eq!(resumed.next_data_event().await.label(), "control");
}

/// Reads whatever the gateway managed to send before it closed the connection.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let read_all = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    };
    within(
        Duration::from_secs(10),
        "the gateway to close the raw stream",
        read_all,
    )
    .await;
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn raw_tcp_client_that_never_reads_is_cut_while_a_normal_client_keeps_receiving() {
    let app = spawn_app_with_small_queues().await;
    let raw = raw_stream(&app, &ops("stuck", ORG)).await;
    eventually(
        STEP_TIMEOUT,
        "the gateway to count the raw client's stream",
        || async { app.metric_total("gateway_connections").await == 1.0 },
    )
    .await;

    let mut flood = flood_beside(&app, raw).await;
    assert_eq!(
        flood.fast_received,
        flood.ids.len(),
        "the reading client got every event"
    );
    assert!(
        flood.slowest_catch_up < PROMPTLY,
        "the reading client needed up to {:?} to catch up with a batch of {BATCH} events \
         ({} events published)",
        flood.slowest_catch_up,
        flood.ids.len()
    );

    let received = read_until_closed(&mut flood.slow).await;
    assert!(
        received.starts_with("HTTP/1.1 200"),
        "the raw client's stream was accepted: {:?}",
        &received[..received.len().min(200)]
    );
    let events = received.matches("\nid: ").count();
    assert!(
        events < flood.ids.len(),
        "the raw client was sent all {events} events instead of being cut off"
    );
}

#[tokio::test]
async fn a_websocket_that_never_reads_is_closed_with_4008_while_others_keep_up() {
    let app = spawn_app_with_small_queues().await;
    let slow = app.ws_connect_ready(&ops("stuck", ORG), "").await;
    let mut flood = flood_beside(&app, slow).await;
    assert_eq!(flood.fast_received, flood.ids.len());
    let (received, end) = flood.slow.expect_close(Duration::from_secs(10)).await;
    assert_eq!(end, crate::common::ws::WsEnd::Closed(4008));
    let ids: Vec<String> = received.into_iter().filter_map(|event| event.id).collect();
    assert!(
        ids.len() < flood.ids.len() && ids[..] == flood.ids[..ids.len()],
        "a prefix of the events, in order, then the close ({} of {})",
        ids.len(),
        flood.ids.len()
    );
}
