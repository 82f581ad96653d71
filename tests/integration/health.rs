//! CONTRACT §7 and §8: health, readiness, metrics exported from start-up, and JSON 404s.

use std::time::Duration;

use reqwest::StatusCode;

use crate::common::http::assert_error;
use crate::common::{eventually, spawn_app};

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
