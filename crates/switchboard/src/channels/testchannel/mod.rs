//! A channel that exists only to prove the registry's seam: compiled with the `test-channel`
//! feature, which only the tests turn on. It lives in this folder and one line of
//! `CHANNELS`, and from that alone it gets its route, its configuration API, its OpenAPI
//! entry and its metric labels (`tests/api/registry.rs` shows each).
//!
//! A request is a JSON POST `{"id","to","from","text","also"?}` signed with
//! `X-Testchannel-Signature`: base64 HMAC-SHA256 of the body under the location's secret. `to`
//! is the address a location claims; `from` is the sender's verified identity (a phone number,
//! an e-mail address, else an id of this channel), `also` more identities of the sender
//! (`[{"kind":"phone"|"email","value","verified"}]`), `others` messages for other addresses in
//! the same request (`[{"id","to","from","text"}]`). Settings: `{"secret","addresses":[…]}`.

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use switchboard_events::{Direction, MessageType, CONTENT_TYPE_TEXT_PLAIN};

use crate::channels::{
    mask_secret, Channel, ChannelAccount, ChannelError, Endpoint, Handled, Provider,
    ProviderRequest, RouteKey, MIN_SECRET_LEN,
};
use crate::domain::{ContactIdentity, Fact, NewMessage, OtherIdentity, PhoneNumber};
use crate::error::ApiError;
use crate::routes::openapi::error_response;
use crate::routes::{decode_json, provider_route};
use crate::store::ChannelAccountInput;

/// The provider name persisted with its messages and accounts.
pub const PROVIDER: &str = "testchannel";
pub const INBOUND_PATH: &str = "/conversations/providers/testchannel/inbound";
pub const SIGNATURE_HEADER: &str = "x-testchannel-signature";

/// The one account id every location's test channel has (the address routes requests).
const ACCOUNT_ID: &str = "testchannel";
/// Longest address a location may claim.
const MAX_ADDRESS_LEN: usize = 200;

pub struct TestChannel;

/// The registry's entry.
pub static TESTCHANNEL: TestChannel = TestChannel;

static ENDPOINTS: [Endpoint; 1] = [Endpoint {
    path: INBOUND_PATH,
    summary: "Test channel: a message comes in (tests only)",
    handler: provider_route::<TestChannel>,
}];

/// The signature of `body` under `secret`, as the test channel's provider sends it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    id: String,
    to: String,
    from: String,
    text: String,
    #[serde(default)]
    also: Vec<Also>,
    /// Messages for other addresses, carried in the same signed request.
    #[serde(default)]
    others: Vec<Other>,
}

/// A message for another address in the same request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Other {
    id: String,
    to: String,
    from: String,
    text: String,
}

/// One more identity of the sender.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Also {
    kind: String,
    value: String,
    verified: bool,
}

/// A phone number or an e-mail address as an identity; anything else as an id of this channel.
fn identity(value: &str) -> ContactIdentity {
    match PhoneNumber::parse(value) {
        Ok(phone) => ContactIdentity::phone(&phone),
        Err(_) if value.contains('@') => ContactIdentity::email(value),
        Err(_) => ContactIdentity::address(PROVIDER, value),
    }
}

/// The message a request (or one of its `others`) holds.
fn message(
    id: &str,
    from: &str,
    to: &str,
    text: &str,
    other_identities: Vec<OtherIdentity>,
    now_ms: i64,
) -> Fact {
    Fact::Message(NewMessage {
        provider: PROVIDER,
        provider_message_id: id.to_owned(),
        direction: Direction::Inbound,
        message_type: MessageType::Sms,
        status: "delivered".to_owned(),
        body: Some(text.replace('\0', "")),
        content_type: Some(CONTENT_TYPE_TEXT_PLAIN.to_owned()),
        attachments: vec![],
        contact: identity(from),
        other_identities,
        contact_name: None,
        from: Some(from.to_owned()),
        to: Some(to.to_owned()),
        user_id: None,
        call: None,
        email: None,
        received_at_ms: now_ms,
    })
}

impl Channel for TestChannel {
    const PROVIDER: &'static str = PROVIDER;
    type Parsed = Inbound;

    fn parse(req: &ProviderRequest) -> Result<Inbound, ChannelError> {
        let inbound: Inbound = serde_json::from_slice(&req.body)
            .map_err(|e| ChannelError::Malformed(format!("not a test channel message: {e}")))?;
        if inbound.id.is_empty() || inbound.id.len() > MAX_ADDRESS_LEN {
            return Err(ChannelError::Malformed(
                "`id` must be 1 to 200 bytes".into(),
            ));
        }
        Ok(inbound)
    }

    fn route(parsed: &Inbound) -> RouteKey {
        RouteKey {
            address: Some(parsed.to.clone()),
            also: Vec::new(),
            correlation_id: None,
            account_id: None,
        }
    }

    fn verify(
        req: &ProviderRequest,
        _parsed: &Inbound,
        account: &ChannelAccount,
    ) -> Result<(), ChannelError> {
        let given = req
            .header(SIGNATURE_HEADER)
            .ok_or_else(|| ChannelError::BadSignature(format!("missing {SIGNATURE_HEADER}")))?;
        let given = base64::engine::general_purpose::STANDARD
            .decode(given)
            .map_err(|_| ChannelError::BadSignature(format!("{SIGNATURE_HEADER} is not base64")))?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(account.secret.as_bytes()).expect("any key length");
        mac.update(&req.body);
        // Constant time.
        mac.verify_slice(&given)
            .map_err(|_| ChannelError::BadSignature("signature does not match".into()))
    }

    fn handle(
        _req: &ProviderRequest,
        parsed: Inbound,
        _account: &ChannelAccount,
        now_ms: i64,
    ) -> Result<Handled, ChannelError> {
        let routed = parsed
            .others
            .iter()
            .map(|o| {
                let key = RouteKey {
                    address: Some(o.to.clone()),
                    also: Vec::new(),
                    correlation_id: None,
                    account_id: None,
                };
                let fact = message(&o.id, &o.from, &o.to, &o.text, vec![], now_ms);
                (key, fact)
            })
            .collect();
        let other_identities = parsed
            .also
            .iter()
            .map(|a| match a.kind.as_str() {
                "phone" | "email" => Ok(OtherIdentity {
                    identity: identity(&a.value),
                    verified: a.verified,
                }),
                other => Err(ChannelError::Malformed(format!(
                    "`also`: unknown kind `{other}`"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let own = message(
            &parsed.id,
            &parsed.from,
            &parsed.to,
            &parsed.text,
            other_identities,
            now_ms,
        );
        Ok(Handled {
            nonce: None,
            facts: vec![own],
            routed,
            reply: (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"stored\":true}",
            )
                .into_response(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    secret: String,
    #[serde(default)]
    addresses: Vec<String>,
}

impl Provider for TestChannel {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn endpoints(&self) -> &'static [Endpoint] {
        &ENDPOINTS
    }

    fn credential_hosts(&self) -> &'static [&'static str] {
        &[]
    }

    fn operation(&self, _endpoint: &Endpoint) -> Value {
        json!({
            "parameters": [{
                "name": "X-Testchannel-Signature", "in": "header", "required": true,
                "schema": { "type": "string" },
                "description": "base64 HMAC-SHA256 of the body"
            }],
            "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object" } } } },
            "responses": {
                "200": { "description": "Stored" },
                "400": error_response("Not a test channel message"),
                "403": error_response("Missing or wrong signature")
            }
        })
    }

    fn title(&self) -> &'static str {
        "test channel"
    }

    fn vendors(&self) -> &'static [&'static str] {
        &[PROVIDER]
    }

    fn configure(&self, body: &[u8]) -> Result<ChannelAccountInput, ApiError> {
        let settings: Settings = decode_json(body)?;
        if settings.secret.trim().len() < MIN_SECRET_LEN || settings.secret.len() > 256 {
            return Err(ApiError::unprocessable(
                "invalid_secret",
                format!("secret must be {MIN_SECRET_LEN} to 256 characters"),
            ));
        }
        if let Some(bad) = settings
            .addresses
            .iter()
            .find(|a| a.is_empty() || a.len() > MAX_ADDRESS_LEN)
        {
            return Err(ApiError::unprocessable(
                "invalid_address",
                format!("addresses: `{bad}` must be 1 to {MAX_ADDRESS_LEN} bytes"),
            ));
        }
        let mut addresses = settings.addresses;
        addresses.sort();
        addresses.dedup();
        Ok(ChannelAccountInput {
            provider: PROVIDER,
            account_id: ACCOUNT_ID.to_owned(),
            secret: settings.secret,
            settings: json!({}),
            addresses,
            shown_once: None,
        })
    }

    fn view(&self, account: &ChannelAccount, addresses: &[String], _: Option<&str>) -> Value {
        json!({
            "locationId": account.location_id,
            "provider": PROVIDER,
            "addresses": addresses,
            "secrets": { "secret": mask_secret(&account.secret) },
        })
    }

    fn settings_schema(&self) -> Value {
        json!({ "type": "object", "required": ["secret"], "additionalProperties": false, "properties": {
            "secret": { "type": "string", "writeOnly": true },
            "addresses": { "type": "array", "items": { "type": "string" } } } })
    }
}
