//! The normalized message every channel produces, whatever the provider.

use switchboard_events::{Direction, MessageType};

use super::call::CallUpdate;
use super::PhoneNumber;

/// Who a message is from (inbound) or to (outbound): the key a contact is found or created by,
/// per location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactIdentity {
    /// `phone`, `email`, `psid`, … (persisted; never renamed).
    pub kind: &'static str,
    pub value: String,
}

impl ContactIdentity {
    pub fn phone(number: &PhoneNumber) -> Self {
        ContactIdentity {
            kind: "phone",
            value: number.as_str().to_owned(),
        }
    }

    /// A sender that is not a phone number (an alphanumeric sender id, a `client:` name).
    pub fn address(provider: &'static str, value: &str) -> Self {
        ContactIdentity {
            kind: provider,
            value: value.to_owned(),
        }
    }
}

/// A message as a channel understood it, before it is filed under a contact and conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// The channel that produced it (its registry name): with `provider_message_id`, the
    /// idempotency key.
    pub provider: &'static str,
    pub provider_message_id: String,
    pub direction: Direction,
    pub message_type: MessageType,
    pub status: String,
    pub body: Option<String>,
    pub content_type: Option<String>,
    pub attachments: Vec<String>,
    pub contact: ContactIdentity,
    pub contact_name: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub user_id: Option<String>,
    /// Calls only.
    pub call: Option<CallDetails>,
    /// When Switchboard received it (ms since the epoch): the event's `dateAdded`.
    pub received_at_ms: i64,
}

/// The call fields of a CALL message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDetails {
    /// `completed`, `voicemail`, `no-answer`, `busy`, `failed`, `canceled`.
    pub call_status: String,
    /// Seconds talked.
    pub duration: Option<u64>,
}

/// What an adapter learned from one provider request: a complete message, or part of one that
/// the core merges with what other requests said (a call's callbacks, keyed by the provider's
/// id) and emits once its outcome is final.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    Message(NewMessage),
    Call(CallUpdate),
}
