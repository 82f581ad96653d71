//! Builds the application from settings: keys, policy, hub, broker, the HTTP server bound to its
//! port, and the once-a-second housekeeping tick; then runs it until a signal drains it.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use bytes::Bytes;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

use crate::auth::{JwtVerifier, TokenMinter, TokenRequest};
use crate::broker::{Broker, EmbeddedBroker, RedisBroker, Registry, HEARTBEAT_INTERVAL};
use crate::clock::unix_secs;
use crate::hub::Hub;
use crate::limits::{RateLimiter, StreamSlots};
use crate::metrics::METRICS;
use crate::policy::Policy;
use crate::routes::{self, AppState};
use crate::session::{SessionSettings, Sessions};
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use crate::sse;
use crate::websocket;
use crate::wire::{Encoding, PerEncoding};

/// HTTP workers when `server.workers` is 0: one per core but one, and at least one. The core
/// left over runs the accept thread, the housekeeping and the kernel's share of every write;
/// with a worker on it too, fan-out bursts queue behind one another (on 2 cores, the 800 ev/s
/// fan-out's p99 is 235 ms with two workers and 62 ms with one, at less CPU per delivery).
fn default_workers(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

/// Open files kept for everything that is not a stream: Redis connections, the listener, the
/// runtimes' epoll and event descriptors, and accepting the clients that are answered 503.
const RESERVED_FILES: u64 = 512;

/// Of `RESERVED_FILES`, those kept for everything but client sockets: the accept loop stops
/// accepting (clients wait in the listen backlog) before the process runs out of descriptors,
/// instead of failing accepts with EMFILE in a loop.
const NON_SOCKET_FILES: u64 = 256;

/// Client sockets (streams, other requests, clients being answered 503) each HTTP worker may
/// hold when the process may open `open_files` descriptors.
fn sockets_per_worker(open_files: u64, workers: usize) -> usize {
    let sockets = usize::try_from(open_files.saturating_sub(NON_SOCKET_FILES)).unwrap_or(usize::MAX);
    (sockets / workers.max(1)).max(1)
}

/// Streams a process allowed `open_files` descriptors can hold while keeping `RESERVED_FILES`.
fn streams_within(open_files: u64) -> usize {
    usize::try_from(open_files.saturating_sub(RESERVED_FILES))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Raises the open-files soft limit to the hard limit, and lowers `limits.max_connections` to
/// what that limit holds, so that a replica at its limit answers `503` with `Retry-After`
/// instead of failing to accept. Returns the limit, when it could be read.
fn fit_connections_to_open_files(settings: &mut Settings) -> Option<u64> {
    let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(open_files) => open_files,
        Err(error) => {
            tracing::warn!(%error, "Could not read or raise the open-files limit.");
            if settings.limits.max_connections == 0 {
                settings.limits.max_connections = DEFAULT_MAX_CONNECTIONS;
            }
            return None;
        }
    };
    let streams = streams_within(open_files);
    if settings.limits.max_connections == 0 {
        settings.limits.max_connections = streams;
        tracing::info!(
            open_files,
            max_connections = streams,
            "Streams per replica: as many as the open-files limit holds."
        );
    } else if settings.limits.max_connections > streams {
        tracing::warn!(
            open_files,
            configured = settings.limits.max_connections,
            effective = streams,
            "limits.max_connections is more than the open-files limit holds; using the lower value \
             (raise the hard limit, e.g. `ulimit -Hn` or the container's nofile, for more streams)."
        );
        settings.limits.max_connections = streams;
    }
    Some(open_files)
}

/// Streams per replica when `limits.max_connections = 0` and the open-files limit is unknown.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Most events one replay page reads across a stream's orgs (at most one per org beyond it).
const REPLAY_PAGE_EVENTS: usize = 256;
/// Bytes one replay page aims at: a Redis call reading this much takes well under a
/// millisecond (2 MB pages of 8 KB events took 20-40 ms, over the 10 ms slow-log threshold).
const REPLAY_PAGE_BYTES: usize = 128 * 1024;

/// Org used by the sample commands printed when no key is configured.
const DEMO_ORG: &str = "demo-org";

pub struct Application {
    server: Server,
    host: String,
    port: u16,
    state: web::Data<AppState>,
}

impl Application {
    pub async fn build(mut settings: Settings) -> anyhow::Result<Self> {
        let open_files = fit_connections_to_open_files(&mut settings);
        let settings = Arc::new(settings);
        let configured_secret =
            Some(settings.auth.jwt_secret.clone()).filter(|s| !s.expose_secret().is_empty());
        let has_public_key = !settings.auth.public_key_pem.is_empty() || !settings.auth.jwks_path.is_empty();
        let generated_secret = (configured_secret.is_none() && !has_public_key).then(random_secret);
        let secret = configured_secret.or_else(|| generated_secret.clone());
        let verifier = JwtVerifier::new(
            &settings.auth,
            secret.as_ref(),
            settings.limits.max_orgs_per_token,
        )?;
        let policy = Policy::new(settings.policy.roles.clone());
        METRICS.init(settings.policy.roles.keys().cloned());

        let hub = Arc::new(Hub::new(settings.sse.queue_capacity));
        let shutdown = Shutdown::new();
        let replica_name = &settings.server.replica_name;
        let (broker, registry) = if settings.uses_embedded_broker() {
            tracing::info!(
                "No redis.url configured: using the embedded broker (single replica, in-memory history)."
            );
            let broker = EmbeddedBroker::new(
                hub.clone(),
                settings.history.retention_secs,
                settings.history.max_events_per_org,
            );
            (Broker::Embedded(Arc::new(broker)), Registry::local(replica_name))
        } else {
            let broker = RedisBroker::new(
                &settings.redis,
                &settings.history,
                settings.limits.max_event_bytes,
                hub.clone(),
                shutdown.clone(),
            )
            .context("configuring Redis")?;
            let registry = Registry::redis(replica_name, broker.commands());
            (Broker::Redis(broker), registry)
        };

        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener =
            TcpListener::bind(&address).with_context(|| format!("binding the listener on {address}"))?;
        let port = listener.local_addr()?.port();
        let workers = match settings.server.workers {
            0 => default_workers(std::thread::available_parallelism().map_or(1, usize::from)),
            n => n,
        };
        let registry = Arc::new(registry);
        let sessions = Sessions::new(
            policy.clone(),
            broker.clone(),
            registry.clone(),
            StreamSlots::new(settings.limits.max_connections),
            settings.history.max_concurrent_replays,
            SessionSettings {
                replica_name: settings.server.replica_name.clone(),
                keepalive_secs: settings.sse.keepalive_secs,
                max_connections_per_user: settings.limits.max_connections_per_user,
                connect_rate_per_user: settings.limits.connect_rate_per_user,
                replay_page_events: REPLAY_PAGE_EVENTS,
                replay_page_bytes: REPLAY_PAGE_BYTES,
            },
        );
        let state = web::Data::new(AppState {
            settings: settings.clone(),
            verifier,
            policy,
            hub: hub.clone(),
            broker,
            registry,
            sessions,
            ip_rate: RateLimiter::new(settings.limits.connect_rate_per_ip),
            shutdown: shutdown.clone(),
            dev_minter: generated_secret
                .as_ref()
                .map(|secret| TokenMinter::new(secret, &settings.auth)),
        });
        // An idle stream then holds no 8 KiB read/write buffers: ~3.5 KB instead of ~12 KB.
        actix_http::h1::set_release_idle_buffers(true);
        // Requests refused before a handler sees them get the same JSON error body as the rest.
        actix_http::h1::set_error_body(crate::error::early_error_body);
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            // Runs once per worker, on the worker's thread: its connections form one shard.
            let shard = web::Data::from(app_state.hub.add_shard());
            // The first worker also reads Redis, so an event is fanned out where it arrives.
            if let Broker::Redis(broker) = &app_state.broker {
                broker.start_subscriber();
            }
            App::new()
                .app_data(app_state.clone())
                .app_data(shard)
                .wrap(from_fn(routes::cors))
                .wrap(from_fn(routes::access_log))
                .configure(routes::configure)
        })
        // A client that closes its side is gone: notice it at once, not at the next write.
        .h1_allow_half_closed(false)
        .workers(workers)
        // The per-replica stream limit is enforced by the handler with a 503; accept enough
        // sockets to answer it, but never more than the open-files limit leaves for sockets.
        .max_connections(match open_files {
            Some(open_files) => sockets_per_worker(open_files, workers),
            None => settings.limits.max_connections / workers + 1024,
        })
        .backlog(4096)
        .disable_signals()
        .shutdown_timeout(settings.server.shutdown_timeout_secs)
        .listen(listener)?
        .run();

        tokio::spawn(housekeeping(hub, settings.sse.keepalive_secs, shutdown));
        tokio::spawn(heartbeat(state.clone()));
        let host = match settings.server.host.as_str() {
            "0.0.0.0" | "::" => "127.0.0.1".to_string(),
            host => host.to_string(),
        };
        // The bind address, and a URL that works from this machine (an unspecified bind
        // address is reached through loopback here).
        tracing::info!(
            replica = %settings.server.replica_name,
            bind = %format!("{}:{port}", settings.server.host),
            "listening on http://{host}:{port} (bound to {}:{port})",
            settings.server.host
        );
        if let Some(secret) = generated_secret {
            print_quickstart(&settings, &secret, &host, port)?;
        }
        Ok(Self {
            server,
            host,
            port,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn base_url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// Serves until SIGTERM or SIGINT, then drains: readiness fails, new streams are refused,
    /// every stream gets a jittered `retry:` and is closed, and the server stops within
    /// `server.shutdown_timeout_secs`.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let state = self.state.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            let settings = &state.settings;
            tracing::info!(
                connections = state.hub.connection_count(),
                "Draining: telling every stream to reconnect elsewhere."
            );
            state.shutdown.start_draining();
            let (min, max) = (settings.sse.drain_retry_min_ms, settings.sse.drain_retry_max_ms);
            {
                let mut rng = rand::rng();
                state
                    .hub
                    .close_all(|encoding| drain_frame(encoding, rng.random_range(min..=max)));
            }
            handle.stop(true).await;
            state.shutdown.stop();
            state.registry.withdraw().await;
        });
        self.server.await.context("running the HTTP server")?;
        tracing::info!("Stopped.");
        Ok(())
    }
}

/// What a stream is sent at drain before it ends: SSE a `retry:` of `retry_ms`, WebSocket a
/// `reconnect` message and a `1001` close.
fn drain_frame(encoding: Encoding, retry_ms: u64) -> Bytes {
    match encoding {
        Encoding::Sse | Encoding::SseGzip { .. } => sse::retry_frame(retry_ms),
        Encoding::Ws | Encoding::WsDeflate { .. } => websocket::drain_frames(retry_ms),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Once a second: keepalives for idle streams and `auth.expired` for expired tokens. One timer
/// for all streams instead of two per stream.
async fn housekeeping(hub: Arc<Hub>, keepalive_secs: u64, shutdown: Shutdown) {
    let expired = PerEncoding::build(|encoding| match encoding {
        Encoding::Sse | Encoding::SseGzip { .. } => sse::expired_frame(),
        Encoding::Ws | Encoding::WsDeflate { .. } => websocket::expired_frames(),
    });
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.stopped() => return,
        }
        let now = time::OffsetDateTime::now_utc();
        let keepalive = PerEncoding::build(|encoding| match encoding {
            Encoding::Sse | Encoding::SseGzip { .. } => sse::keepalive_frame(now),
            Encoding::Ws | Encoding::WsDeflate { .. } => websocket::keepalive_message(now),
        });
        hub.tick(unix_secs(), keepalive_secs, &keepalive, &expired);
    }
}

/// Publishes this replica's connection counts for the registry until shutdown.
async fn heartbeat(state: web::Data<AppState>) {
    let mut interval = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = state.shutdown.stopped() => return,
        }
        if let Err(error) = state.registry.heartbeat(&state.hub).await {
            tracing::debug!(%error, "Could not publish the connection registry heartbeat.");
        }
    }
}

fn random_secret() -> SecretString {
    let bytes: [u8; 32] = rand::random();
    SecretString::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Prints ready-to-paste commands for a first run without configured keys.
fn print_quickstart(settings: &Settings, secret: &SecretString, host: &str, port: u16) -> anyhow::Result<()> {
    tracing::warn!("No auth.jwt_secret or public key configured: generated a random secret for this run. Tokens signed with it stop working when the process exits.");
    let minter = TokenMinter::new(secret, &settings.auth);
    let orgs = vec![DEMO_ORG.to_string()];
    let mint = |role: &str, sub: &str| {
        minter.mint(&TokenRequest {
            sub,
            role,
            orgs: &orgs,
            tenant_id: None,
            contractor_id: None,
            ttl_secs: 24 * 3600,
        })
    };
    let ops = mint("ops", "demo-ops")?;
    let service = mint("service", "demo-publisher")?;
    println!(
        "\nTry it. In one terminal, open a stream (an ops token for org {DEMO_ORG}):\n\n  \
         curl -N -H 'Authorization: Bearer {ops}' http://{host}:{port}/api/events\n\n\
         In another, publish an event (a service token):\n\n  \
         curl -X POST http://{host}:{port}/api/publish -H 'Authorization: Bearer {service}' \
         -H 'Content-Type: application/json' \
         -d '{{\"type\":\"ticket.created\",\"orgId\":\"{DEMO_ORG}\",\"data\":{{\"id\":\"t-1\",\"title\":\"Leaking faucet\"}}}}'\n"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{default_workers, sockets_per_worker, streams_within};

    #[test]
    fn default_workers_leave_one_core_to_the_rest_of_the_process() {
        assert_eq!(default_workers(1), 1);
        assert_eq!(default_workers(2), 1);
        assert_eq!(default_workers(8), 7);
    }

    #[test]
    fn streams_keep_files_for_the_rest_of_the_process() {
        assert_eq!(streams_within(20_000), 19_488);
    }

    #[test]
    fn sockets_stop_before_the_open_files_limit_and_leave_room_for_503_answers() {
        assert_eq!(sockets_per_worker(20_000, 1), 19_744);
        assert_eq!(sockets_per_worker(20_000, 4), 4_936);
        assert!(sockets_per_worker(20_000, 1) > streams_within(20_000));
    }

    #[test]
    fn a_tiny_open_files_limit_still_allows_one_stream() {
        assert_eq!(streams_within(100), 1);
    }

    #[test]
    fn default_workers_is_at_least_one() {
        assert_eq!(default_workers(0), 1);
    }
}
