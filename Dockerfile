# syntax=docker/dockerfile:1
# event-gateway container image.
#
#   docker build -t event-gateway .
#   docker run --rm -p 8080:8080 -e GATEWAY__REDIS__URL=redis://redis:6379 \
#     -e GATEWAY__AUTH__JWT_SECRET=... event-gateway
#
# Stages: `chef` (Rust toolchain + cargo-chef), `planner` (dependency recipe from the manifests),
# `builder` (dependencies compiled in their own layer, rebuilt only when Cargo.toml/Cargo.lock
# change; then the crate itself), `runtime` (Debian slim, non-root, the binary and config/).
#
# Configuration: /app/config/default.toml (the repository's config/) is read from the working
# directory /app; mount another file and name it with GATEWAY_CONFIG=/path or --config, and
# override any key with GATEWAY__SECTION__KEY environment variables.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG CARGO_CHEF_VERSION=0.1.78

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Crates patched in from vendor/ ([patch.crates-io] paths) are dependencies, not workspace
# members, so the recipe does not carry them: they must be real sources for the cook step.
COPY vendor/ vendor/
# The dependency layer: cached until the manifests (or vendor/) change.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin event-gateway
COPY . .
RUN cargo build --release --locked --bin event-gateway \
 && install -D -m 0755 target/release/event-gateway /out/event-gateway

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates is left unpinned on purpose: the slim base is rebuilt for security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin gateway
WORKDIR /app
COPY --from=builder /out/event-gateway /usr/local/bin/event-gateway
COPY config/ /app/config/
# Numeric so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8080
# The gateway drains on SIGTERM: readyz 503, every stream told to reconnect elsewhere, exit 0
# within server.shutdown_timeout_secs (10 s): give the container more than that to stop
# (docker stop -t 15, compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Liveness only (GET /healthz on the configured port): a Redis outage makes /readyz fail, but it
# must not get every replica restarted; use `healthcheck --ready` where readiness is wanted.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["event-gateway", "healthcheck"]
ENTRYPOINT ["event-gateway"]
CMD ["serve"]
