//! A burst of 10,000 durable events, replayed in order after `Last-Event-ID` (CONTRACT §4, §6).

use std::time::Duration;

use serde_json::Value;

use crate::common::envelope::envelope;
use crate::common::sse::SseClient;
use crate::common::token::ops;
use crate::common::{assert_exactly_once_in_order, assert_ids_increase, spawn_app_with, within};

const ORG: &str = "org-1";
const TICKET: &str = "ticket.created";

fn ticket(label: &str) -> Value {
    envelope(ORG, TICKET, label).into()
}

/// Reads data events up to the one labelled `control` and returns the ids before it.
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
