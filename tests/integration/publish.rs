//! protocol §4: the three ways in (live PUBLISH, durable FCALL, durable POST /api/publish), the
//! `publish` subcommand, and what happens to malformed envelopes on each path.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::envelope::envelope;
use crate::common::gateway::run_cli;
use crate::common::http::{accepted_ids, assert_error, fcall_publish, fcall_publish_keyed, send};
use crate::common::token::{ops, service, TokenBuilder, TEST_SECRET};
use crate::common::{spawn_app, spawn_app_with};

const ORG: &str = "org-1";
const TICKET: &str = "ticket.created";

fn ticket(label: &str) -> Value {
    envelope(ORG, TICKET, label).into()
}

// --- POST /api/publish ----------------------------------------------------------------------

#[tokio::test]
async fn http_publish_of_one_envelope_is_202_and_delivered_with_its_id() {
    let app = spawn_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    let ids = accepted_ids(app.publish_http(&service(&[ORG]), &ticket("one")).await).await;
    assert_eq!(ids.len(), 1, "one envelope, one id: {ids:?}");
    let event = olivia.next_data_event().await;
    assert_eq!(event.event, TICKET);
    assert_eq!(event.json(), json!({"label": "one"}));
    assert_eq!(event.id.as_deref(), Some(ids[0].as_str()));
}

#[tokio::test]
async fn http_publish_of_a_batch_returns_ids_in_order_and_delivers_in_order() {
    let app = spawn_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    let batch = json!([ticket("first"), ticket("second"), ticket("third")]);
    let ids = accepted_ids(app.publish_http(&service(&[ORG]), &batch).await).await;
    assert_eq!(ids.len(), 3, "{ids:?}");
    for (label, id) in ["first", "second", "third"].into_iter().zip(&ids) {
        let event = olivia.next_data_event().await;
        assert_eq!(event.label(), label);
        assert_eq!(event.id.as_ref(), Some(id));
    }
}

#[tokio::test]
async fn batch_with_one_bad_envelope_is_400_invalid_envelope_and_publishes_nothing() {
    let app = spawn_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    let batch = json!([
        ticket("good before"),
        Value::from(envelope(ORG, "Not A Valid Type", "bad")),
        ticket("good after")
    ]);
    assert_error(
        app.publish_http(&service(&[ORG]), &batch).await,
        StatusCode::BAD_REQUEST,
        "invalid_envelope",
    )
    .await;
    app.publish_durable(&[ticket("control")]).await;
    assert_eq!(olivia.labels_until("control").await, Vec::<String>::new());

    let mut from_the_beginning = app.connect_ready(&ops("oscar", ORG), "since=0").await;
    assert_eq!(
        from_the_beginning.labels_until("control").await,
        Vec::<String>::new(),
        "nothing of the refused batch may be stored in history"
    );
}

#[tokio::test]
async fn each_malformed_envelope_over_http_is_400_invalid_envelope() {
    let app = spawn_app().await;
    let token = service(&[ORG]);
    let mut no_type = ticket("x");
    no_type.as_object_mut().expect("object").remove("type");
    let mut no_data = ticket("x");
    no_data.as_object_mut().expect("object").remove("data");
    let mut no_org = ticket("x");
    no_org.as_object_mut().expect("object").remove("orgId");
    let cases = [
        ("missing type", no_type),
        ("missing data", no_data),
        ("missing orgId", no_org),
        ("upper-case type", envelope(ORG, "Ticket.Created", "x").into()),
        ("type with a space", envelope(ORG, "ticket created", "x").into()),
        (
            "type with an empty segment",
            envelope(ORG, "ticket..created", "x").into(),
        ),
        ("type longer than 64", envelope(ORG, &"t".repeat(65), "x").into()),
        (
            "data is a string",
            envelope(ORG, TICKET, "x").field("data", json!("text")).into(),
        ),
        (
            "data is an array",
            envelope(ORG, TICKET, "x").field("data", json!([1])).into(),
        ),
        (
            "data is null",
            envelope(ORG, TICKET, "x").field("data", Value::Null).into(),
        ),
        ("envelope is an array of numbers", json!([1, 2])),
        ("envelope is a string", json!("ticket.created")),
    ];
    for (case, body) in cases {
        let response = app.publish_http(&token, &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{case}: {body}");
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_envelope").await;
    }
}

#[tokio::test]
async fn body_that_is_not_json_is_400_invalid_envelope() {
    let app = spawn_app().await;
    let response = send(
        app.http()
            .post(app.url("/api/publish"))
            .bearer_auth(service(&[ORG]))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body("{\"type\": \"ticket.created\", "),
    )
    .await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_envelope").await;
}

#[tokio::test]
async fn longest_valid_type_is_accepted() {
    let app = spawn_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    let longest = format!("{}.{}", "a".repeat(31), "b_-9".repeat(8));
    assert_eq!(longest.len(), 64);
    app.publish_durable(&[envelope(ORG, &longest, "long").into()])
        .await;
    assert_eq!(olivia.next_data_event().await.event, longest);
}

#[tokio::test]
async fn batch_at_max_batch_is_accepted_and_one_more_is_413_batch_too_large() {
    let app = spawn_app_with(|options| options.env("GATEWAY__LIMITS__MAX_BATCH", "5")).await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    let six: Vec<Value> = (0..6).map(|n| ticket(&format!("six-{n}"))).collect();
    assert_error(
        app.publish_http(&service(&[ORG]), &json!(six)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "batch_too_large",
    )
    .await;
    let mut five: Vec<Value> = (0..4).map(|n| ticket(&format!("five-{n}"))).collect();
    five.push(ticket("control"));
    assert_eq!(app.publish_durable(&five).await.len(), 5);
    assert_eq!(
        olivia.labels_until("control").await,
        ["five-0", "five-1", "five-2", "five-3"],
        "nothing of the refused batch may be delivered"
    );
}

#[tokio::test]
async fn envelope_over_max_event_bytes_is_refused_and_not_delivered() {
    let app = spawn_app_with(|options| options.env("GATEWAY__LIMITS__MAX_EVENT_BYTES", "1024")).await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    let too_big: Value = envelope(ORG, TICKET, "too big").padded_to(1025).into();
    let response = app.publish_http(&service(&[ORG]), &too_big).await;
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await
        }
        _ => assert_error(response, StatusCode::BAD_REQUEST, "invalid_envelope").await,
    }
    let at_limit: Value = envelope(ORG, TICKET, "at limit").padded_to(1024).into();
    app.publish_durable(&[at_limit]).await;
    assert_eq!(olivia.next_data_event().await.label(), "at limit");
}

#[tokio::test]
async fn size_limit_applies_per_envelope_not_per_batch() {
    let app = spawn_app_with(|options| options.env("GATEWAY__LIMITS__MAX_EVENT_BYTES", "1024")).await;
    let batch: Vec<Value> = (0..8)
        .map(|n| envelope(ORG, TICKET, &format!("part-{n}")).padded_to(1000).into())
        .collect();
    assert_eq!(app.publish_durable(&batch).await.len(), 8);
}

#[tokio::test]
async fn publish_with_a_non_service_token_is_403_role_forbidden() {
    let app = spawn_app().await;
    for role in ["ops", "landlord", "tenant", "contractor"] {
        let token = TokenBuilder::new("someone", role).org(ORG).sign();
        assert_error(
            app.publish_http(&token, &ticket("x")).await,
            StatusCode::FORBIDDEN,
            "role_forbidden",
        )
        .await;
    }
}

#[tokio::test]
async fn service_token_publishing_outside_its_orgs_is_403_org_forbidden() {
    let app = spawn_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    assert_error(
        app.publish_http(&service(&["org-2"]), &ticket("smuggled")).await,
        StatusCode::FORBIDDEN,
        "org_forbidden",
    )
    .await;
    app.publish_durable(&[ticket("control")]).await;
    assert_eq!(olivia.labels_until("control").await, Vec::<String>::new());
}

#[tokio::test]
async fn publish_without_token_is_401_missing_token() {
    let app = spawn_app().await;
    let response = send(app.http().post(app.url("/api/publish")).json(&ticket("x"))).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "missing_token").await;
}

// --- Live PUBLISH on Redis ------------------------------------------------------------------

/// Envelopes a backend might get wrong, each with its own drop reason.
fn malformed_live_payloads() -> Vec<(&'static str, String)> {
    vec![
        ("bad JSON", "{\"type\": \"ticket.created\", ".to_string()),
        ("not an object", "[1,2,3]".to_string()),
        ("missing type", json!({"orgId": ORG, "data": {}}).to_string()),
        ("invalid type", envelope(ORG, "Ticket Created", "x").into_string()),
        ("missing data", json!({"type": TICKET, "orgId": ORG}).to_string()),
        (
            "data not an object",
            json!({"type": TICKET, "orgId": ORG, "data": "x"}).to_string(),
        ),
        (
            "over max_event_bytes",
            envelope(ORG, TICKET, "huge").padded_to(65_537).into_string(),
        ),
    ]
}

#[tokio::test]
async fn malformed_live_envelopes_are_dropped_and_the_next_event_arrives() {
    let app = spawn_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    for (_, payload) in malformed_live_payloads() {
        app.publish_live_raw(ORG, &payload).await;
    }
    app.publish_live(ORG, ticket("control")).await;
    assert_eq!(olivia.labels_until("control").await, Vec::<String>::new());
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200, "the gateway must keep running");
}

#[tokio::test]
async fn dropped_live_envelopes_are_counted_in_events_dropped_total() {
    let app = spawn_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    let malformed = malformed_live_payloads();
    for (_, payload) in &malformed {
        app.publish_live_raw(ORG, payload).await;
    }
    app.publish_live(ORG, ticket("control")).await;
    olivia.labels_until("control").await;
    assert_eq!(
        app.metric_total("gateway_events_dropped_total").await,
        malformed.len() as f64
    );
}

#[tokio::test]
async fn live_envelope_at_max_event_bytes_is_delivered() {
    let app = spawn_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    app.publish_live(ORG, envelope(ORG, TICKET, "at limit").padded_to(65_536))
        .await;
    assert_eq!(olivia.next_data_event().await.label(), "at limit");
}

// --- Durable FCALL on Redis -----------------------------------------------------------------

#[tokio::test]
async fn fcall_publish_returns_the_id_the_client_receives() {
    let app = spawn_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    let answer = app
        .redis_command(&fcall_publish(ORG, &ticket("durable").to_string()))
        .await
        .expect("FCALL event_gateway_publish succeeds for a valid envelope");
    let id: String = redis::FromRedisValue::from_redis_value(answer)
        .expect("FCALL event_gateway_publish returns the event id as a string");
    let event = olivia.next_data_event().await;
    assert_eq!(event.label(), "durable");
    assert_eq!(event.id, Some(id));
}

#[tokio::test]
async fn fcall_with_the_org_as_its_key_publishes_the_same_way() {
    let app = spawn_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    let answer = app
        .redis_command(&fcall_publish_keyed(ORG, &ticket("keyed").to_string()))
        .await
        .expect("FCALL event_gateway_publish 1 <org> succeeds for a valid envelope");
    let id: String = redis::FromRedisValue::from_redis_value(answer).expect("the event id as a string");
    let event = olivia.next_data_event().await;
    assert_eq!(event.label(), "keyed");
    assert_eq!(event.id, Some(id));
}

#[tokio::test]
async fn fcall_with_a_malformed_envelope_is_a_redis_error_and_stores_nothing() {
    let app = spawn_app().await;
    for (reason, payload) in malformed_live_payloads() {
        let answer = app.redis_command(&fcall_publish(ORG, &payload)).await;
        assert!(answer.is_err(), "FCALL with {reason} must fail, got {answer:?}");
    }
    app.publish_durable(&[ticket("control")]).await;
    let mut from_the_beginning = app.connect_ready(&ops("olivia", ORG), "since=0").await;
    assert_eq!(
        from_the_beginning.labels_until("control").await,
        Vec::<String>::new()
    );
}

// --- `event-gateway publish` ----------------------------------------------------------------

async fn publish_with_cli(redis_url: &str, extra: &[&str]) {
    let mut args = vec![
        "publish",
        "--org",
        ORG,
        "--type",
        TICKET,
        "--data",
        r#"{"label":"from the cli"}"#,
    ];
    args.extend_from_slice(extra);
    let output = run_cli(
        &args,
        &[
            ("GATEWAY__AUTH__JWT_SECRET", TEST_SECRET),
            ("GATEWAY__REDIS__URL", redis_url),
            ("GATEWAY__LOG__FORMAT", "json"),
        ],
    )
    .await;
    assert!(
        output.status.success(),
        "`event-gateway {}` failed with {}: {}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn publish_subcommand_through_redis_reaches_a_client() {
    let app = spawn_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    publish_with_cli(&app.redis.url(), &[]).await;
    let event = olivia.next_data_event().await;
    assert_eq!(event.event, TICKET);
    assert_eq!(event.json(), json!({"label": "from the cli"}));
    assert_eq!(event.id, None, "without --durable the event is live");
}

#[tokio::test]
async fn publish_subcommand_with_durable_stores_an_event_with_an_id() {
    let app = spawn_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    publish_with_cli(&app.redis.url(), &["--durable"]).await;
    let event = olivia.next_data_event().await;
    assert_eq!(event.label(), "from the cli");
    assert!(event.id.is_some(), "a durable event carries an id: {event:?}");
}
