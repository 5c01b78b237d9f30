//! Twilio Messaging inbound webhook: a form POST with `MessageSid`, `AccountSid`, `From`, `To`,
//! `Body`, `NumMedia` and `MediaUrl{N}`. Answered with empty TwiML once stored.

use switchboard_events::{Direction, MessageType, CONTENT_TYPE_TEXT_PLAIN};

use super::{normalize_address, strip_whatsapp, twiml, TwilioForm, PROVIDER};
use crate::channels::{Channel, ChannelAccount, ChannelError, Handled, ProviderRequest, RouteKey};
use crate::domain::{ContactIdentity, Fact, NewMessage, PhoneNumber};

const MAX_MEDIA: usize = 10;

pub struct TwilioMessaging;

/// The decoded form with the fields we rely on picked out.
pub struct ParsedMessage {
    form: TwilioForm,
    message_sid: String,
    account_sid: String,
    from: String,
    to: String,
}

impl Channel for TwilioMessaging {
    const PROVIDER: &'static str = PROVIDER;
    type Parsed = ParsedMessage;

    fn parse(req: &ProviderRequest) -> Result<ParsedMessage, ChannelError> {
        let form = TwilioForm::parse(req)?;
        // The message's SID under each of its names: one SID, well formed.
        let mut message_sid: Option<&str> = None;
        for name in ["MessageSid", "SmsMessageSid", "SmsSid"] {
            match (form.sid(name, &["SM", "MM"])?, message_sid) {
                (Some(sid), Some(first)) if sid != first => {
                    return Err(ChannelError::Malformed(format!(
                        "`{name}` ({sid}) is not the same SID as the message's ({first})"
                    )))
                }
                (Some(sid), None) => message_sid = Some(sid),
                _ => {}
            }
        }
        let message_sid = message_sid
            .ok_or_else(|| ChannelError::Malformed("missing form parameter `MessageSid`".into()))?
            .to_owned();
        Ok(ParsedMessage {
            message_sid,
            account_sid: form.account_sid()?,
            from: form.required(&["From"])?,
            to: form.required(&["To"])?,
            form,
        })
    }

    fn route(parsed: &ParsedMessage) -> RouteKey {
        RouteKey {
            address: Some(normalize_address(strip_whatsapp(&parsed.to).0)),
            also: Vec::new(),
            correlation_id: None,
            account_id: Some(parsed.account_sid.clone()),
        }
    }

    fn verify(
        req: &ProviderRequest,
        parsed: &ParsedMessage,
        account: &ChannelAccount,
    ) -> Result<(), ChannelError> {
        parsed.form.verify(req, account)
    }

    fn handle(
        _req: &ProviderRequest,
        parsed: ParsedMessage,
        _account: &ChannelAccount,
        now_ms: i64,
    ) -> Result<Handled, ChannelError> {
        let (from_raw, whatsapp) = strip_whatsapp(&parsed.from);
        let (to_raw, _) = strip_whatsapp(&parsed.to);
        let contact = match PhoneNumber::parse(from_raw) {
            Ok(phone) => ContactIdentity::phone(&phone),
            Err(_) => ContactIdentity::address(PROVIDER, from_raw),
        };
        let form = &parsed.form;
        let media_count = match form.get("NumMedia") {
            None => 0,
            Some(n) => n
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_MEDIA)
                .ok_or_else(|| {
                    ChannelError::Malformed(format!("NumMedia `{n}` is not a number from 0 to 10"))
                })?,
        };
        let attachments = (0..media_count)
            .map(|i| {
                form.get(&format!("MediaUrl{i}"))
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        ChannelError::Malformed(format!(
                            "NumMedia is {media_count} but MediaUrl{i} is missing"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // PostgreSQL text cannot hold NUL; what a person wrote occasionally does.
        let body = form.get("Body").unwrap_or("").replace('\0', "");
        let contact_name = if whatsapp {
            form.get("ProfileName").map(|name| name.replace('\0', ""))
        } else {
            None
        };
        let message = NewMessage {
            provider: PROVIDER,
            provider_message_id: parsed.message_sid.clone(),
            direction: Direction::Inbound,
            message_type: if whatsapp {
                MessageType::WhatsApp
            } else {
                MessageType::Sms
            },
            status: "delivered".to_owned(),
            body: Some(body),
            content_type: Some(CONTENT_TYPE_TEXT_PLAIN.to_owned()),
            attachments,
            contact,
            other_identities: vec![],
            contact_name,
            from: Some(normalize_address(from_raw)),
            to: Some(normalize_address(to_raw)),
            user_id: None,
            call: None,
            email: None,
            received_at_ms: now_ms,
        };
        Ok(Handled {
            nonce: None,
            facts: vec![Fact::Message(message)],
            // No reply message: empty TwiML.
            routed: Vec::new(),
            reply: twiml(""),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::form_request as request;
    use super::super::signature::{self, Algorithm};
    use super::*;

    /// [`SMS`] with the `X-Twilio-Signature` `key` makes with `algorithm`.
    fn signed_sms(algorithm: Algorithm, key: &[u8]) -> ProviderRequest {
        let mut req = request(SMS);
        let parsed = TwilioMessaging::parse(&req).unwrap();
        let sig = signature::sign(algorithm, key, &req.url, &parsed.form.params);
        req.headers
            .insert("x-twilio-signature", sig.parse().unwrap());
        req
    }

    fn account() -> ChannelAccount {
        ChannelAccount {
            location_id: "L".into(),
            account_id: "AC33333333333333333333333333333333".into(),
            secret: "test_auth_token_0123456789abcdef".into(),
            settings: serde_json::json!({}),
        }
    }

    fn message(body: &str) -> NewMessage {
        let parsed = TwilioMessaging::parse(&request(body)).unwrap();
        let req = request(body);
        match TwilioMessaging::handle(&req, parsed, &account(), 5)
            .unwrap()
            .facts
            .remove(0)
        {
            Fact::Message(m) => m,
            other => panic!("{other:?}"),
        }
    }

    const SMS: &str = "MessageSid=SM11111111111111111111111111111111&AccountSid=AC33333333333333333333333333333333&From=%2B12125550199&To=%2B14155550100&Body=Hi+there&NumMedia=0";

    #[test]
    fn sms_becomes_an_inbound_sms() {
        let m = message(SMS);
        assert_eq!(m.provider_message_id, S1);
        assert_eq!(m.message_type, MessageType::Sms);
        assert_eq!(m.body.as_deref(), Some("Hi there"));
        assert_eq!(m.from.as_deref(), Some("+12125550199"));
        assert_eq!(m.to.as_deref(), Some("+14155550100"));
        assert_eq!(
            m.contact,
            ContactIdentity {
                kind: "phone",
                value: "+12125550199".into()
            }
        );
        assert!(m.attachments.is_empty());
        assert_eq!(m.received_at_ms, 5);
    }

    #[test]
    fn mms_media_in_order() {
        let m = message(
            &format!(
                "{SMS}&NumMedia=2&MediaUrl1=https%3A%2F%2Fm%2F1&MediaUrl0=https%3A%2F%2Fm%2F0"
            )
            .replace("&NumMedia=0", ""),
        );
        assert_eq!(m.attachments, vec!["https://m/0", "https://m/1"]);
    }

    #[test]
    fn whatsapp_is_its_own_type_with_the_same_phone_contact() {
        let body = "MessageSid=SM22222222222222222222222222222222&AccountSid=AC33333333333333333333333333333333&From=whatsapp%3A%2B5215512345678&To=whatsapp%3A%2B14155550100&Body=Hola&ProfileName=Ana";
        let m = message(body);
        assert_eq!(m.message_type, MessageType::WhatsApp);
        assert_eq!(m.contact.value, "+5215512345678");
        assert_eq!(m.contact_name.as_deref(), Some("Ana"));
        assert_eq!(
            TwilioMessaging::route(&TwilioMessaging::parse(&request(body)).unwrap()).address,
            Some("+14155550100".into())
        );
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let err = TwilioMessaging::parse(&request("From=%2B1")).err().unwrap();
        assert!(matches!(err, ChannelError::Malformed(m) if m.contains("MessageSid")));
        let parsed =
            TwilioMessaging::parse(&request(&SMS.replace("NumMedia=0", "NumMedia=2"))).unwrap();
        let req = request(SMS);
        let err = TwilioMessaging::handle(&req, parsed, &account(), 0)
            .err()
            .unwrap();
        assert!(matches!(err, ChannelError::Malformed(m) if m.contains("MediaUrl0")));
        let mut json = request("{}");
        json.headers
            .insert("content-type", "application/json".parse().unwrap());
        assert!(matches!(
            TwilioMessaging::parse(&json),
            Err(ChannelError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn sids_are_well_formed_agree_and_are_never_repeated() {
        let refused = |body: String, says: &str| {
            let err = TwilioMessaging::parse(&request(&body)).err().unwrap();
            assert!(
                matches!(&err, ChannelError::Malformed(m) if m.contains(says)),
                "{body}: {err:?}"
            );
        };
        // A SID extended by the parameter after it (signs the same, without separators).
        refused(
            SMS.replace("&NumMedia=0", "")
                .replace(S1, &format!("{S1}NumMedia0")),
            "not a Twilio SID",
        );
        refused(SMS.replace(S1, "SMdurable"), "not a Twilio SID");
        refused(
            SMS.replace("AC33333333333333333333333333333333", "ACx"),
            "not a Twilio SID",
        );
        refused(
            format!("{SMS}&SmsSid=SM{}", "2".repeat(32)),
            "not the same SID",
        );
        refused(
            format!("{SMS}&From=%2B15555550123"),
            "`From` appears more than once",
        );
        refused(
            format!("{SMS}&AccountSid=AC{}", "4".repeat(32)),
            "`AccountSid` appears",
        );
        // The same SID under its three names is one message.
        let all = format!("{SMS}&SmsMessageSid={S1}&SmsSid={S1}");
        assert_eq!(message(&all).provider_message_id, S1);
    }

    const S1: &str = "SM11111111111111111111111111111111";

    #[test]
    fn a_request_for_another_account_is_refused() {
        let req = request(SMS);
        let parsed = TwilioMessaging::parse(&req).unwrap();
        let mut other = account();
        other.account_id = format!("AC{}", "4".repeat(32));
        let signed = signed_sms(Algorithm::HmacSha1, other.secret.as_bytes());
        let err = TwilioMessaging::verify(&signed, &parsed, &other).unwrap_err();
        assert!(matches!(err, ChannelError::BadSignature(m) if m.contains("AccountSid")));
    }

    #[test]
    fn verify_uses_the_account_token() {
        let req = request(SMS);
        let parsed = TwilioMessaging::parse(&req).unwrap();
        let signed = signed_sms(Algorithm::HmacSha1, b"test_auth_token_0123456789abcdef");
        assert_eq!(
            TwilioMessaging::verify(&signed, &parsed, &account()),
            Ok(())
        );
        let mut other = account();
        other.secret = "another".into();
        assert!(TwilioMessaging::verify(&signed, &parsed, &other).is_err());
        assert!(TwilioMessaging::verify(&req, &parsed, &account()).is_err());
    }

    /// A Webhook Rule announces HMAC-SHA256 and its shared key id; the key configured under that
    /// id verifies, the auth token does not, and an unknown algorithm is refused.
    #[test]
    fn verify_honours_the_signature_settings_header() {
        let req = request(SMS);
        let parsed = TwilioMessaging::parse(&req).unwrap();
        let shared = "shared-key-secret";
        let mut signed = signed_sms(Algorithm::HmacSha256, shared.as_bytes());
        signed.headers.insert(
            "x-twilio-webhooks-signature-settings",
            "key=KS1,algorithm=HMAC_SHA256".parse().unwrap(),
        );
        assert!(TwilioMessaging::verify(&signed, &parsed, &account()).is_err());
        let mut with_key = account();
        with_key.settings = serde_json::json!({ "signingKeys": { "KS1": shared } });
        assert_eq!(TwilioMessaging::verify(&signed, &parsed, &with_key), Ok(()));
        signed.headers.insert(
            "x-twilio-webhooks-signature-settings",
            "key=KS1,algorithm=HMAC_MD5".parse().unwrap(),
        );
        assert!(TwilioMessaging::verify(&signed, &parsed, &with_key).is_err());
    }
}
