//! Twilio Voice: four endpoints whose callbacks merge, per `CallSid`, into one CALL message.
//!
//! * `incoming` ("A call comes in"): forwards the call to the location's number with
//!   `<Dial timeout action=dial-status>`, or goes straight to voicemail when none is set.
//! * `dial-status` (the `<Dial>` action): when nobody answered, plays the greeting and
//!   `<Record>`s a voicemail whose file is reported to `recording`; otherwise hangs up.
//! * `status` ("Call status changes"): the call's final status, duration and direction.
//! * `recording`: the recording's status callback (and `<Record>`'s action, answered with a
//!   hang-up).
//!
//! Switchboard knows from its own TwiML whether it asked for a recording, so the core waits
//! for that recording before emitting the call, and does not wait otherwise.

use serde::{Deserialize, Serialize};
use switchboard_events::Direction;

use super::{normalize_address, twiml, xml_escape, TwilioForm, PROVIDER};
use crate::channels::{Channel, ChannelAccount, ChannelError, Handled, ProviderRequest, RouteKey};
use crate::domain::call::{CallUpdate, Recording};
use crate::domain::{Fact, PhoneNumber};
use crate::media::MediaFetch;

/// Where the voice routes live; the TwiML's callback URLs are built from the URL Twilio called.
pub const VOICE_PREFIX: &str = "/conversations/providers/twilio/voice/";

const DEFAULT_GREETING: &str =
    "Sorry, we can't take your call right now. Please leave a message after the beep.";

/// A location's voice settings (`"voice"` in `PUT /v1/locations/{id}/channels/twilio`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct VoiceSettings {
    /// The number calls are forwarded to (E.164). None: straight to voicemail.
    pub forward_to: Option<String>,
    /// Who answers at `forward_to`, as your own systems name them: sent as `userId` on the
    /// CALL events of answered inbound calls (the source document's Call example).
    pub user_id: Option<String>,
    /// How long to ring `forward_to`, in seconds (Twilio allows 5 to 600).
    pub ring_timeout_seconds: u32,
    /// Spoken before the voicemail beep.
    pub greeting: String,
    /// Take a voicemail when nobody answers.
    pub voicemail: bool,
    /// Record answered calls (the recording is attached to the CALL event).
    pub record_answered_calls: bool,
    /// Longest voicemail, in seconds.
    pub max_voicemail_seconds: u32,
    /// Download recordings into Switchboard's attachment storage and send signed, expiring
    /// links to them (subscribers then need no Twilio credentials). Off: Twilio's URL as given.
    pub download_recordings: bool,
}

impl Default for VoiceSettings {
    fn default() -> Self {
        VoiceSettings {
            forward_to: None,
            user_id: None,
            ring_timeout_seconds: 20,
            greeting: DEFAULT_GREETING.to_owned(),
            voicemail: true,
            record_answered_calls: false,
            max_voicemail_seconds: 120,
            download_recordings: false,
        }
    }
}

impl VoiceSettings {
    /// Checks what the API accepts; the message names the field.
    pub fn validate(&mut self) -> Result<(), String> {
        if let Some(number) = &self.forward_to {
            self.forward_to = Some(
                PhoneNumber::parse(number)
                    .map_err(|e| format!("voice.forwardTo: {e}"))?
                    .as_str()
                    .to_owned(),
            );
        }
        if let Some(user_id) = &self.user_id {
            if self.forward_to.is_none() {
                return Err(
                    "voice.userId needs voice.forwardTo: it names who answers there".into(),
                );
            }
            if user_id.trim().is_empty() || user_id.len() > 128 {
                return Err("voice.userId must be 1 to 128 characters".into());
            }
        }
        if !(5..=600).contains(&self.ring_timeout_seconds) {
            return Err("voice.ringTimeoutSeconds must be from 5 to 600".into());
        }
        if self.greeting.trim().is_empty() || self.greeting.len() > 1000 {
            return Err("voice.greeting must be 1 to 1000 characters".into());
        }
        if !(1..=14_400).contains(&self.max_voicemail_seconds) {
            return Err("voice.maxVoicemailSeconds must be from 1 to 14400".into());
        }
        Ok(())
    }

    fn of(account: &ChannelAccount) -> VoiceSettings {
        serde_json::from_value(account.settings["voice"].clone()).unwrap_or_default()
    }
}

/// The base for callback URLs: the URL Twilio called, up to and including the voice prefix.
fn callback_base(req: &ProviderRequest) -> &str {
    match req.url.find(VOICE_PREFIX) {
        Some(i) => &req.url[..i + VOICE_PREFIX.len()],
        None => &req.url,
    }
}

/// TwiML that plays the greeting and records a voicemail.
fn voicemail_twiml(req: &ProviderRequest, settings: &VoiceSettings) -> String {
    let recording = format!("{}recording", callback_base(req));
    format!(
        "<Say>{}</Say><Record maxLength=\"{}\" playBeep=\"true\" timeout=\"5\" action=\"{}\" method=\"POST\" recordingStatusCallback=\"{}\" recordingStatusCallbackMethod=\"POST\" recordingStatusCallbackEvent=\"completed absent\"/>",
        xml_escape(&settings.greeting),
        settings.max_voicemail_seconds,
        xml_escape(&recording),
        xml_escape(&recording),
    )
}

fn parse_call(req: &ProviderRequest) -> Result<(TwilioForm, String), ChannelError> {
    let form = TwilioForm::parse(req)?;
    let call_sid = form
        .sid("CallSid", &["CA"])?
        .ok_or_else(|| ChannelError::Malformed("missing form parameter `CallSid`".into()))?
        .to_owned();
    form.account_sid()?;
    form.sid("DialCallSid", &["CA"])?;
    form.sid("RecordingSid", &["RE"])?;
    Ok((form, call_sid))
}

fn direction(form: &TwilioForm) -> Option<Direction> {
    form.get("Direction").map(|d| {
        if d.starts_with("outbound") {
            Direction::Outbound
        } else {
            Direction::Inbound
        }
    })
}

/// Route by the call's earlier callbacks (a call stays with its location), then by the
/// business number (the callee of an inbound call, the caller of an outbound one), then by
/// the account.
fn call_route(parsed: &(TwilioForm, String)) -> RouteKey {
    let (form, call_sid) = parsed;
    let business = match direction(form) {
        Some(Direction::Outbound) => form.get("From"),
        _ => form.get("To"),
    };
    RouteKey {
        address: business.map(normalize_address),
        also: Vec::new(),
        correlation_id: Some(call_sid.clone()),
        account_id: form.get("AccountSid").map(str::to_owned),
    }
}

/// What every voice callback says about the parties.
fn parties(form: &TwilioForm, call_sid: &str) -> CallUpdate {
    CallUpdate {
        provider: PROVIDER,
        call_sid: call_sid.to_owned(),
        direction: direction(form),
        from: form.get("From").map(str::to_owned),
        to: form.get("To").map(str::to_owned),
        ..CallUpdate::default()
    }
}

macro_rules! voice_channel {
    ($name:ident) => {
        impl Channel for $name {
            const PROVIDER: &'static str = PROVIDER;
            type Parsed = (TwilioForm, String);

            fn parse(req: &ProviderRequest) -> Result<Self::Parsed, ChannelError> {
                parse_call(req)
            }

            fn route(parsed: &Self::Parsed) -> RouteKey {
                call_route(parsed)
            }

            fn verify(
                req: &ProviderRequest,
                parsed: &Self::Parsed,
                account: &ChannelAccount,
            ) -> Result<(), ChannelError> {
                parsed.0.verify(req, account)
            }

            fn handle(
                req: &ProviderRequest,
                parsed: Self::Parsed,
                account: &ChannelAccount,
                _now_ms: i64,
            ) -> Result<Handled, ChannelError> {
                $name::answer(req, &parsed.0, &parsed.1, account)
            }
        }
    };
}

/// "A call comes in".
pub struct VoiceIncoming;
voice_channel!(VoiceIncoming);

impl VoiceIncoming {
    fn answer(
        req: &ProviderRequest,
        form: &TwilioForm,
        call_sid: &str,
        account: &ChannelAccount,
    ) -> Result<Handled, ChannelError> {
        let settings = VoiceSettings::of(account);
        let mut update = parties(form, call_sid);
        update.direction = Some(Direction::Inbound);
        let reply = match &settings.forward_to {
            Some(number) => {
                update.record_if_answered = Some(settings.record_answered_calls);
                update.answering_user.clone_from(&settings.user_id);
                let base = callback_base(req);
                let record = if settings.record_answered_calls {
                    format!(
                        " record=\"record-from-answer-dual\" recordingStatusCallback=\"{}\" recordingStatusCallbackMethod=\"POST\" recordingStatusCallbackEvent=\"completed absent\"",
                        xml_escape(&format!("{base}recording"))
                    )
                } else {
                    String::new()
                };
                format!(
                    "<Dial timeout=\"{}\" action=\"{}\" method=\"POST\" answerOnBridge=\"true\"{record}><Number>{}</Number></Dial>",
                    settings.ring_timeout_seconds,
                    xml_escape(&format!("{base}dial-status")),
                    xml_escape(number),
                )
            }
            None if settings.voicemail => {
                update.voicemail_requested = true;
                update.dial_status = Some("no-answer".into());
                voicemail_twiml(req, &settings)
            }
            None => {
                update.dial_status = Some("no-answer".into());
                "<Hangup/>".to_owned()
            }
        };
        Ok(Handled {
            nonce: None,
            facts: vec![Fact::Call(update)],
            routed: Vec::new(),
            reply: twiml(&reply),
        })
    }
}

/// The `<Dial>` action: did anybody answer?
pub struct VoiceDialStatus;
voice_channel!(VoiceDialStatus);

impl VoiceDialStatus {
    fn answer(
        req: &ProviderRequest,
        form: &TwilioForm,
        call_sid: &str,
        account: &ChannelAccount,
    ) -> Result<Handled, ChannelError> {
        let settings = VoiceSettings::of(account);
        let dial_status = form.required(&["DialCallStatus"])?;
        let mut update = parties(form, call_sid);
        update.dial_duration = form.seconds("DialCallDuration")?;
        let answered = matches!(dial_status.as_str(), "completed" | "answered");
        update.dial_status = Some(dial_status);
        let reply = if !answered && settings.voicemail {
            update.voicemail_requested = true;
            voicemail_twiml(req, &settings)
        } else {
            "<Hangup/>".to_owned()
        };
        Ok(Handled {
            nonce: None,
            facts: vec![Fact::Call(update)],
            routed: Vec::new(),
            reply: twiml(&reply),
        })
    }
}

/// "Call status changes": the call's final status (earlier progress events change nothing).
pub struct VoiceStatus;
voice_channel!(VoiceStatus);

impl VoiceStatus {
    fn answer(
        _req: &ProviderRequest,
        form: &TwilioForm,
        call_sid: &str,
        _account: &ChannelAccount,
    ) -> Result<Handled, ChannelError> {
        let mut update = parties(form, call_sid);
        update.final_status = Some(form.required(&["CallStatus"])?);
        update.call_duration = form.seconds("CallDuration")?;
        update.answered_by = form.get("AnsweredBy").map(str::to_owned);
        Ok(Handled {
            nonce: None,
            facts: vec![Fact::Call(update)],
            routed: Vec::new(),
            reply: twiml(""),
        })
    }
}

/// The recording status callback, and `<Record>`'s action (which only needs a hang-up).
pub struct VoiceRecording;
voice_channel!(VoiceRecording);

impl VoiceRecording {
    fn answer(
        _req: &ProviderRequest,
        form: &TwilioForm,
        call_sid: &str,
        account: &ChannelAccount,
    ) -> Result<Handled, ChannelError> {
        let facts = match form.get("RecordingStatus") {
            // The <Record> action: the file may not be ready yet; its status callback follows.
            None => vec![],
            Some(status) => {
                let url = form.get("RecordingUrl").unwrap_or_default().to_owned();
                // Twilio serves the file at the URL plus an extension, with Basic auth.
                let download = (status == "completed"
                    && !url.is_empty()
                    && VoiceSettings::of(account).download_recordings)
                    .then(|| MediaFetch {
                        provider: PROVIDER,
                        url: format!("{url}.mp3"),
                        username: account.account_id.clone(),
                        password: account.secret.clone(),
                    });
                vec![Fact::Call(CallUpdate {
                    provider: PROVIDER,
                    call_sid: call_sid.to_owned(),
                    recording: Some(Recording {
                        url,
                        status: status.to_owned(),
                        duration: form.seconds("RecordingDuration")?,
                        source: form.get("RecordingSource").map(str::to_owned),
                        download,
                    }),
                    ..CallUpdate::default()
                })]
            }
        };
        Ok(Handled {
            nonce: None,
            facts,
            routed: Vec::new(),
            reply: twiml("<Hangup/>"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_validate_and_default() {
        let mut s: VoiceSettings =
            serde_json::from_value(serde_json::json!({ "forwardTo": "+1 415 555 0111" })).unwrap();
        s.validate().unwrap();
        assert_eq!(s.forward_to.as_deref(), Some("+14155550111"));
        assert_eq!(s.ring_timeout_seconds, 20);
        assert!(s.voicemail);
        let mut bad = VoiceSettings {
            ring_timeout_seconds: 2,
            ..VoiceSettings::default()
        };
        assert!(bad.validate().unwrap_err().contains("ringTimeoutSeconds"));
        assert!(
            serde_json::from_value::<VoiceSettings>(serde_json::json!({ "forwardto": "x" }))
                .is_err()
        );
        let mut user_without_number = VoiceSettings {
            user_id: Some("staff-7".into()),
            ..VoiceSettings::default()
        };
        assert!(user_without_number
            .validate()
            .unwrap_err()
            .contains("voice.userId needs voice.forwardTo"));
        let mut blank = VoiceSettings {
            forward_to: Some("+14155550111".into()),
            user_id: Some(" ".into()),
            ..VoiceSettings::default()
        };
        assert!(blank.validate().unwrap_err().contains("voice.userId"));
    }
}
