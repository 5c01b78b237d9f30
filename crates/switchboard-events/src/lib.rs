//! Event types and signature verification for the webhooks Switchboard sends.
//!
//! A Rust receiver can depend on this crate alone: parse the body into [`MessageEvent`], check
//! the Standard Webhooks headers with [`standard::verify`] and the HighLevel-style
//! `x-ghl-signature` with [`ed25519::verify`]. Switchboard signs with the same code.
#![forbid(unsafe_code)]

pub mod ed25519;
mod event;
pub mod standard;

pub use event::{
    Bounce, Direction, EventType, MessageEvent, MessageType, OmittedAttachment, StringOrList,
    WebhookDisabledEvent, CONTENT_TYPE_TEXT_PLAIN,
};

/// The headers every delivery carries.
pub mod headers {
    /// Standard Webhooks: the event's id, identical on every attempt (equals the body's `webhookId`).
    pub const WEBHOOK_ID: &str = "webhook-id";
    /// Standard Webhooks: Unix seconds of this attempt.
    pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
    /// Standard Webhooks: `v1,<base64 HMAC-SHA256>`, space-separated when several secrets apply.
    pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";
    /// HighLevel-style: base64 Ed25519 signature over the raw body.
    pub const GHL_SIGNATURE: &str = "x-ghl-signature";
    /// HighLevel's legacy signature, on webhooks that ask for it: base64 RSASSA-PKCS1-v1_5
    /// with SHA-256 over the raw body.
    pub const WH_SIGNATURE: &str = "x-wh-signature";
}
