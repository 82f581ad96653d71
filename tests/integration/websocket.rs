//! protocol §13: the WebSocket transport. Everything that holds for SSE holds here too (the
//! policy matrix runs over both, see policy.rs); these tests cover what is WebSocket's own:
//! the handshake, the message shape, the client's operations and the close codes.
//! Read through `tokio-tungstenite`; the compressed stream through a raw socket and `flate2`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::common::envelope::envelope;
use crate::common::gateway::Gateway;
use crate::common::http::send;
use crate::common::token::{ops, service, TokenBuilder};
use crate::common::ws::WsEnd;
use crate::common::{spawn_app, spawn_app_with, STEP_TIMEOUT};

const ORG: &str = "org-1";

fn ticket(label: &str) -> Value {
    envelope(ORG, "ticket.created", label).into()
}

#[tokio::test]
async fn an_upgrade_without_a_token_is_refused_with_401_and_its_json_error() {
    let app = spawn_app().await;
    let (status, body) = app.ws_refusal("", "").await;
    assert_eq!(status.as_u16(), 401);
    assert_eq!(body["error"]["code"], "missing_token");
}

#[tokio::test]
async fn an_upgrade_for_a_role_that_may_not_subscribe_is_refused_with_403() {
    let app = spawn_app().await;
    let (status, body) = app.ws_refusal(&service(&[ORG]), "").await;
    assert_eq!(status.as_u16(), 403);
    assert_eq!(body["error"]["code"], "role_forbidden");
}

#[tokio::test]
async fn a_plain_get_is_400_invalid_upgrade() {
    let app = spawn_app().await;
    let response = send(app.http().get(app.url("/api/ws")).bearer_auth(ops("olivia", ORG))).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "invalid_upgrade");
}

#[tokio::test]
async fn the_first_message_is_connected_with_the_fields_sse_sends() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect(&ops("olivia", ORG), "").await;
    let connected = olivia.expect_connected().await;
    assert_eq!(connected["userId"], "olivia");
    assert_eq!(connected["role"], "ops");
    assert_eq!(connected["orgs"], json!([ORG]));
    for field in ["connectionId", "replica", "keepaliveSecs"] {
        assert!(
            connected.get(field).is_some(),
            "connected lacks {field}: {connected}"
        );
    }
}

#[tokio::test]
async fn a_durable_event_is_one_message_with_its_type_data_and_id() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect_ready(&ops("olivia", ORG), "").await;
    let ids = app.publish_durable(&[ticket("first")]).await;
    let event = olivia.next_data_event().await;
    assert_eq!(event.event, "ticket.created");
    assert_eq!(event.id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(event.label(), "first");
}

#[tokio::test]
async fn a_live_event_carries_no_id() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect_ready(&ops("olivia", ORG), "").await;
    app.publish_live(ORG, ticket("live")).await;
    let event = olivia.next_data_event().await;
    assert_eq!((event.label(), event.id), ("live".to_string(), None));
}

#[tokio::test]
async fn the_token_may_come_in_the_access_token_query_parameter() {
    let app = spawn_app().await;
    let token = ops("olivia", ORG);
    let mut olivia = app.ws_connect("", &format!("access_token={token}")).await;
    assert_eq!(olivia.expect_connected().await["userId"], "olivia");
}

#[tokio::test]
async fn a_cookie_authenticated_upgrade_from_another_origin_is_403_origin_forbidden() {
    let app = spawn_app().await;
    let cookie = format!("access_token={}", ops("olivia", ORG));
    let headers = [("cookie", cookie.as_str()), ("origin", "https://evil.example")];
    let Err((status, body)) = app.ws_handshake("", "", &headers).await else {
        panic!("a page of another origin opened a stream with the user's cookie");
    };
    assert_eq!(status.as_u16(), 403);
    assert_eq!(body["error"]["code"], "origin_forbidden");
}

#[tokio::test]
async fn a_cookie_authenticated_upgrade_from_the_gateways_own_origin_opens() {
    let app = spawn_app().await;
    let cookie = format!("access_token={}", ops("olivia", ORG));
    let origin = app.base_url().to_string();
    let headers = [("cookie", cookie.as_str()), ("origin", origin.as_str())];
    let Ok(mut olivia) = app.ws_handshake("", "", &headers).await else {
        panic!("the gateway's own origin was refused");
    };
    olivia.expect_connected().await;
}

#[tokio::test]
async fn a_cookie_authenticated_upgrade_from_an_allowed_origin_opens() {
    let app =
        spawn_app_with(|options| options.env("GATEWAY__CORS__ALLOWED_ORIGINS", "https://app.example")).await;
    let cookie = format!("access_token={}", ops("olivia", ORG));
    let headers = [("cookie", cookie.as_str()), ("origin", "https://app.example")];
    let Ok(mut olivia) = app.ws_handshake("", "", &headers).await else {
        panic!("an origin of cors.allowed_origins was refused");
    };
    olivia.expect_connected().await;
}

#[tokio::test]
async fn a_bearer_token_opens_a_websocket_from_any_origin() {
    let app = spawn_app().await;
    let headers = [("origin", "https://elsewhere.example")];
    let Ok(mut olivia) = app.ws_handshake(&ops("olivia", ORG), "", &headers).await else {
        panic!("a token sent explicitly was refused for its origin");
    };
    olivia.expect_connected().await;
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect_ready(&ops("olivia", ORG), "").await;
    olivia.send(json!({"op": "ping"})).await;
    olivia.expect("pong").await;
}

#[tokio::test]
async fn an_unknown_operation_gets_an_error_message_and_the_connection_stays_open() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect_ready(&ops("olivia", ORG), "").await;
    olivia.send(json!({"op": "subscribe", "org": "org-2"})).await;
    let error = olivia.expect("error").await;
    assert_eq!(error.json()["code"], "invalid_message");
    olivia.send_text("not json").await;
    assert_eq!(olivia.expect("error").await.json()["code"], "invalid_message");
    app.publish_live(ORG, ticket("still open")).await;
    assert_eq!(olivia.next_data_event().await.label(), "still open");
}

#[tokio::test]
async fn a_binary_message_gets_an_error_message() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect_ready(&ops("olivia", ORG), "").await;
    olivia.send_message(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(olivia.expect("error").await.json()["code"], "invalid_message");
}

#[tokio::test]
async fn a_message_over_64_kib_closes_with_1009() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect_ready(&ops("olivia", ORG), "").await;
    olivia.send_text(&"x".repeat(64 * 1024 + 1)).await;
    let (_, end) = olivia.expect_close(STEP_TIMEOUT).await;
    assert_eq!(end, WsEnd::Closed(1009));
}

#[tokio::test]
async fn a_websocket_ping_frame_is_answered_with_a_pong_frame() {
    let app = spawn_app().await;
    let gateway = &app.gateway;
    let mut stream = raw_upgrade(gateway, &ops("olivia", ORG), "").await;
    // A masked ping with payload "hi".
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x89, 0x82];
    frame.extend_from_slice(&mask);
    frame.extend(b"hi".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).await.expect("sent");
    loop {
        let (first, payload) = read_frame(&mut stream).await;
        if first & 0x0F == 0xA {
            assert_eq!(payload, b"hi");
            return;
        }
    }
}

#[tokio::test]
async fn types_changed_on_the_open_connection_apply_to_the_next_events() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect_ready(&ops("olivia", ORG), "types=ticket.*").await;
    olivia.send(json!({"op": "types", "types": ["payment.*"]})).await;
    assert_eq!(olivia.expect("types").await.json()["types"], json!(["payment.*"]));
    app.publish_live(ORG, ticket("a ticket")).await;
    app.publish_live(ORG, envelope(ORG, "payment.received", "control"))
        .await;
    assert_eq!(olivia.labels_until("control").await, Vec::<String>::new());
}

#[tokio::test]
async fn an_operation_with_fields_it_does_not_use_is_carried_out() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect_ready(&ops("olivia", ORG), "").await;
    olivia.send(json!({"op": "ping", "requestId": 7})).await;
    olivia.expect("pong").await;
}

#[tokio::test]
async fn a_types_entry_holding_a_comma_is_an_error() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect_ready(&ops("olivia", ORG), "").await;
    olivia
        .send(json!({"op": "types", "types": ["ticket.*,payment.*"]}))
        .await;
    assert_eq!(olivia.expect("error").await.json()["code"], "invalid_query");
}

#[tokio::test]
async fn a_close_with_a_code_no_endpoint_may_send_is_answered_with_1002() {
    let app = spawn_app().await;
    let mut stream = raw_upgrade(&app.gateway, &ops("olivia", ORG), "").await;
    // A masked close frame with code 1005 (reserved: never on the wire).
    let mask = [9u8, 8, 7, 6];
    let mut frame = vec![0x88, 0x82];
    frame.extend_from_slice(&mask);
    frame.extend(
        1005u16
            .to_be_bytes()
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4]),
    );
    stream.write_all(&frame).await.expect("sent");
    loop {
        let (first, payload) = read_frame(&mut stream).await;
        if first & 0x0F == 0x8 {
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
            return;
        }
    }
}

#[tokio::test]
async fn the_101_carries_no_content_type() {
    let app = spawn_app().await;
    raw_upgrade_with(&app.gateway, &ops("olivia", ORG), "", |head| {
        assert!(!head.contains("content-type"), "{head}");
    })
    .await;
}

#[tokio::test]
async fn an_invalid_types_filter_is_an_error_and_keeps_the_old_one() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect_ready(&ops("olivia", ORG), "types=ticket.*").await;
    olivia.send(json!({"op": "types", "types": ["Bad Type"]})).await;
    assert_eq!(olivia.expect("error").await.json()["code"], "invalid_query");
    app.publish_live(ORG, envelope(ORG, "payment.received", "filtered"))
        .await;
    app.publish_live(ORG, ticket("control")).await;
    assert_eq!(olivia.labels_until("control").await, Vec::<String>::new());
}

#[tokio::test]
async fn ack_then_since_ack_resumes_after_the_acknowledged_event() {
    let app = spawn_app().await;
    let token = ops("olivia", ORG);
    let mut olivia = app.ws_connect_ready(&token, "").await;
    let ids = app
        .publish_durable(&[ticket("one"), ticket("two"), ticket("three")])
        .await;
    for _ in 0..3 {
        olivia.next_data_event().await;
    }
    olivia.send(json!({"op": "ack", "lastEventId": ids[1]})).await;
    assert_eq!(olivia.expect("ack").await.json()["lastEventId"], json!(ids[1]));
    olivia.close().await;

    let mut again = app.ws_connect_ready(&token, "since=ack").await;
    let event = again.next_data_event().await;
    assert_eq!(
        (event.label(), event.id),
        ("three".to_string(), Some(ids[2].clone()))
    );
}

#[tokio::test]
async fn an_ack_of_an_id_never_issued_is_an_error_message() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect_ready(&ops("olivia", ORG), "").await;
    olivia
        .send(json!({"op": "ack", "lastEventId": "99999999999999-0"}))
        .await;
    assert_eq!(
        olivia.expect("error").await.json()["code"],
        "invalid_last_event_id"
    );
}

#[tokio::test]
async fn resume_by_last_event_id_after_a_drop_has_no_gap_and_no_duplicate() {
    let app = spawn_app().await;
    let token = ops("olivia", ORG);
    let mut olivia = app.ws_connect_ready(&token, "").await;
    let first = app.publish_durable(&[ticket("a"), ticket("b")]).await;
    olivia.next_data_event().await;
    let seen = olivia.next_data_event().await.id.expect("a durable id");
    assert_eq!(seen, first[1]);
    drop(olivia);
    let missed = app.publish_durable(&[ticket("c"), ticket("d")]).await;

    let mut resumed = app.ws_connect_ready(&token, &format!("lastEventId={seen}")).await;
    app.publish_durable(&[ticket("control")]).await;
    let mut received = Vec::new();
    loop {
        let event = resumed.next_data_event().await;
        if event.label() == "control" {
            break;
        }
        received.push(event.id.expect("durable"));
    }
    assert_eq!(received, missed);
}

#[tokio::test]
async fn a_refreshed_token_keeps_the_connection_past_the_first_tokens_exp() {
    let app = spawn_app_with(|options| options.env("GATEWAY__AUTH__LEEWAY_SECS", "0")).await;
    let short = TokenBuilder::new("olivia", "ops").org(ORG).expires_in(2).sign();
    let mut olivia = app.ws_connect_ready(&short, "").await;
    let fresh = TokenBuilder::new("olivia", "ops")
        .org(ORG)
        .expires_in(3600)
        .sign();
    olivia.send(json!({"op": "auth", "token": fresh})).await;
    olivia.expect("auth").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    app.publish_live(ORG, ticket("after the first exp")).await;
    assert_eq!(olivia.next_data_event().await.label(), "after the first exp");
}

#[tokio::test]
async fn a_refreshed_token_with_another_org_receives_that_orgs_events_and_no_longer_the_old_ones() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect_ready(&ops("olivia", ORG), "").await;
    olivia
        .send(json!({"op": "auth", "token": ops("olivia", "org-2")}))
        .await;
    assert_eq!(olivia.expect("auth").await.json()["orgs"], json!(["org-2"]));
    app.publish_live(ORG, ticket("old org")).await;
    app.publish_live("org-2", envelope("org-2", "ticket.created", "control"))
        .await;
    assert_eq!(olivia.labels_until("control").await, Vec::<String>::new());
}

#[tokio::test]
async fn a_refresh_for_another_user_closes_with_4403() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect_ready(&ops("olivia", ORG), "").await;
    olivia
        .send(json!({"op": "auth", "token": ops("mallory", ORG)}))
        .await;
    let (before, end) = olivia.expect_close(STEP_TIMEOUT).await;
    assert_eq!(end, WsEnd::Closed(4403));
    assert_eq!(before.last().map(|event| event.event.as_str()), Some("error"));
}

#[tokio::test]
async fn a_refresh_with_an_invalid_token_closes_with_4403() {
    let app = spawn_app().await;
    let mut olivia = app.ws_connect_ready(&ops("olivia", ORG), "").await;
    olivia.send(json!({"op": "auth", "token": "not-a-jwt"})).await;
    let (before, end) = olivia.expect_close(STEP_TIMEOUT).await;
    assert_eq!(end, WsEnd::Closed(4403));
    assert_eq!(before[0].json()["code"], "malformed_token");
}

#[tokio::test]
async fn an_expiring_token_gets_auth_expired_then_4001() {
    let app = spawn_app_with(|options| options.env("GATEWAY__AUTH__LEEWAY_SECS", "0")).await;
    let short = TokenBuilder::new("olivia", "ops").org(ORG).expires_in(2).sign();
    let mut olivia = app.ws_connect_ready(&short, "").await;
    let (before, end) = olivia.expect_close(Duration::from_secs(6)).await;
    assert_eq!(end, WsEnd::Closed(4001));
    assert_eq!(
        before.last().map(|event| event.event.as_str()),
        Some("auth.expired")
    );
}

#[tokio::test]
async fn drain_sends_reconnect_with_a_jittered_retry_then_1001() {
    let mut app = spawn_app_with(|options| {
        options
            .env("GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECS", "5")
            .env("GATEWAY__SSE__DRAIN_RETRY_MIN_MS", "1000")
            .env("GATEWAY__SSE__DRAIN_RETRY_MAX_MS", "10000")
    })
    .await;
    let mut clients = Vec::new();
    for user in ["a", "b", "c", "d"] {
        clients.push(app.ws_connect_ready(&ops(user, ORG), "").await);
    }
    app.terminate();
    let mut retries = Vec::new();
    for client in &mut clients {
        let (before, end) = client.expect_close(STEP_TIMEOUT).await;
        assert_eq!(end, WsEnd::Closed(1001));
        let reconnect = before.last().expect("a reconnect message");
        assert_eq!(reconnect.event, "reconnect");
        let retry = reconnect.json()["retryMs"].as_u64().expect("retryMs");
        assert!((1000..=10000).contains(&retry), "retryMs {retry}");
        retries.push(retry);
    }
    retries.dedup();
    assert!(
        retries.len() > 1,
        "the retry is drawn per connection: {retries:?}"
    );
    app.wait_for_exit(Duration::from_secs(8)).await;
}

#[tokio::test]
async fn websocket_streams_are_counted_by_transport() {
    let app = spawn_app().await;
    let _sse = app.connect_ready(&ops("s", ORG), "").await;
    let _ws = app.ws_connect_ready(&ops("w", ORG), "").await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("gateway_transport_connections{transport=\"ws\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_transport_connections{transport=\"sse\"} 1"),
        "{metrics}"
    );
}

// --- permessage-deflate, read with a raw socket and flate2 -------------------------------------

/// Sends a WebSocket handshake by hand (offering `extensions` if not empty) and returns the
/// socket after the `101`, with the response's head checked by `check`.
async fn raw_upgrade_with(
    gateway: &Gateway,
    token: &str,
    extensions: &str,
    check: impl FnOnce(&str),
) -> tokio::net::TcpStream {
    let address = gateway.base_url().trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.expect("connects");
    let offer = if extensions.is_empty() {
        String::new()
    } else {
        format!("Sec-WebSocket-Extensions: {extensions}\r\n")
    };
    let request = format!(
        "GET /api/ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n{offer}\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(STEP_TIMEOUT, stream.read_exact(&mut byte))
            .await
            .expect("the handshake answered in time")
            .expect("reads");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("an HTTP head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    check(&head.to_ascii_lowercase());
    stream
}

async fn raw_upgrade(gateway: &Gateway, token: &str, extensions: &str) -> tokio::net::TcpStream {
    raw_upgrade_with(gateway, token, extensions, |_| {}).await
}

/// Reads one server frame: its first byte and payload.
async fn read_frame(stream: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let mut header = [0u8; 2];
        stream.read_exact(&mut header).await.expect("a frame header");
        assert_eq!(header[1] & 0x80, 0, "server frames are not masked");
        let len = match header[1] & 0x7F {
            126 => u64::from(stream.read_u16().await.expect("length")),
            127 => stream.read_u64().await.expect("length"),
            short => u64::from(short),
        };
        let mut payload = vec![0; len as usize];
        stream.read_exact(&mut payload).await.expect("the payload");
        (header[0], payload)
    };
    tokio::time::timeout(STEP_TIMEOUT, read)
        .await
        .expect("a frame in time")
}

/// The next text message, inflated if it is compressed (RSV1), with whether it was.
async fn read_message(stream: &mut tokio::net::TcpStream) -> (bool, Value) {
    loop {
        let (first, payload) = read_frame(stream).await;
        if first & 0x0F != 0x1 {
            continue;
        }
        let compressed = first & 0x40 != 0;
        let text = if compressed {
            let mut input = payload;
            input.extend_from_slice(&[0, 0, 0xFF, 0xFF]);
            let mut inflater = flate2::Decompress::new(false);
            let mut out = Vec::with_capacity(1 << 20);
            inflater
                .decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
                .expect("a valid deflate message");
            out
        } else {
            payload
        };
        let json: Value = serde_json::from_slice(&text).expect("a JSON message");
        if json["event"] != "keepalive" {
            return (compressed, json);
        }
    }
}

#[tokio::test]
async fn permessage_deflate_is_accepted_without_context_takeover() {
    let app = spawn_app().await;
    raw_upgrade_with(
        &app.gateway,
        &ops("olivia", ORG),
        "permessage-deflate; client_max_window_bits",
        |head| {
            assert!(
                head.contains(
                    "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
                ),
                "{head}"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn compression_enabled_false_declines_permessage_deflate() {
    let app = spawn_app_with(|options| options.env("GATEWAY__COMPRESSION__ENABLED", "false")).await;
    raw_upgrade_with(&app.gateway, &ops("olivia", ORG), "permessage-deflate", |head| {
        assert!(!head.contains("sec-websocket-extensions"), "{head}");
    })
    .await;
}

#[tokio::test]
async fn a_compressed_connections_messages_decode_to_the_same_json() {
    let app = spawn_app().await;
    let token = ops("olivia", ORG);
    let mut plain = app.ws_connect_ready(&token, "").await;
    let mut compressed = raw_upgrade(&app.gateway, &token, "permessage-deflate").await;
    assert_eq!(read_message(&mut compressed).await.1["event"], "connected");
    let big = envelope(ORG, "ticket.created", "big").padded_to(2_000);
    let ids = app.publish_durable(&[big.into(), ticket("small")]).await;

    let (was_compressed, big_message) = read_message(&mut compressed).await;
    assert!(was_compressed, "a 2 kB event is sent compressed");
    let (small_compressed, small_message) = read_message(&mut compressed).await;
    assert!(
        !small_compressed,
        "an event under compression.min_bytes is sent as is"
    );
    for (message, id) in [(&big_message, &ids[0]), (&small_message, &ids[1])] {
        let reference = plain.next_data_event().await;
        assert_eq!(message["id"], json!(id));
        assert_eq!(message["event"], json!(reference.event));
        assert_eq!(message["data"], reference.json());
    }
}
