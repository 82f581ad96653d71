//! The developer surface. `GET /openapi.json`: the OpenAPI document of every endpoint.
//! `GET /console`: one self-contained page (no external assets, no build step) for operators
//! and developers: a live stream with type filters and resume, a publish form, the caller's
//! `/api/connections` and a few metrics. It holds no secret: the tokens are pasted into it and
//! sent as `Authorization` headers by the browser. Off with `console.enabled = false`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{read_body, AppState};
use crate::auth::TokenRequest;
use crate::error::ApiError;
use crate::event::OrgId;

/// Largest accepted development-token request.
const DEV_TOKEN_BODY_LIMIT: usize = 4096;
/// How long a development token lives.
const DEV_TOKEN_TTL_SECS: u64 = 3600;

/// `[console]`.
#[derive(Debug, serde::Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    pub enabled: bool,
}

const PAGE: &str = include_str!("console.html");
/// The OpenAPI 3.1 document of every endpoint, kept true by a schema-driven fuzzer test.
const OPENAPI: &str = include_str!("openapi.json");

/// The page may talk to this gateway only, and runs only its own inline script and style.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

pub async fn page(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.settings.console.enabled {
        return Err(ApiError::NotFound);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(PAGE))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevTokenRequest {
    sub: String,
    role: String,
    orgs: Vec<String>,
    #[serde(default, rename = "tenantId")]
    tenant_id: Option<String>,
    #[serde(default, rename = "contractorId")]
    contractor_id: Option<String>,
}

/// `POST /console/token`: a development token for the console, only when the gateway runs with
/// the secret it generated (a demo: the same tokens it prints at start) and only for a client
/// on this machine; else `404`, as if the endpoint did not exist, or `403 not_local`.
pub async fn dev_token(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(minter) = state
        .dev_minter
        .as_ref()
        .filter(|_| state.settings.console.enabled)
    else {
        return Err(ApiError::NotFound);
    };
    let local = request.peer_addr().is_some_and(|peer| peer.ip().is_loopback());
    if !local {
        return Err(ApiError::NotLocal);
    }
    let body = read_body(&request, payload, DEV_TOKEN_BODY_LIMIT, &state).await?;
    let wanted: DevTokenRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("expected {{\"sub\",\"role\",\"orgs\":[...]}}: {e}"),
        )
    })?;
    if !state.policy.knows(&wanted.role) {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("{:?} is not a role of policy.roles", wanted.role),
        ));
    }
    if wanted.sub.is_empty() || wanted.orgs.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "sub and at least one org are required",
        ));
    }
    if let Some(bad) = wanted.orgs.iter().find(|org| OrgId::parse(org).is_err()) {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("{bad:?} is not an org id"),
        ));
    }
    let token = minter
        .mint(&TokenRequest {
            sub: &wanted.sub,
            role: &wanted.role,
            orgs: &wanted.orgs,
            tenant_id: wanted.tenant_id.as_deref(),
            contractor_id: wanted.contractor_id.as_deref(),
            ttl_secs: DEV_TOKEN_TTL_SECS,
        })
        .map_err(|error| {
            tracing::error!(%error, "Could not mint a development token.");
            ApiError::Internal
        })?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "token": token, "expiresInSecs": DEV_TOKEN_TTL_SECS })))
}

/// `GET /openapi.json`.
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(OPENAPI)
}
