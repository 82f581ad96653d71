//! The gateway under test, run as the real binary (`event-gateway serve`) on an ephemeral port,
//! configured only through `GATEWAY__*` environment variables, and killed on drop.

use std::process::{ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use reqwest::{RequestBuilder, Response};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, OnceCell};
use tokio::task::JoinHandle;

use super::http::send;
use super::redis_cluster::RedisCluster;
use super::redis_server::RedisServer;
use super::sse::SseClient;
use super::token::TEST_SECRET;
use super::{within, STEP_TIMEOUT};

/// How long the gateway may take from spawn to its `listening on` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

static NEXT_REPLICA: AtomicUsize = AtomicUsize::new(1);

pub struct GatewayOptions {
    redis_url: String,
    replica_name: String,
    env: Vec<(String, String)>,
    /// Extra command-line arguments after `serve`.
    args: Vec<String>,
    /// Whether to pass the `serve` subcommand (the default) or rely on it being implied.
    serve_subcommand: bool,
    /// Whether `spawn_gateway` waits for `/readyz` to answer 200 (the default) after the
    /// `listening on` line, since streams are refused until the broker is connected.
    wait_until_ready: bool,
    /// Started under `ulimit -n` of this many open files (soft and hard).
    open_files_limit: Option<u64>,
}

impl GatewayOptions {
    /// Redis mode against `redis`.
    pub fn new(redis: &RedisServer) -> Self {
        Self::with_redis_url(&redis.url())
    }

    /// Redis Cluster mode against `cluster` (its seed nodes, `GATEWAY__REDIS__CLUSTER=true`).
    pub fn cluster(cluster: &RedisCluster) -> Self {
        Self::with_redis_url(&cluster.url()).env("GATEWAY__REDIS__CLUSTER", "true")
    }

    /// Embedded broker mode (`GATEWAY__REDIS__URL=""`).
    pub fn embedded() -> Self {
        Self::with_redis_url("")
    }

    fn with_redis_url(redis_url: &str) -> Self {
        let replica_number = NEXT_REPLICA.fetch_add(1, Ordering::Relaxed);
        GatewayOptions {
            redis_url: redis_url.to_string(),
            replica_name: format!("test-replica-{}-{replica_number}", std::process::id()),
            env: Vec::new(),
            args: Vec::new(),
            serve_subcommand: true,
            wait_until_ready: true,
            open_files_limit: None,
        }
    }

    /// Returns from `spawn_gateway` as soon as it listens, ready or not (Redis may be down).
    pub fn without_waiting_until_ready(mut self) -> Self {
        self.wait_until_ready = false;
        self
    }

    /// Runs `event-gateway [ARGS]` instead of `event-gateway serve [ARGS]`.
    pub fn without_subcommand(mut self) -> Self {
        self.serve_subcommand = false;
        self
    }

    /// An extra argument after `serve`, e.g. `.arg("--config").arg(path)`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Starts the process with at most `limit` open files, as a hard limit it cannot raise.
    pub fn open_files_limit(mut self, limit: u64) -> Self {
        self.open_files_limit = Some(limit);
        self
    }

    pub fn replica_name(mut self, name: &str) -> Self {
        self.replica_name = name.to_string();
        self
    }

    /// Any other setting, e.g. `.env("GATEWAY__SSE__KEEPALIVE_SECS", "1")`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    fn all_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("GATEWAY__SERVER__PORT".to_string(), "0".to_string()),
            ("GATEWAY__SERVER__HOST".to_string(), "127.0.0.1".to_string()),
            (
                "GATEWAY__SERVER__REPLICA_NAME".to_string(),
                self.replica_name.clone(),
            ),
            ("GATEWAY__AUTH__JWT_SECRET".to_string(), TEST_SECRET.to_string()),
            ("GATEWAY__REDIS__URL".to_string(), self.redis_url.clone()),
            ("GATEWAY__LOG__FORMAT".to_string(), "json".to_string()),
        ];
        env.extend(self.env.iter().cloned());
        env
    }
}

pub struct Gateway {
    base_url: String,
    replica_name: String,
    redis_url: String,
    process: Child,
    /// Every line the process wrote to stdout or stderr so far.
    logs: Arc<Mutex<Vec<String>>>,
    /// The tasks copying stdout and stderr into `logs`; they end when the process closes them.
    log_readers: Vec<JoinHandle<()>>,
    http: reqwest::Client,
    publisher: OnceCell<MultiplexedConnection>,
}

/// Starts the gateway and waits for its `listening on http://HOST:PORT` line.
pub async fn spawn_gateway(options: GatewayOptions) -> Gateway {
    let mut args = if options.serve_subcommand {
        vec!["serve"]
    } else {
        Vec::new()
    };
    args.extend(options.args.iter().map(String::as_str));
    let (process, logs, mut lines, log_readers) =
        spawn_logged(&args, &options.all_env(), options.open_files_limit);

    let wait_for_address = async {
        while let Some(line) = lines.recv().await {
            if let Some(address) = listening_address(&line) {
                return Some(address);
            }
        }
        None
    };
    let address = match tokio::time::timeout(STARTUP_TIMEOUT, wait_for_address).await {
        Ok(Some(address)) => address,
        Ok(None) => panic!(
            "the gateway exited before listening; output:\n{}",
            captured(&logs)
        ),
        Err(_) => panic!(
            "no `listening on http://` line within {STARTUP_TIMEOUT:?}; output:\n{}",
            captured(&logs)
        ),
    };
    let gateway = Gateway {
        base_url: address,
        replica_name: options.replica_name,
        redis_url: options.redis_url,
        process,
        logs,
        log_readers,
        // Every request goes to loopback; a proxy from the environment must not intercept it.
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("building the HTTP client"),
        publisher: OnceCell::new(),
    };
    if options.wait_until_ready {
        gateway.wait_for_status("/readyz", 200, STARTUP_TIMEOUT).await;
    }
    gateway
}

/// The gateway's output so far, and each new line as it comes.
type Logs = Arc<Mutex<Vec<String>>>;

/// Spawns `event-gateway ARGS` (killed on drop) with its stdout and stderr copied into the
/// returned log buffer and line channel, forever, so its pipes never fill up.
fn spawn_logged(
    args: &[&str],
    env: &[(String, String)],
    open_files_limit: Option<u64>,
) -> (Child, Logs, mpsc::UnboundedReceiver<String>, Vec<JoinHandle<()>>) {
    let mut process = gateway_command(args, env, open_files_limit)
        .kill_on_drop(true)
        .spawn()
        .expect("spawning the event-gateway binary");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (lines_sender, lines) = mpsc::unbounded_channel();
    let stdout = process.stdout.take().expect("piped stdout");
    let stderr = process.stderr.take().expect("piped stderr");
    let readers = vec![
        tokio::spawn(drain(stdout, logs.clone(), lines_sender.clone())),
        tokio::spawn(drain(stderr, logs.clone(), lines_sender)),
    ];
    (process, logs, lines, readers)
}

/// Copies every line of a child's pipe into `logs`, forever, so the pipe never fills up.
async fn drain(
    pipe: impl AsyncRead + Unpin,
    logs: Arc<Mutex<Vec<String>>>,
    lines_sender: mpsc::UnboundedSender<String>,
) {
    let mut reader = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        logs.lock().expect("log buffer lock").push(line.clone());
        let _ = lines_sender.send(line);
    }
}

fn captured(logs: &Mutex<Vec<String>>) -> String {
    logs.lock().expect("log buffer lock").join("\n")
}

/// Extracts `http://HOST:PORT` from a log line containing `listening on http://HOST:PORT`.
fn listening_address(line: &str) -> Option<String> {
    let start = line.find("listening on http://")? + "listening on ".len();
    let rest = &line[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '}' | '\\'))
        .unwrap_or(rest.len());
    Some(rest[..end].trim_end_matches(['.', '/']).to_string())
}

/// The binary with the crate root as working directory (for `config/default.toml`), an
/// environment free of any inherited `GATEWAY*` or `RUST_LOG` setting, plus `env`; started
/// through `sh -c 'ulimit -n LIMIT && exec ...'` when an open-files limit is given.
fn gateway_command(args: &[&str], env: &[(String, String)], open_files_limit: Option<u64>) -> Command {
    let binary = env!("CARGO_BIN_EXE_event-gateway");
    let mut command = match open_files_limit {
        None => Command::new(binary),
        Some(limit) => {
            let mut shell = Command::new("sh");
            shell
                .arg("-c")
                .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                .arg(binary);
            shell
        }
    };
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEWAY") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().map(|(key, value)| (key, value)));
    command
}

/// Runs a short-lived subcommand (`token`, `publish`) to completion.
pub async fn run_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    let child = gateway_command(args, &env, None)
        .kill_on_drop(true)
        .spawn()
        .expect("spawning the event-gateway binary");
    within(
        STARTUP_TIMEOUT,
        &format!("`event-gateway {}` to exit", args.join(" ")),
        child.wait_with_output(),
    )
    .await
    .expect("collecting the output of event-gateway")
}

/// Starts `event-gateway serve` with a configuration that must be refused, and returns its
/// exit status and combined output. Fails if the gateway starts listening instead.
pub async fn expect_startup_failure(env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut options = GatewayOptions::embedded();
    for (key, value) in env {
        options = options.env(key, value);
    }
    let (mut process, logs, mut lines, readers) =
        spawn_logged(&["serve"], &options.all_env(), options.open_files_limit);
    let watch = async {
        while let Some(line) = lines.recv().await {
            if listening_address(&line).is_some() {
                panic!(
                    "the gateway started despite an invalid configuration {env:?}; output:\n{}",
                    captured(&logs)
                );
            }
        }
    };
    within(STARTUP_TIMEOUT, "the gateway to refuse its configuration", watch).await;
    let status = within(STEP_TIMEOUT, "the gateway to exit", process.wait())
        .await
        .expect("waiting for the gateway process");
    for reader in readers {
        let _ = reader.await;
    }
    (status, captured(&logs))
}

impl Gateway {
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn replica_name(&self) -> &str {
        &self.replica_name
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base_url)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Everything the gateway logged so far.
    pub fn logs(&self) -> String {
        captured(&self.logs)
    }

    /// `GET /api/events?<query>` without credentials, for tests that add their own.
    pub fn events_request(&self, query: &str) -> RequestBuilder {
        let path = if query.is_empty() {
            "/api/events".to_string()
        } else {
            format!("/api/events?{query}")
        };
        self.http.get(self.url(&path))
    }

    /// Opens a stream with `Authorization: Bearer <token>` and asserts `200`.
    pub async fn connect(&self, token: &str, query: &str) -> SseClient {
        SseClient::open(self.events_request(query).bearer_auth(token)).await
    }

    /// Opens a stream and reads up to its `connected` event, so that anything published from
    /// now on must reach it.
    pub async fn connect_ready(&self, token: &str, query: &str) -> SseClient {
        let mut client = self.connect(token, query).await;
        client.expect_connected().await;
        client
    }

    pub async fn get(&self, path: &str) -> Response {
        send(self.http.get(self.url(path))).await
    }

    /// `POST /api/publish` with `token` and a JSON body (one envelope or an array).
    pub async fn publish_http(&self, token: &str, body: &Value) -> Response {
        send(
            self.http
                .post(self.url("/api/publish"))
                .bearer_auth(token)
                .json(body),
        )
        .await
    }

    /// Opens a stream with `token` resuming after `last_event_id` (the `Last-Event-ID` header)
    /// and reads up to `connected`.
    pub async fn resume(&self, token: &str, last_event_id: &str) -> SseClient {
        let request = self
            .events_request("")
            .bearer_auth(token)
            .header("Last-Event-ID", last_event_id);
        let mut client = SseClient::open(request).await;
        client.expect_connected().await;
        client
    }

    /// Publishes durably over HTTP, asserts `202`, and returns the ids.
    pub async fn publish_durable(&self, envelopes: &[Value]) -> Vec<String> {
        let mut orgs: Vec<&str> = envelopes
            .iter()
            .filter_map(|envelope| envelope["orgId"].as_str())
            .collect();
        // One entry per org: a batch of 1,000 events for one org is a token with one org.
        orgs.sort_unstable();
        orgs.dedup();
        let response = self
            .publish_http(&super::token::service(&orgs), &Value::from(envelopes.to_vec()))
            .await;
        super::http::accepted_ids(response).await
    }

    async fn redis(&self) -> MultiplexedConnection {
        let url = self.redis_url.clone();
        assert!(
            !url.is_empty(),
            "this gateway runs the embedded broker; no Redis to publish to"
        );
        self.publisher
            .get_or_init(|| async move {
                let client = redis::Client::open(url).expect("parsing the Redis URL");
                within(
                    STEP_TIMEOUT,
                    "a Redis connection for publishing",
                    client.get_multiplexed_async_connection(),
                )
                .await
                .expect("connecting to Redis for publishing")
            })
            .await
            .clone()
    }

    /// `PUBLISH events:org:<org> <payload>` with any payload, even a malformed one.
    pub async fn publish_live_raw(&self, org: &str, payload: &str) {
        let mut connection = self.redis().await;
        let _: i64 = within(
            STEP_TIMEOUT,
            "Redis PUBLISH",
            redis::cmd("PUBLISH")
                .arg(format!("events:org:{org}"))
                .arg(payload)
                .query_async(&mut connection),
        )
        .await
        .expect("Redis PUBLISH");
    }

    /// A live (fire-and-forget) event, as a backend publishes it on Redis.
    pub async fn publish_live(&self, org: &str, envelope: impl Into<Value>) {
        self.publish_live_raw(org, &envelope.into().to_string()).await;
    }

    /// Many live events in one pipeline, published in the given order.
    pub async fn publish_live_all(&self, events: Vec<(String, Value)>) {
        let mut connection = self.redis().await;
        let mut pipeline = redis::pipe();
        for (org, envelope) in events {
            pipeline
                .cmd("PUBLISH")
                .arg(format!("events:org:{org}"))
                .arg(envelope.to_string())
                .ignore();
        }
        let _: () = within(
            STEP_TIMEOUT,
            "a pipeline of Redis PUBLISH",
            pipeline.query_async(&mut connection),
        )
        .await
        .expect("Redis PUBLISH pipeline");
    }

    /// Durable events published straight through the Redis Function in one pipeline (no HTTP),
    /// `(org, envelope)` each; returns their ids in order.
    pub async fn publish_durable_via_redis(&self, events: &[(String, String)]) -> Vec<String> {
        let mut connection = self.redis().await;
        let mut ids = Vec::with_capacity(events.len());
        // Pipelines of a hundred, each well within the connection's response timeout.
        for batch in events.chunks(100) {
            let mut pipeline = redis::pipe();
            for (org, envelope) in batch {
                pipeline.add_command(super::http::fcall_publish(org, envelope));
            }
            let batch_ids: Vec<String> = within(
                STEP_TIMEOUT,
                "a pipeline of FCALL event_gateway_publish",
                pipeline.query_async(&mut connection),
            )
            .await
            .expect("FCALL event_gateway_publish pipeline");
            ids.extend(batch_ids);
        }
        ids
    }

    /// Any Redis command against the gateway's Redis (e.g. `FCALL`), returning Redis's answer.
    pub async fn redis_command(&self, command: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        let mut connection = self.redis().await;
        within(
            STEP_TIMEOUT,
            "a Redis command",
            command.query_async(&mut connection),
        )
        .await
    }

    /// `GET /metrics` as Prometheus text.
    pub async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), 200, "GET /metrics");
        within(STEP_TIMEOUT, "the /metrics body", response.text())
            .await
            .expect("reading /metrics")
    }

    /// The sum of every sample of metric `name` (all label sets), 0 when it has none.
    pub async fn metric_total(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls `path` until it answers `status`, failing the test after `limit`.
    pub async fn wait_for_status(&self, path: &str, status: u16, limit: Duration) {
        if !self.answers_status_within(path, status, limit).await {
            panic!(
                "GET {path} did not answer {status} within {limit:?}; gateway output:\n{}",
                self.logs()
            );
        }
    }

    /// Polls `path` every 25 ms until it answers `status`; false if `limit` passes first.
    async fn answers_status_within(&self, path: &str, status: u16, limit: Duration) -> bool {
        let poll = async {
            loop {
                let attempt = self.http.get(self.url(path)).send();
                let answer = tokio::time::timeout(Duration::from_secs(2), attempt).await;
                if matches!(answer, Ok(Ok(response)) if response.status() == status) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        };
        tokio::time::timeout(limit, poll).await.is_ok()
    }

    /// The gateway process's resident memory, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.process.id().expect("the gateway process is still running");
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kilobytes| kilobytes * 1024)
            .expect("VmRSS in /proc/PID/status")
    }

    /// Sends SIGTERM to the gateway process.
    pub fn terminate(&self) {
        let pid = self.process.id().expect("the gateway process is still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill -TERM");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Kills the gateway with SIGKILL, as a crash or an OOM kill would: no drain, no clean-up
    /// of what it registered in Redis. Waits until the process is gone.
    pub async fn kill_hard(&mut self) {
        within(STEP_TIMEOUT, "the gateway to die of SIGKILL", self.process.kill())
            .await
            .expect("sending SIGKILL to the gateway");
    }

    /// Waits for the process to exit and returns its status.
    pub async fn wait_for_exit(&mut self, limit: Duration) -> ExitStatus {
        let exit = tokio::time::timeout(limit, self.process.wait()).await;
        match exit {
            Ok(status) => status.expect("waiting for the gateway process"),
            Err(_) => panic!(
                "the gateway did not exit within {limit:?}; output:\n{}",
                self.logs()
            ),
        }
    }

    /// Stops the gateway with SIGTERM, waits for a successful exit and for its pipes to close,
    /// and returns everything it logged, so log assertions see every line.
    pub async fn shut_down_and_collect_logs(&mut self) -> String {
        self.terminate();
        let status = self.wait_for_exit(Duration::from_secs(15)).await;
        assert!(status.success(), "the gateway exited with {status} after SIGTERM");
        for reader in self.log_readers.drain(..) {
            let _ = within(STEP_TIMEOUT, "the gateway's output to close", reader).await;
        }
        self.logs()
    }
}

#[cfg(test)]
mod tests {
    use super::listening_address;

    #[test]
    fn finds_the_address_in_plain_and_json_log_lines() {
        for line in [
            "INFO listening on http://127.0.0.1:4321",
            "Gateway listening on http://127.0.0.1:4321.",
            r#"{"level":"INFO","fields":{"message":"listening on http://127.0.0.1:4321"}}"#,
            r#"{"message":"listening on http://127.0.0.1:4321/","addr":"x"}"#,
        ] {
            assert_eq!(
                listening_address(line).as_deref(),
                Some("http://127.0.0.1:4321"),
                "{line}"
            );
        }
    }
}
