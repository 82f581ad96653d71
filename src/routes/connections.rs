//! `GET /api/connections` (ops): open streams across live replicas for the caller's orgs.

use actix_web::{web, HttpRequest, HttpResponse};

use super::AppState;
use crate::error::ApiError;
use crate::policy::PolicyError;

/// The role allowed to see the registry.
const OPS_ROLE: &str = "ops";

pub async fn list(request: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let claims = state.authenticate(&request)?;
    if claims.role != OPS_ROLE {
        return Err(PolicyError::MayListConnections(claims.role).into());
    }
    let report = state.registry.report(&state.hub, &claims.orgs).await?;
    Ok(HttpResponse::Ok().json(report))
}
