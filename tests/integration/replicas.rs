//! Redis mode scales out: several gateways on one Redis behave as one service.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::envelope::envelope;
use crate::common::gateway::{spawn_gateway, Gateway, GatewayOptions};
use crate::common::http::{assert_error, assert_refused_with_retry_after, json_body, send};
use crate::common::redis_server::RedisServer;
use crate::common::token::{ops, TokenBuilder};
use crate::common::{eventually, within, STEP_TIMEOUT};

const ORG: &str = "org-1";

async fn two_replicas(
    redis: &RedisServer,
    configure: fn(GatewayOptions) -> GatewayOptions,
) -> (Gateway, Gateway) {
    let first = spawn_gateway(configure(GatewayOptions::new(redis).replica_name("replica-a")));
    let second = spawn_gateway(configure(GatewayOptions::new(redis).replica_name("replica-b")));
    tokio::join!(first, second)
}

#[tokio::test]
async fn connected_event_names_the_replica_that_serves_the_stream() {
    let redis = RedisServer::start().await;
    let (a, b) = two_replicas(&redis, |options| options).await;
    let mut on_a = a.connect(&ops("olivia", ORG), "").await;
    let mut on_b = b.connect(&ops("olivia", ORG), "").await;
    assert_eq!(on_a.expect_connected().await["replica"], "replica-a");
    assert_eq!(on_b.expect_connected().await["replica"], "replica-b");
}

#[tokio::test]
async fn one_redis_publish_reaches_clients_on_every_replica() {
    let redis = RedisServer::start().await;
    let (a, b) = two_replicas(&redis, |options| options).await;
    let mut on_a = a.connect_ready(&ops("olivia", ORG), "").await;
    let mut on_b = b.connect_ready(&ops("oscar", ORG), "").await;
    a.publish_live(ORG, envelope(ORG, "ticket.created", "once")).await;
    assert_eq!(on_a.next_data_event().await.label(), "once");
    assert_eq!(on_b.next_data_event().await.label(), "once");
    a.publish_live(ORG, envelope(ORG, "ticket.created", "control"))
        .await;
    assert_eq!(on_a.labels_until("control").await, Vec::<String>::new());
    assert_eq!(on_b.labels_until("control").await, Vec::<String>::new());
}

#[tokio::test]
async fn durable_event_published_through_one_replica_reaches_the_other_with_its_id() {
    let redis = RedisServer::start().await;
    let (a, b) = two_replicas(&redis, |options| options).await;
    let mut on_b = b.connect_ready(&ops("oscar", ORG), "").await;
    let ids = a
        .publish_durable(&[envelope(ORG, "ticket.created", "durable").into()])
        .await;
    let event = on_b.next_data_event().await;
    assert_eq!(event.label(), "durable");
    assert_eq!(event.id.as_deref(), Some(ids[0].as_str()));
}

async fn connections(gateway: &Gateway, token: &str) -> Value {
    let response = send(
        gateway
            .http()
            .get(gateway.url("/api/connections"))
            .bearer_auth(token),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK, "GET /api/connections");
    json_body(response).await
}

fn connections_of(report: &Value, replica: &str) -> Option<u64> {
    report["replicas"]
        .as_array()?
        .iter()
        .find(|entry| entry["replica"] == replica)?["connections"]
        .as_u64()
}

/// Waits until `GET /api/connections` on `gateway` reports 1 stream on replica-a and 2 on
/// replica-b (registry entries follow within a heartbeat).
async fn until_one_on_a_and_two_on_b(gateway: &Gateway, caller: &str) {
    eventually(
        Duration::from_secs(10),
        "GET /api/connections reports 1 stream on replica-a and 2 on replica-b",
        || async {
            let report = connections(gateway, caller).await;
            report["total"] == 3
                && connections_of(&report, "replica-a") == Some(1)
                && connections_of(&report, "replica-b") == Some(2)
        },
    )
    .await;
}

#[tokio::test]
async fn connections_endpoint_counts_streams_on_every_replica() {
    let redis = RedisServer::start().await;
    let (a, b) = two_replicas(&redis, |options| options).await;
    let _landlord = a
        .connect_ready(&TokenBuilder::new("lena", "landlord").org(ORG).sign(), "")
        .await;
    let _tenant = b
        .connect_ready(&TokenBuilder::new("tom", "tenant").org(ORG).sign(), "")
        .await;
    let _ops = b.connect_ready(&ops("olivia", ORG), "").await;
    let caller = ops("auditor", ORG);
    until_one_on_a_and_two_on_b(&a, &caller).await;
    let report = connections(&b, &caller).await;
    assert_eq!(report["total"], 3, "{report}");
    for role in ["landlord", "tenant", "ops"] {
        assert_eq!(report["byRole"][role], 1, "byRole.{role}: {report}");
    }
    let by_role_total: u64 = report["byRole"]
        .as_object()
        .unwrap_or_else(|| panic!("byRole must be an object: {report}"))
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(by_role_total, 3, "{report}");
}

#[tokio::test]
async fn connections_endpoint_is_403_for_other_roles() {
    let redis = RedisServer::start().await;
    let (a, _b) = two_replicas(&redis, |options| options).await;
    let landlord = TokenBuilder::new("lena", "landlord").org(ORG).sign();
    let response = send(a.http().get(a.url("/api/connections")).bearer_auth(landlord)).await;
    assert_error(response, StatusCode::FORBIDDEN, "role_forbidden").await;
}

#[tokio::test]
async fn per_user_connection_limit_holds_across_replicas() {
    let redis = RedisServer::start().await;
    let (a, b) = two_replicas(&redis, |options| {
        options.env("GATEWAY__LIMITS__MAX_CONNECTIONS_PER_USER", "2")
    })
    .await;
    a_third_stream_is_refused(&a, &b, &ops("olivia", ORG)).await;
}

/// With `limits.max_connections_per_user = 2`: one stream of the user on each replica, then a
/// third one is `429` with `Retry-After`.
pub async fn a_third_stream_is_refused(a: &Gateway, b: &Gateway, token: &str) {
    let _first = a.connect_ready(token, "").await;
    let _second = b.connect_ready(token, "").await;
    let third = within(
        STEP_TIMEOUT,
        "the third stream to be refused",
        send(a.events_request("").bearer_auth(token)),
    )
    .await;
    assert_refused_with_retry_after(third, StatusCode::TOO_MANY_REQUESTS).await;
}

#[tokio::test]
async fn replica_killed_with_sigkill_stops_being_counted_after_the_ttl() {
    let redis = RedisServer::start().await;
    let (a, mut b) = two_replicas(&redis, |options| options).await;
    let _on_a = a.connect_ready(&ops("olivia", ORG), "").await;
    let _on_b = [
        b.connect_ready(&ops("oscar", ORG), "").await,
        b.connect_ready(&ops("owen", ORG), "").await,
    ];
    let caller = ops("auditor", ORG);
    until_one_on_a_and_two_on_b(&a, &caller).await;

    b.kill_hard().await;
    let killed = tokio::time::Instant::now();
    // The dead replica's entries outlive its last heartbeat by the TTL (15 s) at most.
    eventually(
        Duration::from_secs(25),
        "GET /api/connections on the survivor to stop counting the SIGKILLed replica-b",
        || async {
            let report = connections(&a, &caller).await;
            report["total"] == 1
                && connections_of(&report, "replica-a") == Some(1)
                && connections_of(&report, "replica-b").is_none()
        },
    )
    .await;
    let report = connections(&a, &caller).await;
    assert_eq!(
        report["byRole"]["ops"],
        1,
        "{report} ({:?} after SIGKILL)",
        killed.elapsed()
    );
}
