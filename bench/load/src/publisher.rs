//! Publishing the planned events at a steady rate: each event is due at `start + seq / rate`
//! and stamped with its send time (`data.ts`, ns since the epoch) just before it leaves. When
//! the publisher falls behind (a slow round trip), the events already due go out together (one
//! Redis pipeline) so the rate holds; how far it fell behind is reported.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use redis::aio::MultiplexedConnection;

use crate::plan::Plan;
use crate::tally::SeqSet;

/// Most events sent in one Redis pipeline when catching up.
const MAX_CATCH_UP: u64 = 256;

/// How events get in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// `PUBLISH events:org:<org> <envelope>` (live).
    Publish,
    /// `FCALL event_gateway_publish 0 <org> <envelope>` (durable).
    Function,
    /// `POST /api/publish` with a `service` token (durable).
    Http,
    /// Nchan's publisher location: `POST <url>/pub/<org>` with the bench payload as body.
    Nchan,
}

enum Sink {
    Redis(MultiplexedConnection),
    /// A Redis Cluster: each event routed to its org's shard (`SPUBLISH events:org:{<org>}`,
    /// `FCALL event_gateway_publish 1 <org>`), the events of one send concurrently.
    Cluster(redis::cluster_async::ClusterConnection),
    Http {
        client: reqwest::Client,
        url: String,
        /// A `service` token per org index.
        tokens: Vec<String>,
    },
    Nchan {
        client: reqwest::Client,
        url: String,
    },
}

/// What the publisher did.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// Sequence numbers accepted by Redis or the HTTP endpoint.
    pub published: SeqSet,
    pub attempted: u64,
    pub failures: BTreeMap<String, u64>,
    /// First send to last acknowledgement.
    pub elapsed: Duration,
    /// `PUBLISH` answered 0 receivers (nobody subscribed to the org's channel).
    pub zero_receivers: u64,
    /// Worst lateness of a send behind its due time.
    pub max_behind: Duration,
    /// CPU time of the publisher's thread (reported apart from the clients').
    pub cpu_ms: u64,
}

pub struct Publisher {
    plan: Arc<Plan>,
    via: Via,
    sink: Sink,
    http: HttpRequests,
}

/// HTTP publishes, one at a time or up to `concurrency` in flight (a publisher may well send
/// concurrently; events of one org may then be accepted out of order, which the clients count).
struct HttpRequests {
    concurrency: usize,
    permits: Arc<tokio::sync::Semaphore>,
    in_flight: tokio::task::JoinSet<(u64, Result<u16, String>)>,
}

impl HttpRequests {
    fn new(concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            concurrency,
            permits: Arc::new(tokio::sync::Semaphore::new(concurrency)),
            in_flight: tokio::task::JoinSet::new(),
        }
    }

    /// Sends `request` for `seq`; `accepted` is the success status (0: any 2xx).
    async fn send(
        &mut self,
        seq: u64,
        request: reqwest::RequestBuilder,
        accepted: u16,
        outcome: &mut PublishOutcome,
    ) {
        let send = async move {
            match request.send().await {
                Ok(response) => (seq, Ok(response.status().as_u16())),
                Err(error) => (seq, Err(format!("http: {error}"))),
            }
        };
        if self.concurrency == 1 {
            let (seq, result) = send.await;
            Self::record(seq, result, accepted, outcome);
            return;
        }
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        self.in_flight.spawn(async move {
            let result = send.await;
            drop(permit);
            result
        });
        while let Some(done) = self.in_flight.try_join_next() {
            if let Ok((seq, result)) = done {
                Self::record(seq, result, accepted, outcome);
            }
        }
    }

    /// Waits for every request in flight.
    async fn finish(&mut self, accepted: u16, outcome: &mut PublishOutcome) {
        while let Some(done) = self.in_flight.join_next().await {
            if let Ok((seq, result)) = done {
                Self::record(seq, result, accepted, outcome);
            }
        }
    }

    fn record(seq: u64, result: Result<u16, String>, accepted: u16, outcome: &mut PublishOutcome) {
        match result {
            Ok(status) if status == accepted || (accepted == 0 && (200..300).contains(&status)) => {
                outcome.published.insert(seq);
            }
            Ok(status) => *outcome.failures.entry(format!("http_{status}")).or_default() += 1,
            Err(reason) => *outcome.failures.entry(reason).or_default() += 1,
        }
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")
}

impl Publisher {
    /// Connects to Redis (`publish`, `function`) or prepares the HTTP client.
    pub async fn connect(
        plan: Arc<Plan>,
        via: Via,
        redis_url: &str,
        redis_cluster: bool,
        base_url: &str,
        service_tokens: Vec<String>,
        http_concurrency: usize,
    ) -> anyhow::Result<Self> {
        let sink = match via {
            Via::Publish | Via::Function if redis_cluster => {
                let seeds: Vec<&str> = redis_url
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                let connection = redis::cluster::ClusterClient::builder(seeds)
                    .connection_timeout(Duration::from_secs(5))
                    .response_timeout(Duration::from_secs(10))
                    .build()
                    .with_context(|| format!("cluster seeds {redis_url}"))?
                    .get_async_connection()
                    .await
                    .with_context(|| format!("connecting to the cluster at {redis_url}"))?;
                Sink::Cluster(connection)
            }
            Via::Publish | Via::Function => {
                let client =
                    redis::Client::open(redis_url).with_context(|| format!("redis url {redis_url}"))?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_response_timeout(Some(Duration::from_secs(10)));
                let connection = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .with_context(|| format!("connecting to {redis_url}"))?;
                Sink::Redis(connection)
            }
            Via::Http => Sink::Http {
                client: http_client()?,
                url: format!("{}/api/publish", base_url.trim_end_matches('/')),
                tokens: service_tokens,
            },
            Via::Nchan => Sink::Nchan {
                client: http_client()?,
                url: base_url.trim_end_matches('/').to_string(),
            },
        };
        Ok(Self {
            plan,
            via,
            sink,
            http: HttpRequests::new(http_concurrency),
        })
    }

    /// Publishes events `0..count` at `rate` per second.
    pub async fn run(mut self, count: u64, rate: f64) -> PublishOutcome {
        let mut outcome = PublishOutcome::default();
        let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let start = Instant::now();
        let mut next: u64 = 0;
        let mut text = String::with_capacity(512);
        while next < count {
            let due_at = start + period.mul_f64(next as f64);
            let now = Instant::now();
            if due_at > now {
                tokio::time::sleep_until(due_at.into()).await;
                continue;
            }
            outcome.max_behind = outcome.max_behind.max(now - due_at);
            let due_count = ((now - start).as_secs_f64() * rate) as u64 + 1;
            let batch_end = due_count.clamp(next + 1, count).min(next + MAX_CATCH_UP);
            self.send(next..batch_end, &mut text, &mut outcome).await;
            next = batch_end;
        }
        let accepted = if self.via == Via::Http { 202 } else { 0 };
        self.http.finish(accepted, &mut outcome).await;
        outcome.elapsed = start.elapsed();
        outcome.cpu_ms = crate::procstat::sample("thread-self").map_or(0, |own| own.cpu_ms);
        outcome
    }

    async fn send(&mut self, seqs: std::ops::Range<u64>, text: &mut String, outcome: &mut PublishOutcome) {
        outcome.attempted += seqs.end - seqs.start;
        let plan = &self.plan;
        let fail = |outcome: &mut PublishOutcome, reason: String, n: u64| {
            *outcome.failures.entry(reason).or_default() += n;
        };
        match &mut self.sink {
            Sink::Redis(connection) => {
                let mut pipe = redis::pipe();
                for seq in seqs.clone() {
                    text.clear();
                    plan.write_envelope(text, seq, now_nanos());
                    let org = &plan.orgs[plan.events[seq as usize].org as usize];
                    match self.via {
                        Via::Function => {
                            pipe.cmd("FCALL")
                                .arg("event_gateway_publish")
                                .arg(0)
                                .arg(org)
                                .arg(text.as_str());
                        }
                        _ => {
                            pipe.cmd("PUBLISH")
                                .arg(format!("events:org:{org}"))
                                .arg(text.as_str());
                        }
                    }
                }
                match pipe.query_async::<Vec<redis::Value>>(connection).await {
                    Ok(replies) => {
                        for (seq, reply) in seqs.zip(replies) {
                            match reply {
                                redis::Value::Int(0) => {
                                    outcome.zero_receivers += 1;
                                    outcome.published.insert(seq);
                                }
                                redis::Value::ServerError(error) => {
                                    fail(outcome, format!("redis: {error:?}"), 1);
                                }
                                _ => {
                                    outcome.published.insert(seq);
                                }
                            }
                        }
                    }
                    Err(error) => fail(outcome, format!("redis: {error}"), seqs.end - seqs.start),
                }
            }
            Sink::Cluster(connection) => {
                let commands: Vec<(u64, redis::Cmd)> = seqs
                    .clone()
                    .map(|seq| {
                        text.clear();
                        plan.write_envelope(text, seq, now_nanos());
                        let org = &plan.orgs[plan.events[seq as usize].org as usize];
                        let mut command = match self.via {
                            Via::Function => {
                                let mut command = redis::cmd("FCALL");
                                command.arg("event_gateway_publish").arg(1).arg(org);
                                command
                            }
                            _ => {
                                let mut command = redis::cmd("SPUBLISH");
                                command.arg(format!("events:org:{{{org}}}"));
                                command
                            }
                        };
                        command.arg(text.as_str());
                        (seq, command)
                    })
                    .collect();
                let sends = commands.into_iter().map(|(seq, command)| {
                    let mut connection = connection.clone();
                    async move { (seq, command.query_async::<redis::Value>(&mut connection).await) }
                });
                for (seq, reply) in futures_util::future::join_all(sends).await {
                    match reply {
                        Ok(redis::Value::Int(0)) => {
                            outcome.zero_receivers += 1;
                            outcome.published.insert(seq);
                        }
                        Ok(_) => {
                            outcome.published.insert(seq);
                        }
                        Err(error) => fail(outcome, format!("redis: {error}"), 1),
                    }
                }
            }
            Sink::Http { client, url, tokens } => {
                for seq in seqs {
                    text.clear();
                    plan.write_envelope(text, seq, now_nanos());
                    let org = plan.events[seq as usize].org as usize;
                    let request = client
                        .post(url.as_str())
                        .bearer_auth(&tokens[org])
                        .header("content-type", "application/json")
                        .body(text.clone());
                    self.http.send(seq, request, 202, outcome).await;
                }
            }
            Sink::Nchan { client, url } => {
                for seq in seqs {
                    text.clear();
                    plan.write_data(text, seq, now_nanos());
                    let org = &plan.orgs[plan.events[seq as usize].org as usize];
                    let request = client
                        .post(format!("{url}/pub/{org}"))
                        .header("content-type", "application/json")
                        .body(text.clone());
                    // Nchan answers 201 (subscribers waiting) or 202 (none).
                    self.http.send(seq, request, 0, outcome).await;
                }
            }
        }
    }
}
