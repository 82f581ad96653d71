//! protocol §14 through third-party clients outside Rust, driven by
//! tests/browser/eventsource.mjs: Chromium's own `EventSource` (headless Debian Chromium,
//! playwright-core; never a downloaded browser) and the npm `eventsource` package in Node, each
//! on a compressed stream (`Content-Encoding: gzip`, one gzip stream of raw-deflate pieces). The
//! script publishes over `POST /api/publish`, one event at a time, and prints what its client
//! received; these tests hold it to the contract. `.ci/run` installs Debian's chromium and
//! `npm ci --prefix tests/browser`.
//!
//! Keepalives are set an hour apart, so nothing but an event's own bytes can bring it out of a
//! client's decoder: an event seen before the next is published was decoded as it arrived.

use serde_json::{json, Value};

use crate::common::gateway::{spawn_gateway, Gateway, GatewayOptions};
use crate::common::node;

const ORG: &str = "org-gzip-clients";

/// An embedded gateway whose streams send no keepalive during a test.
async fn gateway() -> Gateway {
    spawn_gateway(GatewayOptions::embedded().env("GATEWAY__SSE__KEEPALIVE_SECS", "3600")).await
}

/// Runs `eventsource.mjs <scenario>` with tokens of `ORG`.
async fn run_script(gateway: &Gateway, scenario: &str, browser: bool) -> Value {
    node::run_script(
        gateway,
        "eventsource.mjs",
        &["eventsource", "playwright-core"],
        browser,
        scenario,
        ORG,
    )
    .await
}

fn list<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what} is a list: {value}"))
}

/// An event id as its parts (`<millis>-<seq>`), to compare ids in order.
fn id_order(id: &Value) -> (u64, u64) {
    let id = id.as_str().unwrap_or_else(|| panic!("an id is text: {id}"));
    let (millis, seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("an event id: {id:?}"));
    (
        millis.parse().expect("an id's millis"),
        seq.parse().expect("an id's seq"),
    )
}

/// Asserts that `received` are exactly `published`, in publish order: the type as the event's
/// name, the id publish answered as its `lastEventId`, the data as the very text sent.
fn assert_received_exactly(who: &str, received: &Value, published: &Value) {
    let (received, published) = (list(received, "received"), list(published, "published"));
    let view = |event: &Value, name: &str| json!([event[name], event["id"], event["data"]]);
    assert_eq!(
        received.iter().map(|e| view(e, "event")).collect::<Vec<_>>(),
        published.iter().map(|e| view(e, "type")).collect::<Vec<_>>(),
        "{who}: the events received are the events published, in order"
    );
    for event in published {
        let data = event["data"].as_str().expect("the data sent");
        serde_json::from_str::<Value>(data).unwrap_or_else(|e| panic!("{who}: {data} is JSON: {e}"));
    }
}

/// Asserts that `published` ids are ascending (so "in order" means publish order).
fn assert_ids_ascending(who: &str, published: &[&Value]) {
    let ids: Vec<(u64, u64)> = published.iter().map(|event| id_order(&event["id"])).collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "{who}: ids in publish order ascend: {ids:?}"
    );
}

/// Asserts that each event was published only after the one before it was seen.
fn assert_one_at_a_time(who: &str, run: &Value) {
    let expected: Vec<String> = list(&run["published"], "published")
        .iter()
        .flat_map(|event| {
            let id = event["id"].as_str().unwrap_or_default();
            [format!("published {id}"), format!("seen {id}")]
        })
        .collect();
    assert_eq!(
        run["log"],
        json!(expected),
        "{who}: publish, seen, publish, seen..."
    );
    for (published, seen) in list(&run["published"], "published")
        .iter()
        .zip(list(&run["received"], "received"))
    {
        let (at, seen_at) = (
            published["publishedAt"].as_u64().expect("publishedAt"),
            seen["seenAt"].as_u64().expect("seenAt"),
        );
        // The step deadline is 10 s; an event held back by a decoder would wait for a keepalive
        // an hour away.
        assert!(
            seen_at.saturating_sub(at) < 5_000,
            "{who}: {} seen {} ms after it was published",
            seen["id"],
            seen_at.saturating_sub(at)
        );
    }
}

/// Asserts that a client's stream stayed the one it opened: one open, no error (so no
/// reconnection that could have replayed what a broken decoder lost), still open, and
/// exactly `events` events (connected included) dispatched, no keepalive among them.
fn assert_one_clean_stream(who: &str, stream: &Value, events: usize) {
    assert_eq!(stream["state"]["opens"], 1, "{who}: {}", stream["state"]);
    assert_eq!(stream["state"]["errors"], json!([]), "{who}: {}", stream["state"]);
    assert_eq!(
        stream["state"]["readyState"], 1,
        "{who}: still OPEN: {}",
        stream["state"]
    );
    assert_eq!(
        stream["state"]["events"], events,
        "{who}: no event but those expected (no duplicate, no history.truncated)"
    );
    assert_eq!(stream["keepalives"], json!([]), "{who}: no keepalive was sent");
}

fn connected_as_olivia(who: &str, connected: &Value) {
    assert_eq!(connected["event"], "connected", "{who}: {connected}");
    let data: Value = serde_json::from_str(connected["data"].as_str().expect("data")).expect("JSON");
    assert_eq!(data["userId"], "olivia", "{who}: {data}");
    assert_eq!(data["role"], "ops", "{who}: {data}");
    assert_eq!(data["orgs"], json!([ORG]), "{who}: {data}");
}

/// Asserts the sizes the scenario promises: about 300 bytes of data each, one of about 2 KB.
fn assert_realistic_sizes(who: &str, published: &Value) {
    let sizes: Vec<usize> = list(published, "published")
        .iter()
        .map(|event| event["data"].as_str().expect("data").len())
        .collect();
    let large = sizes.iter().filter(|&&size| size >= 2048).count();
    let small = sizes.iter().filter(|&&size| (250..=400).contains(&size)).count();
    assert_eq!(
        (large, small),
        (1, sizes.len() - 1),
        "{who}: data sizes {sizes:?}"
    );
}

/// Asserts that Chromium asked for gzip by itself and the gateway answered a gzip stream for
/// every `/api/events` request (headers as Chromium's network stack sent and got them), and
/// that the body on the wire was smaller than what Chromium decoded from it.
fn assert_chromium_got_gzip(result: &Value, streams: usize) -> Vec<Value> {
    let responses = list(&result["responses"], "responses");
    assert_eq!(
        responses.len(),
        streams,
        "one response per EventSource: {responses:?}"
    );
    for response in responses {
        assert_eq!(response["resourceType"], "eventsource", "{response}");
        assert_eq!(response["status"], 200, "{response}");
        let accept = response["requestHeaders"]["accept-encoding"]
            .as_str()
            .unwrap_or_default();
        assert!(accept.split(',').any(|c| c.trim() == "gzip"), "{response}");
        let headers = &response["headers"];
        assert_eq!(headers["content-encoding"], "gzip", "{response}");
        assert_eq!(headers["content-type"], "text/event-stream", "{response}");
        assert!(
            headers["vary"]
                .as_str()
                .is_some_and(|vary| vary.contains("Accept-Encoding")),
            "{response}"
        );
    }
    let wire = list(&result["wireBytes"], "wireBytes");
    assert_eq!(wire.len(), streams, "{wire:?}");
    for stream in wire {
        let (encoded, decoded) = (
            stream["encoded"].as_u64().expect("encoded"),
            stream["decoded"].as_u64().expect("decoded"),
        );
        assert!(
            encoded > 0 && encoded < decoded,
            "compressed on the wire: {encoded} bytes received for {decoded} decoded ({stream})"
        );
    }
    responses.clone()
}

#[tokio::test]
async fn chromium_native_eventsource_decodes_a_compressed_stream_event_by_event() {
    let gateway = gateway().await;
    let result = run_script(&gateway, "chromium-incremental", true).await;

    assert_chromium_got_gzip(&result, 1);
    connected_as_olivia("Chromium", &result["connected"]);
    assert_realistic_sizes("Chromium", &result["published"]);
    assert_ids_ascending(
        "Chromium",
        &list(&result["published"], "published").iter().collect::<Vec<_>>(),
    );
    assert_received_exactly("Chromium", &result["received"], &result["published"]);
    assert_one_at_a_time("Chromium", &result);
    assert_one_clean_stream("Chromium", &result, 11);
}

#[tokio::test]
async fn node_eventsource_package_decodes_a_compressed_stream_event_by_event() {
    let gateway = gateway().await;
    let result = run_script(&gateway, "node-incremental", false).await;

    // The package asked for nothing itself; undici's fetch offered gzip on the wire...
    let fetches = list(&result["fetches"], "fetches");
    assert_eq!(fetches.len(), 1, "one request, no reconnection: {fetches:?}");
    let fetched = &fetches[0];
    assert!(
        fetched["requestHeaders"]
            .as_object()
            .is_some_and(|headers| !headers
                .keys()
                .any(|name| name.eq_ignore_ascii_case("accept-encoding"))),
        "{fetched}"
    );
    let sent = result["wire"]["requestHeaders"].as_str().unwrap_or_default();
    let offered = sent
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("accept-encoding").then(|| value.trim())
        })
        .unwrap_or_else(|| panic!("undici sent Accept-Encoding:\n{sent}"));
    assert!(
        offered.split(',').any(|coding| coding.trim() == "gzip"),
        "{offered:?}"
    );
    assert!(sent.starts_with("GET /api/events "), "{sent}");
    // ...the gateway answered a gzip stream, and undici decoded it for the package.
    let answered: Vec<&str> = list(&result["wire"]["responseHeaders"], "responseHeaders")
        .iter()
        .map(|value| value.as_str().unwrap_or_default())
        .collect();
    let header = |name: &str| {
        answered
            .chunks(2)
            .find(|pair| pair[0].eq_ignore_ascii_case(name))
            .map(|pair| pair[1])
    };
    assert_eq!(header("content-encoding"), Some("gzip"), "{answered:?}");
    assert_eq!(fetched["status"], 200, "{fetched}");
    assert_eq!(fetched["contentEncoding"], "gzip", "{fetched}");
    assert_eq!(fetched["contentType"], "text/event-stream", "{fetched}");

    connected_as_olivia("eventsource (Node)", &result["connected"]);
    assert_realistic_sizes("eventsource (Node)", &result["published"]);
    assert_received_exactly("eventsource (Node)", &result["received"], &result["published"]);
    assert_one_at_a_time("eventsource (Node)", &result);
    assert_one_clean_stream("eventsource (Node)", &result, 11);
}

#[tokio::test]
async fn a_compressed_stream_resumed_with_last_event_id_in_chromium_replays_the_missed_events_once_then_goes_on_live(
) {
    let gateway = gateway().await;
    let result = run_script(&gateway, "chromium-resume", true).await;

    let responses = assert_chromium_got_gzip(&result, 2);
    let resume_from = result["resumeFrom"].as_str().expect("resumeFrom");
    let resumed_url = responses[1]["url"].as_str().unwrap_or_default();
    assert!(
        resumed_url.ends_with(&format!("&lastEventId={resume_from}")),
        "{resumed_url}"
    );
    // A fresh EventSource: the position is the query parameter's, not a header's.
    assert!(
        responses[1]["requestHeaders"].get("last-event-id").is_none(),
        "{}",
        responses[1]
    );

    let first = &result["first"];
    connected_as_olivia("first stream", &first["connected"]);
    assert_received_exactly("first stream", &first["received"], &first["published"]);
    assert_one_at_a_time("first stream", first);
    assert_one_clean_stream("first stream", first, 4);
    assert_eq!(
        first["published"][2]["id"], resume_from,
        "resumed from the last event the first stream saw"
    );

    let second = &result["second"];
    connected_as_olivia("resumed stream", &second["connected"]);
    let mut missed = list(&result["missed"], "missed").clone();
    assert_eq!(missed.len(), 4);
    assert!(
        missed
            .iter()
            .any(|event| event["data"].as_str().is_some_and(|data| data.len() >= 2048)),
        "one missed event of ~2 KB"
    );
    missed.push(result["seam"].clone());
    // Exactly the events after `resume_from`, in order: not the one it names, none twice.
    assert_received_exactly("resumed stream (replay)", &second["replayed"], &json!(missed));
    assert_received_exactly("resumed stream (live)", &second["received"], &second["published"]);
    assert_one_at_a_time("resumed stream (live)", second);
    assert_one_clean_stream("resumed stream", second, 1 + missed.len() + 2);

    let all: Vec<&Value> = list(&first["published"], "published")
        .iter()
        .chain(&missed)
        .chain(list(&second["published"], "published"))
        .collect();
    assert_ids_ascending("every event", &all);
}
