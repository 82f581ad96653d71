//! Which org channels this replica is subscribed to on its one pub/sub connection: SUBSCRIBE
//! (the org's live and durable channels) when an org's first local client arrives, UNSUBSCRIBE a
//! while after its last one leaves. In cluster mode the channels are sharded (`SSUBSCRIBE` on
//! the org's node) and tagged with the org (`events:org:{<org>}`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use super::BrokerError;
use crate::event::OrgId;

/// How long a SUBSCRIBE may take before the client is told the broker is unavailable.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Prefix of an org's live channel, where any publisher may `PUBLISH` an envelope.
const LIVE_PREFIX: &str = "events:org:";
/// Prefix of an org's durable channel, which only the publish Function writes
/// (`<id> <envelope>`). Being a channel of its own, it can be closed to live publishers with a
/// Redis ACL (`&events:org:*`), and nothing published on the live channel can carry an id.
const DURABLE_PREFIX: &str = "events:durable:";

/// What arrives on a channel of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    /// Plain envelopes (`PUBLISH events:org:<org>`).
    Live,
    /// `<id> <envelope>` from the publish Function.
    Durable,
}

/// The live pub/sub channel of an org (standalone mode).
pub fn channel_of(org: &OrgId) -> String {
    format!("{LIVE_PREFIX}{org}")
}

/// The org and kind of a pub/sub channel, if it is one of ours (either mode's names).
pub fn parse_channel(channel: &[u8]) -> Option<(ChannelKind, OrgId)> {
    let channel = std::str::from_utf8(channel).ok()?;
    let (kind, org) = if let Some(org) = channel.strip_prefix(LIVE_PREFIX) {
        (ChannelKind::Live, org)
    } else {
        (ChannelKind::Durable, channel.strip_prefix(DURABLE_PREFIX)?)
    };
    let org = org
        .strip_prefix('{')
        .and_then(|tagged| tagged.strip_suffix('}'))
        .unwrap_or(org);
    Some((kind, OrgId::parse(org).ok()?))
}

/// Both channels of an org, subscribed and unsubscribed together: `events:org:<org>` and
/// `events:durable:<org>`, or in cluster mode `events:org:{<org>}` and
/// `events:durable:{<org>}` (one hash slot, so one `SSUBSCRIBE` on the org's node).
pub fn channels_of(org: &OrgId, cluster: bool) -> Vec<String> {
    if cluster {
        vec![
            format!("{LIVE_PREFIX}{{{org}}}"),
            format!("{DURABLE_PREFIX}{{{org}}}"),
        ]
    } else {
        vec![channel_of(org), format!("{DURABLE_PREFIX}{org}")]
    }
}

/// The replica's one pub/sub connection.
#[derive(Clone)]
pub enum PubSub {
    /// RESP3; resubscribes by itself after reconnecting.
    Standalone(ConnectionManager),
    /// Sharded subscriptions, each on the node that owns the channel's slot.
    Cluster(ClusterConnection),
}

impl PubSub {
    fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    async fn subscribe(&mut self, channels: Vec<String>) -> redis::RedisResult<()> {
        match self {
            Self::Standalone(connection) => connection.subscribe(channels).await,
            Self::Cluster(connection) => connection.ssubscribe(channels).await,
        }
    }

    async fn unsubscribe(&mut self, channels: Vec<String>) -> redis::RedisResult<()> {
        match self {
            Self::Standalone(connection) => connection.unsubscribe(channels).await,
            Self::Cluster(connection) => connection.sunsubscribe(channels).await,
        }
    }
}

pub struct Subscriptions {
    /// The replica's one pub/sub connection (RESP3; it resubscribes by itself after reconnecting),
    /// attached once it is created on the thread that reads it (`RedisBroker::start_subscriber`).
    connection: OnceLock<PubSub>,
    attached: tokio::sync::Notify,
    /// Subscribed orgs and how many local streams hold each. An entry exists only once Redis
    /// has confirmed the subscription.
    state: Mutex<HashMap<OrgId, Holders>>,
    /// Serializes SUBSCRIBE and UNSUBSCRIBE, so the two never cross for one org.
    changes: tokio::sync::Mutex<()>,
    linger: Duration,
}

struct Holders {
    count: usize,
    /// When the count last dropped to zero.
    idle_since: Option<Instant>,
}

/// Holds the subscriptions of one stream's orgs; dropping it releases them.
pub struct Lease {
    subscriptions: Option<Arc<Subscriptions>>,
    orgs: Vec<OrgId>,
}

impl Lease {
    /// A lease of the embedded broker, which needs no subscription.
    pub fn local() -> Self {
        Self {
            subscriptions: None,
            orgs: Vec::new(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(subscriptions) = &self.subscriptions {
            subscriptions.release(&self.orgs);
        }
    }
}

impl Subscriptions {
    pub fn new(linger: Duration) -> Self {
        Self {
            connection: OnceLock::new(),
            attached: tokio::sync::Notify::new(),
            state: Mutex::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
            linger,
        }
    }

    /// Attaches the pub/sub connection; streams waiting for it go on.
    pub fn attach(&self, connection: PubSub) {
        if self.connection.set(connection).is_ok() {
            self.attached.notify_waiters();
        }
    }

    /// The pub/sub connection, once attached.
    async fn connection(&self) -> PubSub {
        loop {
            // Created before the check, so an `attach` in between is not missed.
            let attached = self.attached.notified();
            if let Some(connection) = self.connection.get() {
                return connection.clone();
            }
            attached.await;
        }
    }

    /// Takes a hold on `org` if it is already subscribed.
    fn hold_existing(&self, org: &OrgId) -> bool {
        match self.state.lock().get_mut(org) {
            Some(holders) => {
                holders.count += 1;
                holders.idle_since = None;
                true
            }
            None => false,
        }
    }

    /// Returns once every org of `orgs` is subscribed and held.
    pub async fn acquire(self: &Arc<Self>, orgs: &[OrgId]) -> Result<Lease, BrokerError> {
        let mut lease = Lease {
            subscriptions: Some(self.clone()),
            orgs: Vec::with_capacity(orgs.len()),
        };
        let mut missing = Vec::new();
        for org in orgs {
            if self.hold_existing(org) {
                lease.orgs.push(org.clone());
            } else {
                missing.push(org);
            }
        }
        if missing.is_empty() {
            return Ok(lease);
        }
        let _changes = self.changes.lock().await;
        for org in missing {
            if !self.hold_existing(org) {
                let subscribe = async {
                    let mut connection = self.connection().await;
                    let channels = channels_of(org, connection.is_cluster());
                    connection.subscribe(channels).await
                };
                tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe)
                    .await
                    .map_err(|_| BrokerError::Unavailable("SUBSCRIBE timed out".into()))?
                    .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
                self.state.lock().insert(
                    org.clone(),
                    Holders {
                        count: 1,
                        idle_since: None,
                    },
                );
            }
            lease.orgs.push(org.clone());
        }
        Ok(lease)
    }

    fn release(&self, orgs: &[OrgId]) {
        let mut state = self.state.lock();
        for org in orgs {
            if let Some(holders) = state.get_mut(org) {
                holders.count = holders.count.saturating_sub(1);
                if holders.count == 0 {
                    holders.idle_since = Some(Instant::now());
                }
            }
        }
    }

    /// Unsubscribes the orgs nobody has held for the linger time.
    pub async fn sweep(&self) {
        let Some(connection) = self.connection.get() else {
            return;
        };
        let _changes = self.changes.lock().await;
        let idle: Vec<OrgId> = {
            let mut state = self.state.lock();
            let idle: Vec<OrgId> = state
                .iter()
                .filter(|(_, h)| h.count == 0 && h.idle_since.is_some_and(|t| t.elapsed() >= self.linger))
                .map(|(org, _)| org.clone())
                .collect();
            for org in &idle {
                state.remove(org);
            }
            idle
        };
        for org in idle {
            let mut connection = connection.clone();
            let channels = channels_of(&org, connection.is_cluster());
            if let Err(error) = connection.unsubscribe(channels).await {
                tracing::warn!(org = %org, %error, "Unsubscribing an idle org failed; it stays subscribed until reconnection.");
            }
        }
    }

    pub fn linger(&self) -> Duration {
        self.linger
    }

    /// A PING on the pub/sub connection (which also kicks its reconnection after an error).
    pub async fn ping(&self) -> Result<(), BrokerError> {
        let Some(connection) = self.connection.get() else {
            return Err(BrokerError::Unavailable(
                "the pub/sub connection is not made yet".into(),
            ));
        };
        let ping = redis::cmd("PING");
        let answer = match connection.clone() {
            PubSub::Standalone(mut connection) => ping.query_async::<redis::Value>(&mut connection).await,
            PubSub::Cluster(mut connection) => ping.query_async::<redis::Value>(&mut connection).await,
        };
        answer
            .map(|_| ())
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    /// Whether the pub/sub connection exists yet.
    pub fn is_attached(&self) -> bool {
        self.connection.get().is_some()
    }

    /// Subscribes `org` again if a stream still holds it: the server dropped the subscription
    /// (a sharded channel whose slot moved, or whose node failed over).
    pub async fn resubscribe(&self, org: &OrgId) -> Result<(), BrokerError> {
        let Some(connection) = self.connection.get() else {
            return Ok(());
        };
        let _changes = self.changes.lock().await;
        if !self.state.lock().contains_key(org) {
            return Ok(());
        }
        let mut connection = connection.clone();
        if let PubSub::Cluster(cluster) = &mut connection {
            // A keyed command first: after a failover the connection's slot map may still
            // name the demoted node, whose answer (MOVED) makes it learn the new owner, where
            // the subscription must go.
            let mut probe = redis::cmd("EXISTS");
            probe.arg(format!("events:history:{{{org}}}"));
            let _ = tokio::time::timeout(SUBSCRIBE_TIMEOUT, probe.query_async::<redis::Value>(cluster)).await;
        }
        let channels = channels_of(org, connection.is_cluster());
        tokio::time::timeout(SUBSCRIBE_TIMEOUT, connection.subscribe(channels))
            .await
            .map_err(|_| BrokerError::Unavailable("SSUBSCRIBE timed out".into()))?
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    /// Whether a stream holds `org` (it is subscribed, or lingering).
    pub fn wants(&self, org: &OrgId) -> bool {
        self.state.lock().contains_key(org)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_map_to_orgs_and_back() {
        let org = OrgId::parse("org-1").expect("valid");
        assert_eq!(
            channels_of(&org, false),
            ["events:org:org-1", "events:durable:org-1"]
        );
        assert_eq!(
            parse_channel(b"events:org:org-1"),
            Some((ChannelKind::Live, org.clone()))
        );
        assert_eq!(
            parse_channel(b"events:durable:org-1"),
            Some((ChannelKind::Durable, org))
        );
        assert_eq!(parse_channel(b"events:org:bad org"), None);
        assert_eq!(parse_channel(b"other:org-1"), None);
    }

    #[test]
    fn cluster_channels_carry_the_org_as_their_hash_tag_and_map_back() {
        let org = OrgId::parse("org-1").expect("valid");
        assert_eq!(
            channels_of(&org, true),
            ["events:org:{org-1}", "events:durable:{org-1}"]
        );
        assert_eq!(
            parse_channel(b"events:org:{org-1}"),
            Some((ChannelKind::Live, org.clone()))
        );
        assert_eq!(
            parse_channel(b"events:durable:{org-1}"),
            Some((ChannelKind::Durable, org))
        );
        assert_eq!(parse_channel(b"events:org:{org-1"), None);
    }
}
