//! The harness every integration test stands on: a private `redis-server`, the gateway binary
//! as a child process on an ephemeral port, an SSE client built on a third-party parser
//! (`russe`), and a builder for the JWTs the gateway accepts.
//!
//! Every network wait in here has a deadline and fails with a message that says what was
//! awaited; nothing sleeps "to let things settle".

pub mod envelope;
pub mod gateway;
pub mod http;
pub mod node;
pub mod raw;
pub mod redis_cluster;
pub mod redis_server;
pub mod sse;
pub mod token;
pub mod ws;

use std::future::Future;
use std::time::Duration;

/// How long any single network step (a request, a Redis command, the next SSE frame) may take
/// before the test fails. Generous, because the suite runs in parallel on two cores.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits `future` for at most `limit`, failing the test with `what` otherwise.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `condition` every 25 ms until it holds, failing the test after `limit` with `what`.
/// The limit bounds the whole wait, including a condition that itself hangs.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let poll = async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    within(limit, &format!("this condition: {what}"), poll).await;
}

/// One test's world: its own `redis-server` and one gateway in Redis mode on top of it.
/// Dereferences to the gateway, so tests read `app.connect(..)`, `app.publish_live(..)`.
pub struct TestApp {
    /// Declared first so the gateway is dropped (killed) before its Redis.
    pub gateway: gateway::Gateway,
    pub redis: redis_server::RedisServer,
}

impl std::ops::Deref for TestApp {
    type Target = gateway::Gateway;

    fn deref(&self) -> &gateway::Gateway {
        &self.gateway
    }
}

impl std::ops::DerefMut for TestApp {
    fn deref_mut(&mut self) -> &mut gateway::Gateway {
        &mut self.gateway
    }
}

/// A private Redis and a gateway with default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|options| options).await
}

/// A private Redis and a gateway whose options `configure` adjusts (extra `GATEWAY__*` vars).
pub async fn spawn_app_with(
    configure: impl FnOnce(gateway::GatewayOptions) -> gateway::GatewayOptions,
) -> TestApp {
    let redis = redis_server::RedisServer::start().await;
    let gateway = gateway::spawn_gateway(configure(gateway::GatewayOptions::new(&redis))).await;
    TestApp { gateway, redis }
}

/// Asserts that `received` is exactly `expected`: every id once, in the same order. On failure
/// it says how many arrived, which are missing, which came twice, and where the order first
/// went wrong, prefixed by `who`.
pub fn assert_exactly_once_in_order(who: &str, received: &[String], expected: &[String]) {
    if received == expected {
        return;
    }
    let mut seen = std::collections::HashMap::new();
    for id in received {
        *seen.entry(id.as_str()).or_insert(0usize) += 1;
    }
    let missing: Vec<&str> = expected
        .iter()
        .map(String::as_str)
        .filter(|id| !seen.contains_key(id))
        .collect();
    let duplicated: Vec<&str> = seen
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(id, _)| *id)
        .collect();
    let wanted: std::collections::HashSet<&str> = expected.iter().map(String::as_str).collect();
    let unexpected: Vec<&str> = received
        .iter()
        .map(String::as_str)
        .filter(|id| !wanted.contains(id))
        .collect();
    let first_difference = received
        .iter()
        .zip(expected)
        .position(|(got, want)| got != want)
        .unwrap_or(received.len().min(expected.len()));
    panic!(
        "{who}: received {} events, expected {}; {} missing (first: {:?}), {} duplicated \
         (first: {:?}), {} unexpected (first: {:?}); first difference at position \
         {first_difference}: got {:?}, expected {:?}",
        received.len(),
        expected.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        duplicated.len(),
        duplicated.iter().take(5).collect::<Vec<_>>(),
        unexpected.len(),
        unexpected.iter().take(5).collect::<Vec<_>>(),
        received.get(first_difference),
        expected.get(first_difference),
    );
}

/// An event id `<ms>-<seq>` as a sortable pair, for asserting that ids increase.
pub fn id_order(id: &str) -> (u64, u64) {
    let parse = || {
        let (millis, seq) = id.split_once('-')?;
        Some((millis.parse().ok()?, seq.parse().ok()?))
    };
    parse().unwrap_or_else(|| panic!("event id {id:?} is not <ms>-<seq>"))
}

/// Asserts that `ids` (in publish order) strictly increase, as the contract's total order says.
pub fn assert_ids_increase(ids: &[String]) {
    if let Some(pair) = ids
        .windows(2)
        .find(|pair| id_order(&pair[0]) >= id_order(&pair[1]))
    {
        panic!(
            "ids must strictly increase in publish order, but {} came before {} ({} ids)",
            pair[0],
            pair[1],
            ids.len()
        );
    }
}
