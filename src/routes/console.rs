//! The developer surface. `GET /openapi.json`: the OpenAPI document of every endpoint.
//! `GET /console`: one self-contained page (no external assets, no build step) for operators
//! and developers: a live stream with type filters and resume, a publish form, the caller's
//! `/api/connections` and a few metrics. It holds no secret: the tokens are pasted into it and
//! sent as `Authorization` headers by the browser. Off with `console.enabled = false`.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::AppState;
use crate::error::ApiError;

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

/// `GET /openapi.json`.
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(OPENAPI)
}
