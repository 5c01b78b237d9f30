//! Sending again and catching up: a webhook's deliveries of a time range replayed, one delivery
//! retried now, and the ordered events feed a consumer that was down reads.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{find_webhook, invalid};
use crate::error::ApiError;
use crate::routes::JsonBody;
use crate::startup::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    since: String,
    until: Option<String>,
    status: Option<String>,
}

fn parse_time(field: &str, value: &str) -> Result<i64, ApiError> {
    humantime::parse_rfc3339_weak(value)
        .map_err(|e| {
            ApiError::unprocessable(
                "invalid_time",
                format!("{field} `{value}` is not an ISO-8601 time: {e}"),
            )
        })
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        })
}

/// Send again a webhook's deliveries of events created in `[since, until]`: the failed ones,
/// or all. Same `webhookId` and body; a new retry cycle.
pub async fn replay(
    State(state): State<Arc<AppState>>,
    Path(webhook_id): Path<String>,
    JsonBody(input): JsonBody<Replay>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    find_webhook(&state, &webhook_id).await?;
    let now = state.clock.now_ms();
    let since = parse_time("since", &input.since)?;
    let until = match &input.until {
        Some(u) => parse_time("until", u)?,
        None => now,
    };
    let only_failed = match input.status.as_deref() {
        None | Some("failed") => true,
        Some("all") => false,
        Some(other) => {
            return Err(invalid(
                "invalid_status",
                format!("status `{other}` is not failed or all"),
            ))
        }
    };
    let (replayed, pending) = state
        .store
        .replay(&webhook_id, since, until, only_failed, now)
        .await?;
    // Pending ones are on their way already: not sent twice, but counted, so that a replay
    // that finds only those does not read as "nothing matched".
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "replayed": replayed, "alreadyPending": pending })),
    ))
}

/// Send one delivery again now (same `webhookId` and body), in a new retry cycle.
pub async fn retry_delivery(
    State(state): State<Arc<AppState>>,
    Path(delivery_id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let now = state.clock.now_ms();
    let job = state
        .store
        .retry_delivery(&delivery_id, now, now + state.lease.as_millis() as i64)
        .await?;
    state.dispatch.hand_off(job.into_iter().collect());
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": delivery_id, "status": "pending" })),
    ))
}

/// Every emitted event in order, after a cursor: a consumer that was down catches up here.
pub async fn list_events(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut after = 0i64;
    let mut limit = 100u32;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "after" => {
                after = value.parse().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_cursor",
                        format!("after `{value}` is not a cursor from this API"),
                    )
                })?
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=1000).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request("invalid_limit", "limit must be 1 to 1000")
                    })?
            }
            other => {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!("unknown query parameter `{other}`"),
                ))
            }
        }
    }
    let events = state.store.list_events(after, limit).await?;
    let next = events.last().map(|(seq, _)| *seq).unwrap_or(after);
    // The stored bytes as they were sent, spliced in without re-serializing.
    let mut body = Vec::with_capacity(events.iter().map(|(_, p)| p.len() + 40).sum::<usize>() + 64);
    body.extend_from_slice(b"{\"data\":[");
    for (i, (seq, payload)) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(format!("{{\"cursor\":\"{seq}\",\"event\":").as_bytes());
        body.extend_from_slice(payload);
        body.push(b'}');
    }
    body.extend_from_slice(format!("],\"next\":\"{next}\"}}").as_bytes());
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}
