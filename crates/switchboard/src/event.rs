//! Rendering a filed message into the event body subscribers receive. Serialized once, at
//! ingest; those exact bytes are stored, signed and sent on every attempt.

use switchboard_events::{MessageEvent, MessageType, StringOrList};

use crate::domain::time::iso_millis;
use crate::domain::{EmailDetails, NewMessage};

/// A message with the ids the store gave it.
pub struct Filed<'a> {
    pub message: &'a NewMessage,
    pub location_id: &'a str,
    pub contact_id: &'a str,
    pub conversation_id: &'a str,
    pub message_id: &'a str,
    pub event_id: &'a str,
    pub emitted_at: i64,
    pub app_id: Option<&'a str>,
    /// E-mail: the thread the store resolved (else the mail's own references decide).
    pub thread: Option<&'a Thread>,
}

/// Where the store filed a mail: its thread, and whether its Message-ID was seen before with
/// other content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    pub thread_id: String,
    pub message_id_reused: bool,
    /// Over its conversation's flood cap: stored, not delivered.
    pub suppressed: bool,
}

pub fn build(f: &Filed<'_>) -> MessageEvent {
    let m = f.message;
    // A call that ended in voicemail is announced as HighLevel does: 10, TYPE_VOICEMAIL.
    let type_id = if m.message_type == MessageType::Call && m.status == "voicemail" {
        Some((10, "TYPE_VOICEMAIL"))
    } else {
        m.message_type.type_id()
    };
    let mut event = MessageEvent {
        event_type: m.direction.event_type(),
        location_id: f.location_id.to_owned(),
        app_id: f.app_id.map(str::to_owned),
        attachments: Some(m.attachments.clone()),
        body: m.body.clone(),
        contact_id: f.contact_id.to_owned(),
        content_type: m.content_type.clone(),
        conversation_id: f.conversation_id.to_owned(),
        date_added: iso_millis(m.received_at_ms),
        direction: m.direction,
        message_type: m.message_type.clone(),
        message_type_id: type_id.map(|(id, _)| id),
        message_type_string: type_id.map(|(_, s)| s.to_owned()),
        status: Some(m.status.clone()),
        message_id: f.message_id.to_owned(),
        user_id: m.user_id.clone(),
        call_duration: m.call.as_ref().and_then(|c| c.duration),
        call_status: m.call.as_ref().map(|c| c.call_status.clone()),
        email_message_id: None,
        thread_id: None,
        provider: None,
        from: m.from.clone(),
        to: m.to.clone().map(StringOrList::One),
        cc: None,
        bcc: None,
        cc_list: None,
        bcc_list: None,
        subject: None,
        plain_text: None,
        auto_reply: None,
        bounce: None,
        authentication: None,
        omitted_attachments: None,
        message_id_reused: None,
        suppressed: None,
        timestamp: iso_millis(f.emitted_at),
        webhook_id: f.event_id.to_owned(),
    };
    if let Some(email) = &m.email {
        add_email(&mut event, email, f.thread);
    }
    event
}

/// The source document's e-mail fields: no `contentType` or `status` (its example has
/// neither), `to` a list, `cc` and `bcc` comma-separated with `ccList` / `bccList` beside.
fn add_email(event: &mut MessageEvent, email: &EmailDetails, thread: Option<&Thread>) {
    let joined = |list: &[String]| (!list.is_empty()).then(|| list.join(", "));
    let listed = |list: &[String]| (!list.is_empty()).then(|| list.to_vec());
    event.content_type = None;
    event.status = None;
    event.email_message_id = Some(email.message_id.clone());
    event.thread_id = Some(
        thread
            .map_or(email.thread_root(), |t| t.thread_id.as_str())
            .to_owned(),
    );
    event.message_id_reused = thread.and_then(|t| t.message_id_reused.then_some(true));
    event.suppressed = thread.and_then(|t| t.suppressed.then_some(true));
    event.provider = Some(email.via.to_owned());
    event.to = Some(StringOrList::Many(email.to.clone()));
    event.cc = joined(&email.cc);
    event.bcc = joined(&email.bcc);
    event.cc_list = listed(&email.cc);
    event.bcc_list = listed(&email.bcc);
    event.subject = email.subject.clone();
    event.plain_text = Some(email.plain_text.clone());
    event.auto_reply = email.auto_reply.then_some(true);
    event.bounce = email.bounce.clone();
    event.authentication = (!email.authentication.is_empty()).then(|| email.authentication.clone());
    event.omitted_attachments =
        (!email.omitted_attachments.is_empty()).then(|| email.omitted_attachments.clone());
}

/// Compact JSON: no spaces, UTF-8 as is, `/` unescaped (what `JSON.stringify` produces, so
/// naive re-serializing verifiers still pass).
pub fn render(f: &Filed<'_>) -> Vec<u8> {
    serde_json::to_vec(&build(f)).expect("event serializes")
}

/// The `WebhookDisabled` event for a webhook just disabled.
pub fn render_webhook_disabled(
    webhook: &crate::store::Webhook,
    event_id: &str,
    now: i64,
) -> Vec<u8> {
    let event = switchboard_events::WebhookDisabledEvent {
        event_type: switchboard_events::EventType::WebhookDisabled,
        endpoint_id: webhook.id.clone(),
        url: webhook.url.clone(),
        reason: webhook.disabled_reason.clone().unwrap_or_default(),
        failing_since: webhook.health.failing_since.map(iso_millis),
        disabled_at: iso_millis(webhook.disabled_at.unwrap_or(now)),
        timestamp: iso_millis(now),
        webhook_id: event_id.to_owned(),
    };
    serde_json::to_vec(&event).expect("event serializes")
}
