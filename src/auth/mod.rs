//! Authentication: finding the token in a request (`token`) and verifying it into `Claims` (`jwt`).

mod jwt;
mod token;

pub use jwt::{Claims, JwtVerifier, KeyError, TokenMinter, TokenRequest};
pub use token::{extract_token, redact_query, token_is_cookie};

/// `[auth]`: how tokens are found and verified.
#[derive(Debug, serde::Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// HS* secret; empty with no public key: a random one is generated at start-up.
    pub jwt_secret: secrecy::SecretString,
    /// RS256/ES256/EdDSA public key: the PEM text, or a path to a PEM file.
    pub public_key_pem: String,
    /// JWKS file; keys are chosen by the token's `kid`.
    pub jwks_path: String,
    /// Accepted `alg` values, one family; empty: the key's.
    pub algorithms: Vec<String>,
    /// Required `iss` / `aud` when not empty.
    pub issuer: String,
    pub audience: String,
    /// Clock skew allowed on `exp` / `nbf`.
    pub leeway_secs: u64,
    /// Cookie that may carry the token.
    pub cookie_name: String,
}

/// Why a request is not authenticated. Every variant answers `401`; `code()` is the stable
/// `error.code` clients see and the `reason` label of `gateway_auth_failures_total`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token in the Authorization header, cookie or access_token parameter")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("the token's issuer is not accepted")]
    Issuer,
    #[error("the token's audience is not accepted")]
    Audience,
    #[error("the token's key id is unknown")]
    UnknownKey,
    #[error("invalid claims: {0}")]
    Claims(String),
    #[error("the token's header lists critical extensions (crit) that this gateway does not understand")]
    CriticalHeader,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::Malformed => "malformed_token",
            Self::BadSignature => "invalid_signature",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::Algorithm(_) => "algorithm_not_allowed",
            Self::Issuer => "invalid_issuer",
            Self::Audience => "invalid_audience",
            Self::UnknownKey => "unknown_key",
            Self::Claims(_) => "invalid_claims",
            Self::CriticalHeader => "unsupported_critical_header",
        }
    }

    /// Every reason (each spelled once, in `code`), for exporting the failure counter at
    /// zero from start-up.
    pub fn all_codes() -> [&'static str; 11] {
        [
            Self::Missing,
            Self::Malformed,
            Self::BadSignature,
            Self::Expired,
            Self::NotYetValid,
            Self::Algorithm(String::new()),
            Self::Issuer,
            Self::Audience,
            Self::UnknownKey,
            Self::Claims(String::new()),
            Self::CriticalHeader,
        ]
        .map(|error| error.code())
    }
}
