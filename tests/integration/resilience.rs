//! protocol §7, Redis outage: open streams survive, readiness follows Redis, the gateway starts
//! without Redis, and HTTP publishing answers 503 while Redis is unreachable.

use std::time::Duration;

use reqwest::StatusCode;

use crate::common::envelope::envelope;
use crate::common::gateway::{spawn_gateway, GatewayOptions};
use crate::common::http::assert_error;
use crate::common::redis_server::RedisServer;
use crate::common::token::{ops, service};
use crate::common::{spawn_app, within};

const ORG: &str = "org-1";

/// Reconnect backoff is the gateway's choice; this bounds it generously.
const RECOVERY: Duration = Duration::from_secs(30);

#[tokio::test]
async fn readyz_is_503_not_ready_while_redis_is_down_and_200_when_it_returns() {
    let mut app = spawn_app().await;
    app.wait_for_status("/readyz", 200, RECOVERY).await;
    app.redis.kill();
    app.wait_for_status("/readyz", 503, RECOVERY).await;
    assert_error(
        app.get("/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
    )
    .await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.redis.restart().await;
    app.wait_for_status("/readyz", 200, RECOVERY).await;
}

#[tokio::test]
async fn open_stream_survives_a_redis_restart_and_receives_later_events() {
    let mut app = spawn_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    app.redis.kill();
    app.wait_for_status("/readyz", 503, RECOVERY).await;
    app.redis.restart().await;
    app.wait_for_status("/readyz", 200, RECOVERY).await;

    // Ready should mean resubscribed; probe until an event gets through, within a deadline.
    let probe = async {
        loop {
            app.publish_live(ORG, envelope(ORG, "ticket.created", "after restart"))
                .await;
            let got = tokio::time::timeout(Duration::from_millis(500), olivia.next_data_event());
            if let Ok(event) = got.await {
                return event;
            }
        }
    };
    let event = within(RECOVERY, "a live event after the Redis restart", probe).await;
    assert_eq!(event.label(), "after restart");
}

#[tokio::test]
async fn gateway_starts_without_redis_and_becomes_ready_when_redis_appears() {
    let mut redis = RedisServer::start().await;
    redis.kill();
    let gateway = spawn_gateway(GatewayOptions::new(&redis).without_waiting_until_ready()).await;
    assert_eq!(gateway.get("/healthz").await.status(), 200);
    assert_error(
        gateway.get("/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
    )
    .await;
    redis.restart().await;
    gateway.wait_for_status("/readyz", 200, RECOVERY).await;
}

#[tokio::test]
async fn http_publish_is_503_while_redis_is_down() {
    let mut app = spawn_app().await;
    app.redis.kill();
    app.wait_for_status("/readyz", 503, RECOVERY).await;
    let response = app
        .publish_http(&service(&[ORG]), &envelope(ORG, "ticket.created", "x").into())
        .await;
    assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "not_ready").await;
}

#[tokio::test]
async fn http_publish_is_503_not_replicated_when_fewer_replicas_than_required_hold_the_event() {
    // A Redis with no replica cannot confirm one: the event is stored, the answer says so.
    let app =
        crate::common::spawn_app_with(|options| options.env("GATEWAY__REDIS__MIN_REPLICAS_ACK", "1")).await;
    let response = app
        .publish_http(&service(&[ORG]), &envelope(ORG, "ticket.created", "x").into())
        .await;
    assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "not_replicated").await;
}

#[tokio::test]
async fn an_unreachable_redis_is_logged_with_its_url_and_without_its_password() {
    let mut redis = RedisServer::start().await;
    redis.kill();
    let url = redis.url().replace("redis://", "redis://:s3cret@");
    let gateway = spawn_gateway(
        GatewayOptions::new(&redis)
            .env("GATEWAY__REDIS__URL", &url)
            .without_waiting_until_ready(),
    )
    .await;
    let shown = redis.url().replace("redis://", "redis://***@");
    crate::common::eventually(Duration::from_secs(15), "the unreachable-Redis warning", || {
        let found = {
            let logs = gateway.logs();
            logs.contains("Redis is unreachable") && logs.contains(&shown)
        };
        async move { found }
    })
    .await;
    assert!(!gateway.logs().contains("s3cret"), "the password reached the log");
}
