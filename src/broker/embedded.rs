//! The embedded broker: one process, history in memory (bounded like Redis's), the same ids,
//! replay and acknowledgements. Used when `redis.url` is empty.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{merge_by_id, PublishItem, ReplayFrom, Snapshot};
use crate::clock::unix_millis;
use crate::event::{Event, EventId, OrgId};
use crate::hub::Hub;
use crate::metrics::{Source, METRICS};

pub struct EmbeddedBroker {
    hub: Arc<Hub>,
    /// Ids, history and dispatch change under this one lock, so every connection sees events in
    /// id order and a replay snapshot is consistent with what is dispatched after it.
    state: Mutex<State>,
    acks: Mutex<HashMap<String, EventId>>,
    retention_millis: u64,
    max_events_per_org: usize,
}

#[derive(Default)]
struct State {
    last_id: Option<EventId>,
    orgs: HashMap<OrgId, OrgHistory>,
}

#[derive(Default)]
struct OrgHistory {
    events: VecDeque<Arc<Event>>,
    /// The newest id trimmed away, to tell a client its cursor is older than what is kept.
    max_deleted: Option<EventId>,
}

impl OrgHistory {
    fn trim(&mut self, now: u64, retention_millis: u64, max_events: usize) {
        let oldest_kept = now.saturating_sub(retention_millis);
        while let Some(front) = self.events.front() {
            let too_many = self.events.len() > max_events;
            let too_old = front.id.is_some_and(|id| id.millis < oldest_kept);
            if !too_many && !too_old {
                break;
            }
            self.max_deleted = front.id;
            self.events.pop_front();
        }
    }
}

impl EmbeddedBroker {
    pub fn new(hub: Arc<Hub>, retention_secs: u64, max_events_per_org: usize) -> Self {
        Self {
            hub,
            state: Mutex::new(State::default()),
            acks: Mutex::new(HashMap::new()),
            retention_millis: retention_secs.saturating_mul(1000),
            max_events_per_org,
        }
    }

    pub fn publish(&self, items: Vec<PublishItem>) -> Vec<EventId> {
        let mut state = self.state.lock();
        let mut ids = Vec::with_capacity(items.len());
        for item in items {
            let now = unix_millis();
            let id = match state.last_id {
                Some(last) => last.next_after(now),
                None => EventId::first_at(now),
            };
            state.last_id = Some(id);
            let event = Arc::new(Event::new(item.org.clone(), Some(id), item.envelope));
            let history = state.orgs.entry(item.org).or_default();
            history.events.push_back(event.clone());
            history.trim(now, self.retention_millis, self.max_events_per_org);
            METRICS.event_received(Source::Durable);
            self.hub.publish(&event);
            ids.push(id);
        }
        ids
    }

    pub(super) fn snapshot(&self, orgs: &[OrgId], from: ReplayFrom) -> Snapshot {
        let now = unix_millis();
        let mut state = self.state.lock();
        let mut snapshot = Snapshot {
            last_issued: state.last_id,
            ..Snapshot::default()
        };
        let mut per_org = Vec::with_capacity(orgs.len());
        for org in orgs {
            let Some(history) = state.orgs.get_mut(org) else {
                continue;
            };
            history.trim(now, self.retention_millis, self.max_events_per_org);
            let oldest = history.events.front().and_then(|e| e.id);
            if let Some(oldest) = oldest {
                snapshot.oldest_kept = Some(snapshot.oldest_kept.map_or(oldest, |o| o.min(oldest)));
            }
            if history
                .max_deleted
                .is_some_and(|deleted| deleted > from.boundary())
            {
                if let Some(oldest) = oldest.or(history.max_deleted) {
                    snapshot.trimmed = Some(snapshot.trimmed.map_or(oldest, |t| t.min(oldest)));
                }
            }
            snapshot.high_water = snapshot.high_water.max(history.events.back().and_then(|e| e.id));
            per_org.push(
                history
                    .events
                    .iter()
                    .filter(|event| event.id.is_some_and(|id| from.admits(id)))
                    .cloned()
                    .collect(),
            );
        }
        snapshot.events = merge_by_id(per_org);
        snapshot
    }

    /// The newest id handed out, if any.
    pub fn last_issued(&self) -> Option<EventId> {
        self.state.lock().last_id
    }

    pub fn save_ack(&self, user: &str, id: EventId) {
        self.acks.lock().insert(user.to_string(), id);
    }

    pub fn load_ack(&self, user: &str) -> Option<EventId> {
        self.acks.lock().get(user).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Broker, Replay, Truncation, TruncationReason};
    use crate::event::Envelope;

    fn item(org: &str, n: u32) -> PublishItem {
        let raw = format!(r#"{{"type":"a.b","data":{{"n":{n}}}}}"#);
        PublishItem {
            org: OrgId::parse(org).expect("valid"),
            envelope: Envelope::parse(raw.as_bytes(), 65536).expect("valid"),
            raw,
        }
    }

    fn broker(max_events: usize) -> Broker {
        Broker::Embedded(Arc::new(EmbeddedBroker::new(
            Arc::new(Hub::new(16)),
            3600,
            max_events,
        )))
    }

    fn publish(broker: &Broker, items: Vec<PublishItem>) -> Vec<EventId> {
        match broker {
            Broker::Embedded(embedded) => embedded.publish(items),
            Broker::Redis(_) => unreachable!("an embedded broker"),
        }
    }

    fn orgs(names: &[&str]) -> Vec<OrgId> {
        names.iter().map(|o| OrgId::parse(o).expect("valid")).collect()
    }

    async fn replay(broker: &Broker, orgs: &[OrgId], from: ReplayFrom) -> Replay {
        broker
            .replay(orgs, from)
            .await
            .expect("the embedded broker never fails")
    }

    fn ids_of(replay: &Replay) -> Vec<EventId> {
        replay.events.iter().filter_map(|e| e.id).collect()
    }

    #[test]
    fn ids_increase_across_orgs() {
        let broker = broker(100);
        let ids = publish(&broker, vec![item("a", 1), item("b", 2), item("a", 3)]);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }

    #[tokio::test]
    async fn replay_after_an_id_merges_orgs_in_id_order() {
        let broker = broker(100);
        let ids = publish(
            &broker,
            vec![item("a", 1), item("b", 2), item("a", 3), item("c", 4)],
        );
        let replay = replay(&broker, &orgs(&["a", "b"]), ReplayFrom::After(ids[0])).await;
        assert_eq!(ids_of(&replay), vec![ids[1], ids[2]]);
        assert_eq!(replay.truncated, None);
        assert_eq!(replay.replayed_through, Some(ids[2]));
    }

    #[tokio::test]
    async fn history_is_bounded_and_reports_truncation() {
        let broker = broker(2);
        let ids = publish(
            &broker,
            vec![item("a", 1), item("a", 2), item("a", 3), item("a", 4)],
        );
        let replay = replay(&broker, &orgs(&["a"]), ReplayFrom::After(ids[0])).await;
        assert_eq!(ids_of(&replay), vec![ids[2], ids[3]]);
        assert_eq!(
            replay.truncated,
            Some(Truncation {
                oldest_id: Some(ids[2]),
                reason: TruncationReason::Trimmed
            })
        );
        let recent = replay_recent(&broker, ids[2]).await;
        assert_eq!(recent.truncated, None);
    }

    async fn replay_recent(broker: &Broker, after: EventId) -> Replay {
        replay(broker, &orgs(&["a"]), ReplayFrom::After(after)).await
    }

    #[tokio::test]
    async fn an_id_never_issued_replays_everything_kept_after_a_reset_notice() {
        let broker = broker(100);
        let ids = publish(&broker, vec![item("a", 1), item("a", 2)]);
        let forged = EventId {
            millis: ids[1].millis + 1_000_000,
            seq: 0,
        };
        let replay = replay_recent(&broker, forged).await;
        assert_eq!(ids_of(&replay), ids);
        assert_eq!(
            replay.truncated,
            Some(Truncation {
                oldest_id: Some(ids[0]),
                reason: TruncationReason::Reset
            })
        );
        assert_eq!(
            replay.replayed_through,
            Some(ids[1]),
            "live events after the forged id are not skipped"
        );
    }

    #[tokio::test]
    async fn the_newest_issued_id_is_a_known_position() {
        let broker = broker(100);
        let ids = publish(&broker, vec![item("a", 1)]);
        let replay = replay_recent(&broker, ids[0]).await;
        assert!(replay.events.is_empty());
        assert_eq!(replay.truncated, None);
    }

    #[test]
    fn acks_are_kept_per_user() {
        let broker = EmbeddedBroker::new(Arc::new(Hub::new(16)), 3600, 2);
        let id = EventId { millis: 5, seq: 0 };
        broker.save_ack("u1", id);
        assert_eq!(broker.load_ack("u1"), Some(id));
        assert_eq!(broker.load_ack("u2"), None);
    }
}
