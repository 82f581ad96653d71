//! The only code that knows where events come from and where history lives: Redis (pub/sub,
//! Streams, a Redis Function) or the embedded in-process broker with the same behaviour.

mod embedded;
mod redis;
mod registry;
mod subscriptions;

use std::sync::Arc;

pub use self::embedded::EmbeddedBroker;
pub use self::redis::{publish_once, RedisBroker};
pub use self::registry::{ConnectionsReport, Permit, Registry, HEARTBEAT_INTERVAL};
pub use self::subscriptions::Lease;

use crate::event::{Envelope, Event, EventId, OrgId};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the broker is not reachable: {0}")]
    Unavailable(String),
    /// The publish Function refused an envelope; the reason is its own sentence, safe to show.
    #[error("the broker refused the event: {0}")]
    Rejected(String),
    /// Redis answered an error or something unexpected. The detail is for the log only: it
    /// may hold Redis internals.
    #[error("the broker failed: {0}")]
    Failed(String),
}

/// One validated envelope to publish durably.
pub struct PublishItem {
    pub org: OrgId,
    /// The envelope as received, forwarded verbatim to Redis.
    pub raw: String,
    pub envelope: Envelope,
}

/// Where a replay starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayFrom {
    /// Everything after this id (`Last-Event-ID`, `since=ack`).
    After(EventId),
    /// Everything published at or after this time, in milliseconds since the epoch (`since=`).
    Since(u64),
}

impl ReplayFrom {
    fn admits(self, id: EventId) -> bool {
        match self {
            Self::After(after) => id > after,
            Self::Since(millis) => id >= EventId::first_at(millis),
        }
    }

    /// The last id that the replay starts after: the start is within retained history when no
    /// event newer than this has been trimmed.
    fn boundary(self) -> EventId {
        match self {
            Self::After(after) => after,
            Self::Since(millis) => match millis.checked_sub(1) {
                Some(before) => EventId {
                    millis: before,
                    seq: u64::MAX,
                },
                None => EventId { millis: 0, seq: 0 },
            },
        }
    }
}

/// Why a replay cannot give a client everything after its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TruncationReason {
    /// Events after the position were trimmed by count or age.
    Trimmed,
    /// The position is not one this history issued (history lost by Redis, or a forged id):
    /// the replay starts from what is kept.
    Reset,
}

impl TruncationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trimmed => "trimmed",
            Self::Reset => "reset",
        }
    }
}

/// Told to the client before a replay that cannot start where it asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// The oldest id still kept, if any event is.
    pub oldest_id: Option<EventId>,
    pub reason: TruncationReason,
}

/// Durable events to send before live ones.
#[derive(Debug)]
pub struct Replay {
    /// Oldest first, across every requested org.
    pub events: Vec<Arc<Event>>,
    /// Set when the replay cannot start at the requested position.
    pub truncated: Option<Truncation>,
    /// Every durable event up to this id has been replayed or deliberately skipped: live
    /// events up to it are duplicates.
    pub replayed_through: Option<EventId>,
}

impl Replay {
    /// No replay: the stream starts with live events.
    pub fn none() -> Self {
        Self {
            events: Vec::new(),
            truncated: None,
            replayed_through: None,
        }
    }
}

/// One snapshot of several orgs' history, before the start is checked.
#[derive(Debug, Default)]
struct Snapshot {
    events: Vec<Arc<Event>>,
    /// Set when events after the start were trimmed: the oldest id still kept.
    trimmed: Option<EventId>,
    /// The oldest id kept across the orgs.
    oldest_kept: Option<EventId>,
    /// The newest id in the snapshot, replayed or not.
    high_water: Option<EventId>,
    /// The newest id this history ever issued (any org).
    last_issued: Option<EventId>,
}

impl Snapshot {
    /// The replay of this snapshot taken from `from`, or `None` when `from` is an id this
    /// history never issued (the caller then replays from the oldest kept event).
    fn into_replay(self, from: ReplayFrom) -> Option<Replay> {
        if let ReplayFrom::After(after) = from {
            if self.last_issued.is_none_or(|last| after > last) {
                return None;
            }
        }
        let replayed_through = match from {
            ReplayFrom::After(after) => self.high_water.max(Some(after)),
            ReplayFrom::Since(_) => self.high_water,
        };
        Some(Replay {
            events: self.events,
            truncated: self.trimmed.map(|oldest| Truncation {
                oldest_id: Some(oldest),
                reason: TruncationReason::Trimmed,
            }),
            replayed_through,
        })
    }

    /// The replay of a snapshot taken from the oldest kept event, for a start that was unknown.
    fn into_reset_replay(self) -> Replay {
        Replay {
            truncated: Some(Truncation {
                oldest_id: self.oldest_kept,
                reason: TruncationReason::Reset,
            }),
            replayed_through: self.high_water,
            events: self.events,
        }
    }
}

/// The broker in use: Redis (the scalable mode) or the embedded one (a single replica).
#[derive(Clone)]
pub enum Broker {
    Redis(Arc<RedisBroker>),
    Embedded(Arc<EmbeddedBroker>),
}

impl Broker {
    /// Whether the broker can serve subscriptions and publishes now.
    pub fn is_ready(&self) -> bool {
        match self {
            Self::Redis(redis) => redis.is_ready(),
            Self::Embedded(_) => true,
        }
    }

    /// Makes sure this replica receives the events of `orgs` before returning: once this
    /// returns, no event published to them is missed while the lease lives.
    pub async fn subscribe(&self, orgs: &[OrgId]) -> Result<Lease, BrokerError> {
        match self {
            Self::Redis(redis) => redis.subscribe(orgs).await,
            Self::Embedded(_) => Ok(Lease::local()),
        }
    }

    /// Appends the events to their orgs' history and publishes them, in order; returns their ids.
    pub async fn publish(&self, items: Vec<PublishItem>) -> Result<Vec<EventId>, BrokerError> {
        match self {
            Self::Redis(redis) => redis.publish(&items).await,
            Self::Embedded(embedded) => Ok(embedded.publish(items)),
        }
    }

    /// The durable events of `orgs` from `from` on, as one consistent snapshot. A start id
    /// that this history never issued is an unknown position, never a reason for silence: the
    /// replay then starts from the oldest kept event, after a `Reset` truncation.
    pub async fn replay(&self, orgs: &[OrgId], from: ReplayFrom) -> Result<Replay, BrokerError> {
        if let Some(replay) = self.snapshot(orgs, from).await?.into_replay(from) {
            return Ok(replay);
        }
        Ok(self
            .snapshot(orgs, ReplayFrom::Since(0))
            .await?
            .into_reset_replay())
    }

    async fn snapshot(&self, orgs: &[OrgId], from: ReplayFrom) -> Result<Snapshot, BrokerError> {
        match self {
            Self::Redis(redis) => redis.snapshot(orgs, from).await,
            Self::Embedded(embedded) => Ok(embedded.snapshot(orgs, from)),
        }
    }

    /// Whether `id` is one this history issued (or could have: it is not after the newest id
    /// handed out).
    pub async fn was_issued(&self, id: EventId) -> Result<bool, BrokerError> {
        let last = match self {
            Self::Redis(redis) => redis.last_issued().await?,
            Self::Embedded(embedded) => embedded.last_issued(),
        };
        Ok(last.is_some_and(|last| id <= last))
    }

    /// Stores a user's acknowledged cursor.
    pub async fn save_ack(&self, user: &str, id: EventId) -> Result<(), BrokerError> {
        match self {
            Self::Redis(redis) => redis.save_ack(user, id).await,
            Self::Embedded(embedded) => {
                embedded.save_ack(user, id);
                Ok(())
            }
        }
    }

    /// A user's acknowledged cursor, if any.
    pub async fn load_ack(&self, user: &str) -> Result<Option<EventId>, BrokerError> {
        match self {
            Self::Redis(redis) => redis.load_ack(user).await,
            Self::Embedded(embedded) => Ok(embedded.load_ack(user)),
        }
    }
}

/// Merges per-org replays (each oldest first) into one list ordered by id.
fn merge_by_id(per_org: Vec<Vec<Arc<Event>>>) -> Vec<Arc<Event>> {
    let mut events: Vec<Arc<Event>> = per_org.into_iter().flatten().collect();
    events.sort_by_key(|event| event.id);
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_from_an_id_excludes_it() {
        let from = ReplayFrom::After(EventId { millis: 10, seq: 2 });
        assert!(!from.admits(EventId { millis: 10, seq: 2 }));
        assert!(from.admits(EventId { millis: 10, seq: 3 }));
    }

    #[test]
    fn replay_since_a_time_includes_events_of_that_millisecond() {
        let from = ReplayFrom::Since(10);
        assert!(from.admits(EventId { millis: 10, seq: 0 }));
        assert!(!from.admits(EventId { millis: 9, seq: 99 }));
        assert_eq!(
            from.boundary(),
            EventId {
                millis: 9,
                seq: u64::MAX
            }
        );
    }
}
