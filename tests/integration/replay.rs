//! protocol §9: replay is read in bounded pages at the client's pace, so many clients replaying
//! a big history neither hold it in memory nor stall live traffic, and each gets all of it,
//! exactly once and in order.

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::common::envelope::envelope;
use crate::common::sse::SseClient;
use crate::common::token::{ops, TokenBuilder};
use crate::common::{assert_exactly_once_in_order, spawn_app, within};

const BIG_ORG: &str = "org-big";
const TICKET: &str = "ticket.created";
const EVENTS: usize = 5_000;
const EVENT_BYTES: usize = 8 * 1024;
const REPLAYING_CLIENTS: usize = 4;

/// A token for `sub` in the big org and 30 more (empty) orgs.
fn many_orgs_token(sub: &str) -> String {
    (0..30)
        .fold(TokenBuilder::new(sub, "ops").org(BIG_ORG), |token, n| {
            token.org(&format!("org-empty-{n}"))
        })
        .sign()
}

/// Publishes `events` durable events of `EVENT_BYTES` to the big org through the Function;
/// returns their ids.
async fn publish_big_history(app: &crate::common::TestApp, events: usize) -> Vec<String> {
    let history: Vec<(String, String)> = (0..events)
        .map(|n| {
            let event = envelope(BIG_ORG, TICKET, &format!("history {n}")).padded_to(EVENT_BYTES);
            (BIG_ORG.to_string(), event.into_string())
        })
        .collect();
    app.publish_durable_via_redis(&history).await
}

/// Reads a replay until the event labelled `control`; returns the ids before it.
async fn replayed_ids(mut client: SseClient) -> Vec<String> {
    let mut ids = Vec::with_capacity(EVENTS);
    loop {
        let event = client.next_data_event().await;
        if event.label() == "control" {
            return ids;
        }
        ids.push(
            event
                .id
                .unwrap_or_else(|| panic!("a replayed event without an id after {}", ids.len())),
        );
    }
}

#[tokio::test]
async fn many_clients_replaying_a_big_history_get_all_of_it_in_bounded_memory_while_live_events_flow() {
    let app = spawn_app().await;
    let rss_before = app.rss_bytes();
    let published = publish_big_history(&app, EVENTS).await;
    let mut bystander = app.connect_ready(&ops("bystander", "org-live"), "").await;

    // Every client's stream is open (`connected` read) before the control event is published.
    let mut replaying = Vec::new();
    for n in 0..REPLAYING_CLIENTS {
        let request = app
            .events_request("since=0")
            .bearer_auth(many_orgs_token(&format!("replayer-{n}")));
        let mut client = SseClient::open(request).await;
        client.expect_connected().await;
        replaying.push(client);
    }
    let readers = tokio::spawn(join_all(replaying.into_iter().map(replayed_ids)));

    // While they replay, a live event reaches an unrelated client promptly.
    let sent = Instant::now();
    app.publish_live("org-live", envelope("org-live", TICKET, "live"))
        .await;
    let live = within(
        Duration::from_secs(5),
        "the live event during the replays",
        bystander.next_data_event(),
    )
    .await;
    let live_latency = sent.elapsed();
    assert_eq!(live.label(), "live");
    assert!(
        live_latency < Duration::from_secs(1),
        "a live event took {live_latency:?} during the replays"
    );

    app.publish_live(BIG_ORG, envelope(BIG_ORG, TICKET, "control"))
        .await;
    let replays = within(Duration::from_secs(120), "every replay to finish", readers)
        .await
        .unwrap_or_else(|error| panic!("a reader failed ({error}); gateway output:\n{}", app.logs()));
    for (n, ids) in replays.iter().enumerate() {
        assert_exactly_once_in_order(&format!("replayer {n}"), ids, &published);
    }
    let rss_growth = app.rss_bytes().saturating_sub(rss_before);
    eprintln!(
        "live event during the replays: {live_latency:?}; gateway RSS growth: {} MB",
        rss_growth / (1024 * 1024)
    );
    // The history is 40 MB and every client read all of it; holding it per client would be 160 MB.
    assert!(
        rss_growth < 64 * 1024 * 1024,
        "the gateway grew by {} MB",
        rss_growth / (1024 * 1024)
    );
}

/// A gateway allowing one replay at a time, whose only turn is held by a client that reads
/// nothing of a 24 MB replay (more than its socket buffers take); returns it with that client's
/// response (keep it alive).
async fn gateway_with_its_replay_turn_taken(
    keepalive_secs: &str,
) -> (crate::common::TestApp, reqwest::Response) {
    let app = crate::common::spawn_app_with(|options| {
        options
            .env("GATEWAY__HISTORY__MAX_CONCURRENT_REPLAYS", "1")
            .env("GATEWAY__SSE__KEEPALIVE_SECS", keepalive_secs)
    })
    .await;
    publish_big_history(&app, 3000).await;
    let first = app
        .events_request("since=0")
        .bearer_auth(many_orgs_token("first"))
        .send();
    let first = within(Duration::from_secs(10), "the first replay's response", first)
        .await
        .expect("the first replay's response");
    (app, first)
}

#[tokio::test]
async fn a_stream_waiting_for_a_replay_turn_gets_keepalives() {
    let (app, _first) = gateway_with_its_replay_turn_taken("1").await;
    let mut second = SseClient::open(
        app.events_request("since=0")
            .bearer_auth(many_orgs_token("second")),
    )
    .await;
    second.expect_connected().await;
    let event = within(
        Duration::from_secs(5),
        "a keepalive while waiting",
        second.next_event(),
    )
    .await;
    assert_eq!(event.event, "keepalive", "{event:?}");
}

#[tokio::test]
async fn a_stream_waiting_for_a_replay_turn_is_closed_at_drain() {
    let (app, _first) = gateway_with_its_replay_turn_taken("15").await;
    let mut second = SseClient::open(
        app.events_request("since=0")
            .bearer_auth(many_orgs_token("second")),
    )
    .await;
    second.expect_connected().await;
    app.terminate();
    second.expect_end(Duration::from_secs(8)).await;
}

#[tokio::test]
async fn a_stream_waiting_for_a_replay_turn_is_open_and_replays_when_the_turn_comes() {
    let (app, first) = gateway_with_its_replay_turn_taken("15").await;
    let mut second = SseClient::open(
        app.events_request("since=0")
            .bearer_auth(many_orgs_token("second")),
    )
    .await;
    second.expect_connected().await;
    second.assert_no_event_within(Duration::from_millis(500)).await;
    drop(first);
    app.publish_live(BIG_ORG, envelope(BIG_ORG, TICKET, "control"))
        .await;
    let ids = within(Duration::from_secs(60), "the second replay", replayed_ids(second)).await;
    assert_eq!(ids.len(), 3000, "the whole history, once");
    crate::common::assert_ids_increase(&ids);
}

#[tokio::test]
async fn a_replay_sends_only_the_types_asked_for() {
    let app = spawn_app().await;
    let org = "org-1";
    let mixed: Vec<serde_json::Value> = (0..6)
        .map(|n| {
            let event_type = if n % 2 == 0 { "payment.received" } else { TICKET };
            envelope(org, event_type, &format!("{event_type} {n}")).into()
        })
        .collect();
    let ids = app.publish_durable(&mixed).await;
    let mut client = SseClient::open(
        app.events_request("since=0&types=payment.*")
            .bearer_auth(ops("olivia", org)),
    )
    .await;
    client.expect_connected().await;
    app.publish_live(org, envelope(org, "payment.received", "control"))
        .await;
    let mut replayed = Vec::new();
    loop {
        let event = client.next_data_event().await;
        if event.label() == "control" {
            break;
        }
        assert_eq!(event.event, "payment.received", "{event:?}");
        replayed.push(event.id.unwrap_or_default());
    }
    let payments: Vec<String> = ids.into_iter().step_by(2).collect();
    assert_exactly_once_in_order("olivia", &replayed, &payments);
}
