#!/usr/bin/env python3
"""Medians (with min-max spread) of event-gateway-bench runs, one row per scenario.

    bench/summarize.py bench/results/*.jsonl
Each input line is the JSON of a `BENCH_JSON` line; runs are grouped by the label before '#'.
"""
import json
import statistics
import sys
from collections import OrderedDict

COLUMNS = [
    ("runs", None),
    ("ok/failed", None),
    ("connect p50 ms", lambda r: r["connect"]["p50_ms"]),
    ("RSS/conn KB", lambda r: r["server_rss_per_conn_kb"]),
    ("ev/s achieved", lambda r: r["publish_rate_achieved"]),
    ("deliveries/s", lambda r: r["deliveries_per_sec"]),
    ("p50 ms", lambda r: r["latency"]["p50_ms"]),
    ("p90 ms", lambda r: r["latency"]["p90_ms"]),
    ("p99 ms", lambda r: r["latency"]["p99_ms"]),
    ("max ms", lambda r: r["latency"]["max_ms"]),
    ("lost", lambda r: r["lost"]),
    ("deliveries/read", lambda r: r.get("deliveries_per_read")),
    ("wire B/delivery", lambda r: r.get("wire_bytes_per_delivery")),
    ("inflated B/delivery", lambda r: r.get("inflated_bytes_per_delivery")),
    ("gzip streams", lambda r: r.get("gzip_streams")),
    ("replay wire B/event", lambda r: r["replay"]["wire_bytes_per_event"]),
    ("server CPU ms/1k", lambda r: r["server_cpu_ms_per_1k_deliveries"]),
    ("redis CPU ms/1k", lambda r: r["redis_cpu_ms_per_1k_deliveries"]),
    ("bench clients CPU ms/1k", lambda r: r.get("bench_client_cpu_ms_per_1k_deliveries")),
    ("load", lambda r: r["load_before"]),
]


def fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{int(value):,}"


def cell(runs, pick):
    values = []
    for run in runs:
        try:
            value = pick(run)
        except (KeyError, TypeError):
            value = None
        if value is not None:
            values.append(value)
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1 or min(values) == max(values):
        return fmt(median)
    return f"{fmt(median)} ({fmt(min(values))}-{fmt(max(values))})"


def main(paths):
    groups = OrderedDict()
    for path in paths:
        with open(path) as handle:
            for line in handle:
                line = line.strip()
                if line:
                    run = json.loads(line)
                    groups.setdefault(run["label"].split("#")[0], []).append(run)
    print("| scenario | " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for scenario, runs in groups.items():
        cells = [str(len(runs)), f"{sum(r['established'] for r in runs)}/{sum(r['failed'] for r in runs)}"]
        cells += [cell(runs, pick) for _, pick in COLUMNS[2:]]
        print(f"| {scenario} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
