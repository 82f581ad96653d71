//! The embedded broker: one process, history in memory (bounded like Redis's), the same ids,
//! replay and acknowledgements. Used when `redis.url` is empty.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{HistoryBounds, OrgCursor, OrgPage, Page, PublishItem};
use crate::clock::unix_millis;
use crate::event::{Event, EventId, OrgId};
use crate::hub::Hub;
use crate::metrics::{Source, METRICS};

pub struct EmbeddedBroker {
    hub: Arc<Hub>,
    /// Ids, history and dispatch change under this one lock, so every connection sees events in
    /// id order and a replay snapshot is consistent with what is dispatched after it.
    state: Mutex<State>,
    /// Per user, the acknowledged position in each org.
    acks: Mutex<HashMap<String, HashMap<OrgId, EventId>>>,
    retention_millis: u64,
    max_events_per_org: usize,
}

#[derive(Default)]
struct State {
    last_id: Option<EventId>,
    /// The first id this process issued: history before it went with the previous process.
    first_id: Option<EventId>,
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
            state.first_id.get_or_insert(id);
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

    pub(super) fn read_page(&self, cursors: &[OrgCursor], count: usize) -> Page {
        let now = unix_millis();
        let mut state = self.state.lock();
        let last_issued = state.last_id;
        let epoch_start = state.first_id;
        let orgs = cursors
            .iter()
            .map(|cursor| {
                let Some(history) = state.orgs.get_mut(&cursor.org) else {
                    return OrgPage::new(
                        cursor.org.clone(),
                        cursor.from,
                        Vec::new(),
                        count,
                        HistoryBounds {
                            last_issued,
                            epoch_start,
                            ..HistoryBounds::default()
                        },
                    );
                };
                history.trim(now, self.retention_millis, self.max_events_per_org);
                let first = history
                    .events
                    .partition_point(|event| event.id.is_none_or(|id| !cursor.from.admits(id)));
                let entries = history
                    .events
                    .range(first..)
                    .take(count)
                    .filter_map(|event| Some((event.id?, Ok(event.clone()))))
                    .collect();
                OrgPage::new(
                    cursor.org.clone(),
                    cursor.from,
                    entries,
                    count,
                    HistoryBounds {
                        max_deleted: history.max_deleted,
                        oldest_kept: history.events.front().and_then(|e| e.id),
                        last_issued,
                        epoch_start,
                    },
                )
            })
            .collect();
        Page { orgs }
    }

    /// The newest id handed out, if any.
    pub fn last_issued(&self) -> Option<EventId> {
        self.state.lock().last_id
    }

    pub fn save_acks(&self, user: &str, positions: &[(OrgId, EventId)]) {
        let mut acks = self.acks.lock();
        let stored = acks.entry(user.to_string()).or_default();
        for (org, id) in positions {
            stored.insert(org.clone(), *id);
        }
    }

    pub fn load_acks(&self, user: &str, orgs: &[OrgId]) -> Vec<(OrgId, EventId)> {
        let acks = self.acks.lock();
        let Some(positions) = acks.get(user) else {
            return Vec::new();
        };
        orgs.iter()
            .filter_map(|org| Some((org.clone(), *positions.get(org)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::ReplayFrom;
    use crate::event::Envelope;

    fn item(org: &str, n: u32) -> PublishItem {
        let raw = format!(r#"{{"type":"a.b","data":{{"n":{n}}}}}"#);
        PublishItem {
            org: OrgId::parse(org).expect("valid"),
            envelope: Envelope::parse(raw.as_bytes(), 65536).expect("valid"),
            raw,
        }
    }

    fn broker(max_events: usize) -> EmbeddedBroker {
        EmbeddedBroker::new(Arc::new(Hub::new(16)), 3600, max_events)
    }

    fn cursor(org: &str, from: ReplayFrom) -> OrgCursor {
        OrgCursor {
            org: OrgId::parse(org).expect("valid"),
            from,
        }
    }

    fn ids_of(page: &OrgPage) -> Vec<EventId> {
        page.events.iter().filter_map(|e| e.id).collect()
    }

    #[test]
    fn ids_increase_across_orgs() {
        let broker = broker(100);
        let ids = broker.publish(vec![item("a", 1), item("b", 2), item("a", 3)]);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }

    #[test]
    fn a_page_reads_each_org_after_its_own_cursor() {
        let broker = broker(100);
        let ids = broker.publish(vec![item("a", 1), item("b", 2), item("a", 3), item("b", 4)]);
        let page = broker.read_page(
            &[
                cursor("a", ReplayFrom::After(ids[0])),
                cursor("b", ReplayFrom::Since(0)),
            ],
            10,
        );
        assert_eq!(ids_of(&page.orgs[0]), vec![ids[2]]);
        assert_eq!(ids_of(&page.orgs[1]), vec![ids[1], ids[3]]);
        assert_eq!(page.orgs[0].last_issued, Some(ids[3]));
        assert!(page.orgs.iter().all(|org| org.exhausted && org.trimmed.is_none()));
    }

    #[test]
    fn a_page_holds_at_most_the_count_and_says_where_to_go_on() {
        let broker = broker(100);
        let ids = broker.publish(vec![item("a", 1), item("a", 2), item("a", 3)]);
        let page = broker.read_page(&[cursor("a", ReplayFrom::Since(0))], 2);
        let first = &page.orgs[0];
        assert_eq!(ids_of(first), vec![ids[0], ids[1]]);
        assert_eq!((first.read_through, first.exhausted), (Some(ids[1]), false));
        let next = broker.read_page(&[cursor("a", ReplayFrom::After(ids[1]))], 2);
        assert_eq!(ids_of(&next.orgs[0]), vec![ids[2]]);
        assert!(next.orgs[0].exhausted);
    }

    #[test]
    fn history_is_bounded_and_a_cursor_before_trimmed_events_is_told() {
        let broker = broker(2);
        let ids = broker.publish(vec![item("a", 1), item("a", 2), item("a", 3), item("a", 4)]);
        let page = broker.read_page(&[cursor("a", ReplayFrom::After(ids[0]))], 10);
        assert_eq!(ids_of(&page.orgs[0]), vec![ids[2], ids[3]]);
        assert_eq!(page.orgs[0].trimmed, Some(ids[2]));
        let recent = broker.read_page(&[cursor("a", ReplayFrom::After(ids[2]))], 10);
        assert_eq!(recent.orgs[0].trimmed, None);
    }

    #[test]
    fn acks_are_kept_per_user() {
        let broker = broker(2);
        let id = EventId { millis: 5, seq: 0 };
        let a = OrgId::parse("a").expect("valid");
        broker.save_acks("u1", &[(a.clone(), id)]);
        assert_eq!(
            broker.load_acks("u1", std::slice::from_ref(&a)),
            vec![(a.clone(), id)]
        );
        assert_eq!(broker.load_acks("u2", std::slice::from_ref(&a)), vec![]);
    }

    #[test]
    fn an_ack_moves_only_the_orgs_it_names() {
        let broker = broker(2);
        let (a, b) = (
            OrgId::parse("a").expect("valid"),
            OrgId::parse("b").expect("valid"),
        );
        let (early, late) = (EventId { millis: 5, seq: 0 }, EventId { millis: 9, seq: 0 });
        broker.save_acks("u1", &[(a.clone(), early), (b.clone(), early)]);
        broker.save_acks("u1", &[(b.clone(), late)]);
        assert_eq!(
            broker.load_acks("u1", &[a.clone(), b.clone()]),
            vec![(a, early), (b, late)]
        );
    }
}
