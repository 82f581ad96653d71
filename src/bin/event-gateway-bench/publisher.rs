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
}

pub struct Publisher {
    plan: Arc<Plan>,
    via: Via,
    sink: Sink,
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
        base_url: &str,
        service_tokens: Vec<String>,
    ) -> anyhow::Result<Self> {
        let sink = match via {
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
        Ok(Self { plan, via, sink })
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
        outcome.elapsed = start.elapsed();
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
            Sink::Http { client, url, tokens } => {
                for seq in seqs {
                    text.clear();
                    plan.write_envelope(text, seq, now_nanos());
                    let org = plan.events[seq as usize].org as usize;
                    let sent = client
                        .post(url.as_str())
                        .bearer_auth(&tokens[org])
                        .header("content-type", "application/json")
                        .body(text.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status().as_u16() == 202 => {
                            outcome.published.insert(seq);
                        }
                        Ok(response) => fail(outcome, format!("http_{}", response.status().as_u16()), 1),
                        Err(error) => fail(outcome, format!("http: {error}"), 1),
                    }
                }
            }
            Sink::Nchan { client, url } => {
                for seq in seqs {
                    text.clear();
                    plan.write_data(text, seq, now_nanos());
                    let org = &plan.orgs[plan.events[seq as usize].org as usize];
                    let sent = client
                        .post(format!("{url}/pub/{org}"))
                        .header("content-type", "application/json")
                        .body(text.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status().is_success() => {
                            outcome.published.insert(seq);
                        }
                        Ok(response) => fail(outcome, format!("http_{}", response.status().as_u16()), 1),
                        Err(error) => fail(outcome, format!("http: {error}"), 1),
                    }
                }
            }
        }
    }
}
