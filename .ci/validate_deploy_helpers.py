#!/usr/bin/env python3
"""Helpers of .ci/validate-deploy.sh, run in its tools venv.

  chart-lint CHART VALUES...          helm lint --strict (Helm's Go SDK via helm-python-sdk)
  chart-render CHART VALUES OUTDIR    helm template: one file per manifest under OUTDIR
  chart-must-fail CHART VALUES TEXT   rendering must fail with an error containing TEXT
  compose-assert COMPOSE_JSON         the topology the issue asks for, on `docker compose config`
  configmap-toml MANIFEST OUT         extracts config.toml from the rendered ConfigMap
  compose-service-script COMPOSE_JSON SERVICE OUT [KEY=VALUE...]
                                      a shell script running SERVICE's command with its
                                      environment (overridden by KEY=VALUE), as the container would
"""

import json
import os
import sys

import yaml


def load_values(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def chart_lint(chart, *values_files):
    import helm_python as helm

    failed = False
    for values_file in values_files:
        report = helm.lint(chart, load_values(values_file), strict=True, namespace="events")
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        problems += [{"severity": 3, "path": "", "error": e} for e in report.get("errors") or []]
        infos = [m for m in report.get("messages", []) if m.get("severity", 0) < 2]
        for message in problems:
            print(f"  lint {values_file}: {message['path']}: {message['error']}")
        for message in infos:
            print(f"  lint {values_file} (info): {message['path']}: {message['error']}")
        if problems:
            failed = True
        else:
            print(f"  helm lint --strict with {values_file}: ok ({helm.helm_sdk_version()})")
    return 1 if failed else 0


def chart_render(chart, values_file, outdir):
    import helm_python as helm

    os.makedirs(outdir, exist_ok=True)
    with helm.Chart.load(chart) as loaded:
        loaded.validate_schema(load_values(values_file))
        manifests = loaded.render(
            load_values(values_file), name="eg", namespace="events", is_install=True
        )
    count = 0
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")) or not text.strip():
            continue
        for document in yaml.safe_load_all(text):
            if not document:
                continue
            count += 1
            kind = document["kind"]
            name = document["metadata"]["name"]
            with open(os.path.join(outdir, f"{count:02d}-{kind}-{name}.yaml"), "w") as f:
                yaml.safe_dump(document, f, sort_keys=False)
    print(f"  rendered {count} manifests with {values_file} into {outdir}")
    return 0 if count else 1


def chart_must_fail(chart, values_file, text):
    import helm_python as helm

    try:
        with helm.Chart.load(chart) as loaded:
            loaded.render(load_values(values_file), name="eg", namespace="events", is_install=True)
    except helm.HelmError as error:
        if text in str(error):
            print(f"  rejected as expected ({values_file}): ...{text}...")
            return 0
        print(f"  failed, but not with '{text}': {error}")
        return 1
    print(f"  rendering with {values_file} should have failed ({text})")
    return 1


def compose_assert(path):
    with open(path) as f:
        config = json.load(f)
    services = config["services"]
    problems = []
    gateways = {n: s for n, s in services.items() if n.startswith("gw")}
    if len(gateways) != 3:
        problems.append(f"want three gateway replicas, found {sorted(gateways)}")
    names = {s["environment"].get("GATEWAY__SERVER__REPLICA_NAME") for s in gateways.values()}
    if len(names) != len(gateways) or None in names:
        problems.append(f"replica names must be distinct: {names}")
    secrets = {s["environment"].get("GATEWAY__AUTH__JWT_SECRET") for s in gateways.values()}
    if len(secrets) != 1 or None in secrets:
        problems.append("the replicas must share one GATEWAY__AUTH__JWT_SECRET")
    for name, service in gateways.items():
        env = service["environment"]
        if env.get("GATEWAY__REDIS__URL") != "redis://redis:6379":
            problems.append(f"{name}: GATEWAY__REDIS__URL is {env.get('GATEWAY__REDIS__URL')}")
        if "healthcheck" not in service or "event-gateway" not in service["healthcheck"]["test"]:
            problems.append(f"{name}: no healthcheck through the binary")
        if "build" not in service:
            problems.append(f"{name}: not built from the Dockerfile")
    redis = services.get("redis", {})
    command = " ".join(redis.get("command") or [])
    if "--appendonly yes" not in command:
        problems.append("redis must run with --appendonly yes")
    if not any(v.get("target") == "/data" for v in redis.get("volumes", [])):
        problems.append("redis /data must be a volume")
    lb = services.get("lb", {})
    if not any(
        v.get("source", "").endswith("deploy/nginx/generated/compose.conf")
        and v.get("target") == "/etc/nginx/nginx.conf"
        for v in lb.get("volumes", [])
    ):
        problems.append("lb must mount deploy/nginx/generated/compose.conf as /etc/nginx/nginx.conf")
    if not lb.get("ports"):
        problems.append("lb publishes no port")
    publisher = services.get("demo-publisher", {})
    if publisher.get("restart") not in (None, "no"):
        problems.append("demo-publisher must be one-shot (restart: no)")
    if "event-gateway publish" not in " ".join(publisher.get("command") or []):
        problems.append("demo-publisher must publish with `event-gateway publish`")
    for problem in problems:
        print(f"  compose: {problem}")
    if not problems:
        print(
            f"  compose topology: redis (AOF) + {len(gateways)} replicas {sorted(names)} + lb + "
            "demo-publisher: ok"
        )
    return 1 if problems else 0


def configmap_toml(manifest_dir, out):
    for name in sorted(os.listdir(manifest_dir)):
        with open(os.path.join(manifest_dir, name)) as f:
            document = yaml.safe_load(f)
        if document.get("kind") == "ConfigMap":
            with open(out, "w") as f:
                f.write(document["data"]["config.toml"])
            return 0
    print("  no ConfigMap rendered")
    return 1


def shell_quote(value):
    return "'" + str(value).replace("'", "'\\''") + "'"


def compose_service_script(path, service, out, *overrides):
    with open(path) as f:
        definition = json.load(f)["services"][service]
    environment = dict(definition.get("environment") or {})
    environment.update(dict(item.split("=", 1) for item in overrides))
    # `docker compose config` keeps the $$ escapes; the container sees a single $.
    unescape = lambda text: text.replace("$$", "$")  # noqa: E731
    argv = [unescape(a) for a in (definition.get("entrypoint") or []) + (definition.get("command") or [])]
    lines = ["#!/bin/sh", "set -e"]
    lines += [f"export {key}={shell_quote(value)}" for key, value in sorted(environment.items())]
    lines.append("exec " + " ".join(shell_quote(a) for a in argv))
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(out, 0o755)
    return 0


COMMANDS = {
    "compose-service-script": compose_service_script,
    "chart-lint": chart_lint,
    "chart-render": chart_render,
    "chart-must-fail": chart_must_fail,
    "compose-assert": compose_assert,
    "configmap-toml": configmap_toml,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]](*sys.argv[2:]))
