//! `GET /openapi.json` (docs/protocol.md §12): the document, and a schema-driven fuzzer
//! (schemathesis, from PyPI; `.ci/run` installs it) run against the live gateway: every answer
//! matches the document, no 5xx, refusals are the documented ones.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::gateway::{spawn_gateway, Gateway, GatewayOptions};
use crate::common::http::send;
use crate::common::token::{ops, service};

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    let response = send(gateway.http().get(gateway.url("/openapi.json"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = response.json().await.expect("JSON");
    assert_eq!(document["openapi"], "3.1.0");
    let mut paths: Vec<&str> = document["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/api/connections",
            "/api/events",
            "/api/events/ack",
            "/api/publish",
            "/api/ws",
            "/console",
            "/console/token",
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/readyz"
        ]
    );
}

/// Runs schemathesis against `gateway` with `token`, over the operations `selection` picks.
async fn fuzz(gateway: &Gateway, token: &str, selection: &[&str]) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    // Run outside the checkout: schemathesis keeps a cache in its working directory.
    let output = tokio::process::Command::new("schemathesis")
        .current_dir(std::env::temp_dir())
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(gateway.url("/openapi.json"))
        .args([
            "--checks",
            "all",
            "--max-examples",
            "15",
            "--request-timeout",
            "5",
        ])
        .args(["--generation-deterministic", "--no-color"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(selection)
        .output()
        .await
        .expect("running schemathesis (pip install schemathesis; .ci/run does)");
    assert!(
        output.status.success(),
        "schemathesis found answers that do not match the document:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_fuzzer_finds_every_answer_as_documented_for_a_subscriber() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    // The streams never end, so they are not fuzzed with a token that may open them (their
    // refusals are tested elsewhere, and the WebSocket's with the publisher's token below).
    let selection = [
        "--exclude-path",
        "/api/events",
        "--exclude-path",
        "/api/ws",
        "--exclude-path",
        "/api/publish",
    ];
    fuzz(&gateway, &ops("olivia", "org-1"), &selection).await;
}

#[tokio::test]
async fn the_fuzzer_finds_every_publish_answer_as_documented_for_a_publisher() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    // A publisher may not subscribe: every WebSocket handshake it sends is refused.
    fuzz(
        &gateway,
        &service(&["org-1"]),
        &["--include-path", "/api/publish", "--include-path", "/api/ws"],
    )
    .await;
}

#[tokio::test]
async fn a_method_an_endpoint_does_not_answer_is_405_with_the_allow_header() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/api/publish", "POST"),
        (reqwest::Method::POST, "/healthz", "GET"),
    ] {
        let response = send(gateway.http().request(method.clone(), gateway.url(path))).await;
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(
            response.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
    }
}
