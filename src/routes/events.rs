//! `GET /api/events` (the stream) and `POST /api/events/ack` (the user's resume cursor).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::{read_body, AppState};
use crate::auth::Claims;
use crate::clock::unix_secs;
use crate::cursor::DecodedCursor;
use crate::error::ApiError;
use crate::event::EventId;
use crate::hub::Shard;
use crate::policy::TypeFilter;
use crate::session::{OpenRequest, Start};
use crate::sse::{EventStream, SseFraming};
use crate::wire::Encoding;

/// Largest accepted acknowledgement body.
const ACK_BODY_LIMIT: usize = 4096;

/// The query parameters of `GET /api/events`; unknown ones are ignored (clients add cache
/// busters).
#[derive(Debug, Default)]
pub struct EventsQuery {
    pub types: Option<TypeFilter>,
    /// `since=`: `Start::Since` (a time) or `Start::Ack`.
    pub since: Option<Start>,
    /// `lastEventId=`: an event id or a resume cursor.
    pub last_event_id: Option<Start>,
}

/// `since=`: an RFC 3339 time or epoch milliseconds (`Start::Since`), or `ack`.
fn parse_since(raw: &str) -> Result<Start, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid_since",
            format!("since must be an RFC 3339 time, epoch milliseconds or \"ack\", not {raw:?}"),
        )
    };
    if raw == "ack" {
        return Ok(Start::Ack);
    }
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw.parse().map(Start::Since).map_err(|_| invalid());
    }
    let time = time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|_| invalid())?;
    u64::try_from(time.unix_timestamp_nanos() / 1_000_000)
        .map(Start::Since)
        .map_err(|_| invalid())
}

fn parse_event_id(raw: &str) -> Result<EventId, ApiError> {
    raw.trim().parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_last_event_id",
            format!("{raw:?} is not an event id of this gateway"),
        )
    })
}

/// A resume position: an event id, or the cursor of a stream whose orgs' ids are ordered per
/// org (cluster mode).
pub fn parse_position(raw: &str) -> Result<Start, ApiError> {
    if DecodedCursor::looks_like(raw.trim()) {
        return DecodedCursor::parse(raw).map(Start::Cursor).map_err(|_| {
            ApiError::bad_request(
                "invalid_last_event_id",
                format!("{raw:?} is not a resume cursor of this gateway"),
            )
        });
    }
    parse_event_id(raw).map(Start::After)
}

impl EventsQuery {
    /// Parses a query string; a bad value is a `400` naming the parameter.
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| ApiError::bad_request("invalid_query", format!("unreadable query string: {e}")))?;
        let mut parsed = Self::default();
        for (key, value) in pairs {
            match key.as_str() {
                "types" => {
                    parsed.types = Some(
                        TypeFilter::parse(&value)
                            .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?,
                    );
                }
                "since" if !value.is_empty() => parsed.since = Some(parse_since(&value)?),
                "lastEventId" if !value.is_empty() => parsed.last_event_id = Some(parse_position(&value)?),
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// Where the stream starts: `Last-Event-ID` header, then `lastEventId`, then `since`.
pub fn start_of(request: &HttpRequest, query: &EventsQuery) -> Result<Option<Start>, ApiError> {
    let header = match request.headers().get("last-event-id") {
        Some(value) => {
            let raw = value.to_str().map_err(|_| {
                ApiError::bad_request("invalid_last_event_id", "Last-Event-ID is not readable text")
            })?;
            if raw.trim().is_empty() {
                None
            } else {
                Some(parse_position(raw)?)
            }
        }
        None => None,
    };
    Ok(header
        .or_else(|| query.last_event_id.clone())
        .or_else(|| query.since.clone()))
}

/// The client's IP for rate limiting: the peer, or the forwarded client when configured.
fn client_ip(request: &HttpRequest, trust_forwarded_for: bool) -> String {
    let info = request.connection_info();
    let address = if trust_forwarded_for {
        info.realip_remote_addr()
    } else {
        info.peer_addr()
    };
    address.unwrap_or("unknown").to_string()
}

/// What every transport checks before a stream is opened: not draining, the per-IP connect
/// rate, then the token.
pub fn admit(request: &HttpRequest, state: &AppState) -> Result<Claims, ApiError> {
    if state.shutdown.is_draining() {
        return Err(ApiError::Draining);
    }
    let limits = &state.settings.limits;
    if !state
        .ip_rate
        .allow(&client_ip(request, limits.trust_forwarded_for), unix_secs())
    {
        return Err(ApiError::RateLimited(format!(
            "more than {} new streams per second from this address",
            limits.connect_rate_per_ip
        )));
    }
    state.authenticate(request)
}

/// Opens a stream. `shard` holds this worker's connections.
pub async fn stream(
    request: HttpRequest,
    state: web::Data<AppState>,
    shard: web::Data<Shard>,
) -> Result<HttpResponse, ApiError> {
    let claims = admit(&request, &state)?;
    let query = EventsQuery::parse(request.query_string())?;
    let open = OpenRequest {
        start: start_of(&request, &query)?,
        types: query.types,
    };
    let shard = shard.into_inner();
    let compression = &state.settings.compression;
    let gzip = compression.enabled && accepts_gzip(&request);
    let encoding = if gzip {
        Encoding::SseGzip {
            min_bytes: compression.min_bytes,
        }
    } else {
        Encoding::Sse
    };
    let framing = SseFraming {
        retry_ms: state.settings.sse.retry_ms,
        encoding,
    };
    let session = state.sessions.open(&claims, open, shard.clone(), framing).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        // `identity` said explicitly: proxies and CDNs leave a response that names its
        // encoding alone instead of compressing (and buffering) the stream themselves.
        .insert_header((header::CONTENT_ENCODING, if gzip { "gzip" } else { "identity" }))
        .insert_header((header::VARY, "Accept-Encoding"))
        .streaming(EventStream::new(session, shard)))
}

/// Whether the client's `Accept-Encoding` takes `gzip` (named, or `*`, with a non-zero `q`).
fn accepts_gzip(request: &HttpRequest) -> bool {
    let mut gzip = None;
    let mut any = None;
    let offers = request
        .headers()
        .get_all(header::ACCEPT_ENCODING)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for offer in offers {
        let mut parts = offer.split(';').map(str::trim);
        let coding = parts.next().unwrap_or_default().to_ascii_lowercase();
        let quality = parts
            .find_map(|param| param.strip_prefix("q=").or_else(|| param.strip_prefix("Q=")))
            .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(quality > 0.0),
            "*" => any = Some(quality > 0.0),
            _ => {}
        }
    }
    gzip.or(any).unwrap_or(false)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AckBody {
    last_event_id: String,
}

pub async fn acknowledge(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let claims = state.authenticate(&request)?;
    // Only a role that may subscribe has a cursor; others are refused before the body is read.
    state.policy.viewer(&claims, None)?;
    let body = read_body(&request, payload, ACK_BODY_LIMIT, &state).await?;
    let ack: AckBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("expected {{\"lastEventId\":\"<id>\"}}: {e}"),
        )
    })?;
    let position = parse_position(&ack.last_event_id)?;
    state
        .sessions
        .acknowledge(&claims.sub, &claims.orgs, &position)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_rfc3339_epoch_millis_and_ack() {
        assert_eq!(parse_since("ack").ok(), Some(Start::Ack));
        assert_eq!(
            parse_since("1700000000123").ok(),
            Some(Start::Since(1_700_000_000_123))
        );
        assert_eq!(
            parse_since("2025-11-07T09:00:00Z").ok(),
            Some(Start::Since(1_762_506_000_000))
        );
        assert_eq!(
            parse_since("2025-11-07T10:00:00+01:00").ok(),
            Some(Start::Since(1_762_506_000_000))
        );
        for bad in ["yesterday", "2025-11-07", "-5", "1.5"] {
            assert_eq!(
                parse_since(bad).err().map(|e| e.code()),
                Some("invalid_since"),
                "{bad}"
            );
        }
    }

    #[test]
    fn query_parsing_rejects_bad_values_with_their_code() {
        assert_eq!(
            EventsQuery::parse("lastEventId=abc").err().map(|e| e.code()),
            Some("invalid_last_event_id")
        );
        assert_eq!(
            EventsQuery::parse("types=Bad%20Type").err().map(|e| e.code()),
            Some("invalid_query")
        );
        let parsed = EventsQuery::parse("types=ticket.*&lastEventId=5-1&_=123").expect("valid query");
        assert_eq!(
            parsed.last_event_id,
            Some(Start::After(EventId { millis: 5, seq: 1 }))
        );
        assert!(parsed.types.is_some());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_query_string_parses_or_is_a_400_never_a_panic(query in "(?s).{0,120}") {
            if let Err(error) = EventsQuery::parse(&query) {
                prop_assert!(["invalid_query", "invalid_since", "invalid_last_event_id"].contains(&error.code()), "{}", error.code());
            }
        }

        #[test]
        fn since_in_epoch_milliseconds_is_that_instant(millis in any::<u64>()) {
            prop_assert_eq!(parse_since(&millis.to_string()).ok(), Some(Start::Since(millis)));
        }

        #[test]
        fn since_as_rfc3339_is_the_same_instant_as_its_milliseconds(millis in 0u64..253_402_300_799_999, offset_minutes in -720i32..=840) {
            let instant = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).expect("in range");
            let offset = time::UtcOffset::from_whole_seconds(offset_minutes * 60).expect("a valid offset");
            let text = instant
                .to_offset(offset)
                .format(&time::format_description::well_known::Rfc3339)
                .expect("formats");
            prop_assert_eq!(parse_since(&text).ok(), Some(Start::Since(millis)));
        }

        #[test]
        fn a_last_event_id_parameter_round_trips(millis in 0u64..=253_402_300_799_999, seq in any::<u64>()) {
            let id = EventId { millis, seq };
            let parsed = EventsQuery::parse(&format!("lastEventId={id}")).expect("a valid id");
            prop_assert_eq!(parsed.last_event_id, Some(Start::After(id)));
        }
    }
}
