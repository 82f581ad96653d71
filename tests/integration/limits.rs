//! protocol §7, limits: streams per replica (503), per user (429), and connection rate (429),
//! each answered with `Retry-After` and a JSON error.

use reqwest::StatusCode;

use crate::common::http::{assert_refused_with_retry_after, send};
use crate::common::token::ops;
use crate::common::{spawn_app_with, within};

const ORG: &str = "org-1";

#[tokio::test]
async fn stream_beyond_max_connections_is_503_with_retry_after() {
    let app = spawn_app_with(|options| options.env("GATEWAY__LIMITS__MAX_CONNECTIONS", "2")).await;
    let _first = app.connect_ready(&ops("user-1", ORG), "").await;
    let _second = app.connect_ready(&ops("user-2", ORG), "").await;
    let third = send(app.events_request("").bearer_auth(ops("user-3", ORG))).await;
    assert_refused_with_retry_after(third, StatusCode::SERVICE_UNAVAILABLE).await;
}

#[tokio::test]
async fn stream_beyond_max_connections_per_user_is_429_with_retry_after() {
    let app = spawn_app_with(|options| options.env("GATEWAY__LIMITS__MAX_CONNECTIONS_PER_USER", "2")).await;
    let token = ops("olivia", ORG);
    let _first = app.connect_ready(&token, "").await;
    let _second = app.connect_ready(&token, "").await;
    let third = send(app.events_request("").bearer_auth(&token)).await;
    assert_refused_with_retry_after(third, StatusCode::TOO_MANY_REQUESTS).await;
    let _other_user = app.connect_ready(&ops("oscar", ORG), "").await;
}

#[tokio::test]
async fn connection_attempts_beyond_connect_rate_per_user_are_429() {
    let app = spawn_app_with(|options| options.env("GATEWAY__LIMITS__CONNECT_RATE_PER_USER", "2")).await;
    let token = ops("olivia", ORG);
    let mut statuses = Vec::new();
    let mut open = Vec::new();
    for _ in 0..6 {
        let response = send(app.events_request("").bearer_auth(&token)).await;
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_refused_with_retry_after(response, StatusCode::TOO_MANY_REQUESTS).await;
        } else {
            open.push(response);
        }
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "6 attempts in a burst with connect_rate_per_user = 2 must be limited: {statuses:?}"
    );
}

#[tokio::test]
async fn streams_beyond_what_the_open_files_limit_holds_are_503_with_retry_after() {
    // 512 files stay reserved for the rest of the process: 530 leave room for 18 streams.
    let app = spawn_app_with(|options| options.open_files_limit(530)).await;
    let mut streams = Vec::new();
    for n in 0..18 {
        streams.push(app.connect_ready(&ops(&format!("user-{n}"), ORG), "").await);
    }
    let refused = send(app.events_request("").bearer_auth(ops("one-too-many", ORG))).await;
    assert_refused_with_retry_after(refused, StatusCode::SERVICE_UNAVAILABLE).await;
}

#[tokio::test]
async fn concurrent_connects_never_overshoot_max_connections() {
    let app = spawn_app_with(|options| options.env("GATEWAY__LIMITS__MAX_CONNECTIONS", "5")).await;
    // Each user's first stream: a new org each, so every admission awaits a SUBSCRIBE.
    let attempts = (0..20).map(|n| {
        let token = ops(&format!("user-{n}"), &format!("org-{n}"));
        send(app.events_request("").bearer_auth(token))
    });
    let responses = futures_util::future::join_all(attempts).await;
    let admitted = responses.iter().filter(|r| r.status() == StatusCode::OK).count();
    let refused = responses
        .iter()
        .filter(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!(
        (admitted, refused),
        (5, 15),
        "statuses: {:?}",
        responses.iter().map(|r| r.status()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_flood_of_idle_sockets_beyond_the_open_files_limit_never_fails_accepts() {
    let app = spawn_app_with(|options| options.open_files_limit(530)).await;
    let address = app.base_url().trim_start_matches("http://").to_string();
    // More sockets than the gateway may open files, all at once: the gateway must stop
    // accepting (they wait in the listen backlog) before it runs out of descriptors.
    let connects = (0..600).map(|_| tokio::net::TcpStream::connect(address.as_str()));
    let idle: Vec<_> = within(
        std::time::Duration::from_secs(30),
        "600 idle connections",
        futures_util::future::join_all(connects),
    )
    .await;
    assert!(idle.iter().all(Result::is_ok), "some connects failed");
    // The window in which a gateway without the cap fails accept() in a loop.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    drop(idle);
    app.wait_for_status("/healthz", 200, std::time::Duration::from_secs(10))
        .await;
    let logs = app.logs();
    assert!(
        !logs.contains("Too many open files") && !logs.contains("Error accepting connection"),
        "accepts failed:\n{logs}"
    );
}
