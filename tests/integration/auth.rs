//! protocol §2: how a client presents its JWT, which tokens are refused (401, with the exact
//! error code and a Bearer challenge), which roles may not subscribe (403), and the
//! `event-gateway token` subcommand.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::header::COOKIE;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::common::gateway::run_cli;
use crate::common::http::{assert_bearer_challenge, assert_error, assert_error_status, send};
use crate::common::sse::SseClient;
use crate::common::token::{now_secs, TokenBuilder, TEST_SECRET};
use crate::common::{spawn_app, spawn_app_with, TestApp};

const ORG: &str = "org-1";

/// A valid `ops` token for `sub` in `ORG`; tests break one thing about it at a time.
fn valid(sub: &str) -> TokenBuilder {
    TokenBuilder::new(sub, "ops").org(ORG)
}

async fn subscribe_with(app: &TestApp, token: &str) -> Response {
    send(app.events_request("").bearer_auth(token)).await
}

async fn assert_unauthorized(app: &TestApp, token: &str, code: &str) {
    assert_error(subscribe_with(app, token).await, StatusCode::UNAUTHORIZED, code).await;
}

// --- Where the token comes from -------------------------------------------------------------

#[tokio::test]
async fn token_in_authorization_header_opens_a_stream() {
    let app = spawn_app().await;
    let mut alice = app.connect(&valid("alice").sign(), "").await;
    assert_eq!(alice.expect_connected().await["userId"], "alice");
}

#[tokio::test]
async fn token_in_access_token_cookie_opens_a_stream() {
    let app = spawn_app().await;
    let request = app.events_request("").header(
        COOKIE,
        format!("theme=dark; access_token={}", valid("alice").sign()),
    );
    let mut alice = SseClient::open(request).await;
    assert_eq!(alice.expect_connected().await["userId"], "alice");
}

#[tokio::test]
async fn token_cookie_name_follows_auth_cookie_name() {
    let app = spawn_app_with(|options| options.env("GATEWAY__AUTH__COOKIE_NAME", "session")).await;
    let request = app
        .events_request("")
        .header(COOKIE, format!("session={}", valid("alice").sign()));
    let mut alice = SseClient::open(request).await;
    assert_eq!(alice.expect_connected().await["userId"], "alice");
}

#[tokio::test]
async fn token_in_access_token_query_parameter_opens_a_stream() {
    let app = spawn_app().await;
    let query = format!("access_token={}", valid("alice").sign());
    let mut alice = SseClient::open(app.events_request(&query)).await;
    assert_eq!(alice.expect_connected().await["userId"], "alice");
}

#[tokio::test]
async fn authorization_header_wins_over_cookie_and_query_parameter() {
    let app = spawn_app().await;
    let query = format!("access_token={}", valid("from-query").sign());
    let request = app
        .events_request(&query)
        .bearer_auth(valid("from-header").sign())
        .header(COOKIE, format!("access_token={}", valid("from-cookie").sign()));
    let mut client = SseClient::open(request).await;
    assert_eq!(client.expect_connected().await["userId"], "from-header");
}

#[tokio::test]
async fn cookie_wins_over_query_parameter() {
    let app = spawn_app().await;
    let query = format!("access_token={}", valid("from-query").sign());
    let request = app
        .events_request(&query)
        .header(COOKIE, format!("access_token={}", valid("from-cookie").sign()));
    let mut client = SseClient::open(request).await;
    assert_eq!(client.expect_connected().await["userId"], "from-cookie");
}

// --- Tokens that are refused with 401 -------------------------------------------------------

#[tokio::test]
async fn request_without_token_is_401_missing_token() {
    let app = spawn_app().await;
    assert_error(
        send(app.events_request("")).await,
        StatusCode::UNAUTHORIZED,
        "missing_token",
    )
    .await;
}

#[tokio::test]
async fn token_that_is_not_a_jwt_is_401_malformed_token() {
    let app = spawn_app().await;
    for garbage in ["not-a-jwt", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.%%%.???"] {
        assert_unauthorized(&app, garbage, "malformed_token").await;
    }
}

#[tokio::test]
async fn token_signed_with_another_secret_is_401_invalid_signature() {
    let app = spawn_app().await;
    let forged = valid("mallory").secret("some-other-secret-0123456789").sign();
    assert_unauthorized(&app, &forged, "invalid_signature").await;
}

#[tokio::test]
async fn expired_token_is_401_token_expired() {
    let app = spawn_app().await;
    let expired = valid("alice").expires_in(-3600).sign();
    assert_unauthorized(&app, &expired, "token_expired").await;
}

#[tokio::test]
async fn token_expired_within_the_leeway_is_accepted() {
    let app = spawn_app().await;
    let just_expired = valid("alice").expires_in(-5).sign();
    let mut alice = app.connect(&just_expired, "").await;
    assert_eq!(alice.expect_connected().await["userId"], "alice");
}

#[tokio::test]
async fn token_without_exp_is_401() {
    let app = spawn_app().await;
    let response = subscribe_with(&app, &valid("alice").without("exp").sign()).await;
    assert_bearer_challenge(&response);
    assert_error_status(response, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn token_not_valid_before_a_future_nbf_is_401_token_not_yet_valid() {
    let app = spawn_app().await;
    let early = valid("alice").claim("nbf", json!(now_secs() + 600)).sign();
    assert_unauthorized(&app, &early, "token_not_yet_valid").await;
}

#[tokio::test]
async fn alg_none_token_is_401_algorithm_not_allowed() {
    let app = spawn_app().await;
    let unsigned = valid("mallory").unsigned_alg_none();
    assert_unauthorized(&app, &unsigned, "algorithm_not_allowed").await;
}

#[tokio::test]
async fn hs512_token_is_401_algorithm_not_allowed_when_only_hs256_is_accepted() {
    let app = spawn_app().await;
    let hs512 = valid("alice").algorithm(Algorithm::HS512).sign();
    assert_unauthorized(&app, &hs512, "algorithm_not_allowed").await;
}

#[tokio::test]
async fn hs512_token_is_accepted_when_auth_algorithms_lists_it() {
    let app = spawn_app_with(|options| options.env("GATEWAY__AUTH__ALGORITHMS", "HS256,HS512")).await;
    let hs512 = valid("alice").algorithm(Algorithm::HS512).sign();
    let mut alice = app.connect(&hs512, "").await;
    assert_eq!(alice.expect_connected().await["userId"], "alice");
}

#[tokio::test]
async fn token_without_sub_is_401_invalid_claims() {
    let app = spawn_app().await;
    assert_unauthorized(&app, &valid("alice").without("sub").sign(), "invalid_claims").await;
}

#[tokio::test]
async fn token_without_role_is_401_invalid_claims() {
    let app = spawn_app().await;
    assert_unauthorized(&app, &valid("alice").without("role").sign(), "invalid_claims").await;
}

#[tokio::test]
async fn token_without_orgs_is_401_invalid_claims() {
    let app = spawn_app().await;
    assert_unauthorized(&app, &valid("alice").without("orgs").sign(), "invalid_claims").await;
}

#[tokio::test]
async fn token_with_empty_orgs_is_401_invalid_claims() {
    let app = spawn_app().await;
    let token = valid("alice").claim("orgs", json!([])).sign();
    assert_unauthorized(&app, &token, "invalid_claims").await;
}

#[tokio::test]
async fn token_with_a_malformed_org_id_is_401_invalid_claims() {
    let app = spawn_app().await;
    let too_long = "o".repeat(65);
    for bad_org in ["", "org/1", "org 1", "org.1", "org:1", "ørg", too_long.as_str()] {
        let token = TokenBuilder::new("alice", "ops").org(ORG).org(bad_org).sign();
        let response = subscribe_with(&app, &token).await;
        assert_eq!(response.status(), 401, "org id {bad_org:?} must be refused");
        assert_error(response, StatusCode::UNAUTHORIZED, "invalid_claims").await;
    }
}

#[tokio::test]
async fn token_with_64_orgs_of_64_characters_is_accepted() {
    let app = spawn_app().await;
    let orgs: Vec<String> = (0..64).map(|i| format!("{i:0>64}")).collect();
    let token = valid("alice").claim("orgs", json!(orgs)).sign();
    let mut alice = app.connect(&token, "").await;
    assert_eq!(alice.expect_connected().await["orgs"], json!(orgs));
}

#[tokio::test]
async fn token_with_more_than_64_orgs_is_401_invalid_claims() {
    let app = spawn_app().await;
    let orgs: Vec<String> = (0..65).map(|i| format!("org-{i}")).collect();
    let token = valid("alice").claim("orgs", json!(orgs)).sign();
    assert_unauthorized(&app, &token, "invalid_claims").await;
}

#[tokio::test]
async fn org_count_limit_follows_limits_max_orgs_per_token() {
    let app = spawn_app_with(|options| options.env("GATEWAY__LIMITS__MAX_ORGS_PER_TOKEN", "2")).await;
    let three_orgs = valid("alice").org("org-2").org("org-3").sign();
    assert_unauthorized(&app, &three_orgs, "invalid_claims").await;
    let mut two_orgs = app.connect(&valid("alice").org("org-2").sign(), "").await;
    assert_eq!(two_orgs.expect_connected().await["orgs"], json!([ORG, "org-2"]));
}

// --- Issuer and audience, when configured ---------------------------------------------------

const ISSUER: &str = "https://auth.example";
const AUDIENCE: &str = "event-gateway";

async fn spawn_app_requiring_issuer_and_audience() -> TestApp {
    spawn_app_with(|options| {
        options
            .env("GATEWAY__AUTH__ISSUER", ISSUER)
            .env("GATEWAY__AUTH__AUDIENCE", AUDIENCE)
    })
    .await
}

fn with_issuer_and_audience(sub: &str) -> TokenBuilder {
    valid(sub)
        .claim("iss", json!(ISSUER))
        .claim("aud", json!(AUDIENCE))
}

#[tokio::test]
async fn token_with_the_configured_issuer_and_audience_is_accepted() {
    let app = spawn_app_requiring_issuer_and_audience().await;
    let mut alice = app.connect(&with_issuer_and_audience("alice").sign(), "").await;
    assert_eq!(alice.expect_connected().await["userId"], "alice");
}

#[tokio::test]
async fn token_from_another_issuer_is_401_invalid_issuer() {
    let app = spawn_app_requiring_issuer_and_audience().await;
    let token = with_issuer_and_audience("alice")
        .claim("iss", json!("https://evil.example"))
        .sign();
    assert_unauthorized(&app, &token, "invalid_issuer").await;
}

#[tokio::test]
async fn token_without_issuer_is_401_when_an_issuer_is_configured() {
    let app = spawn_app_requiring_issuer_and_audience().await;
    let response = subscribe_with(&app, &with_issuer_and_audience("alice").without("iss").sign()).await;
    assert_bearer_challenge(&response);
    assert_error_status(response, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn token_for_another_audience_is_401_invalid_audience() {
    let app = spawn_app_requiring_issuer_and_audience().await;
    let token = with_issuer_and_audience("alice")
        .claim("aud", json!("some-other-service"))
        .sign();
    assert_unauthorized(&app, &token, "invalid_audience").await;
}

#[tokio::test]
async fn token_without_audience_is_401_when_an_audience_is_configured() {
    let app = spawn_app_requiring_issuer_and_audience().await;
    let response = subscribe_with(&app, &with_issuer_and_audience("alice").without("aud").sign()).await;
    assert_bearer_challenge(&response);
    assert_error_status(response, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn issuer_and_audience_are_not_checked_when_not_configured() {
    let app = spawn_app().await;
    let token = valid("alice")
        .claim("iss", json!("https://anyone.example"))
        .claim("aud", json!("anything"))
        .sign();
    let mut alice = app.connect(&token, "").await;
    assert_eq!(alice.expect_connected().await["userId"], "alice");
}

// --- Roles that may not subscribe (403) -----------------------------------------------------

#[tokio::test]
async fn service_token_may_not_subscribe_403_role_forbidden() {
    let app = spawn_app().await;
    let service = TokenBuilder::new("backend", "service").org(ORG).sign();
    assert_error(
        subscribe_with(&app, &service).await,
        StatusCode::FORBIDDEN,
        "role_forbidden",
    )
    .await;
}

#[tokio::test]
async fn unknown_role_may_not_subscribe_403_role_forbidden() {
    let app = spawn_app().await;
    let superuser = TokenBuilder::new("eve", "superuser").org(ORG).sign();
    assert_error(
        subscribe_with(&app, &superuser).await,
        StatusCode::FORBIDDEN,
        "role_forbidden",
    )
    .await;
}

// --- Secrets stay out of logs ---------------------------------------------------------------

#[tokio::test]
async fn query_parameter_tokens_never_appear_in_logs() {
    let mut app = spawn_app_with(|options| options.env("GATEWAY__LOG__LEVEL", "debug")).await;
    let accepted = valid("alice").sign();
    let refused = valid("alice").secret("not-the-gateway-secret-123").sign();
    let mut alice = SseClient::open(app.events_request(&format!("access_token={accepted}"))).await;
    alice.expect_connected().await;
    let response = send(app.events_request(&format!("access_token={refused}"))).await;
    assert_eq!(response.status(), 401);
    drop(alice);

    let logs = app.shut_down_and_collect_logs().await;
    for token in [&accepted, &refused] {
        let signature = token.rsplit('.').next().expect("a JWT has a signature");
        assert!(
            !logs.contains(signature),
            "a query-parameter token reached the logs:\n{logs}"
        );
    }
}

#[tokio::test]
async fn jwt_secret_never_appears_in_logs() {
    let mut app = spawn_app_with(|options| options.env("GATEWAY__LOG__LEVEL", "debug")).await;
    let mut alice = app.connect(&valid("alice").sign(), "").await;
    alice.expect_connected().await;
    drop(alice);
    let logs = app.shut_down_and_collect_logs().await;
    assert!(!logs.is_empty(), "the gateway logged nothing at all");
    assert!(
        !logs.contains(TEST_SECRET),
        "the JWT secret reached the logs:\n{logs}"
    );
}

// --- `event-gateway token` ------------------------------------------------------------------

async fn mint_with_cli(args: &[&str]) -> String {
    let output = run_cli(
        args,
        &[
            ("GATEWAY__AUTH__JWT_SECRET", TEST_SECRET),
            ("GATEWAY__REDIS__URL", ""),
            ("GATEWAY__LOG__FORMAT", "json"),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "`event-gateway {}` failed with {}: {stdout}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let token = stdout.trim().to_string();
    assert!(
        token.split('.').count() == 3 && !token.contains(char::is_whitespace),
        "`event-gateway token` must print just the JWT on stdout, got {stdout:?}"
    );
    token
}

fn decode_claims(token: &str) -> Value {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(TEST_SECRET.as_bytes()),
        &validation,
    )
    .expect("the minted token verifies with the configured secret as HS256")
    .claims
}

#[tokio::test]
async fn token_subcommand_mints_a_token_the_gateway_accepts() {
    let app = spawn_app().await;
    let token = mint_with_cli(&[
        "token", "--sub", "cli-user", "--role", "ops", "--org", ORG, "--ttl", "120",
    ])
    .await;
    let claims = decode_claims(&token);
    let exp = claims["exp"].as_i64().expect("exp is a number");
    assert!(
        (now_secs() + 100..=now_secs() + 140).contains(&exp),
        "--ttl 120 must give exp about now + 120, got {claims}"
    );
    let mut client = app.connect(&token, "").await;
    let connected = client.expect_connected().await;
    assert_eq!(connected["userId"], "cli-user");
    assert_eq!(connected["role"], "ops");
    assert_eq!(connected["orgs"], json!([ORG]));
}

#[tokio::test]
async fn token_subcommand_sets_every_claim_it_is_given() {
    let token = mint_with_cli(&[
        "token",
        "--sub",
        "u-7",
        "--role",
        "tenant",
        "--org",
        "org-a",
        "--org",
        "org-b",
        "--tenant-id",
        "t-7",
        "--contractor-id",
        "c-7",
    ])
    .await;
    let claims = decode_claims(&token);
    assert_eq!(claims["sub"], "u-7");
    assert_eq!(claims["role"], "tenant");
    assert_eq!(claims["orgs"], json!(["org-a", "org-b"]));
    assert_eq!(claims["tenantId"], "t-7");
    assert_eq!(claims["contractorId"], "c-7");
    assert!(claims["exp"].as_i64().expect("exp is a number") > now_secs());
}

// --- Public keys, end to end ----------------------------------------------------------------

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn rsa_private_key() -> Vec<u8> {
    std::fs::read(fixture("rsa-private.pem")).expect("reading the RSA test key")
}

#[tokio::test]
async fn rs256_token_whose_kid_is_in_the_jwks_file_opens_a_stream() {
    let app = spawn_app_with(|options| options.env("GATEWAY__AUTH__JWKS_PATH", &fixture("jwks.json"))).await;
    let token = valid("olivia").sign_rs256(&rsa_private_key(), "rsa-2026");
    let mut olivia = app.connect(&token, "").await;
    olivia.expect_connected().await;
}

#[tokio::test]
async fn rs256_token_with_a_kid_missing_from_the_jwks_file_is_401_unknown_key() {
    let app = spawn_app_with(|options| options.env("GATEWAY__AUTH__JWKS_PATH", &fixture("jwks.json"))).await;
    let token = valid("olivia").sign_rs256(&rsa_private_key(), "rotated-away");
    assert_error(
        subscribe_with(&app, &token).await,
        StatusCode::UNAUTHORIZED,
        "unknown_key",
    )
    .await;
}

#[tokio::test]
async fn hs256_token_signed_with_the_public_key_is_401_algorithm_not_allowed() {
    let public_key = fixture("rsa-public.pem");
    let app = spawn_app_with(|options| options.env("GATEWAY__AUTH__PUBLIC_KEY_PEM", &public_key)).await;
    let pem = std::fs::read_to_string(&public_key).expect("reading the RSA public key");
    let confused = valid("mallory").secret(&pem).sign();
    assert_error(
        subscribe_with(&app, &confused).await,
        StatusCode::UNAUTHORIZED,
        "algorithm_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn minting_a_token_the_gateway_would_refuse_fails_with_the_reason() {
    for (args, reason) in [
        (
            ["token", "--sub", "a", "--role", "admin", "--org", "org-1"],
            "known roles: contractor, landlord, ops, service, tenant",
        ),
        (
            ["token", "--sub", "a", "--role", "ops", "--org", "org 1"],
            "org id must be",
        ),
    ] {
        let output = run_cli(
            &args,
            &[
                ("GATEWAY__AUTH__JWT_SECRET", TEST_SECRET),
                ("GATEWAY__REDIS__URL", ""),
            ],
        )
        .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} must fail");
        assert!(output.stdout.is_empty(), "{args:?} prints no token");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}
