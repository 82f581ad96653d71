//! What an attacker tried, kept fixed: bodies that are slow, huge or unauthorised; forged
//! durable ids; tokens in spellings the log redaction missed; structurally odd tokens;
//! requests the HTTP layer refuses before the gateway sees them.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::common::envelope::envelope;
use crate::common::http::{assert_error, send};
use crate::common::raw::{connect, exchange, read_response};
use crate::common::token::{ops, service, TokenBuilder};
use crate::common::{spawn_app, spawn_app_with, within, STEP_TIMEOUT};

const ORG: &str = "org-1";
const TICKET: &str = "ticket.created";

/// A request head for `path` with `token`, declaring `content_length` body bytes.
fn post_head(path: &str, token: &str, content_length: u64) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

// --- Request bodies ---------------------------------------------------------------------------

#[tokio::test]
async fn a_role_that_may_not_publish_is_refused_before_its_body_is_read() {
    let app = spawn_app().await;
    let tenant = TokenBuilder::new("tina", "tenant").org(ORG).sign();
    // 60 MB announced, none sent: the answer must not wait for it.
    let response = exchange(&app, post_head("/api/publish", &tenant, 60_000_000).as_bytes()).await;
    assert_eq!(response.status, 403, "{response:?}");
    assert_eq!(response.error_code(), "role_forbidden");
}

#[tokio::test]
async fn a_declared_body_over_the_publish_limit_is_413_before_any_byte_is_read() {
    let app = spawn_app().await;
    let head = post_head("/api/publish", &service(&[ORG]), 1_000_000_000);
    let response = exchange(&app, head.as_bytes()).await;
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.error_code(), "payload_too_large");
}

#[tokio::test]
async fn a_declared_body_over_the_ack_limit_is_413_before_any_byte_is_read() {
    let app = spawn_app().await;
    let head = post_head("/api/events/ack", &ops("olivia", ORG), 1_000_000_000);
    let response = exchange(&app, head.as_bytes()).await;
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(response.error_code(), "payload_too_large");
}

#[tokio::test]
async fn a_body_slower_than_the_deadline_is_408() {
    let app = spawn_app_with(|options| options.env("GATEWAY__SERVER__BODY_TIMEOUT_SECS", "1")).await;
    let mut stream = connect(&app).await;
    let head = post_head("/api/publish", &service(&[ORG]), 100);
    within(STEP_TIMEOUT, "sending a partial body", async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(b"{\"type\":").await
    })
    .await
    .expect("sending a partial body");
    let started = Instant::now();
    let response = read_response(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(response.status, 408, "{response:?}");
    assert_eq!(response.error_code(), "body_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered after {:?}",
        started.elapsed()
    );
}

// --- Forged durable ids -----------------------------------------------------------------------

#[tokio::test]
async fn a_plain_publish_imitating_a_durable_id_reaches_nobody_and_blinds_nobody() {
    let app = spawn_app().await;
    let mut olivia = app.connect_ready(&ops("olivia", ORG), "").await;
    app.publish_live_raw(
        ORG,
        r#"99999999999999-0 {"type":"ticket.created","data":{"label":"forged"}}"#,
    )
    .await;
    let ids = app.publish_durable(&[envelope(ORG, TICKET, "real").into()]).await;
    let event = olivia.next_data_event().await;
    assert_eq!(
        event.label(),
        "real",
        "the forged message must not be delivered: {event:?}"
    );
    assert_eq!(
        event.id.as_deref(),
        Some(ids[0].as_str()),
        "the real event keeps its real id"
    );
}

#[tokio::test]
async fn resuming_from_an_id_never_issued_gets_a_reset_notice_then_everything_kept() {
    let app = spawn_app().await;
    let ids = app
        .publish_durable(&[
            envelope(ORG, TICKET, "one").into(),
            envelope(ORG, TICKET, "two").into(),
        ])
        .await;
    let request = app
        .events_request("")
        .bearer_auth(ops("olivia", ORG))
        .header("Last-Event-ID", "99999999999999-0");
    let mut olivia = crate::common::sse::SseClient::open(request).await;
    olivia.expect_connected().await;
    let notice = olivia.next_data_event().await;
    assert_eq!(notice.event, "history.truncated", "{notice:?}");
    assert_eq!(notice.json(), json!({"oldestId": ids[0], "reason": "reset"}));
    let replayed = [olivia.next_data_event().await, olivia.next_data_event().await];
    let replayed: Vec<_> = replayed
        .iter()
        .map(|e| e.id.clone().unwrap_or_default())
        .collect();
    assert_eq!(replayed, ids);
}

#[tokio::test]
async fn an_id_beyond_any_clock_is_400_invalid_last_event_id_without_redis_internals() {
    let app = spawn_app().await;
    let response = send(
        app.events_request("")
            .bearer_auth(ops("olivia", ORG))
            .header("Last-Event-ID", "18446744073709551615-18446744073709551615"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response.text().await.unwrap_or_default();
    assert!(body.contains("\"invalid_last_event_id\""), "{body}");
    for internal in ["script", "user_function", "ERR"] {
        assert!(!body.contains(internal), "Redis internals in {body}");
    }
}

#[tokio::test]
async fn acknowledging_an_id_the_history_never_issued_is_400() {
    let app = spawn_app().await;
    app.publish_durable(&[envelope(ORG, TICKET, "one").into()]).await;
    let response = send(
        app.http()
            .post(app.url("/api/events/ack"))
            .bearer_auth(ops("olivia", ORG))
            .json(&json!({"lastEventId": "99999999999999-0"})),
    )
    .await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_last_event_id").await;
}

// --- Query tokens in the log ----------------------------------------------------------------

#[tokio::test]
async fn query_tokens_are_redacted_from_debug_logs_in_every_spelling_that_authenticates() {
    let app = spawn_app_with(|options| options.env("GATEWAY__LOG__LEVEL", "debug")).await;
    let token = ops("olivia", ORG);
    let spellings = [
        "access_token",
        "access%5Ftoken",
        "%61ccess_token",
        "access_%74oken",
        "%61ccess%5f%74oken",
    ];
    for key in spellings {
        let mut olivia =
            crate::common::sse::SseClient::open(app.events_request(&format!("types=ticket.*&{key}={token}")))
                .await;
        olivia.expect_connected().await;
    }
    crate::common::eventually(STEP_TIMEOUT, "one access-log line per spelling", || async {
        app.logs().matches("Handled a request.").count() >= spellings.len()
    })
    .await;
    let logs = app.logs();
    let signature = token.rsplit('.').next().unwrap_or(&token);
    assert!(!logs.contains(signature), "a token reached the log:\n{logs}");
    assert!(
        logs.contains("=REDACTED"),
        "the access log names the redacted parameter:\n{logs}"
    );
}

// --- Answers of the HTTP layer --------------------------------------------------------------

#[tokio::test]
async fn a_request_line_over_the_limit_gets_a_json_error() {
    let app = spawn_app().await;
    let request = format!(
        "GET /api/events?types={} HTTP/1.1\r\nHost: gateway\r\n\r\n",
        "a".repeat(100_000)
    );
    let response = exchange(&app, request.as_bytes()).await;
    assert_eq!(response.status, 400, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.error_code(), "malformed_request");
}

#[tokio::test]
async fn a_types_list_too_long_for_a_uri_gets_a_json_400() {
    let app = spawn_app().await;
    let types = vec!["ticket.created"; 5_300].join(",");
    let request = format!("GET /api/events?types={types} HTTP/1.1\r\nHost: gateway\r\n\r\n");
    let response = exchange(&app, request.as_bytes()).await;
    assert_eq!(response.status, 400, "{response:?}");
    assert_eq!(response.error_code(), "malformed_request");
}

#[tokio::test]
async fn five_hundred_headers_get_a_json_431() {
    let app = spawn_app().await;
    let headers: String = (0..500).map(|n| format!("X-Filler-{n}: {n}\r\n")).collect();
    let request = format!("GET /api/events HTTP/1.1\r\nHost: gateway\r\n{headers}\r\n");
    let response = exchange(&app, request.as_bytes()).await;
    assert_eq!(response.status, 431, "{response:?}");
    assert_eq!(response.error_code(), "headers_too_large");
}

#[tokio::test]
async fn a_token_over_the_head_limit_gets_a_json_431() {
    let app = spawn_app().await;
    let request = format!(
        "GET /api/events HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {}\r\n\r\n",
        "a".repeat(140_000)
    );
    let response = exchange(&app, request.as_bytes()).await;
    assert_eq!(response.status, 431, "{response:?}");
    assert_eq!(response.error_code(), "headers_too_large");
}

#[tokio::test]
async fn an_http_1_0_stream_is_close_delimited_not_chunked() {
    use tokio::io::AsyncReadExt;
    let app = spawn_app().await;
    let mut stream = connect(&app).await;
    let request = format!(
        "GET /api/events HTTP/1.0\r\nHost: gateway\r\nAuthorization: Bearer {}\r\n\r\n",
        ops("olivia", ORG)
    );
    let mut received = Vec::new();
    within(STEP_TIMEOUT, "the stream's head and first frames", async {
        stream.write_all(request.as_bytes()).await?;
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&received).contains("event: connected") {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .expect("reading the stream");
    let text = String::from_utf8_lossy(&received).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "{head}");
    assert!(
        body.starts_with("retry: "),
        "the body is the SSE stream itself, no chunk sizes: {body:?}"
    );
}
