#!/usr/bin/env bash
# Runs the scenarios of BENCHMARKS.md against a fresh private redis-server and a fresh server
# (event-gateway, or nginx + Nchan) per run, one run at a time, and appends each run's
# BENCH_JSON line to bench/results/<scenario>.jsonl (full output in <scenario>.log).
#
#   cargo build --release --bin event-gateway --bin event-gateway-bench --bin event-gateway-pump
#   bench/run.sh fanout50            # 3 runs (RUNS=3)
#   RUNS=1 bench/run.sh idle10k nchan-idle10k
#   bench/summarize.py bench/results/*.jsonl
#
# Scenarios: idle10k fanout50 fanout200 fanout800 filtered filtered-ops durable50 durable200
#            durable-filtered replay-storm
#            http50 and nchan-<same> for idle10k fanout50 fanout200 fanout800 filtered;
#            pump-<same> for fanout50 fanout200 fanout800 (the floor: event-gateway-pump, one org);
#            durable-orgs, and cluster-<same> for any gateway scenario (a 3-primary Redis Cluster);
#            ws-<same> and wsz-<same> for any gateway scenario but replay-storm: the streams over
#            WebSocket (GET /api/ws), wsz- offering permessage-deflate (e.g. ws-idle10k,
#            ws-fanout50, wsz-fanout200, ws-filtered, cluster-ws-fanout50).
#            Compression of SSE: fanout50-300 (fanout50 with realistic 300 B events), bytes-200,
#            bytes-300, bytes-2k (bytes per delivered event, 20 streams, realistic events),
#            bytes-pad300 (300 B of padding: what one repeated character compresses to), replay10k
#            (one client replays 10,000 realistic 300 B durable events, since=0); gzip-<same> for
#            any SSE gateway scenario: the streams (and replays) send Accept-Encoding: gzip (e.g.
#            gzip-fanout50-300, gzip-bytes-2k, gzip-replay10k, cluster-gzip-fanout50).
# Never touches a shared Redis: each run starts its own redis-server on a free port. The server
# processes measured are found from the listening port (the gateway; nginx master + workers).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR=${BIN_DIR:-$ROOT/target/release}
RUNS=${RUNS:-3}
OUT=${OUT:-$ROOT/bench/results}
# Extra arguments for every bench run, e.g. BENCH_ARGS="--threads 2 --mode shards".
BENCH_ARGS=${BENCH_ARGS:-}
# Extra environment for every gateway, e.g. GATEWAY_ENV="GATEWAY__COMPRESSION__MIN_BYTES=0" (the
# bench's events, ~140 B with the default --pad 64, are under compression.min_bytes, so wsz- runs
# negotiate permessage-deflate but get them uncompressed unless this or a larger --pad says so;
# likewise gzip- runs get events whose SSE frame is under 256 B, bytes-200's included, as stored
# blocks).
read -r -a GATEWAY_ENV_ARGS <<<"${GATEWAY_ENV:-}"
SECRET=bench-secret-not-for-production-0123456789
mkdir -p "$OUT"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # wait_for <seconds> <command...>
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then echo "timed out waiting for: $*" >&2; return 1; fi
        sleep 0.1
    done
}

start_redis() {
    REDIS_PORT=$(free_port)
    REDIS_DIR=$(mktemp -d /tmp/egb-redis.XXXXXX)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$REDIS_DIR" \
        --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log"
    wait_for 10 redis-cli -p "$REDIS_PORT" ping
    wait_for 5 test -s "$REDIS_DIR/redis.pid"
    REDIS_PID=$(cat "$REDIS_DIR/redis.pid")
}

stop_redis() {
    kill "$REDIS_PID" 2>/dev/null || true
    wait_for 10 sh -c "! kill -0 $REDIS_PID" || kill -KILL "$REDIS_PID" 2>/dev/null || true
    rm -rf "$REDIS_DIR"
}

# A Redis Cluster of 3 primaries and 3 replicas on free ports (cluster-* scenarios).
start_cluster() {
    CLUSTER_DIR=$(mktemp -d /tmp/egb-cluster.XXXXXX)
    CLUSTER_PORTS=()
    local nodes=() port
    while ((${#CLUSTER_PORTS[@]} < 6)); do
        port=$(free_port)
        ((port < 55000)) || continue
        CLUSTER_PORTS+=("$port")
        mkdir -p "$CLUSTER_DIR/$port"
        redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes --cluster-node-timeout 2000 \
            --save "" --appendonly no --repl-diskless-sync-delay 0 --dir "$CLUSTER_DIR/$port" \
            --daemonize yes --pidfile "$CLUSTER_DIR/$port/redis.pid" --logfile "$CLUSTER_DIR/$port/redis.log"
        nodes+=("127.0.0.1:$port")
    done
    for port in "${CLUSTER_PORTS[@]}"; do wait_for 10 redis-cli -p "$port" ping; done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
    for port in "${CLUSTER_PORTS[@]}"; do
        wait_for 20 sh -c "redis-cli -p $port cluster info | grep -q cluster_state:ok"
    done
    REDIS_URL=$(printf 'redis://127.0.0.1:%s,' "${CLUSTER_PORTS[@]}"); REDIS_URL=${REDIS_URL%,}
    REDIS_PID_ARGS=""
    for port in "${CLUSTER_PORTS[@]}"; do
        if redis-cli -p "$port" role | head -1 | grep -q master; then
            REDIS_PID_ARGS="$REDIS_PID_ARGS --redis-pid $(cat "$CLUSTER_DIR/$port/redis.pid")"
        fi
    done
}

stop_cluster() {
    local port
    for port in "${CLUSTER_PORTS[@]}"; do
        kill "$(cat "$CLUSTER_DIR/$port/redis.pid")" 2>/dev/null || true
    done
    sleep 0.5
    rm -rf "$CLUSTER_DIR"
}

start_gateway() { # start_gateway [extra env assignments...]
    SERVER_PORT=$(free_port)
    GATEWAY_LOG=$(mktemp /tmp/egb-gateway.XXXXXX.log)
    env "$@" "${GATEWAY_ENV_ARGS[@]}" GATEWAY__SERVER__HOST=127.0.0.1 "GATEWAY__SERVER__PORT=$SERVER_PORT" \
        "GATEWAY__AUTH__JWT_SECRET=$SECRET" "GATEWAY__REDIS__URL=${REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}" \
        GATEWAY__LOG__FORMAT=json GATEWAY__LOG__LEVEL=warn \
        "$BIN_DIR/event-gateway" serve >"$GATEWAY_LOG" 2>&1 &
    SERVER_PID=$!
    wait_for 20 curl -sf "http://127.0.0.1:$SERVER_PORT/readyz"
}

stop_gateway() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    # Keep the gateway's log (warnings and errors only) beside the results.
    cat "$GATEWAY_LOG" >>"$OUT/gateway.log"
    rm -f "$GATEWAY_LOG"
}

start_nchan() {
    SERVER_PORT=$(free_port)
    NCHAN_DIR=$(mktemp -d /tmp/egb-nchan.XXXXXX)
    mkdir -p "$NCHAN_DIR/tmp"
    sed -e "s|@PORT@|$SERVER_PORT|" -e "s|@REDIS_URL@|redis://127.0.0.1:$REDIS_PORT|" \
        "$ROOT/bench/nchan/nginx.conf.template" >"$NCHAN_DIR/nginx.conf"
    nginx -p "$NCHAN_DIR" -c "$NCHAN_DIR/nginx.conf"
    wait_for 10 test -s "$NCHAN_DIR/nginx.pid"
    wait_for 10 curl -s -o /dev/null "http://127.0.0.1:$SERVER_PORT/"
    SERVER_PID=$(cat "$NCHAN_DIR/nginx.pid")
}

stop_nchan() {
    # A graceful QUIT can wait a long time on Nchan's subscribers; TERM is nginx's fast stop.
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait_for 15 sh -c "! kill -0 $SERVER_PID" || kill -KILL "$SERVER_PID" 2>/dev/null || true
    rm -rf "$NCHAN_DIR"
}

# The floor: a bare socket pump (no framework, no JWT, no policy) on the first org's channel.
start_pump() {
    SERVER_PORT=$(free_port)
    "$BIN_DIR/event-gateway-pump" --port "$SERVER_PORT" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
        --channel events:org:bench-o0 --lifetime 900 &
    SERVER_PID=$!
    wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SERVER_PORT"
}

stop_pump() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

# The arguments of each scenario (the server's own flags are added by run_one).
scenario_args() {
    case "$1" in
        idle10k) echo "-n 10000 --ramp 2000 --max-inflight 512 --settle 3" ;;
        fanout50) echo "-n 2000 --orgs 1 --roles ops --rate 50 --duration 20" ;;
        fanout200) echo "-n 2000 --orgs 1 --roles ops --rate 200 --duration 20" ;;
        fanout800) echo "-n 2000 --orgs 1 --roles ops --rate 800 --duration 15" ;;
        filtered) echo "-n 2000 --orgs 100 --roles mixed --rate 1000 --duration 20" ;;
        # The filtered layout with every stream `ops` (20 deliveries per event, as Nchan delivers).
        filtered-ops) echo "-n 2000 --orgs 100 --roles ops --rate 1000 --duration 20" ;;
        durable50) echo "-n 2000 --orgs 1 --roles ops --rate 50 --duration 20 --via function" ;;
        durable200) echo "-n 2000 --orgs 1 --roles ops --rate 200 --duration 20 --via function" ;;
        durable-filtered) echo "-n 2000 --orgs 100 --roles mixed --rate 1000 --duration 20 --via function" ;;
        # Durable events over many orgs, every stream ops: where the work of Redis is the Function.
        durable-orgs) echo "-n 2000 --orgs 100 --roles ops --rate 1000 --duration 20 --via function" ;;
        http50) echo "-n 2000 --orgs 1 --roles ops --rate 50 --duration 20 --via http" ;;
        # 20 clients replay 5,000 events of 8 KB (since=0) while 200 streams take 20 live ev/s.
        replay-storm) echo "-n 200 --orgs 1 --roles ops --rate 20 --duration 30 --replayers 20 --history 5000 --history-pad 8192" ;;
        # Compression: realistic events (varied ticket fields), identity or gzip- streams.
        fanout50-300) echo "-n 2000 --orgs 1 --roles ops --rate 50 --duration 20 --shape realistic --event-bytes 300" ;;
        # Bytes per delivered event: few streams suffice.
        bytes-200) echo "-n 20 --orgs 1 --roles ops --rate 50 --duration 10 --shape realistic --event-bytes 200" ;;
        bytes-300) echo "-n 20 --orgs 1 --roles ops --rate 50 --duration 10 --shape realistic --event-bytes 300" ;;
        bytes-2k) echo "-n 20 --orgs 1 --roles ops --rate 50 --duration 10 --shape realistic --event-bytes 2048" ;;
        bytes-pad300) echo "-n 20 --orgs 1 --roles ops --rate 50 --duration 10 --shape pad --event-bytes 300" ;;
        # One client replays 10,000 durable 300 B events from since=0 (the gateway's default
        # history.max_events_per_org keeps exactly 10,000); one idle live stream.
        replay10k) echo "-n 1 --orgs 1 --roles ops --rate 0 --replayers 1 --history 10000 --shape realistic --history-bytes 300 --replay-timeout 60" ;;
        *) echo "unknown scenario $1" >&2; return 1 ;;
    esac
}

run_one() { # run_one <scenario> <run number>
    local scenario=$1 run=$2 base=${1#nchan-} args redis_args transport_args=""
    base=${base#pump-}
    base=${base#cluster-}
    case $base in
        ws-*) base=${base#ws-}; transport_args="--transport ws" ;;
        wsz-*) base=${base#wsz-}; transport_args="--transport ws --ws-deflate" ;;
        gzip-*) base=${base#gzip-}; transport_args="--accept-encoding gzip" ;;
    esac
    if [[ -n $transport_args && ($scenario == nchan-* || $scenario == pump-*) ]]; then
        echo "$scenario: Nchan and the pump are measured over identity SSE only" >&2; return 1
    fi
    if [[ $transport_args == --transport* && $base == replay* ]]; then
        echo "$scenario: the replaying clients speak SSE only" >&2; return 1
    fi
    args="$(scenario_args "$base") $transport_args"
    if [[ $scenario == cluster-* ]]; then
        start_cluster
        start_gateway GATEWAY__REDIS__CLUSTER=true
        args="$args --secret $SECRET --redis-cluster"
        redis_args="--redis-url $REDIS_URL $REDIS_PID_ARGS"
    else
        start_redis
        redis_args="--redis-url redis://127.0.0.1:$REDIS_PORT --redis-pid $REDIS_PID"
    fi
    if [[ $scenario == cluster-* ]]; then
        :
    elif [[ $scenario == nchan-* ]]; then
        start_nchan
        args="$args --target nchan --via nchan"
    elif [[ $scenario == pump-* ]]; then
        start_pump
        args="$args --target nchan --via publish"
    else
        start_gateway
        args="$args --secret $SECRET"
    fi
    echo "### $scenario run $run: $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/$scenario.log"
    # shellcheck disable=SC2086
    "$BIN_DIR/event-gateway-bench" --url "http://127.0.0.1:$SERVER_PORT" $redis_args \
        --label "$scenario#$run" $args $BENCH_ARGS 2>&1 | tee -a "$OUT/$scenario.log" |
        grep '^BENCH_JSON ' | sed 's/^BENCH_JSON //' >>"$OUT/$scenario.jsonl" || true
    if [[ $scenario == nchan-* ]]; then stop_nchan; elif [[ $scenario == pump-* ]]; then stop_pump; else stop_gateway; fi
    if [[ $scenario == cluster-* ]]; then stop_cluster; unset REDIS_URL; else stop_redis; fi
}

# nginx + Nchan from Debian's packages, installed when an nchan-* scenario needs them; the
# package's own nginx service is stopped (the runs start their own nginx).
ensure_nchan() {
    [[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]] && command -v nginx >/dev/null && return
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q nginx-light libnginx-mod-nchan
    $sudo service nginx stop 2>/dev/null || $sudo pkill -f "nginx: master" || true
}
if [[ " $* " == *" nchan-"* ]]; then ensure_nchan; fi

for scenario in "$@"; do
    for run in $(seq 1 "$RUNS"); do
        run_one "$scenario" "$run"
    done
done
