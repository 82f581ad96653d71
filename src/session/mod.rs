//! Sessions: the one way to open a stream, whatever the transport. `Sessions::open` admits,
//! registers, subscribes and resolves the start; the `Session` it returns owns every guard
//! (released on drop) and yields the stream's chunks: the opening, the replay read page by page
//! at the client's pace, then live events. A transport only frames and writes them (`Framing`).

mod replay;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::replay::PagedReplay;
use crate::auth::Claims;
use crate::broker::{Broker, BrokerError, Lease, OrgCursor, Page, Permit, Registry, ReplayFrom, Truncation};
use crate::clock::{unix_millis, unix_secs};
use crate::cursor::{Cursor, DecodedCursor, Position};
use crate::event::{EventId, OrgId};
use crate::hub::{Opening, Output, ReplayMarks, Shard, Subscriber};
use crate::limits::{RateLimiter, StreamSlot, StreamSlots};
use crate::policy::{Policy, PolicyError, TypeFilter, Viewer};
use crate::wire::gzip::Tally;
use crate::wire::Encoding;

/// Most bytes of replayed events handed to the transport at once.
const MAX_REPLAY_CHUNK_BYTES: usize = 64 * 1024;

/// Where a stream asks to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// After this event (`Last-Event-ID`, `lastEventId`).
    After(EventId),
    /// From each org's position in a resume cursor (`Last-Event-ID`, `lastEventId`); an org it
    /// does not name starts now.
    Cursor(DecodedCursor),
    /// From this time, in milliseconds since the epoch (`since=`).
    Since(u64),
    /// From the user's acknowledged cursor (`since=ack`); live only when there is none.
    Ack,
}

/// What a client asks for when it opens a stream.
#[derive(Debug, Default)]
pub struct OpenRequest {
    pub types: Option<TypeFilter>,
    pub start: Option<Start>,
}

/// Why a stream is not opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Forbidden(#[from] PolicyError),
    #[error("this replica has reached its connection limit")]
    ServerFull,
    #[error("the broker is not ready")]
    NotReady,
    #[error("more than {0} new streams per second for this user")]
    UserRateLimited(u32),
    #[error("this user already has the maximum of {0} open streams")]
    TooManyConnections(usize),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A refreshed token names another user than the stream's.
    #[error("the new token is for another user than this stream's")]
    OtherUser,
    /// An acknowledged id this gateway's history never issued.
    #[error("{0} is not an id this gateway's history has issued")]
    NeverIssued(EventId),
}

/// What the `connected` event tells the client.
#[derive(Debug, Clone)]
pub struct Connected {
    pub connection_id: String,
    pub user_id: String,
    pub role: String,
    pub orgs: Vec<String>,
    pub replica: String,
    pub keepalive_secs: u64,
}

impl Connected {
    /// The `connected` event's data, the same in every transport.
    pub fn data(&self) -> serde_json::Value {
        serde_json::json!({
            "connectionId": self.connection_id,
            "userId": self.user_id,
            "role": self.role,
            "orgs": self.orgs,
            "replica": self.replica,
            "keepaliveSecs": self.keepalive_secs,
        })
    }
}

/// The `history.truncated` event's data, the same in every transport.
pub fn truncation_data(truncation: &Truncation) -> serde_json::Value {
    let oldest_id = truncation.oldest_id.map(|id| id.to_string()).unwrap_or_default();
    serde_json::json!({ "oldestId": oldest_id, "reason": truncation.reason.as_str() })
}

/// How a transport writes what a session says. Events, live and replayed, are written in the
/// transport's `Encoding`, built once per replica and shared by every recipient.
pub trait Framing: Unpin + 'static {
    fn encoding(&self) -> Encoding;
    /// The first bytes of a stream, once it is subscribed to every org of its token.
    fn opening(&self, connected: &Connected) -> Bytes;
    /// Told before a replay that cannot give everything after the start.
    fn truncated(&self, truncation: &Truncation) -> Bytes;
}

/// The limits and settings sessions are opened with.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub replica_name: String,
    pub keepalive_secs: u64,
    pub max_connections_per_user: usize,
    pub connect_rate_per_user: u32,
    /// Most events one replay page holds, across the orgs it reads.
    pub replay_page_events: usize,
    /// Bytes one replay page aims at (its event count follows the events' size).
    pub replay_page_bytes: usize,
}

/// Opens sessions; one per replica, shared by every worker.
pub struct Sessions {
    policy: Policy,
    broker: Broker,
    registry: Arc<Registry>,
    stream_slots: StreamSlots,
    user_rate: RateLimiter,
    /// `history.max_concurrent_replays`: a replay waits for a permit (its stream already open).
    replays: Arc<Semaphore>,
    settings: SessionSettings,
}

impl Sessions {
    pub fn new(
        policy: Policy,
        broker: Broker,
        registry: Arc<Registry>,
        stream_slots: StreamSlots,
        max_concurrent_replays: usize,
        settings: SessionSettings,
    ) -> Self {
        Self {
            policy,
            broker,
            registry,
            user_rate: RateLimiter::new(settings.connect_rate_per_user),
            stream_slots,
            replays: Arc::new(Semaphore::new(max_concurrent_replays.max(1))),
            settings,
        }
    }

    /// Where each org of the token starts replaying, or `None` for a live-only stream.
    /// `since=ack` starts each org from the user's position in it; an org the user never
    /// acknowledged starts now (what is published from here on), and a user with no position
    /// in any of the token's orgs gets a live-only stream.
    async fn start_cursors(
        &self,
        claims: &Claims,
        start: Start,
    ) -> Result<Option<Vec<OrgCursor>>, SessionError> {
        let every_org = |from: ReplayFrom| {
            let cursors = claims.orgs.iter().map(|org| OrgCursor {
                org: org.clone(),
                from,
            });
            Some(cursors.collect())
        };
        Ok(match start {
            Start::After(id) => every_org(ReplayFrom::After(id)),
            Start::Cursor(cursor) => {
                let now = ReplayFrom::Since(unix_millis());
                let cursors = claims.orgs.iter().map(|org| OrgCursor {
                    org: org.clone(),
                    from: match cursor.position_of(org) {
                        Some(Position::After(id)) => ReplayFrom::After(id),
                        Some(Position::From(millis)) => ReplayFrom::Since(millis),
                        None => now,
                    },
                });
                Some(cursors.collect())
            }
            Start::Since(millis) => every_org(ReplayFrom::Since(millis)),
            Start::Ack => {
                let acks = self.broker.load_acks(&claims.sub, &claims.orgs).await?;
                if acks.is_empty() {
                    return Ok(None);
                }
                let now = ReplayFrom::Since(unix_millis());
                let cursors = claims.orgs.iter().map(|org| {
                    let acked = acks.iter().find(|(acked, _)| acked == org);
                    OrgCursor {
                        org: org.clone(),
                        from: acked.map_or(now, |(_, id)| ReplayFrom::After(*id)),
                    }
                });
                Some(cursors.collect())
            }
        })
    }

    /// Opens a stream for `claims` on this worker's `shard`. Once this returns, every event of
    /// the token's orgs that this replica receives reaches the session (queued, or read by its
    /// replay), so nothing published after the opening is sent can be missed.
    pub async fn open<F: Framing>(
        &self,
        claims: &Claims,
        request: OpenRequest,
        shard: Arc<Shard>,
        framing: F,
    ) -> Result<Session<F>, SessionError> {
        let viewer = self.policy.viewer(claims, request.types)?;
        // Taken before anything is awaited, so concurrent opens cannot overshoot the limit.
        let slot = self.stream_slots.try_take().ok_or(SessionError::ServerFull)?;
        if !self.broker.is_ready() {
            return Err(SessionError::NotReady);
        }
        let now = unix_secs();
        if !self.user_rate.allow(&claims.sub, now) {
            return Err(SessionError::UserRateLimited(self.settings.connect_rate_per_user));
        }
        let cursors = match request.start {
            Some(start) => self.start_cursors(claims, start).await?,
            None => None,
        };
        let max_per_user = self.settings.max_connections_per_user;
        let permit = self
            .registry
            .admit(&claims.sub, max_per_user)
            .await?
            .ok_or(SessionError::TooManyConnections(max_per_user))?;
        // Registered before subscribing: whatever reaches this replica from the moment Redis
        // confirms the subscription is queued for this stream (or, while it replays, read from
        // history).
        let opening = Opening {
            encoding: framing.encoding(),
            now,
            replaying: cursors.is_some(),
        };
        let subscriber = shard.register(viewer, &claims.role, claims.exp, opening);
        // Ids ordered per org: a stream of several orgs says where it is with a cursor of
        // per-org positions, starting where each org starts.
        let tracks_cursor = self.broker.ids_per_org() && claims.orgs.len() > 1;
        if tracks_cursor {
            let live_from = Position::From(unix_millis());
            subscriber.track_cursor(Cursor::starting(&claims.orgs, |org| {
                let start = cursors
                    .as_ref()
                    .and_then(|cursors| cursors.iter().find(|cursor| cursor.org == *org));
                match start.map(|cursor| cursor.from) {
                    Some(ReplayFrom::After(id)) => Position::After(id),
                    Some(ReplayFrom::Since(millis)) => Position::From(millis),
                    None => live_from,
                }
            }));
        }
        let registration = Registration {
            shard,
            subscriber: subscriber.clone(),
        };
        let lease = self.broker.subscribe(&claims.orgs).await?;
        let connected = Connected {
            connection_id: format!("{:016x}", subscriber.id),
            user_id: claims.sub.clone(),
            role: claims.role.clone(),
            orgs: claims.orgs.iter().map(|org| org.to_string()).collect(),
            replica: self.settings.replica_name.clone(),
            keepalive_secs: self.settings.keepalive_secs,
        };
        let replay = cursors.map(|cursors| {
            Box::new(ReplayDriver {
                paged: PagedReplay::new(
                    cursors,
                    self.settings.replay_page_events,
                    self.settings.replay_page_bytes,
                ),
                broker: self.broker.clone(),
                permits: self.replays.clone(),
                permit: None,
                acquiring: None,
                fetching: None,
                reading_tail: false,
                tracks_cursor,
            })
        });
        tracing::debug!(
            conn = %connected.connection_id,
            user = %claims.sub,
            role = %claims.role,
            orgs = claims.orgs.len(),
            replay = replay.is_some(),
            "Stream opened."
        );
        Ok(Session {
            opening: Some(framing.opening(&connected)),
            framing,
            subscriber,
            replay,
            marks: ReplayMarks::default(),
            held: Held {
                registration,
                lease,
                _permit: permit,
                _slot: slot,
            },
        })
    }

    /// Saves `position` as `user`'s acknowledged position in each of `orgs` (for `since=ack`):
    /// an event id is the position in every org, a cursor names each org's own.
    pub async fn acknowledge(
        &self,
        user: &str,
        orgs: &[OrgId],
        position: &Start,
    ) -> Result<(), SessionError> {
        let positions: Vec<(OrgId, EventId)> = match position {
            Start::Cursor(cursor) => orgs
                .iter()
                .filter_map(|org| match cursor.position_of(org)? {
                    Position::After(id) => Some((org.clone(), id)),
                    Position::From(_) => None,
                })
                .collect(),
            Start::After(id) => orgs.iter().map(|org| (org.clone(), *id)).collect(),
            Start::Since(_) | Start::Ack => Vec::new(),
        };
        if let Some(newest) = positions.iter().map(|(_, id)| *id).max() {
            if !self.broker.was_issued(orgs, newest).await? {
                return Err(SessionError::NeverIssued(newest));
            }
        }
        self.broker.save_acks(user, &positions).await?;
        Ok(())
    }

    /// Checks a refreshed token for an open stream of `user` whose filter is `types`, and
    /// subscribes its orgs: what `Session::reidentify` then applies. The stream is untouched
    /// until then, and keeps its old token's rights if this fails.
    pub async fn reauthorize(
        &self,
        user: &str,
        claims: &Claims,
        types: Option<TypeFilter>,
    ) -> Result<Reauthorized, SessionError> {
        if claims.sub != user {
            return Err(SessionError::OtherUser);
        }
        let viewer = self.policy.viewer(claims, types)?;
        let lease = self.broker.subscribe(&claims.orgs).await?;
        Ok(Reauthorized {
            viewer,
            role: claims.role.clone(),
            expires_at: claims.exp,
            lease,
        })
    }
}

/// A refreshed token, checked and subscribed (`Sessions::reauthorize`).
pub struct Reauthorized {
    viewer: Viewer,
    role: String,
    expires_at: u64,
    lease: Lease,
}

/// A stream's place in its worker's shard; dropping it unregisters the stream.
struct Registration {
    shard: Arc<Shard>,
    subscriber: Arc<Subscriber>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shard.unregister(&self.subscriber);
        tracing::debug!(conn = self.subscriber.id, "Stream closed.");
    }
}

/// Everything a stream holds while it lives.
struct Held {
    registration: Registration,
    /// This replica stays subscribed to the stream's orgs.
    lease: Lease,
    /// The stream counts against its user's limit across replicas.
    _permit: Permit,
    /// The stream counts against the replica's limit.
    _slot: StreamSlot,
}

/// One open stream.
/// Kept small: an idle stream holds one for hours (the replay, when there is one, is boxed).
pub struct Session<F: Framing> {
    framing: F,
    opening: Option<Bytes>,
    subscriber: Arc<Subscriber>,
    /// The replay still to send, if the stream started with one.
    replay: Option<Box<ReplayDriver>>,
    /// Per org, what the replay covered: queued live copies up to it are skipped.
    marks: ReplayMarks,
    held: Held,
}

/// What the session has for its transport now.
pub enum Chunk {
    /// Bytes to write as they are in the stream's plain framing (its opening, a replay page):
    /// a gzip stream's transport compresses them as one unit.
    Bytes(Bytes),
    /// Bytes to write holding this many live events, the oldest received at that instant
    /// (for the delivery metrics), already in the stream's encoding; for a gzip stream, with
    /// the tally of what its pieces stand for.
    Live {
        bytes: Bytes,
        events: u64,
        oldest: Option<std::time::Instant>,
        gzip: Option<Tally>,
    },
}

impl<F: Framing> Session<F> {
    /// The orgs the stream's token lists now.
    pub fn orgs(&self) -> Vec<OrgId> {
        self.subscriber.orgs()
    }

    /// The `types=` filter in force.
    pub fn types(&self) -> Option<TypeFilter> {
        self.subscriber.types()
    }

    /// Replaces the `types=` filter of the open stream.
    pub fn set_types(&self, types: Option<TypeFilter>) {
        self.subscriber.set_types(types);
    }

    /// Applies a refreshed token: its orgs, role and expiry hold from now on.
    pub fn reidentify(&mut self, refreshed: Reauthorized) {
        let registration = &self.held.registration;
        registration.shard.reidentify(
            &registration.subscriber,
            refreshed.viewer,
            &refreshed.role,
            refreshed.expires_at,
        );
        // The new lease is taken before the old one goes: orgs in both stay subscribed.
        self.held.lease = refreshed.lease;
    }

    pub fn framing(&self) -> &F {
        &self.framing
    }

    /// The next chunk to write, `Pending` (the waker is called when there is one), or `None`
    /// when the stream is over.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        if let Some(opening) = self.opening.take() {
            return Poll::Ready(Some(Chunk::Bytes(opening)));
        }
        if let Some(replay) = &mut self.replay {
            // A stream being drained, expired or cut stops replaying and ends as live ones do.
            let step = if self.subscriber.is_closing() {
                ReplayStep::Done
            } else {
                replay.poll(cx, &self.subscriber, &self.framing)
            };
            match step {
                ReplayStep::Chunk(bytes) => return Poll::Ready(Some(Chunk::Bytes(bytes))),
                ReplayStep::Pending => return Poll::Pending,
                ReplayStep::Failed => return Poll::Ready(None),
                ReplayStep::Done => {
                    // The driver already queues durable events again (before its tail read);
                    // a closing stream sends only what is queued and its last frame.
                    self.marks = replay.paged.marks().clone();
                    self.replay = None;
                }
            }
        }
        match self.subscriber.take(cx.waker(), &self.marks) {
            Output::Frames {
                bytes,
                events,
                oldest,
                gzip,
            } => Poll::Ready(Some(Chunk::Live {
                bytes,
                events,
                oldest,
                gzip,
            })),
            Output::Pending => Poll::Pending,
            Output::Ended => Poll::Ready(None),
        }
    }
}

/// A page being read by a task of its own: the read completes at Redis's pace whether or not
/// the client reads, and only the next page waits for the client.
type PageFuture = tokio::task::JoinHandle<Result<Page, BrokerError>>;
type PermitFuture = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>>>>;

/// Drives a `PagedReplay`: takes a replay permit, reads pages when the client has taken what
/// was read, and switches the stream to queueing durable events before reading the tail.
struct ReplayDriver {
    paged: PagedReplay,
    broker: Broker,
    permits: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    acquiring: Option<PermitFuture>,
    fetching: Option<PageFuture>,
    /// The stream queues durable events again; what remains is the tail read.
    reading_tail: bool,
    /// The stream writes its resume cursor after each durable event (held by its hub slot), so
    /// replayed events go through the slot too; other streams write the shared frames alone.
    tracks_cursor: bool,
}

enum ReplayStep {
    Chunk(Bytes),
    Pending,
    /// Caught up with history: live from here.
    Done,
    /// History could not be read: the stream ends and the client resumes from its last id.
    Failed,
}

impl ReplayDriver {
    fn poll<F: Framing>(&mut self, cx: &mut Context<'_>, subscriber: &Subscriber, framing: &F) -> ReplayStep {
        if self.permit.is_none() {
            let permits = self.permits.clone();
            let acquiring = self
                .acquiring
                .get_or_insert_with(|| Box::pin(async move { permits.acquire_owned().await.ok() }));
            match acquiring.as_mut().poll(cx) {
                // Waiting for its turn, the stream still gets its keepalives (the tick wakes it).
                Poll::Pending => {
                    return match subscriber.take_keepalive(unix_secs()) {
                        Some(keepalive) => ReplayStep::Chunk(keepalive),
                        None => {
                            subscriber.park(cx.waker());
                            ReplayStep::Pending
                        }
                    };
                }
                Poll::Ready(None) => return ReplayStep::Failed,
                Poll::Ready(Some(permit)) => {
                    self.permit = Some(permit);
                    self.acquiring = None;
                }
            }
        }
        let mut out = BytesMut::new();
        loop {
            if let Some(fetching) = &mut self.fetching {
                match Pin::new(fetching).poll(cx) {
                    Poll::Pending if out.is_empty() => return ReplayStep::Pending,
                    Poll::Pending => return ReplayStep::Chunk(out.freeze()),
                    Poll::Ready(Err(error)) => {
                        tracing::error!(conn = subscriber.id, %error, "A replay's history read failed; closing the stream.");
                        return ReplayStep::Failed;
                    }
                    Poll::Ready(Ok(Err(error))) => {
                        tracing::warn!(conn = subscriber.id, %error, "Could not read history for a replay; closing the stream.");
                        return ReplayStep::Failed;
                    }
                    Poll::Ready(Ok(Ok(page))) => {
                        self.fetching = None;
                        if let Some(truncation) = self.paged.absorb(page) {
                            out.extend_from_slice(&framing.truncated(&truncation));
                        }
                    }
                }
            }
            while out.len() < MAX_REPLAY_CHUNK_BYTES {
                let Some(event) = self.paged.next_ready() else {
                    break;
                };
                if subscriber.may_see(&event) {
                    if self.tracks_cursor {
                        subscriber.write_replayed(&event, &mut out);
                    } else {
                        out.extend_from_slice(&subscriber.encoding().event(&event));
                    }
                }
            }
            if out.len() >= MAX_REPLAY_CHUNK_BYTES {
                // The next page is read when the client has taken this chunk.
                return ReplayStep::Chunk(out.freeze());
            }
            if self.paged.is_caught_up() {
                if self.reading_tail {
                    return if out.is_empty() {
                        ReplayStep::Done
                    } else {
                        ReplayStep::Chunk(out.freeze())
                    };
                }
                // Durable events are queued from now on; one more read of every org catches
                // what was published before this instant but after its last page.
                subscriber.stop_replaying();
                self.paged.read_tail();
                self.reading_tail = true;
            }
            let (cursors, per_org) = self.paged.wanted();
            if cursors.is_empty() {
                // Not caught up, yet nothing to read: only events the merge holds back, which
                // the next poll sends.
                return ReplayStep::Chunk(out.freeze());
            }
            let broker = self.broker.clone();
            self.fetching = Some(actix_web::rt::spawn(async move {
                broker.read_page(&cursors, per_org).await
            }));
        }
    }
}
