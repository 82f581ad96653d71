//! The only code that knows where events come from and where history lives: Redis (pub/sub,
//! Streams, a Redis Function) or the embedded in-process broker with the same behaviour.

mod commands;
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

/// `[redis]`: where the broker is.
#[derive(Debug, serde::Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://` or `rediss://`; empty: the embedded broker. In cluster mode, one or several
    /// seed nodes, comma-separated.
    pub url: String,
    /// Redis Cluster mode (`SSUBSCRIBE`, keys tagged per org, routed commands).
    pub cluster: bool,
    /// `POST /api/publish` answers `202` only once this many replicas of the org's Redis hold
    /// the events (`WAIT`); `0`: once the primary has them.
    pub min_replicas_ack: u32,
    /// Seconds an org stays subscribed after its last local stream leaves.
    pub unsubscribe_linger_secs: u64,
}

/// `[history]`: what durable history is kept and how it is replayed.
#[derive(Debug, serde::Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HistorySettings {
    pub retention_secs: u64,
    pub max_events_per_org: usize,
    /// Replays a replica runs at once; a stream waiting for its turn is open and has its
    /// `connected` event.
    pub max_concurrent_replays: usize,
}

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
    /// Published, but fewer replicas than `redis.min_replicas_ack` confirmed it in time.
    #[error("published, but only {held} of the {wanted} replicas required confirmed it in time")]
    NotReplicated { wanted: u32, held: i64 },
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

/// One org's place in a replay: the next page starts there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgCursor {
    pub org: OrgId,
    pub from: ReplayFrom,
}

/// What one page read found for one org.
#[derive(Debug)]
pub struct OrgPage {
    pub org: OrgId,
    /// Oldest first, at most the count asked for. Entries that no longer decode are counted as
    /// dropped and skipped.
    pub events: Vec<Arc<Event>>,
    /// The newest id read, decodable or not: the next page starts after it.
    pub read_through: Option<EventId>,
    /// Set when events after the cursor were trimmed: the oldest id still kept.
    pub trimmed: Option<EventId>,
    /// The oldest id kept for the org, if any.
    pub oldest_kept: Option<EventId>,
    /// Fewer entries than asked for: the org has nothing more after `read_through` for now.
    pub exhausted: bool,
    /// The newest id ever issued to the org (in standalone mode: to any org, ids being global):
    /// a cursor after it was never issued.
    pub last_issued: Option<EventId>,
    /// The first id issued since Redis last lost the org's history (a restart without
    /// persistence, a flush): a cursor before it belongs to a history that is gone.
    pub epoch_start: Option<EventId>,
}

/// One bounded read of several orgs' history.
#[derive(Debug)]
pub struct Page {
    pub orgs: Vec<OrgPage>,
}

/// What an org's history knows besides its entries, as a page read finds it.
#[derive(Debug, Default, Clone, Copy)]
struct HistoryBounds {
    /// The newest id trimming removed.
    max_deleted: Option<EventId>,
    oldest_kept: Option<EventId>,
    last_issued: Option<EventId>,
    epoch_start: Option<EventId>,
}

impl OrgPage {
    /// Builds the page of one org from its entries (oldest first, `count` asked for).
    fn new(
        org: OrgId,
        from: ReplayFrom,
        entries: Vec<(EventId, Result<Arc<Event>, crate::event::EnvelopeError>)>,
        count: usize,
        bounds: HistoryBounds,
    ) -> Self {
        let HistoryBounds {
            max_deleted,
            oldest_kept,
            last_issued,
            epoch_start,
        } = bounds;
        let exhausted = entries.len() < count;
        let read_through = entries.last().map(|(id, _)| *id);
        let events = entries
            .into_iter()
            .filter_map(|(_, decoded)| match decoded {
                Ok(event) => Some(event),
                Err(error) => {
                    crate::metrics::METRICS.event_dropped(error.reason());
                    None
                }
            })
            .collect();
        let trimmed = max_deleted
            .filter(|deleted| *deleted > from.boundary())
            .and(oldest_kept.or(max_deleted));
        Self {
            org,
            events,
            read_through,
            trimmed,
            oldest_kept,
            exhausted,
            last_issued,
            epoch_start,
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

    /// One page of the orgs' history, at most `count_per_org` events each, every org from its
    /// own cursor. Each call does bounded work in Redis, whatever the history's size.
    pub async fn read_page(&self, cursors: &[OrgCursor], count_per_org: usize) -> Result<Page, BrokerError> {
        match self {
            Self::Redis(redis) => redis.read_page(cursors, count_per_org).await,
            Self::Embedded(embedded) => Ok(embedded.read_page(cursors, count_per_org)),
        }
    }

    /// Whether `id` is one this history issued to one of `orgs` (or could have: it is not after
    /// the newest id handed out).
    pub async fn was_issued(&self, orgs: &[OrgId], id: EventId) -> Result<bool, BrokerError> {
        let last = match self {
            Self::Redis(redis) => redis.last_issued(orgs).await?,
            Self::Embedded(embedded) => embedded.last_issued(),
        };
        Ok(last.is_some_and(|last| id <= last))
    }

    /// Stores a user's acknowledged position in each org named; the user's positions in other
    /// orgs are left as they were.
    pub async fn save_acks(&self, user: &str, positions: &[(OrgId, EventId)]) -> Result<(), BrokerError> {
        if positions.is_empty() {
            return Ok(());
        }
        match self {
            Self::Redis(redis) => redis.save_acks(user, positions).await,
            Self::Embedded(embedded) => {
                embedded.save_acks(user, positions);
                Ok(())
            }
        }
    }

    /// Whether ids are ordered per org only (Redis Cluster mode), so that a stream of several
    /// orgs resumes from a cursor of per-org positions rather than from one id.
    pub fn ids_per_org(&self) -> bool {
        match self {
            Self::Redis(redis) => redis.is_cluster(),
            Self::Embedded(_) => false,
        }
    }

    /// A user's acknowledged positions in those of `orgs` that have one.
    pub async fn load_acks(&self, user: &str, orgs: &[OrgId]) -> Result<Vec<(OrgId, EventId)>, BrokerError> {
        match self {
            Self::Redis(redis) => redis.load_acks(user, orgs).await,
            Self::Embedded(embedded) => Ok(embedded.load_acks(user, orgs)),
        }
    }
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
