//! How a stream's bytes look on the wire, per transport: the encodings an event is written in
//! (each built once per replica, lazily, and shared by every connection that uses it) and the
//! few frames that are the stream's own (keepalives, closing frames). No IO.

pub mod deflate;
pub mod gzip;
pub mod ws;

use bytes::Bytes;

use crate::event::Event;

/// The encoding of one connection's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `text/event-stream` frames.
    Sse,
    /// `text/event-stream` in one gzip stream (`Content-Encoding: gzip`): each event's frame is
    /// a piece compressed once per replica (stored when under `min_bytes`), the stream's own
    /// bytes are stored pieces, and a catch-up burst is compressed as one unit (`gzip`).
    SseGzip { min_bytes: u32 },
    /// One WebSocket text message per event.
    Ws,
    /// WebSocket with `permessage-deflate` (no context takeover): events of at least
    /// `min_bytes` are sent compressed, each compressed once per replica.
    WsDeflate { min_bytes: u32 },
}

impl Encoding {
    /// Every encoding, for tables built once per tick (`PerEncoding`).
    const COUNT: usize = 4;

    fn index(self) -> usize {
        match self {
            Self::Sse => 0,
            Self::Ws => 1,
            Self::WsDeflate { .. } => 2,
            Self::SseGzip { .. } => 3,
        }
    }

    /// For a gzip stream, the size under which an event is stored rather than compressed.
    pub fn gzip(self) -> Option<u32> {
        match self {
            Self::SseGzip { min_bytes } => Some(min_bytes),
            _ => None,
        }
    }

    /// The transport, for logs and metrics.
    pub fn transport(self) -> &'static str {
        match self {
            Self::Sse | Self::SseGzip { .. } => "sse",
            Self::Ws | Self::WsDeflate { .. } => "ws",
        }
    }

    /// `event` as every recipient in this encoding receives it (with its id if durable). A gzip
    /// stream gets the plain frame here, as the rest of a chunk its transport compresses as
    /// one unit (a replay page); the hub writes its shared piece instead (`Event::sse_gzip`).
    pub fn event(self, event: &Event) -> Bytes {
        match self {
            Self::Sse | Self::SseGzip { .. } => event.frame().clone(),
            Self::Ws => event.ws().frame.clone(),
            Self::WsDeflate { min_bytes } => match event.ws_deflated(min_bytes) {
                Some(deflated) => deflated.frame.clone(),
                None => event.ws().frame.clone(),
            },
        }
    }

    /// `event` without its id: it overtook queued durable events, and a resume from its id
    /// would skip them.
    pub fn event_without_id(self, event: &Event) -> Bytes {
        match self {
            Self::Sse | Self::SseGzip { .. } => event.frame_without_id(),
            Self::Ws | Self::WsDeflate { .. } => self.event_with_tail(event, ws::TAIL_WITHOUT_ID),
        }
    }

    /// `event` carrying `position` (a stream's own resume cursor) as its id. The event's
    /// shared encoding is copied once, with the cursor after it.
    pub fn event_with_cursor(self, event: &Event, position: &str) -> Bytes {
        match self {
            Self::Sse | Self::SseGzip { .. } => {
                let body = event.frame_body();
                let mut frame = Vec::with_capacity(body.len() + position.len() + 6);
                frame.extend_from_slice(&body);
                frame.extend_from_slice(b"id: ");
                frame.extend_from_slice(position.as_bytes());
                frame.extend_from_slice(b"\n\n");
                Bytes::from(frame)
            }
            Self::Ws | Self::WsDeflate { .. } => self.event_with_tail(event, &ws::id_tail(position)),
        }
    }

    /// A WebSocket message of `event`'s shared head and this stream's `tail`: compressed as the
    /// shared deflated head plus the tail as a stored block, so nothing is compressed per stream.
    fn event_with_tail(self, event: &Event, tail: &[u8]) -> Bytes {
        let encoded = event.ws();
        if let Self::WsDeflate { min_bytes } = self {
            if let Some(deflated) = event.ws_deflated(min_bytes) {
                let mut payload = Vec::with_capacity(deflated.head.len() + tail.len() + 5);
                payload.extend_from_slice(&deflated.head);
                deflate::stored_block(tail, &mut payload);
                return ws::frame(ws::Opcode::Text, true, &[&payload]);
            }
        }
        ws::frame(ws::Opcode::Text, false, &[&encoded.head, tail])
    }

    /// What a stream cut as a slow consumer is sent last, if anything (SSE just ends).
    pub fn slow_consumer_close(self) -> Option<Bytes> {
        match self {
            Self::Sse | Self::SseGzip { .. } => None,
            Self::Ws | Self::WsDeflate { .. } => Some(ws::close_frame(ws::CLOSE_SLOW, "slow consumer")),
        }
    }
}

/// One frame per encoding, built once and handed to every stream of that encoding (a tick's
/// keepalive, the expiry notice).
pub struct PerEncoding([Bytes; Encoding::COUNT]);

impl PerEncoding {
    pub fn build(mut frame: impl FnMut(Encoding) -> Bytes) -> Self {
        Self([
            frame(Encoding::Sse),
            frame(Encoding::Ws),
            frame(Encoding::WsDeflate { min_bytes: 0 }),
            frame(Encoding::SseGzip { min_bytes: 0 }),
        ])
    }

    pub fn of(&self, encoding: Encoding) -> &Bytes {
        &self.0[encoding.index()]
    }
}
