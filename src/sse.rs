//! Server-Sent Events: the framing of a session (`SseFraming`), the response body that writes it
//! (`EventStream`), and the protocol frames shared by every stream (retry, keepalive, expiry).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_core::Stream;
use serde_json::json;

use crate::broker::Truncation;
use crate::hub::Shard;
use crate::session::{truncation_data, Chunk, Connected, Framing, Session};
use crate::wire::gzip::{self, Tally};
use crate::wire::Encoding;

/// `retry: <ms>` — how long the client waits before reconnecting.
pub fn retry_frame(millis: u64) -> Bytes {
    Bytes::from(format!("retry: {millis}\n\n"))
}

/// What a keepalive says, in every transport: the current time, to the second.
pub fn keepalive_data(now: time::OffsetDateTime) -> serde_json::Value {
    let time = now
        .replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    json!({ "time": time })
}

/// `event: keepalive` with the current time; one frame shared by every idle stream of a tick.
pub fn keepalive_frame(now: time::OffsetDateTime) -> Bytes {
    Bytes::from(format!("event: keepalive\ndata: {}\n\n", keepalive_data(now)))
}

/// `event: auth.expired`, sent before a stream whose token expired is closed.
pub fn expired_frame() -> Bytes {
    Bytes::from_static(
        b"event: auth.expired\ndata: {\"message\":\"the token has expired; reconnect with a fresh one\"}\n\n",
    )
}

/// The SSE framing of a session: `retry:` and `connected` first, `history.truncated` when a
/// replay cannot start where asked, and every event as its shared, pre-encoded frame (plain,
/// or a piece of a gzip stream).
pub struct SseFraming {
    /// `sse.retry_ms`, sent at connect.
    pub retry_ms: u64,
    pub encoding: Encoding,
}

impl Framing for SseFraming {
    fn encoding(&self) -> Encoding {
        self.encoding
    }

    fn opening(&self, connected: &Connected) -> Bytes {
        let connected_data = connected.data();
        let mut frames = BytesMut::with_capacity(256);
        frames.put_slice(&retry_frame(self.retry_ms));
        frames.put_slice(format!("event: connected\ndata: {connected_data}\n\n").as_bytes());
        frames.freeze()
    }

    fn truncated(&self, truncation: &Truncation) -> Bytes {
        let data = truncation_data(truncation);
        Bytes::from(format!("event: history.truncated\ndata: {data}\n\n"))
    }
}

/// The response body of `GET /api/events`: a session, written as SSE.
pub struct EventStream {
    session: Session<SseFraming>,
    /// This worker's delivery counters.
    shard: Arc<Shard>,
    /// A compressed stream's state: 16 bytes, no compressor.
    gzip: Option<GzipState>,
}

/// Where a compressed stream is: the tally of what it sent so far, for its trailer.
struct GzipState {
    min_bytes: u32,
    sent: Tally,
    started: bool,
    ended: bool,
}

impl GzipState {
    /// `wire` (pieces standing for `tally`), behind the gzip header if it is the first.
    fn write(&mut self, wire: Bytes, tally: Tally) -> Bytes {
        self.sent = self.sent.then(tally);
        if self.started {
            return wire;
        }
        self.started = true;
        let mut out = BytesMut::with_capacity(gzip::HEADER.len() + wire.len());
        out.put_slice(&gzip::HEADER);
        out.put_slice(&wire);
        out.freeze()
    }
}

impl EventStream {
    pub fn new(session: Session<SseFraming>, shard: Arc<Shard>) -> Self {
        let gzip = session.framing().encoding.gzip().map(|min_bytes| GzipState {
            min_bytes,
            sent: Tally::default(),
            started: false,
            ended: false,
        });
        Self { session, shard, gzip }
    }
}

impl Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.gzip.as_ref().is_some_and(|gzip| gzip.ended) {
            return Poll::Ready(None);
        }
        match this.session.poll_chunk(cx) {
            Poll::Ready(Some(Chunk::Bytes(bytes))) => Poll::Ready(Some(Ok(match &mut this.gzip {
                // The opening, a replay page: compressed here as one unit.
                Some(gzip) => {
                    let piece = gzip::Piece::compressed(&bytes, gzip.min_bytes);
                    gzip.write(piece.bytes, piece.tally)
                }
                None => bytes,
            }))),
            Poll::Ready(Some(Chunk::Live {
                bytes,
                events,
                oldest,
                gzip: tally,
            })) => {
                if let Some(received_at) = oldest {
                    this.shard.stats().observe_delivery(events, received_at.elapsed());
                }
                Poll::Ready(Some(Ok(match (&mut this.gzip, tally) {
                    (Some(gzip), Some(tally)) => gzip.write(bytes, tally),
                    _ => bytes,
                })))
            }
            Poll::Ready(None) => match &mut this.gzip {
                // A clean end closes the gzip stream, so decoders see a complete, checked body.
                Some(gzip) if gzip.started && !gzip.ended => {
                    gzip.ended = true;
                    Poll::Ready(Some(Ok(Bytes::copy_from_slice(&gzip.sent.trailer()))))
                }
                _ => Poll::Ready(None),
            },
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_carries_an_rfc3339_time() {
        let now = time::macros::datetime!(2026-11-27 06:09:03.5 UTC);
        assert_eq!(
            &keepalive_frame(now)[..],
            b"event: keepalive\ndata: {\"time\":\"2026-11-27T06:09:03Z\"}\n\n"
        );
    }

    #[test]
    fn retry_frame_is_a_bare_retry_field() {
        assert_eq!(&retry_frame(3000)[..], b"retry: 3000\n\n");
    }
}
