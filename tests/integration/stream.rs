//! protocol §3: the shape of `GET /api/events`: headers, the `retry:` and `connected` frames,
//! keepalives, event framing, the `types` filter, ordering, token expiry and CORS.

use std::time::Duration;

use reqwest::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD,
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ORIGIN,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::common::envelope::envelope;
use crate::common::http::{assert_error, send};
use crate::common::sse::SseClient;
use crate::common::token::{ops, TokenBuilder};
use crate::common::{spawn_app, spawn_app_with};

const ORG: &str = "org-1";

fn header(headers: &reqwest::header::HeaderMap, name: impl reqwest::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

#[tokio::test]
async fn stream_response_has_event_stream_headers_and_no_content_length() {
    let app = spawn_app().await;
    let client = app.connect(&ops("alice", ORG), "").await;
    let headers = client.headers();
    let content_type = header(headers, CONTENT_TYPE).unwrap_or_default();
    assert_eq!(
        content_type.split(';').next().map(str::trim),
        Some("text/event-stream"),
        "Content-Type was {content_type:?}"
    );
    assert_eq!(header(headers, CACHE_CONTROL), Some("no-cache"));
    assert_eq!(header(headers, "x-accel-buffering"), Some("no"));
    assert_eq!(
        header(headers, CONTENT_LENGTH),
        None,
        "a stream has no Content-Length"
    );
}

#[tokio::test]
async fn first_frame_is_retry_3000() {
    let app = spawn_app().await;
    let mut client = app.connect(&ops("alice", ORG), "").await;
    assert_eq!(
        client.next_frame().await,
        russe::Event::Retry(Duration::from_millis(3000))
    );
}

#[tokio::test]
async fn first_frame_retry_follows_sse_retry_ms() {
    let app = spawn_app_with(|options| options.env("GATEWAY__SSE__RETRY_MS", "1234")).await;
    let mut client = app.connect(&ops("alice", ORG), "").await;
    assert_eq!(
        client.next_frame().await,
        russe::Event::Retry(Duration::from_millis(1234))
    );
}

#[tokio::test]
async fn connected_event_describes_the_connection() {
    let app = spawn_app().await;
    let token = TokenBuilder::new("alice", "landlord")
        .org("org-1")
        .org("org-2")
        .sign();
    let mut alice = app.connect(&token, "").await;
    let connected = alice.expect_connected().await;
    let connection_id = connected["connectionId"].as_str().unwrap_or_default();
    assert!(!connection_id.is_empty(), "connectionId missing: {connected}");
    assert_eq!(connected["userId"], "alice");
    assert_eq!(connected["role"], "landlord");
    assert_eq!(connected["orgs"], json!(["org-1", "org-2"]));
    assert_eq!(connected["replica"], app.replica_name());
    assert_eq!(connected["keepaliveSecs"], 15);
}

#[tokio::test]
async fn every_connection_gets_its_own_connection_id() {
    let app = spawn_app().await;
    let mut first = app.connect(&ops("alice", ORG), "").await;
    let mut second = app.connect(&ops("alice", ORG), "").await;
    assert_ne!(
        first.expect_connected().await["connectionId"],
        second.expect_connected().await["connectionId"]
    );
}

#[tokio::test]
async fn idle_stream_gets_keepalive_events_every_keepalive_secs() {
    let app = spawn_app_with(|options| options.env("GATEWAY__SSE__KEEPALIVE_SECS", "1")).await;
    let mut alice = app.connect(&ops("alice", ORG), "").await;
    assert_eq!(alice.expect_connected().await["keepaliveSecs"], 1);
    for _ in 0..2 {
        let started = tokio::time::Instant::now();
        let keepalive = alice.next_event().await;
        assert_eq!(keepalive.event, "keepalive", "got {keepalive:?}");
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "keepalive took {:?} with keepalive_secs = 1",
            started.elapsed()
        );
        let time = keepalive.json()["time"].as_str().unwrap_or_default().to_string();
        assert!(
            OffsetDateTime::parse(&time, &Rfc3339).is_ok(),
            "keepalive time must be RFC 3339, got {:?}",
            keepalive.data
        );
    }
}

#[tokio::test]
async fn event_published_right_after_connected_is_delivered() {
    let app = spawn_app().await;
    for attempt in 0..5 {
        let user = format!("user-{attempt}");
        let mut client = app.connect_ready(&ops(&user, ORG), "").await;
        app.publish_live(ORG, envelope(ORG, "ticket.created", &user))
            .await;
        assert_eq!(client.next_data_event().await.label(), user);
    }
}

#[tokio::test]
async fn delivered_event_has_type_as_event_and_data_as_compact_json() {
    let app = spawn_app().await;
    let mut alice = app.connect_ready(&ops("alice", ORG), "").await;
    // Published with insignificant whitespace and extra envelope fields; keys are in sorted
    // order so the compact form is unambiguous.
    let published = "{ \"type\" : \"ticket.created\",\n \"orgId\": \"org-1\", \"landlordId\": \"org-1\",\n \
         \"priority\": \"normal\",\n \"data\": { \"id\": \"t-1\",\n \"nested\": { \"list\": [1, 2, 3] },\n \
         \"title\": \"Leaking faucet\" } }";
    app.publish_live_raw(ORG, published).await;
    let event = alice.next_data_event().await;
    assert_eq!(event.event, "ticket.created");
    assert_eq!(
        event.data, r#"{"id":"t-1","nested":{"list":[1,2,3]},"title":"Leaking faucet"}"#,
        "only `data` goes to clients, as compact one-line JSON"
    );
}

#[tokio::test]
async fn live_events_carry_no_id() {
    let app = spawn_app().await;
    let mut alice = app.connect_ready(&ops("alice", ORG), "").await;
    app.publish_live(ORG, envelope(ORG, "ticket.created", "live"))
        .await;
    let event = alice.next_data_event().await;
    assert_eq!(event.label(), "live");
    assert_eq!(event.id, None, "a live event must not carry an id");
}

#[tokio::test]
async fn thousand_live_events_arrive_in_publish_order() {
    let app = spawn_app().await;
    let mut alice = app.connect_ready(&ops("alice", ORG), "").await;
    let events = (0..1000)
        .map(|seq| {
            let event =
                envelope(ORG, "ticket.updated", &format!("event-{seq}")).data_field("seq", json!(seq));
            (ORG.to_string(), Value::from(event))
        })
        .collect();
    app.publish_live_all(events).await;
    for seq in 0..1000 {
        let event = alice.next_data_event().await;
        assert_eq!(event.json()["seq"], seq, "events out of order");
    }
}

#[tokio::test]
async fn with_several_http_workers_every_stream_gets_every_event_in_order() {
    // The streams spread over the workers; the first worker reads Redis and hands each event to
    // the others.
    let app = spawn_app_with(|options| options.env("GATEWAY__SERVER__WORKERS", "3")).await;
    let mut streams = Vec::new();
    for n in 0..9 {
        streams.push(app.connect_ready(&ops(&format!("user-{n}"), ORG), "").await);
    }
    let live = (0..50)
        .map(|n| {
            (
                ORG.to_string(),
                Value::from(envelope(ORG, "ticket.updated", &format!("live-{n}"))),
            )
        })
        .collect();
    app.publish_live_all(live).await;
    let durable: Vec<Value> = (0..50)
        .map(|n| envelope(ORG, "ticket.updated", &format!("durable-{n}")).into())
        .collect();
    let ids = app.publish_durable(&durable).await;
    for stream in &mut streams {
        for n in 0..50 {
            assert_eq!(stream.next_data_event().await.label(), format!("live-{n}"));
        }
        for (n, id) in ids.iter().enumerate() {
            let event = stream.next_data_event().await;
            assert_eq!(event.label(), format!("durable-{n}"));
            assert_eq!(event.id.as_ref(), Some(id));
        }
    }
}

#[tokio::test]
async fn types_filter_passes_exact_types_and_prefixes() {
    let app = spawn_app().await;
    let mut alice = app
        .connect_ready(&ops("alice", ORG), "types=ticket.created,payment.*")
        .await;
    for (event_type, label) in [
        ("ticket.updated", "ticket.updated"),
        ("ticket.created", "ticket.created"),
        ("ticket.created.v2", "ticket.created.v2"),
        ("payment.received", "payment.received"),
        ("paymentx.received", "paymentx.received"),
        ("payment.refund.issued", "payment.refund.issued"),
        ("invoice.payment.received", "invoice.payment.received"),
    ] {
        app.publish_live(ORG, envelope(ORG, event_type, label)).await;
    }
    app.publish_live(ORG, envelope(ORG, "ticket.created", "control"))
        .await;
    assert_eq!(
        alice.labels_until("control").await,
        ["ticket.created", "payment.received", "payment.refund.issued"]
    );
}

#[tokio::test]
async fn since_that_is_not_a_time_is_400_invalid_since() {
    let app = spawn_app().await;
    let response = send(
        app.events_request("since=yesterday-ish")
            .bearer_auth(ops("alice", ORG)),
    )
    .await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_since").await;
}

#[tokio::test]
async fn expiring_token_gets_auth_expired_and_the_stream_ends() {
    let app = spawn_app_with(|options| options.env("GATEWAY__AUTH__LEEWAY_SECS", "0")).await;
    let short_lived = TokenBuilder::new("alice", "ops").org(ORG).expires_in(2).sign();
    let mut alice = app.connect_ready(&short_lived, "").await;
    let expired = alice.next_data_event().await;
    assert_eq!(expired.event, "auth.expired", "got {expired:?}");
    alice.expect_end(Duration::from_secs(3)).await;
}

// --- CORS -----------------------------------------------------------------------------------

const ALLOWED_ORIGIN: &str = "https://app.example";

async fn spawn_app_with_cors() -> crate::common::TestApp {
    spawn_app_with(|options| {
        options.env(
            "GATEWAY__CORS__ALLOWED_ORIGINS",
            &format!("{ALLOWED_ORIGIN},https://admin.example"),
        )
    })
    .await
}

#[tokio::test]
async fn allowed_origin_is_echoed_with_credentials() {
    let app = spawn_app_with_cors().await;
    for origin in [ALLOWED_ORIGIN, "https://admin.example"] {
        let client = SseClient::open(
            app.events_request("")
                .bearer_auth(ops("alice", ORG))
                .header(ORIGIN, origin),
        )
        .await;
        assert_eq!(
            header(client.headers(), ACCESS_CONTROL_ALLOW_ORIGIN),
            Some(origin)
        );
        assert_eq!(
            header(client.headers(), ACCESS_CONTROL_ALLOW_CREDENTIALS),
            Some("true")
        );
    }
}

#[tokio::test]
async fn disallowed_origin_gets_no_cors_headers() {
    let app = spawn_app_with_cors().await;
    let client = SseClient::open(
        app.events_request("")
            .bearer_auth(ops("alice", ORG))
            .header(ORIGIN, "https://evil.example"),
    )
    .await;
    assert_eq!(header(client.headers(), ACCESS_CONTROL_ALLOW_ORIGIN), None);
    assert_eq!(header(client.headers(), ACCESS_CONTROL_ALLOW_CREDENTIALS), None);
}

#[tokio::test]
async fn no_cors_headers_when_no_origin_is_configured() {
    let app = spawn_app().await;
    let client = SseClient::open(
        app.events_request("")
            .bearer_auth(ops("alice", ORG))
            .header(ORIGIN, ALLOWED_ORIGIN),
    )
    .await;
    assert_eq!(header(client.headers(), ACCESS_CONTROL_ALLOW_ORIGIN), None);
}

#[tokio::test]
async fn preflight_from_allowed_origin_permits_get_with_credentials_and_auth_headers() {
    let app = spawn_app_with_cors().await;
    let response = send(
        app.http()
            .request(Method::OPTIONS, app.url("/api/events"))
            .header(ORIGIN, ALLOWED_ORIGIN)
            .header(ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .header(ACCESS_CONTROL_REQUEST_HEADERS, "authorization,last-event-id"),
    )
    .await;
    assert!(
        response.status().is_success(),
        "preflight answered {}",
        response.status()
    );
    let headers = response.headers();
    assert_eq!(header(headers, ACCESS_CONTROL_ALLOW_ORIGIN), Some(ALLOWED_ORIGIN));
    assert_eq!(header(headers, ACCESS_CONTROL_ALLOW_CREDENTIALS), Some("true"));
    let methods = header(headers, ACCESS_CONTROL_ALLOW_METHODS)
        .unwrap_or_default()
        .to_ascii_uppercase();
    assert!(methods.contains("GET"), "Allow-Methods: {methods:?}");
    let allowed_headers = header(headers, ACCESS_CONTROL_ALLOW_HEADERS)
        .unwrap_or_default()
        .to_ascii_lowercase();
    for needed in ["authorization", "last-event-id"] {
        assert!(
            allowed_headers.contains(needed),
            "Allow-Headers {allowed_headers:?} lacks {needed}"
        );
    }
}
