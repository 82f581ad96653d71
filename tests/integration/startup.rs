//! protocol §1: configuration layering and refusal of bad configuration, the default subcommand,
//! and the first-run experience without a configured secret.

use std::io::Write;

use crate::common::gateway::{expect_startup_failure, spawn_gateway, GatewayOptions};
use crate::common::http::send;
use crate::common::redis_server::RedisServer;
use crate::common::sse::SseClient;
use crate::common::token::TokenBuilder;

fn config_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("creating a temporary config file");
    file.write_all(contents.as_bytes())
        .expect("writing the config file");
    file
}

fn path_of(file: &tempfile::NamedTempFile) -> &str {
    file.path().to_str().expect("a UTF-8 temp path")
}

async fn keepalive_secs_of(gateway: &crate::common::gateway::Gateway) -> serde_json::Value {
    let token = TokenBuilder::new("olivia", "ops").org("org-1").sign();
    gateway.connect(&token, "").await.expect_connected().await["keepaliveSecs"].clone()
}

#[tokio::test]
async fn unknown_setting_stops_startup_naming_the_key() {
    let (status, output) = expect_startup_failure(&[("GATEWAY__SSE__KEEPALIVE_SECONDZ", "5")]).await;
    assert!(!status.success());
    assert!(
        output.to_lowercase().contains("keepalive_secondz"),
        "the message must name the unknown key:\n{output}"
    );
}

#[tokio::test]
async fn an_unknown_setting_from_the_environment_is_named_by_its_variable_once() {
    let (status, output) = expect_startup_failure(&[("GATEWAY__SERVER__PROT", "9000")]).await;
    assert!(!status.success());
    assert!(
        output.contains("GATEWAY__SERVER__PROT"),
        "names the variable:\n{output}"
    );
    assert_eq!(
        output.matches("unknown field").count(),
        1,
        "says it once:\n{output}"
    );
}

#[tokio::test]
async fn a_variable_with_single_underscores_is_reported_as_not_read() {
    let gateway = spawn_gateway(GatewayOptions::embedded().env("GATEWAY_SERVER_PORT", "9000")).await;
    let logs = gateway.logs();
    assert!(
        logs.contains("GATEWAY_SERVER_PORT") && logs.contains("not read"),
        "warns about the ignored variable:\n{logs}"
    );
}

#[tokio::test]
async fn a_default_start_warns_about_nothing() {
    let gateway = spawn_gateway(GatewayOptions::embedded()).await;
    let warnings: Vec<String> = gateway
        .logs()
        .lines()
        .filter(|line| line.contains("\"level\":\"WARN\""))
        .map(str::to_string)
        .collect();
    assert!(
        warnings.is_empty(),
        "a default start logged warnings: {warnings:?}"
    );
}

#[tokio::test]
async fn invalid_value_stops_startup_naming_the_key() {
    let (status, output) = expect_startup_failure(&[("GATEWAY__SSE__KEEPALIVE_SECS", "soon")]).await;
    assert!(!status.success());
    assert!(
        output.to_lowercase().contains("keepalive_secs"),
        "the message must name the invalid key:\n{output}"
    );
}

#[tokio::test]
async fn config_flag_file_overrides_the_defaults() {
    let redis = RedisServer::start().await;
    let file = config_file("[sse]\nkeepalive_secs = 7\n");
    let gateway = spawn_gateway(GatewayOptions::new(&redis).arg("--config").arg(path_of(&file))).await;
    assert_eq!(keepalive_secs_of(&gateway).await, 7);
}

#[tokio::test]
async fn gateway_config_variable_names_the_config_file() {
    let redis = RedisServer::start().await;
    let file = config_file("[sse]\nkeepalive_secs = 7\n");
    let gateway = spawn_gateway(GatewayOptions::new(&redis).env("GATEWAY_CONFIG", path_of(&file))).await;
    assert_eq!(keepalive_secs_of(&gateway).await, 7);
}

#[tokio::test]
async fn environment_overrides_the_config_file() {
    let redis = RedisServer::start().await;
    let file = config_file("[sse]\nkeepalive_secs = 7\n");
    let gateway = spawn_gateway(
        GatewayOptions::new(&redis)
            .arg("--config")
            .arg(path_of(&file))
            .env("GATEWAY__SSE__KEEPALIVE_SECS", "9"),
    )
    .await;
    assert_eq!(keepalive_secs_of(&gateway).await, 9);
}

#[tokio::test]
async fn no_subcommand_with_config_serves_like_serve() {
    let redis = RedisServer::start().await;
    let file = config_file("[sse]\nkeepalive_secs = 7\n");
    let gateway = spawn_gateway(
        GatewayOptions::new(&redis)
            .without_subcommand()
            .arg("--config")
            .arg(path_of(&file)),
    )
    .await;
    assert_eq!(keepalive_secs_of(&gateway).await, 7);
}

/// Every JWT-looking word in `text` (three base64url segments starting with `eyJ`).
fn jwts_in(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .filter(|word| word.starts_with("eyJ") && word.split('.').count() == 3)
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn without_a_secret_the_gateway_prints_a_working_ops_token_and_no_fixed_secret_works() {
    let redis = RedisServer::start().await;
    let gateway = spawn_gateway(GatewayOptions::new(&redis).env("GATEWAY__AUTH__JWT_SECRET", "")).await;
    let guessable = ["", "secret", "changeme", "dev-secret", "event-gateway"];
    for secret in guessable {
        let forged = TokenBuilder::new("eve", "ops").org("org-1").secret(secret).sign();
        let response = send(gateway.events_request("").bearer_auth(forged)).await;
        assert_eq!(
            response.status(),
            401,
            "a token signed with {secret:?} was accepted"
        );
    }

    let mut ops_streams = 0;
    for token in jwts_in(&gateway.logs()) {
        let response = send(gateway.events_request("").bearer_auth(&token)).await;
        if response.status() == 200 {
            let mut client = SseClient::from_response(response);
            if client.expect_connected().await["role"] == "ops" {
                ops_streams += 1;
            }
        }
    }
    assert!(
        ops_streams >= 1,
        "the start-up output must include a sample command with a working ops token:\n{}",
        gateway.logs()
    );
}
