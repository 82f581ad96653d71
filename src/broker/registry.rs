//! The connection registry: how many streams each user holds across replicas (for
//! `limits.max_connections_per_user`) and how many streams each replica holds per role and org
//! (for `GET /api/connections`). Each replica owns its entries and rewrites them with a
//! heartbeat; a replica that dies stops beating and its entries expire.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::Pool;
use parking_lot::Mutex;
use serde::Serialize;

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
    redis: Option<(Pool, Arc<str>)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.counts.remove(&self.user);
        // Outside a runtime (process teardown) the heartbeat's expiry does the cleanup.
        let runtime = tokio::runtime::Handle::try_current();
        if let (Some((pool, replica_id)), Ok(runtime)) = (self.redis.take(), runtime) {
            let field = user_field(&self.user);
            let key = replica_key(&replica_id);
            runtime.spawn(async move {
                if let Ok(mut connection) = pool.get().await {
                    let _ = redis::cmd("HINCRBY")
                        .arg(&key)
                        .arg(&field)
                        .arg(-1)
                        .query_async::<i64>(&mut *connection)
                        .await;
                }
            });
        }
    }
}

fn replica_key(replica_id: &str) -> String {
    format!("events:replica:{replica_id}")
}

/// A replica hash's field for a user's stream count.
fn user_field(user: &str) -> String {
    format!("u:{user}")
}

/// A replica hash's field for a group's stream count: `c:<role>|<org>,<org>`.
fn group_field(group: &StreamGroup) -> String {
    let orgs: Vec<&str> = group.orgs().iter().map(OrgId::as_str).collect();
    format!("c:{}|{}", group.role, orgs.join(","))
}

/// The group a `c:` field names; `None` for other fields and for fields this version cannot
/// read (a replica of another version shares the registry).
fn parse_group_field(field: &str) -> Option<StreamGroup> {
    let (role, orgs) = field.strip_prefix("c:")?.split_once('|')?;
    let orgs = orgs
        .split(',')
        .map(OrgId::parse)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some(StreamGroup::new(role.into(), orgs))
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
    pool: Option<Pool>,
}

impl Registry {
    pub fn local(replica_name: &str) -> Self {
        Self {
            replica_id: replica_name.into(),
            replica_name: replica_name.to_string(),
            counts: Arc::default(),
            pool: None,
        }
    }

    pub fn redis(replica_name: &str, pool: Pool) -> Self {
        let boot: u32 = rand::random();
        Self {
            replica_id: format!("{replica_name}#{boot:08x}").into(),
            replica_name: replica_name.to_string(),
            counts: Arc::default(),
            pool: Some(pool),
        }
    }

    /// Takes a place for one more stream of `user`, unless the user already holds `max`
    /// across replicas. `Ok(None)` means the user is at the limit.
    pub async fn admit(&self, user: &str, max: usize) -> Result<Option<Permit>, BrokerError> {
        let Some(pool) = &self.pool else {
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
        let mut connection = pool
            .get()
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let admitted: i64 = redis::cmd("FCALL")
            .arg("event_gateway_conn_open")
            .arg(0)
            .arg(&*self.replica_id)
            .arg(user)
            .arg(max)
            .query_async(&mut *connection)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        if admitted < 0 {
            return Ok(None);
        }
        self.counts.add(user);
        Ok(Some(Permit {
            counts: self.counts.clone(),
            user: user.into(),
            redis: Some((pool.clone(), self.replica_id.clone())),
        }))
    }

    /// Rewrites this replica's entries from the local truth, and prolongs them.
    pub async fn heartbeat(&self, hub: &Hub) -> Result<(), BrokerError> {
        let Some(pool) = &self.pool else { return Ok(()) };
        let key = replica_key(&self.replica_id);
        let ttl_ms = HEARTBEAT_TTL.as_millis() as u64;
        let mut pipeline = redis::pipe();
        pipeline.atomic().del(&key);
        let users = self.counts.snapshot();
        let streams = hub.stream_counts();
        if !users.is_empty() || !streams.is_empty() {
            let fields: Vec<(String, u64)> = users
                .into_iter()
                .map(|(user, count)| (user_field(&user), count))
                .chain(streams.iter().map(|(group, count)| (group_field(group), *count)))
                .collect();
            pipeline.hset_multiple(&key, &fields);
        }
        pipeline.pexpire(&key, ttl_ms as i64).zadd(
            "events:replicas",
            &*self.replica_id,
            unix_millis() + ttl_ms,
        );
        let mut connection = pool
            .get()
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        pipeline
            .query_async::<()>(&mut *connection)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    /// Removes this replica's entries (clean shutdown).
    pub async fn withdraw(&self) {
        let Some(pool) = &self.pool else { return };
        if let Ok(mut connection) = pool.get().await {
            let _ = redis::pipe()
                .del(replica_key(&self.replica_id))
                .zrem("events:replicas", &*self.replica_id)
                .query_async::<()>(&mut *connection)
                .await;
        }
    }

    /// Streams across live replicas whose token lists one of `orgs`.
    pub async fn report(&self, hub: &Hub, orgs: &[OrgId]) -> Result<ConnectionsReport, BrokerError> {
        let mut report = ConnectionsReport::default();
        let Some(pool) = &self.pool else {
            report.add_replica(&self.replica_name, hub.stream_counts(), orgs);
            return Ok(report);
        };
        let mut connection = pool
            .get()
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let rows: Vec<Vec<String>> = redis::cmd("FCALL_RO")
            .arg("event_gateway_registry")
            .arg(0)
            .query_async(&mut *connection)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        for row in rows {
            let Some((replica_id, fields)) = row.split_first() else {
                continue;
            };
            let name = replica_id
                .rsplit_once('#')
                .map_or(replica_id.as_str(), |(name, _)| name);
            let counts = fields.chunks(2).filter_map(|pair| match pair {
                [field, count] => Some((parse_group_field(field)?, count.parse().ok()?)),
                _ => None,
            });
            report.add_replica(name, counts, orgs);
        }
        Ok(report)
    }
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
    fn group_fields_read_back_as_the_group_whatever_the_org_order() {
        let written = group_field(&group("ops", &["b", "a"]));
        assert_eq!(written, "c:ops|a,b");
        assert_eq!(parse_group_field(&written), Some(group("ops", &["a", "b"])));
    }

    #[test]
    fn fields_that_name_no_group_are_skipped() {
        assert_eq!(parse_group_field("u:alice"), None);
        assert_eq!(parse_group_field("c:ops"), None);
        assert_eq!(parse_group_field("c:ops|bad org"), None);
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
