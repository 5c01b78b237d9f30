//! The channel-configuration API, one for every channel of the registry:
//! `PUT`/`GET`/`DELETE /v1/locations/{locationId}/channels/{provider}` and
//! `GET /v1/locations/{locationId}/channels`. Each channel checks its own settings and says
//! what a GET shows of them; the route, the 404s and the store calls are written here once.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::json_bytes;
use crate::channels::{self, Provider};
use crate::error::ApiError;
use crate::startup::AppState;

/// The channel named `{provider}`, or a 404 that lists the known ones.
fn channel(provider: &str) -> Result<&'static dyn Provider, ApiError> {
    channels::find(provider).ok_or_else(|| {
        let known: Vec<&str> = channels::CHANNELS.iter().map(|c| c.name()).collect();
        ApiError::not_found(format!(
            "no channel `{provider}`; the channels are: {}",
            known.join(", ")
        ))
    })
}

fn not_connected(location_id: &str, channel: &dyn Provider) -> ApiError {
    ApiError::not_found(format!(
        "location {location_id} has no {} account connected",
        channel.title()
    ))
}

pub async fn put_channel(
    State(state): State<Arc<AppState>>,
    Path((location_id, provider)): Path<(String, String)>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let channel = channel(&provider)?;
    let mut input = channel.configure(&json_bytes(request).await?)?;
    // A secret generated because none was given replaces nothing: the stored one stays.
    if input.shown_once.is_some() {
        if let Some((stored, _)) = state
            .store
            .get_channel_account(&location_id, channel.name())
            .await?
        {
            input.secret = stored.secret;
            input.shown_once = None;
        }
    }
    state
        .store
        .put_channel_account(&location_id, &input, state.clock.now_ms())
        .await?;
    let account = channels::ChannelAccount {
        location_id,
        account_id: input.account_id,
        secret: input.secret,
        settings: input.settings,
    };
    let mut view = channel.view(&account, &input.addresses, state.public_url.as_deref());
    // A generated secret: in this answer only.
    if let (Some(Value::Object(once)), Some(body)) = (input.shown_once, view.as_object_mut()) {
        body.extend(once);
    }
    Ok(Json(view))
}

pub async fn get_channel(
    State(state): State<Arc<AppState>>,
    Path((location_id, provider)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let channel = channel(&provider)?;
    let (account, addresses) = state
        .store
        .get_channel_account(&location_id, channel.name())
        .await?
        .ok_or_else(|| not_connected(&location_id, channel))?;
    Ok(Json(channel.view(
        &account,
        &addresses,
        state.public_url.as_deref(),
    )))
}

/// Disconnect: its addresses are free for another location, and requests for them are 404.
pub async fn delete_channel(
    State(state): State<Arc<AppState>>,
    Path((location_id, provider)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let channel = channel(&provider)?;
    if state
        .store
        .delete_channel_account(&location_id, channel.name())
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_connected(&location_id, channel))
    }
}

/// Every channel the location has configured, as each channel's GET shows it.
pub async fn list_channels(
    State(state): State<Arc<AppState>>,
    Path(location_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state.store.get_location(&location_id).await?.is_none() {
        return Err(ApiError::not_found(format!("no location {location_id}")));
    }
    let mut data = Vec::new();
    for channel in channels::CHANNELS {
        if let Some((account, addresses)) = state
            .store
            .get_channel_account(&location_id, channel.name())
            .await?
        {
            data.push(channel.view(&account, &addresses, state.public_url.as_deref()));
        }
    }
    Ok(Json(json!({ "data": data })))
}
