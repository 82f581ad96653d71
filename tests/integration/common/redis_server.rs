//! A private `redis-server` per test: started on a free loopback port, killed on drop, and
//! restartable on the same port so tests can simulate an outage.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// How long a freshly spawned `redis-server` may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RedisServer {
    /// The loopback port; kept across `kill()` and `restart()`.
    port: u16,
    /// Working directory and log file; removed when the server is dropped.
    dir: TempDir,
    /// The running process, `None` between `kill()` and `restart()`.
    process: Option<Child>,
    /// Whether the server writes an append-only file (fsync on every write), so that its data
    /// and Functions survive `kill()` and `restart()`.
    append_only: bool,
}

impl RedisServer {
    /// Starts a server on a free port, without persistence. The port is found by binding port 0
    /// and releasing it, which can race with another process; a clash is detected and retried
    /// on a new port.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Starts a server with AOF persistence (`appendonly yes`, `appendfsync always`): a restart
    /// after `kill()` keeps every acknowledged write, history and Functions included.
    pub async fn start_persistent() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(append_only: bool) -> Self {
        let dir = tempfile::tempdir().expect("creating a working directory for redis-server");
        let mut failures = Vec::new();
        for _ in 0..10 {
            let port = free_port();
            match launch(port, dir.path(), append_only).await {
                Ok(process) => {
                    return RedisServer {
                        port,
                        dir,
                        process: Some(process),
                        append_only,
                    }
                }
                Err(failure) => failures.push(format!("port {port}: {failure}")),
            }
        }
        panic!(
            "redis-server did not start after 10 attempts:\n{}",
            failures.join("\n")
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL), as an outage would, and waits until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts the server again on the same port: with an empty data set, or, for a persistent
    /// server, with everything it had acknowledged before `kill()`.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            match launch(self.port, self.dir.path(), self.append_only).await {
                Ok(process) => {
                    self.process = Some(process);
                    return;
                }
                Err(failure) if tokio::time::Instant::now() >= deadline => {
                    panic!("redis-server did not restart on port {}: {failure}", self.port)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding an ephemeral port to pick one for redis-server")
        .port()
}

/// Spawns `redis-server` on `port` and waits until it answers. Readiness is confirmed by
/// comparing the `process_id` that answers with our child's pid, so a different server that
/// happens to own the port is never mistaken for ours.
async fn launch(port: u16, dir: &Path, append_only: bool) -> Result<Child, String> {
    let log_file = dir.join(format!("redis-{port}.log"));
    let persistence: &[&str] = if append_only {
        &["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &["--save", "", "--appendonly", "no"]
    };
    let mut process = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(persistence)
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| format!("spawning redis-server (is it installed?): {error}"))?;
    let expected_pid = process.id().to_string();
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = process.try_wait() {
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            return Err(format!("redis-server exited with {status}; log:\n{log}"));
        }
        if answering_pid(&url).await.as_deref() == Some(expected_pid.as_str()) {
            return Ok(process);
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = process.kill();
            let _ = process.wait();
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            return Err(format!(
                "redis-server did not answer within {READY_TIMEOUT:?}; log:\n{log}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `process_id` reported by whatever Redis answers at `url`, if any answers.
async fn answering_pid(url: &str) -> Option<String> {
    let attempt = async {
        let client = redis::Client::open(url).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection)
            .await
            .ok()?;
        info.lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .map(|pid| pid.trim().to_string())
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()
        .flatten()
}
