//! The HTTP surface: the whole route table on one screen, the shared state handlers see, and the
//! middleware every response passes through (CORS, access log).

mod connections;
mod console;
mod events;
mod health;
mod publish;
mod ws;

pub use console::ConsoleSettings;
pub use events::{parse_position, EventsQuery};

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::auth::{extract_token, redact_query, AuthError, Claims, JwtVerifier, TokenMinter};
use crate::broker::{Broker, Registry};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::limits::RateLimiter;
use crate::metrics::METRICS;
use crate::policy::Policy;
use crate::session::Sessions;
use crate::settings::Settings;
use crate::shutdown::Shutdown;

/// What every handler can reach.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub verifier: JwtVerifier,
    pub policy: Policy,
    pub hub: Arc<Hub>,
    pub broker: Broker,
    pub registry: Arc<Registry>,
    /// Opens streams (admission, registration, subscription, replay).
    pub sessions: Sessions,
    pub ip_rate: RateLimiter,
    pub shutdown: Shutdown,
    /// Mints development tokens for the console, only when the gateway generated its secret.
    pub dev_minter: Option<TokenMinter>,
}

impl AppState {
    /// Finds and verifies the request's token, counting failures by reason.
    pub fn authenticate(&self, request: &HttpRequest) -> Result<Claims, ApiError> {
        extract_token(request, &self.settings.auth.cookie_name)
            .and_then(|token| self.verifier.verify(&token))
            .map_err(|error| self.refused(error))
    }

    /// Verifies a token a stream's client sent (a refresh), counting failures by reason.
    pub fn authenticate_token(&self, token: &str) -> Result<Claims, ApiError> {
        self.verifier.verify(token).map_err(|error| self.refused(error))
    }

    fn refused(&self, error: AuthError) -> ApiError {
        METRICS.auth_failed(error.code());
        tracing::debug!(reason = error.code(), "Rejected a token.");
        ApiError::Auth(error)
    }
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(endpoint(
            "/api/events",
            Answers::Get,
            web::get().to(events::stream),
        ))
        .service(endpoint("/api/ws", Answers::Get, web::get().to(ws::upgrade)))
        .service(endpoint(
            "/api/events/ack",
            Answers::Post,
            web::post().to(events::acknowledge),
        ))
        .service(endpoint(
            "/api/publish",
            Answers::Post,
            web::post().to(publish::publish),
        ))
        .service(endpoint(
            "/api/connections",
            Answers::Get,
            web::get().to(connections::list),
        ))
        .service(endpoint("/healthz", Answers::Get, web::get().to(health::healthz)))
        .service(endpoint("/readyz", Answers::Get, web::get().to(health::readyz)))
        .service(endpoint("/metrics", Answers::Get, web::get().to(health::metrics)))
        .service(endpoint("/console", Answers::Get, web::get().to(console::page)))
        .service(endpoint(
            "/console/token",
            Answers::Post,
            web::post().to(console::dev_token),
        ))
        .service(endpoint(
            "/openapi.json",
            Answers::Get,
            web::get().to(console::openapi),
        ))
        .default_service(web::to(not_found));
}

/// The methods one endpoint answers.
#[derive(Clone, Copy)]
enum Answers {
    Get,
    Post,
}

impl Answers {
    /// The `Allow` header of a `405`.
    fn allow(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
        }
    }
}

/// One path served by one route; other methods get a JSON 405 with `Allow`.
fn endpoint(path: &str, method: Answers, route: actix_web::Route) -> actix_web::Resource {
    let allow = method.allow();
    web::resource(path)
        .route(route)
        .default_service(web::to(move || async move { ApiError::MethodNotAllowed(allow) }))
}

/// Reads a request body of at most `limit` bytes within the configured deadline. A declared
/// `Content-Length` over the limit is refused before a byte is read, the body is never buffered
/// beyond the limit, and a body that does not arrive in time is refused, so one request pins
/// at most `limit` bytes for at most the deadline.
pub async fn read_body(
    request: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    state: &AppState,
) -> Result<web::Bytes, ApiError> {
    let too_large = || ApiError::TooLarge {
        code: "payload_too_large",
        message: format!("the body is over the limit of {limit} bytes"),
    };
    if let Some(declared) = request.headers().get(header::CONTENT_LENGTH) {
        let declared: u64 = declared
            .to_str()
            .ok()
            .and_then(|value| value.trim().parse().ok())
            .ok_or_else(|| ApiError::bad_request("invalid_body", "Content-Length is not a number"))?;
        if declared > limit as u64 {
            return Err(too_large());
        }
    }
    let deadline = Duration::from_secs(state.settings.server.body_timeout_secs);
    match tokio::time::timeout(deadline, payload.to_bytes_limited(limit)).await {
        Err(_) => Err(ApiError::BodyTimeout(deadline.as_secs())),
        Ok(Ok(Ok(body))) => Ok(body),
        Ok(Ok(Err(error))) => Err(ApiError::bad_request(
            "invalid_body",
            format!("the body could not be read: {error}"),
        )),
        Ok(Err(_)) => Err(too_large()),
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

impl actix_web::Responder for ApiError {
    type Body = actix_web::body::BoxBody;

    fn respond_to(self, _request: &HttpRequest) -> HttpResponse {
        actix_web::ResponseError::error_response(&self)
    }
}

/// CORS for the configured origins, with credentials; never `*`. Preflights are answered here.
pub async fn cors(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let allowed_origin = request.headers().get(header::ORIGIN).cloned().filter(|origin| {
        request.app_data::<web::Data<AppState>>().is_some_and(|state| {
            state
                .settings
                .cors
                .allowed_origins
                .iter()
                .any(|allowed| allowed.as_bytes() == origin.as_bytes())
        })
    });
    let is_preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if is_preflight {
        let mut preflight = HttpResponse::NoContent();
        if allowed_origin.is_some() {
            preflight
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"))
                .insert_header((
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    "Authorization, Content-Type, Last-Event-ID, Cache-Control",
                ))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"));
        }
        request.into_response(preflight.finish()).map_into_boxed_body()
    } else {
        next.call(request).await?.map_into_boxed_body()
    };
    let headers = response.headers_mut();
    headers.append(header::VARY, header::HeaderValue::from_static("Origin"));
    if let Some(origin) = allowed_origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// One debug line per request, with query tokens redacted.
pub async fn access_log(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return Ok(next.call(request).await?.map_into_left_body());
    }
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.path().to_string();
    let query = redact_query(request.query_string());
    let response = next.call(request).await?;
    tracing::debug!(
        %method,
        path,
        query,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Handled a request."
    );
    Ok(response.map_into_right_body())
}
