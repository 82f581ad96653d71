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
    #[error("the broker refused the event: {0}")]
    Rejected(String),
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

/// Durable events to send before live ones.
#[derive(Debug, Default)]
pub struct Replay {
    /// Oldest first, across every requested org.
    pub events: Vec<Arc<Event>>,
    /// Set when events after the start were already trimmed: the oldest id still kept.
    pub truncated: Option<String>,
    /// The newest id the snapshot saw, replayed or not: live events up to it are duplicates.
    pub high_water: Option<EventId>,
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

    /// The durable events of `orgs` from `from` on, as one consistent snapshot.
    pub async fn replay(&self, orgs: &[OrgId], from: ReplayFrom) -> Result<Replay, BrokerError> {
        match self {
            Self::Redis(redis) => redis.replay(orgs, from).await,
            Self::Embedded(embedded) => Ok(embedded.replay(orgs, from)),
        }
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
