//! Calls: several provider callbacks per call (incoming, dial result, final status, recording)
//! merge into one [`CallState`]; once its outcome is final it becomes exactly one CALL message.
//!
//! The provider's own final status cannot tell "answered by staff" from "went to voicemail"
//! (the parent call is `completed` in both cases, because the provider answered to play the
//! greeting), so the outcome is decided from the dial result and the recording.

use serde::{Deserialize, Serialize};
use switchboard_events::{Direction, MessageType};

use super::{ContactIdentity, NewMessage, PhoneNumber};

/// Final call statuses (as a voice provider's call and dial callbacks give them).
const TERMINAL: [&str; 5] = ["completed", "busy", "no-answer", "failed", "canceled"];

/// One callback's worth of knowledge about a call. `None` means "this callback did not say".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallUpdate {
    /// The channel that produced it (`Fact::Message`'s `provider`): with `call_sid`, the key
    /// the callbacks of one call are merged under.
    #[serde(skip)]
    pub provider: &'static str,
    pub call_sid: String,
    pub direction: Option<Direction>,
    /// The caller (inbound) or the business number (outbound), as the provider gave it.
    pub from: Option<String>,
    pub to: Option<String>,
    /// The call's own status when it is final.
    pub final_status: Option<String>,
    pub call_duration: Option<u64>,
    /// Result of forwarding the call (`<Dial>`): `completed`, `answered`, `busy`, `no-answer`, …
    pub dial_status: Option<String>,
    pub dial_duration: Option<u64>,
    /// Outbound calls with answering-machine detection: `human`, `machine_end_beep`, …
    pub answered_by: Option<String>,
    /// Switchboard asked for a voicemail recording (its TwiML ran `<Record>`).
    pub voicemail_requested: bool,
    /// Switchboard asked to record the call if it is answered.
    pub record_if_answered: Option<bool>,
    /// Who answers the forwarded call (the location's `voice.userId` when the call came in).
    #[serde(default)]
    pub answering_user: Option<String>,
    pub recording: Option<Recording>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    pub url: String,
    /// `completed`, `absent`, `failed`.
    pub status: String,
    pub duration: Option<u64>,
    /// `RecordVerb` (voicemail), `DialVerb` (answered call), …
    pub source: Option<String>,
    /// Set by the channel when the location keeps recordings itself: the core downloads the
    /// file and replaces `url` with a signed link to its copy. Never persisted.
    #[serde(skip)]
    pub download: Option<crate::media::MediaFetch>,
}

/// Everything known about one call so far (persisted as JSON; field names never change).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallState {
    pub call_sid: String,
    pub direction: Option<Direction>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub started_at: i64,
    pub final_status: Option<String>,
    pub final_at: Option<i64>,
    pub call_duration: Option<u64>,
    pub dial_status: Option<String>,
    pub dial_duration: Option<u64>,
    pub answered_by: Option<String>,
    pub voicemail_requested: bool,
    pub record_if_answered: bool,
    /// Calls merged before this field existed have none.
    #[serde(default)]
    pub answering_user: Option<String>,
    pub recording: Option<Recording>,
}

/// How a call ended, in the event's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcome {
    pub status: String,
    pub call_status: String,
    pub duration: Option<u64>,
    pub attachments: Vec<String>,
}

impl CallState {
    pub fn new(call_sid: &str, now: i64) -> Self {
        CallState {
            call_sid: call_sid.to_owned(),
            started_at: now,
            ..CallState::default()
        }
    }

    /// Merge a callback. Callbacks arrive in any order and may repeat; what one said is kept
    /// unless a later one says more.
    pub fn apply(&mut self, u: &CallUpdate, now: i64) {
        fn keep<T: Clone>(slot: &mut Option<T>, value: &Option<T>) {
            if value.is_some() {
                slot.clone_from(value);
            }
        }
        keep(&mut self.direction, &u.direction);
        if self.from.is_none() {
            keep(&mut self.from, &u.from);
        }
        if self.to.is_none() {
            keep(&mut self.to, &u.to);
        }
        if let Some(status) = u.final_status.as_deref().filter(|s| TERMINAL.contains(s)) {
            if self.final_status.is_none() {
                self.final_at = Some(now);
            }
            self.final_status = Some(status.to_owned());
        }
        keep(&mut self.call_duration, &u.call_duration);
        keep(&mut self.dial_status, &u.dial_status);
        keep(&mut self.dial_duration, &u.dial_duration);
        keep(&mut self.answered_by, &u.answered_by);
        keep(&mut self.answering_user, &u.answering_user);
        self.voicemail_requested |= u.voicemail_requested;
        if let Some(record) = u.record_if_answered {
            self.record_if_answered = record;
        }
        // A completed recording is not replaced by a later status of another kind.
        let have_completed = self
            .recording
            .as_ref()
            .is_some_and(|r| r.status == "completed");
        if u.recording.is_some() && !have_completed {
            keep(&mut self.recording, &u.recording);
        }
    }

    /// A human picked up the forwarded call.
    fn answered(&self) -> bool {
        matches!(self.dial_status.as_deref(), Some("completed" | "answered"))
            || self.dial_duration.is_some_and(|d| d > 0)
    }

    fn recording_expected(&self) -> bool {
        match self.direction {
            Some(Direction::Outbound) => false,
            _ => self.voicemail_requested || (self.record_if_answered && self.answered()),
        }
    }

    /// When the call can be emitted: its final status is known and the recording Switchboard
    /// asked for has arrived, or `recording_wait_ms` passed since the final status.
    /// `None` while the final status is unknown.
    pub fn emit_at(&self, recording_wait_ms: i64) -> Option<i64> {
        let final_at = self.final_at?;
        if self.recording_expected() && self.recording.is_none() {
            Some(final_at + recording_wait_ms)
        } else {
            Some(final_at)
        }
    }

    fn completed_recording(&self) -> Option<&Recording> {
        self.recording
            .as_ref()
            .filter(|r| r.status == "completed" && r.duration != Some(0))
    }

    pub fn outcome(&self) -> CallOutcome {
        let final_status = self
            .final_status
            .clone()
            .unwrap_or_else(|| "completed".into());
        let unanswered = |status: &str| {
            // No human: the dial result says why, else the call's own status; a call the
            // provider itself completed (to play a greeting) was not answered.
            let why = self
                .dial_status
                .as_deref()
                .filter(|s| TERMINAL.contains(s))
                .unwrap_or(status);
            let call_status = if why == "completed" { "no-answer" } else { why }.to_owned();
            CallOutcome {
                status: call_status.clone(),
                call_status,
                duration: None,
                attachments: vec![],
            }
        };
        match self.direction {
            Some(Direction::Outbound) => {
                if final_status != "completed" {
                    return unanswered(&final_status);
                }
                let machine = self
                    .answered_by
                    .as_deref()
                    .is_some_and(|a| a.starts_with("machine") || a == "fax");
                CallOutcome {
                    status: "completed".into(),
                    call_status: if machine { "voicemail" } else { "completed" }.into(),
                    duration: self.call_duration,
                    attachments: self
                        .completed_recording()
                        .map(|r| r.url.clone())
                        .into_iter()
                        .collect(),
                }
            }
            _ if self.answered() => CallOutcome {
                status: "completed".into(),
                call_status: "completed".into(),
                duration: self.dial_duration.or(self.call_duration),
                attachments: self
                    .completed_recording()
                    .filter(|r| r.source.as_deref() != Some("RecordVerb"))
                    .map(|r| r.url.clone())
                    .into_iter()
                    .collect(),
            },
            _ => match self.completed_recording() {
                Some(r) if self.voicemail_requested => CallOutcome {
                    status: "voicemail".into(),
                    call_status: "voicemail".into(),
                    duration: None,
                    attachments: vec![r.url.clone()],
                },
                _ => unanswered(&final_status),
            },
        }
    }

    /// The CALL message: the contact is the other party (the caller of an inbound call, the
    /// callee of an outbound one).
    pub fn message(&self, provider: &'static str) -> NewMessage {
        let outcome = self.outcome();
        let direction = self.direction.unwrap_or(Direction::Inbound);
        let other = match direction {
            Direction::Inbound => self.from.as_deref(),
            Direction::Outbound => self.to.as_deref(),
        }
        .unwrap_or("unknown");
        let contact = match PhoneNumber::parse(other) {
            Ok(phone) => ContactIdentity::phone(&phone),
            Err(_) => ContactIdentity::address(provider, other),
        };
        let normalize = |a: &Option<String>| {
            a.as_deref().map(|a| {
                PhoneNumber::parse(a)
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|_| a.to_owned())
            })
        };
        NewMessage {
            provider,
            provider_message_id: self.call_sid.clone(),
            direction,
            message_type: MessageType::Call,
            status: outcome.status,
            body: None,
            content_type: None,
            attachments: outcome.attachments,
            contact,
            other_identities: vec![],
            contact_name: None,
            from: normalize(&self.from),
            to: normalize(&self.to),
            // Only a forwarded inbound call that someone picked up was handled by a user.
            user_id: match direction {
                Direction::Inbound if self.answered() => self.answering_user.clone(),
                _ => None,
            },
            call: Some(super::message::CallDetails {
                call_status: outcome.call_status,
                duration: outcome.duration,
            }),
            email: None,
            received_at_ms: self.started_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound() -> CallState {
        let mut s = CallState::new("CA1", 1_000);
        s.apply(
            &CallUpdate {
                call_sid: "CA1".into(),
                direction: Some(Direction::Inbound),
                from: Some("+12125550199".into()),
                to: Some("+14155550100".into()),
                record_if_answered: Some(false),
                ..Default::default()
            },
            1_000,
        );
        s
    }

    fn update(f: impl FnOnce(&mut CallUpdate)) -> CallUpdate {
        let mut u = CallUpdate {
            call_sid: "CA1".into(),
            ..Default::default()
        };
        f(&mut u);
        u
    }

    fn recording(status: &str, duration: u64) -> Option<Recording> {
        Some(Recording {
            url: "https://rec/RE1".into(),
            status: status.into(),
            duration: Some(duration),
            source: Some("RecordVerb".into()),
            download: None,
        })
    }

    #[test]
    fn answered_call_is_completed_and_does_not_wait() {
        let mut s = inbound();
        s.apply(
            &update(|u| {
                u.dial_status = Some("completed".into());
                u.dial_duration = Some(37);
            }),
            2_000,
        );
        assert_eq!(s.emit_at(120_000), None);
        s.apply(
            &update(|u| {
                u.final_status = Some("completed".into());
                u.call_duration = Some(45);
            }),
            3_000,
        );
        assert_eq!(s.emit_at(120_000), Some(3_000));
        let o = s.outcome();
        assert_eq!(
            (o.status.as_str(), o.call_status.as_str(), o.duration),
            ("completed", "completed", Some(37))
        );
    }

    /// The user who answers at the forwarding number is named on answered inbound calls only.
    #[test]
    fn the_answering_user_is_named_only_when_someone_answered() {
        let with_user = |dial: &str, duration: u64| {
            let mut s = CallState::new("CA1", 1_000);
            for u in [
                update(|u| {
                    u.direction = Some(Direction::Inbound);
                    u.from = Some("+12125550199".into());
                    u.answering_user = Some("staff-7".into());
                }),
                update(|u| {
                    u.dial_status = Some(dial.into());
                    u.dial_duration = Some(duration);
                }),
                update(|u| u.final_status = Some("completed".into())),
            ] {
                s.apply(&u, 2_000);
            }
            s.message("acme").user_id
        };
        assert_eq!(with_user("completed", 37).as_deref(), Some("staff-7"));
        assert_eq!(with_user("no-answer", 0), None);
        assert_eq!(with_user("busy", 0), None);
        // Without the setting, an answered call names nobody.
        let mut s = inbound();
        s.apply(&update(|u| u.dial_status = Some("completed".into())), 2_000);
        assert_eq!(s.message("acme").user_id, None);
        // An outbound call is not "answered by" the forwarding user.
        let mut out = CallState::new("CA2", 1_000);
        out.apply(
            &update(|u| {
                u.direction = Some(Direction::Outbound);
                u.answering_user = Some("staff-7".into());
                u.final_status = Some("completed".into());
            }),
            1_000,
        );
        assert_eq!(out.message("acme").user_id, None);
    }

    #[test]
    fn voicemail_waits_for_its_recording_in_either_order() {
        let dial = update(|u| {
            u.dial_status = Some("no-answer".into());
            u.voicemail_requested = true;
        });
        let done = update(|u| {
            u.final_status = Some("completed".into());
            u.call_duration = Some(30);
        });
        let rec = update(|u| u.recording = recording("completed", 23));
        for order in [
            [&dial, &done, &rec],
            [&dial, &rec, &done],
            [&rec, &dial, &done],
        ] {
            let mut s = inbound();
            for (i, u) in order.iter().enumerate() {
                s.apply(u, 2_000 + i as i64);
            }
            assert!(s.emit_at(120_000).unwrap() <= 2_002);
            let o = s.outcome();
            assert_eq!(
                (o.status.as_str(), o.call_status.as_str()),
                ("voicemail", "voicemail")
            );
            assert_eq!(o.attachments, vec!["https://rec/RE1"]);
            assert_eq!(o.duration, None);
        }
        let mut waiting = inbound();
        waiting.apply(&dial, 2_000);
        waiting.apply(&done, 3_000);
        assert_eq!(waiting.emit_at(120_000), Some(123_000));
        let o = waiting.outcome();
        assert_eq!(
            o.call_status, "no-answer",
            "no recording arrived: a missed call"
        );
    }

    #[test]
    fn missed_busy_failed_canceled() {
        for (dial, call_status) in [
            ("no-answer", "no-answer"),
            ("busy", "busy"),
            ("failed", "failed"),
            ("canceled", "canceled"),
        ] {
            let mut s = inbound();
            s.apply(&update(|u| u.dial_status = Some(dial.into())), 2_000);
            s.apply(
                &update(|u| u.final_status = Some("completed".into())),
                3_000,
            );
            assert_eq!(s.emit_at(0), Some(3_000));
            let o = s.outcome();
            assert_eq!(
                (o.status.as_str(), o.call_status.as_str()),
                (call_status, call_status)
            );
        }
        // An empty recording is no voicemail.
        let mut s = inbound();
        s.apply(
            &update(|u| {
                u.dial_status = Some("no-answer".into());
                u.voicemail_requested = true;
            }),
            2_000,
        );
        s.apply(&update(|u| u.recording = recording("absent", 0)), 2_500);
        s.apply(
            &update(|u| u.final_status = Some("completed".into())),
            3_000,
        );
        assert_eq!(s.outcome().call_status, "no-answer");
    }

    #[test]
    fn outbound_answered_and_voicemail() {
        let mut s = CallState::new("CA1", 0);
        s.apply(
            &update(|u| {
                u.direction = Some(Direction::Outbound);
                u.final_status = Some("completed".into());
                u.call_duration = Some(120);
            }),
            10,
        );
        let o = s.outcome();
        assert_eq!(
            (o.status.as_str(), o.call_status.as_str(), o.duration),
            ("completed", "completed", Some(120))
        );
        s.apply(
            &update(|u| u.answered_by = Some("machine_end_beep".into())),
            20,
        );
        assert_eq!(s.outcome().call_status, "voicemail");
        assert_eq!(s.outcome().status, "completed");
    }

    #[test]
    fn repeated_and_non_final_callbacks_change_nothing() {
        let mut s = inbound();
        s.apply(&update(|u| u.final_status = Some("ringing".into())), 1_500);
        assert_eq!(s.final_status, None);
        s.apply(&update(|u| u.recording = recording("completed", 23)), 2_000);
        s.apply(&update(|u| u.recording = recording("failed", 0)), 2_100);
        assert_eq!(s.recording, recording("completed", 23));
        let before = s.clone();
        s.apply(&update(|u| u.recording = recording("completed", 23)), 2_200);
        assert_eq!(s, before);
    }
}
