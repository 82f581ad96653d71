//! Redis Cluster mode (`redis.cluster = true`, docs/protocol.md §10): each test runs its own
//! cluster of three primaries and three replicas, with orgs placed on different shards.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::envelope::envelope;
use crate::common::gateway::{spawn_gateway, Gateway, GatewayOptions};
use crate::common::http::send;
use crate::common::redis_cluster::RedisCluster;
use crate::common::sse::SseClient;
use crate::common::token::{ops, service, TokenBuilder};
use crate::common::STEP_TIMEOUT;

const TICKET: &str = "ticket.created";

/// Three orgs whose keys live on three different primaries.
async fn orgs_on_three_shards(cluster: &RedisCluster) -> [String; 3] {
    let mut chosen: Vec<(String, u16)> = Vec::new();
    for n in 0..200 {
        let org = format!("org-{n}");
        let primary = cluster.primary_of(&org).await;
        if !chosen.iter().any(|(_, taken)| *taken == primary) {
            chosen.push((org, primary));
        }
        if chosen.len() == 3 {
            break;
        }
    }
    assert_eq!(chosen.len(), 3, "no three orgs on three shards among 200 names");
    [chosen[0].0.clone(), chosen[1].0.clone(), chosen[2].0.clone()]
}

async fn cluster_gateway(cluster: &RedisCluster) -> Gateway {
    spawn_gateway(GatewayOptions::cluster(cluster)).await
}

fn ticket(org: &str, label: &str) -> Value {
    envelope(org, TICKET, label).into()
}

fn token_for(sub: &str, orgs: &[String]) -> String {
    orgs.iter()
        .fold(TokenBuilder::new(sub, "ops"), |token, org| token.org(org))
        .sign()
}

/// The labels of the next `count` data events, as a set (orgs on different shards are not
/// ordered with each other).
async fn next_labels(client: &mut SseClient, count: usize) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for _ in 0..count {
        labels.insert(client.next_data_event().await.label());
    }
    labels
}

fn set(labels: &[&str]) -> BTreeSet<String> {
    labels.iter().map(|label| label.to_string()).collect()
}

#[tokio::test]
async fn live_spublish_on_each_orgs_tagged_channel_reaches_a_stream_of_orgs_on_three_shards() {
    let cluster = RedisCluster::start().await;
    let orgs = orgs_on_three_shards(&cluster).await;
    let gateway = cluster_gateway(&cluster).await;
    let mut olivia = gateway.connect_ready(&token_for("olivia", &orgs), "").await;
    let mut publisher = cluster.connection().await;
    for org in &orgs {
        let receivers: i64 = redis::cmd("SPUBLISH")
            .arg(format!("events:org:{{{org}}}"))
            .arg(ticket(org, org).to_string())
            .query_async(&mut publisher)
            .await
            .expect("SPUBLISH");
        assert_eq!(receivers, 1, "the gateway subscribes {org}'s shard channel");
    }
    let expected: Vec<&str> = orgs.iter().map(String::as_str).collect();
    assert_eq!(next_labels(&mut olivia, 3).await, set(&expected));
}

#[tokio::test]
async fn fcall_with_the_org_as_its_key_publishes_durably_on_the_orgs_shard() {
    let cluster = RedisCluster::start().await;
    let orgs = orgs_on_three_shards(&cluster).await;
    let gateway = cluster_gateway(&cluster).await;
    let mut olivia = gateway.connect_ready(&ops("olivia", &orgs[1]), "").await;
    let mut publisher = cluster.connection().await;
    let id: String = redis::cmd("FCALL")
        .arg("event_gateway_publish")
        .arg(1)
        .arg(&orgs[1])
        .arg(ticket(&orgs[1], "durable").to_string())
        .query_async(&mut publisher)
        .await
        .expect("FCALL event_gateway_publish 1 <org> on the org's primary");
    let event = olivia.next_data_event().await;
    assert_eq!(event.label(), "durable");
    assert_eq!(event.id, Some(id));
}

#[tokio::test]
async fn an_http_batch_over_three_shards_reaches_a_stream_of_all_three_each_closed_by_its_cursor() {
    let cluster = RedisCluster::start().await;
    let orgs = orgs_on_three_shards(&cluster).await;
    let gateway = cluster_gateway(&cluster).await;
    let mut olivia = gateway.connect_ready(&token_for("olivia", &orgs), "").await;
    let batch = [
        ticket(&orgs[0], "a"),
        ticket(&orgs[1], "b"),
        ticket(&orgs[2], "c"),
    ];
    let ids = gateway.publish_durable(&batch).await;
    assert_eq!(ids.len(), 3);
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let event = olivia.next_data_event().await;
        assert!(
            event.id.as_ref().is_some_and(|id| id.starts_with("c1.")),
            "{event:?} carries the stream's cursor"
        );
        seen.insert(event.label());
    }
    assert_eq!(seen, set(&["a", "b", "c"]));
}

#[tokio::test]
async fn last_event_id_resumes_an_org_after_the_id_in_cluster_mode() {
    let cluster = RedisCluster::start().await;
    let orgs = orgs_on_three_shards(&cluster).await;
    let gateway = cluster_gateway(&cluster).await;
    let org = &orgs[2];
    let ids = gateway
        .publish_durable(&[ticket(org, "e1"), ticket(org, "e2"), ticket(org, "e3")])
        .await;
    let mut olivia = gateway.resume(&ops("olivia", org), &ids[0]).await;
    for (label, id) in [("e2", &ids[1]), ("e3", &ids[2])] {
        let event = olivia.next_data_event().await;
        assert_eq!((event.label(), event.id.as_ref()), (label.to_string(), Some(id)));
    }
}

#[tokio::test]
async fn since_ack_resumes_each_org_from_its_own_position_in_cluster_mode() {
    let cluster = RedisCluster::start().await;
    let orgs = orgs_on_three_shards(&cluster).await;
    let gateway = cluster_gateway(&cluster).await;
    let (first, second) = (&orgs[0], &orgs[1]);
    let in_first = gateway
        .publish_durable(&[ticket(first, "a1"), ticket(first, "a2")])
        .await;
    let in_second = gateway
        .publish_durable(&[ticket(second, "b1"), ticket(second, "b2")])
        .await;
    for (org, id) in [(first, &in_first[0]), (second, &in_second[0])] {
        let ack = send(
            gateway
                .http()
                .post(gateway.url("/api/events/ack"))
                .bearer_auth(ops("olivia", org))
                .json(&json!({"lastEventId": id})),
        )
        .await;
        assert_eq!(ack.status(), StatusCode::NO_CONTENT, "ack in {org}");
    }
    let both = token_for("olivia", &[first.clone(), second.clone()]);
    let mut olivia = gateway.connect_ready(&both, "since=ack").await;
    assert_eq!(next_labels(&mut olivia, 2).await, set(&["a2", "b2"]));
}

#[tokio::test]
async fn per_user_connection_limit_holds_across_replicas_in_cluster_mode() {
    let cluster = RedisCluster::start().await;
    let options = || GatewayOptions::cluster(&cluster).env("GATEWAY__LIMITS__MAX_CONNECTIONS_PER_USER", "2");
    let (a, b) = tokio::join!(spawn_gateway(options()), spawn_gateway(options()));
    crate::replicas::a_third_stream_is_refused(&a, &b, &ops("olivia", "org-1")).await;
}

#[tokio::test]
async fn the_cursor_of_a_stream_of_three_shards_resumes_every_org_exactly() {
    let cluster = RedisCluster::start().await;
    let orgs = orgs_on_three_shards(&cluster).await;
    let gateway = cluster_gateway(&cluster).await;
    let token = token_for("olivia", &orgs);
    let mut olivia = gateway.connect_ready(&token, "").await;
    gateway
        .publish_durable(&[
            ticket(&orgs[0], "a1"),
            ticket(&orgs[1], "b1"),
            ticket(&orgs[2], "c1"),
        ])
        .await;
    let mut last_cursor = None;
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let event = olivia.next_data_event().await;
        seen.insert(event.label());
        last_cursor = event.id;
    }
    assert_eq!(seen, set(&["a1", "b1", "c1"]));
    drop(olivia);
    let cursor = last_cursor.expect("durable events carry the stream's cursor");
    assert!(cursor.len() <= 1024, "the cursor is {} bytes", cursor.len());
    gateway
        .publish_durable(&[
            ticket(&orgs[0], "a2"),
            ticket(&orgs[1], "b2"),
            ticket(&orgs[2], "c2"),
        ])
        .await;
    let mut resumed = gateway.resume(&token, &cursor).await;
    gateway.publish_durable(&[ticket(&orgs[0], "control")]).await;
    let mut after = Vec::new();
    loop {
        let label = resumed.next_data_event().await.label();
        if label == "control" {
            break;
        }
        after.push(label);
    }
    after.sort();
    assert_eq!(
        after,
        ["a2", "b2", "c2"],
        "every org resumed after what was received, once"
    );
}

#[tokio::test]
async fn an_acknowledged_cursor_resumes_since_ack_in_every_org_it_names() {
    let cluster = RedisCluster::start().await;
    let orgs = orgs_on_three_shards(&cluster).await;
    let gateway = cluster_gateway(&cluster).await;
    let token = token_for("olivia", &orgs[..2]);
    let mut olivia = gateway.connect_ready(&token, "").await;
    gateway
        .publish_durable(&[ticket(&orgs[0], "a1"), ticket(&orgs[1], "b1")])
        .await;
    let first = olivia.next_data_event().await;
    let second = olivia.next_data_event().await;
    drop(olivia);
    let ack = send(
        gateway
            .http()
            .post(gateway.url("/api/events/ack"))
            .bearer_auth(&token)
            .json(&json!({"lastEventId": second.id.clone().expect("a cursor")})),
    )
    .await;
    assert_eq!(ack.status(), StatusCode::NO_CONTENT, "ack of a cursor");
    gateway
        .publish_durable(&[ticket(&orgs[0], "a2"), ticket(&orgs[1], "b2")])
        .await;
    let mut resumed = gateway.connect_ready(&token, "since=ack").await;
    assert_eq!(
        next_labels(&mut resumed, 2).await,
        set(&["a2", "b2"]),
        "after {} and {}",
        first.label(),
        second.label()
    );
}

#[tokio::test]
async fn a_primary_killed_while_durable_events_flow_loses_no_acknowledged_event_and_the_stream_stays_open() {
    let mut cluster = RedisCluster::start().await;
    let gateway =
        spawn_gateway(GatewayOptions::cluster(&cluster).env("GATEWAY__REDIS__MIN_REPLICAS_ACK", "1")).await;
    let org = "org-1";
    let mut olivia = gateway.connect_ready(&ops("olivia", org), "").await;
    let token = service(&[org]);
    let mut acknowledged = Vec::new();
    let mut attempt = 0;
    let mut publish_one = async |acknowledged: &mut Vec<String>| {
        attempt += 1;
        let label = format!("e{attempt}");
        let response = gateway.publish_http(&token, &ticket(org, &label)).await;
        if response.status() == StatusCode::ACCEPTED {
            acknowledged.push(label);
        }
        response.status()
    };
    for _ in 0..10 {
        assert_eq!(publish_one(&mut acknowledged).await, StatusCode::ACCEPTED);
    }
    let killed = cluster.kill_primary_of(org).await;
    // The promoted replica has no replica of its own: no publish can be acknowledged by one
    // replica until the failed node is back (as its replica). Meanwhile publishes are refused.
    for _ in 0..3 {
        assert_ne!(
            publish_one(&mut acknowledged).await,
            StatusCode::ACCEPTED,
            "acknowledged without a replica"
        );
    }
    cluster.restart_node(killed).await;
    let after_kill = acknowledged.len();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while acknowledged.len() < after_kill + 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing did not resume after the failover"
        );
        if publish_one(&mut acknowledged).await != StatusCode::ACCEPTED {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    assert_eq!(gateway.publish_durable(&[ticket(org, "control")]).await.len(), 1);
    let mut received = Vec::new();
    loop {
        let label = olivia.next_data_event_within(STEP_TIMEOUT * 3).await.label();
        if label == "control" {
            break;
        }
        received.push(label);
    }
    let mut unique = received.clone();
    unique.dedup();
    assert_eq!(unique.len(), received.len(), "no event twice: {received:?}");
    let acknowledged_received: Vec<&String> = received
        .iter()
        .filter(|label| acknowledged.contains(label))
        .collect();
    assert_eq!(
        acknowledged_received,
        acknowledged.iter().collect::<Vec<_>>(),
        "every acknowledged event once, in order"
    );
}

#[tokio::test]
async fn a_position_from_before_the_cluster_lost_an_orgs_history_gets_a_reset_notice() {
    let cluster = RedisCluster::start().await;
    let gateway = cluster_gateway(&cluster).await;
    let org = "org-1";
    let before = gateway
        .publish_durable(&[ticket(org, "b1"), ticket(org, "b2")])
        .await;
    cluster.flush_all().await;
    let after = gateway.publish_durable(&[ticket(org, "a1")]).await;
    let mut olivia = gateway.resume(&ops("olivia", org), &before[0]).await;
    let truncated = olivia.next_data_event().await;
    assert_eq!(truncated.event, "history.truncated", "got {truncated:?}");
    assert_eq!(truncated.json(), json!({"oldestId": after[0], "reason": "reset"}));
    assert_eq!(olivia.next_data_event().await.label(), "a1");
}

#[tokio::test]
async fn since_a_time_replays_each_org_from_that_time_over_three_shards() {
    let cluster = RedisCluster::start().await;
    let orgs = orgs_on_three_shards(&cluster).await;
    let gateway = cluster_gateway(&cluster).await;
    gateway
        .publish_durable(&[ticket(&orgs[0], "old a"), ticket(&orgs[1], "old b")])
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    gateway
        .publish_durable(&[ticket(&orgs[0], "new a"), ticket(&orgs[2], "new c")])
        .await;
    let mut olivia = gateway
        .connect_ready(&token_for("olivia", &orgs), &format!("since={since}"))
        .await;
    assert_eq!(next_labels(&mut olivia, 2).await, set(&["new a", "new c"]));
}

#[tokio::test]
async fn a_replay_in_cluster_mode_sends_only_what_the_user_may_see() {
    let cluster = RedisCluster::start().await;
    let gateway = cluster_gateway(&cluster).await;
    let org = "org-1";
    let for_tenant =
        |label: &str, tenant: &str| -> Value { envelope(org, TICKET, label).tenant_id(tenant).into() };
    gateway
        .publish_durable(&[
            for_tenant("alice 1", "alice"),
            for_tenant("bob 1", "bob"),
            for_tenant("alice 2", "alice"),
        ])
        .await;
    let alice = TokenBuilder::new("alice", "tenant").org(org).sign();
    let mut stream = gateway.connect_ready(&alice, "since=0").await;
    assert_eq!(stream.next_data_event().await.label(), "alice 1");
    assert_eq!(stream.next_data_event().await.label(), "alice 2");
}

#[tokio::test]
async fn a_trimmed_history_in_cluster_mode_is_told_before_what_remains() {
    let cluster = RedisCluster::start().await;
    let gateway =
        spawn_gateway(GatewayOptions::cluster(&cluster).env("GATEWAY__HISTORY__MAX_EVENTS_PER_ORG", "2"))
            .await;
    let org = "org-1";
    let ids = gateway
        .publish_durable(&[
            ticket(org, "e1"),
            ticket(org, "e2"),
            ticket(org, "e3"),
            ticket(org, "e4"),
        ])
        .await;
    let mut olivia = gateway.resume(&ops("olivia", org), &ids[0]).await;
    let truncated = olivia.next_data_event().await;
    assert_eq!(truncated.event, "history.truncated", "got {truncated:?}");
    assert_eq!(truncated.json(), json!({"oldestId": ids[2], "reason": "trimmed"}));
    assert_eq!(olivia.next_data_event().await.label(), "e3");
}

#[tokio::test]
async fn a_planned_failover_keeps_streams_open_and_loses_nothing() {
    let cluster = RedisCluster::start().await;
    let gateway = cluster_gateway(&cluster).await;
    let org = "org-1";
    let mut olivia = gateway.connect_ready(&ops("olivia", org), "").await;
    gateway.publish_durable(&[ticket(org, "before")]).await;
    assert_eq!(olivia.next_data_event().await.label(), "before");
    cluster.fail_over(org).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut published = Vec::new();
    while published.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing did not resume after the failover"
        );
        let label = format!("after {}", published.len());
        let response = gateway.publish_http(&service(&[org]), &ticket(org, &label)).await;
        if response.status() == StatusCode::ACCEPTED {
            published.push(label);
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    let mut received = Vec::new();
    for _ in 0..3 {
        received.push(olivia.next_data_event_within(STEP_TIMEOUT * 3).await.label());
    }
    assert_eq!(received, published);
}

#[tokio::test]
async fn the_publish_command_publishes_live_and_durably_in_cluster_mode() {
    let cluster = RedisCluster::start().await;
    let gateway = cluster_gateway(&cluster).await;
    let org = "org-1";
    let mut olivia = gateway.connect_ready(&ops("olivia", org), "").await;
    for (label, durable) in [("live", false), ("durable", true)] {
        let data = format!(r#"{{"label":"{label}"}}"#);
        let mut args = vec!["publish", "--org", org, "--type", TICKET, "--data", &data];
        if durable {
            args.push("--durable");
        }
        let url = cluster.url();
        let output = crate::common::gateway::run_cli(
            &args,
            &[
                ("GATEWAY__AUTH__JWT_SECRET", crate::common::token::TEST_SECRET),
                ("GATEWAY__REDIS__URL", &url),
                ("GATEWAY__REDIS__CLUSTER", "true"),
                ("GATEWAY__LOG__FORMAT", "json"),
            ],
        )
        .await;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let event = olivia.next_data_event().await;
        assert_eq!((event.label(), event.id.is_some()), (label.to_string(), durable));
    }
}
