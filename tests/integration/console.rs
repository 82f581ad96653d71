//! `GET /console` (docs/protocol.md §7): the page, its headers, the switch, and the page itself
//! driven in headless Chromium (tests/browser/console.mjs, playwright-core; `.ci/run` installs
//! Debian's chromium and the npm package).

use std::path::Path;

use reqwest::StatusCode;

use crate::common::gateway::{spawn_gateway, GatewayOptions};
use crate::common::http::{assert_error, send};
use crate::common::token::{ops, service};
use crate::common::within;

#[tokio::test]
async fn the_console_is_one_page_that_may_talk_to_this_gateway_only() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    let response = send(gateway.http().get(gateway.url("/console"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert!(header("content-type").starts_with("text/html"));
    let policy = header("content-security-policy");
    assert!(
        policy.contains("connect-src 'self'") && policy.contains("default-src 'none'"),
        "{policy}"
    );
    let page = response.text().await.expect("the page");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external asset"
    );
}

#[tokio::test]
async fn console_enabled_false_serves_no_page() {
    let gateway = spawn_gateway(GatewayOptions::embedded().env("GATEWAY__CONSOLE__ENABLED", "false")).await;
    let response = send(gateway.http().get(gateway.url("/console"))).await;
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn in_a_browser_the_console_streams_publishes_filters_and_counts_connections() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/console.mjs");
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules");
    assert!(
        modules.join("playwright-core").is_dir() && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Debian's chromium and `npm ci --prefix tests/browser` (.ci/run installs both)"
    );
    let org = "org-1";
    let mut command = tokio::process::Command::new("node");
    command
        .arg(&script)
        .arg(gateway.base_url())
        .arg(ops("olivia", org))
        .arg(service(&[org]))
        .arg(org)
        .kill_on_drop(true);
    let output = within(
        std::time::Duration::from_secs(90),
        "the console's browser test",
        command.output(),
    )
    .await
    .expect("running node");
    assert!(
        output.status.success(),
        "the console in Chromium:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A gateway that generated its own secret (none configured): the console may mint tokens.
async fn spawn_demo_gateway() -> crate::common::gateway::Gateway {
    spawn_gateway(GatewayOptions::embedded().env("GATEWAY__AUTH__JWT_SECRET", "")).await
}

async fn mint(gateway: &crate::common::gateway::Gateway, body: serde_json::Value) -> reqwest::Response {
    send(gateway.http().post(gateway.url("/console/token")).json(&body)).await
}

#[tokio::test]
async fn with_a_generated_secret_the_console_mints_tokens_the_gateway_accepts() {
    let gateway = spawn_demo_gateway().await;
    let response = mint(
        &gateway,
        serde_json::json!({"sub": "dev", "role": "ops", "orgs": ["demo-org"]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.expect("JSON");
    let token = body["token"].as_str().expect("a token");
    let mut stream = gateway.connect(token, "").await;
    assert_eq!(stream.expect_connected().await["userId"], "dev");
}

#[tokio::test]
async fn with_a_configured_secret_no_token_is_minted() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    let response = mint(
        &gateway,
        serde_json::json!({"sub": "dev", "role": "ops", "orgs": ["demo-org"]}),
    )
    .await;
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn a_dev_token_for_a_role_the_policy_does_not_know_is_refused() {
    let gateway = spawn_demo_gateway().await;
    let response = mint(
        &gateway,
        serde_json::json!({"sub": "dev", "role": "admin", "orgs": ["demo-org"]}),
    )
    .await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_body").await;
}
