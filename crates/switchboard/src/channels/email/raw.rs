//! Raw mail: `POST /conversations/providers/email/inbound`, `Content-Type: message/rfc822`,
//! `Authorization: Bearer <inboundToken>`. The envelope recipient may be given as
//! `?recipient=` (an MTA's pipe, a forwarding script); else the headers decide.

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use super::mime::{self, Mail};
use super::{check_token, route_to, PROVIDER};
use crate::channels::{Channel, ChannelAccount, ChannelError, Handled, ProviderRequest, RouteKey};

/// The event's `provider` for mail posted raw.
pub const VIA: &str = "raw";

pub struct RawMime;

/// A mail and who it was sent to, in the order to route by.
pub struct Received {
    mail: Mail,
    recipients: Vec<String>,
}

/// `?recipient=` values of a URL, in order.
fn recipients_in_query(url: &str) -> Vec<String> {
    url.split_once('?')
        .map(|(_, q)| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == "recipient")
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The recipients to route by: the envelope's when given, else `To`, `Cc`, `Delivered-To`.
pub fn recipients(envelope: Vec<String>, mail: &Mail) -> Vec<String> {
    if !envelope.is_empty() {
        return envelope;
    }
    mail.to
        .iter()
        .chain(&mail.cc)
        .chain(&mail.delivered_to)
        .cloned()
        .collect()
}

/// How the route is authenticated and addressed, for the OpenAPI document.
pub fn parameters() -> serde_json::Value {
    serde_json::json!([
        { "name": "Authorization", "in": "header", "required": true,
          "schema": { "type": "string" }, "description": "Bearer <inboundToken>" },
        { "name": "recipient", "in": "query", "required": false, "schema": { "type": "string" },
          "description": "The envelope recipient (else To, Cc and Delivered-To decide)" }
    ])
}

/// What every e-mail route gives once a mail is read and verified: its message, filed under
/// the account's location with the route's verdicts, and the reply for once it is stored.
pub fn handled(
    mail: Mail,
    via: &'static str,
    account: &ChannelAccount,
    authentication: std::collections::BTreeMap<String, String>,
    nonce: Option<String>,
    now_ms: i64,
) -> Handled {
    let fact = mail.into_fact(PROVIDER, via, &account.location_id, authentication, now_ms);
    Handled {
        facts: vec![fact],
        routed: vec![],
        nonce,
        reply: stored(),
    }
}

/// The reply every e-mail route gives once the mail is stored.
pub fn stored() -> axum::response::Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{\"stored\":true}",
    )
        .into_response()
}

impl Channel for RawMime {
    const PROVIDER: &'static str = PROVIDER;
    const MAIL: bool = true;
    type Parsed = Received;

    fn parse(req: &ProviderRequest) -> Result<Received, ChannelError> {
        let content_type = req.header("content-type").unwrap_or_default();
        let essence = crate::media::essence(content_type);
        if essence != "message/rfc822" {
            return Err(ChannelError::UnsupportedMediaType(format!(
                "this route takes raw mail as message/rfc822, not `{essence}`"
            )));
        }
        let mail = mime::read(&req.body)?;
        let recipients = recipients(recipients_in_query(&req.url), &mail);
        Ok(Received { mail, recipients })
    }

    fn route(parsed: &Received) -> RouteKey {
        route_to(&parsed.recipients)
    }

    fn verify(
        req: &ProviderRequest,
        _parsed: &Received,
        account: &ChannelAccount,
    ) -> Result<(), ChannelError> {
        let bearer = req.header("authorization").and_then(|a| {
            let (scheme, token) = a.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        check_token(bearer, account)
    }

    fn handle(
        _req: &ProviderRequest,
        parsed: Received,
        account: &ChannelAccount,
        now_ms: i64,
    ) -> Result<Handled, ChannelError> {
        Ok(handled(
            parsed.mail,
            VIA,
            account,
            Default::default(),
            None,
            now_ms,
        ))
    }
}
