//! The harness every integration test stands on: a private `redis-server`, the gateway binary
//! as a child process on an ephemeral port, an SSE client built on a third-party parser
//! (`russe`), and a builder for the JWTs the gateway accepts.
//!
//! Every network wait in here has a deadline and fails with a message that says what was
//! awaited; nothing sleeps "to let things settle".

pub mod envelope;
pub mod gateway;
pub mod http;
pub mod redis_server;
pub mod sse;
pub mod token;

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
