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
