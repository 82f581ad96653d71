//! event-gateway-bench: the load generator operators size a deployment with. It opens N SSE
//! or WebSocket streams at a given ramp (each with its own minted JWT, roles and orgs per scenario), publishes
//! at a given rate through Redis `PUBLISH`, the durable Function or `POST /api/publish`, checks
//! every delivery against what the gateway's own policy says each stream must receive, and
//! reports connections, connect times, deliveries/s, latency percentiles, losses, and the
//! server's RSS and CPU time from /proc. Every run is bounded in time and stops by itself.
//!
//! Reading order: `plan` (the scenario), `client` (one stream) over `sse` or `ws` (decoding) and
//! `tally` (counting), `publisher`, `procstat`, then `report`.

#![recursion_limit = "256"]

mod client;
mod gzip;
mod payload;
mod plan;
mod procstat;
mod publisher;
mod report;
mod sse;
mod storm;
mod tally;
mod ws;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use event_gateway::auth::{TokenMinter, TokenRequest};
use event_gateway::policy::Policy;
use event_gateway::settings::Settings;
use secrecy::SecretString;
use tokio::sync::{oneshot, watch, Semaphore};

use client::{AcceptEncoding, ClientShared, ConnRecord, EstablishedOn, Transport};
use payload::{Payload, Shape};
use plan::{Plan, PlanOptions, Roles};
use procstat::ProcSample;
use publisher::{PublishOutcome, Publisher, Via};
use tally::SeqSet;

/// What is being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Target {
    /// event-gateway: JWT per stream, `connected` event, policy applied.
    Gateway,
    /// nginx + Nchan: no authentication, one channel per org, every event of the org delivered.
    Nchan,
}

/// How client connections are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// One multi-threaded tokio runtime (`--threads` workers), one task per connection.
    Tasks,
    /// `--threads` OS threads, each a single-threaded runtime owning its share of the
    /// connections: no work stealing, no cross-thread wake-ups.
    Shards,
}

#[derive(Parser, Debug)]
#[command(
    name = "event-gateway-bench",
    about = "Load generator for event-gateway: SSE or WebSocket streams, paced publishing, exact delivery accounting",
    // A later flag wins, so `bench/run.sh` scenarios can be adjusted with BENCH_ARGS.
    args_override_self = true
)]
struct Args {
    /// Base URL of the server under test (http only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, value_enum, default_value_t = Target::Gateway)]
    target: Target,
    /// Stream path. `{org}` is replaced by the connection's first org, `{orgs}` by all its orgs
    /// joined with commas. Default: /api/events (gateway, sse), /api/ws (gateway, ws),
    /// /sub/{orgs} (nchan).
    #[arg(long)]
    path: Option<String>,
    /// How streams are opened: Server-Sent Events, or WebSocket (RFC 6455, one JSON text
    /// message per event, counted exactly as the SSE events are).
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    transport: Transport,
    /// WebSocket: offer permessage-deflate (`client_no_context_takeover`); the report says on
    /// how many streams the server accepted it.
    #[arg(long)]
    ws_deflate: bool,
    /// WebSocket: send `{"op":"ping"}` every this many seconds once established (0: never);
    /// `pong` events are counted.
    #[arg(long, default_value_t = 0.0)]
    ws_ping: f64,
    /// Streams to open.
    #[arg(short = 'n', long, default_value_t = 1000)]
    connections: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 2000.0)]
    ramp: f64,
    /// Most handshakes (connect to established) in flight at once.
    #[arg(long, default_value_t = 512)]
    max_inflight: usize,
    /// Orgs the connections are spread over (connection i lives in org i % K).
    #[arg(long, default_value_t = 1)]
    orgs: usize,
    /// Orgs listed in each token (its home org and the next ones).
    #[arg(long, default_value_t = 1)]
    orgs_per_conn: usize,
    /// Role mix: ops (pure fan-out), mixed (landlord/tenant/contractor/ops, policy filters), or one
    /// role for all.
    #[arg(long, value_enum, default_value_t = Roles::Ops)]
    roles: Roles,
    #[arg(long, default_value = "bench-o")]
    org_prefix: String,
    /// Events published per second, over all orgs (0: idle run, nothing published).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, value_enum, default_value_t = Via::Publish)]
    via: Via,
    /// HTTP publishes (`--via http|nchan`) in flight at once; 1 sends them one after another.
    #[arg(long, default_value_t = 1)]
    publish_concurrency: usize,
    #[arg(long, env = "GATEWAY__REDIS__URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// `--redis-url` is a Redis Cluster (comma-separated seeds): events are published to each
    /// org's shard (`SPUBLISH events:org:{<org>}`, `FCALL event_gateway_publish 1 <org>`).
    #[arg(long)]
    redis_cluster: bool,
    /// The gateway's HS256 secret, to mint matching tokens.
    #[arg(long, env = "GATEWAY__AUTH__JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Gateway configuration file (as given to the gateway's --config): policy table, auth
    /// issuer/audience. Default: the gateway's defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, default_value_t = 3600)]
    token_ttl: u64,
    /// SSE: the `Accept-Encoding` of every stream (and replay). With gzip, a stream answered
    /// `Content-Encoding: gzip` is inflated as it arrives; the report says how many were.
    #[arg(long, value_enum, default_value_t = AcceptEncoding::Identity)]
    accept_encoding: AcceptEncoding,
    /// What each event's data holds after `seq` and `ts`: one repeated character (`pad`, which
    /// compresses unrealistically well), or a maintenance ticket of varied fields (`realistic`:
    /// UUIDs, words, names, numbers, ISO timestamps; live and history events alike).
    #[arg(long, value_enum, default_value_t = Shape::Pad)]
    shape: Shape,
    /// Bytes of each live event's data (about: the JSON the SSE `data:` line carries), in either
    /// shape. Default: what `--pad` gives (pad), 300 (realistic).
    #[arg(long, conflicts_with = "pad")]
    event_bytes: Option<usize>,
    /// Bytes of padding in each event's data (`--shape pad`).
    #[arg(long, default_value_t = 64)]
    pad: usize,
    /// Seconds to wait after the last handshake before sampling idle memory.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Seconds to wait after the last publish for deliveries still in flight.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Seconds a connection may take from connect to established.
    #[arg(long, default_value_t = 15.0)]
    handshake_timeout: f64,
    /// When a connection counts as established. Default: connected (gateway), headers (nchan).
    #[arg(long, value_enum)]
    established_on: Option<EstablishedOn>,
    /// Server processes whose RSS and CPU are summed (repeatable). Default: whoever holds the
    /// listening socket of --url (the gateway; nginx's master and workers).
    #[arg(long = "server-pid", alias = "gateway-pid")]
    server_pids: Vec<u32>,
    /// Redis server processes (repeatable: every primary of a cluster) whose CPU time is
    /// reported on its own line, summed and each.
    #[arg(long = "redis-pid")]
    redis_pids: Vec<u32>,
    #[arg(long, value_enum, default_value_t = Mode::Tasks)]
    mode: Mode,
    /// Client threads (tokio workers, or shards).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Allow a target that is not on this machine's loopback.
    #[arg(long)]
    allow_remote: bool,
    /// Do not spread source addresses over 127.0.0.2-251.
    #[arg(long)]
    no_source_spread: bool,
    /// Open-files limit to run with (default: raise the soft limit to the hard one).
    #[arg(long)]
    max_fds: Option<u64>,
    /// A name for this run in the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Replay storm: this many extra clients open `since=0` over a history of `--history`
    /// events (org `<org-prefix>history`) when publishing starts, while the ordinary streams
    /// take the live traffic.
    #[arg(long, default_value_t = 0)]
    replayers: usize,
    /// History events written through the publish Function before the run (with --replayers).
    /// The gateway's `history.max_events_per_org` must keep them all.
    #[arg(long, default_value_t = 5000)]
    history: u64,
    /// Bytes of padding in each history event (`--shape pad`).
    #[arg(long, default_value_t = 8192)]
    history_pad: usize,
    /// Bytes of each history event's data (about), in either shape. Default: what
    /// `--history-pad` gives (pad), the live events' size (realistic).
    #[arg(long, conflicts_with = "history_pad")]
    history_bytes: Option<usize>,
    /// Seconds the replays may take from their start.
    #[arg(long, default_value_t = 120.0)]
    replay_timeout: f64,
}

/// Bytes of a realistic event's data when no size is given.
const DEFAULT_REALISTIC_BYTES: usize = 300;

/// Where the server is.
struct Endpoint {
    /// `host[:port]` as written, for the Host header.
    authority: String,
    address: SocketAddr,
    base_url: String,
}

fn resolve(url: &str, allow_remote: bool) -> anyhow::Result<Endpoint> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--url {url}: only http:// URLs are supported"))?;
    let authority = rest.split('/').next().unwrap_or_default().to_string();
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.clone()
    } else {
        format!("{authority}:80")
    };
    let addresses: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .with_context(|| format!("resolving {with_port}"))?
        .collect();
    let address = *addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(addresses.first())
        .with_context(|| format!("{with_port} resolves to no address"))?;
    if !allow_remote && !addresses.iter().all(|a| a.ip().is_loopback()) {
        bail!("refusing {url}: not a loopback address (pass --allow-remote to load another machine)");
    }
    Ok(Endpoint {
        authority,
        address,
        base_url: format!("http://{}", rest.split('/').next().unwrap_or_default()),
    })
}

/// Raises the soft open-files limit to the hard one (or to `wanted`); returns the limit in force.
fn raise_fd_limit(wanted: Option<u64>) -> anyhow::Result<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get().context("reading RLIMIT_NOFILE")?;
    let target = wanted.unwrap_or(hard).min(hard);
    if target != soft {
        rlimit::Resource::NOFILE
            .set(target, hard)
            .context("raising RLIMIT_NOFILE")?;
    }
    Ok(target)
}

/// Sum of the samples of several processes (`None` when none could be read).
fn sample_all(pids: &[u32]) -> Option<ProcSample> {
    let samples: Vec<ProcSample> = pids
        .iter()
        .filter_map(|pid| procstat::sample(&pid.to_string()))
        .collect();
    let first = *samples.first()?;
    Some(samples.iter().skip(1).fold(first, |sum, s| ProcSample {
        rss_kb: sum.rss_kb + s.rss_kb,
        hwm_kb: sum.hwm_kb + s.hwm_kb,
        cpu_ms: sum.cpu_ms + s.cpu_ms,
        threads: sum.threads + s.threads,
        at: sum.at,
    }))
}

/// Process samples at the run's milestones.
#[derive(Debug, Clone, Copy)]
pub struct Samples {
    /// Before the first connection.
    pub before: Option<ProcSample>,
    /// After every handshake and the settle time: idle streams open.
    pub connected: Option<ProcSample>,
    /// After publishing and draining.
    pub after: Option<ProcSample>,
}

/// Everything a run produced, for the report.
pub struct RunResult {
    pub records: Vec<ConnRecord>,
    pub expectations: Vec<SeqSet>,
    pub publish: Option<PublishOutcome>,
    /// Server, bench, redis.
    pub samples: [Samples; 3],
    pub ramp_elapsed: Duration,
    pub drain_elapsed: Duration,
    pub shared: Arc<ClientShared>,
    pub storm: Option<StormResult>,
    /// CPU time of each Redis process (`--redis-pid`) while publishing and draining.
    pub redis_each_cpu_ms: Vec<(u32, Option<u64>)>,
}

/// What the replay storm produced.
pub struct StormResult {
    pub history: u64,
    pub records: Vec<storm::ReplayRecord>,
    pub slowlog: storm::SlowLog,
}

/// The replay storm to run: the history, and one stream request per replaying client.
struct Storm {
    history: storm::History,
    requests: Vec<Vec<u8>>,
    timeout: Duration,
}

struct RunInputs {
    args: Args,
    endpoint: Endpoint,
    plan: Arc<Plan>,
    requests: Vec<Vec<u8>>,
    expectations: Vec<SeqSet>,
    service_tokens: Vec<String>,
    server_pids: Vec<u32>,
    events: u64,
    storm: Option<Storm>,
}

/// Opens `conns` on the current runtime at their due times; returns their records when the
/// run stops them.
async fn launch(
    shared: Arc<ClientShared>,
    conns: Vec<(usize, Vec<u8>)>,
    start: Instant,
    ramp: f64,
    semaphore: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) -> Vec<ConnRecord> {
    let mut handles = Vec::with_capacity(conns.len());
    let mut records = Vec::new();
    for (index, request) in conns {
        let due = start + Duration::from_secs_f64(index as f64 / ramp);
        tokio::time::sleep_until(due.into()).await;
        let mut stop_wait = stop.clone();
        let permit = tokio::select! {
            permit = semaphore.clone().acquire_owned() => permit.ok(),
            _ = stop_wait.changed() => None,
        };
        let Some(permit) = permit.filter(|_| !*stop.borrow()) else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            records.push(ConnRecord {
                index,
                failure: Some("not_started".into()),
                ..ConnRecord::default()
            });
            continue;
        };
        let task = client::run_connection(index, request, shared.clone(), permit, stop.clone());
        handles.push((index, tokio::spawn(task)));
    }
    for (index, handle) in handles {
        records.push(handle.await.unwrap_or_else(|error| ConnRecord {
            index,
            failure: Some(format!("panic: {error}")),
            ..ConnRecord::default()
        }));
    }
    records
}

async fn run(inputs: RunInputs) -> anyhow::Result<RunResult> {
    let RunInputs {
        args,
        endpoint,
        plan,
        requests,
        expectations,
        service_tokens,
        server_pids,
        events,
        storm,
    } = inputs;
    if let Some(storm) = &storm {
        storm::seed(&args.redis_url, &storm.history).await?;
    }
    let established_on = args.established_on.unwrap_or(match args.target {
        Target::Gateway => EstablishedOn::Connected,
        Target::Nchan => EstablishedOn::Headers,
    });
    let mut shared = ClientShared::new(
        endpoint.address,
        args.transport,
        !args.no_source_spread && endpoint.address.ip().is_loopback(),
        established_on,
        Duration::from_secs_f64(args.handshake_timeout),
        plan.event_orgs().into(),
    );
    shared.ws_deflate = args.ws_deflate;
    shared.ws_ping = (args.ws_ping > 0.0).then(|| Duration::from_secs_f64(args.ws_ping));
    let shared = Arc::new(shared);
    let redis_pids: Vec<u32> = args.redis_pids.clone();
    let mut samples = [Samples {
        before: None,
        connected: None,
        after: None,
    }; 3];
    // Server, bench, Redis, at milestone `at`.
    let sample = |at: usize, samples: &mut [Samples; 3]| {
        let values = [
            sample_all(&server_pids),
            procstat::sample("self"),
            sample_all(&redis_pids),
        ];
        for (slot, value) in samples.iter_mut().zip(values) {
            match at {
                0 => slot.before = value,
                1 => slot.connected = value,
                _ => slot.after = value,
            }
        }
    };
    sample(0, &mut samples);

    // Connections.
    let (stop_tx, stop_rx) = watch::channel(false);
    let semaphore = Arc::new(Semaphore::new(args.max_inflight.max(1)));
    let ramp = args.ramp.max(0.001);
    let start = Instant::now();
    let total = requests.len();
    let shards = match args.mode {
        Mode::Tasks => 1,
        Mode::Shards => args.threads.max(1),
    };
    let mut per_shard: Vec<Vec<(usize, Vec<u8>)>> = (0..shards).map(|_| Vec::new()).collect();
    for (index, request) in requests.into_iter().enumerate() {
        per_shard[index % shards].push((index, request));
    }
    let mut results: Vec<oneshot::Receiver<Vec<ConnRecord>>> = Vec::new();
    for (shard, conns) in per_shard.into_iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        results.push(rx);
        let launched = launch(
            shared.clone(),
            conns,
            start,
            ramp,
            semaphore.clone(),
            stop_rx.clone(),
        );
        match args.mode {
            Mode::Tasks => {
                tokio::spawn(async move {
                    let _ = tx.send(launched.await);
                });
            }
            Mode::Shards => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building a shard runtime")?;
                std::thread::Builder::new()
                    .name(format!("bench-shard-{shard}"))
                    .spawn(move || {
                        let _ = tx.send(runtime.block_on(launched));
                    })
                    .context("spawning a shard thread")?;
            }
        }
    }
    let handshake_deadline = start
        + Duration::from_secs_f64(total as f64 / ramp + args.handshake_timeout)
        + Duration::from_secs(2);
    loop {
        let done = shared.established.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        if done >= total as u64 || Instant::now() > handshake_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ramp_elapsed = start.elapsed();
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    sample(1, &mut samples);
    let redis_connected: Vec<Option<ProcSample>> = redis_pids
        .iter()
        .map(|pid| procstat::sample(&pid.to_string()))
        .collect();

    // The replay storm starts with the live traffic.
    let replays = match storm {
        Some(storm) => {
            storm::slowlog_start(&args.redis_url).await?;
            let deadline = Instant::now() + storm.timeout;
            let tasks: Vec<_> = storm
                .requests
                .into_iter()
                .map(|request| {
                    tokio::spawn(storm::replay(
                        endpoint.address,
                        request,
                        storm.history.events,
                        deadline,
                    ))
                })
                .collect();
            Some((storm.history.events, tasks))
        }
        None => None,
    };

    // Publishing.
    let mut publish = None;
    let mut drain_elapsed = Duration::ZERO;
    if events > 0 {
        // The publisher has a thread of its own, so that busy client connections never delay
        // a send (each event is stamped when it actually leaves anyway).
        let (tx, rx) = oneshot::channel();
        let (plan, via, rate, concurrency) = (plan.clone(), args.via, args.rate, args.publish_concurrency);
        let (redis_url, base_url) = (args.redis_url.clone(), endpoint.base_url.clone());
        let redis_cluster = args.redis_cluster;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the publisher runtime")?;
        std::thread::Builder::new()
            .name("bench-publisher".into())
            .spawn(move || {
                let outcome = runtime.block_on(async move {
                    let publisher = Publisher::connect(
                        plan,
                        via,
                        &redis_url,
                        redis_cluster,
                        &base_url,
                        service_tokens,
                        concurrency,
                    )
                    .await?;
                    Ok::<_, anyhow::Error>(publisher.run(events, rate).await)
                });
                let _ = tx.send(outcome);
            })
            .context("spawning the publisher thread")?;
        let outcome = rx.await.context("the publisher thread died")??;
        // Everything expected, if every stream stayed and every publish succeeded.
        let clean = outcome.failures.is_empty()
            && shared.failed.load(Ordering::Relaxed) == 0
            && shared.dropped.load(Ordering::Relaxed) == 0;
        let target: u64 = expectations.iter().map(SeqSet::len).sum();
        let drain_start = Instant::now();
        let drain_deadline = drain_start + Duration::from_secs_f64(args.drain);
        while Instant::now() < drain_deadline
            && !(clean && shared.deliveries.load(Ordering::Relaxed) >= target)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drain_elapsed = drain_start.elapsed();
        publish = Some(outcome);
    }
    let mut storm = None;
    if let Some((history, tasks)) = replays {
        let mut records = Vec::with_capacity(tasks.len());
        for task in tasks {
            records.push(task.await.unwrap_or_else(|error| storm::ReplayRecord {
                failure: Some(format!("panic: {error}")),
                ..Default::default()
            }));
        }
        storm = Some(StormResult {
            history,
            records,
            slowlog: storm::slowlog_finish(&args.redis_url).await?,
        });
    }
    sample(2, &mut samples);
    let redis_each_cpu_ms = redis_pids
        .iter()
        .zip(redis_connected)
        .map(|(pid, before)| {
            let after = procstat::sample(&pid.to_string());
            let spent = before
                .zip(after)
                .map(|(before, after)| after.cpu_ms.saturating_sub(before.cpu_ms));
            (*pid, spent)
        })
        .collect();

    let _ = stop_tx.send(true);
    let mut records = Vec::with_capacity(total);
    for result in results {
        match tokio::time::timeout(Duration::from_secs(30), result).await {
            Ok(Ok(shard_records)) => records.extend(shard_records),
            Ok(Err(_)) => bail!("a client shard ended without its records"),
            Err(_) => bail!("client connections did not stop within 30 s"),
        }
    }
    records.sort_by_key(|record| record.index);
    Ok(RunResult {
        records,
        expectations,
        publish,
        samples,
        ramp_elapsed,
        drain_elapsed,
        shared,
        storm,
        redis_each_cpu_ms,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fd_limit = raise_fd_limit(args.max_fds)?;
    if args.connections as u64 + 64 > fd_limit {
        bail!(
            "{} connections need about {} open files; this process may open {fd_limit} \
             (raise the hard limit, or spread the load over several bench processes)",
            args.connections,
            args.connections + 64
        );
    }
    let endpoint = resolve(&args.url, args.allow_remote)?;
    if args.transport == Transport::Ws {
        if args.target != Target::Gateway {
            bail!("--transport ws needs --target gateway (Nchan and the pump are measured over SSE)");
        }
        if args.replayers > 0 {
            bail!("--replayers: the replay storm's clients speak SSE only; run it with --transport sse");
        }
    } else if args.ws_deflate || args.ws_ping > 0.0 {
        bail!("--ws-deflate and --ws-ping need --transport ws");
    }
    if args.transport == Transport::Ws && args.accept_encoding != AcceptEncoding::Identity {
        bail!("--accept-encoding is for SSE streams; WebSocket compression is --ws-deflate");
    }
    let server_pids = if args.server_pids.is_empty() && endpoint.address.ip().is_loopback() {
        procstat::find_listeners(endpoint.address.port())
    } else {
        args.server_pids.clone()
    };
    if server_pids.is_empty() {
        eprintln!("note: no server process found; pass --server-pid to report its RSS and CPU");
    }
    for &pid in &server_pids {
        if let Some(limit) = procstat::open_files_limit(pid) {
            if limit < args.connections as u64 + 64 {
                eprintln!(
                    "warning: server process {pid} may open only {limit} files: {} streams will not fit",
                    args.connections
                );
            }
        }
    }

    let settings = Settings::load_from(args.config.as_deref(), Some(HashMap::new()))
        .map_err(|e| anyhow::anyhow!("loading the gateway settings: {e}"))?;
    let events = if args.rate > 0.0 {
        (args.rate * args.duration).round().max(0.0) as u64
    } else {
        0
    };
    let digits = |n: u64| n.max(1).ilog10() as usize + 1;
    let live_payload = match (args.shape, args.event_bytes) {
        (Shape::Pad, None) => Payload::pad(args.pad),
        // A current `ts` has 19 digits.
        (shape, bytes) => Payload::sized(
            shape,
            bytes.unwrap_or(DEFAULT_REALISTIC_BYTES),
            digits(events.saturating_sub(1)) + 19,
            args.seed,
        ),
    };
    let history_payload = match (args.shape, args.history_bytes) {
        (Shape::Pad, None) => Payload::pad(args.history_pad),
        (shape, bytes) => Payload::sized(
            shape,
            bytes.or(args.event_bytes).unwrap_or(DEFAULT_REALISTIC_BYTES),
            digits(args.history.saturating_sub(1)) + 1,
            args.seed ^ 0x5EED,
        ),
    };
    let plan = Arc::new(Plan::build(&PlanOptions {
        connections: args.connections,
        orgs: args.orgs,
        orgs_per_conn: args.orgs_per_conn,
        roles: if args.target == Target::Nchan {
            Roles::Ops
        } else {
            args.roles
        },
        events: events as usize,
        payload: live_payload.clone(),
        org_prefix: args.org_prefix.clone(),
        seed: args.seed,
    }));

    let (requests, service_tokens, storm) = {
        let path_template = args
            .path
            .clone()
            .unwrap_or_else(|| match (args.target, args.transport) {
                (Target::Gateway, Transport::Sse) => "/api/events".to_string(),
                (Target::Gateway, Transport::Ws) => "/api/ws".to_string(),
                (Target::Nchan, _) => "/sub/{orgs}".to_string(),
            });
        let minter = match (args.target, &args.secret) {
            (Target::Nchan, _) => None,
            (Target::Gateway, Some(secret)) => Some(TokenMinter::new(
                &SecretString::from(secret.clone()),
                &settings.auth,
            )),
            (Target::Gateway, None) => bail!(
                "--secret (or GATEWAY__AUTH__JWT_SECRET) is required to mint tokens the gateway accepts"
            ),
        };
        let mut requests = Vec::with_capacity(plan.conns.len());
        for conn in &plan.conns {
            let orgs: Vec<String> = conn.orgs.iter().map(|&o| plan.orgs[o as usize].clone()).collect();
            let path = path_template
                .replace("{orgs}", &orgs.join(","))
                .replace("{org}", &orgs[0]);
            let token = match &minter {
                Some(minter) => Some(
                    minter
                        .mint(&TokenRequest {
                            sub: &conn.sub,
                            role: conn.role,
                            orgs: &orgs,
                            tenant_id: conn.tenant_id.as_deref(),
                            contractor_id: conn.contractor_id.as_deref(),
                            ttl_secs: args.token_ttl,
                        })
                        .context("minting a stream token")?,
                ),
                None => None,
            };
            requests.push(match args.transport {
                Transport::Sse => {
                    client::stream_request(&endpoint.authority, &path, token.as_deref(), args.accept_encoding)
                }
                Transport::Ws => ws::request(&endpoint.authority, &path, token.as_deref(), args.ws_deflate),
            });
        }
        let mut service_tokens = Vec::new();
        if let Some(minter) = &minter {
            for org in &plan.orgs {
                service_tokens.push(
                    minter
                        .mint(&TokenRequest {
                            sub: "bench-publisher",
                            role: "service",
                            orgs: std::slice::from_ref(org),
                            tenant_id: None,
                            contractor_id: None,
                            ttl_secs: args.token_ttl,
                        })
                        .context("minting a service token")?,
                );
            }
        }
        let storm = match (&minter, args.replayers) {
            (_, 0) => None,
            (None, _) => bail!("--replayers needs the gateway target"),
            (Some(minter), replayers) => {
                let org = format!("{}history", args.org_prefix);
                let mut requests = Vec::with_capacity(replayers);
                for n in 0..replayers {
                    let token = minter
                        .mint(&TokenRequest {
                            sub: &format!("bench-replayer-{n}"),
                            role: "ops",
                            orgs: std::slice::from_ref(&org),
                            tenant_id: None,
                            contractor_id: None,
                            ttl_secs: args.token_ttl,
                        })
                        .context("minting a replayer token")?;
                    requests.push(client::stream_request(
                        &endpoint.authority,
                        "/api/events?since=0",
                        Some(&token),
                        args.accept_encoding,
                    ));
                }
                Some(Storm {
                    history: storm::History {
                        org,
                        events: args.history,
                        payload: history_payload.clone(),
                    },
                    requests,
                    timeout: Duration::from_secs_f64(args.replay_timeout),
                })
            }
        };
        (requests, service_tokens, storm)
    };
    let policy = Policy::new(settings.policy.roles.clone());
    let all: Vec<usize> = (0..plan.conns.len()).collect();
    let expectations = plan.expectations(
        match args.target {
            Target::Gateway => Some(&policy),
            Target::Nchan => None,
        },
        &all,
    )?;

    // Every run stops by itself, whatever happens to the server.
    let bound = args.connections as f64 / args.ramp.max(0.001)
        + args.handshake_timeout
        + args.settle
        + if events > 0 {
            args.duration * 3.0 + args.drain
        } else {
            0.0
        }
        + if args.replayers > 0 {
            args.replay_timeout + 60.0
        } else {
            0.0
        }
        + 60.0;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(bound));
        eprintln!("event-gateway-bench: the run exceeded its {bound:.0} s bound; exiting");
        std::process::exit(3);
    });

    let runtime = match args.mode {
        Mode::Tasks => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads.max(1))
            .enable_all()
            .build(),
        Mode::Shards => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    }
    .context("building the runtime")?;
    let load_before = procstat::load_average();
    let context = report::Context {
        label: args.label.clone(),
        url: args.url.clone(),
        target: format!("{:?}", args.target).to_lowercase(),
        transport: format!("{:?}", args.transport).to_lowercase(),
        ws_deflate_offered: args.ws_deflate,
        via: format!("{:?}", args.via).to_lowercase(),
        roles: format!("{:?}", args.roles).to_lowercase(),
        mode: format!("{:?}", args.mode).to_lowercase(),
        threads: args.threads,
        connections: args.connections,
        orgs: plan.orgs.len(),
        ramp: args.ramp,
        rate: args.rate,
        duration: args.duration,
        events,
        pad: args.pad,
        accept_encoding: args.accept_encoding.header_value().to_string(),
        shape: format!("{:?}", live_payload.shape()).to_lowercase(),
        event_bytes: live_payload.mean_bytes(events.min(1000), 1_800_000_000_000_000_000),
        history_event_bytes: (args.replayers > 0)
            .then(|| history_payload.mean_bytes(args.history.min(1000), 0)),
        server_pids: server_pids.clone(),
        load_before,
    };
    let result = runtime.block_on(run(RunInputs {
        args,
        endpoint,
        plan,
        requests,
        expectations,
        service_tokens,
        server_pids,
        events,
        storm,
    }))?;
    report::print(&context, &result);
    Ok(())
}
