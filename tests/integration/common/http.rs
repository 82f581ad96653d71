//! Plain HTTP helpers: bounded request sends and the error-body contract (protocol §8).

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::Value;

use super::{within, STEP_TIMEOUT};

/// Sends `request`, failing the test if no response headers arrive in time.
pub async fn send(request: RequestBuilder) -> Response {
    within(STEP_TIMEOUT, "an HTTP response", request.send())
        .await
        .expect("sending an HTTP request to the gateway")
}

/// Reads a whole (finite) response body as JSON.
pub async fn json_body(response: Response) -> Value {
    let status = response.status();
    let text = within(STEP_TIMEOUT, "a response body", response.text())
        .await
        .expect("reading a response body");
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{status} body is not JSON ({error}): {text:?}"))
}

/// Asserts the error contract: `status`, a JSON content type, and a body
/// `{"error":{"code":"<snake_case>","message":"<non-empty>"}}`. Returns the code.
pub async fn assert_error_status(response: Response, status: StatusCode) -> String {
    let url = response.url().clone();
    assert_eq!(response.status(), status, "status of {url}");
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "a {status} must be JSON, got Content-Type {content_type:?}"
    );
    let body = json_body(response).await;
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error body without error.code: {body}"));
    assert!(
        !code.is_empty()
            && code
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "error.code must be snake_case, got {code:?}"
    );
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error body without error.message: {body}"));
    assert!(!message.is_empty(), "error.message is empty: {body}");
    code.to_string()
}

/// Asserts `status` and the exact error `code`, plus `WWW-Authenticate: Bearer` on a 401.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) {
    if status == StatusCode::UNAUTHORIZED {
        assert_bearer_challenge(&response);
    }
    let actual = assert_error_status(response, status).await;
    assert_eq!(actual, code, "error.code for a {status}");
}

/// A 401 must challenge with the Bearer scheme (RFC 6750).
pub fn assert_bearer_challenge(response: &Response) {
    let challenge = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer"),
        "a 401 must carry WWW-Authenticate: Bearer, got {challenge:?}"
    );
}

/// Asserts a refusal the client should retry later: `status`, a `Retry-After` in seconds, and
/// the JSON error body.
pub async fn assert_refused_with_retry_after(response: Response, status: StatusCode) {
    assert_eq!(response.status(), status);
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        retry_after.parse::<u64>().is_ok(),
        "a {status} must carry Retry-After in seconds, got {retry_after:?}"
    );
    assert_error_status(response, status).await;
}

/// The ids of a `202` answer to `POST /api/publish` (`{"ids":[...]}`), asserting the status.
pub async fn accepted_ids(response: Response) -> Vec<String> {
    let status = response.status();
    let body = json_body(response).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "POST /api/publish answered {status}: {body}"
    );
    body["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("202 body must be {{\"ids\":[...]}}, got {body}"))
        .iter()
        .map(|id| id.as_str().expect("ids are strings").to_string())
        .collect()
}

/// `FCALL event_gateway_publish 0 <org> <payload>`: a durable publish as a backend sends it.
pub fn fcall_publish(org: &str, payload: &str) -> redis::Cmd {
    let mut command = redis::cmd("FCALL");
    command.arg("event_gateway_publish").arg(0).arg(org).arg(payload);
    command
}

/// `FCALL event_gateway_publish 1 <org> <payload>`: the org as the key, the form that works in
/// both Redis modes.
pub fn fcall_publish_keyed(org: &str, payload: &str) -> redis::Cmd {
    let mut command = redis::cmd("FCALL");
    command.arg("event_gateway_publish").arg(1).arg(org).arg(payload);
    command
}
