//! The e-mail fields of a message, as every e-mail route produces them (one normalization,
//! whichever way a mail came).

use std::collections::BTreeMap;

use switchboard_events::{Bounce, OmittedAttachment};

/// What an e-mail message carries beyond any message's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailDetails {
    /// The RFC 5322 Message-ID without angle brackets, or an id derived from the content
    /// when the mail has none (`emailMessageId`).
    pub message_id: String,
    /// The ids the mail replies to: `References` in order, then `In-Reply-To` (threading).
    pub references: Vec<String>,
    /// The route it came by, as the event's `provider` names it (`raw`, or the receiving
    /// service's name).
    pub via: &'static str,
    pub subject: Option<String>,
    /// Addresses, in the order of the headers.
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    /// The text part, or the HTML converted to text.
    pub plain_text: String,
    pub auto_reply: bool,
    pub bounce: Option<Bounce>,
    /// The provider's own verdicts, as it sent them.
    pub authentication: BTreeMap<String, String>,
    pub omitted_attachments: Vec<OmittedAttachment>,
    /// The attachments and inline parts, in the mail's order, until the ingest service keeps
    /// them (then the message's `attachments` are their signed URLs).
    pub files: Vec<EmailFile>,
    /// Hex SHA-256 of what makes two mails the same mail: From address, Date, Subject and
    /// the decoded text, whitespace-normalized.
    pub content_hash: String,
}

/// One attachment or inline part of a mail, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailFile {
    /// Its file name (RFC 2231 and encoded-word names decoded).
    pub name: String,
    pub content_type: String,
    /// `Content-ID` without angle brackets (an inline image the HTML refers to by `cid:`).
    pub content_id: Option<String>,
    pub bytes: Vec<u8>,
}

impl EmailDetails {
    /// The thread a mail starts or joins when none of the ids it refers to is stored: the
    /// first id of `References` (else of `In-Reply-To`), else its own id.
    pub fn thread_root(&self) -> &str {
        self.references
            .first()
            .map_or(self.message_id.as_str(), String::as_str)
    }
}
