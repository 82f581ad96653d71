//! protocol §14: compressed SSE streams. A client that accepts gzip gets one gzip stream whose
//! pieces are shared by every compressed connection; these tests read it with reqwest (bytes
//! as they arrive) and flate2's inflater, incrementally, as a browser does.

use std::io::Read;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::common::envelope::envelope;
use crate::common::gateway::Gateway;
use crate::common::sse::SseEvent;
use crate::common::token::ops;
use crate::common::{spawn_app, spawn_app_with, STEP_TIMEOUT};

const ORG: &str = "org-1";

/// A ticket event; `bytes` > 0 pads its envelope to that size.
fn ticket(label: &str, bytes: usize) -> Value {
    let event = envelope(ORG, "ticket.created", label);
    if bytes > 0 { event.padded_to(bytes) } else { event }.into()
}

/// A compressed stream read as it arrives: the raw body, inflated incrementally.
struct GzipSse {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    raw: Vec<u8>,
    /// Every byte of the body, as sent.
    all: Vec<u8>,
    inflater: flate2::Decompress,
    header_skipped: bool,
    plain: Vec<u8>,
}

impl GzipSse {
    async fn open(
        gateway: &Gateway,
        token: &str,
        extra: &[(&str, &str)],
    ) -> (reqwest::header::HeaderMap, Self) {
        let mut request = gateway
            .events_request("")
            .bearer_auth(token)
            .header("accept-encoding", "gzip, deflate, br, zstd");
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the gateway answers");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        let stream = Self {
            body: response.bytes_stream().boxed(),
            raw: Vec::new(),
            all: Vec::new(),
            inflater: flate2::Decompress::new(false),
            header_skipped: false,
            plain: Vec::new(),
        };
        (headers, stream)
    }

    /// Inflates what arrived; `false` once the body ended.
    async fn read_more(&mut self) -> bool {
        let chunk = match tokio::time::timeout(STEP_TIMEOUT, self.body.next()).await {
            Err(_) => panic!("nothing arrived within {STEP_TIMEOUT:?}"),
            Ok(None) | Ok(Some(Err(_))) => return false,
            Ok(Some(Ok(chunk))) => chunk,
        };
        self.raw.extend_from_slice(&chunk);
        self.all.extend_from_slice(&chunk);
        if !self.header_skipped {
            if self.raw.len() < 10 {
                return true;
            }
            assert_eq!(&self.raw[..3], &[0x1F, 0x8B, 0x08], "a gzip header");
            self.raw.drain(..10);
            self.header_skipped = true;
        }
        // Inflate all that arrived, however much it expands.
        loop {
            let mut out = Vec::with_capacity(64 * 1024);
            let (before_in, before_out) = (self.inflater.total_in(), self.inflater.total_out());
            self.inflater
                .decompress_vec(&self.raw, &mut out, flate2::FlushDecompress::Sync)
                .expect("valid deflate data");
            let consumed = (self.inflater.total_in() - before_in) as usize;
            self.raw.drain(..consumed);
            self.plain.extend_from_slice(&out);
            if consumed == 0 && self.inflater.total_out() == before_out {
                break;
            }
        }
        true
    }

    /// The next SSE message (skipping `retry:`-only frames and keepalives).
    async fn next_event(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.plain.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.plain.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("UTF-8 frames");
                let field = |name: &str| {
                    text.lines()
                        .find_map(|line| line.strip_prefix(name).map(str::to_string))
                };
                let Some(event) = field("event: ") else { continue };
                if event == "keepalive" {
                    continue;
                }
                return SseEvent {
                    event,
                    id: field("id: "),
                    data: field("data: ").unwrap_or_default(),
                };
            }
            assert!(
                self.read_more().await,
                "the stream ended while an event was expected"
            );
        }
    }
}

#[tokio::test]
async fn a_client_that_accepts_gzip_gets_a_gzip_stream_of_the_same_events() {
    let app = spawn_app().await;
    let (headers, mut compressed) = GzipSse::open(&app, &ops("olivia", ORG), &[]).await;
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["vary"], "Accept-Encoding");
    let mut plain = app.connect_ready(&ops("paula", ORG), "").await;
    assert_eq!(compressed.next_event().await.event, "connected");
    let ids = app
        .publish_durable(&[ticket("big", 2_000), ticket("small", 0)])
        .await;
    for id in &ids {
        let (zipped, reference) = (compressed.next_event().await, plain.next_data_event().await);
        assert_eq!(zipped.id.as_ref(), Some(id));
        assert_eq!((zipped.event, zipped.data), (reference.event, reference.data));
    }
}

#[tokio::test]
async fn each_compressed_event_can_be_read_before_the_next_is_published() {
    let app = spawn_app().await;
    let (_, mut compressed) = GzipSse::open(&app, &ops("olivia", ORG), &[]).await;
    compressed.next_event().await;
    for n in 0..5 {
        let label = format!("event-{n}");
        app.publish_durable(&[ticket(&label, 400)]).await;
        assert_eq!(compressed.next_event().await.label(), label);
    }
}

#[tokio::test]
async fn a_client_without_accept_encoding_gets_identity() {
    let app = spawn_app().await;
    let client = app.connect(&ops("olivia", ORG), "").await;
    assert_eq!(client.headers()["content-encoding"], "identity");
}

#[tokio::test]
async fn compression_enabled_false_sends_identity_to_a_client_that_accepts_gzip() {
    let app = spawn_app_with(|options| options.env("GATEWAY__COMPRESSION__ENABLED", "false")).await;
    let response = app
        .events_request("")
        .bearer_auth(ops("olivia", ORG))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("answers");
    assert_eq!(response.headers()["content-encoding"], "identity");
}

#[tokio::test]
async fn gzip_refused_with_q_0_is_not_used() {
    let app = spawn_app().await;
    let response = app
        .events_request("")
        .bearer_auth(ops("olivia", ORG))
        .header("accept-encoding", "gzip;q=0, identity")
        .send()
        .await
        .expect("answers");
    assert_eq!(response.headers()["content-encoding"], "identity");
}

#[tokio::test]
async fn a_replay_over_a_compressed_stream_is_exact() {
    let app = spawn_app().await;
    let ids = app
        .publish_durable(
            &(0..300)
                .map(|n| ticket(&format!("e{n}"), 300))
                .collect::<Vec<_>>(),
        )
        .await;
    let (_, mut compressed) =
        GzipSse::open(&app, &ops("olivia", ORG), &[("last-event-id", ids[49].as_str())]).await;
    assert_eq!(compressed.next_event().await.event, "connected");
    let live = app.publish_durable(&[ticket("live", 300)]).await;
    for id in ids[50..].iter().chain(&live) {
        assert_eq!(compressed.next_event().await.id.as_ref(), Some(id));
    }
}

#[tokio::test]
async fn a_drained_compressed_stream_ends_as_a_complete_gzip_body() {
    let app = spawn_app_with(|options| options.env("GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECS", "5")).await;
    let (_, mut compressed) = GzipSse::open(&app, &ops("olivia", ORG), &[]).await;
    compressed.next_event().await;
    app.publish_durable(&[ticket("one", 500), ticket("two", 0)]).await;
    compressed.next_event().await;
    compressed.next_event().await;
    app.terminate();
    while compressed.read_more().await {}
    // The whole body, checked by flate2's gzip reader: header, blocks, CRC32 and length.
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&compressed.all[..])
        .read_to_end(&mut plain)
        .expect("a complete gzip body whose CRC and length hold");
    let text = String::from_utf8(plain).expect("UTF-8");
    assert!(text.starts_with("retry: "), "{text}");
    assert!(text.contains("\"label\":\"one\"") && text.contains("\"label\":\"two\""));
    assert!(text.ends_with("\n\n"), "the drain retry closes it: {text}");
}
