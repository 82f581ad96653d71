//! `/healthz` (the process runs), `/readyz` (the broker is connected and we are not draining)
//! and `/metrics`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::error::ApiError;
use crate::metrics::METRICS;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.shutdown.is_draining() {
        return Err(ApiError::Draining);
    }
    if !state.broker.is_ready() {
        return Err(ApiError::NotReady("Redis is unreachable".into()));
    }
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}

pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(METRICS.render())
}
