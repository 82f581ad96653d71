//! `GET /api/ws`: the WebSocket handshake. Everything SSE checks is checked first, and a refused
//! upgrade answers its status and JSON error instead of `101`.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};

use super::events::{admit, start_of, EventsQuery};
use super::AppState;
use crate::auth::token_is_cookie;
use crate::error::ApiError;
use crate::hub::Shard;
use crate::session::OpenRequest;
use crate::websocket::{WsFraming, WsStream};
use crate::wire::ws;
use crate::wire::Encoding;

fn invalid_upgrade(message: &str) -> ApiError {
    ApiError::bad_request("invalid_upgrade", message)
}

/// Whether a comma-separated header lists `token` (case-insensitive).
fn lists(request: &HttpRequest, name: header::HeaderName, token: &str) -> bool {
    request
        .headers()
        .get_all(name)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// The client's `Sec-WebSocket-Key`, once the request is a WebSocket handshake of version 13.
fn handshake_key(request: &HttpRequest) -> Result<Vec<u8>, ApiError> {
    if !lists(request, header::UPGRADE, "websocket") || !lists(request, header::CONNECTION, "upgrade") {
        return Err(invalid_upgrade(
            "this endpoint speaks WebSocket: send Connection: Upgrade and Upgrade: websocket",
        ));
    }
    let version = request.headers().get(header::SEC_WEBSOCKET_VERSION);
    if version.and_then(|value| value.to_str().ok()).map(str::trim) != Some("13") {
        return Err(invalid_upgrade("Sec-WebSocket-Version must be 13"));
    }
    let key = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|value| value.as_bytes().trim_ascii())
        .filter(|key| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(key)
                .is_ok_and(|raw| raw.len() == 16)
        })
        .ok_or_else(|| invalid_upgrade("Sec-WebSocket-Key must be 16 bytes in base64"))?;
    Ok(key.to_vec())
}

/// Browsers send cookies with a WebSocket handshake from any page and apply no CORS to it, so a
/// handshake authenticated by cookie must come from this gateway's own origin (the `Host` it
/// was sent to) or one of `cors.allowed_origins`; else any site could open its visitors'
/// streams. Handshakes without `Origin` (not from a browser) and tokens sent explicitly (a
/// header or the query, which a foreign page cannot know) are not affected.
fn check_origin(request: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    if !token_is_cookie(request, &state.settings.auth.cookie_name) {
        return Ok(());
    }
    let Some(origin) = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
    else {
        return Ok(());
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    let same_origin = origin
        .split_once("://")
        .is_some_and(|(_, authority)| host.is_some_and(|host| authority.eq_ignore_ascii_case(host)));
    if same_origin
        || state
            .settings
            .cors
            .allowed_origins
            .iter()
            .any(|allowed| allowed == origin)
    {
        Ok(())
    } else {
        Err(ApiError::OriginForbidden(origin.to_string()))
    }
}

pub async fn upgrade(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    shard: web::Data<Shard>,
) -> Result<HttpResponse, ApiError> {
    let claims = admit(&request, &state)?;
    check_origin(&request, &state)?;
    // A role that may not subscribe is refused before the handshake is even read.
    state.policy.viewer(&claims, None)?;
    let key = handshake_key(&request)?;
    let query = EventsQuery::parse(request.query_string())?;
    let open = OpenRequest {
        start: start_of(&request, &query)?,
        types: query.types,
    };
    let compression = &state.settings.compression;
    let offers = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .filter_map(|value| value.to_str().ok());
    let deflate = compression.enabled && ws::accepts_deflate(offers);
    let encoding = if deflate {
        Encoding::WsDeflate {
            min_bytes: compression.min_bytes,
        }
    } else {
        Encoding::Ws
    };
    let shard = shard.into_inner();
    let session = state
        .sessions
        .open(&claims, open, shard.clone(), WsFraming { encoding })
        .await?;
    let mut response = HttpResponse::build(StatusCode::SWITCHING_PROTOCOLS);
    response
        .upgrade("websocket")
        .insert_header((header::SEC_WEBSOCKET_ACCEPT, ws::accept_key(&key)));
    if deflate {
        response.insert_header((header::SEC_WEBSOCKET_EXTENSIONS, ws::DEFLATE_RESPONSE));
    }
    let user = claims.sub.clone();
    // A body stream of its own, not `streaming`, which would add a content type to the 101.
    let stream = WsStream::new(session, shard, state, &user, payload);
    Ok(response.body(actix_web::body::BodyStream::new(stream)))
}
