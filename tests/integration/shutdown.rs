//! protocol §7, draining: on SIGTERM every open stream gets a jittered `retry:` and is closed,
//! and the process exits with status 0 within `server.shutdown_timeout_secs`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::spawn_app_with;
use crate::common::sse::SseClient;
use crate::common::token::ops;
use crate::common::TestApp;

const ORG: &str = "org-1";

async fn spawn_drainable_app() -> TestApp {
    spawn_app_with(|options| {
        options
            .env("GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECS", "5")
            .env("GATEWAY__SSE__DRAIN_RETRY_MIN_MS", "1000")
            .env("GATEWAY__SSE__DRAIN_RETRY_MAX_MS", "10000")
    })
    .await
}

/// Reads frames until the drain `retry:` (returned in ms), then asserts the stream ends.
async fn drain_retry(client: &mut SseClient) -> u128 {
    loop {
        match client.next_frame().await {
            russe::Event::Retry(retry) => {
                client.expect_end(Duration::from_secs(5)).await;
                return retry.as_millis();
            }
            russe::Event::Message(message) if message.event.as_deref() != Some("keepalive") => {
                if let Some(retry) = message.retry {
                    client.expect_end(Duration::from_secs(5)).await;
                    return retry.as_millis();
                }
                panic!("expected the drain retry, got {message:?}");
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn sigterm_sends_retry_closes_streams_and_exits_0() {
    let mut app = spawn_drainable_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    app.terminate();
    let retry = drain_retry(&mut olivia).await;
    assert!(
        (1000..=10000).contains(&retry),
        "drain retry {retry} ms outside [1000, 10000]"
    );
    let status = app.wait_for_exit(Duration::from_secs(8)).await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[tokio::test]
async fn drain_retry_is_drawn_per_stream() {
    let mut app = spawn_drainable_app().await;
    let mut clients = Vec::new();
    for n in 0..6 {
        clients.push(app.connect_ready(&ops(&format!("user-{n}"), ORG), "").await);
    }
    app.terminate();
    let mut retries = HashSet::new();
    for client in &mut clients {
        retries.insert(drain_retry(client).await);
    }
    assert!(
        retries.len() > 1,
        "six streams all got the same drain retry: {retries:?}"
    );
    app.wait_for_exit(Duration::from_secs(8)).await;
}

#[tokio::test]
async fn sigterm_with_open_streams_exits_within_the_shutdown_timeout() {
    const STREAMS: usize = 50;
    /// `GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECS` in `spawn_drainable_app`.
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
    /// Process exit and reaping on a loaded two-core machine.
    const MARGIN: Duration = Duration::from_millis(1500);
    let mut app = spawn_drainable_app().await;
    let mut clients = Vec::with_capacity(STREAMS);
    for n in 0..STREAMS {
        clients.push(app.connect_ready(&ops(&format!("user-{n}"), ORG), "").await);
    }
    // None of the clients reads while the gateway drains.
    let terminated = Instant::now();
    app.terminate();
    let status = app.wait_for_exit(SHUTDOWN_TIMEOUT + MARGIN).await;
    let took = terminated.elapsed();
    assert!(
        status.success(),
        "exit status after SIGTERM with {STREAMS} open streams: {status}"
    );
    assert!(
        took <= SHUTDOWN_TIMEOUT + MARGIN,
        "exited {took:?} after SIGTERM with {STREAMS} open streams"
    );
    for (n, client) in clients.iter_mut().enumerate() {
        let retry = drain_retry(client).await;
        assert!(
            (1000..=10000).contains(&retry),
            "stream {n}: drain retry {retry} ms outside [1000, 10000]"
        );
    }
}
