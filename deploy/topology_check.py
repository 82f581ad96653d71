#!/usr/bin/env python3
"""The scenario of deploy/topology-test.sh (standard library only).

N EventSource-style clients connect to the gateway THROUGH the load balancer; durable events are
published once (POST /api/publish through the balancer) before, during and after a SIGTERM of the
replica holding the most clients; the clients of that replica honour the drain `retry:`, reconnect
through the balancer with `Last-Event-ID`, and at the end every client must hold every event exactly
once, in publish order.

The processes (Redis, replicas, nginx) are started and cleaned up by topology-test.sh; this script
only talks HTTP and sends the one SIGTERM. Exit status 0 = proven, 1 = a check failed.
"""

import argparse
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time

EVENT_TYPE = "topo.tick"


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Client(threading.Thread):
    """An EventSource: parses text/event-stream per the HTML spec, keeps the last event id,
    honours `retry:`, and reconnects with `Last-Event-ID` whenever the stream ends."""

    def __init__(self, index, token, host, port, stop):
        super().__init__(name=f"client-{index}", daemon=True)
        self.index = index
        self.token = token
        self.host = host
        self.port = port
        self.stop = stop
        self.lock = threading.Lock()
        self.retry_ms = 3000
        self.last_event_id = ""
        self.events = []  # (id, seq) in arrival order
        self.replicas = []  # replica of each `connected`, in order
        self.connected_at = []  # monotonic time of each `connected`
        self.resumed_with = []  # Last-Event-ID sent on each connection ("" = none)
        self.retries_seen = []  # every retry: value, in order
        self.refused = []  # (status, body) of connection attempts that did not open a stream
        self.errors = []
        self.disconnected_at = None
        self.reconnect_gaps = []  # seconds between a stream's end and the next `connected`
        self.sock = None
        self.connected = threading.Event()

    def close_socket(self):
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self):
        while not self.stop.is_set():
            conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            headers = {
                "Authorization": f"Bearer {self.token}",
                "Accept": "text/event-stream",
                "Cache-Control": "no-cache",
            }
            if self.last_event_id:
                headers["Last-Event-ID"] = self.last_event_id
            try:
                conn.request("GET", "/api/events", headers=headers)
                self.sock = conn.sock
                response = conn.getresponse()
                if response.status != 200:
                    body = response.read(300).decode("utf-8", "replace")
                    self.refused.append((response.status, body))
                else:
                    self.resumed_with.append(self.last_event_id)
                    self.read_stream(response)
            except (OSError, http.client.HTTPException) as error:
                if not self.stop.is_set():
                    self.errors.append(repr(error))
            finally:
                self.sock = None
                conn.close()
            if self.stop.is_set():
                break
            if self.disconnected_at is None:
                self.disconnected_at = time.monotonic()
            # EventSource: wait the reconnection time, then reconnect with Last-Event-ID.
            self.stop.wait(self.retry_ms / 1000)

    def read_stream(self, response):
        data, event_type, id_buffer = [], "", self.last_event_id
        while True:
            raw = response.readline()
            if not raw:
                return  # end of stream: the event being built (no blank line yet) is discarded
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                self.last_event_id = id_buffer
                if data:
                    self.dispatch(event_type or "message", "\n".join(data))
                data, event_type = [], ""
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "event":
                event_type = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                if "\0" not in value:
                    id_buffer = value
            elif field == "retry":
                if value.isdigit():
                    self.retry_ms = int(value)
                    self.retries_seen.append(int(value))

    def dispatch(self, event_type, data):
        if event_type == "connected":
            replica = json.loads(data).get("replica")
            with self.lock:
                self.replicas.append(replica)
                self.connected_at.append(time.monotonic())
                if self.disconnected_at is not None:
                    self.reconnect_gaps.append(time.monotonic() - self.disconnected_at)
                    self.disconnected_at = None
            self.connected.set()
        elif event_type == EVENT_TYPE:
            with self.lock:
                self.events.append((self.last_event_id, json.loads(data)["seq"], len(self.replicas)))

    def current_replica(self):
        with self.lock:
            return self.replicas[-1] if self.replicas and self.sock is not None else None

    def count(self):
        with self.lock:
            return len(self.events)


class Publisher:
    """POSTs one durable envelope per call through the balancer; retries only on 503 (the
    gateway's 'not ready / draining' answer, given before anything is published)."""

    def __init__(self, host, port, token, org):
        self.host, self.port, self.token, self.org = host, port, token, org
        self.published = []  # (seq, id)
        self.acked_at = {}  # seq -> monotonic time of the 202
        self.retried_503 = 0
        self.seq = 0

    def publish_next(self):
        self.seq += 1
        body = json.dumps({"type": EVENT_TYPE, "orgId": self.org, "data": {"seq": self.seq}})
        for attempt in range(100):
            conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                conn.request(
                    "POST",
                    "/api/publish",
                    body=body,
                    headers={
                        "Authorization": f"Bearer {self.token}",
                        "Content-Type": "application/json",
                    },
                )
                response = conn.getresponse()
                text = response.read().decode("utf-8", "replace")
            finally:
                conn.close()
            if response.status == 202:
                event_id = json.loads(text)["ids"][0]
                self.published.append((self.seq, event_id))
                self.acked_at[self.seq] = time.monotonic()
                return
            if response.status == 503:
                self.retried_503 += 1
                time.sleep(0.1)
                continue
            raise RuntimeError(f"publish {self.seq}: {response.status} {text}")
        raise RuntimeError(f"publish {self.seq}: still 503 after 100 attempts")


def wait_until(predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lb", required=True, help="balancer HOST:PORT")
    parser.add_argument("--tokens", required=True, help="file: one ops token per line (one per client)")
    parser.add_argument("--service-token", required=True)
    parser.add_argument("--org", required=True)
    parser.add_argument("--replica-pid", action="append", default=[], help="NAME=PID, repeat")
    parser.add_argument("--drain-retry-min-ms", type=int, required=True)
    parser.add_argument("--drain-retry-max-ms", type=int, required=True)
    parser.add_argument("--events-before", type=int, default=10)
    parser.add_argument("--events-during", type=int, default=20)
    parser.add_argument("--events-after", type=int, default=10)
    parser.add_argument("--publish-interval", type=float, default=0.02)
    parser.add_argument("--deadline", type=float, default=60, help="seconds for the whole scenario")
    parser.add_argument("--killed-file", required=True, help="where to write the SIGTERMed replica's name")
    parser.add_argument("--result", help="JSON summary written there")
    args = parser.parse_args()

    started = time.monotonic()
    deadline = started + args.deadline
    left = lambda: max(0.0, deadline - time.monotonic())  # noqa: E731
    host, port = args.lb.rsplit(":", 1)
    port = int(port)
    pids = dict(item.split("=", 1) for item in args.replica_pid)
    tokens = [t.strip() for t in open(args.tokens) if t.strip()]
    failures = []

    stop = threading.Event()
    clients = [Client(i, token, host, port, stop) for i, token in enumerate(tokens)]
    publisher = Publisher(host, port, args.service_token, args.org)

    # 1. Every client connects through the balancer.
    for client in clients:
        client.start()
    if not wait_until(lambda: all(c.connected.is_set() for c in clients), min(15, left())):
        failures.append("not every client got `connected` through the balancer")
    spread = {}
    for client in clients:
        spread[client.current_replica()] = spread.get(client.current_replica(), 0) + 1
    log(f"{len(clients)} clients connected through the balancer, per replica: {dict(sorted(spread.items(), key=str))}")
    if len([r for r in spread if r]) < 2:
        failures.append(f"the balancer did not spread the clients: {spread}")

    # 2. Events published once reach every client.
    for _ in range(args.events_before):
        publisher.publish_next()
        time.sleep(args.publish_interval)
    expected = publisher.seq
    if not wait_until(lambda: all(c.count() >= expected for c in clients), min(10, left())):
        failures.append(f"before the kill, not every client received the {expected} events")
    else:
        log(f"{expected} durable events published once reached all {len(clients)} clients")

    # 3. SIGTERM the busiest replica while publishing goes on.
    victim = max((r for r in spread if r), key=lambda r: (spread[r], r))
    victims_clients = [c for c in clients if c.current_replica() == victim]
    killed_at = None
    stop_publishing = threading.Event()
    publish_error = []

    def publish_loop():
        try:
            while not stop_publishing.is_set() and time.monotonic() < deadline:
                publisher.publish_next()
                time.sleep(args.publish_interval)
        except Exception as error:  # noqa: BLE001 - reported below
            publish_error.append(repr(error))

    publishing = threading.Thread(target=publish_loop, daemon=True)
    publishing.start()
    wait_until(lambda: publisher.seq >= expected + args.events_during // 2, min(10, left()))
    log(f"SIGTERM to {victim} (pid {pids[victim]}), which holds {len(victims_clients)} clients")
    with open(args.killed_file, "w") as f:
        f.write(victim)
    killed_at = time.monotonic()
    os.kill(int(pids[victim]), signal.SIGTERM)
    exited_after = []

    def watch_exit():
        while os.path.exists(f"/proc/{pids[victim]}") and time.monotonic() < deadline:
            try:
                with open(f"/proc/{pids[victim]}/stat") as f:
                    if f.read().split(") ", 1)[1].startswith("Z"):
                        break  # a zombie: exited, not yet reaped by topology-test.sh
            except OSError:
                break
            time.sleep(0.02)
        exited_after.append(time.monotonic() - killed_at)

    threading.Thread(target=watch_exit, daemon=True).start()

    def everyone_moved():
        return all(
            c.current_replica() not in (None, victim) and len(c.replicas) >= 2 for c in victims_clients
        )

    if not wait_until(everyone_moved, min(30, left())):
        stuck = [c.index for c in victims_clients if not (c.current_replica() not in (None, victim))]
        failures.append(f"clients {stuck} did not reconnect to another replica")
    else:
        log(
            f"all {len(victims_clients)} clients of {victim} reconnected through the balancer "
            f"to other replicas in {time.monotonic() - killed_at:.2f}s"
        )
    # keep publishing a little after everybody moved
    target = publisher.seq + args.events_after
    wait_until(lambda: publisher.seq >= max(target, expected + args.events_during), min(15, left()))
    stop_publishing.set()
    publishing.join(timeout=15)
    if publish_error:
        failures.append(f"publishing failed: {publish_error[0]}")

    # 4. Every client has every event, exactly once, in order.
    wait_until(lambda: all(c.count() >= len(publisher.published) for c in clients), min(15, left()))
    stop.set()
    for client in clients:
        client.close_socket()
    for client in clients:
        client.join(timeout=5)

    expected_seqs = [seq for seq, _ in publisher.published]
    expected_ids = {seq: event_id for seq, event_id in publisher.published}
    lost_total = dup_total = order_errors = id_errors = 0
    for client in clients:
        seqs = [seq for _, seq, _ in client.events]
        seen = set()
        dups = [s for s in seqs if s in seen or seen.add(s)]
        lost = sorted(set(expected_seqs) - set(seqs))
        lost_total += len(lost)
        dup_total += len(dups)
        if seqs != expected_seqs and not lost and not dups:
            order_errors += 1
        wrong_ids = [(i, s) for i, s, _ in client.events if expected_ids.get(s) != i]
        id_errors += len(wrong_ids)
        if lost or dups or seqs != expected_seqs or wrong_ids:
            failures.append(
                f"client {client.index} (replicas {client.replicas}): lost {lost[:10]}, "
                f"duplicated {dups[:10]}, in order {seqs == sorted(seqs)}, wrong ids {wrong_ids[:3]}"
            )
    ids_in_order = [event_id for _, event_id in publisher.published]

    # The moved clients: drain retry honoured, resumed with Last-Event-ID on another replica.
    reconnects = 0
    replayed = 0  # events published while a moved client was away, received from history
    for client in victims_clients:
        reconnects += len(client.replicas) - 1
        for _, seq, connection in client.events:
            if connection >= 2 and publisher.acked_at.get(seq, 0) < client.connected_at[connection - 1]:
                replayed += 1
        drain_retries = client.retries_seen[1:]  # the first is the connect-time retry
        if not any(args.drain_retry_min_ms <= r <= args.drain_retry_max_ms for r in drain_retries):
            failures.append(
                f"client {client.index}: no drain retry in [{args.drain_retry_min_ms},"
                f"{args.drain_retry_max_ms}] ms (saw {client.retries_seen})"
            )
        if len(client.resumed_with) < 2 or not all(client.resumed_with[1:]):
            failures.append(f"client {client.index}: reconnected without Last-Event-ID {client.resumed_with}")
        if victim in client.replicas[1:]:
            failures.append(f"client {client.index}: reconnected to the draining replica {client.replicas}")
    others_reconnected = [c.index for c in clients if c not in victims_clients and len(c.replicas) > 1]
    if others_reconnected:
        failures.append(f"clients of surviving replicas reconnected: {others_reconnected}")
    refused = sum(len(c.refused) for c in clients)
    errors = [e for c in clients for e in c.errors]
    gaps = [g for c in victims_clients for g in c.reconnect_gaps]
    final_spread = {}
    for client in clients:
        final_spread[client.replicas[-1] if client.replicas else None] = (
            final_spread.get(client.replicas[-1] if client.replicas else None, 0) + 1
        )

    summary = {
        "clients": len(clients),
        "spread_before": spread,
        "spread_after": final_spread,
        "killed": victim,
        "clients_moved": len(victims_clients),
        "reconnects": reconnects,
        "victim_exit_s": round(exited_after[0], 3) if exited_after else None,
        "replayed_from_history": replayed,
        "reconnect_gap_s": {
            "min": round(min(gaps), 3) if gaps else None,
            "max": round(max(gaps), 3) if gaps else None,
        },
        "drain_retry_ms_seen": sorted({r for c in victims_clients for r in c.retries_seen[1:]})[:5],
        "events_published": len(publisher.published),
        "events_expected_per_client": len(expected_seqs),
        "deliveries": sum(len(c.events) for c in clients),
        "lost": lost_total,
        "duplicates": dup_total,
        "out_of_order_clients": order_errors,
        "wrong_ids": id_errors,
        "ids_strictly_increasing": all(
            tuple(map(int, a.split("-"))) < tuple(map(int, b.split("-")))
            for a, b in zip(ids_in_order, ids_in_order[1:])
        )
        if all("-" in i for i in ids_in_order)
        else None,
        "publish_503_retried": publisher.retried_503,
        "refused_stream_attempts": refused,
        "client_errors": errors[:5],
        "scenario_seconds": round(time.monotonic() - started, 2),
        "failures": failures,
    }
    if args.result:
        with open(args.result, "w") as f:
            json.dump(summary, f, indent=2, default=str)
    log("summary: " + json.dumps({k: v for k, v in summary.items() if k != "failures"}, default=str))
    if failures:
        for failure in failures:
            log(f"FAIL: {failure}")
        return 1
    log(
        f"OK: {len(clients)} clients x {len(expected_seqs)} events, {reconnects} reconnects "
        f"after SIGTERM of {victim}: lost 0, duplicates 0, all in order"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
