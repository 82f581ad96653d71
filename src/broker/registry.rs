//! The connection registry: how many streams each user holds across replicas (for
//! `limits.max_connections_per_user`) and how many streams each replica holds per role and org
//! (for `GET /api/connections`). Entries live in one hash per user (`events:conns:{<sub>}`) and
//! one per org (`events:streams:{<org>}`), tagged so that each is on one node of a cluster:
//! admitting a stream is one call, and nothing reads every replica's entries. Each replica owns
//! its fields, stamps them with an expiry and renews them with a heartbeat; the fields of a
//! replica that dies expire.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

use super::commands::{unavailable, Batch, Commands};
use super::BrokerError;
use crate::clock::unix_millis;
use crate::event::OrgId;
use crate::hub::{Hub, StreamGroup};

/// How often a replica rewrites its entries.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How long its entries outlive its last heartbeat.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(15);

/// Streams per user on this replica. The local truth the heartbeat publishes.
#[derive(Default)]
pub struct UserCounts {
    counts: Mutex<HashMap<Box<str>, u64>>,
}

impl UserCounts {
    fn add(&self, user: &str) -> u64 {
        let mut counts = self.counts.lock();
        let count = counts.entry(user.into()).or_insert(0);
        *count += 1;
        *count
    }

    fn remove(&self, user: &str) {
        let mut counts = self.counts.lock();
        if let Some(count) = counts.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(user);
            }
        }
    }

    fn get(&self, user: &str) -> u64 {
        self.counts.lock().get(user).copied().unwrap_or(0)
    }

    fn snapshot(&self) -> Vec<(Box<str>, u64)> {
        self.counts
            .lock()
            .iter()
            .map(|(user, count)| (user.clone(), *count))
            .collect()
    }
}

/// One open stream's place in the user's count; dropping it gives the place back.
pub struct Permit {
    counts: Arc<UserCounts>,
    user: Box<str>,
    /// In Redis mode: where to decrement at once (the heartbeat would also correct it).
    redis: Option<(Commands, Arc<str>)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.counts.remove(&self.user);
        // Outside a runtime (process teardown) the heartbeat's expiry does the cleanup.
        let runtime = tokio::runtime::Handle::try_current();
        if let (Some((commands, replica_id)), Ok(runtime)) = (self.redis.take(), runtime) {
            let key = user_key(&self.user);
            runtime.spawn(async move {
                if let Ok(mut connection) = commands.get().await {
                    let _ = redis::cmd("HINCRBY")
                        .arg(&key)
                        .arg(&*replica_id)
                        .arg(-1)
                        .query_async::<i64>(&mut connection)
                        .await;
                }
            });
        }
    }
}

/// A user's streams per replica.
fn user_key(user: &str) -> String {
    format!("events:conns:{{{user}}}")
}

/// An org's streams per replica and group.
fn org_key(org: &OrgId) -> String {
    format!("events:streams:{{{org}}}")
}

/// The field that says until when (ms) a replica's fields of a hash count.
fn expiry_field(replica_id: &str) -> String {
    format!("{replica_id}:t")
}

/// An org hash's field for one replica's streams of a group: `<replica>|<role>|<org>,<org>`.
fn group_field(replica_id: &str, group: &StreamGroup) -> String {
    let orgs: Vec<&str> = group.orgs().iter().map(OrgId::as_str).collect();
    format!("{replica_id}|{}|{}", group.role, orgs.join(","))
}

/// The replica and group a group field names; `None` for other fields and for fields this
/// version cannot read (a replica of another version shares the registry).
fn parse_group_field(field: &str) -> Option<(&str, StreamGroup)> {
    let mut parts = field.rsplitn(3, '|');
    let orgs = parts.next()?;
    let role = parts.next()?;
    let replica_id = parts.next()?;
    let orgs = orgs
        .split(',')
        .map(OrgId::parse)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some((replica_id, StreamGroup::new(role.into(), orgs)))
}

/// `GET /api/connections`: streams whose token lists one of the caller's orgs.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct ConnectionsReport {
    pub total: u64,
    #[serde(rename = "byRole")]
    pub by_role: BTreeMap<String, u64>,
    pub replicas: Vec<ReplicaConnections>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ReplicaConnections {
    pub replica: String,
    pub connections: u64,
}

impl ConnectionsReport {
    /// Adds one replica's counts, keeping the groups that share an org with `orgs`.
    fn add_replica(
        &mut self,
        replica: &str,
        counts: impl IntoIterator<Item = (StreamGroup, u64)>,
        orgs: &[OrgId],
    ) {
        let mut connections = 0;
        for (group, count) in counts {
            if group.shares_an_org_with(orgs) {
                connections += count;
                *self.by_role.entry(group.role.into()).or_insert(0) += count;
            }
        }
        self.total += connections;
        self.replicas.push(ReplicaConnections {
            replica: replica.to_string(),
            connections,
        });
    }
}

/// The registry of one replica.
pub struct Registry {
    /// `<replica name>#<boot id>`: unique even when a restarted replica reuses its name.
    replica_id: Arc<str>,
    replica_name: String,
    counts: Arc<UserCounts>,
    commands: Option<Commands>,
    /// The users and groups the last heartbeat wrote, so the next one clears those now gone.
    written: Mutex<Written>,
}

#[derive(Default)]
struct Written {
    users: Vec<Box<str>>,
    groups: Vec<StreamGroup>,
}

impl Registry {
    pub fn local(replica_name: &str) -> Self {
        Self {
            replica_id: replica_name.into(),
            replica_name: replica_name.to_string(),
            counts: Arc::default(),
            commands: None,
            written: Mutex::default(),
        }
    }

    pub fn redis(replica_name: &str, commands: Commands) -> Self {
        let boot: u32 = rand::random();
        Self {
            replica_id: format!("{replica_name}#{boot:08x}").into(),
            replica_name: replica_name.to_string(),
            counts: Arc::default(),
            commands: Some(commands),
            written: Mutex::default(),
        }
    }

    /// Takes a place for one more stream of `user`, unless the user already holds `max`
    /// across replicas. `Ok(None)` means the user is at the limit.
    pub async fn admit(&self, user: &str, max: usize) -> Result<Option<Permit>, BrokerError> {
        let Some(commands) = &self.commands else {
            if self.counts.get(user) >= max as u64 {
                return Ok(None);
            }
            self.counts.add(user);
            return Ok(Some(Permit {
                counts: self.counts.clone(),
                user: user.into(),
                redis: None,
            }));
        };
        let mut connection = commands.get().await?;
        let admitted: i64 = redis::cmd("FCALL")
            .arg("event_gateway_conn_open")
            .arg(1)
            .arg(user_key(user))
            .arg(&*self.replica_id)
            .arg(max)
            .arg(HEARTBEAT_TTL.as_millis() as u64)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        if admitted < 0 {
            return Ok(None);
        }
        self.counts.add(user);
        Ok(Some(Permit {
            counts: self.counts.clone(),
            user: user.into(),
            redis: Some((commands.clone(), self.replica_id.clone())),
        }))
    }

    /// Rewrites this replica's fields from the local truth and prolongs them: its count in the
    /// hash of every user with a stream here, its count of every group in the hash of each org
    /// of the group; the fields of users and groups gone since the last heartbeat are removed.
    pub async fn heartbeat(&self, hub: &Hub) -> Result<(), BrokerError> {
        let Some(commands) = &self.commands else {
            return Ok(());
        };
        let me = &*self.replica_id;
        let ttl_ms = HEARTBEAT_TTL.as_millis() as u64;
        let expires = (unix_millis() + ttl_ms).to_string();
        let users = self.counts.snapshot();
        let groups = hub.stream_counts();
        let mut batch = Batch::default();
        for (user, count) in &users {
            let key = user_key(user);
            batch
                .on(&key)
                .hset_multiple(
                    &key,
                    &[
                        (me.to_string(), count.to_string()),
                        (expiry_field(me), expires.clone()),
                    ],
                )
                .ignore()
                .pexpire(&key, ttl_ms as i64)
                .ignore();
        }
        for (group, count) in &groups {
            for org in group.orgs() {
                let key = org_key(org);
                batch.on(&key).hset(&key, group_field(me, group), *count).ignore();
            }
        }
        let orgs_written: HashSet<&OrgId> = groups.keys().flat_map(|group| group.orgs()).collect();
        for org in &orgs_written {
            let key = org_key(org);
            batch
                .on(&key)
                .hset(&key, expiry_field(me), &expires)
                .ignore()
                .pexpire(&key, ttl_ms as i64)
                .ignore();
        }
        {
            let written = self.written.lock();
            for user in written
                .users
                .iter()
                .filter(|user| !users.iter().any(|(now, _)| now == *user))
            {
                let key = user_key(user);
                batch
                    .on(&key)
                    .hdel(&key, &[me.to_string(), expiry_field(me)])
                    .ignore();
            }
            for group in written.groups.iter().filter(|group| !groups.contains_key(group)) {
                for org in group.orgs() {
                    let key = org_key(org);
                    batch.on(&key).hdel(&key, group_field(me, group)).ignore();
                }
            }
        }
        batch.send(commands).await?;
        *self.written.lock() = Written {
            users: users.into_iter().map(|(user, _)| user).collect(),
            groups: groups.into_keys().collect(),
        };
        Ok(())
    }

    /// Removes this replica's fields (clean shutdown).
    pub async fn withdraw(&self) {
        let Some(commands) = &self.commands else { return };
        let me = &*self.replica_id;
        let written = std::mem::take(&mut *self.written.lock());
        let mut batch = Batch::default();
        for user in &written.users {
            let key = user_key(user);
            batch
                .on(&key)
                .hdel(&key, &[me.to_string(), expiry_field(me)])
                .ignore();
        }
        for group in &written.groups {
            for org in group.orgs() {
                let key = org_key(org);
                batch.on(&key).hdel(&key, group_field(me, group)).ignore();
                batch.on(&key).hdel(&key, expiry_field(me)).ignore();
            }
        }
        let _ = batch.send(commands).await;
    }

    /// Streams across live replicas whose token lists one of `orgs`.
    pub async fn report(&self, hub: &Hub, orgs: &[OrgId]) -> Result<ConnectionsReport, BrokerError> {
        let mut report = ConnectionsReport::default();
        let Some(commands) = &self.commands else {
            report.add_replica(&self.replica_name, hub.stream_counts(), orgs);
            return Ok(report);
        };
        let reads = orgs
            .iter()
            .map(|org| {
                let mut command = redis::cmd("HGETALL");
                command.arg(org_key(org));
                command
            })
            .collect();
        let hashes: Vec<HashMap<String, String>> = commands.each(reads).await?;
        for (replica_id, groups) in live_groups(&hashes, unix_millis()) {
            let name = replica_id.rsplit_once('#').map_or(replica_id, |(name, _)| name);
            report.add_replica(name, groups, orgs);
        }
        Ok(report)
    }
}

/// Each live replica's groups, once each, from the hashes of several orgs (a group of several
/// orgs is in the hash of each).
fn live_groups(hashes: &[HashMap<String, String>], now_ms: u64) -> BTreeMap<&str, HashMap<StreamGroup, u64>> {
    let mut replicas: BTreeMap<&str, HashMap<StreamGroup, u64>> = BTreeMap::new();
    for hash in hashes {
        let alive = |replica_id: &str| {
            hash.get(&expiry_field(replica_id))
                .and_then(|expires| expires.parse::<u64>().ok())
                .is_some_and(|expires| expires >= now_ms)
        };
        for (field, count) in hash {
            let Some((replica_id, group)) = parse_group_field(field) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else { continue };
            if alive(replica_id) {
                replicas.entry(replica_id).or_default().insert(group, count);
            }
        }
    }
    replicas
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orgs(names: &[&str]) -> Vec<OrgId> {
        names.iter().map(|o| OrgId::parse(o).expect("valid")).collect()
    }

    fn group(role: &str, names: &[&str]) -> StreamGroup {
        StreamGroup::new(role.into(), orgs(names))
    }

    #[test]
    fn report_counts_only_streams_sharing_an_org_with_the_caller() {
        let mut report = ConnectionsReport::default();
        let counts = [
            (group("ops", &["a", "b"]), 2),
            (group("tenant", &["b"]), 3),
            (group("tenant", &["c"]), 5),
        ];
        report.add_replica("r1", counts, &orgs(&["b"]));
        report.add_replica("r2", [(group("landlord", &["c"]), 7)], &orgs(&["b"]));
        assert_eq!(report.total, 5);
        assert_eq!(report.by_role.get("ops"), Some(&2));
        assert_eq!(report.by_role.get("tenant"), Some(&3));
        assert_eq!(
            report.replicas,
            vec![
                ReplicaConnections {
                    replica: "r1".into(),
                    connections: 5
                },
                ReplicaConnections {
                    replica: "r2".into(),
                    connections: 0
                },
            ]
        );
    }

    #[test]
    fn group_fields_read_back_as_the_replica_and_group_whatever_the_org_order() {
        let written = group_field("r1#0a", &group("ops", &["b", "a"]));
        assert_eq!(written, "r1#0a|ops|a,b");
        assert_eq!(
            parse_group_field(&written),
            Some(("r1#0a", group("ops", &["a", "b"])))
        );
    }

    #[test]
    fn fields_that_name_no_group_are_skipped() {
        assert_eq!(parse_group_field("r1#0a:t"), None);
        assert_eq!(parse_group_field("ops|a"), None);
        assert_eq!(parse_group_field("r1|ops|bad org"), None);
    }

    fn hash(fields: &[(&str, &str)]) -> HashMap<String, String> {
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_group_in_several_orgs_hashes_counts_once_and_expired_replicas_not_at_all() {
        let org_a = hash(&[
            ("r1|ops|a,b", "2"),
            ("r1:t", "2000"),
            ("r2|tenant|a", "9"),
            ("r2:t", "500"),
        ]);
        let org_b = hash(&[("r1|ops|a,b", "2"), ("r1|tenant|b", "1"), ("r1:t", "2000")]);
        let hashes = [org_a, org_b];
        let replicas = live_groups(&hashes, 1000);
        assert_eq!(replicas.len(), 1, "r2's fields expired at 500: {replicas:?}");
        let r1 = &replicas["r1"];
        assert_eq!(r1.get(&group("ops", &["a", "b"])), Some(&2));
        assert_eq!(r1.get(&group("tenant", &["b"])), Some(&1));
        assert_eq!(r1.len(), 2);
    }

    #[tokio::test]
    async fn local_admission_stops_at_the_limit_and_frees_on_drop() {
        let registry = Registry::local("r1");
        let first = registry.admit("u1", 2).await.expect("local").expect("admitted");
        let _second = registry.admit("u1", 2).await.expect("local").expect("admitted");
        assert!(registry.admit("u1", 2).await.expect("local").is_none());
        assert!(registry.admit("u2", 2).await.expect("local").is_some());
        drop(first);
        assert!(registry.admit("u1", 2).await.expect("local").is_some());
    }
}
