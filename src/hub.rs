//! The local fan-out: which connection of this replica listens to which org, and a bounded queue
//! per connection into which each event's shared frame is pushed. Never awaits a client: a full
//! queue closes that connection. No IO.
//!
//! Connections live in one `Shard` per HTTP worker thread. The dispatcher (on the first
//! worker's thread) hands each event to every shard that has subscribers of its org: one message
//! per worker, not one wake-up per connection, and a local one for its own worker; the shard's
//! own task then fans it out on the worker's thread, where waking a connection is a local queue
//! push.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;

use crate::clock::unix_secs;
use crate::cursor::Cursor;
use crate::event::{Event, EventId, OrgId, Priority};
use crate::metrics::{DeliveryStats, METRICS};
use crate::policy::{TypeFilter, Viewer};
use crate::wire::gzip::{Piece, Tally};
use crate::wire::{Encoding, PerEncoding};

pub type ConnectionId = u64;

/// Queue capacity a connection keeps between bursts.
const SMALL_QUEUE: usize = 8;
/// Most bytes handed to the HTTP layer in one chunk (one frame may exceed it alone). Frames
/// that do not fit wait in the connection's queue, so the queue's bound and priorities keep
/// applying to a client that is behind; a stalled client holds at most one chunk beyond the
/// 128 KiB that actix-http buffers before it stops polling the body.
const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// Every worker's shard of this replica's connections.
pub struct Hub {
    shards: RwLock<Vec<ShardHandle>>,
    /// Capacity of each connection's queue. A client that falls this far behind is
    /// disconnected rather than awaited, so one slow client never delays the others;
    /// it resumes from history with Last-Event-ID.
    queue_capacity: usize,
    /// Connection ids, unique across shards.
    next_id: Arc<AtomicU64>,
}

struct ShardHandle {
    shard: Arc<Shard>,
    /// Events for the shard's fan-out task, in dispatch order.
    inbox: mpsc::UnboundedSender<Arc<Event>>,
}

/// The connections of one worker thread, by org and by id.
pub struct Shard {
    /// Org -> its subscribers. Read-locked once per event by the shard's fan-out task;
    /// write-locked only when a connection opens or closes.
    orgs: RwLock<HashMap<OrgId, Vec<Arc<Subscriber>>>>,
    /// Every subscriber of the shard, for keepalives, expiry and drain.
    connections: Mutex<HashMap<ConnectionId, Arc<Subscriber>>>,
    queue_capacity: usize,
    next_id: Arc<AtomicU64>,
    /// This worker's delivery counters (written by its streams, on its thread).
    stats: Arc<DeliveryStats>,
}

/// Streams that share a role and a set of orgs: the unit `GET /api/connections` counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamGroup {
    pub role: Box<str>,
    /// Sorted, so that one set of orgs is one group whatever the token's order.
    orgs: Box<[OrgId]>,
}

impl StreamGroup {
    pub fn new(role: Box<str>, mut orgs: Vec<OrgId>) -> Self {
        orgs.sort_unstable();
        orgs.dedup();
        Self {
            role,
            orgs: orgs.into(),
        }
    }

    pub fn orgs(&self) -> &[OrgId] {
        &self.orgs
    }

    /// Whether the group's streams listed any of `orgs`.
    pub fn shares_an_org_with(&self, orgs: &[OrgId]) -> bool {
        self.orgs.iter().any(|org| orgs.contains(org))
    }
}

/// One open stream as the hub sees it.
pub struct Subscriber {
    pub id: ConnectionId,
    /// How this stream's bytes are written (its transport).
    encoding: Encoding,
    slot: Mutex<Slot>,
}

/// Who a stream is: what its token lets it see, until when. Replaced when a WebSocket client
/// refreshes its token.
struct Identity {
    viewer: Viewer,
    role: Box<str>,
    /// When the token expires (seconds since the epoch); the stream then ends with `auth.expired`.
    expires_at: u64,
}

/// A connection's identity and pending output. Emptied queues give their memory back, so an
/// idle connection holds no buffer.
struct Slot {
    identity: Identity,
    normal: VecDeque<Arc<Event>>,
    /// High-priority events, sent before `normal`. The flag says the event overtook queued
    /// durable events and must go out without its `id:` line.
    high: VecDeque<(Arc<Event>, bool)>,
    /// A keepalive waiting to be sent.
    keepalive: Option<Bytes>,
    closing: Option<Closing>,
    /// The stream's task, registered once and kept: waking it costs no clone.
    waker: Option<Waker>,
    /// The task was woken and has not yet found the slot empty: more output needs no wake.
    woken: bool,
    /// Last time (seconds since the epoch) something was queued, for keepalives.
    last_activity: u64,
    /// The stream is replaying history: durable events are not queued (the replay reads them
    /// from history), so a long replay never fills the queue. Live events still are.
    replaying: bool,
    /// For a stream of several orgs whose ids are ordered per org: the positions the client
    /// has received, written as the `id:` of each durable event (after its shared lines).
    cursor: Option<Box<Cursor>>,
}

impl Slot {
    /// Wakes the stream's task unless it is already due to run. Called with the slot locked:
    /// a task's waker only schedules it, it never runs it inline.
    fn wake(&mut self) {
        if !self.woken {
            if let Some(waker) = &self.waker {
                waker.wake_by_ref();
                self.woken = true;
            }
        }
    }

    /// Registers `waker` for the next output (a clone only when the task changed).
    fn wait(&mut self, waker: &Waker) {
        if !self.waker.as_ref().is_some_and(|known| known.will_wake(waker)) {
            self.waker = Some(waker.clone());
        }
        self.woken = false;
    }
}

/// Per org, the newest durable id a stream's replay has read: live copies of events up to it
/// were sent by the replay (or deliberately skipped by its filter) and are not sent again.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayMarks(Vec<(OrgId, EventId)>);

impl ReplayMarks {
    /// Records that the replay read `org`'s history through `id`.
    pub fn raise(&mut self, org: &OrgId, id: EventId) {
        match self.0.iter_mut().find(|(known, _)| known == org) {
            Some((_, mark)) => *mark = (*mark).max(id),
            None => self.0.push((org.clone(), id)),
        }
    }

    /// Whether the replay already covered `event`.
    pub fn covers(&self, event: &Event) -> bool {
        event
            .id
            .is_some_and(|id| self.0.iter().any(|(org, mark)| *org == event.org && id <= *mark))
    }
}

enum Closing {
    /// Fell behind: send nothing more.
    Slow,
    /// Send what is queued, then this frame, then end.
    After(Bytes),
}

/// What a connection's stream gets when it asks for output.
pub enum Output {
    /// Frames to write, as one chunk, and how many events they hold.
    Frames {
        bytes: Bytes,
        events: u64,
        oldest: Option<std::time::Instant>,
        /// For a gzip stream, what the chunk's pieces stand for (for the stream's trailer).
        gzip: Option<Tally>,
    },
    /// Nothing now; the waker is called when there is.
    Pending,
    /// The stream is over.
    Ended,
}

impl Hub {
    pub fn new(queue_capacity: usize) -> Self {
        Self {
            shards: RwLock::new(Vec::new()),
            queue_capacity,
            next_id: Arc::new(AtomicU64::new(rand::random::<u32>() as u64)),
        }
    }

    /// Creates the shard of the calling worker and starts its fan-out task on the worker's
    /// runtime. Called once per HTTP worker, on that worker's thread.
    pub fn add_shard(&self) -> Arc<Shard> {
        let shard = Arc::new(Shard::new(self.queue_capacity, self.next_id.clone()));
        let (inbox, events) = mpsc::unbounded_channel();
        actix_web::rt::spawn(fan_out(shard.clone(), events));
        self.shards.write().push(ShardHandle {
            shard: shard.clone(),
            inbox,
        });
        shard
    }

    /// Hands `event` to every shard with subscribers of its org.
    pub fn publish(&self, event: &Arc<Event>) {
        let mut gone = false;
        for handle in self.shards.read().iter() {
            if handle.shard.has_subscribers(&event.org) && handle.inbox.send(event.clone()).is_err() {
                gone = true;
            }
        }
        if gone {
            // A worker that stopped (its task ended) is forgotten.
            self.shards.write().retain(|handle| !handle.inbox.is_closed());
        }
    }

    fn shards(&self) -> Vec<Arc<Shard>> {
        self.shards
            .read()
            .iter()
            .map(|handle| handle.shard.clone())
            .collect()
    }

    pub fn connection_count(&self) -> usize {
        self.shards().iter().map(|shard| shard.connection_count()).sum()
    }

    /// Open streams per role and set of orgs, for the connection registry.
    pub fn stream_counts(&self) -> HashMap<StreamGroup, u64> {
        let mut counts = HashMap::new();
        for shard in self.shards() {
            shard.add_stream_counts(&mut counts);
        }
        counts
    }

    /// See `Shard::tick`.
    pub fn tick(&self, now: u64, keepalive_secs: u64, keepalive: &PerEncoding, expired: &PerEncoding) {
        for shard in self.shards() {
            shard.tick(now, keepalive_secs, keepalive, expired);
        }
    }

    /// Ends every stream after sending it the frame `final_frame` makes for its encoding (drain).
    pub fn close_all(&self, mut final_frame: impl FnMut(Encoding) -> Bytes) {
        for shard in self.shards() {
            shard.close_all(&mut final_frame);
        }
    }
}

/// A shard's fan-out task: events arrive in dispatch order and leave in that order.
async fn fan_out(shard: Arc<Shard>, mut events: mpsc::UnboundedReceiver<Arc<Event>>) {
    while let Some(event) = events.recv().await {
        shard.publish(&event);
    }
}

impl Shard {
    /// A shard not attached to a hub, fed by calling `publish` directly.
    pub fn detached(queue_capacity: usize) -> Self {
        Self::new(queue_capacity, Arc::new(AtomicU64::new(0)))
    }

    fn new(queue_capacity: usize, next_id: Arc<AtomicU64>) -> Self {
        Self {
            orgs: RwLock::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            queue_capacity,
            next_id,
            stats: METRICS.delivery_stats(),
        }
    }

    /// The delivery counters of this shard's worker.
    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    /// Adds a subscriber for every org of `viewer`. From now on it queues the events it may see.
    /// `replaying`: the stream starts with a replay, during which durable events are not
    /// queued (see `Subscriber::stop_replaying`).
    pub fn register(&self, viewer: Viewer, role: &str, expires_at: u64, opening: Opening) -> Arc<Subscriber> {
        let subscriber = Arc::new(Subscriber {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            encoding: opening.encoding,
            slot: Mutex::new(Slot {
                identity: Identity {
                    viewer,
                    role: role.into(),
                    expires_at,
                },
                normal: VecDeque::new(),
                high: VecDeque::new(),
                keepalive: None,
                closing: None,
                waker: None,
                woken: false,
                last_activity: opening.now,
                replaying: opening.replaying,
                cursor: None,
            }),
        });
        let orgs = subscriber.orgs();
        self.list_under(&subscriber, &orgs);
        self.connections.lock().insert(subscriber.id, subscriber.clone());
        METRICS.connection_opened(role, opening.encoding.transport());
        subscriber
    }

    fn list_under(&self, subscriber: &Arc<Subscriber>, added: &[OrgId]) {
        let mut orgs = self.orgs.write();
        for org in added {
            orgs.entry(org.clone()).or_default().push(subscriber.clone());
        }
    }

    fn unlist_from(&self, subscriber: &Subscriber, removed: &[OrgId]) {
        let mut orgs = self.orgs.write();
        for org in removed {
            if let Some(list) = orgs.get_mut(org) {
                if let Some(position) = list.iter().position(|s| s.id == subscriber.id) {
                    list.swap_remove(position);
                }
                if list.is_empty() {
                    orgs.remove(org);
                }
            }
        }
    }

    /// Removes a subscriber (its stream ended or the client went away).
    pub fn unregister(&self, subscriber: &Subscriber) {
        if self.connections.lock().remove(&subscriber.id).is_none() {
            return;
        }
        self.unlist_from(subscriber, &subscriber.orgs());
        METRICS.connection_closed(&subscriber.role(), subscriber.encoding.transport());
    }

    /// Gives a stream a new identity (a refreshed token): from now on it receives what `viewer`
    /// may see, until `expires_at`. Orgs it gains are listed before it sees their events, and
    /// the caller subscribed them; an org it lost stops reaching it here.
    pub fn reidentify(&self, subscriber: &Arc<Subscriber>, viewer: Viewer, role: &str, expires_at: u64) {
        let before = subscriber.orgs();
        let added: Vec<OrgId> = viewer
            .orgs()
            .iter()
            .filter(|org| !before.contains(org))
            .cloned()
            .collect();
        let removed: Vec<OrgId> = before
            .iter()
            .filter(|org| !viewer.orgs().contains(org))
            .cloned()
            .collect();
        self.list_under(subscriber, &added);
        let old_role = {
            let mut slot = subscriber.slot.lock();
            if let Some(cursor) = &mut slot.cursor {
                for org in &added {
                    cursor.add(
                        org.clone(),
                        crate::cursor::Position::From(crate::clock::unix_millis()),
                    );
                }
            }
            let identity = Identity {
                viewer,
                role: role.into(),
                expires_at,
            };
            std::mem::replace(&mut slot.identity, identity).role
        };
        self.unlist_from(subscriber, &removed);
        if *old_role != *role {
            METRICS.connection_changed_role(&old_role, role);
        }
    }

    /// Queues `event` for every local subscriber of its org that may see it. Returns how many.
    pub fn publish(&self, event: &Arc<Event>) -> usize {
        self.publish_at(event, unix_secs())
    }

    /// `publish`, with the time (seconds since the epoch) the streams' activity is stamped with.
    fn publish_at(&self, event: &Arc<Event>, now: u64) -> usize {
        let orgs = self.orgs.read();
        let Some(subscribers) = orgs.get(&event.org) else {
            return 0;
        };
        let mut recipients = 0;
        for subscriber in subscribers {
            if subscriber.offer(event, self.queue_capacity, now) {
                recipients += 1;
            }
        }
        recipients
    }

    /// Whether an org has local subscribers.
    pub fn has_subscribers(&self, org: &OrgId) -> bool {
        self.orgs.read().contains_key(org)
    }

    pub fn connection_count(&self) -> usize {
        self.connections.lock().len()
    }

    fn add_stream_counts(&self, counts: &mut HashMap<StreamGroup, u64>) {
        for subscriber in self.connections.lock().values() {
            let group = {
                let slot = subscriber.slot.lock();
                StreamGroup::new(slot.identity.role.clone(), slot.identity.viewer.orgs().to_vec())
            };
            *counts.entry(group).or_insert(0) += 1;
        }
    }

    fn subscribers(&self) -> Vec<Arc<Subscriber>> {
        self.connections.lock().values().cloned().collect()
    }

    /// Once a second: ends streams whose token expired (with `expired_frame`) and queues
    /// `keepalive_frame` on streams idle for `keepalive_secs`.
    pub fn tick(&self, now: u64, keepalive_secs: u64, keepalive: &PerEncoding, expired: &PerEncoding) {
        for subscriber in self.subscribers() {
            {
                let mut slot = subscriber.slot.lock();
                if slot.closing.is_some() {
                    continue;
                }
                if slot.identity.expires_at <= now {
                    slot.closing = Some(Closing::After(expired.of(subscriber.encoding).clone()));
                } else if now.saturating_sub(slot.last_activity) >= keepalive_secs {
                    slot.keepalive = Some(keepalive.of(subscriber.encoding).clone());
                    slot.last_activity = now;
                } else {
                    continue;
                }
                slot.wake();
            }
        }
    }

    /// Ends every stream after sending it the frame `final_frame` makes for it (drain).
    pub fn close_all(&self, mut final_frame: impl FnMut(Encoding) -> Bytes) {
        for subscriber in self.subscribers() {
            subscriber.close(Closing::After(final_frame(subscriber.encoding)));
        }
    }
}

/// How a stream starts, as its shard registers it.
#[derive(Debug, Clone, Copy)]
pub struct Opening {
    pub encoding: Encoding,
    /// Seconds since the epoch.
    pub now: u64,
    /// The stream starts with a replay, during which durable events are not queued (see
    /// `Subscriber::stop_replaying`).
    pub replaying: bool,
}

impl Subscriber {
    /// Whether this connection may see `event` (replayed events pass the same check as live).
    pub fn may_see(&self, event: &Event) -> bool {
        self.slot.lock().identity.viewer.may_see(event)
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The orgs the stream's token lists.
    pub fn orgs(&self) -> Vec<OrgId> {
        self.slot.lock().identity.viewer.orgs().to_vec()
    }

    pub fn role(&self) -> Box<str> {
        self.slot.lock().identity.role.clone()
    }

    /// The `types=` filter in force.
    pub fn types(&self) -> Option<TypeFilter> {
        self.slot.lock().identity.viewer.types().cloned()
    }

    /// Replaces the stream's `types=` filter: events queued from now on pass the new one.
    pub fn set_types(&self, types: Option<TypeFilter>) {
        self.slot.lock().identity.viewer.set_types(types);
    }

    /// From now on durable events are queued too. The replay then reads history once more, so
    /// an event published around the switch is either read or queued (or both: the marks
    /// drop the queued copy).
    pub fn stop_replaying(&self) {
        self.slot.lock().replaying = false;
    }

    /// The keepalive the once-a-second tick queued, if any: for a stream that writes nothing
    /// else for now (one waiting for its replay's turn).
    pub fn take_keepalive(&self, now: u64) -> Option<Bytes> {
        let mut slot = self.slot.lock();
        let keepalive = slot.keepalive.take()?;
        slot.last_activity = now;
        Some(keepalive)
    }

    /// From now on the stream's durable events carry `cursor`, advanced by each of them, as
    /// their `id:`.
    pub fn track_cursor(&self, cursor: Cursor) {
        self.slot.lock().cursor = Some(Box::new(cursor));
    }

    /// Writes a replayed event: `frame` as is, or, for a stream with a cursor, the event's
    /// shared lines then the cursor after it.
    pub fn write_replayed(&self, event: &Event, out: &mut BytesMut) {
        let mut slot = self.slot.lock();
        match (&mut slot.cursor, event.id) {
            (Some(cursor), Some(id)) => {
                cursor.advance(&event.org, id);
                out.extend_from_slice(&self.encoding.event_with_cursor(event, &cursor.encode()));
            }
            _ => out.extend_from_slice(&self.encoding.event(event)),
        }
    }

    /// Asks for `waker` to be woken by the stream's next keepalive, expiry, drain or queued
    /// event, for a stream that is waiting on something else (its replay's turn).
    pub fn park(&self, waker: &Waker) {
        self.slot.lock().wait(waker);
    }

    /// Whether the stream is ending (drained, expired, or cut as slow).
    pub fn is_closing(&self) -> bool {
        self.slot.lock().closing.is_some()
    }

    /// Queues `event` (at `now`, seconds since the epoch) and wakes the stream, if the stream
    /// may see it; returns whether it may.
    fn offer(&self, event: &Arc<Event>, capacity: usize, now: u64) -> bool {
        let mut slot = self.slot.lock();
        if !slot.identity.viewer.may_see(event) {
            return false;
        }
        if slot.closing.is_some() || (slot.replaying && event.id.is_some()) {
            return true;
        }
        if slot.normal.len() + slot.high.len() >= capacity {
            slot.closing = Some(match self.encoding.slow_consumer_close() {
                Some(close) => Closing::After(close),
                None => Closing::Slow,
            });
            slot.normal = VecDeque::new();
            slot.high = VecDeque::new();
            METRICS.slow_consumer_disconnected();
        } else if event.priority == Priority::High {
            let overtakes_durable = slot.normal.iter().any(|queued| queued.id.is_some());
            slot.high.push_back((event.clone(), overtakes_durable));
        } else {
            slot.normal.push_back(event.clone());
        }
        slot.last_activity = now;
        slot.wake();
        true
    }

    fn close(&self, closing: Closing) {
        let mut slot = self.slot.lock();
        if slot.closing.is_none() {
            slot.closing = Some(closing);
            slot.wake();
        }
    }

    /// Takes what is queued as one chunk of at most `MAX_CHUNK_BYTES` (always at least one
    /// frame), high-priority events first. Durable events the replay covered (`marks`) are
    /// skipped. What does not fit stays queued, where a later high-priority event can still
    /// overtake it and the queue's bound still counts it.
    pub fn take(&self, waker: &Waker, marks: &ReplayMarks) -> Output {
        let mut slot = self.slot.lock();
        if matches!(slot.closing, Some(Closing::Slow)) {
            return Output::Ended;
        }
        let already_sent = |event: &Event| marks.covers(event);
        let mut frames = Chunk::new(slot.high.len() + slot.normal.len() + 2, self.encoding);
        let mut events = 0;
        let mut oldest = None;
        if let Some(keepalive) = slot.keepalive.take() {
            frames.push_own(keepalive);
        }
        while !frames.is_full() {
            let Some((event, overtook_durable)) = slot.high.pop_front() else {
                break;
            };
            if already_sent(&event) {
                continue;
            }
            oldest = oldest.or(Some(event.received_at));
            if overtook_durable {
                frames.push_own(self.encoding.event_without_id(&event));
            } else {
                push_frame(&mut frames, &mut slot.cursor, self.encoding, &event);
            }
            events += 1;
        }
        while !frames.is_full() {
            let Some(event) = slot.normal.pop_front() else {
                break;
            };
            if already_sent(&event) {
                continue;
            }
            oldest = oldest.or(Some(event.received_at));
            push_frame(&mut frames, &mut slot.cursor, self.encoding, &event);
            events += 1;
        }
        let drained = slot.high.is_empty() && slot.normal.is_empty();
        // Give a burst's queue memory back, so an idle connection holds (almost) no buffer;
        // small queues are kept to spare an allocation per event.
        if drained && slot.normal.capacity() > SMALL_QUEUE {
            slot.normal = VecDeque::new();
        }
        if drained && slot.high.capacity() > SMALL_QUEUE {
            slot.high = VecDeque::new();
        }
        let ended = match slot.closing.take() {
            Some(Closing::After(last)) if drained => {
                frames.push_own(last);
                slot.closing = Some(Closing::Slow);
                true
            }
            other => {
                slot.closing = other;
                false
            }
        };
        if frames.first.is_none() {
            if ended {
                return Output::Ended;
            }
            slot.wait(waker);
            return Output::Pending;
        }
        drop(slot);
        let gzip = frames.gzip.map(|(_, tally)| tally);
        Output::Frames {
            bytes: frames.into_bytes(),
            events,
            oldest,
            gzip,
        }
    }
}

/// Adds `event` to a write: its shared frame, or, for a stream with a cursor, its shared lines
/// and the cursor advanced past it.
fn push_frame(frames: &mut Chunk, cursor: &mut Option<Box<Cursor>>, encoding: Encoding, event: &Event) {
    match (cursor, event.id) {
        (Some(cursor), Some(id)) => {
            cursor.advance(&event.org, id);
            frames.push_event_with_cursor(event, encoding, &cursor.encode());
        }
        _ => frames.push_event(event, encoding),
    }
}

/// The frames of one write. A single frame goes out as is (no copy); from the second one on,
/// they are copied into one buffer, so a burst costs one chunk and one write. For a gzip
/// stream, each event is its shared piece and every other frame a stored piece, tallied.
struct Chunk {
    first: Option<Bytes>,
    joined: Option<BytesMut>,
    /// How many frames may follow, to size the joined buffer once.
    expected: usize,
    /// A gzip stream's `min_bytes` and the tally of the pieces so far.
    gzip: Option<(u32, Tally)>,
}

impl Chunk {
    fn new(expected: usize, encoding: Encoding) -> Self {
        Self {
            first: None,
            joined: None,
            expected,
            gzip: encoding.gzip().map(|min_bytes| (min_bytes, Tally::default())),
        }
    }

    /// Adds the stream's own frame (a keepalive, a closing frame, an event with its own id).
    fn push_own(&mut self, frame: Bytes) {
        match &mut self.gzip {
            Some((_, tally)) if !frame.is_empty() => {
                let piece = Piece::stored(&frame);
                *tally = tally.then(piece.tally);
                self.push(piece.bytes);
            }
            _ => self.push(frame),
        }
    }

    /// Adds an event carrying a stream's own cursor: in a gzip stream, the event's shared
    /// piece without its id, then the cursor line as a stored piece.
    fn push_event_with_cursor(&mut self, event: &Event, encoding: Encoding, position: &str) {
        match &mut self.gzip {
            Some((min_bytes, tally)) => {
                let body = event.sse_gzip_body(*min_bytes);
                *tally = tally.then(body.tally);
                let bytes = body.bytes.clone();
                self.push(bytes);
                self.push_own(Bytes::from(format!("id: {position}\n\n")));
            }
            None => self.push(encoding.event_with_cursor(event, position)),
        }
    }

    /// Adds an event as every recipient of `encoding` shares it.
    fn push_event(&mut self, event: &Event, encoding: Encoding) {
        match &mut self.gzip {
            Some((min_bytes, tally)) => {
                let piece = event.sse_gzip(*min_bytes);
                *tally = tally.then(piece.tally);
                let bytes = piece.bytes.clone();
                self.push(bytes);
            }
            None => self.push(encoding.event(event)),
        }
    }

    fn len(&self) -> usize {
        match (&self.first, &self.joined) {
            (_, Some(joined)) => joined.len(),
            (Some(first), None) => first.len(),
            (None, None) => 0,
        }
    }

    /// Whether the chunk reached `MAX_CHUNK_BYTES`.
    fn is_full(&self) -> bool {
        self.len() >= MAX_CHUNK_BYTES
    }

    fn push(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        match (&self.first, &mut self.joined) {
            (None, _) => self.first = Some(frame),
            (Some(_), Some(joined)) => joined.extend_from_slice(&frame),
            (Some(first), None) => {
                let capacity = (first.len() + frame.len() * self.expected).min(MAX_CHUNK_BYTES + frame.len());
                let mut joined = BytesMut::with_capacity(capacity);
                joined.extend_from_slice(first);
                joined.extend_from_slice(&frame);
                self.joined = Some(joined);
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match (self.joined, self.first) {
            (Some(joined), _) => joined.freeze(),
            (None, first) => first.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Claims;
    use crate::event::Envelope;
    use crate::policy::Policy;
    use crate::settings::Settings;
    use std::task::{Wake, Waker};

    struct CountingWaker(AtomicU64);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn viewer(role: &str, orgs: &[&str]) -> Viewer {
        let settings = Settings::load_from(None, Some(HashMap::new())).expect("defaults load");
        let claims = Claims {
            sub: "u1".into(),
            role: role.into(),
            orgs: orgs.iter().map(|o| OrgId::parse(o).expect("valid")).collect(),
            tenant_id: None,
            contractor_id: None,
            exp: u64::MAX,
        };
        Policy::new(settings.policy.roles)
            .viewer(&claims, None)
            .expect("may subscribe")
    }

    fn event(org: &str, id: Option<u64>, priority: &str, n: u32) -> Arc<Event> {
        let raw = format!(r#"{{"type":"a.b","priority":"{priority}","data":{{"n":{n}}}}}"#);
        let envelope = Envelope::parse(raw.as_bytes(), 65536).expect("valid");
        let id = id.map(|seq| EventId { millis: 1, seq });
        Arc::new(Event::new(OrgId::parse(org).expect("valid"), id, envelope))
    }

    fn text(output: Output) -> String {
        match output {
            Output::Frames { bytes, .. } => String::from_utf8(bytes.to_vec()).expect("utf-8"),
            Output::Pending => "<pending>".into(),
            Output::Ended => "<ended>".into(),
        }
    }

    fn sse(now: u64, replaying: bool) -> Opening {
        Opening {
            encoding: Encoding::Sse,
            now,
            replaying,
        }
    }

    fn frames(frame: &'static [u8]) -> PerEncoding {
        PerEncoding::build(|_| Bytes::from_static(frame))
    }

    fn noop_waker() -> (Waker, Arc<CountingWaker>) {
        let counter = Arc::new(CountingWaker(AtomicU64::new(0)));
        (Waker::from(counter.clone()), counter)
    }

    #[test]
    fn queued_events_leave_as_one_chunk_in_order() {
        let shard = Shard::detached(8);
        let subscriber = shard.register(viewer("ops", &["o1"]), "ops", u64::MAX, sse(0, false));
        shard.publish(&event("o1", None, "normal", 1));
        shard.publish(&event("o1", None, "normal", 2));
        let (waker, _) = noop_waker();
        assert_eq!(
            text(subscriber.take(&waker, &ReplayMarks::default())),
            "event: a.b\ndata: {\"n\":1}\n\nevent: a.b\ndata: {\"n\":2}\n\n"
        );
        assert_eq!(
            text(subscriber.take(&waker, &ReplayMarks::default())),
            "<pending>"
        );
    }

    fn big_event(n: u32) -> Arc<Event> {
        let padding = "x".repeat(40 * 1024);
        let raw = format!(r#"{{"type":"a.b","data":{{"n":{n},"pad":"{padding}"}}}}"#);
        let envelope = Envelope::parse(raw.as_bytes(), 65536).expect("valid");
        Arc::new(Event::new(OrgId::parse("o1").expect("valid"), None, envelope))
    }

    /// A subscriber with three 40 kB events queued: more than one chunk holds.
    fn three_big_events_queued() -> (Shard, Arc<Subscriber>) {
        let shard = Shard::detached(8);
        let subscriber = shard.register(viewer("ops", &["o1"]), "ops", u64::MAX, sse(0, false));
        for n in 1..=3 {
            shard.publish(&big_event(n));
        }
        (shard, subscriber)
    }

    fn frames_in(output: &str) -> Vec<String> {
        output
            .split("\n\n")
            .filter(|frame| !frame.is_empty())
            .map(|frame| frame.split("\"pad\"").next().unwrap_or(frame).to_string())
            .collect()
    }

    #[test]
    fn a_chunk_stops_at_the_byte_budget_and_the_rest_stays_queued() {
        let (_shard, subscriber) = three_big_events_queued();
        let (waker, _) = noop_waker();
        let first = text(subscriber.take(&waker, &ReplayMarks::default()));
        assert_eq!(
            frames_in(&first).len(),
            2,
            "two 40 kB frames reach the 64 kB budget"
        );
        assert!(frames_in(&text(subscriber.take(&waker, &ReplayMarks::default())))[0].contains("\"n\":3"));
        assert_eq!(
            text(subscriber.take(&waker, &ReplayMarks::default())),
            "<pending>"
        );
    }

    #[test]
    fn high_priority_overtakes_events_left_queued_by_a_full_chunk() {
        let (shard, subscriber) = three_big_events_queued();
        let (waker, _) = noop_waker();
        let _ = subscriber.take(&waker, &ReplayMarks::default());
        shard.publish(&event("o1", None, "high", 9));
        let next = text(subscriber.take(&waker, &ReplayMarks::default()));
        assert_eq!(frames_in(&next)[0], "event: a.b\ndata: {\"n\":9}");
        assert!(frames_in(&next)[1].contains("\"n\":3"));
    }

    #[test]
    fn the_final_frame_waits_for_what_is_still_queued() {
        let (shard, subscriber) = three_big_events_queued();
        shard.close_all(|_| Bytes::from_static(b"bye\n\n"));
        let (waker, _) = noop_waker();
        let _ = subscriber.take(&waker, &ReplayMarks::default());
        let last = text(subscriber.take(&waker, &ReplayMarks::default()));
        assert_eq!(frames_in(&last).len(), 2);
        assert!(last.ends_with("bye\n\n"));
        assert_eq!(text(subscriber.take(&waker, &ReplayMarks::default())), "<ended>");
    }

    #[test]
    fn events_of_other_orgs_never_reach_a_subscriber() {
        let shard = Shard::detached(8);
        let subscriber = shard.register(viewer("ops", &["o1"]), "ops", u64::MAX, sse(0, false));
        assert_eq!(shard.publish(&event("o2", None, "normal", 1)), 0);
        let (waker, _) = noop_waker();
        assert_eq!(
            text(subscriber.take(&waker, &ReplayMarks::default())),
            "<pending>"
        );
    }

    #[test]
    fn a_full_queue_ends_the_stream_without_sending_more() {
        let shard = Shard::detached(2);
        let subscriber = shard.register(viewer("ops", &["o1"]), "ops", u64::MAX, sse(0, false));
        for n in 0..3 {
            shard.publish(&event("o1", None, "normal", n));
        }
        let (waker, _) = noop_waker();
        assert_eq!(text(subscriber.take(&waker, &ReplayMarks::default())), "<ended>");
    }

    #[test]
    fn a_publish_wakes_a_waiting_stream() {
        let shard = Shard::detached(8);
        let subscriber = shard.register(viewer("ops", &["o1"]), "ops", u64::MAX, sse(0, false));
        let (waker, counter) = noop_waker();
        assert_eq!(
            text(subscriber.take(&waker, &ReplayMarks::default())),
            "<pending>"
        );
        shard.publish(&event("o1", None, "normal", 1));
        assert_eq!(counter.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_woken_stream_is_woken_again_only_after_it_found_nothing_left() {
        let shard = Shard::detached(8);
        let subscriber = shard.register(viewer("ops", &["o1"]), "ops", u64::MAX, sse(0, false));
        let (waker, counter) = noop_waker();
        let _ = subscriber.take(&waker, &ReplayMarks::default());
        shard.publish(&event("o1", None, "normal", 1));
        shard.publish(&event("o1", None, "normal", 2));
        assert_eq!(
            counter.0.load(Ordering::Relaxed),
            1,
            "one wake for what queued meanwhile"
        );
        let _ = subscriber.take(&waker, &ReplayMarks::default());
        shard.publish(&event("o1", None, "normal", 3));
        assert_eq!(
            counter.0.load(Ordering::Relaxed),
            1,
            "still due to run: it has not found the slot empty"
        );
        assert_eq!(
            text(subscriber.take(&waker, &ReplayMarks::default())),
            "event: a.b\ndata: {\"n\":3}\n\n"
        );
        assert_eq!(
            text(subscriber.take(&waker, &ReplayMarks::default())),
            "<pending>"
        );
        shard.publish(&event("o1", None, "normal", 4));
        assert_eq!(counter.0.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn high_priority_overtakes_queued_durable_events_without_its_id() {
        let shard = Shard::detached(8);
        let subscriber = shard.register(viewer("ops", &["o1"]), "ops", u64::MAX, sse(0, false));
        shard.publish(&event("o1", Some(1), "normal", 1));
        shard.publish(&event("o1", Some(2), "high", 2));
        let (waker, _) = noop_waker();
        assert_eq!(
            text(subscriber.take(&waker, &ReplayMarks::default())),
            "event: a.b\ndata: {\"n\":2}\n\nid: 1-1\nevent: a.b\ndata: {\"n\":1}\n\n"
        );
    }

    #[test]
    fn high_priority_with_nothing_to_overtake_keeps_its_id() {
        let shard = Shard::detached(8);
        let subscriber = shard.register(viewer("ops", &["o1"]), "ops", u64::MAX, sse(0, false));
        shard.publish(&event("o1", Some(2), "high", 2));
        let (waker, _) = noop_waker();
        assert_eq!(
            text(subscriber.take(&waker, &ReplayMarks::default())),
            "id: 1-2\nevent: a.b\ndata: {\"n\":2}\n\n"
        );
    }

    #[test]
    fn events_already_replayed_are_skipped() {
        let shard = Shard::detached(8);
        let subscriber = shard.register(viewer("ops", &["o1"]), "ops", u64::MAX, sse(0, false));
        shard.publish(&event("o1", Some(1), "normal", 1));
        shard.publish(&event("o1", Some(2), "normal", 2));
        let (waker, _) = noop_waker();
        let mut marks = ReplayMarks::default();
        marks.raise(&OrgId::parse("o1").expect("valid"), EventId { millis: 1, seq: 1 });
        assert_eq!(
            text(subscriber.take(&waker, &marks)),
            "id: 1-2\nevent: a.b\ndata: {\"n\":2}\n\n"
        );
    }

    #[test]
    fn a_queued_keepalive_can_be_taken_alone() {
        let shard = Shard::detached(8);
        let subscriber = shard.register(viewer("ops", &["o1"]), "ops", u64::MAX, sse(0, true));
        assert_eq!(subscriber.take_keepalive(1), None);
        shard.tick(20, 15, &frames(b"ka\n\n"), &frames(b"expired\n\n"));
        assert_eq!(subscriber.take_keepalive(20).as_deref(), Some(&b"ka\n\n"[..]));
        assert_eq!(subscriber.take_keepalive(21), None);
    }

    #[test]
    fn a_mark_covers_only_its_own_org() {
        let mut marks = ReplayMarks::default();
        marks.raise(&OrgId::parse("o1").expect("valid"), EventId { millis: 5, seq: 0 });
        assert!(marks.covers(&event("o1", Some(4), "normal", 1)));
        assert!(!marks.covers(&event("o2", Some(4), "normal", 1)));
        assert!(
            !marks.covers(&event("o1", None, "normal", 1)),
            "live events are never covered"
        );
    }

    #[test]
    fn a_replaying_stream_queues_live_events_but_not_durable_ones() {
        let shard = Shard::detached(8);
        let subscriber = shard.register(viewer("ops", &["o1"]), "ops", u64::MAX, sse(0, true));
        shard.publish(&event("o1", Some(1), "normal", 1));
        shard.publish(&event("o1", None, "normal", 2));
        subscriber.stop_replaying();
        shard.publish(&event("o1", Some(3), "normal", 3));
        let (waker, _) = noop_waker();
        let frames = frames_in(&text(subscriber.take(&waker, &ReplayMarks::default())));
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert!(
            frames[0].contains("\"n\":2") && frames[1].contains("\"n\":3"),
            "{frames:?}"
        );
    }

    #[test]
    fn expiry_sends_the_final_frame_then_ends() {
        let shard = Shard::detached(8);
        let subscriber = shard.register(viewer("ops", &["o1"]), "ops", 100, sse(0, false));
        let keepalive = frames(b"ka\n\n");
        let expired = frames(b"expired\n\n");
        shard.tick(99, 1000, &keepalive, &expired);
        let (waker, _) = noop_waker();
        assert_eq!(
            text(subscriber.take(&waker, &ReplayMarks::default())),
            "<pending>"
        );
        shard.tick(100, 1000, &keepalive, &expired);
        assert_eq!(
            text(subscriber.take(&waker, &ReplayMarks::default())),
            "expired\n\n"
        );
        assert_eq!(text(subscriber.take(&waker, &ReplayMarks::default())), "<ended>");
    }

    #[test]
    fn keepalive_goes_only_to_idle_streams() {
        let shard = Shard::detached(8);
        let subscriber = shard.register(viewer("ops", &["o1"]), "ops", u64::MAX, sse(0, false));
        let keepalive = frames(b"ka\n\n");
        let expired = frames(b"expired\n\n");
        let (waker, _) = noop_waker();
        shard.publish_at(&event("o1", None, "normal", 1), 10);
        let _ = subscriber.take(&waker, &ReplayMarks::default());
        shard.tick(14, 5, &keepalive, &expired);
        assert_eq!(
            text(subscriber.take(&waker, &ReplayMarks::default())),
            "<pending>"
        );
        shard.tick(15, 5, &keepalive, &expired);
        assert_eq!(text(subscriber.take(&waker, &ReplayMarks::default())), "ka\n\n");
    }

    #[test]
    fn a_gzip_streams_chunk_decodes_to_the_plain_frames_with_its_own_cursor() {
        use std::io::Read;
        let shard = Shard::detached(8);
        let opening = Opening {
            encoding: Encoding::SseGzip { min_bytes: 0 },
            now: 0,
            replaying: false,
        };
        let subscriber = shard.register(viewer("ops", &["o1", "o2"]), "ops", u64::MAX, opening);
        let orgs = [
            OrgId::parse("o1").expect("valid"),
            OrgId::parse("o2").expect("valid"),
        ];
        subscriber.track_cursor(Cursor::starting(&orgs, |_| crate::cursor::Position::From(0)));
        shard.publish(&event("o1", Some(1), "normal", 1));
        shard.publish(&event("o2", None, "normal", 2));
        let (waker, _) = noop_waker();
        let Output::Frames {
            bytes,
            gzip: Some(tally),
            ..
        } = subscriber.take(&waker, &ReplayMarks::default())
        else {
            panic!("a gzip chunk");
        };
        let mut stream = crate::wire::gzip::HEADER.to_vec();
        stream.extend_from_slice(&bytes);
        stream.extend_from_slice(&tally.trailer());
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&stream[..])
            .read_to_string(&mut plain)
            .expect("a valid gzip stream whose CRC and length hold");
        let mut cursor = Cursor::starting(&orgs, |_| crate::cursor::Position::From(0));
        cursor.advance(&orgs[0], EventId { millis: 1, seq: 1 });
        assert_eq!(
            plain,
            format!(
                "event: a.b\ndata: {{\"n\":1}}\nid: {}\n\nevent: a.b\ndata: {{\"n\":2}}\n\n",
                cursor.encode()
            )
        );
    }

    /// An event whose message compresses (`text` repeats).
    fn wordy(id: u64, priority: &str, n: u32) -> Arc<Event> {
        let raw = format!(
            r#"{{"type":"a.b","priority":"{priority}","data":{{"n":{n},"text":"{}"}}}}"#,
            "abc".repeat(40)
        );
        let envelope = Envelope::parse(raw.as_bytes(), 65536).expect("valid");
        Arc::new(Event::new(
            OrgId::parse("o1").expect("valid"),
            Some(EventId { millis: 1, seq: id }),
            envelope,
        ))
    }

    fn wordy_data(n: u32) -> serde_json::Value {
        serde_json::json!({"n": n, "text": "abc".repeat(40)})
    }

    /// The JSON messages of a WebSocket chunk, compressed ones inflated, and how many were.
    fn ws_messages(output: Output) -> (Vec<serde_json::Value>, usize) {
        let Output::Frames { bytes, .. } = output else {
            panic!("frames");
        };
        let mut rest = &bytes[..];
        let mut messages = Vec::new();
        let mut compressed = 0;
        while !rest.is_empty() {
            let (header, len) = match rest[1] {
                126 => (4, usize::from(u16::from_be_bytes([rest[2], rest[3]]))),
                short => (2, usize::from(short)),
            };
            let payload = &rest[header..header + len];
            let text = if rest[0] & 0x40 != 0 {
                compressed += 1;
                crate::wire::deflate::inflate_message(payload, 1 << 20).expect("inflates")
            } else {
                payload.to_vec()
            };
            messages.push(serde_json::from_slice(&text).expect("a JSON message"));
            rest = &rest[header + len..];
        }
        (messages, compressed)
    }

    fn ws_subscriber(shard: &Shard, encoding: Encoding, orgs: &[&str]) -> Arc<Subscriber> {
        let opening = Opening {
            encoding,
            now: 0,
            replaying: false,
        };
        shard.register(viewer("ops", orgs), "ops", u64::MAX, opening)
    }

    #[test]
    fn over_websocket_high_priority_overtakes_queued_durable_events_without_its_id() {
        for encoding in [Encoding::Ws, Encoding::WsDeflate { min_bytes: 0 }] {
            let shard = Shard::detached(8);
            let subscriber = ws_subscriber(&shard, encoding, &["o1"]);
            shard.publish(&wordy(1, "normal", 1));
            shard.publish(&wordy(2, "high", 2));
            let (waker, _) = noop_waker();
            let (messages, compressed) = ws_messages(subscriber.take(&waker, &ReplayMarks::default()));
            assert_eq!(
                messages,
                [
                    serde_json::json!({"event": "a.b", "data": wordy_data(2)}),
                    serde_json::json!({"event": "a.b", "data": wordy_data(1), "id": "1-1"}),
                ],
                "{encoding:?}"
            );
            assert_eq!(compressed, if encoding == Encoding::Ws { 0 } else { 2 });
        }
    }

    #[test]
    fn over_websocket_a_stream_with_a_cursor_gets_it_as_each_durable_events_id() {
        let orgs = [
            OrgId::parse("o1").expect("valid"),
            OrgId::parse("o2").expect("valid"),
        ];
        for encoding in [Encoding::Ws, Encoding::WsDeflate { min_bytes: 0 }] {
            let shard = Shard::detached(8);
            let subscriber = ws_subscriber(&shard, encoding, &["o1", "o2"]);
            subscriber.track_cursor(Cursor::starting(&orgs, |_| crate::cursor::Position::From(0)));
            shard.publish(&wordy(1, "normal", 1));
            let (waker, _) = noop_waker();
            let mut cursor = Cursor::starting(&orgs, |_| crate::cursor::Position::From(0));
            cursor.advance(&orgs[0], EventId { millis: 1, seq: 1 });
            let (messages, compressed) = ws_messages(subscriber.take(&waker, &ReplayMarks::default()));
            assert_eq!(
                messages,
                [serde_json::json!({"event": "a.b", "data": wordy_data(1), "id": cursor.encode()})],
                "{encoding:?}"
            );
            assert_eq!(compressed, if encoding == Encoding::Ws { 0 } else { 1 });
        }
    }

    #[test]
    fn unregistered_subscribers_get_nothing() {
        let shard = Shard::detached(8);
        let subscriber = shard.register(viewer("ops", &["o1"]), "ops", u64::MAX, sse(0, false));
        shard.unregister(&subscriber);
        assert!(!shard.has_subscribers(&OrgId::parse("o1").expect("valid")));
        assert_eq!(shard.publish(&event("o1", None, "normal", 1)), 0);
        assert_eq!(shard.connection_count(), 0);
    }
}
