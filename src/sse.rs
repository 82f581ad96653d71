//! One client's stream: the opening frames (retry, connected, replay) and then whatever the hub
//! queues for it, written as one chunk per wake-up. Dropping it (client gone, stream ended)
//! unregisters the connection and releases its org subscriptions.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_core::Stream;
use serde_json::json;

use crate::broker::{Lease, Permit, Replay};
use crate::clock::unix_secs;
use crate::event::EventId;
use crate::hub::{Output, Shard, Subscriber};
use crate::limits::StreamSlot;

/// `retry: <ms>` — how long the client waits before reconnecting.
pub fn retry_frame(millis: u64) -> Bytes {
    Bytes::from(format!("retry: {millis}\n\n"))
}

/// `event: keepalive` with the current time; one frame shared by every idle stream of a tick.
pub fn keepalive_frame(now: time::OffsetDateTime) -> Bytes {
    let time = now
        .replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Bytes::from(format!("event: keepalive\ndata: {}\n\n", json!({ "time": time })))
}

/// `event: auth.expired`, sent before a stream whose token expired is closed.
pub fn expired_frame() -> Bytes {
    Bytes::from_static(
        b"event: auth.expired\ndata: {\"message\":\"the token has expired; reconnect with a fresh one\"}\n\n",
    )
}

/// What the `connected` event tells the client.
pub struct ConnectedInfo<'a> {
    pub connection_id: String,
    pub user_id: &'a str,
    pub role: &'a str,
    pub orgs: Vec<&'a str>,
    pub replica: &'a str,
    pub keepalive_secs: u64,
}

/// The frames a stream starts with: `retry:`, `connected`, then the replay (with
/// `history.truncated` first when the replay cannot start where the client asked).
pub fn opening_frames(
    retry_ms: u64,
    connected: &ConnectedInfo<'_>,
    replay: &Replay,
    subscriber: &Subscriber,
) -> Bytes {
    let connected_data = json!({
        "connectionId": connected.connection_id,
        "userId": connected.user_id,
        "role": connected.role,
        "orgs": connected.orgs,
        "replica": connected.replica,
        "keepaliveSecs": connected.keepalive_secs,
    });
    let mut frames = BytesMut::with_capacity(256);
    frames.put_slice(&retry_frame(retry_ms));
    frames.put_slice(format!("event: connected\ndata: {connected_data}\n\n").as_bytes());
    if let Some(truncation) = &replay.truncated {
        let oldest_id = truncation.oldest_id.map(|id| id.to_string()).unwrap_or_default();
        frames.put_slice(
            format!(
                "event: history.truncated\ndata: {}\n\n",
                json!({ "oldestId": oldest_id, "reason": truncation.reason.as_str() })
            )
            .as_bytes(),
        );
    }
    for event in replay.events.iter().filter(|event| subscriber.may_see(event)) {
        frames.put_slice(event.frame());
    }
    frames.freeze()
}

pub struct EventStream {
    opening: Option<Bytes>,
    subscriber: Arc<Subscriber>,
    shard: Arc<Shard>,
    /// The newest durable id the replay covered: queued live copies up to it are skipped.
    replayed_through: Option<EventId>,
    /// Keeps this replica subscribed to the stream's orgs, and the stream counted against the
    /// user's limit and the replica's, while the stream lives.
    _held: (Lease, Permit, StreamSlot),
}

impl EventStream {
    pub fn new(
        opening: Bytes,
        subscriber: Arc<Subscriber>,
        shard: Arc<Shard>,
        replayed_through: Option<EventId>,
        held: (Lease, Permit, StreamSlot),
    ) -> Self {
        Self {
            opening: Some(opening),
            subscriber,
            shard,
            replayed_through,
            _held: held,
        }
    }
}

impl Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(opening) = this.opening.take() {
            return Poll::Ready(Some(Ok(opening)));
        }
        match this
            .subscriber
            .take(cx.waker(), this.replayed_through, unix_secs())
        {
            Output::Frames {
                bytes,
                events,
                oldest,
            } => {
                let stats = this.shard.stats();
                if events > 0 {
                    stats.events_delivered(events);
                }
                if let Some(received_at) = oldest {
                    stats.observe_fanout(received_at.elapsed());
                }
                Poll::Ready(Some(Ok(bytes)))
            }
            Output::Pending => Poll::Pending,
            Output::Ended => Poll::Ready(None),
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.shard.unregister(&self.subscriber);
        tracing::debug!(conn = self.subscriber.id, "Stream closed.");
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
