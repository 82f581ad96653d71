//! Test scripts of tests/browser run in Node (the npm clients, or Chromium through
//! playwright-core) against a gateway: each prints one `result: <JSON>` line of what its client
//! saw, and the Rust tests hold that to the contract.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use super::gateway::Gateway;
use super::token::{ops, service};
use super::within;

/// A script fails itself past this (closing its browser first), read from `SCRIPT_DEADLINE_MS`...
const SCRIPT_DEADLINE: Duration = Duration::from_secs(60);
/// ...and is killed past this, should it not.
const KILL_DEADLINE: Duration = Duration::from_secs(90);

/// Runs `tests/browser/<script> <scenario> <base url> <ops token> <service token> <org>` and
/// returns its `result:` line, failing with its output (and the gateway's logs) unless it
/// exited 0. `modules`: the npm packages it needs; `browser`: it drives Chromium.
pub async fn run_script(
    gateway: &Gateway,
    script: &str,
    modules: &[&str],
    browser: bool,
    scenario: &str,
    org: &str,
) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    for module in modules {
        assert!(
            dir.join("node_modules").join(module).is_dir(),
            "{script} needs `npm ci --prefix tests/browser` (.ci/run runs it): no {module}"
        );
    }
    assert!(
        !browser || Path::new("/usr/bin/chromium").exists(),
        "{script} {scenario} needs Debian's chromium (.ci/run installs it)"
    );
    let mut command = tokio::process::Command::new("node");
    command
        .arg(dir.join(script))
        .arg(scenario)
        .arg(gateway.base_url())
        .arg(ops("olivia", org))
        .arg(service(&[org]))
        .arg(org)
        .env("SCRIPT_DEADLINE_MS", SCRIPT_DEADLINE.as_millis().to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = within(
        KILL_DEADLINE,
        &format!("node {script} {scenario}"),
        command.output(),
    )
    .await
    .expect("running node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} {scenario} ({}):\n{stdout}{stderr}\nthe gateway's logs:\n{}",
        output.status,
        gateway.logs()
    );
    let result = stdout
        .lines()
        .find_map(|line| line.strip_prefix("result: "))
        .unwrap_or_else(|| panic!("{script} {scenario} printed no result:\n{stdout}"));
    serde_json::from_str(result).expect("the result line is JSON")
}
