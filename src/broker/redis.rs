//! Redis mode: one RESP3 pub/sub connection per replica feeding the hub, a deadpool-redis pool
//! for commands, and the `event_gateway` Redis Functions for durable publish and replay.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::{FromRedisValue, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::commands::{pubsub_cluster_client, seed_urls, Commands, Connection, COMMAND_TIMEOUT};
use super::subscriptions::{parse_channel, ChannelKind, PubSub, Subscriptions};
use super::{
    BrokerError, HistoryBounds, HistorySettings, Lease, OrgCursor, OrgPage, Page, PublishItem, RedisSettings,
    ReplayFrom,
};
use crate::clock::unix_millis;
use crate::event::{EnvelopeError, Event, EventId, OrgId};
use crate::hub::Hub;
use crate::metrics::{Source, METRICS};
use crate::shutdown::Shutdown;
use crate::telemetry::RateLimitedLog;

const FUNCTIONS_TEMPLATE: &str = include_str!("functions.lua");
/// How often readiness is probed (and the Functions reloaded if Redis lost them).
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Events read per call when filling the gap an outage left.
const GAP_FILL_PAGE: usize = 256;
/// How often an unreachable Redis is logged again while it stays unreachable.
const UNREACHABLE_REMINDER: Duration = Duration::from_secs(30);
/// How long a durable publish waits for `redis.min_replicas_ack` replicas.
const REPLICA_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// The publish Function's id counter (see functions.lua).
const LAST_ID_KEY: &str = "events:last-id";

pub struct RedisBroker {
    commands: Commands,
    /// `redis.url` without its credentials, for the log.
    display_url: String,
    /// `redis.min_replicas_ack`.
    min_replicas_ack: u32,
    history: History,
    subscriptions: Arc<Subscriptions>,
    /// Redis answered the last probe and the Functions are loaded.
    ready: Arc<AtomicBool>,
    /// The pub/sub side, until `start_subscriber` starts it.
    subscriber: Mutex<Option<Subscriber>>,
}

/// How the pub/sub connection is made.
enum PubSubClient {
    Standalone(redis::Client, redis::aio::ConnectionManagerConfig),
    Cluster(redis::cluster::ClusterClient),
}

/// What the pub/sub side is made of before it runs.
struct Subscriber {
    client: PubSubClient,
    pushes: UnboundedReceiver<PushInfo>,
    dispatcher: Dispatcher,
    shutdown: Shutdown,
}

/// Reads and writes durable history.
#[derive(Clone)]
struct History {
    commands: Commands,
    functions: Arc<str>,
    /// Digest of `functions`, which `event_gateway_version` answers once they are loaded.
    version: Arc<str>,
    /// Replicas whose libraries differ replace each other's; say so now and then.
    replaced_log: Arc<RateLimitedLog>,
    max_event_bytes: usize,
    ack_ttl_secs: u64,
}

fn unavailable(error: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(error.to_string())
}

pub(super) fn command_error(error: redis::RedisError) -> BrokerError {
    if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_timeout()
        || error.is_connection_refusal()
    {
        BrokerError::Unavailable(error.to_string())
    } else {
        BrokerError::Failed(error.to_string())
    }
}

/// Errors the publish Function raises for a bad envelope or org start with these words; any
/// other error of a publish is the broker's, not the publisher's.
const FUNCTION_REFUSALS: [&str; 3] = ["invalid envelope", "invalid org id", "missing envelope"];

/// Like `command_error`, but a refusal by the publish Function is the publisher's fault.
fn publish_error(error: redis::RedisError) -> BrokerError {
    match error.detail() {
        Some(detail)
            if FUNCTION_REFUSALS
                .iter()
                .any(|refusal| detail.starts_with(refusal)) =>
        {
            BrokerError::Rejected(detail.to_string())
        }
        _ => command_error(error),
    }
}

/// FNV-1a: a digest that is the same for the same text on every build and platform.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn is_missing_function(error: &redis::RedisError) -> bool {
    error.to_string().contains("Function not found")
}

/// `url` (or each of several, comma-separated) with any `user:password@` replaced by `***@`.
fn without_credentials(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let one = one.trim();
            match (one.find("://"), one.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &one[..scheme + 3], &one[at..]),
                _ => one.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn connection_info(url: &str) -> Result<redis::ConnectionInfo, redis::RedisError> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    Ok(info.set_redis_settings(settings))
}

impl RedisBroker {
    /// Configures the command pool and the pub/sub side; nothing connects yet (the gateway
    /// starts while Redis is down). `start_subscriber` then starts the pub/sub side.
    pub fn new(
        redis: &RedisSettings,
        history: &HistorySettings,
        max_event_bytes: usize,
        hub: Arc<Hub>,
        shutdown: Shutdown,
    ) -> Result<Arc<Self>, BrokerError> {
        let url = redis.url.trim();
        let (push_sender, pushes) = tokio::sync::mpsc::unbounded_channel::<PushInfo>();
        let client = if redis.cluster {
            PubSubClient::Cluster(pubsub_cluster_client(&seed_urls(url), push_sender)?)
        } else {
            let client =
                redis::Client::open(connection_info(url).map_err(unavailable)?).map_err(unavailable)?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_push_sender(push_sender)
                .set_automatic_resubscription()
                .set_number_of_retries(usize::MAX)
                .set_max_delay(Duration::from_secs(2))
                .set_connection_timeout(Some(COMMAND_TIMEOUT))
                .set_response_timeout(Some(COMMAND_TIMEOUT));
            PubSubClient::Standalone(client, config)
        };
        let subscriptions = Arc::new(Subscriptions::new(Duration::from_secs(
            redis.unsubscribe_linger_secs,
        )));
        // Command connections get the same timeouts as the pub/sub one (redis-rs's default
        // response timeout, 500 ms, is shorter than a large durable batch legitimately takes).
        let commands = if redis.cluster {
            Commands::cluster(&seed_urls(url))?
        } else {
            Commands::pool(url)?
        };
        let functions = FUNCTIONS_TEMPLATE
            .replace("__MAX_EVENTS__", &history.max_events_per_org.to_string())
            .replace("__RETENTION_MS__", &(history.retention_secs * 1000).to_string())
            .replace("__MAX_BYTES__", &max_event_bytes.to_string())
            .replace("__CLUSTER__", if redis.cluster { "true" } else { "false" });
        let version = format!("{:016x}", fnv1a(functions.as_bytes()));
        let functions = functions.replace("__VERSION__", &version);
        let history = History {
            commands: commands.clone(),
            functions: functions.into(),
            version: version.into(),
            replaced_log: Arc::new(RateLimitedLog::new(Duration::from_secs(60))),
            max_event_bytes,
            ack_ttl_secs: history.retention_secs,
        };
        let ready = Arc::new(AtomicBool::new(false));
        let dispatcher = Dispatcher {
            hub,
            history: history.clone(),
            subscriptions: subscriptions.clone(),
            cluster: redis.cluster,
            ready: ready.clone(),
            max_event_bytes,
            subscribed: HashSet::new(),
            last_durable: HashMap::new(),
            newest_durable: None,
            refill: HashMap::new(),
            dropped_log: RateLimitedLog::new(Duration::from_secs(10)),
        };
        Ok(Arc::new(Self {
            display_url: without_credentials(url),
            commands,
            min_replicas_ack: redis.min_replicas_ack,
            history,
            subscriptions,
            ready,
            subscriber: Mutex::new(Some(Subscriber {
                client,
                pushes,
                dispatcher,
                shutdown,
            })),
        }))
    }

    /// Starts the pub/sub connection (connecting lazily, reconnecting forever), its dispatcher,
    /// the health probe and the subscription sweeper on the calling thread's runtime; later calls
    /// do nothing. Called by the first HTTP worker, so that the messages are read on the thread
    /// that fans them out: with one worker, an event crosses no thread between Redis and the
    /// socket writes. (redis-rs runs a connection's tasks on the runtime that creates it.)
    pub fn start_subscriber(self: &Arc<Self>) {
        let Some(parts) = self.subscriber.lock().take() else {
            return;
        };
        match parts.client {
            PubSubClient::Standalone(client, config) => {
                match ConnectionManager::new_lazy_with_config(client, config) {
                    Ok(connection) => self.subscriptions.attach(PubSub::Standalone(connection)),
                    Err(error) => {
                        // Only a configuration the code above never builds fails here; the
                        // replica then stays not ready, which its readiness probe reports.
                        tracing::error!(%error, "Could not set up the Redis pub/sub connection.");
                        return;
                    }
                }
            }
            PubSubClient::Cluster(client) => {
                // A cluster connection needs the topology: made (and retried) in the background.
                let subscriptions = self.subscriptions.clone();
                let shutdown = parts.shutdown.clone();
                tokio::spawn(async move {
                    loop {
                        match client.get_async_connection().await {
                            Ok(connection) => {
                                subscriptions.attach(PubSub::Cluster(connection));
                                return;
                            }
                            Err(error) => {
                                tracing::debug!(%error, "The Redis Cluster is not reachable yet.");
                            }
                        }
                        tokio::select! {
                            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
                            () = shutdown.stopped() => return,
                        }
                    }
                });
            }
        }
        tokio::spawn(parts.dispatcher.run(parts.pushes, parts.shutdown.clone()));
        tokio::spawn(probe_health(self.clone(), parts.shutdown.clone()));
        tokio::spawn(sweep_subscriptions(self.subscriptions.clone(), parts.shutdown));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Where commands go, for the connection registry.
    pub fn commands(&self) -> Commands {
        self.commands.clone()
    }

    pub async fn subscribe(&self, orgs: &[OrgId]) -> Result<Lease, BrokerError> {
        self.subscriptions.acquire(orgs).await
    }

    /// Publishes `items` durably, atomically: all or none of them. In cluster mode a batch is
    /// atomic per org (an org's events are on one node; a transaction cannot span nodes), and
    /// the orgs of a batch are published one after another, in the batch's order of orgs.
    pub async fn publish(&self, items: &[PublishItem]) -> Result<Vec<EventId>, BrokerError> {
        let mut ids: Vec<Option<EventId>> = vec![None; items.len()];
        let groups: Vec<Vec<usize>> = if self.commands.is_cluster() {
            let mut groups: Vec<(&OrgId, Vec<usize>)> = Vec::new();
            for (index, item) in items.iter().enumerate() {
                match groups.iter_mut().find(|(org, _)| **org == item.org) {
                    Some((_, indexes)) => indexes.push(index),
                    None => groups.push((&item.org, vec![index])),
                }
            }
            groups.into_iter().map(|(_, indexes)| indexes).collect()
        } else {
            vec![(0..items.len()).collect()]
        };
        let mut connection = self.commands.get().await?;
        for group in groups {
            let published = self.publish_group(&mut connection, items, &group).await?;
            for (&index, id) in group.iter().zip(published) {
                let id = id
                    .parse()
                    .map_err(|_| BrokerError::Failed(format!("unexpected event id {id:?}")))?;
                ids[index] = Some(id);
            }
        }
        ids.into_iter()
            .map(|id| id.ok_or_else(|| BrokerError::Failed("Redis answered fewer ids than events".into())))
            .collect()
    }

    /// Publishes the events `group` picks from `items` (one org's, in cluster mode) in one
    /// transaction when there are several, and, with `redis.min_replicas_ack`, `WAIT`s in the
    /// same pipeline: it runs on the node that took the writes, whatever the cluster's routing
    /// does meanwhile. Returns the ids.
    async fn publish_group(
        &self,
        connection: &mut Connection,
        items: &[PublishItem],
        group: &[usize],
    ) -> Result<Vec<String>, BrokerError> {
        let wait = self.min_replicas_ack;
        let transaction = group.len() > 1;
        let mut pipeline = redis::pipe();
        if transaction {
            // One bad or failed event publishes none of the group.
            pipeline.cmd("MULTI").ignore();
        }
        for &index in group {
            pipeline
                .cmd("FCALL")
                .arg("event_gateway_publish")
                .arg(1)
                .arg(items[index].org.as_str())
                .arg(&items[index].raw);
            if transaction {
                pipeline.ignore();
            }
        }
        if transaction {
            pipeline.cmd("EXEC");
        }
        if wait > 0 {
            pipeline
                .cmd("WAIT")
                .arg(wait)
                .arg(REPLICA_ACK_TIMEOUT.as_millis() as u64);
        }
        let mut replies: Vec<Value> = match pipeline.query_async(&mut *connection).await {
            Ok(replies) => replies,
            Err(error) if is_missing_function(&error) => {
                self.history.load_functions().await?;
                pipeline
                    .query_async(&mut *connection)
                    .await
                    .map_err(publish_error)?
            }
            Err(error) => return Err(publish_error(error)),
        };
        if wait > 0 {
            let held = replies
                .pop()
                .and_then(|reply| i64::from_redis_value(reply).ok())
                .ok_or_else(|| BrokerError::Failed("WAIT answered no count".into()))?;
            if held < i64::from(wait) {
                return Err(BrokerError::NotReplicated { wanted: wait, held });
            }
        }
        let ids = if transaction {
            replies.pop().map(Vec::<String>::from_redis_value)
        } else {
            replies
                .pop()
                .map(|reply| String::from_redis_value(reply).map(|id| vec![id]))
        };
        match ids {
            Some(Ok(ids)) if ids.len() == group.len() => Ok(ids),
            Some(Err(error)) => Err(BrokerError::Failed(format!("unexpected publish answer: {error}"))),
            _ => Err(BrokerError::Failed("Redis answered fewer ids than events".into())),
        }
    }

    pub(super) async fn read_page(&self, cursors: &[OrgCursor], count: usize) -> Result<Page, BrokerError> {
        self.history.read_page(cursors, count).await
    }

    /// The newest id the publish Function has handed out to any of `orgs` (in standalone mode,
    /// to any org: ids are global there), if any.
    pub async fn last_issued(&self, orgs: &[OrgId]) -> Result<Option<EventId>, BrokerError> {
        let counters: Vec<String> = if self.commands.is_cluster() {
            orgs.iter()
                .map(|org| format!("events:last-id:{{{org}}}"))
                .collect()
        } else {
            vec![LAST_ID_KEY.to_string()]
        };
        let reads = counters
            .iter()
            .map(|key| {
                let mut command = redis::cmd("HMGET");
                command.arg(key).arg("ms").arg("seq");
                command
            })
            .collect();
        let answers: Vec<(Option<u64>, Option<u64>)> = self.commands.each(reads).await?;
        Ok(answers
            .into_iter()
            .filter_map(|(millis, seq)| {
                Some(EventId {
                    millis: millis?,
                    seq: seq?,
                })
            })
            .max())
    }

    pub fn is_cluster(&self) -> bool {
        self.commands.is_cluster()
    }

    pub async fn save_acks(&self, user: &str, positions: &[(OrgId, EventId)]) -> Result<(), BrokerError> {
        let key = ack_key(user);
        let fields: Vec<(&str, String)> = positions
            .iter()
            .map(|(org, id)| (org.as_str(), id.to_string()))
            .collect();
        let mut connection = self.commands.get().await?;
        redis::pipe()
            .atomic()
            .hset_multiple(&key, &fields)
            .ignore()
            .expire(&key, self.history.ack_ttl_secs as i64)
            .ignore()
            .query_async::<()>(&mut connection)
            .await
            .map_err(command_error)
    }

    pub async fn load_acks(&self, user: &str, orgs: &[OrgId]) -> Result<Vec<(OrgId, EventId)>, BrokerError> {
        if orgs.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = orgs.iter().map(OrgId::as_str).collect();
        let mut connection = self.commands.get().await?;
        let mut positions = redis::cmd("HMGET");
        positions.arg(ack_key(user)).arg(&names);
        let (raw, legacy): (Vec<Option<String>>, Option<String>) = if self.commands.is_cluster() {
            // No earlier version ran in cluster mode: there is no legacy key to read.
            let raw = positions
                .query_async(&mut connection)
                .await
                .map_err(command_error)?;
            (raw, None)
        } else {
            redis::pipe()
                .add_command(positions)
                .get(legacy_ack_key(user))
                .query_async(&mut connection)
                .await
                .map_err(command_error)?
        };
        let acks: Vec<(OrgId, EventId)> = orgs
            .iter()
            .zip(raw)
            .filter_map(|(org, raw)| Some((org.clone(), raw?.parse().ok()?)))
            .collect();
        // A position stored by an earlier version (one id for all the user's orgs) still
        // resumes every org until the user acknowledges again.
        match legacy.and_then(|raw| raw.parse::<EventId>().ok()) {
            Some(id) if acks.is_empty() => Ok(orgs.iter().map(|org| (org.clone(), id)).collect()),
            _ => Ok(acks),
        }
    }
}

/// Where versions before per-org positions stored a user's one acknowledged id.
fn legacy_ack_key(user: &str) -> String {
    format!("events:ack:{user}")
}

/// A user's acknowledged positions: a hash of org -> id, tagged by user so that it lives on
/// one node of a cluster.
fn ack_key(user: &str) -> String {
    format!("events:acks:{{{user}}}")
}

/// One org's part of a page: org, max deleted id, oldest kept id, entries.
/// One org's part of what `event_gateway_page` answers: org, newest trimmed id, oldest kept
/// id, entries, newest id issued to the org, first id of its current epoch.
type OrgPageReply = (
    String,
    String,
    String,
    Vec<(String, Vec<Vec<u8>>)>,
    String,
    String,
);

impl History {
    /// Loads the Functions on every primary.
    async fn load_functions(&self) -> Result<(), BrokerError> {
        self.commands
            .load_everywhere(&self.functions)
            .await
            .map_err(command_error)
    }

    /// Loads the Functions when a primary does not have them (first start, a restart without
    /// persistence, a promoted replica, a node added to a cluster) or has another version of
    /// them (an upgrade, or a replica configured with other history limits).
    async fn ensure_functions(&self) -> Result<(), BrokerError> {
        let mut version = redis::cmd("FCALL_RO");
        version.arg("event_gateway_version").arg(0);
        let loaded: Option<String> = match self.commands.on_every_primary(&version).await {
            Ok(answers) => {
                let versions: Vec<String> = answers
                    .into_iter()
                    .filter_map(|answer| redis::FromRedisValue::from_redis_value(answer).ok())
                    .collect();
                // Any primary with another version (or an answer that is not one) is reloaded.
                match versions.iter().find(|loaded| **loaded != *self.version) {
                    Some(other) => Some(other.clone()),
                    None if versions.is_empty() => None,
                    None => Some(self.version.to_string()),
                }
            }
            Err(error) if is_missing_function(&error) => None,
            Err(error) => return Err(command_error(error)),
        };
        match loaded {
            Some(version) if *version == *self.version => return Ok(()),
            Some(version) => {
                self.load_functions().await?;
                self.replaced_log.warn("functions_replaced", |suppressed| {
                    tracing::warn!(
                        loaded = %version,
                        ours = %self.version,
                        suppressed,
                        "Replaced another version of the event_gateway Redis Functions (replicas of \
                         different versions or history limits replace each other's)."
                    );
                });
            }
            None => {
                self.load_functions().await?;
                tracing::info!(version = %self.version, "Loaded the event_gateway Redis Functions.");
            }
        }
        Ok(())
    }

    async fn read_page(&self, cursors: &[OrgCursor], count: usize) -> Result<Page, BrokerError> {
        let start = |cursor: &OrgCursor| match cursor.from {
            ReplayFrom::After(id) => format!("({id}"),
            ReplayFrom::Since(millis) => format!("{millis}-0"),
        };
        // Standalone: one call for every org. Cluster: one call per org, routed to its node by
        // the org given as the key (an org's keys are all tagged with it).
        let calls: Vec<redis::Cmd> = if self.commands.is_cluster() {
            cursors
                .iter()
                .map(|cursor| {
                    let mut command = redis::cmd("FCALL_RO");
                    command
                        .arg("event_gateway_page")
                        .arg(1)
                        .arg(cursor.org.as_str())
                        .arg(count)
                        .arg(cursor.org.as_str())
                        .arg(start(cursor));
                    command
                })
                .collect()
        } else {
            let mut command = redis::cmd("FCALL_RO");
            command.arg("event_gateway_page").arg(0).arg(count);
            for cursor in cursors {
                command.arg(cursor.org.as_str()).arg(start(cursor));
            }
            vec![command]
        };
        let replies: Vec<Vec<OrgPageReply>> = match self.commands.each(calls.clone()).await {
            Ok(replies) => replies,
            Err(BrokerError::Failed(message)) if message.contains("Function not found") => {
                self.load_functions().await?;
                self.commands.each(calls).await?
            }
            Err(error) => return Err(error),
        };
        let mut orgs = Vec::with_capacity(cursors.len());
        let known = |id: String| {
            id.parse::<EventId>()
                .ok()
                .filter(|id| *id != EventId::first_at(0))
        };
        for (cursor, (_, max_deleted, oldest, entries, last_issued, epoch)) in
            cursors.iter().zip(replies.into_iter().flatten())
        {
            let entries = entries
                .into_iter()
                .filter_map(|(id, fields)| {
                    let id = id.parse::<EventId>().ok()?;
                    let decoded = match fields.get(1) {
                        Some(envelope) => {
                            Event::decode_stored(&cursor.org, Some(id), envelope, self.max_event_bytes)
                                .map(Arc::new)
                        }
                        None => Err(EnvelopeError::MissingData),
                    };
                    Some((id, decoded))
                })
                .collect();
            orgs.push(OrgPage::new(
                cursor.org.clone(),
                cursor.from,
                entries,
                count,
                HistoryBounds {
                    max_deleted: max_deleted.parse().ok(),
                    oldest_kept: oldest.parse().ok(),
                    last_issued: known(last_issued),
                    epoch_start: known(epoch),
                },
            ));
        }
        Ok(Page { orgs })
    }
}

/// Moves pub/sub messages into the hub, decoding each once. After a lost connection it fills
/// the gap of every resubscribed org from history before dispatching that org's new messages.
struct Dispatcher {
    hub: Arc<Hub>,
    history: History,
    /// The orgs this replica wants, to restore a subscription the server dropped.
    subscriptions: Arc<Subscriptions>,
    /// Cluster mode: ids are ordered per org only.
    cluster: bool,
    ready: Arc<AtomicBool>,
    max_event_bytes: usize,
    /// Orgs Redis has confirmed.
    subscribed: HashSet<OrgId>,
    /// The newest durable id dispatched per subscribed org: older ones are duplicates.
    last_durable: HashMap<OrgId, EventId>,
    /// The newest durable id dispatched for any org.
    newest_durable: Option<EventId>,
    /// Orgs to refill from history when their resubscription is confirmed, and from where.
    refill: HashMap<OrgId, ReplayFrom>,
    dropped_log: RateLimitedLog,
}

impl Dispatcher {
    async fn run(mut self, mut pushes: UnboundedReceiver<PushInfo>, shutdown: Shutdown) {
        loop {
            let push = tokio::select! {
                push = pushes.recv() => push,
                () = shutdown.stopped() => None,
            };
            let Some(push) = push else { break };
            match push.kind {
                PushKind::Message | PushKind::SMessage => self.on_message(&push.data),
                PushKind::Subscribe | PushKind::SSubscribe => self.on_subscribed(&push.data).await,
                PushKind::Unsubscribe => {
                    if let Some((_, org)) = channel_arg(&push.data).and_then(parse_channel) {
                        self.subscribed.remove(&org);
                        self.last_durable.remove(&org);
                    }
                }
                PushKind::SUnsubscribe => self.on_shard_unsubscribed(&push.data),
                PushKind::Disconnection => self.on_disconnected(),
                _ => {}
            }
        }
    }

    fn on_disconnected(&mut self) {
        // Counted here, not by the once-a-second probe, so that an outage shorter than a
        // probe interval is counted too.
        METRICS.redis_reconnected();
        self.ready.store(false, Ordering::Relaxed);
        tracing::warn!("Lost the Redis pub/sub connection; reconnecting.");
        if self.cluster {
            // A node of the cluster went away (a primary failed, or was replaced): subscribe
            // every wanted org again, each on whichever node owns its slot once the cluster
            // has settled; the confirmations refill the gaps below. (The cluster connection's
            // own resubscription does not cover a promoted replica.)
            let subscriptions = self.subscriptions.clone();
            let orgs: Vec<OrgId> = self.subscribed.iter().cloned().collect();
            tokio::spawn(async move {
                for org in orgs {
                    resubscribe_until_done(&subscriptions, &org).await;
                }
            });
        }
        // Standalone ids are global: nothing this replica missed is older than the newest it
        // saw of any org. Cluster ids are per org: each org refills from its own newest.
        let gap_start = if self.cluster { None } else { self.newest_durable };
        for org in self.subscribed.drain() {
            let from = match self.last_durable.get(&org).copied().max(gap_start) {
                Some(last) => ReplayFrom::After(last),
                None => ReplayFrom::Since(unix_millis()),
            };
            self.refill.insert(org, from);
        }
    }

    /// A sharded subscription ended: by this replica (the org is no longer wanted), or by the
    /// server, when the channel's slot moved or its node failed over. A wanted org is
    /// subscribed again (on the slot's new owner) and refilled from history once confirmed.
    fn on_shard_unsubscribed(&mut self, data: &[Value]) {
        let Some((_, org)) = channel_arg(data).and_then(parse_channel) else {
            return;
        };
        let was_subscribed = self.subscribed.remove(&org);
        if !self.subscriptions.wants(&org) {
            self.last_durable.remove(&org);
            return;
        }
        if was_subscribed {
            let from = match self.last_durable.get(&org) {
                Some(last) => ReplayFrom::After(*last),
                None => ReplayFrom::Since(unix_millis()),
            };
            self.refill.insert(org.clone(), from);
            tracing::warn!(org = %org, "Redis dropped a shard subscription; subscribing again.");
        }
        let subscriptions = self.subscriptions.clone();
        tokio::spawn(async move { resubscribe_until_done(&subscriptions, &org).await });
    }

    async fn on_subscribed(&mut self, data: &[Value]) {
        // Durable events are what a gap loses: the org counts as subscribed (and is refilled)
        // once its durable channel is confirmed. Both channels are subscribed by one command.
        let Some((ChannelKind::Durable, org)) = channel_arg(data).and_then(parse_channel) else {
            return;
        };
        let confirmed_again = !self.subscribed.insert(org.clone());
        // A shard subscription confirmed again (made once more after a failover) refills too:
        // the first one may have gone to a node that is no longer the slot's owner.
        let again = || match self.last_durable.get(&org) {
            Some(last) if self.cluster && confirmed_again => Some(ReplayFrom::After(*last)),
            _ => None,
        };
        let Some(from) = self.refill.remove(&org).or_else(again) else {
            return;
        };
        // Page by page: a long outage's gap is still read with bounded calls.
        let mut cursor = OrgCursor {
            org: org.clone(),
            from,
        };
        let mut filled = 0;
        loop {
            match self
                .history
                .read_page(std::slice::from_ref(&cursor), GAP_FILL_PAGE)
                .await
            {
                Ok(page) => {
                    let Some(org_page) = page.orgs.into_iter().next() else {
                        break;
                    };
                    filled += org_page.events.len();
                    for event in org_page.events {
                        self.dispatch(event);
                    }
                    match org_page.read_through {
                        Some(last) if !org_page.exhausted => cursor.from = ReplayFrom::After(last),
                        _ => break,
                    }
                }
                Err(error) => {
                    tracing::warn!(org = %org, %error, "Could not fill the gap from history after reconnecting.");
                    return;
                }
            }
        }
        tracing::info!(org = %org, filled, "Resubscribed after a lost connection; filled the gap from history.");
    }

    fn on_message(&mut self, data: &[Value]) {
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (data.first(), data.get(1))
        else {
            return;
        };
        let decoded = match parse_channel(channel) {
            Some((ChannelKind::Live, org)) => Event::decode_live(&org, payload, self.max_event_bytes),
            Some((ChannelKind::Durable, org)) => Event::decode_durable(&org, payload, self.max_event_bytes),
            None => Err(EnvelopeError::MissingOrg),
        };
        match decoded {
            Ok(event) => self.dispatch(Arc::new(event)),
            Err(error) => {
                METRICS.event_dropped(error.reason());
                self.dropped_log.warn(error.reason(), |suppressed| {
                    tracing::warn!(reason = error.reason(), suppressed, %error, "Dropped a malformed event from Redis.");
                });
            }
        }
    }

    fn dispatch(&mut self, event: Arc<Event>) {
        match event.id {
            Some(id) => {
                let last = self
                    .last_durable
                    .entry(event.org.clone())
                    .or_insert(EventId { millis: 0, seq: 0 });
                if id <= *last {
                    return;
                }
                *last = id;
                self.newest_durable = self.newest_durable.max(Some(id));
                METRICS.event_received(Source::Durable);
            }
            None => METRICS.event_received(Source::Live),
        }
        self.hub.publish(&event);
    }
}

/// Subscribes `org` again, retrying while its shard has no reachable primary (a failover
/// takes a few seconds), for up to a minute.
///
/// Subscribing right after the server dropped a subscription can still reach the node that was
/// demoted (the connection learns the new owner from a later answer), and that subscription
/// goes with the connection to that node. So once the cluster has had time to settle, the org
/// is subscribed once more, on the owner the connection knows by then (a repeated SSUBSCRIBE
/// on the same node changes nothing; durable events a second subscription would repeat are
/// dropped by id).
async fn resubscribe_until_done(subscriptions: &Subscriptions, org: &OrgId) {
    for pass in 0..2 {
        if pass == 1 {
            tokio::time::sleep(RESUBSCRIBE_SETTLE).await;
        }
        for attempt in 0..120 {
            match subscriptions.resubscribe(org).await {
                Ok(()) => break,
                Err(error) if attempt == 119 => {
                    tracing::warn!(org = %org, %error, "Could not subscribe again to a shard channel.");
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

/// How long after subscribing again the subscription is made once more (see
/// `resubscribe_until_done`).
const RESUBSCRIBE_SETTLE: Duration = Duration::from_secs(3);

fn channel_arg(data: &[Value]) -> Option<&[u8]> {
    match data.first() {
        Some(Value::BulkString(channel)) => Some(channel),
        _ => None,
    }
}

/// Probes Redis every second: readiness follows the answers, the Functions are reloaded when
/// missing, and the pub/sub connection is kept trying to reconnect.
async fn probe_health(broker: Arc<RedisBroker>, shutdown: Shutdown) {
    let mut was_ready = false;
    let mut ever_ready = false;
    let mut last_warning: Option<std::time::Instant> = None;
    let mut ping = redis::cmd("PING");
    ping.arg("event-gateway");
    loop {
        let probe = async {
            broker.history.ensure_functions().await?;
            if !broker.subscriptions.is_attached() {
                return Err(BrokerError::Unavailable(
                    "the pub/sub connection is not made yet".into(),
                ));
            }
            // Every primary answers (the one Redis in standalone mode).
            broker
                .commands
                .on_every_primary(&ping)
                .await
                .map_err(command_error)?;
            broker.subscriptions.ping().await?;
            Ok::<(), BrokerError>(())
        };
        let outcome = match tokio::time::timeout(COMMAND_TIMEOUT * 2, probe).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", COMMAND_TIMEOUT * 2)),
        };
        let ready = outcome.is_ok();
        if let Err(error) = outcome {
            // Said when it starts, and again every UNREACHABLE_REMINDER while it lasts.
            if was_ready
                || last_warning.is_none_or(|at: std::time::Instant| at.elapsed() >= UNREACHABLE_REMINDER)
            {
                tracing::warn!(url = %broker.display_url, %error, "Redis is unreachable; not ready (streams and publishes get 503).");
                last_warning = Some(std::time::Instant::now());
            }
        } else {
            last_warning = None;
        }
        if ready && !was_ready {
            if ever_ready {
                tracing::info!("Reconnected to Redis; ready.");
            } else {
                tracing::info!("Connected to Redis; ready.");
            }
            ever_ready = true;
        }
        broker.ready.store(ready, Ordering::Relaxed);
        was_ready = ready;
        tokio::select! {
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            () = shutdown.stopped() => return,
        }
    }
}

async fn sweep_subscriptions(subscriptions: Arc<Subscriptions>, shutdown: Shutdown) {
    let period = (subscriptions.linger() / 2).max(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => subscriptions.sweep().await,
            () = shutdown.stopped() => return,
        }
    }
}

/// Publishes one envelope through Redis (for the `publish` command): live with PUBLISH
/// (SPUBLISH on the org's tagged channel in cluster mode), or durable through the Function,
/// which returns the event id.
pub async fn publish_once(
    redis: &RedisSettings,
    org: &OrgId,
    envelope: &str,
    durable: bool,
) -> Result<Option<EventId>, BrokerError> {
    let url = redis.url.trim();
    let commands = if redis.cluster {
        Commands::cluster(&seed_urls(url))?
    } else {
        Commands::pool(url)?
    };
    let mut connection = commands.get().await?;
    if !durable {
        let channels = super::subscriptions::channels_of(org, redis.cluster);
        let mut command = redis::cmd(if redis.cluster { "SPUBLISH" } else { "PUBLISH" });
        command.arg(&channels[0]).arg(envelope);
        command
            .query_async::<i64>(&mut connection)
            .await
            .map_err(command_error)?;
        return Ok(None);
    }
    let id: String = redis::cmd("FCALL")
        .arg("event_gateway_publish")
        .arg(1)
        .arg(org.as_str())
        .arg(envelope)
        .query_async(&mut connection)
        .await
        .map_err(|error| {
            if is_missing_function(&error) {
                BrokerError::Unavailable(
                    "the event_gateway Functions are not loaded: start a gateway on this Redis first".into(),
                )
            } else {
                publish_error(error)
            }
        })?;
    id.parse()
        .map(Some)
        .map_err(|_| BrokerError::Failed(format!("unexpected event id {id:?}")))
}

#[cfg(test)]
mod tests {
    use super::without_credentials;

    #[test]
    fn credentials_never_reach_the_log() {
        assert_eq!(
            without_credentials("redis://:s3cret@redis:6379"),
            "redis://***@redis:6379"
        );
        assert_eq!(
            without_credentials("rediss://u:p@a:1, redis://b:2"),
            "rediss://***@a:1,redis://b:2"
        );
        assert_eq!(
            without_credentials("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
