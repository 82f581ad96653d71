//! A replay in pages: every org of a stream read from its own cursor in bounded pages, merged
//! oldest first, at the pace the client reads. No IO: the session fetches what `wanted` asks
//! for and hands the page to `absorb`.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::broker::{OrgCursor, Page, ReplayFrom, Truncation, TruncationReason};
use crate::event::{Event, EventId};
use crate::hub::ReplayMarks;

/// One org's part of a replay.
struct OrgReplay {
    cursor: OrgCursor,
    /// Read but not yet sent, oldest first.
    buffered: VecDeque<Arc<Event>>,
    /// The last page came back short: nothing more to read for now.
    exhausted: bool,
}

pub struct PagedReplay {
    orgs: Vec<OrgReplay>,
    /// Whether the first page (which checks the start) has been absorbed.
    started: bool,
    /// Events the next page may hold across the orgs it reads: sized so that a page holds
    /// about `page_bytes` (each Redis call then does about the same, small, work whatever the
    /// events' size), never more than `max_page_events`.
    page_events: usize,
    max_page_events: usize,
    page_bytes: usize,
    /// Per org, the newest id read: live copies up to it are duplicates.
    marks: ReplayMarks,
}

impl PagedReplay {
    /// A replay of each org from its own cursor, reading pages of about `page_bytes` and at
    /// most `max_page_events` events.
    pub fn new(cursors: Vec<OrgCursor>, max_page_events: usize, page_bytes: usize) -> Self {
        let orgs: Vec<OrgReplay> = cursors
            .into_iter()
            .map(|cursor| OrgReplay {
                cursor,
                buffered: VecDeque::new(),
                exhausted: false,
            })
            .collect();
        let mut replay = Self {
            orgs,
            started: false,
            // The first page is small: it also checks the start.
            page_events: max_page_events.clamp(1, 16),
            max_page_events: max_page_events.max(1),
            page_bytes: page_bytes.max(1),
            marks: ReplayMarks::default(),
        };
        replay.mark_starts();
        replay
    }

    /// Raises every org's mark to the position it starts after: live copies of older events
    /// were sent before this stream.
    fn mark_starts(&mut self) {
        self.marks = ReplayMarks::default();
        for org in &self.orgs {
            if let ReplayFrom::After(after) = org.cursor.from {
                self.marks.raise(&org.cursor.org, after);
            }
        }
    }

    /// The cursors to read next (every org with nothing buffered that may have more) and how
    /// many events to read for each, so that one page holds at most `page_events` events
    /// (and at least one per org). Empty when nothing needs reading.
    pub fn wanted(&self) -> (Vec<OrgCursor>, usize) {
        let cursors: Vec<OrgCursor> = self
            .orgs
            .iter()
            .filter(|org| org.buffered.is_empty() && !org.exhausted)
            .map(|org| org.cursor.clone())
            .collect();
        let per_org = (self.page_events / cursors.len().max(1)).max(1);
        (cursors, per_org)
    }

    /// Takes a page in. Returns the notice to send before what follows, if the history cannot
    /// give everything after the cursor: trimmed events, or a start this history never issued
    /// (the replay then restarts from the oldest kept event of every org).
    pub fn absorb(&mut self, page: Page) -> Option<Truncation> {
        if !self.started {
            self.started = true;
            // A start after the newest id ever issued is a position this history never had:
            // those orgs replay everything kept, and the client is told.
            // A start after the newest id issued, or before the first id of the history's
            // current epoch (Redis lost what came before), is not a position of this history.
            let unknown = |org: &OrgReplay| {
                let part = page.orgs.iter().find(|part| part.org == org.cursor.org);
                match org.cursor.from {
                    ReplayFrom::After(after) => {
                        part.and_then(|part| part.last_issued)
                            .is_none_or(|last| after > last)
                            || part
                                .and_then(|part| part.epoch_start)
                                .is_some_and(|first| after < first)
                    }
                    ReplayFrom::Since(_) => false,
                }
            };
            let mut reset = false;
            for org in &mut self.orgs {
                if unknown(org) {
                    org.cursor.from = ReplayFrom::Since(0);
                    reset = true;
                }
            }
            if reset {
                self.mark_starts();
                let oldest_id = page.orgs.iter().filter_map(|org| org.oldest_kept).min();
                return Some(Truncation {
                    oldest_id,
                    reason: TruncationReason::Reset,
                });
            }
        }
        let (events, bytes) = page
            .orgs
            .iter()
            .flat_map(|org| &org.events)
            .fold((0, 0), |(n, bytes), event| (n + 1, bytes + event.frame().len()));
        if let Some(average) = bytes.checked_div(events) {
            self.page_events = (self.page_bytes / average.max(1)).clamp(1, self.max_page_events);
        }
        let mut trimmed: Option<EventId> = None;
        for org_page in page.orgs {
            let Some(org) = self.orgs.iter_mut().find(|org| org.cursor.org == org_page.org) else {
                continue;
            };
            if let Some(oldest) = org_page.trimmed {
                trimmed = Some(trimmed.map_or(oldest, |t| t.min(oldest)));
            }
            if let Some(last) = org_page.read_through {
                org.cursor.from = ReplayFrom::After(last);
                self.marks.raise(&org.cursor.org, last);
            }
            org.exhausted = org_page.exhausted;
            org.buffered.extend(org_page.events);
        }
        trimmed.map(|oldest| Truncation {
            oldest_id: Some(oldest),
            reason: TruncationReason::Trimmed,
        })
    }

    /// The next event in id order, once every org that may still hold older events has its
    /// next one buffered.
    pub fn next_ready(&mut self) -> Option<Arc<Event>> {
        let waiting = self
            .orgs
            .iter()
            .any(|org| org.buffered.is_empty() && !org.exhausted);
        if waiting {
            return None;
        }
        let oldest = self
            .orgs
            .iter_mut()
            .filter(|org| !org.buffered.is_empty())
            .min_by_key(|org| org.buffered.front().and_then(|event| event.id))?;
        oldest.buffered.pop_front()
    }

    /// Everything read has been sent and every org came back short.
    pub fn is_caught_up(&self) -> bool {
        self.started
            && self
                .orgs
                .iter()
                .all(|org| org.exhausted && org.buffered.is_empty())
    }

    /// Reads every org once more from its cursor: after the stream starts queueing durable
    /// events, so that one published around the switch is read or queued.
    pub fn read_tail(&mut self) {
        for org in &mut self.orgs {
            org.exhausted = false;
        }
    }

    /// Per org, the newest id read.
    pub fn marks(&self) -> &ReplayMarks {
        &self.marks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::OrgPage;
    use crate::event::{Envelope, OrgId};

    fn org(name: &str) -> OrgId {
        OrgId::parse(name).expect("valid")
    }

    fn id(n: u64) -> EventId {
        EventId { millis: 100, seq: n }
    }

    fn event(org_name: &str, n: u64) -> Arc<Event> {
        let envelope = Envelope::parse(br#"{"type":"a.b","data":{}}"#, 1024).expect("valid");
        Arc::new(Event::new(org(org_name), Some(id(n)), envelope))
    }

    fn org_page(name: &str, ids: &[u64], exhausted: bool) -> OrgPage {
        OrgPage {
            org: org(name),
            events: ids.iter().map(|n| event(name, *n)).collect(),
            read_through: ids.last().map(|n| id(*n)),
            trimmed: None,
            oldest_kept: ids.first().map(|n| id(*n)),
            exhausted,
            last_issued: None,
            epoch_start: None,
        }
    }

    fn page(mut orgs: Vec<OrgPage>, last_issued: u64) -> Page {
        for org in &mut orgs {
            org.last_issued = Some(id(last_issued));
        }
        Page { orgs }
    }

    /// A replay of `orgs`, all from `from`.
    fn replay_of(orgs: &[&str], from: ReplayFrom, max_page_events: usize, page_bytes: usize) -> PagedReplay {
        let cursors = orgs
            .iter()
            .map(|name| OrgCursor { org: org(name), from })
            .collect();
        PagedReplay::new(cursors, max_page_events, page_bytes)
    }

    fn drain(replay: &mut PagedReplay) -> Vec<u64> {
        std::iter::from_fn(|| replay.next_ready())
            .filter_map(|event| event.id)
            .map(|id| id.seq)
            .collect()
    }

    #[test]
    fn orgs_are_merged_in_id_order_and_wait_for_an_org_that_may_hold_older_events() {
        let mut replay = replay_of(&["a", "b"], ReplayFrom::Since(0), 4, 1 << 20);
        let (cursors, per_org) = replay.wanted();
        assert_eq!((cursors.len(), per_org), (2, 2));
        replay.absorb(page(
            vec![org_page("a", &[1, 4], false), org_page("b", &[2], true)],
            9,
        ));
        assert_eq!(
            drain(&mut replay),
            [1, 2, 4],
            "a's buffer empties: a must be read again"
        );
        let (cursors, _) = replay.wanted();
        assert_eq!(
            cursors,
            vec![OrgCursor {
                org: org("a"),
                from: ReplayFrom::After(id(4))
            }]
        );
        replay.absorb(page(vec![org_page("a", &[5], true)], 9));
        assert_eq!(drain(&mut replay), [5]);
        assert!(replay.is_caught_up());
    }

    #[test]
    fn a_start_never_issued_restarts_that_org_from_the_oldest_kept_with_a_reset_notice() {
        let mut replay = replay_of(&["a"], ReplayFrom::After(id(50)), 8, 1 << 20);
        let notice = replay.absorb(page(vec![org_page("a", &[], true)], 9));
        assert_eq!(notice.map(|n| n.reason), Some(TruncationReason::Reset));
        let (cursors, _) = replay.wanted();
        assert_eq!(cursors[0].from, ReplayFrom::Since(0));
        assert!(
            !replay.marks().covers(&event("a", 7)),
            "the unknown start marks nothing"
        );
    }

    #[test]
    fn an_org_whose_start_was_issued_keeps_it_when_another_org_is_reset() {
        let cursors = vec![
            OrgCursor {
                org: org("a"),
                from: ReplayFrom::After(id(5)),
            },
            OrgCursor {
                org: org("b"),
                from: ReplayFrom::After(id(50)),
            },
        ];
        let mut replay = PagedReplay::new(cursors, 8, 1 << 20);
        let notice = replay.absorb(page(vec![org_page("a", &[], true), org_page("b", &[], true)], 9));
        assert_eq!(notice.map(|n| n.reason), Some(TruncationReason::Reset));
        let (cursors, _) = replay.wanted();
        let from = |name: &str| cursors.iter().find(|c| c.org == org(name)).map(|c| c.from);
        assert_eq!(
            (from("a"), from("b")),
            (Some(ReplayFrom::After(id(5))), Some(ReplayFrom::Since(0)))
        );
        assert!(
            replay.marks().covers(&event("a", 5)),
            "a's start still marks what it had"
        );
    }

    #[test]
    fn a_start_before_the_historys_current_epoch_is_reset() {
        let mut replay = replay_of(&["a"], ReplayFrom::After(id(3)), 8, 1 << 20);
        let mut part = org_page("a", &[20, 21], false);
        part.epoch_start = Some(id(20));
        let notice = replay.absorb(page(vec![part], 21));
        assert_eq!(notice.map(|n| n.reason), Some(TruncationReason::Reset));
        let (cursors, _) = replay.wanted();
        assert_eq!(cursors[0].from, ReplayFrom::Since(0));
    }

    #[test]
    fn the_marks_cover_what_was_read_per_org() {
        let mut replay = replay_of(&["a", "b"], ReplayFrom::After(id(1)), 8, 1 << 20);
        replay.absorb(page(vec![org_page("a", &[3], true), org_page("b", &[], true)], 9));
        assert!(replay.marks().covers(&event("a", 3)));
        assert!(!replay.marks().covers(&event("a", 4)));
        assert!(
            replay.marks().covers(&event("b", 1)),
            "the start covers every org"
        );
        assert!(!replay.marks().covers(&event("b", 2)));
    }

    #[test]
    fn pages_are_sized_to_the_byte_budget_by_the_events_seen() {
        let mut replay = replay_of(&["a"], ReplayFrom::Since(0), 1000, 10 * 1024);
        assert_eq!(replay.wanted().1, 16, "a small first page");
        let frame_len = event("a", 1).frame().len();
        replay.absorb(page(vec![org_page("a", &[1, 2, 3, 4], false)], 9));
        assert!(
            replay.wanted().0.is_empty(),
            "buffered events are sent before the next read"
        );
        drain(&mut replay);
        assert_eq!(replay.wanted().1, 10 * 1024 / frame_len);
    }

    #[test]
    fn reading_the_tail_asks_every_org_again() {
        let mut replay = replay_of(&["a", "b"], ReplayFrom::Since(0), 8, 1 << 20);
        replay.absorb(page(
            vec![org_page("a", &[1], true), org_page("b", &[2], true)],
            9,
        ));
        drain(&mut replay);
        assert!(replay.is_caught_up());
        replay.read_tail();
        assert_eq!(replay.wanted().0.len(), 2);
        assert!(!replay.is_caught_up());
    }
}
