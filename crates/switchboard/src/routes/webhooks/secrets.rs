//! A webhook's signing secrets: reading the current one, and rotating it with an overlap during
//! which the replaced one signs too.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{find_webhook, invalid, new_secret, DEFAULT_OVERLAP, MAX_OVERLAP_SECONDS};
use crate::domain::time::iso_millis;
use crate::error::ApiError;
use crate::startup::AppState;

pub async fn get_webhook_secret(
    State(state): State<Arc<AppState>>,
    Path(webhook_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let webhook = find_webhook(&state, &webhook_id).await?;
    let now = state.clock.now_ms();
    let previous: Vec<serde_json::Value> = webhook
        .previous_secrets_at(now)
        .map(|p| json!({ "secret": p.secret, "validUntil": iso_millis(p.until) }))
        .collect();
    Ok(Json(json!({
        "secret": webhook.secret,
        // The newest replaced secret (what this field has always held), and all of them.
        "previousSecret": previous.first().map(|p| p["secret"].clone()),
        "previousSecrets": previous,
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rotate {
    overlap_seconds: Option<u64>,
}

/// A new secret; the old one keeps signing (both signatures are sent) during the overlap.
pub async fn rotate_secret(
    State(state): State<Arc<AppState>>,
    Path(webhook_id): Path<String>,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = crate::routes::read_body(body, crate::routes::MAX_JSON_BYTES).await?;
    // The body is optional: `{"overlapSeconds": …}`.
    let rotate: Rotate = if body.iter().all(u8::is_ascii_whitespace) {
        Rotate::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::unprocessable("invalid_body", e.to_string()))?
    };
    if rotate
        .overlap_seconds
        .is_some_and(|s| s > MAX_OVERLAP_SECONDS)
    {
        return Err(invalid(
            "invalid_overlap",
            format!("overlapSeconds is at most {MAX_OVERLAP_SECONDS} (30 days)"),
        ));
    }
    let overlap = rotate
        .overlap_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_OVERLAP);
    find_webhook(&state, &webhook_id).await?;
    let now = state.clock.now_ms();
    let until = now + overlap.as_millis() as i64;
    let secret = new_secret();
    // The current secret joins the replaced ones, whatever else changes meanwhile.
    state
        .store
        .rotate_secret(&webhook_id, &secret, until, now)
        .await?;
    state.dispatch.webhooks_changed();
    Ok(Json(json!({
        "secret": secret,
        "previousSecretValidUntil": iso_millis(until),
    })))
}
