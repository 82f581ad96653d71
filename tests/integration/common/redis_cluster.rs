//! A private Redis Cluster per test group: three primaries and three replicas of
//! `redis-server --cluster-enabled yes` on free loopback ports, joined by `redis-cli --cluster
//! create`, killed on drop. About two seconds to come up.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// How long the cluster may take to form (`cluster_state:ok` on every node).
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

pub struct RedisCluster {
    ports: Vec<u16>,
    processes: Vec<Child>,
    dir: TempDir,
    /// A place among the clusters that may run at once (six servers each, on two cores).
    _turn: tokio::sync::SemaphorePermit<'static>,
}

/// Clusters that run at once: more make failovers slow enough to miss their deadlines.
static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(3);

impl RedisCluster {
    /// Starts six nodes and makes them a cluster of three primaries with one replica each.
    pub async fn start() -> Self {
        let turn = TURNS.acquire().await.expect("the semaphore is never closed");
        let dir = tempfile::tempdir().expect("creating a working directory for the cluster");
        let ports: Vec<u16> = free_ports(6);
        let processes = ports.iter().map(|port| spawn_node(*port, dir.path())).collect();
        let cluster = RedisCluster {
            ports,
            processes,
            dir,
            _turn: turn,
        };
        for port in &cluster.ports {
            cluster.wait_for_node(*port).await;
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("running redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        cluster.wait_until_formed().await;
        cluster
    }

    /// The seed URLs, comma-separated, as `redis.url` takes them in cluster mode.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A cluster client for the test's own commands (routed by key, like a publisher's).
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect();
        redis::cluster::ClusterClient::new(nodes)
            .expect("a cluster client")
            .get_async_connection()
            .await
            .expect("connecting to the test cluster")
    }

    /// The port of the primary that owns `key`'s slot.
    pub async fn primary_of(&self, key: &str) -> u16 {
        for port in &self.ports {
            if let Some(primary) = self.primary_of_via(*port, key).await {
                return primary;
            }
        }
        panic!("no node of the test cluster says who owns {key:?}");
    }

    /// Kills (SIGKILL) the primary that owns `key`'s slot and waits until a replica has taken
    /// its place (`cluster_state:ok` again, the slot served by another node). Returns the port
    /// of the killed node.
    pub async fn kill_primary_of(&mut self, key: &str) -> u16 {
        let port = self.primary_of(key).await;
        let index = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("the primary is ours");
        let _ = self.processes[index].kill();
        let _ = self.processes[index].wait();
        let survivor = *self.ports.iter().find(|p| **p != port).expect("other nodes");
        let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
        loop {
            if let Some(mut connection) = node(survivor).await {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") && self.primary_of_via(survivor, key).await != Some(port)
                {
                    return port;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no replica took over from {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `CLUSTER FAILOVER` on the replica of the primary owning `key`'s slot (a planned switch),
    /// then waits until the replica serves the slot.
    pub async fn fail_over(&self, key: &str) {
        let primary = self.primary_of(key).await;
        let mut replica = None;
        for port in &self.ports {
            let Some(mut connection) = node(*port).await else {
                continue;
            };
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut connection)
                .await
                .unwrap_or_default();
            if info.contains("role:slave") && info.contains(&format!("master_port:{primary}")) {
                replica = Some((*port, connection));
                break;
            }
        }
        let (port, mut connection) = replica.expect("the primary has a replica");
        // A manual failover that does not complete in time (the replica was still catching
        // up) is dropped by Redis without a word: ask again until the replica has taken over.
        let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
        loop {
            let _: String = redis::cmd("CLUSTER")
                .arg("FAILOVER")
                .query_async(&mut connection)
                .await
                .expect("CLUSTER FAILOVER");
            let attempt_ends = tokio::time::Instant::now() + Duration::from_secs(5);
            while tokio::time::Instant::now() < attempt_ends {
                if self.primary_of_via(port, key).await == Some(port) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the replica {port} of {primary} did not take over"
            );
        }
    }

    /// `FLUSHALL` on every primary: the cluster loses every key (its Functions stay).
    pub async fn flush_all(&self) {
        for port in &self.ports {
            if let Some(mut connection) = node(*port).await {
                // Replicas refuse writes; their primaries' flush reaches them.
                let _ = redis::cmd("FLUSHALL")
                    .query_async::<redis::Value>(&mut connection)
                    .await;
            }
        }
    }

    /// Starts the node on `port` again (after `kill_primary_of`): it keeps its cluster
    /// configuration and rejoins, as a replica of the node that took its place.
    pub async fn restart_node(&mut self, port: u16) {
        let index = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("a node of ours");
        self.processes[index] = spawn_node(port, self.dir.path());
        self.wait_for_node(port).await;
    }

    /// The port of the primary owning `key`'s slot, as node `via` sees the cluster.
    async fn primary_of_via(&self, via: u16, key: &str) -> Option<u16> {
        let mut connection = node(via).await?;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut connection)
            .await
            .ok()?;
        let shards: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut connection)
            .await
            .ok()?;
        shards.into_iter().find_map(|shard| {
            let redis::Value::Array(parts) = shard else {
                return None;
            };
            match (parts.first(), parts.get(1), parts.get(2)) {
                (
                    Some(redis::Value::Int(start)),
                    Some(redis::Value::Int(end)),
                    Some(redis::Value::Array(primary)),
                ) if (*start..=*end).contains(&slot) => match primary.get(1) {
                    Some(redis::Value::Int(port)) => Some(*port as u16),
                    _ => None,
                },
                _ => None,
            }
        })
    }

    async fn wait_for_node(&self, port: u16) {
        let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
        while node(port).await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster node {port} did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_until_formed(&self) {
        let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
        loop {
            let mut formed = true;
            for port in &self.ports {
                let Some(mut connection) = node(*port).await else {
                    formed = false;
                    break;
                };
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    formed = false;
                    break;
                }
            }
            if formed {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the test cluster did not form"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for process in &mut self.processes {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

fn spawn_node(port: u16, dir: &std::path::Path) -> Child {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).expect("creating a node directory");
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--repl-diskless-sync-delay",
            "0",
        ])
        .arg("--dir")
        .arg(&node_dir)
        .arg("--logfile")
        .arg(node_dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning redis-server (is it installed?)")
}

/// A plain connection to one node, if it answers.
async fn node(port: u16) -> Option<redis::aio::MultiplexedConnection> {
    let attempt = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .ok()?;
        Some(connection)
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()
        .flatten()
}

/// `count` distinct free ports whose cluster bus ports (+10000) are below 65536.
fn free_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut listeners = Vec::new();
    while ports.len() < count {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
        let port = listener.local_addr().expect("a bound address").port();
        if port < 55000 && !ports.contains(&port) && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            ports.push(port);
        }
        listeners.push(listener);
    }
    ports
}
