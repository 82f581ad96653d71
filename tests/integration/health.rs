//! protocol §7 and §8: health, readiness, metrics exported from start-up, and JSON 404s.

use std::time::Duration;

use reqwest::StatusCode;

use crate::common::envelope::envelope;
use crate::common::http::assert_error;
use crate::common::token::ops;
use crate::common::{eventually, spawn_app, spawn_app_with};

#[tokio::test]
async fn healthz_is_200() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn readyz_is_200_once_redis_is_connected() {
    let app = spawn_app().await;
    app.wait_for_status("/readyz", 200, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn unknown_path_is_404_not_found_as_json() {
    let app = spawn_app().await;
    assert_error(app.get("/no/such/path").await, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn metrics_exports_every_contract_metric_from_startup() {
    let app = spawn_app().await;
    let metrics = app.metrics().await;
    for name in [
        "gateway_connections",
        "gateway_connections_opened_total",
        "gateway_events_received_total",
        "gateway_events_delivered_total",
        "gateway_events_dropped_total",
        "gateway_slow_consumer_disconnects_total",
        "gateway_auth_failures_total",
        "gateway_redis_reconnects_total",
        "gateway_fanout_seconds",
    ] {
        let kind = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("# TYPE {name} ")))
            .unwrap_or_else(|| panic!("/metrics lacks `# TYPE {name}`:\n{metrics}"));
        let expected = if name == "gateway_fanout_seconds" {
            "histogram"
        } else if name == "gateway_connections" {
            "gauge"
        } else {
            "counter"
        };
        assert_eq!(kind.trim(), expected, "type of {name}");
    }
}

#[tokio::test]
async fn counters_without_labels_start_at_zero() {
    let app = spawn_app().await;
    let metrics = app.metrics().await;
    for name in [
        "gateway_connections_opened_total",
        "gateway_events_delivered_total",
        "gateway_slow_consumer_disconnects_total",
    ] {
        let sample = metrics
            .lines()
            .find(|line| line.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("/metrics lacks a sample for {name}:\n{metrics}"));
        assert_eq!(sample.split_whitespace().nth(1), Some("0"), "{name} at start-up");
    }
}

#[tokio::test]
async fn opened_streams_are_counted() {
    let app = spawn_app().await;
    let _alice = app
        .connect_ready(&crate::common::token::ops("alice", "org-1"), "")
        .await;
    eventually(
        Duration::from_secs(5),
        "gateway_connections_opened_total and gateway_connections count the open stream",
        || async {
            app.metric_total("gateway_connections_opened_total").await == 1.0
                && app.metric_total("gateway_connections").await == 1.0
        },
    )
    .await;
}

#[tokio::test]
async fn delivered_events_are_counted_with_their_fanout_latency_across_workers() {
    // Two workers, so the count is the sum of both workers' counters.
    let app = spawn_app_with(|options| options.env("GATEWAY__SERVER__WORKERS", "2")).await;
    let mut streams = Vec::new();
    for user in ["alice", "bob", "carol", "dave"] {
        streams.push(app.connect_ready(&ops(user, "org-1"), "").await);
    }
    for label in ["e1", "e2", "e3"] {
        app.publish_live("org-1", envelope("org-1", "ticket.updated", label))
            .await;
    }
    for stream in &mut streams {
        for label in ["e1", "e2", "e3"] {
            assert_eq!(stream.next_data_event().await.label(), label);
        }
    }
    eventually(
        Duration::from_secs(5),
        "gateway_events_delivered_total to count 4 streams x 3 events",
        || async { app.metric_total("gateway_events_delivered_total").await == 12.0 },
    )
    .await;
    // Every delivered event is observed, however many one write carries.
    let observed = app.metric_total("gateway_fanout_seconds_count").await;
    assert_eq!(observed, 12.0, "gateway_fanout_seconds_count");
}
