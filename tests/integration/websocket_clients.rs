//! `GET /api/ws` through third-party clients outside Rust, driven by tests/browser/websocket.mjs:
//! the npm `ws` package in Node with permessage-deflate, and Chromium's own `WebSocket` (headless
//! Debian Chromium, playwright-core; never a downloaded browser). The script publishes over
//! `POST /api/publish` and prints what its client received; these tests hold it to the contract.
//! `.ci/run` installs Debian's chromium and `npm ci --prefix tests/browser`.

use serde_json::{json, Value};

use crate::common::gateway::{spawn_gateway, Gateway, GatewayOptions};
use crate::common::node;

const ORG: &str = "org-ws";

/// Runs `websocket.mjs <scenario>` with tokens of `ORG`.
async fn run_script(gateway: &Gateway, scenario: &str, browser: bool) -> Value {
    node::run_script(
        gateway,
        "websocket.mjs",
        &["ws", "playwright-core"],
        browser,
        scenario,
        ORG,
    )
    .await
}

/// Asserts that a `Sec-WebSocket-Extensions` answer accepts permessage-deflate without context
/// takeover either way.
fn assert_deflate_accepted(extensions: &Value) {
    let extensions = extensions.as_str().unwrap_or_default();
    let params: Vec<&str> = extensions.split(';').map(str::trim).collect();
    assert_eq!(
        params.first(),
        Some(&"permessage-deflate"),
        "negotiated extensions: {extensions:?}"
    );
    for param in ["server_no_context_takeover", "client_no_context_takeover"] {
        assert!(params.contains(&param), "{param} in {extensions:?}");
    }
}

/// Asserts that `events` (as received) are `published` (type, data, id), in publish order.
fn assert_received_as_published(who: &str, events: &Value, published: &Value) {
    let view = |list: &Value, name: &str| -> Vec<Value> {
        list.as_array()
            .unwrap_or_else(|| panic!("{who}: {list} is a list"))
            .iter()
            .map(|item| json!({"type": item[name], "data": item["data"], "id": item["id"]}))
            .collect()
    };
    let published = view(published, "type");
    for event in &published {
        assert!(
            event["id"].as_str().is_some_and(|id| !id.is_empty()),
            "{who}: a published event has an id: {event}"
        );
    }
    assert_eq!(view(events, "event"), published, "{who}");
}

fn connected_as_olivia(connected: &Value) {
    assert_eq!(connected["userId"], "olivia", "{connected}");
    assert_eq!(connected["role"], "ops", "{connected}");
    assert_eq!(connected["orgs"], json!([ORG]), "{connected}");
    assert!(
        connected["connectionId"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{connected}"
    );
    assert!(connected["keepaliveSecs"].as_u64().is_some(), "{connected}");
}

#[tokio::test]
async fn a_node_ws_client_with_permessage_deflate_gets_large_events_compressed_and_small_ones_as_is() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    let result = run_script(&gateway, "node-deflate", false).await;

    assert_eq!(result["extensions"], "permessage-deflate", "ws.extensions");
    assert_deflate_accepted(&result["extensionsHeader"]);
    connected_as_olivia(&result["connected"]);
    assert_eq!(
        result["connectedFrame"]["compressed"], false,
        "the gateway's own messages are sent as is"
    );
    // Decoded by ws's inflater to exactly what was published, with the ids publish returned.
    assert_received_as_published("ws (Node)", &result["events"], &result["published"]);

    let large = &result["events"][0];
    let plain_bytes = large["plainBytes"].as_u64().expect("plainBytes");
    let wire_bytes = large["frame"]["payloadBytes"].as_u64().expect("payloadBytes");
    assert!(
        plain_bytes > 2048,
        "the large event's message: {plain_bytes} bytes"
    );
    assert_eq!(
        large["frame"]["compressed"], true,
        "an event over compression.min_bytes comes compressed (RSV1): {large}"
    );
    assert!(
        wire_bytes * 2 < plain_bytes,
        "the large event shrank on the wire: {wire_bytes} of {plain_bytes} bytes"
    );

    let small = &result["events"][1];
    assert!(small["plainBytes"].as_u64().expect("plainBytes") < 256);
    assert_eq!(
        small["frame"]["compressed"], false,
        "an event under compression.min_bytes comes as is: {small}"
    );
    assert_eq!(small["frame"]["payloadBytes"], small["plainBytes"], "{small}");

    assert_eq!(
        result["ack"],
        json!({"lastEventId": result["published"][1]["id"]})
    );
}

#[tokio::test]
async fn chromium_native_websocket_with_a_query_token_streams_events_answers_ping_and_accepts_deflate() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    let result = run_script(&gateway, "chromium", true).await;

    let handshake = &result["handshake"];
    assert_eq!(handshake["status"], 101, "{handshake}");
    // Chromium offers `permessage-deflate; client_max_window_bits` by default.
    let offered = handshake["requestHeaders"]["Sec-WebSocket-Extensions"]
        .as_str()
        .unwrap_or_default();
    assert!(offered.contains("permessage-deflate"), "{handshake}");
    assert_deflate_accepted(&result["opened"]["extensions"]);
    // The page is one of the gateway's own origin (about:blank is refused by Chromium's Local
    // Network Access checks before any handshake; see websocket.mjs).
    assert_eq!(
        handshake["requestHeaders"]["Origin"],
        gateway.base_url(),
        "{handshake}"
    );

    connected_as_olivia(&result["connected"]);
    assert_received_as_published("Chromium", &result["events"], &result["published"]);
    assert_eq!(result["pong"], json!({"event": "pong"}));
    assert_eq!(
        result["closed"],
        json!({"code": 1000, "reason": "", "wasClean": true}),
        "the gateway echoes the page's close"
    );
}

#[tokio::test]
async fn a_types_op_from_a_node_ws_client_changes_which_events_arrive_on_the_open_connection() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    let result = run_script(&gateway, "node-types", false).await;
    // ws compressed every op it sent (threshold 0), so the gateway inflated each one.
    assert_eq!(result["extensions"], "permessage-deflate", "ws.extensions");
    assert_deflate_accepted(&result["extensionsHeader"]);
    let ops: Vec<&Value> = result["sentFrames"]
        .as_array()
        .expect("sentFrames")
        .iter()
        .filter(|frame| frame["opcode"] == 1)
        .collect();
    assert_eq!(ops.len(), 5, "five ops sent: {ops:?}");
    assert!(ops.iter().all(|frame| frame["compressed"] == true), "{ops:?}");

    // Each batch puts the type that must not arrive first, in the same org and priority: had it
    // been let through, it would have come before the one that did.
    let only_second = |phase: &str| {
        let published = &result[phase]["published"];
        assert_received_as_published(phase, &result[phase]["events"], &json!([published[1]]));
    };
    only_second("before");
    assert_eq!(result["confirmed"], json!({"types": ["payment.*"]}));
    only_second("after");

    assert_eq!(result["invalid"]["code"], "invalid_query", "{result}");
    assert_eq!(result["unknown"]["code"], "invalid_message", "{result}");
    for error in [&result["invalid"], &result["unknown"]] {
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{error}"
        );
    }
    only_second("unchanged");

    assert_eq!(result["cleared"], json!({"types": []}));
    assert_received_as_published("all", &result["all"]["events"], &result["all"]["published"]);
}
