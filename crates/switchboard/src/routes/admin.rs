//! The management API under `/v1` (bearer token checked by the router): locations, signing
//! keys, and what happened to a message. Channel accounts are in `channels`, webhooks in
//! `webhooks`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::JsonBody;
use crate::domain::ids::looks_like_id;
use crate::error::ApiError;
use crate::startup::AppState;
use crate::store::Location;

const MAX_NAME_LEN: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLocation {
    name: String,
}

pub async fn create_location(
    State(state): State<Arc<AppState>>,
    JsonBody(input): JsonBody<CreateLocation>,
) -> Result<(StatusCode, Json<Location>), ApiError> {
    let name = input.name.trim();
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ApiError::unprocessable(
            "invalid_name",
            format!("name must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    let location = state
        .store
        .create_location(name, state.clock.now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(location)))
}

pub async fn list_locations(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "data": state.store.list_locations().await? })))
}

pub async fn get_location(
    State(state): State<Arc<AppState>>,
    Path(location_id): Path<String>,
) -> Result<Json<Location>, ApiError> {
    state
        .store
        .get_location(&location_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no location {location_id}")))
}

/// The public keys deliveries are signed with: Ed25519 (`x-ghl-signature`) and RSA (the
/// legacy `x-wh-signature`, for webhooks that ask for it).
pub async fn signing_keys(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rsa = state.keys.ensure_rsa().await?;
    Ok(Json(json!({
        "ed25519": state.keys.ed25519_public_pem(),
        "rsa": rsa,
    })))
}

fn check_message_id(id: &str) -> Result<(), ApiError> {
    if looks_like_id(id) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no message {id}")))
    }
}

/// The message in event shape: the exact bytes its event was sent with.
pub async fn get_message(
    State(state): State<Arc<AppState>>,
    Path(message_id): Path<String>,
) -> Result<Response, ApiError> {
    check_message_id(&message_id)?;
    let payload = state
        .store
        .message_event(&message_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no message {message_id}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], payload).into_response())
}

pub async fn get_message_deliveries(
    State(state): State<Arc<AppState>>,
    Path(message_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_message_id(&message_id)?;
    if state.store.message_event(&message_id).await?.is_none() {
        return Err(ApiError::not_found(format!("no message {message_id}")));
    }
    let deliveries = state
        .store
        .message_deliveries(&message_id, state.clock.now_ms())
        .await?;
    Ok(Json(json!({ "data": deliveries })))
}
