//! Twilio: Messaging (SMS, MMS, WhatsApp) and Voice (calls and voicemail) webhooks.
//! Every request is a form POST signed with `X-Twilio-Signature`; accounts are found by the
//! business number, else by an earlier callback of the same call, else by `AccountSid`, and
//! requests are verified with that account's auth token.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::channels::{ChannelAccount, ChannelError, ProviderRequest};
use crate::domain::PhoneNumber;
use signature::Algorithm;

mod messaging;
mod provider;
mod settings;
pub mod signature;
mod voice;

pub use messaging::TwilioMessaging;
pub use provider::{
    Twilio, INBOUND_PATH, LEGACY_INBOUND_PATH, TWILIO, VOICE_DIAL_STATUS_PATH, VOICE_INCOMING_PATH,
    VOICE_RECORDING_PATH, VOICE_STATUS_PATH,
};
pub use settings::MAX_PHONE_NUMBERS;
pub use voice::{VoiceDialStatus, VoiceIncoming, VoiceRecording, VoiceSettings, VoiceStatus};

/// The provider name persisted with messages and channel accounts.
pub const PROVIDER: &str = "twilio";

/// Where Twilio serves recordings and media (every region's API host is a subdomain of
/// `twilio.com`), over HTTPS: the only origins the account's auth token is sent to.
pub const MEDIA_HOSTS: &[&str] = &["https://api.twilio.com", "https://*.twilio.com"];

/// An account SID: `AC` and 32 hexadecimal digits.
pub fn is_account_sid(s: &str) -> bool {
    is_sid(s, &["AC"])
}

/// A Twilio SID: one of `prefixes` (two letters) and 32 hexadecimal digits. Checked on every
/// SID a request carries: the signature covers keys and values run together, so a value that
/// could hold anything could swallow the parameters after it (`MessageSid=SM…NumMedia0`
/// signs like `MessageSid=SM…` followed by `NumMedia=0`).
pub fn is_sid(s: &str, prefixes: &[&str]) -> bool {
    s.len() == 34
        && prefixes.iter().any(|p| s.starts_with(p))
        && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parameters a person wrote, which may hold any character (NUL is dropped where they are
/// used: PostgreSQL text cannot store it).
const FREE_TEXT: [&str; 2] = ["Body", "ProfileName"];

/// The other parameters Switchboard reads (and `MediaUrl<n>`): ids, numbers, states. A NUL in
/// one of them is a malformed request; parameters nobody reads may hold anything.
const IDENTIFIERS: [&str; 20] = [
    "AccountSid",
    "AnsweredBy",
    "CallDuration",
    "CallSid",
    "CallStatus",
    "DialCallDuration",
    "DialCallSid",
    "DialCallStatus",
    "Direction",
    "From",
    "MessageSid",
    "NumMedia",
    "RecordingDuration",
    "RecordingSid",
    "RecordingSource",
    "RecordingStatus",
    "RecordingUrl",
    "SmsMessageSid",
    "SmsSid",
    "To",
];

/// Twilio sends a few dozen parameters (a voice status callback about forty); more is not
/// Twilio. The cap bounds the work a request can ask for before its account is even known.
pub const MAX_PARAMS: usize = 256;

/// `MediaUrl0` … `MediaUrl99`: Twilio numbers its media from 0 (at most 10 today).
fn is_media_url(name: &str) -> bool {
    name.strip_prefix("MediaUrl")
        .is_some_and(|n| (1..=2).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
}

fn is_identifier(name: &str) -> bool {
    IDENTIFIERS.contains(&name) || is_media_url(name)
}

/// A decoded Twilio form request, parameters in the order received.
pub struct TwilioForm {
    params: Vec<(String, String)>,
}

impl TwilioForm {
    pub fn parse(req: &ProviderRequest) -> Result<TwilioForm, ChannelError> {
        let content_type = req.header("content-type").unwrap_or("");
        if !content_type
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
        {
            return Err(ChannelError::UnsupportedMediaType(format!(
                "expected application/x-www-form-urlencoded, got `{content_type}`"
            )));
        }
        // Linear in the body: at most MAX_PARAMS are decoded, and repeats are found by hash.
        let params: Vec<(String, String)> = form_urlencoded::parse(&req.body)
            .take(MAX_PARAMS + 1)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if params.len() > MAX_PARAMS {
            return Err(ChannelError::Malformed(format!(
                "more than {MAX_PARAMS} form parameters"
            )));
        }
        // An identifier given twice is a forgery's tool (the signature covers both, the first
        // would be read): refused.
        let mut seen = std::collections::HashSet::with_capacity(params.len());
        for (name, _) in params.iter().filter(|(k, _)| is_identifier(k)) {
            if !seen.insert(name.as_str()) {
                return Err(ChannelError::Malformed(format!(
                    "form parameter `{name}` appears more than once"
                )));
            }
        }
        // Identifiers never hold NUL, and PostgreSQL text cannot store it.
        if let Some((name, _)) = params
            .iter()
            .find(|(k, v)| k.contains('\0') || (v.contains('\0') && is_identifier(k)))
        {
            let shown: String = name.chars().take(64).collect();
            return Err(ChannelError::Malformed(format!(
                "form parameter `{}` contains a NUL character",
                shown.escape_default()
            )));
        }
        Ok(TwilioForm { params })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        debug_assert!(
            is_identifier(name) || FREE_TEXT.contains(&name),
            "`{name}` is read: list it in IDENTIFIERS or FREE_TEXT"
        );
        self.params
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// The first of `names` that is present and not empty.
    pub fn required(&self, names: &[&str]) -> Result<String, ChannelError> {
        names
            .iter()
            .find_map(|n| self.get(n))
            .map(str::to_owned)
            .ok_or_else(|| {
                ChannelError::Malformed(format!("missing form parameter `{}`", names[0]))
            })
    }

    /// The SID `name` holds, when present: refused unless it has one of `prefixes` and 32
    /// hexadecimal digits.
    pub fn sid(&self, name: &str, prefixes: &[&str]) -> Result<Option<&str>, ChannelError> {
        match self.get(name) {
            Some(v) if !is_sid(v, prefixes) => {
                let shown: String = v.chars().take(64).collect();
                Err(ChannelError::Malformed(format!(
                    "`{name}` is not a Twilio SID ({} and 32 hexadecimal digits): `{}`",
                    prefixes.join(" or "),
                    shown.escape_default()
                )))
            }
            v => Ok(v),
        }
    }

    /// The request's `AccountSid`, which must be a well-formed account SID.
    pub fn account_sid(&self) -> Result<String, ChannelError> {
        self.sid("AccountSid", &["AC"])?
            .map(str::to_owned)
            .ok_or_else(|| ChannelError::Malformed("missing form parameter `AccountSid`".into()))
    }

    /// A whole number of seconds, when present.
    pub fn seconds(&self, name: &str) -> Result<Option<u64>, ChannelError> {
        self.get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ChannelError::Malformed(format!("`{name}` is not a whole number: `{v}`"))
                })
            })
            .transpose()
    }

    /// Check `X-Twilio-Signature` with the account's auth token, or with the Webhook Rule
    /// shared key that `X-Twilio-Webhooks-Signature-Settings` names when one is configured.
    pub fn verify(
        &self,
        req: &ProviderRequest,
        account: &ChannelAccount,
    ) -> Result<(), ChannelError> {
        let header = req.header("x-twilio-signature").ok_or_else(|| {
            ChannelError::BadSignature("missing X-Twilio-Signature header".into())
        })?;
        // The request is for the account it was routed to, whatever else it says.
        if self.get("AccountSid") != Some(account.account_id.as_str()) {
            return Err(ChannelError::BadSignature(format!(
                "AccountSid {:?} is not the account of the location it was routed to",
                self.get("AccountSid").unwrap_or_default()
            )));
        }
        let (algorithm, key_id) =
            Algorithm::from_settings_header(req.header("x-twilio-webhooks-signature-settings"))
                .map_err(ChannelError::BadSignature)?;
        let key = key_id
            .as_deref()
            .and_then(|id| account.settings["signingKeys"][id].as_str())
            .unwrap_or(&account.secret);
        if signature::verify_form(algorithm, key.as_bytes(), &req.url, &self.params, header) {
            Ok(())
        } else {
            Err(ChannelError::BadSignature(format!(
                "X-Twilio-Signature does not match this request; check the auth token and that the URL configured at Twilio is {}",
                req.url
            )))
        }
    }
}

/// `whatsapp:+1415…` → (`+1415…`, true).
pub fn strip_whatsapp(address: &str) -> (&str, bool) {
    match address.strip_prefix("whatsapp:") {
        Some(rest) => (rest, true),
        None => (address, false),
    }
}

/// The number as E.164 when it is one; otherwise as given (alphanumeric sender ids, short
/// codes, `client:` names).
pub fn normalize_address(address: &str) -> String {
    PhoneNumber::parse(address)
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|_| address.to_owned())
}

/// A TwiML answer.
pub fn twiml(inner: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>{inner}</Response>"),
    )
        .into_response()
}

/// Text and attribute values in TwiML.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A Twilio Messaging request with this form body, for the unit tests.
#[cfg(test)]
fn form_request(body: &str) -> ProviderRequest {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    ProviderRequest {
        url: "https://hooks.example.com/conversations/providers/twilio/inbound_message".into(),
        headers,
        body: bytes::Bytes::from(body.to_owned()),
        received_at_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn account_sid_shape() {
        assert!(super::is_account_sid("AC33333333333333333333333333333333"));
        assert!(!super::is_account_sid("AC3333"));
        assert!(!super::is_account_sid("XX33333333333333333333333333333333"));
    }

    #[test]
    fn forms_are_capped_and_only_numbered_media_urls_are_identifiers() {
        use super::form_request;
        let at_cap: String = (0..super::MAX_PARAMS).map(|i| format!("K{i}=v&")).collect();
        assert!(super::TwilioForm::parse(&form_request(&at_cap)).is_ok());
        let over = format!("{at_cap}K=v");
        let Err(super::ChannelError::Malformed(m)) = super::TwilioForm::parse(&form_request(&over))
        else {
            panic!("a form over the cap was taken");
        };
        assert!(m.contains("256 form parameters"), "{m}");
        // Repeats of a parameter nobody reads are allowed; of a media URL, not.
        assert!(super::TwilioForm::parse(&form_request("MediaUrlx=1&MediaUrlx=2")).is_ok());
        assert!(super::TwilioForm::parse(&form_request("MediaUrl3=1&MediaUrl3=2")).is_err());
        assert!(super::is_media_url("MediaUrl0") && super::is_media_url("MediaUrl10"));
        assert!(!super::is_media_url("MediaUrl") && !super::is_media_url("MediaUrlaab"));
    }

    #[test]
    fn xml_escape_escapes_markup() {
        assert_eq!(
            super::xml_escape("a<b>&\"c'"),
            "a&lt;b&gt;&amp;&quot;c&apos;"
        );
    }
}
