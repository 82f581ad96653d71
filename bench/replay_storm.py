#!/usr/bin/env python3
"""Replay storm: N clients replay a big history (`since=0`) while M clients take live traffic.

Starts its own redis-server (free port, no persistence) and the given gateway binary, fills one
org's history with H durable events of B bytes through the publish Function, then at once opens
the replaying streams and publishes live events at R/s to another org, read by M live clients.
Reports, as one JSON line: replay throughput (events/s over every replaying client), the median
and slowest replay, live latency p50/p99/max during the storm, the gateway's peak RSS (VmHWM),
and Redis's longest command of the storm (SLOWLOG with a 0 µs threshold, FCALL/FCALL_RO only).

  bench/replay_storm.py --gateway target/release/event-gateway [--replayers 20 --events 10000]

Bounded: stops when every replay is complete or after --timeout seconds; loopback only.
"""

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

SECRET = "bench-secret-not-for-production-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for arg in args:
        arg = arg if isinstance(arg, bytes) else str(arg).encode()
        out += b"$%d\r\n%s\r\n" % (len(arg), arg)
    return out


async def redis_call(port, *args):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(resp(*args))
    await writer.drain()
    data = await reader.read(1 << 20)
    while True:
        try:
            more = await asyncio.wait_for(reader.read(1 << 20), 0.5)
        except asyncio.TimeoutError:
            break
        if not more:
            break
        data += more
    writer.close()
    return data


def token(binary, sub, org):
    env = dict(os.environ, GATEWAY__AUTH__JWT_SECRET=SECRET)
    out = subprocess.run([binary, "token", "--sub", sub, "--role", "ops", "--org", org, "--ttl", "3600"],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


async def open_stream(port, tok, query=""):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("GET /api/events%s HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer %s\r\n\r\n"
                  % (query, tok)).encode())
    await writer.drain()
    buffer = b""
    while b"event: connected" not in buffer:
        chunk = await reader.read(65536)
        if not chunk:
            raise RuntimeError("stream closed before connected: %r" % buffer[:200])
        buffer += chunk
    return reader, writer, buffer.split(b"event: connected", 1)[1]


async def replay(port, tok, events, results, refusals):
    started = time.monotonic()
    try:
        reader, writer, rest = await open_stream(port, tok, "?since=0")
    except RuntimeError as refused:
        refusals.append(str(refused).split("\\r\\n", 1)[0])
        return
    seen = rest.count(b"\nevent: ticket.created\n")
    tail = rest[-64:]
    while seen < events:
        chunk = await reader.read(1 << 20)
        if not chunk:
            break
        data = tail + chunk
        seen += data.count(b"\nevent: ticket.created\n") - tail.count(b"\nevent: ticket.created\n")
        tail = data[-64:]
    results.append((time.monotonic() - started, seen))
    writer.close()


async def live_reader(port, tok, latencies, stop):
    reader, writer, _ = await open_stream(port, tok)
    buffer = b""
    while not stop.is_set():
        try:
            chunk = await asyncio.wait_for(reader.read(65536), 0.5)
        except asyncio.TimeoutError:
            continue
        if not chunk:
            return
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            if b"event: live.tick" in frame:
                sent = json.loads(frame.split(b"data: ", 1)[1])["sent"]
                latencies.append(time.time() - sent)
    writer.close()


async def live_publisher(port, rate, stop):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    interval = 1.0 / rate
    while not stop.is_set():
        envelope = json.dumps({"type": "live.tick", "data": {"sent": time.time()}})
        writer.write(resp("PUBLISH", "events:org:org-live", envelope))
        await writer.drain()
        await reader.read(64)
        await asyncio.sleep(interval)
    writer.close()


def vm_hwm(pid):
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def longest_commands(slowlog_raw):
    """(microseconds, command) of every FCALL/FCALL_RO in a raw SLOWLOG GET reply."""
    entries = []
    parts = slowlog_raw.split(b"\r\n")
    for i, part in enumerate(parts):
        if part in (b"FCALL", b"FCALL_RO") and i >= 6:
            # ... :<id> :<time> :<micros> *<n> $<len> FCALL $<len> <name>
            for back in range(i - 1, max(i - 8, 0), -1):
                if parts[back].startswith(b"*"):
                    micros = parts[back - 1]
                    if micros.startswith(b":"):
                        entries.append((int(micros[1:]), part.decode() + " " + parts[i + 2].decode()))
                    break
    return sorted(entries, reverse=True)


def page_percentile(commands, fraction):
    """The `fraction` percentile of the history-read Functions' durations (µs)."""
    pages = sorted(micros for micros, name in commands if "page" in name or "replay" in name)
    return pages[min(len(pages) - 1, int(len(pages) * fraction))] if pages else None


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", required=True, help="event-gateway binary")
    parser.add_argument("--label", default="replay-storm")
    parser.add_argument("--events", type=int, default=5000, help="history size (events)")
    parser.add_argument("--event-bytes", type=int, default=8192)
    parser.add_argument("--replayers", type=int, default=20)
    parser.add_argument("--live-clients", type=int, default=50)
    parser.add_argument("--live-rate", type=float, default=20.0, help="live events per second")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="replay-storm-")
    redis_port, gateway_port = free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", workdir, "--slowlog-max-len", "1000000"],
                             stdout=subprocess.DEVNULL)
    env = dict(os.environ, GATEWAY__SERVER__HOST="127.0.0.1", GATEWAY__SERVER__PORT=str(gateway_port),
               GATEWAY__AUTH__JWT_SECRET=SECRET, GATEWAY__REDIS__URL="redis://127.0.0.1:%d" % redis_port,
               GATEWAY__LOG__FORMAT="json", GATEWAY__LOG__LEVEL="warn",
               GATEWAY__LIMITS__CONNECT_RATE_PER_USER="100000", GATEWAY__LIMITS__CONNECT_RATE_PER_IP="100000",
               GATEWAY__HISTORY__MAX_EVENTS_PER_ORG=str(max(args.events, 10000)))
    gateway = subprocess.Popen([args.gateway, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
                writer.write(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if b" 200 " in await reader.read(256):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not become ready")
            await asyncio.sleep(0.2)

        pad = "x" * max(0, args.event_bytes - 60)
        reader, writer = await asyncio.open_connection("127.0.0.1", redis_port)
        for start in range(0, args.events, 500):
            batch = b"".join(
                resp("FCALL", "event_gateway_publish", 0, "org-big",
                     json.dumps({"type": "ticket.created", "data": {"n": n, "pad": pad}}))
                for n in range(start, min(start + 500, args.events)))
            writer.write(batch)
            await writer.drain()
            replies = 0
            while replies < min(500, args.events - start):
                replies += (await reader.readuntil(b"\r\n")).startswith(b"$")
                await reader.readuntil(b"\r\n")
        writer.close()
        await redis_call(redis_port, "CONFIG", "SET", "slowlog-log-slower-than", 0)
        await redis_call(redis_port, "SLOWLOG", "RESET")

        stop = asyncio.Event()
        latencies, results = [], []
        live_toks = [token(args.gateway, "live-%d" % n, "org-live") for n in range(args.live_clients)]
        live = [asyncio.create_task(live_reader(gateway_port, tok, latencies, stop)) for tok in live_toks]
        await asyncio.sleep(1)
        publisher = asyncio.create_task(live_publisher(redis_port, args.live_rate, stop))
        storm_started = time.monotonic()
        replay_toks = [token(args.gateway, "replayer-%d" % n, "org-big") for n in range(args.replayers)]
        refusals = []
        replays = [asyncio.create_task(replay(gateway_port, tok, args.events, results, refusals))
                   for tok in replay_toks]
        await asyncio.wait_for(asyncio.gather(*replays), args.timeout)
        storm = time.monotonic() - storm_started
        stop.set()
        await asyncio.gather(publisher, *live, return_exceptions=True)
        await redis_call(redis_port, "CONFIG", "SET", "slowlog-log-slower-than", 10000)
        slowlog = await redis_call(redis_port, "SLOWLOG", "GET", 1000000)
        longest = longest_commands(slowlog)
        durations = sorted(d for d, _ in results) or [0.0]
        complete = sum(1 for _, seen in results if seen >= args.events)
        latencies.sort()
        report = {
            "label": args.label,
            "history_events": args.events,
            "event_bytes": args.event_bytes,
            "replayers": args.replayers,
            "replays_complete": complete,
            "replays_refused": len(refusals),
            "refusals": sorted(set(refusals)),
            "replay_events_per_s": round(sum(seen for _, seen in results) / storm),
            "replay_median_s": round(statistics.median(durations), 2),
            "replay_slowest_s": round(durations[-1], 2),
            "live_events_seen": len(latencies),
            "live_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
            "live_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1) if latencies else None,
            "live_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
            "gateway_peak_rss_mb": round(vm_hwm(gateway.pid) / 2**20, 1),
            "redis_page_p50_us": page_percentile(longest, 0.5),
            "redis_page_p99_us": page_percentile(longest, 0.99),
            "redis_longest_command_us": longest[0][0] if longest else None,
            "redis_longest_command": longest[0][1] if longest else None,
        }
        print("BENCH_JSON " + json.dumps(report))
    finally:
        gateway.terminate()
        redis.terminate()
        gateway.wait(15)
        redis.wait(15)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
