//! The e-mail channel's configuration (`PUT /v1/locations/{id}/channels/email`): the
//! addresses and domains a location receives mail for (each claimed like a phone number: it
//! belongs to one location), the inbound token the raw, SendGrid and Postmark routes
//! authenticate with (generated when not given, shown once), and the Mailgun signing key.

use rand::distributions::{Alphanumeric, DistString};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{PROVIDER, ROUTES};
use crate::channels::{mask_secret, ChannelAccount, MIN_SECRET_LEN};
use crate::error::ApiError;
use crate::routes::decode_json;
use crate::store::ChannelAccountInput;

/// The shortest inbound token accepted; generated ones are 32 characters.
pub const MIN_TOKEN_LEN: usize = 24;
/// Addresses and domains one location may claim.
pub const MAX_CLAIMS: usize = 10_000;
/// The one account id of every location's e-mail channel (recipients route requests).
pub const ACCOUNT_ID: &str = "email";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PutEmailChannel {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    domains: Vec<String>,
    inbound_token: Option<String>,
    mailgun_signing_key: Option<String>,
}

fn invalid(code: &'static str, message: String) -> ApiError {
    ApiError::unprocessable(code, message)
}

/// `support@acme.test` as it is claimed: lower-cased, checked.
fn address(raw: &str) -> Result<String, ApiError> {
    let a = raw.trim().to_lowercase();
    let bad = |why: &str| invalid("invalid_address", format!("addresses: `{raw}` {why}"));
    let Some((local, domain)) = a.rsplit_once('@') else {
        return Err(bad("is not an e-mail address"));
    };
    if local.is_empty() || local.contains('+') {
        return Err(bad(
            "needs a local part without `+` (plus-addressed mail reaches the address without its tag)",
        ));
    }
    domain_name(domain).map_err(|_| bad("has no valid domain"))?;
    if a.len() > 254 || a.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("is not an e-mail address"));
    }
    Ok(a)
}

/// `acme.test`, lower-cased, checked.
fn domain_name(raw: &str) -> Result<String, ApiError> {
    let d = raw.trim().trim_start_matches('@').to_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(d)
    } else {
        Err(invalid(
            "invalid_domain",
            format!("domains: `{raw}` is not a domain name"),
        ))
    }
}

/// The settings body, checked: what the store keeps. Addresses are claimed as they are,
/// domains as `@domain`.
pub(super) fn configure(body: &[u8]) -> Result<ChannelAccountInput, ApiError> {
    let input: PutEmailChannel = decode_json(body)?;
    if input.addresses.len() + input.domains.len() > MAX_CLAIMS {
        return Err(invalid(
            "too_many_addresses",
            format!("addresses and domains hold at most {MAX_CLAIMS} entries together"),
        ));
    }
    let mut claims = Vec::with_capacity(input.addresses.len() + input.domains.len());
    for a in &input.addresses {
        claims.push(address(a)?);
    }
    for d in &input.domains {
        claims.push(format!("@{}", domain_name(d)?));
    }
    claims.sort();
    claims.dedup();
    let (token, generated) = match input.inbound_token {
        Some(t) if t.trim().len() < MIN_TOKEN_LEN || t.len() > 256 => {
            return Err(invalid(
                "invalid_inbound_token",
                format!("inboundToken must be {MIN_TOKEN_LEN} to 256 characters"),
            ))
        }
        Some(t) => (t, false),
        None => (
            Alphanumeric.sample_string(&mut rand::thread_rng(), 32),
            true,
        ),
    };
    if let Some(key) = &input.mailgun_signing_key {
        if key.trim().len() < MIN_SECRET_LEN || key.len() > 256 {
            return Err(invalid(
                "invalid_mailgun_signing_key",
                format!("mailgunSigningKey must be {MIN_SECRET_LEN} to 256 characters"),
            ));
        }
    }
    Ok(ChannelAccountInput {
        provider: PROVIDER,
        account_id: ACCOUNT_ID.to_owned(),
        shown_once: generated.then(|| json!({ "inboundToken": token })),
        secret: token,
        settings: json!({ "mailgunSigningKey": input.mailgun_signing_key }),
        addresses: claims,
    })
}

/// What a location's e-mail channel is: the PUT's answer and the GET's. The token and the
/// signing key are write-only (`secrets` shows that each is set and its last 4 characters).
pub(super) fn view(account: &ChannelAccount, claims: &[String], public_url: Option<&str>) -> Value {
    let (domains, addresses): (Vec<&String>, Vec<&String>) =
        claims.iter().partition(|c| c.starts_with('@'));
    let domains: Vec<&str> = domains.iter().map(|d| &d[1..]).collect();
    let mut secrets = json!({ "inboundToken": mask_secret(&account.secret) });
    if let Some(key) = account.settings["mailgunSigningKey"].as_str() {
        secrets["mailgunSigningKey"] = mask_secret(key);
    }
    let mut body = json!({
        "locationId": account.location_id,
        "provider": PROVIDER,
        "addresses": addresses,
        "domains": domains,
        "secrets": secrets,
    });
    if let Some(base) = public_url {
        let base = base.trim_end_matches('/');
        let urls: serde_json::Map<String, Value> = ROUTES
            .iter()
            .map(|(via, path)| ((*via).to_owned(), json!(format!("{base}{path}"))))
            .collect();
        body["inboundUrls"] = Value::Object(urls);
    }
    body
}

/// The settings body's schema, for the OpenAPI document.
pub(super) fn schema() -> Value {
    json!({ "type": "object", "additionalProperties": false, "properties": {
        "addresses": { "type": "array", "items": { "type": "string", "format": "email" } },
        "domains": { "type": "array", "items": { "type": "string" } },
        "inboundToken": { "type": "string", "writeOnly": true, "minLength": MIN_TOKEN_LEN,
            "description": "Generated when not given, and shown once in the answer" },
        "mailgunSigningKey": { "type": "string", "writeOnly": true } } })
}
