//! The HTTP edge's one error type: every failure becomes a status and the JSON body
//! `{"error":{"code":"<snake_case>","message":"<sentence>"}}`.

use actix_web::http::header::HeaderValue;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use bytes::Bytes;
use serde_json::json;

use crate::auth::AuthError;
use crate::broker::BrokerError;
use crate::policy::PolicyError;
use crate::session::SessionError;

/// Seconds a client is asked to wait before retrying a 503.
const RETRY_AFTER_SECS: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Forbidden(#[from] PolicyError),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{message}")]
    TooLarge { code: &'static str, message: String },
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    #[error("the gateway is not ready: {0}")]
    NotReady(String),
    #[error("the gateway is shutting down; reconnect to another replica")]
    Draining,
    #[error("this replica has reached its connection limit")]
    ServerFull,
    #[error("{0}")]
    RateLimited(String),
    #[error("this user already has the maximum of {0} open streams")]
    TooManyConnections(usize),
    #[error("no such endpoint")]
    NotFound,
    /// The method the endpoint does answer, for the `Allow` header.
    /// The console's development tokens are for this machine only.
    #[error("development tokens are minted only for clients on this machine")]
    NotLocal,
    /// A WebSocket authenticated by cookie, opened from a page of another origin.
    #[error("this origin may not open a WebSocket with the gateway's cookie: {0}")]
    OriginForbidden(String),
    #[error("method not allowed on this endpoint; it answers {0}")]
    MethodNotAllowed(&'static str),
    #[error("the broker refused the request: {0}")]
    BrokerRejected(String),
    #[error("{0}")]
    NotReplicated(String),
    /// The detail is logged where this is built, never sent: it may hold Redis internals.
    #[error("the gateway could not complete the request; it has been logged")]
    Internal,
}

impl From<SessionError> for ApiError {
    fn from(error: SessionError) -> Self {
        match error {
            SessionError::Forbidden(error) => Self::Forbidden(error),
            SessionError::ServerFull => Self::ServerFull,
            SessionError::NotReady => Self::NotReady("Redis is unreachable".into()),
            SessionError::UserRateLimited(rate) => {
                Self::RateLimited(format!("more than {rate} new streams per second for this user"))
            }
            SessionError::TooManyConnections(max) => Self::TooManyConnections(max),
            SessionError::Broker(error) => error.into(),
            error @ SessionError::OtherUser => Self::Auth(AuthError::Claims(error.to_string())),
            error @ SessionError::NeverIssued(_) => {
                Self::bad_request("invalid_last_event_id", error.to_string())
            }
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        match error {
            BrokerError::Unavailable(reason) => Self::NotReady(reason),
            BrokerError::Rejected(reason) => Self::BrokerRejected(reason),
            BrokerError::Failed(detail) => {
                tracing::error!(%detail, "Redis failed a request.");
                Self::Internal
            }
            BrokerError::NotReplicated { wanted, held } => {
                tracing::warn!(
                    wanted,
                    held,
                    "A durable publish was not confirmed by enough replicas in time."
                );
                Self::NotReplicated(format!(
                    "the events were stored, but only {held} of the {wanted} replicas required confirmed them in time; \
                     publishing again may store them twice"
                ))
            }
        }
    }
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Auth(error) => error.code(),
            Self::Forbidden(PolicyError::OrgNotInToken(_)) => "org_forbidden",
            Self::Forbidden(_) => "role_forbidden",
            Self::OriginForbidden(_) => "origin_forbidden",
            Self::NotLocal => "not_local",
            Self::BadRequest { code, .. } | Self::TooLarge { code, .. } => code,
            Self::BodyTimeout(_) => "body_timeout",
            Self::NotReady(_) => "not_ready",
            Self::Draining => "draining",
            Self::ServerFull => "server_full",
            Self::RateLimited(_) => "rate_limited",
            Self::TooManyConnections(_) => "too_many_connections",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::BrokerRejected(_) => "invalid_envelope",
            Self::NotReplicated(_) => "not_replicated",
            Self::Internal => "internal_error",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Auth(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::OriginForbidden(_) | Self::NotLocal => StatusCode::FORBIDDEN,
            Self::BadRequest { .. } | Self::BrokerRejected(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::NotReady(_) | Self::Draining | Self::ServerFull | Self::NotReplicated(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RateLimited(_) | Self::TooManyConnections(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Auth(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::MethodNotAllowed(allowed) => {
                response.insert_header((header::ALLOW, *allowed));
            }
            Self::NotReady(_)
            | Self::Draining
            | Self::ServerFull
            | Self::NotReplicated(_)
            | Self::RateLimited(_)
            | Self::TooManyConnections(_) => {
                response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()));
            }
            _ => {}
        }
        response.json(json!({"error": {"code": self.code(), "message": self.to_string()}}))
    }
}

/// The JSON body of the answers the HTTP layer makes before any handler sees the request (a
/// malformed request, an oversized or slow request head), so that every non-2xx answer is the
/// §8 error body.
pub fn early_error_body(status: StatusCode) -> (HeaderValue, Bytes) {
    let (code, message) = match status {
        StatusCode::BAD_REQUEST => (
            "malformed_request",
            "the request is not valid HTTP/1.1 (a request target over 64 KiB is refused too)",
        ),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "headers_too_large",
            "the request head is over 128 KiB or has more than 96 header fields",
        ),
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", "the request head did not arrive in time"),
        _ => ("internal_error", "the gateway could not handle the request"),
    };
    let body = json!({"error": {"code": code, "message": message}}).to_string();
    (HeaderValue::from_static("application/json"), Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body_of(error: ApiError) -> (StatusCode, serde_json::Value, HttpResponse) {
        let response = error.error_response();
        let status = response.status();
        let bytes = response
            .map_body(|_, body| body)
            .into_body()
            .try_into_bytes()
            .unwrap_or_default();
        let value = serde_json::from_slice(&bytes).expect("json body");
        (status, value, error.error_response())
    }

    #[test]
    fn auth_errors_are_401_with_a_bearer_challenge() {
        let (status, body, response) = body_of(ApiError::Auth(AuthError::Expired));
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "token_expired");
        assert_eq!(
            response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
    }

    #[test]
    fn unavailable_broker_is_503_with_retry_after() {
        let (status, body, response) = body_of(BrokerError::Unavailable("down".into()).into());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "not_ready");
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn a_redis_failure_is_500_without_its_detail() {
        let failure = BrokerError::Failed("ERR invalid start ID for the interval @user_function:176".into());
        let (status, body, _) = body_of(failure.into());
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal_error");
        assert!(!body.to_string().contains("user_function"), "{body}");
    }

    #[test]
    fn publishing_to_a_foreign_org_is_403_org_forbidden() {
        let (status, body, _) = body_of(PolicyError::OrgNotInToken("o2".into()).into());
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"]["code"], "org_forbidden");
    }
}
