//! SendGrid Inbound Parse: `POST /conversations/providers/sendgrid/inbound`, always
//! `multipart/form-data`, HTTP Basic auth with the location's inbound token as the password
//! (set the Parse URL to `https://sendgrid:<token>@…`). "POST the raw, full MIME message" mode
//! sends the mail in `email`, read as raw mail; the parsed mode sends `headers` (the mail's
//! header block), `text` and `html` in the charsets `charsets` names, `attachment-info` and
//! files `attachment1…N`, written back into one entity and read the same way. The envelope
//! (`envelope.to`) routes.

use std::collections::BTreeMap;

use mail_parser::MessageParser;
use serde::Deserialize;

use super::form::{self, Form};
use super::mime::{self, Attachment, Mail, ParsedParts};
use super::raw::{handled, recipients};
use super::{basic_password, check_token, route_to, PROVIDER};
use crate::channels::{Channel, ChannelAccount, ChannelError, Handled, ProviderRequest, RouteKey};

/// The event's `provider` for mail SendGrid posted.
pub const VIA: &str = "sendgrid";

pub struct SendGrid;

/// A SendGrid post: its form (for the verdicts) and its mail.
pub struct Posted {
    form: Form,
    mail: Mail,
    recipients: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Envelope {
    to: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AttachmentInfo {
    filename: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    content_type: Option<String>,
    #[serde(rename = "content-id")]
    content_id: Option<String>,
}

fn malformed(why: String) -> ChannelError {
    ChannelError::Malformed(format!("not a SendGrid Inbound Parse post: {why}"))
}

/// A field in the charset `charsets` names for it (UTF-8 when it names none or one unknown).
fn decoded(form: &Form, charsets: &BTreeMap<String, String>, field: &str) -> Option<String> {
    let bytes = form.bytes(field)?;
    let decoder = charsets
        .get(field)
        .and_then(|c| mail_parser::decoders::charsets::map::charset_decoder(c.as_bytes()));
    Some(match decoder {
        Some(decode) => decode(bytes),
        None => String::from_utf8_lossy(bytes).into_owned(),
    })
}

/// The parsed fields written back into one entity.
fn composed(form: &Form) -> Result<Vec<u8>, ChannelError> {
    let charsets: BTreeMap<String, String> = form
        .text("charsets")
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or_default();
    // The header block, read by the MIME crate into its fields (values as sent).
    let block = form.bytes("headers").unwrap_or_default();
    let mut entity = block.to_vec();
    entity.extend_from_slice(b"\r\n\r\n");
    let headers: Vec<(String, String)> = MessageParser::default()
        .parse_headers(&entity)
        .map(|m| {
            m.headers_raw()
                .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let info: BTreeMap<String, AttachmentInfo> = form
        .text("attachment-info")
        .and_then(|i| serde_json::from_str(i).ok())
        .unwrap_or_default();
    let attachments = form
        .files()
        .filter(|(field, ..)| field.starts_with("attachment"))
        .map(|(field, filename, content_type, bytes)| {
            let about = info.get(field);
            Attachment {
                name: about
                    .and_then(|a| a.filename.clone().or_else(|| a.name.clone()))
                    .unwrap_or_else(|| filename.to_owned()),
                content_type: about
                    .and_then(|a| a.content_type.clone())
                    .unwrap_or_else(|| content_type.to_owned()),
                content_id: about
                    .and_then(|a| a.content_id.clone())
                    .map(|id| id.trim_matches(['<', '>']).to_owned()),
                bytes: bytes.to_vec(),
            }
        })
        .collect();
    let (text, html) = (
        decoded(form, &charsets, "text"),
        decoded(form, &charsets, "html"),
    );
    if headers.is_empty() {
        return Err(malformed("neither `email` nor `headers` was sent".into()));
    }
    Ok(mime::compose(&ParsedParts {
        headers,
        text: text.as_deref(),
        html: html.as_deref(),
        attachments,
    }))
}

impl Channel for SendGrid {
    const PROVIDER: &'static str = PROVIDER;
    const MAIL: bool = true;
    type Parsed = Posted;

    fn parse(req: &ProviderRequest) -> Result<Posted, ChannelError> {
        let form = form::read(req)?;
        let mail = match form.bytes("email") {
            Some(raw) => mime::read(raw)?,
            None => mime::read(&composed(&form)?)?,
        };
        let envelope = form
            .text("envelope")
            .map(|e| {
                serde_json::from_str::<Envelope>(e)
                    .map_err(|e| malformed(format!("`envelope` is not SendGrid's JSON: {e}")))
            })
            .transpose()?
            .unwrap_or_default();
        let recipients = recipients(envelope.to, &mail);
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
        let authentication = [
            ("SPF", "spf"),
            ("dkim", "dkim"),
            ("spam_score", "spamScore"),
        ]
        .iter()
        .filter_map(|(field, key)| {
            let value = parsed.form.text(field)?.trim();
            (!value.is_empty()).then(|| ((*key).to_owned(), value.to_owned()))
        })
        .collect();
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
