//! Postmark's inbound webhook: `POST /conversations/providers/postmark/inbound`, JSON, HTTP
//! Basic auth with the location's inbound token as the password (Postmark signs nothing; the
//! credentials go in the webhook URL, `https://postmark:<token>@…`). `RawEmail` (when "Include
//! raw email content" is on) is read as raw mail; otherwise the parsed fields are written back
//! into one entity and read the same way.

use base64::Engine;
use serde::Deserialize;

use super::mime::{self, Attachment, Mail, ParsedParts};
use super::raw::{handled, recipients};
use super::{basic_password, check_token, route_to, PROVIDER};
use crate::channels::{Channel, ChannelAccount, ChannelError, Handled, ProviderRequest, RouteKey};

/// The event's `provider` for mail Postmark posted.
pub const VIA: &str = "postmark";

pub struct Postmark;

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Inbound {
    from: String,
    from_name: String,
    to: String,
    cc: String,
    bcc: String,
    original_recipient: String,
    subject: String,
    date: String,
    text_body: String,
    html_body: String,
    headers: Vec<Header>,
    attachments: Vec<PostmarkAttachment>,
    raw_email: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Header {
    name: String,
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct PostmarkAttachment {
    name: String,
    content: String,
    content_type: String,
    #[serde(rename = "ContentID")]
    content_id: String,
}

/// A Postmark post's mail and recipients.
pub struct Posted {
    mail: Mail,
    recipients: Vec<String>,
}

fn malformed(why: String) -> ChannelError {
    ChannelError::Malformed(format!("not a Postmark inbound post: {why}"))
}

/// The parsed fields written back into one entity.
fn composed(inbound: &Inbound) -> Result<Vec<u8>, ChannelError> {
    let from = if inbound.from_name.is_empty() {
        inbound.from.clone()
    } else {
        format!(
            "\"{}\" <{}>",
            inbound.from_name.replace(['"', '\\'], ""),
            inbound.from
        )
    };
    let mut headers: Vec<(String, String)> = [
        ("From", from),
        ("To", inbound.to.clone()),
        ("Cc", inbound.cc.clone()),
        ("Bcc", inbound.bcc.clone()),
        ("Subject", inbound.subject.clone()),
        ("Date", inbound.date.clone()),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(n, v)| (n.to_owned(), v))
    .collect();
    let given: Vec<String> = headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    headers.extend(
        inbound
            .headers
            .iter()
            .filter(|h| !given.contains(&h.name.to_ascii_lowercase()))
            .map(|h| (h.name.clone(), h.value.clone())),
    );
    let mut attachments = Vec::with_capacity(inbound.attachments.len());
    for a in &inbound.attachments {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(a.content.as_bytes())
            .map_err(|e| malformed(format!("attachment `{}` is not base64: {e}", a.name)))?;
        attachments.push(Attachment {
            name: a.name.clone(),
            content_type: a.content_type.clone(),
            content_id: (!a.content_id.is_empty())
                .then(|| a.content_id.trim_matches(['<', '>']).to_owned()),
            bytes,
        });
    }
    Ok(mime::compose(&ParsedParts {
        headers,
        text: (!inbound.text_body.is_empty()).then_some(inbound.text_body.as_str()),
        html: (!inbound.html_body.is_empty()).then_some(inbound.html_body.as_str()),
        attachments,
    }))
}

impl Channel for Postmark {
    const PROVIDER: &'static str = PROVIDER;
    const MAIL: bool = true;
    type Parsed = Posted;

    fn parse(req: &ProviderRequest) -> Result<Posted, ChannelError> {
        let content_type = req.header("content-type").unwrap_or_default();
        if crate::media::essence(content_type) != "application/json" {
            return Err(ChannelError::UnsupportedMediaType(format!(
                "this route takes Postmark's JSON, not `{content_type}`"
            )));
        }
        let inbound: Inbound =
            serde_json::from_slice(&req.body).map_err(|e| malformed(e.to_string()))?;
        let mail = if inbound.raw_email.trim().is_empty() {
            mime::read(&composed(&inbound)?)?
        } else {
            mime::read(inbound.raw_email.as_bytes())?
        };
        let envelope: Vec<String> = Some(inbound.original_recipient.trim().to_owned())
            .filter(|r| !r.is_empty())
            .into_iter()
            .collect();
        let recipients = recipients(envelope, &mail);
        Ok(Posted { mail, recipients })
    }

    fn route(parsed: &Posted) -> RouteKey {
        route_to(&parsed.recipients)
    }

    fn verify(
        req: &ProviderRequest,
        _parsed: &Posted,
        account: &ChannelAccount,
    ) -> Result<(), ChannelError> {
        check_token(basic_password(req).as_deref(), account)
    }

    fn handle(
        _req: &ProviderRequest,
        parsed: Posted,
        account: &ChannelAccount,
        now_ms: i64,
    ) -> Result<Handled, ChannelError> {
        // SpamAssassin's verdict, which Postmark adds to the headers.
        let authentication = parsed.mail.verdicts(&[
            ("X-Spam-Score", "spamScore"),
            ("X-Spam-Status", "spamStatus"),
        ]);
        Ok(handled(
            parsed.mail,
            VIA,
            account,
            authentication,
            None,
            now_ms,
        ))
    }
}
