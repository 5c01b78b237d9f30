//! The `InboundMessage` / `OutboundMessage` event body, field for field as the source document
//! and HighLevel's deliveries show it. Absent optional fields are omitted, never `null`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `contentType` of text messages.
pub const CONTENT_TYPE_TEXT_PLAIN: &str = "text/plain";

/// The event's top-level `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    InboundMessage,
    OutboundMessage,
    /// Operational: a webhook was disabled (410 Gone, or failing for too long).
    WebhookDisabled,
}

impl EventType {
    pub const ALL: [EventType; 3] = [
        EventType::InboundMessage,
        EventType::OutboundMessage,
        EventType::WebhookDisabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::InboundMessage => "InboundMessage",
            EventType::OutboundMessage => "OutboundMessage",
            EventType::WebhookDisabled => "WebhookDisabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// `direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    /// The event type a message of this direction is announced as.
    pub fn event_type(self) -> EventType {
        match self {
            Direction::Inbound => EventType::InboundMessage,
            Direction::Outbound => EventType::OutboundMessage,
        }
    }
}

/// `messageType`: the channel label. Unknown labels (HighLevel also sends `Custom`,
/// `VoiceMail`, …) are kept as they are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessageType {
    Sms,
    Call,
    Email,
    Gmb,
    Fb,
    Ig,
    LiveChat,
    WhatsApp,
    Other(String),
}

impl MessageType {
    pub fn as_str(&self) -> &str {
        match self {
            MessageType::Sms => "SMS",
            MessageType::Call => "CALL",
            MessageType::Email => "Email",
            MessageType::Gmb => "GMB",
            MessageType::Fb => "FB",
            MessageType::Ig => "IG",
            MessageType::LiveChat => "Live Chat",
            MessageType::WhatsApp => "WhatsApp",
            MessageType::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> MessageType {
        match s {
            "SMS" => MessageType::Sms,
            "CALL" => MessageType::Call,
            "Email" => MessageType::Email,
            "GMB" => MessageType::Gmb,
            "FB" => MessageType::Fb,
            "IG" => MessageType::Ig,
            "Live Chat" => MessageType::LiveChat,
            "WhatsApp" => MessageType::WhatsApp,
            other => MessageType::Other(other.to_owned()),
        }
    }

    /// HighLevel's numeric type and its `TYPE_*` name for a message of this channel.
    /// A call that ended in voicemail is `10` / `TYPE_VOICEMAIL` instead (the caller decides).
    pub fn type_id(&self) -> Option<(u32, &'static str)> {
        Some(match self {
            MessageType::Call => (1, "TYPE_CALL"),
            MessageType::Sms => (2, "TYPE_SMS"),
            MessageType::Email => (3, "TYPE_EMAIL"),
            MessageType::Fb => (11, "TYPE_FACEBOOK"),
            MessageType::Gmb => (15, "TYPE_GMB"),
            MessageType::Ig => (18, "TYPE_INSTAGRAM"),
            MessageType::WhatsApp => (19, "TYPE_WHATSAPP"),
            MessageType::LiveChat => (29, "TYPE_LIVE_CHAT"),
            MessageType::Other(_) => return None,
        })
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MessageType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MessageType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(MessageType::parse(&s))
    }
}

/// A field that HighLevel sends as a string in one version and as a list in another
/// (email `to`). Receivers accept both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

/// One `InboundMessage` / `OutboundMessage` webhook body.
///
/// Field order is the order on the wire: the source document's, then HighLevel's additions,
/// then the envelope (`timestamp`, `webhookId`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageEvent {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub location_id: String,
    /// The sender's app id, when configured (HighLevel's SDK checks it against its client id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub contact_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub conversation_id: String,
    /// ISO-8601 UTC with milliseconds and `Z`.
    pub date_added: String,
    pub direction: Direction,
    pub message_type: MessageType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_type_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_type_string: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    pub message_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<StringOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bcc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cc_list: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bcc_list: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Email: the text part, or the HTML part converted to text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_text: Option<String>,
    /// Email: an automatic reply (`Auto-Submitted`, `X-Autoreply`, `Precedence: bulk`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_reply: Option<bool>,
    /// Email: a delivery status notification, filed under the recipient it bounced for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce: Option<Bounce>,
    /// Email: the receiving provider's verdicts (`spf`, `dkim`, `spamScore`, …), as it sent
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<std::collections::BTreeMap<String, String>>,
    /// Email: attachments too large to keep, listed rather than dropped silently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted_attachments: Option<Vec<OmittedAttachment>>,
    /// Email: another mail with different content was filed before under the same
    /// `emailMessageId` (senders do reuse them); this one is a message of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id_reused: Option<bool>,
    /// Email: over its conversation's flood cap (an auto-reply loop): stored, and readable in
    /// the events feed, but not delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<bool>,
    /// When the event was emitted (ISO-8601 UTC, milliseconds); unchanged across retries.
    pub timestamp: String,
    /// The event's unique id; unchanged across retries. Deduplicate on it.
    pub webhook_id: String,
}

/// What a delivery status notification says of the mail that bounced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bounce {
    /// The address the mail could not be delivered to (`Final-Recipient`).
    pub recipient: String,
    /// The RFC 3463 status code (`5.1.1`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `failed`, `delayed`, `delivered`, `relayed` or `expanded`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// An attachment listed but not kept (larger than the server keeps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OmittedAttachment {
    pub name: String,
    pub content_type: String,
    /// Bytes, decoded.
    pub size: u64,
}

/// The `WebhookDisabled` operational event, sent to webhooks that subscribe to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDisabledEvent {
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The disabled webhook's id (`/v1/webhooks/{id}`).
    pub endpoint_id: String,
    pub url: String,
    /// `gone` (it answered 410) or `failing` (it failed continuously for too long).
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<String>,
    pub disabled_at: String,
    pub timestamp: String,
    pub webhook_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The source document's SMS example, extended with the fields HighLevel adds, parses and
    /// serializes back to the same bytes in the same order.
    #[test]
    fn sms_event_round_trips_in_wire_order() {
        let wire = r#"{"type":"InboundMessage","locationId":"l1C08ntBrFjLS0elLIYU","attachments":[],"body":"This is a test message","contactId":"cI08i1Bls3iTB9bKgFJh","contentType":"text/plain","conversationId":"fcanlLgpbQgQhderivVs","dateAdded":"2021-04-21T11:31:45.750Z","direction":"inbound","messageType":"SMS","messageTypeId":2,"messageTypeString":"TYPE_SMS","status":"delivered","messageId":"tyW42xCD0HQpb3hhfLcx","from":"+12125550199","to":"+14155550100","timestamp":"2021-04-21T11:31:45.812Z","webhookId":"Qm9vQm9vQm9vQm9vQm9v"}"#;
        let event: MessageEvent = serde_json::from_str(wire).unwrap();
        assert_eq!(event.message_type, MessageType::Sms);
        assert_eq!(event.direction, Direction::Inbound);
        assert_eq!(serde_json::to_string(&event).unwrap(), wire);
    }

    /// The source document's email example carries `to` as a list; HighLevel's 2026 pages as a
    /// string. Both parse.
    #[test]
    fn email_to_accepts_string_and_list() {
        let base = r#"{"type":"InboundMessage","locationId":"kF4NJ5gzRyQF2gKFD34G","contactId":"3bN9f8LYJFG8F232XMUbfq","conversationId":"yCdNo6pwyTLYKgg6V2gj","dateAdded":"2024-01-12T12:59:04.045Z","direction":"inbound","messageType":"Email","messageId":"x","timestamp":"t","webhookId":"w","to":TO}"#;
        let list: MessageEvent =
            serde_json::from_str(&base.replace("TO", r#"["a@example.com"]"#)).unwrap();
        assert_eq!(
            list.to,
            Some(StringOrList::Many(vec!["a@example.com".into()]))
        );
        let one: MessageEvent =
            serde_json::from_str(&base.replace("TO", r#""a@example.com""#)).unwrap();
        assert_eq!(one.to, Some(StringOrList::One("a@example.com".into())));
        assert_eq!(one.message_type, MessageType::Email);
        assert!(!serde_json::to_string(&one).unwrap().contains("null"));
    }

    #[test]
    fn unknown_message_type_is_kept() {
        assert_eq!(MessageType::parse("VoiceMail").as_str(), "VoiceMail");
        assert_eq!(MessageType::parse("Live Chat"), MessageType::LiveChat);
        assert_eq!(MessageType::Sms.type_id(), Some((2, "TYPE_SMS")));
    }
}
