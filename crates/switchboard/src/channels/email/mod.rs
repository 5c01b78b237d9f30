//! The e-mail channel: mail for the addresses and domains a location claims, through the
//! common inbound routes (raw MIME; Mailgun, SendGrid and Postmark as each of them posts it),
//! every route ending in the same parsed mail ([`mime`]) and the same event.
//!
//! Routing: by the envelope recipient when the route gives one, else `To`, `Cc`,
//! `Delivered-To`; for each recipient its address first (plus-addressing ignored:
//! `support+tag@acme.test` is `support@acme.test`), then its domain (`@acme.test`, a
//! catch-all).

use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::channels::{ChannelAccount, ChannelError, Endpoint, Provider, RouteKey};
use crate::error::ApiError;
use crate::routes::openapi::error_response;
use crate::routes::provider_route;
use crate::store::ChannelAccountInput;

mod form;
mod mailgun;
pub mod mime;
mod postmark;
mod raw;
mod sendgrid;
mod settings;
mod smtp;

pub use mailgun::{sign as mailgun_sign, Mailgun};
pub use postmark::Postmark;
pub use raw::RawMime;
pub use sendgrid::SendGrid;
pub use settings::MIN_TOKEN_LEN;

/// The channel's name (persisted with its messages and accounts; never renamed).
pub const PROVIDER: &str = "email";
/// Raw RFC 5322 mail, `Authorization: Bearer <inboundToken>`.
pub const RAW_PATH: &str = "/conversations/providers/email/inbound";
/// Mailgun Routes `forward()`, signed with the location's Mailgun signing key.
pub const MAILGUN_PATH: &str = "/conversations/providers/mailgun/inbound";
/// SendGrid Inbound Parse, HTTP Basic auth with the inbound token as the password.
pub const SENDGRID_PATH: &str = "/conversations/providers/sendgrid/inbound";
/// Postmark's inbound webhook, HTTP Basic auth with the inbound token as the password.
pub const POSTMARK_PATH: &str = "/conversations/providers/postmark/inbound";

/// Each route's `provider` value and path (the configuration answer lists them).
const ROUTES: &[(&str, &str)] = &[
    (raw::VIA, RAW_PATH),
    (mailgun::VIA, MAILGUN_PATH),
    (sendgrid::VIA, SENDGRID_PATH),
    (postmark::VIA, POSTMARK_PATH),
];

pub struct Email;

/// The registry's entry.
pub static EMAIL: Email = Email;

static ENDPOINTS: [Endpoint; 4] = [
    Endpoint {
        path: RAW_PATH,
        summary: "E-mail: a raw RFC 5322 message (message/rfc822)",
        handler: provider_route::<RawMime>,
    },
    Endpoint {
        path: MAILGUN_PATH,
        summary: "E-mail: Mailgun Routes forward() (parsed or raw MIME)",
        handler: provider_route::<Mailgun>,
    },
    Endpoint {
        path: SENDGRID_PATH,
        summary: "E-mail: SendGrid Inbound Parse (parsed or raw)",
        handler: provider_route::<SendGrid>,
    },
    Endpoint {
        path: POSTMARK_PATH,
        summary: "E-mail: Postmark inbound webhook (JSON)",
        handler: provider_route::<Postmark>,
    },
];

/// The local part without its `+tag`, and the domain, lower-cased: `support@acme.test` and
/// `acme.test` for `Support+Orders@Acme.test`.
fn mailbox(recipient: &str) -> Option<(String, String)> {
    let a = recipient.trim().trim_matches(['<', '>']).to_lowercase();
    let (local, domain) = a.rsplit_once('@')?;
    let local = local.split_once('+').map_or(local, |(l, _)| l);
    (!local.is_empty() && !domain.is_empty())
        .then(|| (format!("{local}@{domain}"), domain.to_owned()))
}

/// Recipients looked up at most (each an address and a domain): a mail to thousands of
/// addresses costs no more than this.
const MAX_RECIPIENTS: usize = 50;

/// The account of the first recipient a location claims: each recipient's address, then its
/// domain, in the order given.
pub fn route_to<'a>(recipients: impl IntoIterator<Item = &'a String>) -> RouteKey {
    let mut candidates = Vec::new();
    for r in recipients.into_iter().take(MAX_RECIPIENTS) {
        if let Some((address, domain)) = mailbox(r) {
            for c in [address, format!("@{domain}")] {
                if !candidates.contains(&c) {
                    candidates.push(c);
                }
            }
        }
    }
    let mut candidates = candidates.into_iter();
    RouteKey {
        address: candidates.next(),
        also: candidates.collect(),
        ..RouteKey::default()
    }
}

/// The password of `Authorization: Basic …` (the user name is not checked).
fn basic_password(req: &crate::channels::ProviderRequest) -> Option<String> {
    use base64::Engine;
    let (scheme, credentials) = req.header("authorization")?.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_owned())
}

/// The Basic credentials of the SendGrid and Postmark routes, for the OpenAPI document.
fn basic_auth() -> Value {
    json!([{ "name": "Authorization", "in": "header", "required": true,
        "schema": { "type": "string" },
        "description": "Basic: any user name, the inbound token as the password (put them in the URL given to the service: https://user:<inboundToken>@host/…)" }])
}

/// The inbound token, compared in constant time.
fn check_token(given: Option<&str>, account: &ChannelAccount) -> Result<(), ChannelError> {
    let given = given.ok_or_else(|| ChannelError::BadSignature("no inbound token given".into()))?;
    if bool::from(given.as_bytes().ct_eq(account.secret.as_bytes())) {
        Ok(())
    } else {
        Err(ChannelError::BadSignature(
            "the inbound token does not match".into(),
        ))
    }
}

impl Provider for Email {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn endpoints(&self) -> &'static [Endpoint] {
        &ENDPOINTS
    }

    fn credential_hosts(&self) -> &'static [&'static str] {
        &[]
    }

    fn operation(&self, endpoint: &Endpoint) -> Value {
        let (parameters, content_type) = match endpoint.path {
            RAW_PATH => (raw::parameters(), "message/rfc822"),
            MAILGUN_PATH => (json!([]), "multipart/form-data"),
            SENDGRID_PATH => (basic_auth(), "multipart/form-data"),
            POSTMARK_PATH => (basic_auth(), "application/json"),
            _ => (json!([]), "application/octet-stream"),
        };
        json!({
            "parameters": parameters,
            "requestBody": { "required": true, "content": { content_type: {
                "schema": { "type": "string", "format": "binary" } } } },
            "responses": {
                "200": { "description": "Stored" },
                "400": error_response("Not an e-mail message"),
                "403": error_response("Missing or wrong credentials"),
                "404": error_response("No location receives mail for the recipients (the services retry)"),
                "413": error_response("Larger than max_email_bytes"),
                "415": error_response("Not the content type this route takes")
            }
        })
    }

    fn title(&self) -> &'static str {
        "e-mail"
    }

    fn vendors(&self) -> &'static [&'static str] {
        &["mailgun", "sendgrid", "postmark"]
    }

    fn configure(&self, body: &[u8]) -> Result<ChannelAccountInput, ApiError> {
        settings::configure(body)
    }

    fn view(
        &self,
        account: &ChannelAccount,
        addresses: &[String],
        public_url: Option<&str>,
    ) -> Value {
        settings::view(account, addresses, public_url)
    }

    fn settings_schema(&self) -> Value {
        settings::schema()
    }

    fn listeners(
        &self,
        context: &crate::channels::ListenerContext<'_>,
    ) -> anyhow::Result<Vec<Box<dyn crate::channels::Listener>>> {
        smtp::listeners(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipients_address_comes_before_its_domain_and_tags_are_ignored() {
        let key = route_to(&[
            "Support+Orders@Acme.test".to_owned(),
            "ana@other.test".to_owned(),
        ]);
        assert_eq!(key.address.as_deref(), Some("support@acme.test"));
        assert_eq!(key.also, ["@acme.test", "ana@other.test", "@other.test"]);
        assert_eq!(route_to(&["not an address".to_owned()]).address, None);
    }
}
