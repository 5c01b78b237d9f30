//! The management API under `/v1` (bearer token checked by the router): locations, channel
//! accounts, webhooks, signing keys, and what happened to a message.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_events::standard::WebhookSecret;
use switchboard_events::EventType;

use super::{JsonBody, TWILIO_INBOUND_PATH, TWILIO_VOICE_INCOMING_PATH, TWILIO_VOICE_STATUS_PATH};
use crate::channels::twilio;
use crate::domain::ids::{looks_like_id, new_id};
use crate::domain::time::iso_millis;
use crate::domain::PhoneNumber;
use crate::error::ApiError;
use crate::ssrf;
use crate::startup::AppState;
use crate::store::{ChannelAccountInput, Location, Webhook};

const MAX_NAME_LEN: usize = 200;
const MAX_URL_LEN: usize = 2048;

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
    if input.auth_token.trim().is_empty() || input.auth_token.len() > 256 {
        return Err(ApiError::unprocessable(
            "invalid_auth_token",
            "authToken must be 1 to 256 characters",
        ));
    }
    let mut voice = input.voice;
    voice
        .validate()
        .map_err(|e| ApiError::unprocessable("invalid_voice_settings", e))?;
    let mut numbers = Vec::with_capacity(input.phone_numbers.len());
    for raw in &input.phone_numbers {
        let number = PhoneNumber::parse(raw)
            .map_err(|e| ApiError::unprocessable("invalid_phone_number", e))?;
        if !numbers.contains(&number.as_str().to_owned()) {
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
    let mut body = json!({
        "locationId": location_id,
        "provider": twilio::PROVIDER,
        "accountSid": input.account_sid,
        "phoneNumbers": numbers,
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
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateWebhook {
    url: String,
    events: Vec<String>,
    #[serde(default)]
    location_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    id: String,
    url: String,
    events: Vec<&'static str>,
    location_id: Option<String>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl WebhookView {
    fn of(w: &Webhook, with_secret: bool) -> Self {
        WebhookView {
            id: w.id.clone(),
            url: w.url.clone(),
            events: w.events.iter().map(|e| e.as_str()).collect(),
            location_id: w.location_id.clone(),
            created_at: iso_millis(w.created_at),
            secret: with_secret.then(|| w.secret.clone()),
        }
    }
}

pub async fn create_webhook(
    State(state): State<Arc<AppState>>,
    JsonBody(input): JsonBody<CreateWebhook>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    if input.url.len() > MAX_URL_LEN {
        return Err(ApiError::unprocessable(
            "invalid_url",
            format!("url is longer than {MAX_URL_LEN} characters"),
        ));
    }
    if input.events.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_events",
            "events must name at least one of InboundMessage, OutboundMessage",
        ));
    }
    let mut events = Vec::new();
    for name in &input.events {
        let event = EventType::parse(name).ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_events",
                format!("unknown event `{name}`; known: InboundMessage, OutboundMessage"),
            )
        })?;
        if !events.contains(&event) {
            events.push(event);
        }
    }
    if let Some(location_id) = &input.location_id {
        if state.store.get_location(location_id).await?.is_none() {
            return Err(ApiError::unprocessable(
                "unknown_location",
                format!("no location {location_id}"),
            ));
        }
    }
    ssrf::check_target(&input.url, state.allow_private_targets)
        .await
        .map_err(|e| match e {
            ssrf::TargetError::Forbidden(m) => ApiError::unprocessable("forbidden_target", m),
            ssrf::TargetError::Unresolvable(m) => ApiError::unprocessable("unresolvable_target", m),
        })?;

    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let webhook = Webhook {
        id: new_id(),
        url: input.url,
        events,
        location_id: input.location_id,
        secret: WebhookSecret::from_key(&key).to_whsec(),
        created_at: state.clock.now_ms(),
    };
    state.store.create_webhook(&webhook).await?;
    Ok((StatusCode::CREATED, Json(WebhookView::of(&webhook, true))))
}

pub async fn list_webhooks(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let webhooks = state.store.list_webhooks().await?;
    let views: Vec<WebhookView> = webhooks.iter().map(|w| WebhookView::of(w, false)).collect();
    Ok(Json(json!({ "data": views })))
}

async fn find_webhook(state: &AppState, id: &str) -> Result<Webhook, ApiError> {
    state
        .store
        .get_webhook(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no webhook {id}")))
}

pub async fn get_webhook(
    State(state): State<Arc<AppState>>,
    Path(webhook_id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let webhook = find_webhook(&state, &webhook_id).await?;
    Ok(Json(WebhookView::of(&webhook, false)))
}

pub async fn get_webhook_secret(
    State(state): State<Arc<AppState>>,
    Path(webhook_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let webhook = find_webhook(&state, &webhook_id).await?;
    Ok(Json(json!({ "secret": webhook.secret })))
}

pub async fn delete_webhook(
    State(state): State<Arc<AppState>>,
    Path(webhook_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state
        .store
        .delete_webhook(&webhook_id, state.clock.now_ms())
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no webhook {webhook_id}")))
    }
}

pub async fn signing_keys(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "ed25519": state.keys.ed25519_public_pem() }))
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
    let deliveries = state.store.message_deliveries(&message_id).await?;
    Ok(Json(json!({ "data": deliveries })))
}
