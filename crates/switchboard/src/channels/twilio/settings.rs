//! Twilio's channel configuration (`PUT /v1/locations/{id}/channels/twilio`): the account SID,
//! the auth token (a write-only secret), the numbers it claims, Webhook Rule signing keys and
//! the voice settings; and what a GET shows of it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{VoiceSettings, INBOUND_PATH, PROVIDER, VOICE_INCOMING_PATH, VOICE_STATUS_PATH};
use crate::channels::{mask_secret, ChannelAccount, MIN_SECRET_LEN};
use crate::domain::PhoneNumber;
use crate::error::ApiError;
use crate::routes::decode_json;
use crate::store::ChannelAccountInput;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PutTwilioChannel {
    account_sid: String,
    auth_token: String,
    #[serde(default)]
    phone_numbers: Vec<String>,
    /// Twilio Webhook Rule shared keys by key id, for HMAC-SHA256 signatures.
    #[serde(default)]
    signing_keys: BTreeMap<String, String>,
    /// Calls: forwarding, voicemail and recording.
    #[serde(default)]
    voice: VoiceSettings,
}

/// Numbers one location may connect in one Twilio account: far above any business's, and a
/// bound on what one request makes the store write.
pub const MAX_PHONE_NUMBERS: usize = 10_000;

/// The settings body, checked: what the store keeps.
pub(super) fn configure(body: &[u8]) -> Result<ChannelAccountInput, ApiError> {
    let input: PutTwilioChannel = decode_json(body)?;
    if !super::is_account_sid(&input.account_sid) {
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
    Ok(ChannelAccountInput {
        provider: PROVIDER,
        account_id: input.account_sid,
        secret: input.auth_token,
        settings: json!({ "signingKeys": input.signing_keys, "voice": voice }),
        addresses: numbers,
        shown_once: None,
    })
}

/// What a location's Twilio connection is: the PUT's answer, and the GET's. The auth token and
/// the signing keys are write-only: `secrets` shows that each is set and its last 4
/// characters.
pub(super) fn view(
    account: &ChannelAccount,
    numbers: &[String],
    public_url: Option<&str>,
) -> Value {
    let settings = &account.settings;
    let voice: VoiceSettings =
        serde_json::from_value(settings["voice"].clone()).unwrap_or_default();
    let signing_keys = settings["signingKeys"].as_object();
    let signing_key_ids: Vec<&String> = signing_keys
        .map(|keys| keys.keys().collect())
        .unwrap_or_default();
    let masked_keys: serde_json::Map<String, Value> = signing_keys
        .into_iter()
        .flatten()
        .map(|(id, key)| (id.clone(), mask_secret(key.as_str().unwrap_or_default())))
        .collect();
    let mut body = json!({
        "locationId": account.location_id,
        "provider": PROVIDER,
        "accountSid": account.account_id,
        "phoneNumbers": numbers,
        "signingKeyIds": signing_key_ids,
        "voice": voice,
        "secrets": { "authToken": mask_secret(&account.secret), "signingKeys": masked_keys },
    });
    if let Some(base) = public_url {
        let base = base.trim_end_matches('/');
        body["webhookUrls"] = json!({
            "messaging": format!("{base}{INBOUND_PATH}"),
            "voiceIncoming": format!("{base}{VOICE_INCOMING_PATH}"),
            "voiceStatus": format!("{base}{VOICE_STATUS_PATH}"),
        });
    }
    body
}

/// The settings body's schema, for the OpenAPI document.
pub(super) fn schema() -> Value {
    json!({ "type": "object", "required": ["accountSid", "authToken"], "additionalProperties": false, "properties": {
        "accountSid": { "type": "string" }, "authToken": { "type": "string", "writeOnly": true },
        "phoneNumbers": { "type": "array", "items": { "type": "string" }, "maxItems": MAX_PHONE_NUMBERS },
        "signingKeys": { "type": "object", "additionalProperties": { "type": "string" }, "writeOnly": true },
        "voice": { "type": "object" } } })
}
