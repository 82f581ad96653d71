//! Every metric, defined once, and its Prometheus text rendering. Counters are plain atomics so
//! that the hot path pays one relaxed add; label sets are small and fixed. What is counted per
//! socket write (deliveries, fan-out latency) lives in one `DeliveryStats` per HTTP worker, so
//! no cache line moves between cores on a write; `render` sums them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::auth::AuthError;
use crate::event::EnvelopeError;

pub const CONNECTIONS: &str = "gateway_connections";
pub const CONNECTIONS_OPENED: &str = "gateway_connections_opened_total";
pub const TRANSPORT_CONNECTIONS: &str = "gateway_transport_connections";
pub const EVENTS_RECEIVED: &str = "gateway_events_received_total";
pub const EVENTS_DELIVERED: &str = "gateway_events_delivered_total";
pub const EVENTS_DROPPED: &str = "gateway_events_dropped_total";
pub const EVENTS_PUBLISHED: &str = "gateway_events_published_total";
pub const SLOW_CONSUMER_DISCONNECTS: &str = "gateway_slow_consumer_disconnects_total";
pub const AUTH_FAILURES: &str = "gateway_auth_failures_total";
pub const REDIS_RECONNECTS: &str = "gateway_redis_reconnects_total";
pub const FANOUT_SECONDS: &str = "gateway_fanout_seconds";

/// Where a received event came from: a plain PUBLISH, or the durable publish path.
#[derive(Clone, Copy)]
pub enum Source {
    Live,
    Durable,
}

/// Upper bounds of the fan-out latency histogram, in seconds.
const FANOUT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

pub struct Metrics {
    connections: Mutex<BTreeMap<Box<str>, i64>>,
    connections_opened: AtomicU64,
    /// Open streams by transport: SSE, WebSocket.
    sse_connections: AtomicI64,
    ws_connections: AtomicI64,
    received_live: AtomicU64,
    received_durable: AtomicU64,
    /// Every worker's delivery counters, in creation order; never removed, so sums only grow.
    deliveries: Mutex<Vec<Arc<DeliveryStats>>>,
    published: AtomicU64,
    dropped: Mutex<BTreeMap<&'static str, u64>>,
    slow_consumer_disconnects: AtomicU64,
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    redis_reconnects: AtomicU64,
}

pub static METRICS: Metrics = Metrics {
    connections: Mutex::new(BTreeMap::new()),
    connections_opened: AtomicU64::new(0),
    sse_connections: AtomicI64::new(0),
    ws_connections: AtomicI64::new(0),
    received_live: AtomicU64::new(0),
    received_durable: AtomicU64::new(0),
    deliveries: Mutex::new(Vec::new()),
    published: AtomicU64::new(0),
    dropped: Mutex::new(BTreeMap::new()),
    slow_consumer_disconnects: AtomicU64::new(0),
    auth_failures: Mutex::new(BTreeMap::new()),
    redis_reconnects: AtomicU64::new(0),
};

/// What one HTTP worker counts per socket write. Only that worker's thread writes it; aligned
/// to its own cache lines so that two workers' counters never share one.
#[repr(align(128))]
pub struct DeliveryStats {
    delivered: AtomicU64,
    fanout_buckets: [AtomicU64; FANOUT_BUCKETS.len()],
    fanout_count: AtomicU64,
    fanout_sum_nanos: AtomicU64,
}

impl DeliveryStats {
    /// Counts `events` written to a socket in one write whose oldest event this replica received
    /// `elapsed` ago. `gateway_fanout_seconds` observes every event (each at the oldest's
    /// latency, an upper bound for the others of the write), so its `_count` equals
    /// `gateway_events_delivered_total`; one observation per write keeps it off the per-event
    /// path.
    pub fn observe_delivery(&self, events: u64, elapsed: Duration) {
        if events == 0 {
            return;
        }
        self.delivered.fetch_add(events, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = FANOUT_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.fanout_buckets[bucket].fetch_add(events, Ordering::Relaxed);
        }
        self.fanout_count.fetch_add(events, Ordering::Relaxed);
        let nanos = elapsed.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.fanout_sum_nanos
            .fetch_add(nanos.saturating_mul(events), Ordering::Relaxed);
    }
}

impl Metrics {
    /// Exports every labelled series at zero, so dashboards and alerts see them from start-up.
    pub fn init(&self, roles: impl IntoIterator<Item = String>) {
        let mut connections = self.connections.lock();
        for role in roles {
            connections.entry(role.into_boxed_str()).or_insert(0);
        }
        let mut dropped = self.dropped.lock();
        for reason in EnvelopeError::all_reasons() {
            dropped.entry(reason).or_insert(0);
        }
        let mut failures = self.auth_failures.lock();
        for reason in AuthError::all_codes() {
            failures.entry(reason).or_insert(0);
        }
    }

    /// A stream of `role` opened over `transport` (`sse` or `ws`).
    pub fn connection_opened(&self, role: &str, transport: &str) {
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
        self.add_connection(role, 1);
        self.transport(transport).fetch_add(1, Ordering::Relaxed);
    }

    /// A stream's refreshed token changed its role.
    pub fn connection_changed_role(&self, from: &str, to: &str) {
        self.add_connection(from, -1);
        self.add_connection(to, 1);
    }

    fn transport(&self, transport: &str) -> &AtomicI64 {
        if transport == "ws" {
            &self.ws_connections
        } else {
            &self.sse_connections
        }
    }

    fn add_connection(&self, role: &str, delta: i64) {
        let mut connections = self.connections.lock();
        match connections.get_mut(role) {
            Some(count) => *count += delta,
            None => {
                connections.insert(role.into(), delta);
            }
        }
    }

    pub fn connection_closed(&self, role: &str, transport: &str) {
        self.add_connection(role, -1);
        self.transport(transport).fetch_sub(1, Ordering::Relaxed);
    }

    pub fn event_received(&self, source: Source) {
        match source {
            Source::Live => &self.received_live,
            Source::Durable => &self.received_durable,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn events_published(&self, count: usize) {
        self.published.fetch_add(count as u64, Ordering::Relaxed);
    }

    /// New delivery counters for one worker, included in every later `render`.
    pub fn delivery_stats(&self) -> Arc<DeliveryStats> {
        let stats = Arc::new(DeliveryStats {
            delivered: AtomicU64::new(0),
            fanout_buckets: [const { AtomicU64::new(0) }; FANOUT_BUCKETS.len()],
            fanout_count: AtomicU64::new(0),
            fanout_sum_nanos: AtomicU64::new(0),
        });
        self.deliveries.lock().push(stats.clone());
        stats
    }

    pub fn event_dropped(&self, reason: &'static str) {
        *self.dropped.lock().entry(reason).or_insert(0) += 1;
    }

    pub fn slow_consumer_disconnected(&self) {
        self.slow_consumer_disconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub fn auth_failed(&self, reason: &'static str) {
        *self.auth_failures.lock().entry(reason).or_insert(0) += 1;
    }

    pub fn redis_reconnected(&self) {
        self.redis_reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let deliveries = self.deliveries.lock().clone();
        let total = |pick: &dyn Fn(&DeliveryStats) -> &AtomicU64| -> u64 {
            deliveries.iter().map(|stats| load(pick(stats))).sum()
        };

        header(
            &mut out,
            CONNECTIONS,
            "gauge",
            "Open event streams on this replica, by role.",
        );
        for (role, count) in self.connections.lock().iter() {
            let _ = writeln!(out, "{CONNECTIONS}{{role=\"{}\"}} {count}", escape(role));
        }
        counter(
            &mut out,
            CONNECTIONS_OPENED,
            "Event streams opened.",
            load(&self.connections_opened),
        );
        header(
            &mut out,
            TRANSPORT_CONNECTIONS,
            "gauge",
            "Open event streams on this replica, by transport (Server-Sent Events or WebSocket).",
        );
        for (transport, count) in [("sse", &self.sse_connections), ("ws", &self.ws_connections)] {
            let _ = writeln!(
                out,
                "{TRANSPORT_CONNECTIONS}{{transport=\"{transport}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }

        header(
            &mut out,
            EVENTS_RECEIVED,
            "counter",
            "Events received from the broker, by source.",
        );
        let _ = writeln!(
            out,
            "{EVENTS_RECEIVED}{{source=\"live\"}} {}",
            load(&self.received_live)
        );
        let _ = writeln!(
            out,
            "{EVENTS_RECEIVED}{{source=\"durable\"}} {}",
            load(&self.received_durable)
        );
        counter(
            &mut out,
            EVENTS_PUBLISHED,
            "Events accepted by POST /api/publish.",
            load(&self.published),
        );
        counter(
            &mut out,
            EVENTS_DELIVERED,
            "Events written to client streams.",
            total(&|stats| &stats.delivered),
        );

        header(
            &mut out,
            EVENTS_DROPPED,
            "counter",
            "Malformed events dropped, by reason.",
        );
        for (reason, count) in self.dropped.lock().iter() {
            let _ = writeln!(out, "{EVENTS_DROPPED}{{reason=\"{reason}\"}} {count}");
        }
        counter(
            &mut out,
            SLOW_CONSUMER_DISCONNECTS,
            "Streams closed because their queue was full.",
            load(&self.slow_consumer_disconnects),
        );
        header(&mut out, AUTH_FAILURES, "counter", "Rejected tokens, by reason.");
        for (reason, count) in self.auth_failures.lock().iter() {
            let _ = writeln!(out, "{AUTH_FAILURES}{{reason=\"{reason}\"}} {count}");
        }
        counter(
            &mut out,
            REDIS_RECONNECTS,
            "Redis connections lost (each is followed by a reconnect with backoff).",
            load(&self.redis_reconnects),
        );

        header(
            &mut out,
            FANOUT_SECONDS,
            "histogram",
            "Time from broker receipt to the socket write.",
        );
        let mut cumulative = 0;
        for (index, bound) in FANOUT_BUCKETS.iter().enumerate() {
            cumulative += total(&|stats| &stats.fanout_buckets[index]);
            let _ = writeln!(out, "{FANOUT_SECONDS}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = total(&|stats| &stats.fanout_count);
        let _ = writeln!(out, "{FANOUT_SECONDS}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{FANOUT_SECONDS}_sum {}",
            total(&|stats| &stats.fanout_sum_nanos) as f64 / 1e9
        );
        let _ = writeln!(out, "{FANOUT_SECONDS}_count {count}");
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered_total() -> u64 {
        METRICS
            .render()
            .lines()
            .find_map(|line| line.strip_prefix("gateway_events_delivered_total "))
            .and_then(|value| value.parse().ok())
            .expect("a gateway_events_delivered_total sample")
    }

    #[test]
    fn deliveries_of_every_worker_are_summed() {
        let (first, second) = (METRICS.delivery_stats(), METRICS.delivery_stats());
        let before = delivered_total();
        first.observe_delivery(2, Duration::from_millis(1));
        second.observe_delivery(3, Duration::from_millis(1));
        assert_eq!(delivered_total() - before, 5);
    }

    #[test]
    fn the_fanout_histogram_observes_every_delivered_event() {
        let stats = METRICS.delivery_stats();
        stats.observe_delivery(7, Duration::from_millis(2));
        stats.observe_delivery(1, Duration::from_millis(3));
        stats.observe_delivery(0, Duration::from_millis(4));
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 8);
        assert_eq!(stats.fanout_count.load(Ordering::Relaxed), 8);
        assert_eq!(stats.fanout_sum_nanos.load(Ordering::Relaxed), 17_000_000);
    }

    #[test]
    fn every_contract_metric_is_rendered_from_start_up() {
        METRICS.init(["ops".to_string()]);
        let text = METRICS.render();
        for name in [
            "gateway_connections{role=\"ops\"}",
            "gateway_connections_opened_total ",
            "gateway_transport_connections{transport=\"ws\"}",
            "gateway_events_received_total{source=\"live\"}",
            "gateway_events_delivered_total ",
            "gateway_events_dropped_total{reason=\"invalid_json\"}",
            "gateway_slow_consumer_disconnects_total ",
            "gateway_auth_failures_total{reason=\"token_expired\"}",
            "gateway_redis_reconnects_total ",
            "gateway_fanout_seconds_bucket{le=\"+Inf\"}",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
