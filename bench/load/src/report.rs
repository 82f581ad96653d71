//! The run's figures: one human table and one `BENCH_JSON {...}` line with the same numbers.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::tally::Verdict;
use crate::{RunResult, Samples};

/// How the run was set up, echoed in the report.
pub struct Context {
    pub label: String,
    pub url: String,
    pub target: String,
    /// `sse` or `ws`.
    pub transport: String,
    pub ws_deflate_offered: bool,
    pub via: String,
    pub roles: String,
    pub mode: String,
    pub threads: usize,
    pub connections: usize,
    pub orgs: usize,
    pub ramp: f64,
    pub rate: f64,
    pub duration: f64,
    pub events: u64,
    pub pad: usize,
    /// SSE: the `Accept-Encoding` sent.
    pub accept_encoding: String,
    /// `pad` or `realistic`.
    pub shape: String,
    /// Mean bytes of the live events' data.
    pub event_bytes: f64,
    /// Mean bytes of the history events' data (replay storm).
    pub history_event_bytes: Option<f64>,
    pub server_pids: Vec<u32>,
    pub load_before: f64,
}

/// Percentiles of a histogram of microseconds, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    count: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"count": self.count, "p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99,
               "p999_ms": self.p999, "max_ms": self.max})
    }

    fn human(&self) -> String {
        format!(
            "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={})",
            self.p50, self.p90, self.p99, self.p999, self.max, self.count
        )
    }
}

fn reasons_json(reasons: &BTreeMap<String, u64>) -> serde_json::Value {
    serde_json::Value::Object(reasons.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

fn reasons_human(reasons: &BTreeMap<String, u64>) -> String {
    if reasons.is_empty() {
        return String::new();
    }
    let list: Vec<String> = reasons.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("  ({})", list.join(", "))
}

/// Memory and CPU of one process (or group) across the run's phases.
struct ProcFigures {
    rss_before_kb: Option<u64>,
    rss_connected_kb: Option<u64>,
    rss_after_kb: Option<u64>,
    hwm_kb: Option<u64>,
    connect_cpu_ms: Option<u64>,
    publish_cpu_ms: Option<u64>,
}

impl ProcFigures {
    fn of(samples: &Samples) -> Self {
        let cpu = |a: Option<crate::procstat::ProcSample>, b: Option<crate::procstat::ProcSample>| {
            Some(b?.cpu_ms.saturating_sub(a?.cpu_ms))
        };
        Self {
            rss_before_kb: samples.before.map(|s| s.rss_kb),
            rss_connected_kb: samples.connected.map(|s| s.rss_kb),
            rss_after_kb: samples.after.map(|s| s.rss_kb),
            hwm_kb: samples.after.map(|s| s.hwm_kb),
            connect_cpu_ms: cpu(samples.before, samples.connected),
            publish_cpu_ms: cpu(samples.connected, samples.after),
        }
    }
}

pub fn print(context: &Context, result: &RunResult) {
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut drops: BTreeMap<String, u64> = BTreeMap::new();
    let mut verdict = Verdict::default();
    let mut deliveries = 0u64;
    let mut keepalives = 0u64;
    let mut other_events = 0u64;
    let mut unparsed = 0u64;
    let mut with_id = 0u64;
    let mut reads = 0u64;
    let mut wire_bytes = 0u64;
    let mut inflated_bytes = 0u64;
    let mut gzip_streams = 0u64;
    let mut gzip_complete = 0u64;
    let mut ws = WsTotals::default();
    let mut established = 0u64;
    let published = result.publish.as_ref().map(|p| &p.published);
    for record in &result.records {
        if let Some(reason) = &record.failure {
            *failures.entry(reason.clone()).or_default() += 1;
            continue;
        }
        established += 1;
        if let Some(reason) = &record.dropped {
            *drops.entry(reason.clone()).or_default() += 1;
        }
        let expected = match published {
            Some(published) => result.expectations[record.index].intersection(published),
            None => Default::default(),
        };
        verdict.add(&Verdict::of(&expected, &record.tally));
        deliveries += record.tally.deliveries;
        keepalives += record.keepalives;
        other_events += record.other_events;
        unparsed += record.unparsed;
        with_id += record.with_id;
        reads += record.reads;
        wire_bytes += record.wire_bytes;
        inflated_bytes += record.inflated_bytes;
        gzip_streams += record.gzip as u64;
        gzip_complete += record.gzip_complete as u64;
        ws.add(&record.ws);
    }
    for record in result.records.iter().filter(|r| r.failure.is_some()) {
        // A stream refused after its upgrade (a bad extension answer) still says what it saw.
        ws.add_close(&record.ws);
    }
    let connect = Percentiles::of(
        &result
            .shared
            .connect_time
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| crate::client::latency_histogram()),
    );
    let latency = Percentiles::of(&result.shared.merged_latency());
    let server = ProcFigures::of(&result.samples[0]);
    let bench = ProcFigures::of(&result.samples[1]);
    let redis = ProcFigures::of(&result.samples[2]);

    let rss_per_conn_kb = match (server.rss_before_kb, server.rss_connected_kb) {
        (Some(before), Some(connected)) if established > 0 => {
            Some((connected as f64 - before as f64) / established as f64)
        }
        _ => None,
    };
    let connect_cpu_us_per_conn = server
        .connect_cpu_ms
        .filter(|_| established > 0)
        .map(|ms| ms as f64 * 1000.0 / established as f64);
    let per_thousand = |cpu_ms: Option<u64>| {
        cpu_ms
            .filter(|_| deliveries > 0)
            .map(|ms| ms as f64 * 1000.0 / deliveries as f64)
    };
    let publish = result.publish.as_ref();
    let publish_secs = publish.map(|p| p.elapsed.as_secs_f64()).unwrap_or(0.0);
    let window_secs = publish_secs + result.drain_elapsed.as_secs_f64();
    let deliveries_per_sec = if publish_secs > 0.0 {
        deliveries as f64 / publish_secs
    } else {
        0.0
    };
    let published_count = publish.map(|p| p.published.len()).unwrap_or(0);
    let achieved_rate = if publish_secs > 0.0 {
        published_count as f64 / publish_secs
    } else {
        0.0
    };
    let core_share = |cpu_ms: Option<u64>| {
        cpu_ms
            .filter(|_| window_secs > 0.0)
            .map(|ms| ms as f64 / 10.0 / window_secs)
    };
    let publish_failures = publish.map(|p| p.failures.clone()).unwrap_or_default();
    let publisher_cpu_ms = publish.map_or(0, |p| p.cpu_ms);
    let client_cpu_ms = bench.publish_cpu_ms.map(|ms| ms.saturating_sub(publisher_cpu_ms));
    let deliveries_per_read = (reads > 0).then(|| deliveries as f64 / reads as f64);
    let wire_bytes_per_delivery = (deliveries > 0).then(|| wire_bytes as f64 / deliveries as f64);
    let is_ws = context.transport == "ws";
    // WebSocket: the messages once inflated; SSE: the event stream once dechunked and inflated.
    let inflated_total = if is_ws { ws.message_bytes } else { inflated_bytes };
    let inflated_bytes_per_delivery = (deliveries > 0).then(|| inflated_total as f64 / deliveries as f64);
    let wire_ratio = (inflated_total > 0).then(|| wire_bytes as f64 / inflated_total as f64);

    // Human table.
    let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_string(), |v| format!("{v:.2}{unit}"));
    let mb = |kb: Option<u64>| kb.map_or("n/a".to_string(), |kb| format!("{:.1} MB", kb as f64 / 1024.0));
    println!(
        "== event-gateway-bench {} ==  target {} {} (server pids {:?}), load before {:.2}",
        context.label, context.target, context.url, context.server_pids, context.load_before
    );
    println!(
        "scenario      {} {} streams over {} orgs, roles {}, ramp {}/s; {} ev/s for {} s via {} ({} events, {}); client {} x{}",
        context.connections,
        context.transport,
        context.orgs,
        context.roles,
        context.ramp,
        context.rate,
        context.duration,
        context.via,
        context.events,
        if context.shape == "pad" {
            format!("pad {} B, data {:.0} B", context.pad, context.event_bytes)
        } else {
            format!("{} data of {:.0} B", context.shape, context.event_bytes)
        },
        context.mode,
        context.threads
    );
    println!(
        "connections   {} ok, {} failed{}; {} dropped{}; handshakes done in {:.2} s",
        established,
        failures.values().sum::<u64>(),
        reasons_human(&failures),
        drops.values().sum::<u64>(),
        reasons_human(&drops),
        result.ramp_elapsed.as_secs_f64()
    );
    println!("connect time  {}", connect.human());
    if is_ws {
        println!(
            "transport     ws, permessage-deflate {}{}",
            if context.ws_deflate_offered {
                "offered"
            } else {
                "not offered"
            },
            if context.ws_deflate_offered {
                format!(", negotiated on {} of {established} streams", ws.deflate_streams)
            } else {
                String::new()
            }
        );
    }
    if !is_ws {
        println!(
            "encoding      Accept-Encoding: {}; Content-Encoding gzip on {gzip_streams} of {established} streams \
             ({gzip_complete} ended with a checked gzip trailer)",
            context.accept_encoding
        );
    }
    if let Some(publish) = publish {
        println!(
            "publish       {} of {} accepted ({:.1} ev/s achieved), {} failed{}, worst lag behind schedule {:.1} ms, {} with 0 receivers",
            published_count,
            publish.attempted,
            achieved_rate,
            publish_failures.values().sum::<u64>(),
            reasons_human(&publish_failures),
            publish.max_behind.as_secs_f64() * 1000.0,
            publish.zero_receivers
        );
        println!(
            "deliveries    {} expected, {} received, {} lost, {} unexpected, {} duplicates, {} out of order, {} unknown; {:.0} deliveries/s",
            verdict.expected,
            verdict.received,
            verdict.lost,
            verdict.unexpected,
            verdict.duplicates,
            verdict.out_of_order,
            verdict.unknown,
            deliveries_per_sec
        );
        println!(
            "latency       {}; {} deliveries per read",
            latency.human(),
            opt(deliveries_per_read, "")
        );
    }
    println!(
        "wire          {wire_bytes} B received after the response heads -> {} B per delivery; \
         {inflated_total} B {} -> {} B per delivery (wire/inflated {})",
        opt(wire_bytes_per_delivery, ""),
        if is_ws {
            "of messages once inflated"
        } else {
            "of event stream, dechunked and inflated"
        },
        opt(inflated_bytes_per_delivery, ""),
        opt(wire_ratio, "")
    );
    if is_ws {
        println!("websocket     {}", ws.human());
    }
    println!(
        "server RSS    before {}, connected {}, after {}, peak {} -> {} KB per connection",
        mb(server.rss_before_kb),
        mb(server.rss_connected_kb),
        mb(server.rss_after_kb),
        mb(server.hwm_kb),
        opt(rss_per_conn_kb, "")
    );
    println!(
        "server CPU    connecting {} ms ({} us per connection); publishing+drain {} ms ({} of a core) -> {} ms per 1,000 deliveries",
        server.connect_cpu_ms.map_or("n/a".into(), |v| v.to_string()),
        opt(connect_cpu_us_per_conn, ""),
        server.publish_cpu_ms.map_or("n/a".into(), |v| v.to_string()),
        opt(core_share(server.publish_cpu_ms), "%"),
        opt(per_thousand(server.publish_cpu_ms), "")
    );
    println!(
        "bench CPU     connecting {} ms; publishing+drain {} ms ({} of a core), of which publisher {} ms; \
         clients {} ms per 1,000 deliveries; RSS {}",
        bench.connect_cpu_ms.map_or("n/a".into(), |v| v.to_string()),
        bench.publish_cpu_ms.map_or("n/a".into(), |v| v.to_string()),
        opt(core_share(bench.publish_cpu_ms), "%"),
        publisher_cpu_ms,
        opt(per_thousand(client_cpu_ms), ""),
        mb(bench.rss_after_kb)
    );
    if redis.rss_after_kb.is_some() {
        println!(
            "redis CPU     connecting {} ms; publishing+drain {} ms -> {} ms per 1,000 deliveries",
            redis.connect_cpu_ms.map_or("n/a".into(), |v| v.to_string()),
            redis.publish_cpu_ms.map_or("n/a".into(), |v| v.to_string()),
            opt(per_thousand(redis.publish_cpu_ms), "")
        );
    }
    if result.redis_each_cpu_ms.len() > 1 {
        let each: Vec<String> = result
            .redis_each_cpu_ms
            .iter()
            .map(|(pid, ms)| format!("{pid}: {}", ms.map_or("n/a".into(), |ms| format!("{ms} ms"))))
            .collect();
        println!(
            "redis each    publishing+drain CPU per process: {}",
            each.join(", ")
        );
    }
    let storm = result.storm.as_ref().map(StormFigures::of);
    if let Some(storm) = &storm {
        println!("{}", storm.human());
    }
    println!(
        "other         {keepalives} keepalives, {with_id} events with id, {other_events} other events, {unparsed} unparsed bench events"
    );

    let line = json!({
        "label": context.label,
        "target": context.target,
        "transport": context.transport,
        "ws_deflate_offered": context.ws_deflate_offered,
        "ws_deflate_negotiated": is_ws.then_some(ws.deflate_streams),
        "url": context.url,
        "via": context.via,
        "roles": context.roles,
        "client_mode": context.mode,
        "client_threads": context.threads,
        "connections": context.connections,
        "orgs": context.orgs,
        "ramp_per_sec": context.ramp,
        "rate": context.rate,
        "duration_secs": context.duration,
        "events_planned": context.events,
        "pad_bytes": context.pad,
        "shape": context.shape,
        "event_bytes": context.event_bytes,
        "history_event_bytes": context.history_event_bytes,
        "accept_encoding": (!is_ws).then_some(&context.accept_encoding),
        "gzip_streams": (!is_ws).then_some(gzip_streams),
        "gzip_complete": (!is_ws).then_some(gzip_complete),
        "load_before": context.load_before,
        "established": established,
        "failed": failures.values().sum::<u64>(),
        "failure_reasons": reasons_json(&failures),
        "dropped": drops.values().sum::<u64>(),
        "drop_reasons": reasons_json(&drops),
        "handshakes_secs": result.ramp_elapsed.as_secs_f64(),
        "connect": connect.json(),
        "published": published_count,
        "publish_attempted": publish.map(|p| p.attempted).unwrap_or(0),
        "publish_failures": reasons_json(&publish_failures),
        "publish_rate_achieved": achieved_rate,
        "publish_max_behind_ms": publish.map(|p| p.max_behind.as_secs_f64() * 1000.0).unwrap_or(0.0),
        "publish_zero_receivers": publish.map(|p| p.zero_receivers).unwrap_or(0),
        "expected": verdict.expected,
        "received": verdict.received,
        "lost": verdict.lost,
        "unexpected": verdict.unexpected,
        "duplicates": verdict.duplicates,
        "out_of_order": verdict.out_of_order,
        "unknown": verdict.unknown,
        "deliveries": deliveries,
        "deliveries_per_sec": deliveries_per_sec,
        "latency": latency.json(),
        "reads": reads,
        "deliveries_per_read": deliveries_per_read,
        "wire_bytes": wire_bytes,
        "wire_bytes_per_delivery": wire_bytes_per_delivery,
        "inflated_bytes": inflated_total,
        "inflated_bytes_per_delivery": inflated_bytes_per_delivery,
        "wire_to_inflated": wire_ratio,
        "ws": is_ws.then(|| ws.json()),
        "server_rss_before_kb": server.rss_before_kb,
        "server_rss_connected_kb": server.rss_connected_kb,
        "server_rss_after_kb": server.rss_after_kb,
        "server_rss_peak_kb": server.hwm_kb,
        "server_rss_per_conn_kb": rss_per_conn_kb,
        "server_connect_cpu_ms": server.connect_cpu_ms,
        "server_connect_cpu_us_per_conn": connect_cpu_us_per_conn,
        "server_publish_cpu_ms": server.publish_cpu_ms,
        "server_cpu_ms_per_1k_deliveries": per_thousand(server.publish_cpu_ms),
        "server_core_share_pct": core_share(server.publish_cpu_ms),
        "bench_publish_cpu_ms": bench.publish_cpu_ms,
        "bench_cpu_ms_per_1k_deliveries": per_thousand(bench.publish_cpu_ms),
        "bench_publisher_cpu_ms": publisher_cpu_ms,
        "bench_client_cpu_ms_per_1k_deliveries": per_thousand(client_cpu_ms),
        "bench_rss_kb": bench.rss_after_kb,
        "redis_publish_cpu_ms": redis.publish_cpu_ms,
        "redis_cpu_ms_per_1k_deliveries": per_thousand(redis.publish_cpu_ms),
        "keepalives": keepalives,
        "events_with_id": with_id,
        "other_events": other_events,
        "unparsed": unparsed,
        "replay": storm.as_ref().map(StormFigures::json),
        "redis_each_publish_cpu_ms": result
            .redis_each_cpu_ms
            .iter()
            .map(|(pid, ms)| json!({"pid": pid, "cpu_ms": ms}))
            .collect::<Vec<_>>(),
    });
    println!("BENCH_JSON {line}");
}

/// What the WebSocket streams saw besides events, summed.
#[derive(Debug, Default)]
struct WsTotals {
    deflate_streams: u64,
    messages: u64,
    compressed: u64,
    fragmented: u64,
    binary: u64,
    message_bytes: u64,
    bad_messages: u64,
    server_pings: u64,
    pings_sent: u64,
    pongs: u64,
    errors: u64,
    /// Close frames from the server, by code (`none`: without one).
    closes: BTreeMap<String, u64>,
}

impl WsTotals {
    fn add(&mut self, counts: &crate::client::WsCounts) {
        self.deflate_streams += counts.deflate as u64;
        self.messages += counts.messages;
        self.compressed += counts.compressed;
        self.fragmented += counts.fragmented;
        self.binary += counts.binary;
        self.message_bytes += counts.message_bytes;
        self.bad_messages += counts.bad_messages;
        self.server_pings += counts.server_pings;
        self.pings_sent += counts.pings_sent;
        self.pongs += counts.pongs;
        self.errors += counts.errors;
        self.add_close(counts);
    }

    fn add_close(&mut self, counts: &crate::client::WsCounts) {
        if let Some(code) = counts.close {
            let code = code.map_or("none".to_string(), |code| code.to_string());
            *self.closes.entry(code).or_default() += 1;
        }
    }

    fn human(&self) -> String {
        format!(
            "{} messages ({} compressed, {} fragmented, {} binary, {} not a gateway message), {} B once inflated; \
             {} server pings answered; {} pings sent, {} pongs; {} error events; close frames{}",
            self.messages,
            self.compressed,
            self.fragmented,
            self.binary,
            self.bad_messages,
            self.message_bytes,
            self.server_pings,
            self.pings_sent,
            self.pongs,
            self.errors,
            if self.closes.is_empty() {
                " none".to_string()
            } else {
                let codes: Vec<String> = self.closes.iter().map(|(code, n)| format!(" {code} x{n}")).collect();
                codes.join(",")
            }
        )
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "messages": self.messages,
            "compressed": self.compressed,
            "fragmented": self.fragmented,
            "binary": self.binary,
            "bad_messages": self.bad_messages,
            "message_bytes": self.message_bytes,
            "server_pings": self.server_pings,
            "pings_sent": self.pings_sent,
            "pongs": self.pongs,
            "error_events": self.errors,
            "close_codes": reasons_json(&self.closes),
        })
    }
}

/// The replay storm's figures.
struct StormFigures {
    replayers: usize,
    history: u64,
    complete: usize,
    failures: BTreeMap<String, u64>,
    out_of_order: u64,
    truncated: u64,
    events_per_sec: f64,
    median_secs: f64,
    slowest_secs: f64,
    pages: usize,
    page_p50_us: Option<u64>,
    page_p99_us: Option<u64>,
    page_max_us: Option<u64>,
    longest: Option<(u64, String)>,
    gzip: usize,
    wire_bytes: u64,
    inflated_bytes: u64,
    /// Of each replay: the median.
    wire_bytes_median: u64,
}

impl StormFigures {
    fn of(storm: &crate::StormResult) -> Self {
        let mut failures = BTreeMap::new();
        for record in &storm.records {
            if let Some(reason) = &record.failure {
                *failures.entry(reason.clone()).or_default() += 1;
            }
        }
        let mut durations: Vec<f64> = storm.records.iter().map(|r| r.elapsed.as_secs_f64()).collect();
        durations.sort_by(f64::total_cmp);
        let received: u64 = storm.records.iter().map(|r| r.received).sum();
        let pages = &storm.slowlog.pages_us;
        let percentile = |fraction: f64| {
            (!pages.is_empty())
                .then(|| pages[((pages.len() as f64 * fraction) as usize).min(pages.len() - 1)])
        };
        Self {
            replayers: storm.records.len(),
            history: storm.history,
            complete: storm.records.iter().filter(|r| r.failure.is_none()).count(),
            failures,
            out_of_order: storm.records.iter().map(|r| r.out_of_order).sum(),
            truncated: storm.records.iter().map(|r| r.truncated).sum(),
            // Over the storm: from the replays' start to the last one's end.
            events_per_sec: received as f64 / durations.last().copied().unwrap_or(0.0).max(1e-9),
            median_secs: durations.get(durations.len() / 2).copied().unwrap_or(0.0),
            slowest_secs: durations.last().copied().unwrap_or(0.0),
            pages: pages.len(),
            page_p50_us: percentile(0.5),
            page_p99_us: percentile(0.99),
            page_max_us: pages.last().copied(),
            longest: storm.slowlog.longest.clone(),
            gzip: storm.records.iter().filter(|r| r.gzip).count(),
            wire_bytes: storm.records.iter().map(|r| r.wire_bytes).sum(),
            inflated_bytes: storm.records.iter().map(|r| r.inflated_bytes).sum(),
            wire_bytes_median: {
                let mut each: Vec<u64> = storm.records.iter().map(|r| r.wire_bytes).collect();
                each.sort_unstable();
                each.get(each.len() / 2).copied().unwrap_or(0)
            },
        }
    }

    fn human(&self) -> String {
        let us = |v: Option<u64>| v.map_or("n/a".to_string(), |v| format!("{v} us"));
        format!(
            "replay storm  {} of {} replays of {} events complete{}, {} out of order, {} truncated; \
             {:.0} events/s over all, median {:.2} s, slowest {:.2} s\n\
             replay wire   {} B received after the response heads ({} B per replay, median; {:.1} B per history event), \
             {} B of event stream once inflated (wire/inflated {:.3}); gzip on {} of {} replays\n\
             redis         {} page reads: p50 {}, p99 {}, max {}; longest command {}",
            self.complete,
            self.replayers,
            self.history,
            reasons_human(&self.failures),
            self.out_of_order,
            self.truncated,
            self.events_per_sec,
            self.median_secs,
            self.slowest_secs,
            self.wire_bytes,
            self.wire_bytes_median,
            self.wire_bytes as f64 / (self.history * self.replayers as u64).max(1) as f64,
            self.inflated_bytes,
            self.wire_bytes as f64 / self.inflated_bytes.max(1) as f64,
            self.gzip,
            self.replayers,
            self.pages,
            us(self.page_p50_us),
            us(self.page_p99_us),
            us(self.page_max_us),
            self.longest
                .as_ref()
                .map_or("n/a".to_string(), |(us, command)| format!("{us} us ({command})")),
        )
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "replayers": self.replayers,
            "history_events": self.history,
            "complete": self.complete,
            "failure_reasons": reasons_json(&self.failures),
            "out_of_order": self.out_of_order,
            "truncated": self.truncated,
            "events_per_sec": self.events_per_sec,
            "median_secs": self.median_secs,
            "slowest_secs": self.slowest_secs,
            "gzip": self.gzip,
            "wire_bytes": self.wire_bytes,
            "wire_bytes_median": self.wire_bytes_median,
            "wire_bytes_per_event": self.wire_bytes as f64 / (self.history * self.replayers as u64).max(1) as f64,
            "inflated_bytes": self.inflated_bytes,
            "inflated_bytes_per_event": self.inflated_bytes as f64 / (self.history * self.replayers as u64).max(1) as f64,
            "redis_page_reads": self.pages,
            "redis_page_p50_us": self.page_p50_us,
            "redis_page_p99_us": self.page_p99_us,
            "redis_page_max_us": self.page_max_us,
            "redis_longest_us": self.longest.as_ref().map(|(us, _)| us),
            "redis_longest_command": self.longest.as_ref().map(|(_, command)| command),
        })
    }
}
