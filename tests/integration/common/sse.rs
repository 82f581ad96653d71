//! An SSE client for tests: reqwest for HTTP, the third-party `russe` decoder for framing, so
//! every test also checks that the gateway's stream parses with a real SSE parser.

use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response, StatusCode};
use russe::reqwest_0_13::ReqwestExt;
use serde_json::Value;

use super::http::send;
use super::STEP_TIMEOUT;

/// One dispatched SSE message, as a browser's `EventSource` would see it.
#[derive(Clone, Debug)]
pub struct SseEvent {
    /// The `event:` field, `message` when absent.
    pub event: String,
    /// The `id:` field; only durable events carry one.
    pub id: Option<String>,
    /// The `data:` field, lines joined with `\n`.
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|error| {
            panic!(
                "data of `{}` event is not JSON ({error}): {:?}",
                self.event, self.data
            )
        })
    }

    /// The `label` every test envelope carries in its data.
    pub fn label(&self) -> String {
        self.json()["label"]
            .as_str()
            .unwrap_or_else(|| panic!("`{}` event has no data.label: {}", self.event, self.data))
            .to_string()
    }
}

pub struct SseClient {
    headers: HeaderMap,
    frames: BoxStream<'static, Result<russe::Event, russe::Error>>,
}

impl SseClient {
    /// Opens a stream and asserts the gateway accepted it (`200`).
    pub async fn open(request: RequestBuilder) -> Self {
        let response = send(request).await;
        let status = response.status();
        if status != StatusCode::OK {
            let body = response.text().await.unwrap_or_default();
            panic!("expected 200 for GET /api/events, got {status}: {body}");
        }
        Self::from_response(response)
    }

    /// Wraps an already accepted stream response.
    pub fn from_response(response: Response) -> Self {
        SseClient {
            headers: response.headers().clone(),
            frames: response.sse_stream(),
        }
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The next raw frame (message, retry or comment), or the end of the stream (`None`).
    pub async fn next_frame_or_end(&mut self, limit: Duration) -> Option<russe::Event> {
        match tokio::time::timeout(limit, self.frames.next()).await {
            Err(_) => panic!("no SSE frame within {limit:?}"),
            Ok(None) => None,
            Ok(Some(Ok(frame))) => Some(frame),
            Ok(Some(Err(error))) => panic!("SSE stream failed: {error} ({error:?})"),
        }
    }

    /// The next raw frame; the stream must not end.
    pub async fn next_frame(&mut self) -> russe::Event {
        self.next_frame_or_end(STEP_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("SSE stream ended while a frame was expected"))
    }

    /// The next message frame, skipping comments and bare `retry:` frames.
    pub async fn next_event(&mut self) -> SseEvent {
        loop {
            if let russe::Event::Message(message) = self.next_frame().await {
                return SseEvent {
                    event: message
                        .event
                        .map_or_else(|| "message".to_string(), |event| event.to_string()),
                    id: message.id.map(|id| id.to_string()),
                    data: message.data.to_string(),
                };
            }
        }
    }

    /// Reads up to the `connected` event, which must be the first message, and returns its data.
    pub async fn expect_connected(&mut self) -> Value {
        let event = self.next_event().await;
        assert_eq!(
            event.event, "connected",
            "first message of a stream must be `connected`, got {event:?}"
        );
        event.json()
    }

    /// The next message that is not a `keepalive`, waiting up to `limit` for each frame (for
    /// events that follow a failover, which takes the cluster a few seconds).
    pub async fn next_data_event_within(&mut self, limit: Duration) -> SseEvent {
        loop {
            let frame = self
                .next_frame_or_end(limit)
                .await
                .unwrap_or_else(|| panic!("SSE stream ended while a frame was expected"));
            if let russe::Event::Message(message) = frame {
                let event = SseEvent {
                    event: message
                        .event
                        .map_or_else(|| "message".to_string(), |event| event.to_string()),
                    id: message.id.map(|id| id.to_string()),
                    data: message.data.to_string(),
                };
                if event.event != "keepalive" {
                    return event;
                }
            }
        }
    }

    /// The next message that is not a `keepalive`.
    pub async fn next_data_event(&mut self) -> SseEvent {
        loop {
            let event = self.next_event().await;
            if event.event != "keepalive" {
                return event;
            }
        }
    }

    /// Reads data events until the one labelled `control` and returns the labels before it.
    pub async fn labels_until(&mut self, control: &str) -> Vec<String> {
        let mut labels = Vec::new();
        loop {
            let label = self.next_data_event().await.label();
            if label == control {
                return labels;
            }
            labels.push(label);
        }
    }

    /// Asserts that no message other than `keepalive` arrives for `window`. Keep windows short
    /// and follow them with a positive control event, so the check is meaningful.
    pub async fn assert_no_event_within(&mut self, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.frames.next()).await {
                Err(_) => return,
                Ok(frame) => frame,
            };
            match frame {
                None => panic!("SSE stream ended while checking that nothing arrives"),
                Some(Err(error)) => panic!("SSE stream failed: {error} ({error:?})"),
                Some(Ok(russe::Event::Message(message))) if message.event.as_deref() != Some("keepalive") => {
                    panic!("expected no event within {window:?}, got {message:?}")
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Asserts that the server closes the stream within `limit`, ignoring keepalives on the way.
    /// A clean end of the body and a connection closed by the server both count.
    pub async fn expect_end(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.frames.next()).await {
                Err(_) => panic!("the gateway did not close the stream within {limit:?}"),
                Ok(frame) => frame,
            };
            match frame {
                None | Some(Err(_)) => return,
                Some(Ok(russe::Event::Message(message))) if message.event.as_deref() != Some("keepalive") => {
                    panic!("expected the stream to end, got {message:?}")
                }
                Some(Ok(_)) => {}
            }
        }
    }
}
