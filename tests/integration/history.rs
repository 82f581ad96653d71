//! protocol §6: durable history, resuming with Last-Event-ID, `since`, acknowledgement, and
//! truncation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::common::envelope::envelope;
use crate::common::gateway::{spawn_gateway, GatewayOptions};
use crate::common::http::send;
use crate::common::redis_server::RedisServer;
use crate::common::sse::SseClient;
use crate::common::token::{ops, TokenBuilder};
use crate::common::{
    assert_exactly_once_in_order, assert_ids_increase, eventually, spawn_app, spawn_app_with, within, TestApp,
};

const ORG: &str = "org-1";
const TICKET: &str = "ticket.created";

fn ticket(label: &str) -> Value {
    envelope(ORG, TICKET, label).into()
}

fn tickets(labels: &[&str]) -> Vec<Value> {
    labels.iter().map(|label| ticket(label)).collect()
}

fn encode_query(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).expect("encoding a query string")
}

fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock before 1970")
        .as_millis()
}

/// Waits (polling, a few milliseconds) until the wall clock has passed `millis`.
async fn clock_passes(millis: u128) {
    eventually(Duration::from_secs(1), "the clock to advance", || async {
        now_millis() > millis
    })
    .await;
}

#[tokio::test]
async fn last_event_id_replays_the_later_durable_events_then_continues_live() {
    let app = spawn_app().await;
    let ids = app.publish_durable(&tickets(&["e1", "e2", "e3"])).await;
    let mut olivia = app.resume(&ops("olivia", ORG), &ids[0]).await;
    for (label, id) in [("e2", &ids[1]), ("e3", &ids[2])] {
        let event = olivia.next_data_event().await;
        assert_eq!(event.label(), label);
        assert_eq!(event.id.as_ref(), Some(id));
    }
    let live_ids = app.publish_durable(&tickets(&["e4"])).await;
    let event = olivia.next_data_event().await;
    assert_eq!(event.label(), "e4");
    assert_eq!(event.id.as_ref(), Some(&live_ids[0]));
}

#[tokio::test]
async fn live_events_published_while_away_are_not_replayed() {
    let app = spawn_app().await;
    let first = app.publish_durable(&tickets(&["durable 1"])).await;
    app.publish_live(ORG, ticket("live while away")).await;
    app.publish_durable(&tickets(&["durable 2"])).await;
    let mut olivia = app.resume(&ops("olivia", ORG), &first[0]).await;
    app.publish_live(ORG, ticket("control")).await;
    assert_eq!(olivia.labels_until("control").await, ["durable 2"]);
}

#[tokio::test]
async fn replay_and_live_meet_without_gap_or_duplicate() {
    let app = spawn_app().await;
    let labels: Vec<String> = (1..=20).map(|n| format!("e{n}")).collect();
    let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    let ids = app.publish_durable(&tickets(&label_refs)).await;
    let request = app
        .events_request("")
        .bearer_auth(ops("olivia", ORG))
        .header("Last-Event-ID", &ids[0]);
    let mut olivia = SseClient::open(request).await;
    // Published while the replay may still be running, before the client reads anything.
    app.publish_durable(&tickets(&["e21", "e22", "e23", "e24", "e25"]))
        .await;
    app.publish_durable(&tickets(&["control"])).await;
    olivia.expect_connected().await;
    let expected: Vec<String> = (2..=25).map(|n| format!("e{n}")).collect();
    assert_eq!(olivia.labels_until("control").await, expected);
}

#[tokio::test]
async fn last_event_id_query_parameter_resumes_like_the_header() {
    let app = spawn_app().await;
    let ids = app.publish_durable(&tickets(&["e1", "e2"])).await;
    let request = app
        .events_request(&encode_query(&[("lastEventId", &ids[0])]))
        .bearer_auth(ops("olivia", ORG));
    let mut olivia = SseClient::open(request).await;
    olivia.expect_connected().await;
    let event = olivia.next_data_event().await;
    assert_eq!(event.label(), "e2");
    assert_eq!(event.id.as_ref(), Some(&ids[1]));
}

#[tokio::test]
async fn last_event_id_header_wins_over_the_query_parameter() {
    let app = spawn_app().await;
    let ids = app.publish_durable(&tickets(&["e1", "e2", "e3"])).await;
    let request = app
        .events_request(&encode_query(&[("lastEventId", &ids[0])]))
        .header("Last-Event-ID", &ids[1])
        .bearer_auth(ops("olivia", ORG));
    let mut olivia = SseClient::open(request).await;
    olivia.expect_connected().await;
    assert_eq!(olivia.next_data_event().await.label(), "e3");
}

#[tokio::test]
async fn since_is_ignored_when_a_last_event_id_is_given() {
    let app = spawn_app().await;
    let ids = app.publish_durable(&tickets(&["e1", "e2", "e3"])).await;
    let request = app
        .events_request("since=0")
        .header("Last-Event-ID", &ids[1])
        .bearer_auth(ops("olivia", ORG));
    let mut olivia = SseClient::open(request).await;
    olivia.expect_connected().await;
    assert_eq!(olivia.next_data_event().await.label(), "e3");
}

#[tokio::test]
async fn replay_delivers_only_events_the_user_may_see() {
    let app = spawn_app().await;
    let for_tenant =
        |label: &str, tenant: &str| -> Value { envelope(ORG, TICKET, label).tenant_id(tenant).into() };
    let ids = app
        .publish_durable(&[
            for_tenant("alice 1", "alice"),
            for_tenant("bob 1", "bob"),
            for_tenant("alice 2", "alice"),
            for_tenant("control", "alice"),
        ])
        .await;
    let alice = TokenBuilder::new("alice", "tenant").org(ORG).sign();
    let mut alice = app.resume(&alice, &ids[0]).await;
    assert_eq!(alice.labels_until("control").await, ["alice 2"]);
}

#[tokio::test]
async fn one_last_event_id_resumes_across_orgs_in_id_order() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for (org, label) in [("org-a", "a1"), ("org-b", "b1"), ("org-a", "a2"), ("org-b", "b2")] {
        ids.extend(app.publish_durable(&[envelope(org, TICKET, label).into()]).await);
    }
    let token = TokenBuilder::new("olivia", "ops")
        .org("org-a")
        .org("org-b")
        .sign();
    let mut olivia = app.resume(&token, &ids[0]).await;
    for (label, id) in [("b1", &ids[1]), ("a2", &ids[2]), ("b2", &ids[3])] {
        let event = olivia.next_data_event().await;
        assert_eq!(event.label(), label, "durable events arrive in id order");
        assert_eq!(event.id.as_ref(), Some(id));
    }
}

#[tokio::test]
async fn since_epoch_milliseconds_replays_events_published_after_it() {
    let app = spawn_app().await;
    app.publish_durable(&tickets(&["before"])).await;
    let since = now_millis() + 1;
    clock_passes(since).await;
    app.publish_durable(&tickets(&["after 1", "after 2", "control"]))
        .await;
    let mut olivia = app
        .connect_ready(&ops("olivia", ORG), &format!("since={since}"))
        .await;
    assert_eq!(olivia.labels_until("control").await, ["after 1", "after 2"]);
}

#[tokio::test]
async fn since_rfc3339_timestamp_replays_events_published_after_it() {
    let app = spawn_app().await;
    app.publish_durable(&tickets(&["before"])).await;
    let since = now_millis() + 1;
    clock_passes(since).await;
    app.publish_durable(&tickets(&["after", "control"])).await;
    let timestamp = OffsetDateTime::from_unix_timestamp_nanos(since as i128 * 1_000_000)
        .expect("a valid timestamp")
        .format(&Rfc3339)
        .expect("formatting RFC 3339");
    let request = app
        .events_request(&encode_query(&[("since", &timestamp)]))
        .bearer_auth(ops("olivia", ORG));
    let mut olivia = SseClient::open(request).await;
    olivia.expect_connected().await;
    assert_eq!(olivia.labels_until("control").await, ["after"]);
}

#[tokio::test]
async fn since_ack_replays_from_the_acknowledged_cursor() {
    let app = spawn_app().await;
    let ids = app
        .publish_durable(&tickets(&["e1", "e2", "e3", "control"]))
        .await;
    let token = ops("olivia", ORG);
    let ack = send(
        app.http()
            .post(app.url("/api/events/ack"))
            .bearer_auth(&token)
            .json(&json!({"lastEventId": ids[1]})),
    )
    .await;
    assert_eq!(ack.status(), StatusCode::NO_CONTENT, "POST /api/events/ack");
    let mut olivia = app.connect_ready(&token, "since=ack").await;
    assert_eq!(olivia.labels_until("control").await, ["e3"]);
}

/// Acknowledges `id` with `token` and asserts `204`.
async fn acknowledge(app: &TestApp, token: &str, id: &str) {
    let ack = send(
        app.http()
            .post(app.url("/api/events/ack"))
            .bearer_auth(token)
            .json(&json!({"lastEventId": id})),
    )
    .await;
    assert_eq!(ack.status(), StatusCode::NO_CONTENT, "POST /api/events/ack");
}

#[tokio::test]
async fn an_ack_in_one_org_leaves_the_users_position_in_another_org_where_it_was() {
    let app = spawn_app().await;
    let org_1 = app.publish_durable(&tickets(&["a1", "a2"])).await;
    acknowledge(&app, &ops("olivia", ORG), &org_1[0]).await;
    let org_2 = app
        .publish_durable(&[envelope("org-2", TICKET, "b1").into()])
        .await;
    acknowledge(&app, &ops("olivia", "org-2"), &org_2[0]).await;
    app.publish_durable(&tickets(&["control"])).await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "since=ack").await;
    assert_eq!(olivia.labels_until("control").await, ["a2"]);
}

#[tokio::test]
async fn since_ack_resumes_each_org_of_a_token_from_its_own_position() {
    let app = spawn_app().await;
    let both = TokenBuilder::new("olivia", "ops").org(ORG).org("org-2").sign();
    let org_1 = app.publish_durable(&tickets(&["a1", "a2"])).await;
    acknowledge(&app, &ops("olivia", ORG), &org_1[0]).await;
    let org_2 = app
        .publish_durable(&[
            envelope("org-2", TICKET, "b1").into(),
            envelope("org-2", TICKET, "b2").into(),
        ])
        .await;
    acknowledge(&app, &ops("olivia", "org-2"), &org_2[0]).await;
    app.publish_durable(&tickets(&["control"])).await;
    let mut olivia = app.connect_ready(&both, "since=ack").await;
    assert_eq!(olivia.labels_until("control").await, ["a2", "b2"]);
}

#[tokio::test]
async fn a_position_stored_before_per_org_positions_still_resumes_since_ack() {
    let app = spawn_app().await;
    let ids = app.publish_durable(&tickets(&["e1", "e2", "control"])).await;
    app.redis_command(redis::cmd("SET").arg("events:ack:olivia").arg(&ids[0]))
        .await
        .expect("SET the earlier versions' key");
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "since=ack").await;
    assert_eq!(olivia.labels_until("control").await, ["e2"]);
}

#[tokio::test]
async fn id_older_than_retained_history_gets_history_truncated_before_the_rest() {
    let app = spawn_app_with(|options| options.env("GATEWAY__HISTORY__MAX_EVENTS_PER_ORG", "3")).await;
    let ids = app
        .publish_durable(&tickets(&["e1", "e2", "e3", "e4", "e5"]))
        .await;
    let mut olivia = app.resume(&ops("olivia", ORG), &ids[0]).await;
    let truncated = olivia.next_data_event().await;
    assert_eq!(truncated.event, "history.truncated", "got {truncated:?}");
    assert_eq!(truncated.json(), json!({"oldestId": ids[2], "reason": "trimmed"}));
    for (label, id) in [("e3", &ids[2]), ("e4", &ids[3]), ("e5", &ids[4])] {
        let event = olivia.next_data_event().await;
        assert_eq!(event.label(), label);
        assert_eq!(event.id.as_ref(), Some(id));
    }
}

/// Reads data events up to the one labelled `control` and returns the ids before it, failing
/// on any event that is not a durable ticket.
async fn ids_until_control(client: &mut SseClient, who: &str) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let event = client.next_data_event().await;
        assert_eq!(
            event.event,
            TICKET,
            "{who}: unexpected event after {} ids: {event:?}",
            ids.len()
        );
        if event.label() == "control" {
            return ids;
        }
        let id = event
            .id
            .unwrap_or_else(|| panic!("{who}: a durable event without an id after {} ids", ids.len()));
        ids.push(id);
    }
}

#[tokio::test]
async fn user_in_two_orgs_resumes_interleaved_events_in_id_order() {
    let app = spawn_app().await;
    let token = TokenBuilder::new("olivia", "ops")
        .org("org-a")
        .org("org-b")
        .sign();
    // One POST per phase, orgs alternating: many of these share a millisecond, which per-org
    // stream ids alone could not order.
    let interleaved = |phase: &str| -> Vec<Value> {
        (0..10)
            .map(|n| {
                let org = if n % 2 == 0 { "org-a" } else { "org-b" };
                envelope(org, TICKET, &format!("{phase} {org} {n}")).into()
            })
            .collect()
    };
    let mut olivia = app.connect_ready(&token, "").await;
    let first = app.publish_durable(&interleaved("first")).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(
            olivia
                .next_data_event()
                .await
                .id
                .expect("a durable event has an id"),
        );
    }
    assert_exactly_once_in_order("olivia before disconnecting", &seen, &first[..5]);
    drop(olivia);

    let second = app.publish_durable(&interleaved("second")).await;
    let expected: Vec<String> = first[5..].iter().chain(&second).cloned().collect();
    assert_ids_increase(&first.iter().chain(&second).cloned().collect::<Vec<_>>());
    let mut olivia = app.resume(&token, &seen[4]).await;
    app.publish_live("org-b", envelope("org-b", TICKET, "control"))
        .await;
    let received = ids_until_control(&mut olivia, "olivia after resuming").await;
    assert_exactly_once_in_order("olivia after resuming across two orgs", &received, &expected);
}

/// What one client of the reconnect storm saw.
struct StormClient {
    number: usize,
    /// Durable events it read before dropping its stream.
    dropped_after: usize,
    /// Whether it reconnected before the publisher had finished.
    resumed_while_publishing: bool,
    /// Every durable id it received, over both streams, in arrival order.
    ids: Vec<String>,
}

#[tokio::test]
async fn reconnect_storm_delivers_every_durable_event_exactly_once() {
    const CLIENTS: usize = 200;
    const EVENTS: usize = 300;
    /// Ten events every 100 ms: about three seconds of publishing.
    const BATCH: usize = 10;
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);

    let redis = RedisServer::start().await;
    let configure = |name: &str| {
        GatewayOptions::new(&redis)
            .replica_name(name)
            .env("GATEWAY__LIMITS__CONNECT_RATE_PER_IP", "100000")
            .env("GATEWAY__LIMITS__CONNECT_RATE_PER_USER", "100000")
    };
    let (a, b) = tokio::join!(
        spawn_gateway(configure("storm-a")),
        spawn_gateway(configure("storm-b"))
    );
    let urls = [a.url("/api/events"), b.url("/api/events")];
    let http = a.http().clone();

    // Everyone is connected before the first event, half on each replica.
    let opened = join_all((0..CLIENTS).map(|number| {
        let request = http
            .get(&urls[number % 2])
            .bearer_auth(ops(&format!("user-{number}"), ORG));
        async move {
            let mut client = SseClient::open(request).await;
            client.expect_connected().await;
            client
        }
    }));
    let opened = within(Duration::from_secs(20), "200 streams to open", opened).await;

    let publishing = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    for (number, mut client) in opened.into_iter().enumerate() {
        let dropped_after = rng.random_range(1..=250);
        let away = Duration::from_millis(rng.random_range(0..300));
        let resume_url = urls[(number + 1) % 2].clone();
        let http = http.clone();
        let publishing = publishing.clone();
        tasks.push(tokio::spawn(async move {
            let who = format!("client {number}");
            let mut ids = Vec::new();
            while ids.len() < dropped_after {
                let event = client.next_data_event().await;
                assert_eq!(event.event, TICKET, "{who} before dropping: {event:?}");
                ids.push(
                    event
                        .id
                        .unwrap_or_else(|| panic!("{who}: a durable event without id")),
                );
            }
            drop(client);
            // Away from the stream while publishing goes on.
            tokio::time::sleep(away).await;
            let resumed_while_publishing = publishing.load(Ordering::SeqCst);
            let last_event_id = ids.last().expect("at least one id").clone();
            let request = http
                .get(&resume_url)
                .bearer_auth(ops(&format!("user-{number}"), ORG))
                .header("Last-Event-ID", last_event_id);
            let mut client = SseClient::open(request).await;
            client.expect_connected().await;
            ids.extend(ids_until_control(&mut client, &who).await);
            StormClient {
                number,
                dropped_after,
                resumed_while_publishing,
                ids,
            }
        }));
    }

    let mut published = Vec::with_capacity(EVENTS);
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for start in (0..EVENTS).step_by(BATCH) {
        pace.tick().await;
        let batch: Vec<Value> = (start..start + BATCH).map(|n| ticket(&format!("e{n}"))).collect();
        // Through both replicas in turn, as a load-balanced publisher would.
        let through = if (start / BATCH).is_multiple_of(2) { &a } else { &b };
        published.extend(through.publish_durable(&batch).await);
    }
    publishing.store(false, Ordering::SeqCst);
    a.publish_durable(&tickets(&["control"])).await;
    assert_ids_increase(&published);

    let clients = within(
        Duration::from_secs(30),
        "every client of the storm to reach the control event",
        join_all(tasks),
    )
    .await;
    let clients: Vec<StormClient> = clients
        .into_iter()
        .map(|client| client.expect("a storm client panicked"))
        .collect();
    for client in &clients {
        assert_exactly_once_in_order(
            &format!(
                "client {} (dropped after {} events, seed {seed})",
                client.number, client.dropped_after
            ),
            &client.ids,
            &published,
        );
    }
    let during = clients
        .iter()
        .filter(|client| client.resumed_while_publishing)
        .count();
    assert!(
        during >= CLIENTS / 2,
        "only {during} of {CLIENTS} clients reconnected while publishing went on (seed {seed}); \
         the storm did not overlap the publisher"
    );
}

#[tokio::test]
async fn burst_of_10000_durable_events_is_replayed_in_order() {
    const BURST: usize = 10_000;
    const BATCH: usize = 1_000;
    let app = spawn_app_with(|options| options.env("GATEWAY__HISTORY__MAX_EVENTS_PER_ORG", "20000")).await;
    let before = app.publish_durable(&[ticket("before")]).await;
    let mut ids = Vec::with_capacity(BURST);
    for start in (0..BURST).step_by(BATCH) {
        let batch: Vec<Value> = (start..start + BATCH).map(|n| ticket(&format!("e{n}"))).collect();
        ids.extend(app.publish_durable(&batch).await);
    }
    assert_eq!(ids.len(), BURST, "ids returned by POST /api/publish");
    assert_ids_increase(&ids);

    let request = app
        .events_request("")
        .bearer_auth(ops("olivia", ORG))
        .header("Last-Event-ID", &before[0]);
    let mut olivia = SseClient::open(request).await;
    olivia.expect_connected().await;
    app.publish_live(ORG, ticket("control")).await;
    let received = within(
        Duration::from_secs(30),
        "the replay of 10,000 events and the live control event",
        ids_until_control(&mut olivia, "olivia"),
    )
    .await;
    assert_exactly_once_in_order("olivia, resuming after the burst's predecessor", &received, &ids);
}
