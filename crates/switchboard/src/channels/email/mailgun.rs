//! Mailgun Routes, `forward("https://…/conversations/providers/mailgun/inbound")`: the parsed
//! form (`message-headers`, `body-plain`, `body-html`, `attachment-N`, `content-id-map`) or the
//! raw variant (`body-mime`, when the route's URL ends in `mime`: give it
//! `…/mailgun/inbound?mime`). Signed `hex(HMAC-SHA256(signing key, timestamp + token))`; a
//! timestamp more than 5 minutes from now is refused like a wrong signature.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::form::{self, Form};
use super::mime::{self, Attachment, Mail, ParsedParts};
use super::raw::{handled, recipients};
use super::{route_to, PROVIDER};
use crate::channels::{Channel, ChannelAccount, ChannelError, Handled, ProviderRequest, RouteKey};

/// The event's `provider` for mail Mailgun forwarded.
pub const VIA: &str = "mailgun";
/// How far a signed timestamp may be from the time the request is received.
pub const MAX_SKEW_MS: i64 = 5 * 60 * 1000;

pub struct Mailgun;

/// A Mailgun post: its form (for the signature) and its mail.
pub struct Posted {
    form: Form,
    mail: Mail,
    recipients: Vec<String>,
}

/// `hex(HMAC-SHA256(key, timestamp + token))`, as Mailgun signs.
pub fn sign(key: &str, timestamp: &str, token: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    crate::domain::ids::hex(&mac.finalize().into_bytes())
}

fn malformed(why: &str) -> ChannelError {
    ChannelError::Malformed(format!("not a Mailgun route post: {why}"))
}

/// The parsed form written back into one entity.
fn composed(form: &Form) -> Result<Vec<u8>, ChannelError> {
    let headers: Vec<(String, String)> = match form.text("message-headers") {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| malformed(&format!("`message-headers` is not a list of pairs: {e}")))?,
        // Without the header list: the fields Mailgun always sends.
        None => [
            "from",
            "To",
            "Cc",
            "subject",
            "Date",
            "Message-Id",
            "In-Reply-To",
            "References",
        ]
        .iter()
        .filter_map(|n| form.text(n).map(|v| ((*n).to_owned(), v.to_owned())))
        .collect(),
    };
    // content-id-map: {"<cid>": "attachment-1", …}
    let cids: BTreeMap<String, String> = form
        .text("content-id-map")
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or_default();
    let attachments = form
        .files()
        .filter(|(field, ..)| field.starts_with("attachment"))
        .map(|(field, filename, content_type, bytes)| Attachment {
            name: filename.to_owned(),
            content_type: content_type.to_owned(),
            content_id: cids
                .iter()
                .find(|(_, f)| f.as_str() == field)
                .map(|(cid, _)| cid.trim_matches(['<', '>']).to_owned()),
            bytes: bytes.to_vec(),
        })
        .collect();
    Ok(mime::compose(&ParsedParts {
        headers,
        text: form.text("body-plain"),
        html: form.text("body-html"),
        attachments,
    }))
}

impl Channel for Mailgun {
    const PROVIDER: &'static str = PROVIDER;
    const MAIL: bool = true;
    type Parsed = Posted;

    fn parse(req: &ProviderRequest) -> Result<Posted, ChannelError> {
        let form = form::read(req)?;
        for field in ["timestamp", "token", "signature"] {
            if form.text(field).is_none() {
                return Err(malformed(&format!("no `{field}`")));
            }
        }
        let mail = match form.bytes("body-mime") {
            Some(raw) => mime::read(raw)?,
            None => mime::read(&composed(&form)?)?,
        };
        let envelope = form
            .text("recipient")
            .map(|r| {
                r.split(',')
                    .map(|a| a.trim().to_owned())
                    .filter(|a| !a.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let recipients = recipients(envelope, &mail);
        Ok(Posted {
            form,
            mail,
            recipients,
        })
    }

    fn route(parsed: &Posted) -> RouteKey {
        route_to(&parsed.recipients)
    }

    fn verify(
        req: &ProviderRequest,
        parsed: &Posted,
        account: &ChannelAccount,
    ) -> Result<(), ChannelError> {
        let key = account.settings["mailgunSigningKey"]
            .as_str()
            .ok_or_else(|| ChannelError::BadSignature("no mailgunSigningKey is set".into()))?;
        let field = |n: &str| parsed.form.text(n).unwrap_or_default();
        let (timestamp, token) = (field("timestamp"), field("token"));
        // Hex either case, compared in constant time.
        let given = field("signature").to_ascii_lowercase();
        if !bool::from(
            sign(key, timestamp, token)
                .as_bytes()
                .ct_eq(given.as_bytes()),
        ) {
            return Err(ChannelError::BadSignature(
                "signature does not match".into(),
            ));
        }
        let signed_at = timestamp
            .parse::<i64>()
            .map_err(|_| ChannelError::BadSignature("timestamp is not a number".into()))?;
        if (req.received_at_ms - signed_at.saturating_mul(1000)).abs() > MAX_SKEW_MS {
            return Err(ChannelError::BadSignature(format!(
                "timestamp {signed_at} is more than 5 minutes from now (a replay, or a clock off)"
            )));
        }
        Ok(())
    }

    fn handle(
        _req: &ProviderRequest,
        parsed: Posted,
        account: &ChannelAccount,
        now_ms: i64,
    ) -> Result<Handled, ChannelError> {
        let authentication = parsed.mail.verdicts(&[
            ("X-Mailgun-Spf", "spf"),
            ("X-Mailgun-Dkim-Check-Result", "dkim"),
            ("X-Mailgun-Sflag", "spamFlag"),
            ("X-Mailgun-Sscore", "spamScore"),
        ]);
        let token = parsed.form.text("token").unwrap_or_default().to_owned();
        Ok(handled(
            parsed.mail,
            VIA,
            account,
            authentication,
            Some(token),
            now_ms,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector computed with Mailgun's documented algorithm in Python.
    #[test]
    fn the_research_vector_verifies() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/data/vectors.json")).unwrap();
        let v = &vectors["mailgun"][0];
        let s = |k: &str| v[k].as_str().unwrap();
        assert_eq!(
            sign(s("signing_key"), s("timestamp"), s("token")),
            s("signature")
        );
    }
}
