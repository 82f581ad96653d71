//! The embedded broker (`redis.url` empty): one replica with full features and no Redis.

use std::time::Duration;

use serde_json::json;

use crate::common::envelope::envelope;
use crate::common::gateway::{run_cli, spawn_gateway, GatewayOptions};
use crate::common::token::{ops, service, TEST_SECRET};

const ORG: &str = "org-1";

#[tokio::test]
async fn embedded_gateway_is_ready_without_redis() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    gateway
        .wait_for_status("/readyz", 200, Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn http_publish_reaches_a_connected_client_without_redis() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    let mut olivia = gateway.connect_ready(&ops("olivia", ORG), "").await;
    let ids = gateway
        .publish_durable(&[envelope(ORG, "ticket.created", "embedded").into()])
        .await;
    let event = olivia.next_data_event().await;
    assert_eq!(event.event, "ticket.created");
    assert_eq!(event.json(), json!({"label": "embedded"}));
    assert_eq!(event.id.as_deref(), Some(ids[0].as_str()));
}

#[tokio::test]
async fn embedded_broker_replays_history_after_last_event_id() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    let ids = gateway
        .publish_durable(&[
            envelope(ORG, "ticket.created", "first").into(),
            envelope(ORG, "ticket.created", "second").into(),
        ])
        .await;
    let request = gateway
        .events_request("")
        .bearer_auth(ops("olivia", ORG))
        .header("Last-Event-ID", &ids[0]);
    let mut olivia = crate::common::sse::SseClient::open(request).await;
    olivia.expect_connected().await;
    let event = olivia.next_data_event().await;
    assert_eq!(event.label(), "second");
    assert_eq!(event.id.as_deref(), Some(ids[1].as_str()));
}

#[tokio::test]
async fn publish_subcommand_with_url_goes_through_the_running_gateway() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    let mut olivia = gateway.connect_ready(&ops("olivia", ORG), "").await;
    let token = service(&[ORG]);
    let output = run_cli(
        &[
            "publish",
            "--org",
            ORG,
            "--type",
            "ticket.created",
            "--data",
            r#"{"label":"via http"}"#,
            "--url",
            gateway.base_url(),
            "--token",
            &token,
        ],
        &[
            ("GATEWAY__AUTH__JWT_SECRET", TEST_SECRET),
            ("GATEWAY__REDIS__URL", ""),
            ("GATEWAY__LOG__FORMAT", "json"),
        ],
    )
    .await;
    assert!(
        output.status.success(),
        "`event-gateway publish --url` failed with {}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let event = olivia.next_data_event().await;
    assert_eq!(event.label(), "via http");
    assert!(event.id.is_some(), "HTTP publishing is durable: {event:?}");
}
