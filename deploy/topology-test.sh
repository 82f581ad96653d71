#!/usr/bin/env bash
# Proof on loopback that the deployment topology works: one private redis-server, three
# event-gateway replicas and nginx rendered from deploy/nginx/nginx.conf.template (the same
# template as docker-compose.yml) in front. N SSE clients connect through nginx, durable events
# published once reach them all, the replica holding the most clients gets SIGTERM, its clients
# reconnect through nginx to the others with Last-Event-ID, and at the end every client has
# every event exactly once and in order. See deploy/topology_check.py for the scenario.
#
#   deploy/topology-test.sh            # GATEWAY_BIN=... to choose the binary
#
# Environment: GATEWAY_BIN (default: the newer of target/release and target/debug
# event-gateway), TOPOLOGY_CLIENTS (30), TOPOLOGY_KEEP=1 keeps the temp dir.
# Needs redis-server, nginx (Debian nginx-light; installed when missing and running as root),
# python3 and curl. Exits 0 when proven, non-zero otherwise; bounded to ~90 s.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
clients="${TOPOLOGY_CLIENTS:-30}"
replicas=(gw1 gw2 gw3)
org="topology-org"
drain_min_ms=200
drain_max_ms=1500
shutdown_timeout_secs=10
started_at=$SECONDS

say() { echo "[topology] $*"; }
fail() { echo "[topology] FAIL: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------
if [ -z "${GATEWAY_BIN:-}" ]; then
  for candidate in "$root/target/release/event-gateway" "$root/target/debug/event-gateway"; do
    if [ -x "$candidate" ] && { [ -z "${GATEWAY_BIN:-}" ] || [ "$candidate" -nt "$GATEWAY_BIN" ]; }; then
      GATEWAY_BIN="$candidate"
    fi
  done
fi
if [ -z "${GATEWAY_BIN:-}" ] || [ ! -x "$GATEWAY_BIN" ]; then
  fail "no gateway binary: run 'cargo build --release' or set GATEWAY_BIN"
fi
# Absolute: the replicas run in the temp dir.
GATEWAY_BIN="$(cd "$(dirname "$GATEWAY_BIN")" && pwd)/$(basename "$GATEWAY_BIN")"
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing nginx-light (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
  else
    fail "nginx is missing (apt-get install nginx-light)"
  fi
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
for tool in redis-server redis-cli python3 curl; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing"
done

# --- process bookkeeping -----------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/event-gateway-topology.XXXXXX")"
declare -A pid_of=()
all_pids=()
status=1

cleanup() {
  local rc=$?
  for pid in "${all_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${all_pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${all_pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" != 0 ] || [ "$rc" != 0 ]; then
    for f in "$work"/*.log; do
      [ -f "$f" ] || continue
      echo "----- tail of $(basename "$f")" >&2
      tail -n 15 "$f" >&2
    done
  fi
  if [ "${TOPOLOGY_KEEP:-0}" = 1 ]; then echo "[topology] kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # wait_for SECONDS COMMAND...
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.1
  done
}

# --- redis ---------------------------------------------------------------------------------
redis_port=""
for _ in 1 2 3; do
  redis_port="$(free_port)"
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$work" --logfile "$work/redis.log" --daemonize no &
  redis_pid=$!
  all_pids+=("$redis_pid")
  if wait_for 5 redis-cli -p "$redis_port" ping; then break; fi
  kill "$redis_pid" 2>/dev/null || true
  redis_port=""
done
[ -n "$redis_port" ] || fail "redis-server did not start"
say "redis-server on 127.0.0.1:$redis_port (pid $redis_pid, no persistence, $work)"

# --- three replicas -----------------------------------------------------------------------
secret="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
export GATEWAY__AUTH__JWT_SECRET="$secret"
export GATEWAY__REDIS__URL="redis://127.0.0.1:$redis_port"
declare -A port_of=()
# The replicas run in the temp dir, so each uses the defaults compiled into the binary (a
# config/default.toml in the working directory would replace them).
cd "$work"
for name in "${replicas[@]}"; do
  GATEWAY__SERVER__HOST=127.0.0.1 GATEWAY__SERVER__PORT=0 \
  GATEWAY__SERVER__REPLICA_NAME="$name" \
  GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECS="$shutdown_timeout_secs" \
  GATEWAY__SSE__DRAIN_RETRY_MIN_MS="$drain_min_ms" GATEWAY__SSE__DRAIN_RETRY_MAX_MS="$drain_max_ms" \
  GATEWAY__LOG__FORMAT=json GATEWAY__LIMITS__TRUST_FORWARDED_FOR=true \
    "$GATEWAY_BIN" serve >"$work/$name.log" 2>&1 &
  pid_of[$name]=$!
  all_pids+=("$!")
done
for name in "${replicas[@]}"; do
  listening() { grep -q 'listening on http://' "$work/$1.log"; }
  wait_for 20 listening "$name" || fail "$name did not log 'listening on'"
  port_of[$name]="$(grep -o 'listening on http://[^" ]*' "$work/$name.log" | head -n1 | sed 's/.*://')"
  wait_for 15 curl -fsS "http://127.0.0.1:${port_of[$name]}/readyz" || fail "$name not ready"
  say "$name: pid ${pid_of[$name]}, 127.0.0.1:${port_of[$name]}, ready"
done

# The container health check (Dockerfile HEALTHCHECK, compose) is `event-gateway healthcheck`.
has_healthcheck=0
if "$GATEWAY_BIN" help healthcheck >/dev/null 2>&1; then
  has_healthcheck=1
  for name in "${replicas[@]}"; do
    "$GATEWAY_BIN" healthcheck --url "http://127.0.0.1:${port_of[$name]}" >/dev/null 2>&1 \
      || fail "event-gateway healthcheck failed against live $name"
    "$GATEWAY_BIN" healthcheck --ready --url "http://127.0.0.1:${port_of[$name]}" >/dev/null 2>&1 \
      || fail "event-gateway healthcheck --ready failed against ready $name"
  done
  say "event-gateway healthcheck [--ready]: exit 0 against each live replica"
else
  say "note: $GATEWAY_BIN has no healthcheck subcommand; not checked"
fi

# --- nginx from the one template ----------------------------------------------------------
lb_port="$(free_port)"
upstreams=()
for name in "${replicas[@]}"; do upstreams+=("127.0.0.1:${port_of[$name]}"); done
"$root/deploy/nginx/render.sh" --listen "127.0.0.1:$lb_port" --runtime-dir "$work" \
  --error-log "$work/nginx-error.log" --access-log "$work/nginx-access.log" \
  --worker-processes 2 --worker-connections 4096 "${upstreams[@]}" -o "$work/nginx.conf"
"$NGINX" -t -q -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log" \
  || fail "nginx -t rejected the rendered configuration"
"$NGINX" -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log" -g 'daemon off;' \
  >"$work/nginx-stdout.log" 2>&1 &
nginx_pid=$!
all_pids+=("$nginx_pid")
wait_for 10 curl -fsS "http://127.0.0.1:$lb_port/lb-healthz" || fail "nginx did not start"
wait_for 10 curl -fsS "http://127.0.0.1:$lb_port/readyz" || fail "no replica ready through nginx"
say "nginx (pid $nginx_pid) on 127.0.0.1:$lb_port -> ${upstreams[*]} (rendered from deploy/nginx/nginx.conf.template)"

# --- tokens --------------------------------------------------------------------------------
: >"$work/tokens"
for i in $(seq 1 "$clients"); do
  "$GATEWAY_BIN" token --sub "topology-client-$i" --role ops --org "$org" --ttl 600 >>"$work/tokens"
done
service_token="$("$GATEWAY_BIN" token --sub topology-publisher --role service --org "$org" --ttl 600)"

# --- the scenario --------------------------------------------------------------------------
replica_args=()
for name in "${replicas[@]}"; do replica_args+=(--replica-pid "$name=${pid_of[$name]}"); done
budget=$((85 - (SECONDS - started_at)))
[ "$budget" -gt 20 ] || fail "setup took too long ($((SECONDS - started_at)) s)"
scenario_rc=0
timeout --kill-after=5 "$((budget + 5))" python3 "$root/deploy/topology_check.py" \
  --lb "127.0.0.1:$lb_port" --tokens "$work/tokens" --service-token "$service_token" --org "$org" \
  "${replica_args[@]}" --drain-retry-min-ms "$drain_min_ms" --drain-retry-max-ms "$drain_max_ms" \
  --deadline "$budget" --killed-file "$work/killed" --result "$work/result.json" || scenario_rc=$?

# --- the SIGTERMed replica drained and exited 0 in time ---------------------------------------
killed="$(cat "$work/killed" 2>/dev/null || true)"
[ -n "$killed" ] || fail "the scenario did not stop a replica (rc $scenario_rc)"
exit_rc=0
kill_deadline=$((SECONDS + shutdown_timeout_secs + 2))
while kill -0 "${pid_of[$killed]}" 2>/dev/null && [ $SECONDS -lt $kill_deadline ]; do sleep 0.1; done
if kill -0 "${pid_of[$killed]}" 2>/dev/null; then
  fail "$killed still running ${shutdown_timeout_secs}s after SIGTERM"
fi
wait "${pid_of[$killed]}" || exit_rc=$?
[ "$exit_rc" = 0 ] || fail "$killed exited with status $exit_rc after SIGTERM (want 0)"
grep -q 'Draining' "$work/$killed.log" || say "note: no 'Draining' line in $killed.log"
say "$killed exited with status 0 after SIGTERM"
if [ "$has_healthcheck" = 1 ]; then
  if "$GATEWAY_BIN" healthcheck --url "http://127.0.0.1:${port_of[$killed]}" >/dev/null 2>&1; then
    fail "event-gateway healthcheck still succeeds against the stopped $killed"
  fi
  say "event-gateway healthcheck: non-zero against the stopped $killed"
fi
for name in "${replicas[@]}"; do
  [ "$name" = "$killed" ] && continue
  kill -0 "${pid_of[$name]}" 2>/dev/null || fail "$name died during the test"
done
upstream_failures="$(grep -c 'upstream' "$work/nginx-error.log" || true)"
say "nginx error log: $upstream_failures upstream notices (connection refused / 503 retried on another replica)"

[ "$scenario_rc" = 0 ] || fail "scenario failed (see above)"
status=0
figures="$(python3 - "$work/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
keys = ["clients", "events_expected_per_client", "deliveries", "killed", "clients_moved", "reconnects",
        "replayed_from_history", "lost", "duplicates", "out_of_order_clients", "victim_exit_s"]
print(" ".join(f"{k}={r[k]}" for k in keys))
PY
)"
say "PASS in $((SECONDS - started_at)) s: $figures"
