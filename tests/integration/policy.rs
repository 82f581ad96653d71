//! protocol §5: who receives what. Each test publishes events a client may and may not see,
//! then a control event it must see, and asserts exactly which labels arrived before the control.
//! Every rule is checked over both transports, SSE and WebSocket.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::envelope::envelope;
use crate::common::spawn_app;
use crate::common::token::TokenBuilder;
use crate::common::ws::Transport;
use crate::over_both_transports;

const ORG: &str = "org-1";
const TICKET: &str = "ticket.created";

fn ticket(label: &str) -> crate::common::envelope::Envelope {
    envelope(ORG, TICKET, label)
}

async fn ops_receives_every_event_of_its_org(via: Transport) {
    let app = spawn_app().await;
    let token = TokenBuilder::new("olivia", "ops").org(ORG).sign();
    let mut olivia = app.subscribe_ready(via, &token, "").await;
    for event in [
        ticket("no routing fields"),
        ticket("another landlord").landlord_id("other-landlord"),
        ticket("some tenant").tenant_id("someone"),
        ticket("some contractor").contractor_id("someone"),
        ticket("some user").user_ids(&["someone"]),
        ticket("control"),
    ] {
        app.publish_live(ORG, event).await;
    }
    assert_eq!(
        olivia.labels_until("control").await,
        [
            "no routing fields",
            "another landlord",
            "some tenant",
            "some contractor",
            "some user"
        ]
    );
}

async fn landlord_receives_events_whose_landlord_id_is_one_of_its_orgs(via: Transport) {
    let app = spawn_app().await;
    let token = TokenBuilder::new("lena", "landlord").org(ORG).org("org-2").sign();
    let mut lena = app.subscribe_ready(via, &token, "").await;
    for event in [
        ticket("own org").landlord_id(ORG),
        ticket("other own org").landlord_id("org-2"),
        ticket("another landlord").landlord_id("other-landlord"),
        ticket("no routing fields"),
        ticket("tenant only").tenant_id("lena"),
        ticket("contractor only").contractor_id("lena"),
        ticket("control").landlord_id(ORG),
    ] {
        app.publish_live(ORG, event).await;
    }
    assert_eq!(lena.labels_until("control").await, ["own org", "other own org"]);
}

async fn landlord_id_is_read_from_data_when_absent_at_top_level(via: Transport) {
    let app = spawn_app().await;
    let token = TokenBuilder::new("lena", "landlord").org(ORG).sign();
    let mut lena = app.subscribe_ready(via, &token, "").await;
    for event in [
        ticket("in data").data_field("landlordId", json!(ORG)),
        ticket("top level wins")
            .landlord_id("other-landlord")
            .data_field("landlordId", json!(ORG)),
        ticket("other in data").data_field("landlordId", json!("other-landlord")),
        ticket("control").landlord_id(ORG),
    ] {
        app.publish_live(ORG, event).await;
    }
    assert_eq!(lena.labels_until("control").await, ["in data"]);
}

async fn tenant_never_receives_another_tenants_ticket(via: Transport) {
    let app = spawn_app().await;
    let token = TokenBuilder::new("alice", "tenant").org(ORG).sign();
    let mut alice = app.subscribe_ready(via, &token, "").await;
    app.publish_live(ORG, ticket("bob's").tenant_id("bob")).await;
    app.publish_live(ORG, ticket("alice's").tenant_id("alice")).await;
    assert_eq!(alice.next_data_event().await.label(), "alice's");
}

async fn tenant_receives_events_whose_tenant_id_is_its_tenant_id_claim(via: Transport) {
    let app = spawn_app().await;
    let token = TokenBuilder::new("alice-user", "tenant")
        .org(ORG)
        .tenant_id("t-alice")
        .sign();
    let mut alice = app.subscribe_ready(via, &token, "").await;
    for event in [
        ticket("own tenancy").tenant_id("t-alice"),
        ticket("other tenancy").tenant_id("t-bob"),
        ticket("matches sub, not the claim").tenant_id("alice-user"),
        ticket("no routing fields"),
        ticket("landlord only").landlord_id(ORG),
        ticket("contractor field").contractor_id("t-alice"),
        ticket("control").tenant_id("t-alice"),
    ] {
        app.publish_live(ORG, event).await;
    }
    assert_eq!(alice.labels_until("control").await, ["own tenancy"]);
}

async fn tenant_without_tenant_id_claim_is_matched_by_sub(via: Transport) {
    let app = spawn_app().await;
    let token = TokenBuilder::new("alice", "tenant").org(ORG).sign();
    let mut alice = app.subscribe_ready(via, &token, "").await;
    for event in [
        ticket("for alice").tenant_id("alice"),
        ticket("for bob").tenant_id("bob"),
        ticket("control").tenant_id("alice"),
    ] {
        app.publish_live(ORG, event).await;
    }
    assert_eq!(alice.labels_until("control").await, ["for alice"]);
}

async fn tenant_id_is_read_from_data_when_absent_at_top_level(via: Transport) {
    let app = spawn_app().await;
    let token = TokenBuilder::new("alice", "tenant").org(ORG).sign();
    let mut alice = app.subscribe_ready(via, &token, "").await;
    for event in [
        ticket("in data").data_field("tenantId", json!("alice")),
        ticket("top level wins")
            .tenant_id("bob")
            .data_field("tenantId", json!("alice")),
        ticket("control").tenant_id("alice"),
    ] {
        app.publish_live(ORG, event).await;
    }
    assert_eq!(alice.labels_until("control").await, ["in data"]);
}

async fn contractor_receives_events_whose_contractor_id_is_its_contractor_id_claim(via: Transport) {
    let app = spawn_app().await;
    let token = TokenBuilder::new("carl-user", "contractor")
        .org(ORG)
        .contractor_id("c-carl")
        .sign();
    let mut carl = app.subscribe_ready(via, &token, "").await;
    for event in [
        ticket("own job").contractor_id("c-carl"),
        ticket("other contractor").contractor_id("c-dave"),
        ticket("matches sub, not the claim").contractor_id("carl-user"),
        ticket("tenant field").tenant_id("c-carl"),
        ticket("landlord only").landlord_id(ORG),
        ticket("no routing fields"),
        ticket("control").contractor_id("c-carl"),
    ] {
        app.publish_live(ORG, event).await;
    }
    assert_eq!(carl.labels_until("control").await, ["own job"]);
}

async fn contractor_without_contractor_id_claim_is_matched_by_sub(via: Transport) {
    let app = spawn_app().await;
    let token = TokenBuilder::new("carl", "contractor").org(ORG).sign();
    let mut carl = app.subscribe_ready(via, &token, "").await;
    for event in [
        ticket("for carl").contractor_id("carl"),
        ticket("for dave").contractor_id("dave"),
        ticket("control").contractor_id("carl"),
    ] {
        app.publish_live(ORG, event).await;
    }
    assert_eq!(carl.labels_until("control").await, ["for carl"]);
}

async fn contractor_id_is_read_from_data_when_absent_at_top_level(via: Transport) {
    let app = spawn_app().await;
    let token = TokenBuilder::new("carl", "contractor").org(ORG).sign();
    let mut carl = app.subscribe_ready(via, &token, "").await;
    for event in [
        ticket("in data").data_field("contractorId", json!("carl")),
        ticket("top level wins")
            .contractor_id("dave")
            .data_field("contractorId", json!("carl")),
        ticket("control").contractor_id("carl"),
    ] {
        app.publish_live(ORG, event).await;
    }
    assert_eq!(carl.labels_until("control").await, ["in data"]);
}

async fn user_ids_reach_their_users_whatever_the_role(via: Transport) {
    let app = spawn_app().await;
    let mut lena = app
        .subscribe_ready(via, &TokenBuilder::new("lena", "landlord").org(ORG).sign(), "")
        .await;
    let mut tom = app
        .subscribe_ready(via, &TokenBuilder::new("tom", "tenant").org(ORG).sign(), "")
        .await;
    let mut carl = app
        .subscribe_ready(via, &TokenBuilder::new("carl", "contractor").org(ORG).sign(), "")
        .await;
    let addressed_elsewhere = |label: &str| {
        ticket(label)
            .landlord_id("other-landlord")
            .tenant_id("other-tenant")
            .contractor_id("other-contractor")
    };
    for event in [
        addressed_elsewhere("listed").user_ids(&["lena", "tom", "carl"]),
        addressed_elsewhere("not listed").user_ids(&["someone-else"]),
        addressed_elsewhere("listed in data").data_field("userIds", json!(["lena", "tom", "carl"])),
        addressed_elsewhere("control").user_ids(&["lena", "tom", "carl"]),
    ] {
        app.publish_live(ORG, event).await;
    }
    for client in [&mut lena, &mut tom, &mut carl] {
        assert_eq!(client.labels_until("control").await, ["listed", "listed in data"]);
    }
}

async fn member_of_two_orgs_receives_events_of_both(via: Transport) {
    let app = spawn_app().await;
    let token = TokenBuilder::new("olivia", "ops")
        .org("org-a")
        .org("org-b")
        .sign();
    let mut olivia = app.subscribe_ready(via, &token, "").await;
    app.publish_live("org-a", envelope("org-a", TICKET, "from a"))
        .await;
    app.publish_live("org-b", envelope("org-b", TICKET, "from b"))
        .await;
    app.publish_live("org-b", envelope("org-b", TICKET, "control"))
        .await;
    let mut labels = olivia.labels_until("control").await;
    labels.sort();
    assert_eq!(labels, ["from a", "from b"]);
}

async fn no_event_of_other_orgs_reaches_a_client_even_when_addressed_to_it(via: Transport) {
    let app = spawn_app().await;
    let mut olivia = app
        .subscribe_ready(via, &TokenBuilder::new("olivia", "ops").org("org-a").sign(), "")
        .await;
    let mut lena = app
        .subscribe_ready(
            via,
            &TokenBuilder::new("lena", "landlord").org("org-a").sign(),
            "",
        )
        .await;
    let mut alice = app
        .subscribe_ready(via, &TokenBuilder::new("alice", "tenant").org("org-a").sign(), "")
        .await;
    // 500 events for orgs B..F, each addressed by every routing field to the clients of org A.
    let other_orgs = ["org-b", "org-c", "org-d", "org-e", "org-f"];
    let mut events: Vec<(String, Value)> = (0..500)
        .map(|n| {
            let org = other_orgs[n % other_orgs.len()];
            let event = envelope(org, TICKET, &format!("leak {n}"))
                .landlord_id("org-a")
                .tenant_id("alice")
                .contractor_id("alice")
                .user_ids(&["olivia", "lena", "alice"]);
            (org.to_string(), event.into())
        })
        .collect();
    let control = envelope("org-a", TICKET, "control")
        .landlord_id("org-a")
        .tenant_id("alice");
    events.push(("org-a".to_string(), control.into()));
    app.publish_live_all(events).await;

    for client in [&mut olivia, &mut lena, &mut alice] {
        assert_eq!(client.labels_until("control").await, Vec::<String>::new());
    }
    for client in [&mut olivia, &mut lena, &mut alice] {
        client.assert_no_event_within(Duration::from_millis(300)).await;
    }
}

over_both_transports!(
    ops_receives_every_event_of_its_org,
    landlord_receives_events_whose_landlord_id_is_one_of_its_orgs,
    landlord_id_is_read_from_data_when_absent_at_top_level,
    tenant_never_receives_another_tenants_ticket,
    tenant_receives_events_whose_tenant_id_is_its_tenant_id_claim,
    tenant_without_tenant_id_claim_is_matched_by_sub,
    tenant_id_is_read_from_data_when_absent_at_top_level,
    contractor_receives_events_whose_contractor_id_is_its_contractor_id_claim,
    contractor_without_contractor_id_claim_is_matched_by_sub,
    contractor_id_is_read_from_data_when_absent_at_top_level,
    user_ids_reach_their_users_whatever_the_role,
    member_of_two_orgs_receives_events_of_both,
    no_event_of_other_orgs_reaches_a_client_even_when_addressed_to_it,
);
