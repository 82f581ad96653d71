//! A WebSocket client for tests, on the third-party `tokio-tungstenite`, so every WebSocket test
//! also checks that the gateway's handshake and frames satisfy a real client; and `Subscription`,
//! one stream over either transport, for the tests that hold for both.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::gateway::Gateway;
use super::sse::{SseClient, SseEvent};
use super::STEP_TIMEOUT;

pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a WebSocket ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEnd {
    /// The server's close frame: its code.
    Closed(u16),
    /// The connection dropped without a close frame.
    Dropped,
}

impl Gateway {
    /// `ws://.../api/ws?<query>` with `Authorization: Bearer <token>`.
    fn ws_request(
        &self,
        token: &str,
        query: &str,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        let base = self.base_url().replacen("http://", "ws://", 1);
        let url = if query.is_empty() {
            format!("{base}/api/ws")
        } else {
            format!("{base}/api/ws?{query}")
        };
        let mut request = url.into_client_request().expect("a valid WebSocket URL");
        if !token.is_empty() {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("a header-safe token");
            request.headers_mut().insert("authorization", value);
        }
        request
    }

    /// Opens a WebSocket and asserts the upgrade (`101`).
    pub async fn ws_connect(&self, token: &str, query: &str) -> WsClient {
        match self.ws_handshake(token, query, &[]).await {
            Ok(client) => client,
            Err((status, body)) => panic!("expected 101 for GET /api/ws, got {status}: {body}"),
        }
    }

    /// A handshake with `headers` added: the open WebSocket, or the refusal's status and body.
    pub async fn ws_handshake(
        &self,
        token: &str,
        query: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<WsClient, (StatusCode, Value)> {
        let mut request = self.ws_request(token, query);
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, HeaderValue::from_str(value).expect("a header-safe value"));
        }
        match tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .expect("the gateway answered the handshake in time")
        {
            Ok((socket, _)) => Ok(WsClient { socket }),
            Err(Error::Http(response)) => {
                let body = response.body().as_deref().unwrap_or_default();
                let json = serde_json::from_slice(body)
                    .unwrap_or_else(|_| panic!("a JSON error body, got {:?}", String::from_utf8_lossy(body)));
                Err((response.status(), json))
            }
            Err(error) => panic!("expected 101 or an HTTP refusal, got {error}"),
        }
    }

    /// Opens a WebSocket and reads up to `connected`.
    pub async fn ws_connect_ready(&self, token: &str, query: &str) -> WsClient {
        let mut client = self.ws_connect(token, query).await;
        client.expect_connected().await;
        client
    }

    /// A refused upgrade: its status and JSON error body.
    pub async fn ws_refusal(&self, token: &str, query: &str) -> (StatusCode, Value) {
        match self.ws_handshake(token, query, &[]).await {
            Ok(_) => panic!("expected the upgrade to be refused, got 101"),
            Err(refusal) => refusal,
        }
    }

    /// Opens a stream over `via` and reads up to `connected`.
    pub async fn subscribe_ready(&self, via: Transport, token: &str, query: &str) -> Subscription {
        match via {
            Transport::Sse => Subscription::Sse(self.connect_ready(token, query).await),
            Transport::Ws => Subscription::Ws(Box::new(self.ws_connect_ready(token, query).await)),
        }
    }
}

impl WsClient {
    /// The next message of the gateway (text, parsed), `Err` with how it ended otherwise.
    pub async fn next_message_or_end(&mut self, limit: Duration) -> Result<SseEvent, WsEnd> {
        loop {
            let message = match tokio::time::timeout(limit, self.socket.next()).await {
                Err(_) => panic!("no WebSocket message within {limit:?}"),
                Ok(None) | Ok(Some(Err(_))) => return Err(WsEnd::Dropped),
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => {
                    let json: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|error| panic!("a message that is not JSON ({error}): {text}"));
                    return Ok(SseEvent {
                        event: json["event"]
                            .as_str()
                            .unwrap_or_else(|| panic!("a message without `event`: {text}"))
                            .to_string(),
                        id: json["id"].as_str().map(str::to_string),
                        data: json.get("data").map_or_else(String::new, Value::to_string),
                    });
                }
                Message::Close(frame) => {
                    return Err(WsEnd::Closed(frame.map_or(1005, |frame| u16::from(frame.code))));
                }
                Message::Binary(_) => panic!("the gateway sent a binary message"),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// The next message; the connection must not end.
    pub async fn next_event(&mut self) -> SseEvent {
        self.next_message_or_end(STEP_TIMEOUT)
            .await
            .unwrap_or_else(|end| panic!("the WebSocket ended ({end:?}) while a message was expected"))
    }

    pub async fn expect_connected(&mut self) -> Value {
        let event = self.next_event().await;
        assert_eq!(
            event.event, "connected",
            "first message of a WebSocket must be `connected`, got {event:?}"
        );
        event.json()
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

    /// The next message named `name`, skipping keepalives; any other message fails the test.
    pub async fn expect(&mut self, name: &str) -> SseEvent {
        let event = self.next_data_event().await;
        assert_eq!(event.event, name, "expected `{name}`, got {event:?}");
        event
    }

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

    /// Sends an operation (`{"op":...}`).
    pub async fn send(&mut self, operation: Value) {
        self.send_text(&operation.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        tokio::time::timeout(STEP_TIMEOUT, self.socket.send(Message::text(text)))
            .await
            .expect("the gateway took the message in time")
            .expect("the WebSocket is open");
    }

    pub async fn send_message(&mut self, message: Message) {
        tokio::time::timeout(STEP_TIMEOUT, self.socket.send(message))
            .await
            .expect("the gateway took the message in time")
            .expect("the WebSocket is open");
    }

    /// Reads until the server closes, ignoring keepalives; returns the messages before the
    /// close and its code.
    pub async fn expect_close(&mut self, limit: Duration) -> (Vec<SseEvent>, WsEnd) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_message_or_end(left.max(Duration::from_millis(1))).await {
                Ok(event) if event.event == "keepalive" => {}
                Ok(event) => before.push(event),
                Err(end) => return (before, end),
            }
        }
    }

    pub async fn assert_no_event_within(&mut self, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(text)))) if !text.contains("\"event\":\"keepalive\"") => {
                    panic!("expected no message within {window:?}, got {text}")
                }
                Ok(None | Some(Err(_))) => panic!("the WebSocket ended while checking that nothing arrives"),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Closes from the client side with a normal closure.
    pub async fn close(mut self) {
        let _ = self
            .socket
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

/// The two ways to open a stream.
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    Sse,
    Ws,
}

/// One stream, over either transport.
pub enum Subscription {
    Sse(SseClient),
    Ws(Box<WsClient>),
}

impl Subscription {
    pub async fn next_data_event(&mut self) -> SseEvent {
        match self {
            Self::Sse(client) => client.next_data_event().await,
            Self::Ws(client) => client.next_data_event().await,
        }
    }

    pub async fn labels_until(&mut self, control: &str) -> Vec<String> {
        match self {
            Self::Sse(client) => client.labels_until(control).await,
            Self::Ws(client) => client.labels_until(control).await,
        }
    }

    pub async fn assert_no_event_within(&mut self, window: Duration) {
        match self {
            Self::Sse(client) => client.assert_no_event_within(window).await,
            Self::Ws(client) => client.assert_no_event_within(window).await,
        }
    }
}

/// Runs each named `async fn(Transport)` as two tests, `sse::<name>` and `ws::<name>`.
#[macro_export]
macro_rules! over_both_transports {
    ($($name:ident),+ $(,)?) => {
        mod sse {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::ws::Transport::Sse).await
                }
            )+
        }
        mod ws {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::ws::Transport::Ws).await
                }
            )+
        }
    };
}
