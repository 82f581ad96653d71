//! `POST /api/publish`: one envelope or a batch, validated whole, published durably in order.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use serde_json::value::RawValue;

use super::{read_body, AppState};
use crate::broker::PublishItem;
use crate::error::ApiError;
use crate::event::{Envelope, EnvelopeError};
use crate::metrics::METRICS;

/// Room for the JSON array around a full batch.
const BATCH_OVERHEAD: usize = 64 * 1024;

fn envelope_error(index: Option<usize>, error: EnvelopeError) -> ApiError {
    let message = match index {
        Some(index) => format!("envelope {index}: {error}"),
        None => error.to_string(),
    };
    match error {
        EnvelopeError::TooLarge { .. } => ApiError::TooLarge {
            code: "payload_too_large",
            message,
        },
        _ => ApiError::bad_request("invalid_envelope", message),
    }
}

pub async fn publish(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let claims = state.authenticate(&request)?;
    // A role that may not publish is refused before a byte of its body is read.
    state.policy.check_may_publish(&claims)?;
    let limits = &state.settings.limits;
    let body = read_body(
        &request,
        payload,
        limits.max_batch * limits.max_event_bytes + BATCH_OVERHEAD,
        &state,
    )
    .await?;
    let is_batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let raws: Vec<&RawValue> = if is_batch {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_envelope",
                format!("body is not a JSON array of envelopes: {e}"),
            )
        })?
    } else {
        vec![serde_json::from_slice(&body)
            .map_err(|e| envelope_error(None, EnvelopeError::InvalidJson(e.to_string())))?]
    };
    if raws.is_empty() {
        return Err(ApiError::bad_request("invalid_envelope", "the batch is empty"));
    }
    if raws.len() > limits.max_batch {
        return Err(ApiError::TooLarge {
            code: "batch_too_large",
            message: format!("{} envelopes, over the limit of {}", raws.len(), limits.max_batch),
        });
    }
    let mut items = Vec::with_capacity(raws.len());
    for (index, raw) in raws.into_iter().enumerate() {
        let index = is_batch.then_some(index);
        let envelope = Envelope::parse(raw.get().as_bytes(), limits.max_event_bytes)
            .map_err(|e| envelope_error(index, e))?;
        let org = envelope
            .org
            .clone()
            .ok_or_else(|| envelope_error(index, EnvelopeError::MissingOrg))?;
        state.policy.check_publish(&claims, &org)?;
        items.push(PublishItem {
            org,
            raw: raw.get().to_string(),
            envelope,
        });
    }
    if state.shutdown.is_draining() {
        return Err(ApiError::Draining);
    }
    if !state.broker.is_ready() {
        return Err(ApiError::NotReady("Redis is unreachable".into()));
    }
    let count = items.len();
    let ids = state.broker.publish(items).await?;
    METRICS.events_published(count);
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    Ok(HttpResponse::Accepted().json(json!({ "ids": ids })))
}
