//! The normalized message every channel produces, whatever the provider.

use switchboard_events::{Direction, MessageType};

use super::call::CallUpdate;
use super::PhoneNumber;

/// Who a message is from (inbound) or to (outbound): a key a contact is found or created by,
/// per location. A contact has one or more (`phone`, `email`, channel-scoped ids), each
/// belonging to one contact of a location.
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

    /// An e-mail address, lower-cased.
    pub fn email(address: &str) -> Self {
        ContactIdentity {
            kind: "email",
            value: address.trim().to_lowercase(),
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

/// One of a message's other identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherIdentity {
    pub identity: ContactIdentity,
    /// The channel knows it belongs to the sender (a signed-in address, a provider-checked
    /// one), rather than being told so.
    pub verified: bool,
}

impl NewMessage {
    /// The identities a contact may be found by: the sender's, then the verified others.
    pub fn verified_identities(&self) -> impl Iterator<Item = &ContactIdentity> {
        std::iter::once(&self.contact).chain(
            self.other_identities
                .iter()
                .filter(|o| o.verified)
                .map(|o| &o.identity),
        )
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
    /// The sender (inbound) or recipient (outbound) as the channel knows it for sure: the
    /// contact is found by it, or by any of `other_identities` that is verified.
    pub contact: ContactIdentity,
    /// Other identities the channel knows for the same person (an e-mail address given with a
    /// phone number), each verified or not. A verified one finds the contact too and is added
    /// to it; an unverified one (a phone number a visitor typed) never attaches the message to
    /// an existing contact, and is not stored.
    pub other_identities: Vec<OtherIdentity>,
    pub contact_name: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub user_id: Option<String>,
    /// Calls only.
    pub call: Option<CallDetails>,
    /// E-mail only.
    pub email: Option<Box<super::EmailDetails>>,
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
