//! `switchboard simulate email --via raw|mailgun|sendgrid|postmark|smtp`: post a mail to a
//! Switchboard as that route's service posts one: raw MIME with the bearer token, Mailgun's
//! signed parsed form, SendGrid's parsed Inbound Parse form and Postmark's JSON, both with the
//! token as the Basic-auth password; or hand it to Switchboard's SMTP server as a sending mail
//! server does ([`super::smtp`]).

use anyhow::Context;
use base64::Engine;
use serde_json::json;

use crate::channels::email::mime::{compose, Attachment, ParsedParts};
use crate::channels::email::{mailgun_sign, MAILGUN_PATH, POSTMARK_PATH, RAW_PATH, SENDGRID_PATH};

/// The route a simulated mail takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    Raw,
    Mailgun,
    Sendgrid,
    Postmark,
    Smtp,
}

/// What to send (also the command's arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct SimulatedEmail {
    /// The Switchboard to post to [default: the configured `listen` address, on loopback when
    /// it listens on every interface]; with `--via smtp`, its SMTP server's host:port
    /// [default: the configured `smtp_listen`, likewise].
    #[arg(long)]
    pub server: Option<String>,
    #[arg(long, value_enum)]
    pub via: Via,
    /// The location's inbound token (raw, sendgrid, postmark).
    #[arg(long)]
    pub inbound_token: Option<String>,
    /// The location's Mailgun signing key (mailgun).
    #[arg(long)]
    pub mailgun_signing_key: Option<String>,
    /// The sender: `ana@example.com` or `Ana Perez <ana@example.com>`.
    #[arg(long)]
    pub from: String,
    /// The address the mail is for (an address or domain a location claims).
    #[arg(long)]
    pub to: String,
    #[arg(long, default_value = "Hello from the simulator")]
    pub subject: String,
    #[arg(long, default_value = "Hello from the simulator")]
    pub body: String,
    /// A file to attach (repeat for several).
    #[arg(long)]
    pub attach: Vec<std::path::PathBuf>,
    /// The Message-ID of the mail this one replies to.
    #[arg(long)]
    pub in_reply_to: Option<String>,
    /// This mail's Message-ID [default: a new one].
    #[arg(long)]
    pub message_id: Option<String>,
}

/// A `multipart/form-data` body of text fields and files, and its content type.
fn multipart(texts: &[(&str, String)], files: &[(String, Attachment)]) -> (String, Vec<u8>) {
    let boundary = format!("----switchboard-simulate-{}", super::hex_id());
    let mut body = Vec::new();
    for (name, value) in texts {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    for (field, file) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{}\"\r\nContent-Type: {}\r\n\r\n",
                file.name.replace(['"', '\r', '\n'], "_"),
                file.content_type
            )
            .as_bytes(),
        );
        body.extend_from_slice(&file.bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The content type of a file, by its extension.
fn content_type_of(path: &std::path::Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("pdf") => "application/pdf",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

fn bare(id: &str) -> String {
    id.trim().trim_matches(['<', '>']).to_owned()
}

fn token(given: &Option<String>, what: &str) -> anyhow::Result<String> {
    given.clone().with_context(|| {
        format!("--via {what} needs --inbound-token (the location's inboundToken)")
    })
}

/// Post it and return the HTTP status and response body (with `--via smtp`, the SMTP reply's
/// code and text).
pub async fn email(mail: &SimulatedEmail) -> anyhow::Result<(u16, String)> {
    let server = mail
        .server
        .clone()
        .unwrap_or_else(|| super::local_url(&crate::config::Config::defaults().listen));
    let server = server.trim_end_matches('/');
    let message_id = mail
        .message_id
        .as_deref()
        .map(bare)
        .unwrap_or_else(|| format!("{}@simulate.switchboard.invalid", super::hex_id()));
    let date = httpdate::fmt_http_date(std::time::SystemTime::now()).replace("GMT", "+0000");
    let mut headers = vec![
        ("From".to_owned(), mail.from.clone()),
        ("To".to_owned(), mail.to.clone()),
        ("Subject".to_owned(), mail.subject.clone()),
        ("Date".to_owned(), date.clone()),
        ("Message-ID".to_owned(), format!("<{message_id}>")),
    ];
    if let Some(parent) = &mail.in_reply_to {
        headers.push(("In-Reply-To".into(), format!("<{}>", bare(parent))));
        headers.push(("References".into(), format!("<{}>", bare(parent))));
    }
    let mut files = Vec::new();
    for path in &mail.attach {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        files.push(Attachment {
            name: path
                .file_name()
                .map_or_else(|| "attachment".into(), |n| n.to_string_lossy().into_owned()),
            content_type: content_type_of(path).to_owned(),
            content_id: None,
            bytes,
        });
    }
    let client = reqwest::Client::new();
    let request = match mail.via {
        Via::Raw | Via::Smtp => {
            let raw = compose(&ParsedParts {
                headers,
                text: Some(&mail.body),
                html: None,
                attachments: files,
            });
            if mail.via == Via::Smtp {
                return super::smtp::send(server, &mail.from, &mail.to, &raw).await;
            }
            client
                .post(format!("{server}{RAW_PATH}"))
                .query(&[("recipient", &mail.to)])
                .bearer_auth(token(&mail.inbound_token, "raw")?)
                .header("content-type", "message/rfc822")
                .body(raw)
        }
        Via::Mailgun => {
            let key = mail
                .mailgun_signing_key
                .clone()
                .context("--via mailgun needs --mailgun-signing-key")?;
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
                .to_string();
            let nonce = format!("{}{}", super::hex_id(), &super::hex_id()[..18]);
            let signature = mailgun_sign(&key, &timestamp, &nonce);
            let named: Vec<(String, Attachment)> = files
                .into_iter()
                .enumerate()
                .map(|(i, f)| (format!("attachment-{}", i + 1), f))
                .collect();
            let texts = [
                ("timestamp", timestamp),
                ("token", nonce),
                ("signature", signature),
                ("recipient", mail.to.clone()),
                ("sender", mail.from.clone()),
                ("from", mail.from.clone()),
                ("subject", mail.subject.clone()),
                ("message-headers", serde_json::to_string(&headers)?),
                ("body-plain", mail.body.clone()),
                ("attachment-count", named.len().to_string()),
            ];
            let (content_type, body) = multipart(&texts, &named);
            client
                .post(format!("{server}{MAILGUN_PATH}"))
                .header("content-type", content_type)
                .body(body)
        }
        Via::Sendgrid => {
            let block: String = headers
                .iter()
                .map(|(n, v)| format!("{n}: {v}\r\n"))
                .collect();
            let info: serde_json::Map<String, serde_json::Value> = files
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    (
                        format!("attachment{}", i + 1),
                        json!({ "filename": f.name, "name": f.name, "type": f.content_type }),
                    )
                })
                .collect();
            let named: Vec<(String, Attachment)> = files
                .into_iter()
                .enumerate()
                .map(|(i, f)| (format!("attachment{}", i + 1), f))
                .collect();
            let texts = [
                ("headers", block),
                ("text", mail.body.clone()),
                ("from", mail.from.clone()),
                ("to", mail.to.clone()),
                ("subject", mail.subject.clone()),
                (
                    "envelope",
                    json!({ "to": [mail.to], "from": mail.from }).to_string(),
                ),
                (
                    "charsets",
                    json!({ "to": "UTF-8", "from": "UTF-8", "subject": "UTF-8", "text": "UTF-8" })
                        .to_string(),
                ),
                ("attachments", named.len().to_string()),
                (
                    "attachment-info",
                    serde_json::Value::Object(info).to_string(),
                ),
            ];
            let (content_type, body) = multipart(&texts, &named);
            client
                .post(format!("{server}{SENDGRID_PATH}"))
                .basic_auth("sendgrid", Some(token(&mail.inbound_token, "sendgrid")?))
                .header("content-type", content_type)
                .body(body)
        }
        Via::Postmark => {
            let extra: Vec<serde_json::Value> = headers
                .iter()
                .filter(|(n, _)| matches!(n.as_str(), "Message-ID" | "In-Reply-To" | "References"))
                .map(|(n, v)| json!({ "Name": n, "Value": v }))
                .collect();
            let attachments: Vec<serde_json::Value> = files
                .iter()
                .map(|f| {
                    json!({ "Name": f.name, "ContentType": f.content_type, "ContentLength": f.bytes.len(),
                            "Content": base64::engine::general_purpose::STANDARD.encode(&f.bytes) })
                })
                .collect();
            let body = json!({
                "From": mail.from, "To": mail.to, "OriginalRecipient": mail.to,
                "Subject": mail.subject, "Date": date, "TextBody": mail.body,
                "MessageID": super::hex_id(), "Headers": extra, "Attachments": attachments,
            });
            client
                .post(format!("{server}{POSTMARK_PATH}"))
                .basic_auth("postmark", Some(token(&mail.inbound_token, "postmark")?))
                .json(&body)
        }
    };
    let response = request
        .send()
        .await
        .with_context(|| format!("posting to {server}"))?;
    let status = response.status().as_u16();
    Ok((status, response.text().await.unwrap_or_default()))
}
