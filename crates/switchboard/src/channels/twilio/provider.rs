//! Twilio as the registry sees it: its endpoints (the Messaging path the source document
//! gives, its legacy path, and the Voice callbacks), where its credentials may go, and how its
//! requests are described in the OpenAPI document.

use serde_json::{json, Value};

use super::{TwilioMessaging, VoiceDialStatus, VoiceIncoming, VoiceRecording, VoiceStatus};
use crate::channels::{ChannelAccount, Endpoint, Provider};
use crate::error::ApiError;
use crate::routes::openapi::error_response;
use crate::routes::provider_route;
use crate::store::ChannelAccountInput;

/// The Twilio Messaging webhook path the source document gives, and its legacy path.
pub const INBOUND_PATH: &str = "/conversations/providers/twilio/inbound_message";
pub const LEGACY_INBOUND_PATH: &str = "/appengine/twilio/incoming_message";
/// Twilio Voice: "A call comes in", the `<Dial>` action, "Call status changes", recordings.
pub const VOICE_INCOMING_PATH: &str = "/conversations/providers/twilio/voice/incoming";
pub const VOICE_DIAL_STATUS_PATH: &str = "/conversations/providers/twilio/voice/dial-status";
pub const VOICE_STATUS_PATH: &str = "/conversations/providers/twilio/voice/status";
pub const VOICE_RECORDING_PATH: &str = "/conversations/providers/twilio/voice/recording";

pub struct Twilio;

/// The registry's entry.
pub static TWILIO: Twilio = Twilio;

static ENDPOINTS: [Endpoint; 6] = [
    Endpoint {
        path: INBOUND_PATH,
        summary: "Twilio Messaging: a message comes in",
        handler: provider_route::<TwilioMessaging>,
    },
    Endpoint {
        path: LEGACY_INBOUND_PATH,
        summary: "Twilio Messaging (legacy path)",
        handler: provider_route::<TwilioMessaging>,
    },
    Endpoint {
        path: VOICE_INCOMING_PATH,
        summary: "Twilio Voice: a call comes in (TwiML)",
        handler: provider_route::<VoiceIncoming>,
    },
    Endpoint {
        path: VOICE_DIAL_STATUS_PATH,
        summary: "Twilio Voice: the <Dial> action (TwiML)",
        handler: provider_route::<VoiceDialStatus>,
    },
    Endpoint {
        path: VOICE_STATUS_PATH,
        summary: "Twilio Voice: call status changes",
        handler: provider_route::<VoiceStatus>,
    },
    Endpoint {
        path: VOICE_RECORDING_PATH,
        summary: "Twilio Voice: recording status and <Record> action",
        handler: provider_route::<VoiceRecording>,
    },
];

impl Provider for Twilio {
    fn name(&self) -> &'static str {
        super::PROVIDER
    }

    fn endpoints(&self) -> &'static [Endpoint] {
        &ENDPOINTS
    }

    fn credential_hosts(&self) -> &'static [&'static str] {
        super::MEDIA_HOSTS
    }

    fn title(&self) -> &'static str {
        "Twilio"
    }

    fn vendors(&self) -> &'static [&'static str] {
        &[super::PROVIDER]
    }

    fn configure(&self, body: &[u8]) -> Result<ChannelAccountInput, ApiError> {
        super::settings::configure(body)
    }

    fn view(
        &self,
        account: &ChannelAccount,
        addresses: &[String],
        public_url: Option<&str>,
    ) -> Value {
        super::settings::view(account, addresses, public_url)
    }

    fn settings_schema(&self) -> Value {
        super::settings::schema()
    }

    fn operation(&self, _endpoint: &Endpoint) -> Value {
        json!({
            "parameters": [{
                "name": "X-Twilio-Signature", "in": "header", "required": true,
                "schema": { "type": "string" },
                "description": "base64 HMAC-SHA1 (or HMAC-SHA256 with a Webhook Rule) over the public URL and the sorted form parameters"
            }],
            "requestBody": {
                "required": true,
                "content": { "application/x-www-form-urlencoded": { "schema": { "type": "object", "additionalProperties": { "type": "string" } } } }
            },
            "responses": {
                "200": { "description": "Stored (TwiML answer)", "content": { "text/xml": { "schema": { "type": "string" } } } },
                "400": error_response("Not a request this route takes"),
                "403": error_response("Missing or wrong signature"),
                "404": error_response("No location has this number or account connected"),
                "413": error_response("Body too large"),
                "415": error_response("Not a form post")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::credential_hosts::CredentialHosts;

    #[test]
    fn the_auth_token_goes_only_to_twilios_own_https_hosts() {
        let hosts = CredentialHosts::default();
        for ok in [
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1.mp3",
            "https://api.dublin.ie1.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1.mp3",
            "https://API.TWILIO.COM:443/x",
        ] {
            assert_eq!(hosts.check("twilio", ok), Ok(()), "{ok}");
        }
        for refused in [
            "http://api.twilio.com/x",
            "https://api.twilio.com.evil.test/x",
            "https://eviltwilio.com/x",
            "https://twilio.com.evil.test/x",
            "https://api.twilio.com:8443/x",
            "https://user:pass@api.twilio.com/x",
            "https://127.0.0.1/x",
        ] {
            assert!(hosts.check("twilio", refused).is_err(), "{refused}");
        }
        // The operator's list replaces the channel's.
        let mut configured = HashMap::new();
        configured.insert(
            "twilio".to_owned(),
            vec!["http://127.0.0.1:4567".to_owned()],
        );
        let hosts = CredentialHosts::new(configured);
        assert_eq!(hosts.check("twilio", "http://127.0.0.1:4567/r.mp3"), Ok(()));
        assert!(hosts.check("twilio", "https://api.twilio.com/x").is_err());
    }
}
