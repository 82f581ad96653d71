//! The WebSocket transport (`GET /api/ws`): a session framed as one JSON text message per event
//! (each event's message, and its compressed form, built once per replica and shared), and the
//! client's operations read from the same connection: `ack`, `types`, `auth`, `ping`.
//!
//! One task per connection, as for SSE: the response body polls the client's frames and the
//! session's output; an operation that needs Redis runs as a future the body polls, one at a
//! time, so operations are answered in order.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use serde::Deserialize;
use serde_json::json;

use crate::broker::Truncation;
use crate::error::ApiError;
use crate::event::OrgId;
use crate::hub::Shard;
use crate::policy::TypeFilter;
use crate::routes::{parse_position, AppState};
use crate::session::{truncation_data, Chunk, Connected, Framing, Reauthorized, Session};
use crate::wire::deflate;
use crate::wire::ws::{self, ClientFrame, FrameError, Opcode};
use crate::wire::Encoding;

/// Most of the gateway's own replies waiting to be written; past it, the client's frames are
/// not read until they are (a client that sends without reading is slowed, not buffered).
const MAX_PENDING_REPLIES: usize = 16;

/// The `auth.expired` message and the `4001` close after it.
pub fn expired_frames() -> Bytes {
    let message = ws::message(
        "auth.expired",
        &json!({ "message": "the token has expired; reconnect with a fresh one" }),
    );
    join(&[message, ws::close_frame(ws::CLOSE_EXPIRED, "token expired")])
}

/// The drain notice: `reconnect` with a jittered `retryMs`, then `1001`.
pub fn drain_frames(retry_ms: u64) -> Bytes {
    let message = ws::message("reconnect", &json!({ "retryMs": retry_ms }));
    join(&[message, ws::close_frame(ws::CLOSE_GOING_AWAY, "draining")])
}

/// `keepalive` with the current time; one message shared by every idle WebSocket of a tick.
pub fn keepalive_message(now: time::OffsetDateTime) -> Bytes {
    ws::message("keepalive", &crate::sse::keepalive_data(now))
}

fn join(frames: &[Bytes]) -> Bytes {
    let mut out = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
    for frame in frames {
        out.extend_from_slice(frame);
    }
    out.freeze()
}

/// An error message; the connection stays open.
fn error_message(error: &ApiError) -> Bytes {
    ws::message(
        "error",
        &json!({ "code": error.code(), "message": error.to_string() }),
    )
}

fn invalid_message(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_message", message)
}

/// The WebSocket framing of a session: `connected` and `history.truncated` as messages, events
/// in the connection's encoding (plain, or compressed when `permessage-deflate` was agreed).
pub struct WsFraming {
    pub encoding: Encoding,
}

impl Framing for WsFraming {
    fn encoding(&self) -> Encoding {
        self.encoding
    }

    fn opening(&self, connected: &Connected) -> Bytes {
        ws::message("connected", &connected.data())
    }

    fn truncated(&self, truncation: &Truncation) -> Bytes {
        ws::message("history.truncated", &truncation_data(truncation))
    }
}

/// A client operation.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Operation {
    Ack {
        #[serde(rename = "lastEventId")]
        last_event_id: String,
    },
    Types {
        types: Vec<String>,
    },
    Auth {
        token: String,
    },
    Ping,
}

/// What an operation that needed Redis came to.
enum Outcome {
    /// Sent as is (a confirmation or an error message).
    Reply(Bytes),
    /// A refreshed token, checked and subscribed: applied, then confirmed.
    Reauthorized(Reauthorized, Bytes),
    /// A refused refresh: this message, then close with `4403`.
    Refused(Bytes),
}

type Pending = Pin<Box<dyn Future<Output = Outcome>>>;

/// A message the client is still sending in several frames.
struct Fragments {
    compressed: bool,
    binary: bool,
    payload: BytesMut,
}

/// The response body of `GET /api/ws` after the `101`: the session's output and the replies to
/// the client's frames, on one connection.
pub struct WsStream {
    session: Session<WsFraming>,
    shard: Arc<Shard>,
    state: web::Data<AppState>,
    user: Box<str>,
    payload: web::Payload,
    /// Client bytes not yet a whole frame; released when empty, so an idle connection holds none.
    input: BytesMut,
    fragments: Option<Box<Fragments>>,
    /// The gateway's own messages, written before the session's output.
    replies: VecDeque<Bytes>,
    /// The operation being carried out; the client's next frames wait for it.
    pending: Option<Pending>,
    /// A close frame is queued: once the replies are written, the stream ends.
    closing: bool,
    ended: bool,
}

impl WsStream {
    pub fn new(
        session: Session<WsFraming>,
        shard: Arc<Shard>,
        state: web::Data<AppState>,
        user: &str,
        payload: web::Payload,
    ) -> Self {
        Self {
            session,
            shard,
            state,
            user: user.into(),
            payload,
            input: BytesMut::new(),
            fragments: None,
            replies: VecDeque::new(),
            pending: None,
            closing: false,
            ended: false,
        }
    }

    fn deflate(&self) -> bool {
        matches!(self.session.framing().encoding, Encoding::WsDeflate { .. })
    }

    /// Queues a close frame; nothing but the replies before it is written after.
    fn close(&mut self, code: u16, reason: &str) {
        if !self.closing {
            self.replies.push_back(ws::close_frame(code, reason));
            self.closing = true;
        }
    }

    /// Reads what the client sent and acts on every whole frame, until the client has nothing
    /// more now, an operation is under way, or enough replies wait. Returns `false` when the
    /// client is gone.
    fn read_client(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let deflate = self.deflate();
            while !self.closing && self.pending.is_none() && self.replies.len() < MAX_PENDING_REPLIES {
                match ws::decode(&mut self.input, deflate) {
                    Ok(Some(frame)) => self.on_frame(frame),
                    Ok(None) => break,
                    Err(error) => self.on_frame_error(&error),
                }
            }
            if self.input.is_empty() && self.input.capacity() > 0 {
                self.input = BytesMut::new();
            }
            if self.closing || self.pending.is_some() || self.replies.len() >= MAX_PENDING_REPLIES {
                return true;
            }
            match Pin::new(&mut self.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => self.input.extend_from_slice(&bytes),
                Poll::Ready(Some(Err(_)) | None) => return false,
                Poll::Pending => return true,
            }
        }
    }

    fn on_frame_error(&mut self, error: &FrameError) {
        tracing::debug!(user = %self.user, %error, "Closing a WebSocket on a bad frame.");
        self.close(error.close_code(), &error.to_string());
    }

    fn on_frame(&mut self, frame: ClientFrame) {
        match frame.opcode {
            Opcode::Ping => self
                .replies
                .push_back(ws::frame(Opcode::Pong, false, &[&frame.payload])),
            Opcode::Pong => {}
            Opcode::Close => {
                // Echo the client's code (RFC 6455 §5.5.1), a normal closure for none, and a
                // protocol error for a code no endpoint may send.
                let code = match &frame.payload[..] {
                    [] => ws::CLOSE_NORMAL,
                    [high, low, ..] if ws::may_be_sent(u16::from_be_bytes([*high, *low])) => {
                        u16::from_be_bytes([*high, *low])
                    }
                    _ => ws::CLOSE_PROTOCOL_ERROR,
                };
                self.close(code, "");
            }
            Opcode::Text | Opcode::Binary if self.fragments.is_some() => {
                self.on_frame_error(&FrameError::Protocol(
                    "a new message began inside a fragmented one",
                ));
            }
            Opcode::Text | Opcode::Binary => {
                let binary = frame.opcode == Opcode::Binary;
                if frame.fin {
                    self.on_message(frame.compressed, binary, frame.payload);
                } else {
                    self.fragments = Some(Box::new(Fragments {
                        compressed: frame.compressed,
                        binary,
                        payload: frame.payload,
                    }));
                }
            }
            Opcode::Continuation => {
                let Some(mut fragments) = self.fragments.take() else {
                    return self
                        .on_frame_error(&FrameError::Protocol("a continuation frame began a message"));
                };
                if fragments.payload.len() + frame.payload.len() > ws::MAX_CLIENT_MESSAGE {
                    return self.on_frame_error(&FrameError::TooBig);
                }
                fragments.payload.extend_from_slice(&frame.payload);
                if frame.fin {
                    self.on_message(fragments.compressed, fragments.binary, fragments.payload);
                } else {
                    self.fragments = Some(fragments);
                }
            }
        }
    }

    fn on_message(&mut self, compressed: bool, binary: bool, payload: BytesMut) {
        let payload = if compressed {
            match deflate::inflate_message(&payload, ws::MAX_CLIENT_MESSAGE) {
                Ok(inflated) => inflated,
                Err(deflate::InflateError::TooBig) => return self.on_frame_error(&FrameError::TooBig),
                Err(deflate::InflateError::Invalid) => {
                    return self.close(ws::CLOSE_INVALID_DATA, "the message is not valid deflate data");
                }
            }
        } else {
            payload.to_vec()
        };
        if binary {
            return self.reply_error(&invalid_message(
                "binary messages are not accepted; send JSON text",
            ));
        }
        let Ok(text) = std::str::from_utf8(&payload) else {
            return self.close(ws::CLOSE_INVALID_DATA, "text messages must be UTF-8");
        };
        match serde_json::from_str::<Operation>(text) {
            Ok(operation) => self.on_operation(operation),
            Err(error) => self.reply_error(&invalid_message(format!(
                "expected {{\"op\":\"ack\"|\"types\"|\"auth\"|\"ping\",...}}: {error}"
            ))),
        }
    }

    fn reply_error(&mut self, error: &ApiError) {
        self.replies.push_back(error_message(error));
    }

    fn on_operation(&mut self, operation: Operation) {
        match operation {
            Operation::Ping => {
                self.replies
                    .push_back(ws::frame(Opcode::Text, false, &[b"{\"event\":\"pong\"}"]))
            }
            Operation::Types { types } => self.change_types(&types),
            Operation::Ack { last_event_id } => self.acknowledge(last_event_id),
            Operation::Auth { token } => self.reauthorize(&token),
        }
    }

    fn change_types(&mut self, types: &[String]) {
        if let Some(entry) = types.iter().find(|entry| entry.contains(',')) {
            let message = format!("one type or prefix per entry, not {entry:?}");
            return self.reply_error(&ApiError::bad_request("invalid_query", message));
        }
        let filter = if types.is_empty() {
            None
        } else {
            match TypeFilter::parse(&types.join(",")) {
                Ok(filter) => Some(filter),
                Err(error) => {
                    return self.reply_error(&ApiError::bad_request("invalid_query", error.to_string()))
                }
            }
        };
        self.session.set_types(filter);
        self.replies
            .push_back(ws::message("types", &json!({ "types": types })));
    }

    fn acknowledge(&mut self, last_event_id: String) {
        let position = match parse_position(&last_event_id) {
            Ok(position) => position,
            Err(error) => return self.reply_error(&error),
        };
        let state = self.state.clone();
        let user = self.user.clone();
        let orgs: Vec<OrgId> = self.session.orgs();
        self.pending = Some(Box::pin(async move {
            match state.sessions.acknowledge(&user, &orgs, &position).await {
                Ok(()) => Outcome::Reply(ws::message("ack", &json!({ "lastEventId": last_event_id }))),
                Err(error) => Outcome::Reply(error_message(&error.into())),
            }
        }));
    }

    fn reauthorize(&mut self, token: &str) {
        let claims = match self.state.authenticate_token(token) {
            Ok(claims) => claims,
            Err(error) => {
                self.replies.push_back(error_message(&error));
                return self.close(ws::CLOSE_REFUSED, "the refreshed token is refused");
            }
        };
        let state = self.state.clone();
        let user = self.user.clone();
        let types = self.session.types();
        self.pending = Some(Box::pin(async move {
            match state.sessions.reauthorize(&user, &claims, types).await {
                Ok(reauthorized) => {
                    let confirmation = ws::message(
                        "auth",
                        &json!({
                            "role": claims.role,
                            "orgs": claims.orgs.iter().map(OrgId::as_str).collect::<Vec<_>>(),
                            "exp": claims.exp,
                        }),
                    );
                    Outcome::Reauthorized(reauthorized, confirmation)
                }
                Err(error) => Outcome::Refused(error_message(&error.into())),
            }
        }));
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) {
        let Some(pending) = &mut self.pending else {
            return;
        };
        let Poll::Ready(outcome) = pending.as_mut().poll(cx) else {
            return;
        };
        self.pending = None;
        match outcome {
            Outcome::Reply(reply) => self.replies.push_back(reply),
            Outcome::Reauthorized(reauthorized, confirmation) => {
                self.session.reidentify(reauthorized);
                self.replies.push_back(confirmation);
            }
            Outcome::Refused(reply) => {
                self.replies.push_back(reply);
                self.close(ws::CLOSE_REFUSED, "the refreshed token is refused");
            }
        }
    }
}

impl Stream for WsStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        // Twice: an operation finished may let more of the client's frames be read.
        for _ in 0..2 {
            if !this.read_client(cx) {
                this.ended = true;
                return Poll::Ready(None);
            }
            if this.pending.is_none() {
                break;
            }
            this.poll_pending(cx);
        }
        if !this.replies.is_empty() {
            let replies: Vec<Bytes> = this.replies.drain(..).collect();
            if this.replies.capacity() > MAX_PENDING_REPLIES {
                this.replies = VecDeque::new();
            }
            return Poll::Ready(Some(Ok(join(&replies))));
        }
        if this.closing {
            this.ended = true;
            return Poll::Ready(None);
        }
        match this.session.poll_chunk(cx) {
            Poll::Ready(Some(Chunk::Bytes(bytes))) => Poll::Ready(Some(Ok(bytes))),
            Poll::Ready(Some(Chunk::Live {
                bytes,
                events,
                oldest,
                ..
            })) => {
                if let Some(received_at) = oldest {
                    this.shard.stats().observe_delivery(events, received_at.elapsed());
                }
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_notice_is_a_reconnect_message_then_a_1001_close() {
        let frames = drain_frames(2500);
        let text_len = usize::from(frames[1]);
        let message: serde_json::Value = serde_json::from_slice(&frames[2..2 + text_len]).expect("JSON");
        assert_eq!(message, json!({"event":"reconnect","data":{"retryMs":2500}}));
        let close = &frames[2 + text_len..];
        assert_eq!(close[0], 0x88);
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), ws::CLOSE_GOING_AWAY);
    }

    #[test]
    fn operations_are_read_by_their_op() {
        assert!(matches!(
            serde_json::from_str(r#"{"op":"ping"}"#),
            Ok(Operation::Ping)
        ));
        assert!(matches!(
            serde_json::from_str(r#"{"op":"types","types":["ticket.*"]}"#),
            Ok(Operation::Types { types }) if types == ["ticket.*"]
        ));
        assert!(serde_json::from_str::<Operation>(r#"{"op":"subscribe"}"#).is_err());
        assert!(serde_json::from_str::<Operation>(r#"{"op":"ack"}"#).is_err());
    }
}
