//! Where Redis commands go: a pool of connections to one Redis (standalone mode), or one
//! multiplexed cluster connection that routes each command to the node owning its key
//! (`redis.cluster = true`). Callers write a command once; `Commands` sends it either way,
//! and `Batch` groups commands into pipelines that each stay within one hash slot.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Pool, Runtime};
use futures_util::future::join_all;
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

use super::BrokerError;

/// Every command's connect and response timeout.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn unavailable(error: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(error.to_string())
}

/// The seed URLs of `redis.url`: one, or several separated by commas (cluster mode).
pub fn seed_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|seed| !seed.is_empty())
        .collect()
}

#[derive(Clone)]
pub enum Commands {
    Pool(Pool),
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use (the gateway starts while Redis is down) and again
/// after a failed attempt.
pub struct LazyCluster {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

impl Commands {
    /// A pool of connections to the Redis at `url`.
    pub fn pool(url: &str) -> Result<Self, BrokerError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        let manager = deadpool_redis::Manager::new_with_config(url, config).map_err(unavailable)?;
        let pool = Pool::builder(manager)
            .max_size(16)
            .wait_timeout(Some(COMMAND_TIMEOUT))
            .create_timeout(Some(COMMAND_TIMEOUT))
            .recycle_timeout(Some(COMMAND_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(unavailable)?;
        Ok(Self::Pool(pool))
    }

    /// A cluster connection discovered from `seeds`, made when first used.
    pub fn cluster(seeds: &[&str]) -> Result<Self, BrokerError> {
        let client = cluster_client(seeds, None)?;
        Ok(Self::Cluster(Arc::new(LazyCluster {
            client,
            connection: OnceCell::new(),
        })))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A connection to send commands on.
    pub async fn get(&self) -> Result<Connection, BrokerError> {
        match self {
            Self::Pool(pool) => Ok(Connection::Pooled(pool.get().await.map_err(unavailable)?)),
            Self::Cluster(lazy) => {
                let connection = lazy
                    .connection
                    .get_or_try_init(|| lazy.client.get_async_connection())
                    .await
                    .map_err(unavailable)?;
                Ok(Connection::Cluster(connection.clone()))
            }
        }
    }

    /// Sends `command` to every primary (to one Redis in standalone mode); succeeds when every
    /// primary answered without an error, with one answer per primary.
    pub async fn on_every_primary(&self, command: &Cmd) -> Result<Vec<Value>, redis::RedisError> {
        match self.get().await {
            Ok(Connection::Cluster(mut cluster)) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                match cluster.route_command(command.clone(), routing).await? {
                    Value::Map(answers) => Ok(answers.into_iter().map(|(_, answer)| answer).collect()),
                    other => Ok(vec![other]),
                }
            }
            Ok(mut connection) => Ok(vec![command.query_async(&mut connection).await?]),
            Err(error) => Err(not_reachable(error)),
        }
    }

    /// `FUNCTION LOAD REPLACE` of `library` on every primary.
    pub async fn load_everywhere(&self, library: &str) -> Result<(), redis::RedisError> {
        let mut command = redis::cmd("FUNCTION");
        command.arg("LOAD").arg("REPLACE").arg(library);
        match self.get().await {
            Ok(Connection::Cluster(mut cluster)) => {
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                cluster.route_command(command, routing).await.map(|_| ())
            }
            Ok(mut connection) => command.query_async::<String>(&mut connection).await.map(|_| ()),
            Err(error) => Err(not_reachable(error)),
        }
    }

    /// Sends each command on its own and collects the answers in order: one pipeline in
    /// standalone mode, concurrent routed commands in cluster mode (their keys may live on
    /// different nodes).
    pub async fn each<T: FromRedisValue>(&self, commands: Vec<Cmd>) -> Result<Vec<T>, BrokerError> {
        let mut connection = self.get().await?;
        match &mut connection {
            Connection::Cluster(cluster) => {
                let answers = join_all(commands.iter().map(|command| {
                    let mut cluster = cluster.clone();
                    async move { command.query_async::<T>(&mut cluster).await }
                }))
                .await;
                answers
                    .into_iter()
                    .collect::<Result<Vec<T>, _>>()
                    .map_err(super::redis::command_error)
            }
            Connection::Pooled(_) => {
                let mut pipeline = redis::pipe();
                for command in commands {
                    pipeline.add_command(command);
                }
                pipeline
                    .query_async(&mut connection)
                    .await
                    .map_err(super::redis::command_error)
            }
        }
    }
}

/// A connection that could not be made, as the Redis error the callers of
/// `on_every_primary` / `load_everywhere` classify.
fn not_reachable(error: BrokerError) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "Redis is not reachable", error.to_string()))
}

fn cluster_client(
    seeds: &[&str],
    push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> Result<ClusterClient, BrokerError> {
    let mut builder = ClusterClient::builder(seeds.iter().copied())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .connection_timeout(COMMAND_TIMEOUT)
        .response_timeout(COMMAND_TIMEOUT);
    if let Some(push) = push {
        builder = builder.push_sender(push);
    }
    builder.build().map_err(unavailable)
}

/// The cluster client of the pub/sub side: its pushes (messages, confirmations,
/// disconnections) go to `push`.
pub fn pubsub_cluster_client(
    seeds: &[&str],
    push: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
) -> Result<ClusterClient, BrokerError> {
    cluster_client(seeds, Some(push))
}

/// One connection from `Commands::get`.
pub enum Connection {
    Pooled(deadpool_redis::Connection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Pooled(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Pooled(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Pooled(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Commands whose answers are not needed, grouped by the key whose hash slot they touch: one
/// pipeline in standalone mode, one per key in cluster mode (a cluster pipeline may not cross
/// slots), sent concurrently.
#[derive(Default)]
pub struct Batch {
    pipelines: HashMap<String, Pipeline>,
    order: Vec<String>,
}

impl Batch {
    /// The pipeline for commands on `key` (and keys sharing its hash tag).
    pub fn on(&mut self, key: &str) -> &mut Pipeline {
        if !self.pipelines.contains_key(key) {
            self.order.push(key.to_string());
        }
        self.pipelines.entry(key.to_string()).or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.pipelines.is_empty()
    }

    pub async fn send(mut self, commands: &Commands) -> Result<(), BrokerError> {
        if self.is_empty() {
            return Ok(());
        }
        let mut connection = commands.get().await?;
        match &mut connection {
            Connection::Cluster(cluster) => {
                let sends: Vec<Pin<Box<dyn Future<Output = redis::RedisResult<()>> + Send>>> = self
                    .order
                    .iter()
                    .filter_map(|key| self.pipelines.remove(key))
                    .map(|pipeline| {
                        let mut cluster = cluster.clone();
                        Box::pin(async move { pipeline.query_async::<()>(&mut cluster).await })
                            as Pin<Box<dyn Future<Output = _> + Send>>
                    })
                    .collect();
                for result in join_all(sends).await {
                    result.map_err(super::redis::command_error)?;
                }
                Ok(())
            }
            Connection::Pooled(_) => {
                let mut all = redis::pipe();
                for key in &self.order {
                    if let Some(pipeline) = self.pipelines.remove(key) {
                        for command in pipeline.cmd_iter() {
                            all.add_command(command.clone()).ignore();
                        }
                    }
                }
                all.query_async::<()>(&mut connection)
                    .await
                    .map_err(super::redis::command_error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_split_on_commas_and_trimmed() {
        assert_eq!(
            seed_urls(" redis://a:7000, redis://b:7001 ,"),
            ["redis://a:7000", "redis://b:7001"]
        );
        assert_eq!(seed_urls("redis://a:6379"), ["redis://a:6379"]);
    }
}
