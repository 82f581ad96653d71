//! Durable events published before, during and after a Redis restart all reach open streams, once and in order (protocol §7).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::envelope::envelope;
use crate::common::gateway::{spawn_gateway, GatewayOptions};
use crate::common::http::fcall_publish;
use crate::common::redis_server::RedisServer;
use crate::common::sse::SseClient;
use crate::common::token::ops;
use crate::common::{assert_exactly_once_in_order, assert_ids_increase, within, TestApp, STEP_TIMEOUT};

const ORG: &str = "org-1";
const TICKET: &str = "ticket.created";

/// Reconnect backoff is the gateway's choice; this bounds it generously.
const RECOVERY: Duration = Duration::from_secs(30);

/// `FCALL event_gateway_publish` on a fresh connection, as a backend publishes durably right
/// after Redis comes back; retried until the restarted Redis answers with an id.
async fn fcall_publish_retrying(redis: &RedisServer, label: &str) -> String {
    let payload = envelope(ORG, TICKET, label).into_string();
    let attempt = || async {
        let client = redis::Client::open(redis.url()).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        fcall_publish(ORG, &payload)
            .query_async::<String>(&mut connection)
            .await
            .ok()
    };
    let publish = async {
        loop {
            if let Ok(Some(id)) = tokio::time::timeout(Duration::from_secs(1), attempt()).await {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within(STEP_TIMEOUT, "FCALL event_gateway_publish to succeed", publish).await
}

/// Reads `count` durable tickets and returns their ids; anything else (a second `connected`,
/// the end of the stream) fails the test.
async fn read_ids(client: &mut SseClient, who: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let event = client.next_data_event().await;
        assert_eq!(event.event, TICKET, "{who} after {} ids: {event:?}", ids.len());
        ids.push(
            event
                .id
                .unwrap_or_else(|| panic!("{who}: a durable event without an id")),
        );
    }
    ids
}

#[tokio::test]
async fn durable_events_before_during_and_after_a_redis_restart_all_arrive() {
    const CLIENTS: usize = 3;
    const PER_PHASE: usize = 5;
    let redis = RedisServer::start_persistent().await;
    let gateway = spawn_gateway(GatewayOptions::new(&redis)).await;
    let mut app = TestApp { gateway, redis };
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        clients.push(app.connect_ready(&ops(&format!("ops-{n}"), ORG), "").await);
    }
    let opened = app.metric_total("gateway_connections_opened_total").await;
    let reconnects = app.metric_total("gateway_redis_reconnects_total").await;
    let labels = |phase: &str| -> Vec<Value> {
        (0..PER_PHASE)
            .map(|n| envelope(ORG, TICKET, &format!("{phase} {n}")).into())
            .collect()
    };

    let mut published = app.publish_durable(&labels("before")).await;
    for (n, client) in clients.iter_mut().enumerate() {
        let who = format!("ops-{n} before the outage");
        let received = read_ids(client, &who, PER_PHASE).await;
        assert_exactly_once_in_order(&who, &received, &published);
    }

    app.redis.kill();
    app.wait_for_status("/readyz", 503, RECOVERY).await;
    app.redis.restart().await;
    // Published the moment Redis is back, while the gateway is still reconnecting.
    for n in 0..PER_PHASE {
        published.push(fcall_publish_retrying(&app.redis, &format!("during {n}")).await);
    }
    let still_reconnecting = app.get("/readyz").await.status() != StatusCode::OK;
    app.wait_for_status("/readyz", 200, RECOVERY).await;
    published.extend(app.publish_durable(&labels("after")).await);
    app.publish_durable(&[envelope(ORG, TICKET, "control").into()])
        .await;
    assert_ids_increase(&published);

    for (n, client) in clients.iter_mut().enumerate() {
        let who =
            format!("ops-{n} (gateway still reconnecting after the \"during\" events: {still_reconnecting})");
        let mut received = read_ids(client, &who, 2 * PER_PHASE).await;
        let control = client.next_data_event().await;
        assert_eq!(
            control.label(),
            "control",
            "{who}: expected the control event, got {control:?}"
        );
        let mut all = published[..PER_PHASE].to_vec();
        all.append(&mut received);
        assert_exactly_once_in_order(&who, &all, &published);
    }
    assert_eq!(
        app.metric_total("gateway_connections_opened_total").await,
        opened,
        "no stream was reopened: the clients kept their streams through the outage"
    );
    let reconnects_after = app.metric_total("gateway_redis_reconnects_total").await;
    assert!(
        reconnects_after > reconnects,
        "gateway_redis_reconnects_total went from {reconnects} to {reconnects_after}"
    );
}

#[tokio::test]
async fn a_position_from_before_redis_lost_its_history_gets_a_reset_notice_then_what_is_kept() {
    let mut app = crate::common::spawn_app().await;
    let ticket = |label: &str| -> Value { envelope(ORG, TICKET, label).into() };
    let before = app.publish_durable(&[ticket("b1"), ticket("b2")]).await;
    app.redis.kill();
    app.wait_for_status("/readyz", 503, RECOVERY).await;
    // No persistence: the history, the id counter and the Functions are gone.
    app.redis.restart().await;
    app.wait_for_status("/readyz", 200, RECOVERY).await;
    let after = app.publish_durable(&[ticket("a1"), ticket("a2")]).await;
    assert!(
        after[0] > before[1],
        "new ids still sort after the old ones: {before:?} {after:?}"
    );
    let mut olivia = app.resume(&ops("olivia", ORG), &before[0]).await;
    let truncated = olivia.next_data_event().await;
    assert_eq!(truncated.event, "history.truncated", "got {truncated:?}");
    assert_eq!(
        truncated.json(),
        serde_json::json!({"oldestId": after[0], "reason": "reset"})
    );
    for (label, id) in [("a1", &after[0]), ("a2", &after[1])] {
        let event = olivia.next_data_event().await;
        assert_eq!((event.label(), event.id.as_ref()), (label.to_string(), Some(id)));
    }
}
