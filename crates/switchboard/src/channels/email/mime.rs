//! One normalization for every e-mail route: a mail, as raw RFC 5322 / MIME bytes, read with
//! `mail-parser` (never by hand) into the message Switchboard files. Every charset the crate
//! knows is decoded (ISO-8859-x, windows-125x, Shift_JIS, ISO-2022-JP, GB18030, KOI8-R,
//! UTF-7, …); what cannot be decoded is replaced, so the event is always valid UTF-8.

use std::collections::BTreeMap;

use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders, PartType};
use sha2::{Digest, Sha256};
use switchboard_events::{Bounce, Direction, MessageType};

use crate::channels::ChannelError;
use crate::domain::ids::hex;
use crate::domain::{ContactIdentity, EmailDetails, Fact, NewMessage};

/// One attachment or inline part of a mail, decoded.
pub use crate::domain::EmailFile as Attachment;

/// A mail as every route ends: what Switchboard files of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub from_address: String,
    pub from_name: Option<String>,
    /// Without angle brackets; derived from the content when the mail has none.
    pub message_id: String,
    /// `References` in order, then the `In-Reply-To` ids not already in it.
    pub references: Vec<String>,
    pub subject: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    /// `Delivered-To`, for routing when the provider gives no envelope.
    pub delivered_to: Vec<String>,
    pub html: String,
    pub text: String,
    pub auto_reply: bool,
    pub bounce: Option<Bounce>,
    pub attachments: Vec<Attachment>,
    pub content_hash: String,
    /// The `X-` header fields (receiving services put their verdicts there), the first 100.
    pub x_headers: Vec<(String, String)>,
}

impl Mail {
    /// The receiving service's verdicts from its `X-` headers: (header, key in the event).
    pub fn verdicts(&self, names: &[(&str, &str)]) -> BTreeMap<String, String> {
        names
            .iter()
            .filter_map(|(h, k)| self.header(h).map(|v| ((*k).to_owned(), v.to_owned())))
            .collect()
    }

    /// The first `X-` header field named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.x_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why bytes are not a mail.
fn not_mail(why: &str) -> ChannelError {
    ChannelError::Malformed(format!("the body is not an e-mail message: {why}"))
}

/// No NUL (the databases' text refuses it), nothing but valid UTF-8 (Rust strings are).
fn clean(s: &str) -> String {
    s.replace('\0', "")
}

/// The addresses of an address header, lower-cased domain kept as written (display only).
fn addresses(value: Option<&Address<'_>>) -> Vec<String> {
    value
        .map(|a| {
            a.iter()
                .filter_map(|a| a.address())
                .map(|a| clean(a.trim()))
                .filter(|a| !a.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Message ids of a header (`References`, `In-Reply-To`): without angle brackets, in order.
fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(t) => vec![clean(t.trim())],
        HeaderValue::TextList(l) => l.iter().map(|t| clean(t.trim())).collect(),
        _ => vec![],
    }
    .into_iter()
    .filter(|id| !id.is_empty())
    .collect()
}

/// HTML of a plain-text mail: escaped, its line breaks kept.
pub fn text_to_html(text: &str) -> String {
    let mut html = String::with_capacity(text.len() + 16);
    html.push_str("<div>");
    for (i, line) in text.lines().enumerate() {
        if i > 0 {
            html.push_str("<br>\n");
        }
        for c in line.chars() {
            match c {
                '&' => html.push_str("&amp;"),
                '<' => html.push_str("&lt;"),
                '>' => html.push_str("&gt;"),
                '"' => html.push_str("&quot;"),
                '\'' => html.push_str("&#39;"),
                c => html.push(c),
            }
        }
    }
    html.push_str("</div>");
    html
}

/// What makes two mails the same mail, whichever route brought them: the From address, the
/// Date, the Subject and the decoded text, whitespace-normalized.
pub fn content_hash(from: &str, date: Option<i64>, subject: Option<&str>, text: &str) -> String {
    let mut h = Sha256::new();
    h.update(from.to_lowercase().as_bytes());
    h.update([0]);
    h.update(date.map(|d| d.to_string()).unwrap_or_default().as_bytes());
    h.update([0]);
    for word in subject.unwrap_or_default().split_whitespace() {
        h.update(word.as_bytes());
        h.update([b' ']);
    }
    h.update([0]);
    for word in text.split_whitespace() {
        h.update(word.as_bytes());
        h.update([b' ']);
    }
    hex(&h.finalize())
}

/// `Auto-Submitted` other than `no`, `X-Autoreply`, `X-Autorespond`, `Precedence:
/// auto_reply|bulk|junk`.
fn is_auto_reply(message: &mail_parser::Message<'_>) -> bool {
    let raw = |name: &str| {
        message
            .header_raw(name)
            .map(|v| v.trim().to_ascii_lowercase())
    };
    raw("Auto-Submitted").is_some_and(|v| !v.is_empty() && v != "no")
        || raw("X-Autoreply").is_some()
        || raw("X-Autorespond").is_some()
        || raw("Precedence").is_some_and(|v| matches!(v.as_str(), "auto_reply" | "bulk" | "junk"))
}

/// A delivery status notification (`multipart/report; report-type=delivery-status`): the
/// first recipient it reports, with its status and action.
fn bounce(message: &mail_parser::Message<'_>) -> Option<Bounce> {
    let root = message.root_part().content_type()?;
    let is_report = root.ctype().eq_ignore_ascii_case("multipart")
        && root
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        && root
            .attribute("report-type")
            .is_some_and(|t| t.eq_ignore_ascii_case("delivery-status"));
    if !is_report {
        return None;
    }
    let status_part = message.parts.iter().find(|p| {
        p.content_type().is_some_and(|c| {
            c.ctype().eq_ignore_ascii_case("message")
                && c.subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("delivery-status"))
        })
    })?;
    // RFC 3464 fields: per-message, then per-recipient groups. The first recipient's.
    let text = String::from_utf8_lossy(status_part.contents());
    let (mut recipient, mut original, mut status, mut action) = (None, None, None, None);
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        // `rfc822; ana@example.com`: the address after the type.
        let typed = || value.split_once(';').map_or(value, |(_, a)| a).trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "final-recipient" if recipient.is_none() => recipient = Some(clean(typed())),
            "original-recipient" if original.is_none() => original = Some(clean(typed())),
            "status" if status.is_none() => status = Some(clean(value)),
            "action" if action.is_none() => action = Some(clean(&value.to_ascii_lowercase())),
            _ => {}
        }
    }
    let recipient = original
        .filter(|o| o.contains('@'))
        .or(recipient)
        .filter(|r| r.contains('@'))?;
    Some(Bounce {
        recipient,
        status,
        action,
    })
}

/// An attachment's bytes as the sender attached them: transfer-decoded, never re-encoded
/// (a text attachment the parser decoded into UTF-8 is read again from the raw mail).
fn file_bytes(message: &mail_parser::Message<'_>, part: &mail_parser::MessagePart<'_>) -> Vec<u8> {
    use mail_parser::decoders::{base64::base64_decode, quoted_printable::quoted_printable_decode};
    if !matches!(part.body, PartType::Text(_) | PartType::Html(_)) {
        return part.contents().to_vec();
    }
    let raw = message
        .raw_message()
        .get(part.raw_body_offset() as usize..part.raw_end_offset() as usize)
        .unwrap_or_default();
    let encoding = part
        .content_transfer_encoding()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let decoded = match encoding.trim() {
        "base64" => base64_decode(raw),
        "quoted-printable" => quoted_printable_decode(raw),
        _ => Some(raw.to_vec()),
    };
    decoded.unwrap_or_else(|| part.contents().to_vec())
}

/// A MIME part's media type, lower-cased (`application/octet-stream` when it gives none).
pub fn media_type(part: &mail_parser::MessagePart<'_>) -> String {
    part.content_type().map_or_else(
        || "application/octet-stream".to_owned(),
        |c| match c.subtype() {
            Some(sub) => format!("{}/{sub}", c.ctype()).to_ascii_lowercase(),
            None => c.ctype().to_ascii_lowercase(),
        },
    )
}

/// Read raw mail bytes. Fails only when they are not mail at all (nothing parses, or no
/// `From` address); a mail that parses only in part is kept with what could be read.
pub fn read(raw: &[u8]) -> Result<Mail, ChannelError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(not_mail("it is empty"));
    }
    let message = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| not_mail("no header could be read"))?;
    let from = message
        .from()
        .and_then(|f| {
            f.iter()
                .find(|a| a.address().is_some_and(|a| a.contains('@')))
        })
        .ok_or_else(|| not_mail("it has no From address"))?;
    let from_address = clean(from.address().unwrap_or_default().trim());
    let from_name = from
        .name()
        .map(|n| clean(n.trim()))
        .filter(|n| !n.is_empty() && !n.eq_ignore_ascii_case(&from_address));

    // Lines end in `\n`, as text does everywhere else in an event.
    let text = message
        .body_text(0)
        .map(|t| clean(&t).replace("\r\n", "\n"))
        .unwrap_or_default();
    let html = match message.html_part(0).map(|p| &p.body) {
        Some(PartType::Html(html)) => clean(html),
        _ => text_to_html(&text),
    };
    let subject = message.subject().map(|s| clean(s.trim()));
    let date = message.date().map(|d| d.to_timestamp());
    let content_hash = content_hash(&from_address, date, subject.as_deref(), &text);

    let mut references = ids(message.references());
    for id in ids(message.in_reply_to()) {
        if !references.contains(&id) {
            references.push(id);
        }
    }
    let message_id = message
        .message_id()
        .map(|id| clean(id.trim()))
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("{}@content.invalid", &content_hash[..32]));

    let attachments = message
        .attachments()
        .filter(|p| !p.is_message() || p.attachment_name().is_some())
        .enumerate()
        .map(|(i, part)| {
            let content_type = media_type(part);
            Attachment {
                name: part
                    .attachment_name()
                    .map(clean)
                    .unwrap_or_else(|| format!("attachment-{}", i + 1)),
                content_type,
                content_id: part
                    .content_id()
                    .map(|id| clean(id.trim().trim_start_matches('<').trim_end_matches('>'))),
                bytes: file_bytes(&message, part),
            }
        })
        .collect();

    Ok(Mail {
        from_address,
        from_name,
        message_id,
        references,
        subject,
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        bcc: addresses(message.bcc()),
        delivered_to: message
            .header_values("Delivered-To")
            .filter_map(|v| v.as_text())
            .map(|v| clean(v.trim()))
            .collect(),
        html,
        text,
        auto_reply: is_auto_reply(&message),
        bounce: bounce(&message),
        attachments,
        content_hash,
        x_headers: message
            .headers_raw()
            .filter(|(name, _)| {
                name.len() > 2 && name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("x-"))
            })
            .take(100)
            .map(|(name, value)| (name.to_owned(), clean(value.trim())))
            .collect(),
    })
}

impl Mail {
    /// The message filed for this mail. A bounce is filed under the recipient it reports
    /// (not under `MAILER-DAEMON`); the provider id is per location (one message per
    /// location for one mail), from the Message-ID and the content.
    pub fn into_fact(
        self,
        provider: &'static str,
        via: &'static str,
        location_id: &str,
        authentication: BTreeMap<String, String>,
        now_ms: i64,
    ) -> Fact {
        let mut key = Sha256::new();
        for part in [location_id, &self.message_id, &self.content_hash] {
            key.update(part.as_bytes());
            key.update([0]);
        }
        let provider_message_id = hex(&key.finalize());
        let (contact, contact_name) = match &self.bounce {
            Some(b) => (ContactIdentity::email(&b.recipient), None),
            None => (
                ContactIdentity::email(&self.from_address),
                self.from_name.clone(),
            ),
        };
        let from = match &self.from_name {
            Some(name) => format!("{name} <{}>", self.from_address),
            None => self.from_address.clone(),
        };
        Fact::Message(NewMessage {
            provider,
            provider_message_id,
            direction: Direction::Inbound,
            message_type: MessageType::Email,
            status: "delivered".to_owned(),
            body: Some(self.html),
            content_type: None,
            attachments: vec![],
            contact,
            other_identities: vec![],
            contact_name,
            from: Some(from),
            to: None,
            user_id: None,
            call: None,
            email: Some(Box::new(EmailDetails {
                message_id: self.message_id,
                references: self.references,
                via,
                subject: self.subject,
                to: self.to,
                cc: self.cc,
                bcc: self.bcc,
                plain_text: self.text,
                auto_reply: self.auto_reply,
                bounce: self.bounce,
                authentication,
                omitted_attachments: vec![],
                files: self.attachments,
                content_hash: self.content_hash,
            })),
            received_at_ms: now_ms,
        })
    }
}

/// What a route that parsed the mail itself gives: its header fields in order, its text and
/// HTML, its files. Written back into one MIME entity ([`compose`]) so that it is read by the
/// same code as raw mail.
#[derive(Debug, Default)]
pub struct ParsedParts<'a> {
    pub headers: Vec<(String, String)>,
    pub text: Option<&'a str>,
    pub html: Option<&'a str>,
    pub attachments: Vec<Attachment>,
}

/// Headers a composed entity sets itself.
const OWN_HEADERS: [&str; 4] = [
    "content-type",
    "content-transfer-encoding",
    "mime-version",
    "content-disposition",
];

/// The parts a provider parsed, as one MIME entity: the provider's header fields (the entity's
/// own content headers replaced), then `multipart/mixed` of the text and HTML
/// (`multipart/alternative`, UTF-8) and the files, every body base64 (so no content can hold a
/// boundary, whose `=_` base64 never writes).
pub fn compose(parts: &ParsedParts<'_>) -> Vec<u8> {
    use base64::Engine;
    let b64 = |bytes: &[u8]| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut lines = String::with_capacity(encoded.len() + encoded.len() / 38);
        for (i, chunk) in encoded.as_bytes().chunks(76).enumerate() {
            if i > 0 {
                lines.push_str("\r\n");
            }
            lines.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        }
        lines
    };
    // A header value on one line (folded where it had line breaks), no control characters.
    let one_line = |v: &str| -> String {
        v.lines()
            .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\r\n ")
    };
    let mut out = String::new();
    for (name, value) in &parts.headers {
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
            && !OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str());
        if valid {
            out.push_str(&format!("{name}: {}\r\n", one_line(value)));
        }
    }
    out.push_str(
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"=_mixed\"\r\n\r\n",
    );
    out.push_str("--=_mixed\r\nContent-Type: multipart/alternative; boundary=\"=_alt\"\r\n\r\n");
    for (subtype, body) in [("plain", parts.text), ("html", parts.html)] {
        if let Some(body) = body {
            out.push_str(&format!(
                "--=_alt\r\nContent-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
                b64(body.as_bytes())
            ));
        }
    }
    out.push_str("--=_alt--\r\n");
    for a in &parts.attachments {
        let name = one_line(&a.name).replace(['"', '\\'], "_");
        let content_type = if a.content_type.bytes().all(|b| b.is_ascii_graphic()) {
            a.content_type.as_str()
        } else {
            "application/octet-stream"
        };
        out.push_str(&format!(
            "--=_mixed\r\nContent-Type: {content_type}; name=\"{name}\"\r\nContent-Disposition: {}; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n",
            if a.content_id.is_some() { "inline" } else { "attachment" }
        ));
        if let Some(id) = &a.content_id {
            out.push_str(&format!("Content-ID: <{}>\r\n", one_line(id)));
        }
        out.push_str(&format!("\r\n{}\r\n", b64(&a.bytes)));
    }
    out.push_str("--=_mixed--\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(header: &str) -> Mail {
        read(format!("From: a@example.com\r\n{header}\r\nSubject: s\r\n\r\nbody\r\n").as_bytes())
            .unwrap()
    }

    #[test]
    fn every_auto_reply_mark_is_seen_and_no_is_not_one() {
        for header in [
            "Auto-Submitted: auto-replied",
            "Auto-Submitted: auto-generated; owner-email=x@example.com",
            "X-Autoreply: yes",
            "X-Autorespond: vacation",
            "Precedence: bulk",
            "Precedence: junk",
            "Precedence: auto_reply",
        ] {
            assert!(with_header(header).auto_reply, "{header}");
        }
        for header in ["Auto-Submitted: no", "Precedence: list", "X-Other: yes"] {
            assert!(!with_header(header).auto_reply, "{header}");
        }
    }

    #[test]
    fn a_composed_entity_reads_back_as_the_same_mail() {
        let raw = read(include_bytes!("../../../tests/data/email/latin1.eml")).unwrap();
        let parts = ParsedParts {
            headers: vec![
                (
                    "From".into(),
                    "=?iso-8859-1?q?Andr=E9_M=FCller?= <andre@example.fr>".into(),
                ),
                ("To".into(), "support@acme.test".into()),
                ("Subject".into(), "Réservation: café crème".into()),
                ("Date".into(), "Thu, 2 May 2024 09:30:00 +0200".into()),
                ("Message-ID".into(), "<latin1-1@mail.example.fr>".into()),
                (
                    "Content-Type".into(),
                    "text/plain; charset=ISO-8859-1".into(),
                ),
                ("Bad Name".into(), "dropped".into()),
            ],
            text: Some(&raw.text),
            html: None,
            attachments: vec![Attachment {
                name: "a \"quoted\" name.pdf".into(),
                content_type: "application/pdf".into(),
                content_id: None,
                bytes: b"%PDF-1.4 \x00\xff".to_vec(),
            }],
        };
        let composed = read(&compose(&parts)).unwrap();
        assert_eq!(composed.from_address, raw.from_address);
        assert_eq!(composed.from_name, raw.from_name);
        assert_eq!(composed.subject, raw.subject);
        assert_eq!(composed.message_id, raw.message_id);
        assert_eq!(composed.text, raw.text);
        assert_eq!(composed.content_hash, raw.content_hash);
        assert_eq!(composed.attachments.len(), 1);
        assert_eq!(composed.attachments[0].bytes, b"%PDF-1.4 \x00\xff");
        assert_eq!(composed.attachments[0].name, "a _quoted_ name.pdf");
    }
}
