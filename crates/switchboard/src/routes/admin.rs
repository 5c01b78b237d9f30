//! The management API under `/v1` (bearer token checked by the router): locations, channel
//! accounts, signing keys, and what happened to a message. Webhooks are in `webhooks`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::JsonBody;
use crate::channels::twilio;
use crate::channels::twilio::{
    INBOUND_PATH as TWILIO_INBOUND_PATH, VOICE_INCOMING_PATH as TWILIO_VOICE_INCOMING_PATH,
    VOICE_STATUS_PATH as TWILIO_VOICE_STATUS_PATH,
};
use crate::domain::ids::looks_like_id;
use crate::domain::PhoneNumber;
use crate::error::ApiError;
use crate::startup::AppState;
use crate::store::{ChannelAccountInput, Location};

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

/// The shortest secret a provider may sign with (auth tokens, shared signing keys).
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PutTwilioChannel {
    account_sid: String,
    auth_token: String,
    #[serde(default)]
    phone_numbers: Vec<String>,
    /// Twilio Webhook Rule shared keys by key id, for HMAC-SHA256 signatures.
    #[serde(default)]
    signing_keys: BTreeMap<String, String>,
    /// Calls: forwarding, voicemail and recording.
    #[serde(default)]
    voice: twilio::VoiceSettings,
}

/// Numbers one location may connect in one Twilio account: far above any business's, and a
/// bound on what one request makes the store write.
pub const MAX_PHONE_NUMBERS: usize = 10_000;

pub async fn put_twilio_channel(
    State(state): State<Arc<AppState>>,
    Path(location_id): Path<String>,
    JsonBody(input): JsonBody<PutTwilioChannel>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !twilio::is_account_sid(&input.account_sid) {
        return Err(ApiError::unprocessable(
            "invalid_account_sid",
            "accountSid must be AC followed by 32 hexadecimal digits",
        ));
    }
    if input.auth_token.trim().len() < MIN_SECRET_LEN || input.auth_token.len() > 256 {
        return Err(ApiError::unprocessable(
            "invalid_auth_token",
            format!("authToken must be {MIN_SECRET_LEN} to 256 characters (Twilio's are 32)"),
        ));
    }
    // Key ids are not secret: a short key would let anyone sign.
    if let Some((id, _)) = input
        .signing_keys
        .iter()
        .find(|(_, key)| key.trim().len() < MIN_SECRET_LEN || key.len() > 256)
    {
        return Err(ApiError::unprocessable(
            "invalid_signing_key",
            format!("signingKeys.{id} must be {MIN_SECRET_LEN} to 256 characters"),
        ));
    }
    let mut voice = input.voice;
    voice
        .validate()
        .map_err(|e| ApiError::unprocessable("invalid_voice_settings", e))?;
    if input.phone_numbers.len() > MAX_PHONE_NUMBERS {
        return Err(ApiError::unprocessable(
            "invalid_phone_number",
            format!("phoneNumbers holds at most {MAX_PHONE_NUMBERS} numbers"),
        ));
    }
    // In the order given, each once: linear, whatever the list holds.
    let mut seen = std::collections::HashSet::with_capacity(input.phone_numbers.len());
    let mut numbers = Vec::with_capacity(input.phone_numbers.len());
    for raw in &input.phone_numbers {
        let number = PhoneNumber::parse(raw)
            .map_err(|e| ApiError::unprocessable("invalid_phone_number", e))?;
        if seen.insert(number.as_str().to_owned()) {
            numbers.push(number.as_str().to_owned());
        }
    }
    let account = ChannelAccountInput {
        provider: twilio::PROVIDER,
        account_id: input.account_sid.clone(),
        secret: input.auth_token,
        settings: json!({ "signingKeys": input.signing_keys, "voice": voice }),
        addresses: numbers.clone(),
    };
    state
        .store
        .put_channel_account(&location_id, &account, state.clock.now_ms())
        .await?;
    Ok(Json(twilio_channel_view(
        &state,
        &location_id,
        &account.account_id,
        &numbers,
        &account.settings,
    )))
}

/// What a location's Twilio connection is: the PUT's answer, and the GET's. The auth token and
/// the signing keys' secrets are never shown, only the signing keys' ids.
fn twilio_channel_view(
    state: &AppState,
    location_id: &str,
    account_sid: &str,
    numbers: &[String],
    settings: &serde_json::Value,
) -> serde_json::Value {
    let voice: twilio::VoiceSettings =
        serde_json::from_value(settings["voice"].clone()).unwrap_or_default();
    let signing_key_ids: Vec<&String> = settings["signingKeys"]
        .as_object()
        .map(|keys| keys.keys().collect())
        .unwrap_or_default();
    let mut body = json!({
        "locationId": location_id,
        "provider": twilio::PROVIDER,
        "accountSid": account_sid,
        "phoneNumbers": numbers,
        "signingKeyIds": signing_key_ids,
        "voice": voice,
    });
    if let Some(base) = &state.public_url {
        let base = base.trim_end_matches('/');
        body["webhookUrls"] = json!({
            "messaging": format!("{base}{TWILIO_INBOUND_PATH}"),
            "voiceIncoming": format!("{base}{TWILIO_VOICE_INCOMING_PATH}"),
            "voiceStatus": format!("{base}{TWILIO_VOICE_STATUS_PATH}"),
        });
    }
    body
}

pub async fn get_twilio_channel(
    State(state): State<Arc<AppState>>,
    Path(location_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (account, numbers) = state
        .store
        .get_channel_account(&location_id, twilio::PROVIDER)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "location {location_id} has no Twilio account connected"
            ))
        })?;
    Ok(Json(twilio_channel_view(
        &state,
        &location_id,
        &account.account_id,
        &numbers,
        &account.settings,
    )))
}

/// Disconnect: its numbers are free for another location, and requests for them are 404.
pub async fn delete_twilio_channel(
    State(state): State<Arc<AppState>>,
    Path(location_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state
        .store
        .delete_channel_account(&location_id, twilio::PROVIDER)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "location {location_id} has no Twilio account connected"
        )))
    }
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
