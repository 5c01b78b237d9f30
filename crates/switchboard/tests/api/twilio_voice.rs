//! Calls and voicemail over Twilio Voice, end to end over real HTTP: the callbacks of one
//! CallSid become exactly one CALL event in the source document's shape.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

pub(crate) const INCOMING: &str = "/conversations/providers/twilio/voice/incoming";
pub(crate) const DIAL_STATUS: &str = "/conversations/providers/twilio/voice/dial-status";
pub(crate) const STATUS: &str = "/conversations/providers/twilio/voice/status";
pub(crate) const RECORDING: &str = "/conversations/providers/twilio/voice/recording";
const FORWARD_TO: &str = "+14155550111";
const GREETING: &str = "Thanks for calling Acme & Sons. Leave a message after the beep.";
const RECORDING_URL: &str =
    "https://api.twilio.com/2010-04-01/Accounts/AC33333333333333333333333333333333/Recordings/RE55555555555555555555555555555555";
pub(crate) const QUIET: Duration = Duration::from_millis(400);
/// Who answers at `FORWARD_TO`, in the operator's own systems (`voice.userId`).
const USER_ID: &str = "xsmF1xxhmC92ZpL1lj7aLa";

/// Connect the test account to `location_id` with `numbers` and voice settings.
async fn put_voice_channel(app: &TestApp, location_id: &str, numbers: &[&str], voice: Value) {
    let r = app
        .admin_send(
            reqwest::Method::PUT,
            &format!("/v1/locations/{location_id}/channels/twilio"),
            json!({
                "accountSid": ACCOUNT_SID,
                "authToken": AUTH_TOKEN,
                "phoneNumbers": numbers,
                "voice": voice,
            }),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// A location with the business number, voice settings, and a webhook for both directions.
pub(crate) async fn setup(app: &TestApp, receiver: &TestReceiver, voice: Value) -> String {
    let location_id = app.create_location("Acme Dental").await;
    put_voice_channel(app, &location_id, &[BUSINESS_NUMBER], voice).await;
    let r = app
        .admin_send(
            reqwest::Method::POST,
            "/v1/webhooks",
            // The subscriber is on loopback: allowed for this webhook even where private
            // targets are not (a test of media downloads refused there).
            json!({ "url": receiver.url, "events": ["InboundMessage", "OutboundMessage"], "allowedNetworks": ["127.0.0.0/8"] }),
        )
        .await;
    assert_eq!(r.status(), 201);
    location_id
}

pub(crate) fn voice_settings() -> Value {
    json!({
        "forwardTo": FORWARD_TO,
        "ringTimeoutSeconds": 25,
        "greeting": GREETING,
        "voicemail": true,
        "recordAnsweredCalls": false,
    })
}

/// The parameters of every inbound voice request for `call_sid`.
pub(crate) fn call_params<'a>(
    call_sid: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let call_sid = sid_str(call_sid);
    let mut p = vec![
        ("CallSid", call_sid),
        ("AccountSid", ACCOUNT_SID),
        ("From", CUSTOMER_NUMBER),
        ("To", BUSINESS_NUMBER),
        ("Direction", "inbound"),
        ("ApiVersion", "2010-04-01"),
        ("FromCountry", "US"),
        ("ToCountry", "US"),
    ];
    p.extend_from_slice(extra);
    p
}

pub(crate) fn recording_params<'a>(
    call_sid: &'a str,
    status: &'a str,
    source: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let call_sid = sid_str(call_sid);
    vec![
        ("AccountSid", ACCOUNT_SID),
        ("CallSid", call_sid),
        ("RecordingSid", "RE55555555555555555555555555555555"),
        ("RecordingUrl", RECORDING_URL),
        ("RecordingStatus", status),
        (
            "RecordingDuration",
            if status == "completed" { "23" } else { "0" },
        ),
        ("RecordingChannels", "1"),
        ("RecordingStartTime", "Wed, 01 May 2024 10:00:05 +0000"),
        ("RecordingSource", source),
        ("RecordingTrack", "inbound"),
        ("ErrorCode", "0"),
    ]
}

/// POST and return the TwiML, parsed (the test fails if it is not well-formed XML).
pub(crate) async fn post_twiml(app: &TestApp, path: &str, params: &[(&str, &str)]) -> String {
    let r = app.post_twilio_path(path, params, AUTH_TOKEN).await;
    assert_eq!(r.status(), 200, "{path}");
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/xml"));
    let text = r.text().await.unwrap();
    roxmltree::Document::parse(&text)
        .unwrap_or_else(|e| panic!("invalid TwiML from {path}: {e}\n{text}"));
    text
}

/// The keys of the source document's Call example, but `userId` (only when someone answered).
const CALL_KEYS: [&str; 10] = [
    "type",
    "locationId",
    "attachments",
    "contactId",
    "conversationId",
    "dateAdded",
    "direction",
    "messageType",
    "messageId",
    "status",
];

/// Assert the fields every CALL event has, as the source document's Call example shows them.
fn assert_call_shape(event: &Value, location_id: &str) {
    for key in CALL_KEYS {
        assert!(event.get(key).is_some(), "{key} missing in {event}");
    }
    assert_eq!(event["locationId"], location_id);
    assert_eq!(event["messageType"], "CALL");
    assert!(
        event.get("body").is_none() && event.get("contentType").is_none(),
        "{event}"
    );
    let text = event.to_string();
    assert!(!text.contains("null"), "{text}");
}

async fn incoming_call_twiml_forwards_to_the_configured_number() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    setup(&app, &receiver, voice_settings()).await;
    let twiml = post_twiml(
        &app,
        INCOMING,
        &call_params("CAtwiml", &[("CallStatus", "ringing")]),
    )
    .await;
    let doc = roxmltree::Document::parse(&twiml).unwrap();
    let dial = doc
        .descendants()
        .find(|n| n.has_tag_name("Dial"))
        .expect("a <Dial>");
    assert_eq!(dial.attribute("timeout"), Some("25"));
    assert_eq!(
        dial.attribute("action"),
        Some(app.url(DIAL_STATUS).as_str())
    );
    assert_eq!(dial.attribute("record"), None);
    let number = dial.children().find(|n| n.has_tag_name("Number")).unwrap();
    assert_eq!(number.text(), Some(FORWARD_TO));

    // Nobody answered: the greeting, then a recording reported to the recording callback.
    let twiml = post_twiml(
        &app,
        DIAL_STATUS,
        &call_params(
            "CAtwiml",
            &[
                ("CallStatus", "in-progress"),
                ("DialCallStatus", "no-answer"),
                ("DialCallSid", sid_str("CAchild")),
            ],
        ),
    )
    .await;
    let doc = roxmltree::Document::parse(&twiml).unwrap();
    let say = doc
        .descendants()
        .find(|n| n.has_tag_name("Say"))
        .expect("a <Say>");
    assert_eq!(say.text(), Some(GREETING));
    let record = doc
        .descendants()
        .find(|n| n.has_tag_name("Record"))
        .expect("a <Record>");
    assert_eq!(
        record.attribute("recordingStatusCallback"),
        Some(app.url(RECORDING).as_str())
    );
    assert_eq!(
        record.attribute("action"),
        Some(app.url(RECORDING).as_str())
    );
    assert_eq!(record.attribute("maxLength"), Some("120"));

    // Answered: hang up after the call.
    let twiml = post_twiml(
        &app,
        DIAL_STATUS,
        &call_params("CAtwiml2", &[("DialCallStatus", "completed")]),
    )
    .await;
    let doc = roxmltree::Document::parse(&twiml).unwrap();
    assert!(doc.descendants().any(|n| n.has_tag_name("Hangup")));
    assert!(!doc.descendants().any(|n| n.has_tag_name("Record")));

    // The <Record> action (no RecordingStatus) is answered with a hang-up.
    let twiml = post_twiml(
        &app,
        RECORDING,
        &call_params(
            "CAtwiml",
            &[("RecordingUrl", RECORDING_URL), ("Digits", "hangup")],
        ),
    )
    .await;
    assert!(twiml.contains("<Hangup/>"));
    receiver.expect_exactly(0, QUIET).await;
    app.expect_events(0).await;
}

async fn answered_inbound_call_is_one_completed_call_event_on_the_sms_contact() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let location_id = setup(&app, &receiver, voice_settings()).await;
    // The caller texted before: the call lands on the same contact and conversation.
    app.post_twilio(&sms_params("SMbefore", "calling you now"), AUTH_TOKEN)
        .await;
    let sms = receiver.wait_for(1, Duration::from_secs(5)).await[0].json();

    post_twiml(
        &app,
        INCOMING,
        &call_params("CAanswered", &[("CallStatus", "ringing")]),
    )
    .await;
    post_twiml(
        &app,
        DIAL_STATUS,
        &call_params(
            "CAanswered",
            &[("DialCallStatus", "completed"), ("DialCallDuration", "37")],
        ),
    )
    .await;
    receiver.expect_exactly(1, QUIET).await;
    app.expect_events(1).await;
    post_twiml(
        &app,
        STATUS,
        &call_params(
            "CAanswered",
            &[("CallStatus", "completed"), ("CallDuration", "45")],
        ),
    )
    .await;

    let got = receiver.expect_exactly(2, QUIET).await;
    app.expect_events(2).await;
    let event = got[1].json();
    assert_call_shape(&event, &location_id);
    assert_eq!(event["type"], "InboundMessage");
    assert_eq!(event["direction"], "inbound");
    assert_eq!(event["status"], "completed");
    assert_eq!(event["callStatus"], "completed");
    assert_eq!(event["callDuration"], 37);
    assert_eq!(event["messageTypeId"], 1);
    assert_eq!(event["messageTypeString"], "TYPE_CALL");
    assert_eq!(event["attachments"], json!([]));
    // No `voice.userId`: nobody is named.
    assert!(event.get("userId").is_none(), "{event}");
    assert_eq!(event["from"], CUSTOMER_NUMBER);
    assert_eq!(event["to"], BUSINESS_NUMBER);
    assert_eq!(event["contactId"], sms["contactId"]);
    assert_eq!(event["conversationId"], sms["conversationId"]);
    assert_ne!(event["messageId"], sms["messageId"]);
}

async fn voicemail_flow(status_first: bool) {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    // Someone answers at the forwarding number, but nobody answered this call.
    let mut voice = voice_settings();
    voice["userId"] = json!(USER_ID);
    let location_id = setup(&app, &receiver, voice).await;
    let sid = if status_first {
        "CAvmstatusfirst"
    } else {
        "CAvmrecfirst"
    };
    post_twiml(
        &app,
        INCOMING,
        &call_params(sid, &[("CallStatus", "ringing")]),
    )
    .await;
    post_twiml(
        &app,
        DIAL_STATUS,
        &call_params(
            sid,
            &[("DialCallStatus", "no-answer"), ("DialCallDuration", "0")],
        ),
    )
    .await;
    let status = call_params(sid, &[("CallStatus", "completed"), ("CallDuration", "41")]);
    let recording = recording_params(sid, "completed", "RecordVerb");
    if status_first {
        post_twiml(&app, STATUS, &status).await;
        // Switchboard asked for a recording: it waits for it.
        receiver.expect_exactly(0, QUIET).await;
        app.expect_events(0).await;
        post_twiml(&app, RECORDING, &recording).await;
    } else {
        post_twiml(&app, RECORDING, &recording).await;
        receiver.expect_exactly(0, QUIET).await;
        app.expect_events(0).await;
        post_twiml(&app, STATUS, &status).await;
    }
    let got = receiver.expect_exactly(1, QUIET).await;
    app.expect_events(1).await;
    let event = got[0].json();
    assert_call_shape(&event, &location_id);
    assert_eq!(event["type"], "InboundMessage");
    assert_eq!(event["status"], "voicemail");
    assert_eq!(event["callStatus"], "voicemail");
    assert_eq!(event["attachments"], json!([RECORDING_URL]));
    assert_eq!(event["messageTypeId"], 10);
    assert_eq!(event["messageTypeString"], "TYPE_VOICEMAIL");
    assert!(event.get("callDuration").is_none());
    assert!(event.get("userId").is_none(), "{event}");
    assert_eq!(event["from"], CUSTOMER_NUMBER);
}

async fn voicemail_with_the_status_callback_before_the_recording() {
    voicemail_flow(true).await;
}

async fn voicemail_with_the_status_callback_after_the_recording() {
    voicemail_flow(false).await;
}

async fn every_callback_twice_is_still_one_event() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    setup(&app, &receiver, voice_settings()).await;
    let sid = "CAtwice";
    let steps = [
        (INCOMING, call_params(sid, &[("CallStatus", "ringing")])),
        (
            DIAL_STATUS,
            call_params(sid, &[("DialCallStatus", "no-answer")]),
        ),
        (RECORDING, recording_params(sid, "completed", "RecordVerb")),
        (
            STATUS,
            call_params(sid, &[("CallStatus", "completed"), ("CallDuration", "30")]),
        ),
    ];
    for (path, params) in &steps {
        post_twiml(&app, path, params).await;
        post_twiml(&app, path, params).await;
    }
    // And once more, all of them, after the event went out.
    for (path, params) in &steps {
        post_twiml(&app, path, params).await;
    }
    let got = receiver.expect_exactly(1, QUIET).await;
    app.expect_events(1).await;
    assert_eq!(got[0].json()["status"], "voicemail");
}

async fn missed(voice: Value, dial_status: &str, recording: Option<&str>) -> Value {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let location_id = setup(&app, &receiver, voice).await;
    let sid = "CAmissed";
    post_twiml(
        &app,
        INCOMING,
        &call_params(sid, &[("CallStatus", "ringing")]),
    )
    .await;
    post_twiml(
        &app,
        DIAL_STATUS,
        &call_params(sid, &[("DialCallStatus", dial_status)]),
    )
    .await;
    if let Some(status) = recording {
        post_twiml(
            &app,
            RECORDING,
            &recording_params(sid, status, "RecordVerb"),
        )
        .await;
    }
    post_twiml(
        &app,
        STATUS,
        &call_params(sid, &[("CallStatus", "completed"), ("CallDuration", "12")]),
    )
    .await;
    let got = receiver.expect_exactly(1, QUIET).await;
    app.expect_events(1).await;
    let event = got[0].json();
    assert_call_shape(&event, &location_id);
    assert_eq!(event["attachments"], json!([]));
    assert_eq!(event["messageTypeId"], 1);
    assert!(event.get("callDuration").is_none());
    event
}

async fn missed_call_without_voicemail() {
    let mut voice = voice_settings();
    voice["voicemail"] = json!(false);
    let event = missed(voice, "no-answer", None).await;
    assert_eq!(
        (event["status"].as_str(), event["callStatus"].as_str()),
        (Some("no-answer"), Some("no-answer"))
    );
}

async fn busy_call() {
    let mut voice = voice_settings();
    voice["voicemail"] = json!(false);
    let event = missed(voice, "busy", None).await;
    assert_eq!(
        (event["status"].as_str(), event["callStatus"].as_str()),
        (Some("busy"), Some("busy"))
    );
}

async fn caller_hung_up_before_the_beep_is_a_missed_call() {
    let event = missed(voice_settings(), "no-answer", Some("absent")).await;
    assert_eq!(event["callStatus"], "no-answer");
}

async fn a_recording_that_never_comes_is_waited_for_then_given_up() {
    let app = spawn_app_with(|c| c.call_recording_wait_seconds = 1).await;
    let receiver = TestReceiver::start().await;
    setup(&app, &receiver, voice_settings()).await;
    let sid = "CAnorecording";
    post_twiml(
        &app,
        INCOMING,
        &call_params(sid, &[("CallStatus", "ringing")]),
    )
    .await;
    post_twiml(
        &app,
        DIAL_STATUS,
        &call_params(sid, &[("DialCallStatus", "no-answer")]),
    )
    .await;
    post_twiml(
        &app,
        STATUS,
        &call_params(sid, &[("CallStatus", "completed")]),
    )
    .await;
    receiver.expect_exactly(0, Duration::from_millis(600)).await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].json()["callStatus"], "no-answer");
    // A recording that arrives after the call was emitted changes nothing.
    post_twiml(
        &app,
        RECORDING,
        &recording_params(sid, "completed", "RecordVerb"),
    )
    .await;
    receiver.expect_exactly(1, QUIET).await;
    app.expect_events(1).await;
}

/// With `recordAnsweredCalls` and `userId`, an answered call is the source document's Call
/// example: the recording in `attachments`, `userId`, `status` `completed`.
async fn answered_calls_are_recorded_when_asked() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let mut voice = voice_settings();
    voice["recordAnsweredCalls"] = json!(true);
    voice["userId"] = json!(USER_ID);
    let location_id = setup(&app, &receiver, voice).await;
    let sid = "CArecorded";
    let twiml = post_twiml(
        &app,
        INCOMING,
        &call_params(sid, &[("CallStatus", "ringing")]),
    )
    .await;
    let doc = roxmltree::Document::parse(&twiml).unwrap();
    let dial = doc.descendants().find(|n| n.has_tag_name("Dial")).unwrap();
    assert_eq!(dial.attribute("record"), Some("record-from-answer-dual"));
    assert_eq!(
        dial.attribute("recordingStatusCallback"),
        Some(app.url(RECORDING).as_str())
    );
    post_twiml(
        &app,
        DIAL_STATUS,
        &call_params(
            sid,
            &[("DialCallStatus", "completed"), ("DialCallDuration", "61")],
        ),
    )
    .await;
    post_twiml(
        &app,
        STATUS,
        &call_params(sid, &[("CallStatus", "completed"), ("CallDuration", "70")]),
    )
    .await;
    receiver.expect_exactly(0, QUIET).await;
    app.expect_events(0).await;
    post_twiml(
        &app,
        RECORDING,
        &recording_params(sid, "completed", "DialVerb"),
    )
    .await;
    let event = receiver.expect_exactly(1, QUIET).await[0].json();
    assert_call_shape(&event, &location_id);
    assert_eq!(event["status"], "completed");
    assert_eq!(event["callStatus"], "completed");
    assert_eq!(event["callDuration"], 61);
    assert_eq!(event["attachments"], json!([RECORDING_URL]));
    assert_eq!(event["userId"], USER_ID);
    // The example's keys, and only HighLevel's documented additions besides.
    let mut keys: Vec<&str> = event
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = CALL_KEYS.to_vec();
    expected.push("userId");
    // HighLevel's documented additions.
    expected.extend([
        "messageTypeId",
        "messageTypeString",
        "callStatus",
        "callDuration",
        "from",
        "to",
        "timestamp",
        "webhookId",
    ]);
    expected.sort_unstable();
    assert_eq!(keys, expected, "{event}");
}

pub(crate) fn outbound_params<'a>(
    sid: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let sid = sid_str(sid);
    let mut p = vec![
        ("CallSid", sid),
        ("AccountSid", ACCOUNT_SID),
        ("From", BUSINESS_NUMBER),
        ("To", CUSTOMER_NUMBER),
        ("Direction", "outbound-api"),
        ("ApiVersion", "2010-04-01"),
    ];
    p.extend_from_slice(extra);
    p
}

async fn outbound_answered_call() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let location_id = setup(&app, &receiver, voice_settings()).await;
    // Progress events first: nothing is emitted until the final status.
    post_twiml(
        &app,
        STATUS,
        &outbound_params("CAout", &[("CallStatus", "ringing")]),
    )
    .await;
    receiver.expect_exactly(0, QUIET).await;
    app.expect_events(0).await;
    post_twiml(
        &app,
        STATUS,
        &outbound_params(
            "CAout",
            &[("CallStatus", "completed"), ("CallDuration", "120")],
        ),
    )
    .await;
    let event = receiver.expect_exactly(1, QUIET).await[0].json();
    assert_call_shape(&event, &location_id);
    assert_eq!(event["type"], "OutboundMessage");
    assert_eq!(event["direction"], "outbound");
    assert_eq!(event["status"], "completed");
    assert_eq!(event["callStatus"], "completed");
    assert_eq!(event["callDuration"], 120);
    assert_eq!(event["messageTypeId"], 1);
    assert_eq!(event["from"], BUSINESS_NUMBER);
    assert_eq!(event["to"], CUSTOMER_NUMBER);
}

async fn outbound_call_reaching_voicemail() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let location_id = setup(&app, &receiver, voice_settings()).await;
    // The contact is the callee: the same contact as the customer's texts.
    app.post_twilio(&sms_params("SMcustomer", "call me"), AUTH_TOKEN)
        .await;
    let sms = receiver.wait_for(1, Duration::from_secs(5)).await[0].json();
    post_twiml(
        &app,
        STATUS,
        &outbound_params(
            "CAoutvm",
            &[
                ("CallStatus", "completed"),
                ("CallDuration", "31"),
                ("AnsweredBy", "machine_end_beep"),
            ],
        ),
    )
    .await;
    let event = receiver.expect_exactly(2, QUIET).await[1].json();
    assert_call_shape(&event, &location_id);
    assert_eq!(event["type"], "OutboundMessage");
    assert_eq!(event["status"], "completed");
    assert_eq!(event["callStatus"], "voicemail");
    assert_eq!(event["messageTypeId"], 1);
    assert_eq!(event["contactId"], sms["contactId"]);
}

async fn wrong_signature_on_each_voice_endpoint_is_403_and_stores_nothing() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    setup(&app, &receiver, voice_settings()).await;
    let sid = "CAforged";
    // Forged callbacks that would make the call "answered".
    let forged = [
        (INCOMING, call_params(sid, &[("CallStatus", "ringing")])),
        (
            DIAL_STATUS,
            call_params(
                sid,
                &[("DialCallStatus", "completed"), ("DialCallDuration", "99")],
            ),
        ),
        (
            STATUS,
            call_params(sid, &[("CallStatus", "completed"), ("CallDuration", "99")]),
        ),
        (RECORDING, recording_params(sid, "completed", "DialVerb")),
    ];
    for (path, params) in &forged {
        let r = app
            .post_twilio_path(path, params, "not the auth token")
            .await;
        assert_eq!(r.status(), 403, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_signature", "{path}");
    }
    receiver.expect_exactly(0, QUIET).await;
    app.expect_events(0).await;
    // The real callbacks: a missed call. Had anything forged been kept, it would be answered.
    post_twiml(
        &app,
        INCOMING,
        &call_params(sid, &[("CallStatus", "ringing")]),
    )
    .await;
    post_twiml(
        &app,
        DIAL_STATUS,
        &call_params(sid, &[("DialCallStatus", "no-answer")]),
    )
    .await;
    post_twiml(
        &app,
        RECORDING,
        &recording_params(sid, "absent", "RecordVerb"),
    )
    .await;
    post_twiml(
        &app,
        STATUS,
        &call_params(sid, &[("CallStatus", "completed")]),
    )
    .await;
    let event = receiver.expect_exactly(1, QUIET).await[0].json();
    assert_eq!(event["callStatus"], "no-answer");
    assert!(event.get("callDuration").is_none());
}

async fn voice_settings_are_validated() {
    let app = spawn_app().await;
    let location_id = app.create_location("Acme").await;
    for (voice, needle) in [
        (json!({ "forwardTo": "555-0100" }), "forwardTo"),
        (json!({ "ringTimeoutSeconds": 1 }), "ringTimeoutSeconds"),
        (json!({ "greeting": "" }), "greeting"),
        (json!({ "voicemial": true }), "voicemial"),
        (
            json!({ "userId": USER_ID }),
            "voice.userId needs voice.forwardTo",
        ),
        (
            json!({ "forwardTo": FORWARD_TO, "userId": "" }),
            "voice.userId",
        ),
    ] {
        let r = app
            .admin_send(
                reqwest::Method::PUT,
                &format!("/v1/locations/{location_id}/channels/twilio"),
                json!({ "accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN, "phoneNumbers": [], "voice": voice }),
            )
            .await;
        assert_eq!(r.status(), 422, "{voice}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains(needle),
            "{body}"
        );
    }
}

/// A stand-in for Twilio's media host: serves `.mp3` recordings only with the account's Basic
/// auth (AccountSid:AuthToken), as api.twilio.com does. Returns its base URL and a request count.
pub(crate) async fn fake_twilio_media(
    audio: &'static [u8],
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::http::{HeaderMap, StatusCode};
    use base64::Engine;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT_SID}:{AUTH_TOKEN}"))
    );
    let app = axum::Router::new().route(
        "/2010-04-01/Accounts/{account}/Recordings/{file}",
        axum::routing::get(
            move |axum::extract::Path((_, file)): axum::extract::Path<(String, String)>,
                  headers: HeaderMap| {
                let expected = expected.clone();
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    if headers.get("authorization").and_then(|v| v.to_str().ok())
                        != Some(expected.as_str())
                    {
                        return (
                            StatusCode::UNAUTHORIZED,
                            [("content-type", "text/plain")],
                            &b"auth"[..],
                        );
                    }
                    // `REmissing…`: a recording Twilio does not have.
                    if !file.ends_with(".mp3") || file.starts_with("REmissing") {
                        return (
                            StatusCode::NOT_FOUND,
                            [("content-type", "text/plain")],
                            &b"no"[..],
                        );
                    }
                    (StatusCode::OK, [("content-type", "audio/mpeg")], audio)
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), hits)
}

async fn recordings_can_be_kept_and_served_from_signed_expiring_urls() {
    const AUDIO: &[u8] = b"ID3\x03\x00fake mp3 frames \x00\xff\xfb";
    let (media_base, hits) = fake_twilio_media(AUDIO).await;
    let app = spawn_app_with(|c| {
        c.credential_hosts
            .insert("twilio".into(), vec![media_base.clone()]);
        c.attachment_url_ttl = Duration::from_secs(2);
    })
    .await;
    let receiver = TestReceiver::start().await;
    let mut voice = voice_settings();
    voice["downloadRecordings"] = json!(true);
    setup(&app, &receiver, voice).await;

    let recording_url = format!("{media_base}/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/RE55555555555555555555555555555555");
    let sid = "CAkept";
    post_twiml(
        &app,
        INCOMING,
        &call_params(sid, &[("CallStatus", "ringing")]),
    )
    .await;
    post_twiml(
        &app,
        DIAL_STATUS,
        &call_params(sid, &[("DialCallStatus", "no-answer")]),
    )
    .await;
    let mut rec = recording_params(sid, "completed", "RecordVerb");
    for p in rec.iter_mut().filter(|p| p.0 == "RecordingUrl") {
        p.1 = &recording_url;
    }
    post_twiml(&app, RECORDING, &rec).await;
    // Twilio sends a callback again when our answer is slow: the kept copy serves it.
    post_twiml(&app, RECORDING, &rec).await;
    post_twiml(
        &app,
        STATUS,
        &call_params(sid, &[("CallStatus", "completed")]),
    )
    .await;
    let event = receiver.expect_exactly(1, QUIET).await[0].json();
    assert_eq!(event["status"], "voicemail");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    let kept = std::fs::read_dir(app.data_dir().join("attachments"))
        .unwrap()
        .count();
    assert_eq!(kept, 1);
    let link = event["attachments"][0].as_str().unwrap().to_owned();
    assert!(
        link.starts_with(&format!("{}/attachments/", app.address)),
        "{link}"
    );
    assert!(
        link.contains("expires=") && link.contains("signature="),
        "{link}"
    );
    assert!(!link.contains("twilio") && !link.contains(AUTH_TOKEN));

    // Anyone with the link gets the file, no credentials needed.
    let r = app.client.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/mpeg");
    assert_eq!(r.bytes().await.unwrap().as_ref(), AUDIO);
    // A changed signature, a changed expiry or no signature: refused.
    let tampered = format!("{}x", &link[..link.len() - 1]);
    assert_eq!(
        app.client.get(&tampered).send().await.unwrap().status(),
        403
    );
    let later = link.replace("expires=", "expires=9");
    assert_eq!(app.client.get(&later).send().await.unwrap().status(), 403);
    let bare = link.split('?').next().unwrap();
    let r = app.client.get(bare).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_signature"
    );
    // Once its time is up (attachment_url_ttl, 2 s here), the link is gone: 410.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = app.client.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 410);
}

/// A voicemail whose recording at `recording_url` is to be downloaded; the event sent.
async fn voicemail_with_recording_at(app: &TestApp, recording_url: &str) -> Value {
    let receiver = TestReceiver::start().await;
    let mut voice = voice_settings();
    voice["downloadRecordings"] = json!(true);
    setup(app, &receiver, voice).await;
    let sid = "CAunkept";
    post_twiml(
        app,
        DIAL_STATUS,
        &call_params(sid, &[("DialCallStatus", "no-answer")]),
    )
    .await;
    let mut rec = recording_params(sid, "completed", "RecordVerb");
    for p in rec.iter_mut().filter(|p| p.0 == "RecordingUrl") {
        p.1 = recording_url;
    }
    post_twiml(app, RECORDING, &rec).await;
    post_twiml(
        app,
        STATUS,
        &call_params(sid, &[("CallStatus", "completed")]),
    )
    .await;
    receiver.expect_exactly(1, QUIET).await[0].json()
}

async fn a_recording_that_cannot_be_kept_is_sent_as_the_providers_url() {
    let (media_base, hits) = fake_twilio_media(b"x").await;
    let app = spawn_app_with(|c| {
        c.credential_hosts
            .insert("twilio".into(), vec![media_base.clone()]);
    })
    .await;
    // The media host has no such recording (404): the download fails.
    let recording_url =
        format!("{media_base}/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/REmissing1");
    let event = voicemail_with_recording_at(&app, &recording_url).await;
    assert_eq!(event["status"], "voicemail");
    assert_eq!(event["attachments"], json!([recording_url]));
    assert!(
        hits.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "no download was attempted"
    );
}

/// A media host that resolves to a private address is refused like a webhook target, even
/// when it is the provider's (configured) credential host: nothing is fetched, and the event
/// carries the provider's URL.
async fn a_recording_on_a_private_address_is_not_downloaded() {
    let (media_base, hits) = fake_twilio_media(b"x").await;
    let port = media_base.rsplit(':').next().unwrap().to_owned();
    let host = format!("http://media.twilio.test:{port}");
    let app = spawn_app_with(|c| {
        c.allow_private_targets = false;
        c.credential_hosts
            .insert("twilio".into(), vec![host.clone()]);
        c.dns_overrides.insert(
            "media.twilio.test".into(),
            vec!["127.0.0.1".parse().unwrap()],
        );
    })
    .await;
    let recording_url = format!(
        "{host}/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/RE55555555555555555555555555555555"
    );
    let event = voicemail_with_recording_at(&app, &recording_url).await;
    assert_eq!(event["attachments"], json!([recording_url]));
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the private address was reached"
    );
}

const OTHER_SID: &str = "AC44444444444444444444444444444444";
const OTHER_TOKEN: &str = "another-auth-token";

/// A second location on its own Twilio account, with `numbers`.
async fn other_location(app: &TestApp, numbers: &[&str]) {
    let other = app.create_location("Other").await;
    let r = app
        .admin_send(
            reqwest::Method::PUT,
            &format!("/v1/locations/{other}/channels/twilio"),
            json!({ "accountSid": OTHER_SID, "authToken": OTHER_TOKEN, "phoneNumbers": numbers }),
        )
        .await;
    assert_eq!(r.status(), 200);
}

/// Ring `call_sid`, then run the test's `between`, then answer it: the dial lasts `talked`
/// seconds. Returns the one event the call makes.
async fn answered_call<F: std::future::Future<Output = ()>>(
    app: &TestApp,
    receiver: &TestReceiver,
    call_sid: &str,
    talked: &str,
    between: F,
) -> Value {
    post_twiml(
        app,
        INCOMING,
        &call_params(call_sid, &[("CallStatus", "ringing")]),
    )
    .await;
    between.await;
    post_twiml(
        app,
        DIAL_STATUS,
        &call_params(
            call_sid,
            &[
                ("DialCallStatus", "completed"),
                ("DialCallDuration", talked),
            ],
        ),
    )
    .await;
    post_twiml(
        app,
        STATUS,
        &call_params(
            call_sid,
            &[("CallStatus", "completed"), ("CallDuration", "99")],
        ),
    )
    .await;
    receiver.expect_exactly(1, QUIET).await[0].json()
}

async fn a_callback_cannot_reach_another_locations_call() {
    const OTHER_NUMBER: &str = "+14155550122";
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let location_id = setup(&app, &receiver, voice_settings()).await;
    other_location(&app, &[OTHER_NUMBER]).await;
    let event = answered_call(&app, &receiver, "CAvictim", "37", async {
        // The other account's callback, validly signed by it, names this location's call:
        // it is routed to the call's location, whose token it was not signed with.
        let forged = [
            ("CallSid", sid_str("CAvictim")),
            ("AccountSid", OTHER_SID),
            ("From", CUSTOMER_NUMBER),
            ("To", OTHER_NUMBER),
            ("Direction", "inbound"),
            ("CallStatus", "completed"),
            ("CallDuration", "999"),
        ];
        let r = app.post_twilio_path(STATUS, &forged, OTHER_TOKEN).await;
        assert_eq!(r.status(), 403);
        receiver.expect_exactly(0, QUIET).await;
        app.expect_events(0).await;
    })
    .await;
    // The call's own callbacks make its one event, as if the other had never come.
    assert_call_shape(&event, &location_id);
    assert_eq!(event["callStatus"], "completed");
    assert_eq!(event["callDuration"], 37);
}

async fn a_call_stays_with_its_location_when_the_number_moves() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let location_id = setup(&app, &receiver, voice_settings()).await;
    let event = answered_call(&app, &receiver, "CAmoving", "12", async {
        // During the call, the number moves to another location (another Twilio account).
        put_voice_channel(&app, &location_id, &["+14155550133"], voice_settings()).await;
        other_location(&app, &[BUSINESS_NUMBER]).await;
    })
    .await;
    // The call's callbacks, signed by its own account, still make its event there.
    assert_call_shape(&event, &location_id);
    assert_eq!(event["callDuration"], 12);
}

crate::both_stores!(
    incoming_call_twiml_forwards_to_the_configured_number,
    answered_inbound_call_is_one_completed_call_event_on_the_sms_contact,
    voicemail_with_the_status_callback_before_the_recording,
    voicemail_with_the_status_callback_after_the_recording,
    every_callback_twice_is_still_one_event,
    missed_call_without_voicemail,
    busy_call,
    caller_hung_up_before_the_beep_is_a_missed_call,
    a_recording_that_never_comes_is_waited_for_then_given_up,
    answered_calls_are_recorded_when_asked,
    outbound_answered_call,
    outbound_call_reaching_voicemail,
    wrong_signature_on_each_voice_endpoint_is_403_and_stores_nothing,
    voice_settings_are_validated,
    recordings_can_be_kept_and_served_from_signed_expiring_urls,
    a_recording_that_cannot_be_kept_is_sent_as_the_providers_url,
    a_recording_on_a_private_address_is_not_downloaded,
    a_callback_cannot_reach_another_locations_call,
    a_call_stays_with_its_location_when_the_number_moves,
);
