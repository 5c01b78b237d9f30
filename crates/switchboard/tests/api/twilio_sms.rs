//! Twilio SMS/MMS in, signed InboundMessage out, end to end over real HTTP.

use std::time::Duration;

use serde_json::Value;
use switchboard_events::standard::WebhookSecret;
use switchboard_events::{ed25519, MessageEvent};

use crate::helpers::*;

const QUIET: Duration = Duration::from_millis(400);

fn is_id(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 20 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn is_iso_millis(v: &Value) -> bool {
    // 2021-04-21T11:31:45.750Z
    v.as_str().is_some_and(|s| {
        s.len() == 24
            && s.ends_with('Z')
            && s.as_bytes()[10] == b'T'
            && s.as_bytes()[19] == b'.'
            && humantime::parse_rfc3339(s).is_ok()
    })
}

async fn inbound_sms_is_delivered_once_signed_in_the_source_documents_shape() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let (location_id, secret) = app.standard_setup(&receiver).await;

    let response = app
        .post_twilio(
            &sms_params(
                "SM11111111111111111111111111111111",
                "Hello, is the shop open today?",
            ),
            AUTH_TOKEN,
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/xml"));
    let twiml = response.text().await.unwrap();
    assert!(twiml.contains("<Response></Response>"), "{twiml}");

    let deliveries = receiver.expect_exactly(1, QUIET).await;
    app.expect_events(1).await;
    let delivery = &deliveries[0];
    let body = delivery.json();

    // Point 5 of the issue, field by field.
    assert_eq!(body["type"], "InboundMessage");
    assert_eq!(body["locationId"], location_id.as_str());
    assert_eq!(body["attachments"], serde_json::json!([]));
    assert_eq!(body["body"], "Hello, is the shop open today?");
    assert!(is_id(&body["contactId"]), "{body}");
    assert_eq!(body["contentType"], "text/plain");
    assert!(is_id(&body["conversationId"]), "{body}");
    assert!(is_iso_millis(&body["dateAdded"]), "{body}");
    assert_eq!(body["direction"], "inbound");
    assert_eq!(body["messageType"], "SMS");
    assert_eq!(body["messageTypeId"], 2);
    assert_eq!(body["messageTypeString"], "TYPE_SMS");
    assert_eq!(body["status"], "delivered");
    assert!(is_id(&body["messageId"]), "{body}");
    assert_eq!(body["from"], CUSTOMER_NUMBER);
    assert_eq!(body["to"], BUSINESS_NUMBER);
    assert!(is_iso_millis(&body["timestamp"]), "{body}");
    assert!(is_id(&body["webhookId"]), "{body}");
    // Absent optional fields are omitted, never null; compact JSON.
    let text = std::str::from_utf8(&delivery.body).unwrap();
    assert!(!text.contains("null"), "{text}");
    // The library type parses it, and writes back the same bytes: compact, in wire order.
    let event: MessageEvent = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(serde_json::to_string(&event).unwrap(), text);
    assert_eq!(event.webhook_id, body["webhookId"].as_str().unwrap());

    // Headers: webhook-id is webhookId; content type.
    assert_eq!(
        delivery.header("webhook-id"),
        body["webhookId"].as_str().unwrap()
    );
    assert_eq!(delivery.header("content-type"), "application/json");

    // x-ghl-signature verifies with the key the API serves.
    let keys: Value = app
        .admin_get("/v1/signing-keys")
        .await
        .json()
        .await
        .unwrap();
    let pem = keys["ed25519"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    let key = ed25519::public_key_from_pem(pem).unwrap();
    assert_eq!(
        ed25519::verify(&key, &delivery.body, delivery.header("x-ghl-signature")),
        Ok(())
    );
    let mut tampered = delivery.body.to_vec();
    tampered[10] ^= 1;
    assert!(ed25519::verify(&key, &tampered, delivery.header("x-ghl-signature")).is_err());

    // webhook-signature verifies per the Standard Webhooks spec.
    assert!(
        signed_with(delivery, &secret),
        "Standard Webhooks signature verifies"
    );
    match verify_with_reference_library(&secret, delivery) {
        Some(result) => {
            result.expect("the reference library verifies the delivery");
            let other = WebhookSecret::from_key(b"some other secret").to_whsec();
            let refused = verify_with_reference_library(&other, delivery).unwrap();
            assert!(
                refused.is_err(),
                "the reference library must refuse another secret"
            );
        }
        None => skip(
            "the Standard Webhooks reference library check needs python3 with standardwebhooks (pip install standardwebhooks)",
        ),
    }

    // The message is stored in event shape, byte for byte what was sent.
    let message_id = body["messageId"].as_str().unwrap();
    let stored = app.admin_get(&format!("/v1/messages/{message_id}")).await;
    assert_eq!(stored.status(), 200);
    assert_eq!(stored.bytes().await.unwrap(), delivery.body);
    let report: Value = app
        .admin_get(&format!("/v1/messages/{message_id}/deliveries"))
        .await
        .json()
        .await
        .unwrap();
    let only = &report["data"][0];
    assert_eq!(only["status"], "delivered");
    assert_eq!(only["url"], receiver.url.as_str());
    assert_eq!(only["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(only["attempts"][0]["httpStatus"], 200);
}

async fn legacy_path_is_the_same_handler() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let url = app.url("/appengine/twilio/incoming_message");
    let r = post_twilio_to(
        &app.client,
        &url,
        &sms_params("SMlegacy", "old path"),
        AUTH_TOKEN,
    )
    .await;
    assert_eq!(r.status(), 200);
    let got = receiver.expect_exactly(1, QUIET).await;
    app.expect_events(1).await;
    assert_eq!(got[0].json()["body"], "old path");
}

async fn wrong_or_missing_signature_is_403_and_stores_nothing() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let params = sms_params("SMforged", "forged");

    let wrong = app.post_twilio(&params, "not the auth token").await;
    assert_eq!(wrong.status(), 403);
    let error: Value = wrong.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_signature");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("signature does not verify"), "{message}");
    // Whoever sent it learns nothing about the account the number belongs to.
    assert!(!message.contains(ACCOUNT_SID), "{message}");

    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    let unsigned = app
        .client
        .post(app.url("/conversations/providers/twilio/inbound_message"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 403);
    receiver.expect_exactly(0, QUIET).await;
    app.expect_events(0).await;
    // The operator can see the refusals: Twilio does not retry them.
    assert!(
        refused(&app).await.contains(
            "switchboard_provider_requests_rejected_total{provider=\"twilio\",reason=\"invalid_signature\"} 2"
        ),
        "{}",
        refused(&app).await
    );

    // Nothing was stored: the same MessageSid, correctly signed, is new and delivered once.
    assert_eq!(app.post_twilio(&params, AUTH_TOKEN).await.status(), 200);
    receiver.expect_exactly(1, QUIET).await;
    app.expect_events(1).await;
}

/// The refused-request counters of the metrics page.
async fn refused(app: &TestApp) -> String {
    let text = app.admin_get("/metrics").await.text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("switchboard_provider_requests_rejected_total{"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn signature_over_the_public_url_with_port_variants() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(|c| c.public_url = Some("https://hooks.example.com".into())).await;
    app.standard_setup(&receiver).await;
    let params = sms_params("SMpublic", "via proxy");
    // Signed as Twilio would for the public URL, with and without :443; sent to the server.
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (i, public) in [
        "https://hooks.example.com/conversations/providers/twilio/inbound_message",
        "https://hooks.example.com:443/conversations/providers/twilio/inbound_message",
    ]
    .iter()
    .enumerate()
    {
        let sid = twilio_sid(&format!("SMpublic{i}"));
        let mut owned = owned.clone();
        for p in owned
            .iter_mut()
            .filter(|p| p.0.ends_with("Sid") && p.1 == twilio_sid("SMpublic"))
        {
            p.1 = sid.clone();
        }
        let sig = switchboard::channels::twilio::signature::sign(
            switchboard::channels::twilio::signature::Algorithm::HmacSha1,
            AUTH_TOKEN.as_bytes(),
            public,
            &owned,
        );
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&owned)
            .finish();
        let r = app
            .client
            .post(app.url("/conversations/providers/twilio/inbound_message"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{public}");
    }
    receiver.expect_exactly(2, QUIET).await;
    app.expect_events(2).await;
    // Signed for the loopback URL instead: not what the public URL says, refused.
    assert_eq!(app.post_twilio(&params, AUTH_TOKEN).await.status(), 403);
}

/// Answered as a wrong signature: an unsigned request learns nothing of what is connected.
/// The metric and the log say which it was.
async fn unknown_number_is_403_and_stores_nothing() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let params = sms_params_for(
        "SMunknown",
        "who?",
        "+14155550999",
        "AC99999999999999999999999999999999",
    );
    let r = app.post_twilio(&params, AUTH_TOKEN).await;
    assert_eq!(r.status(), 403);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_signature");
    receiver.expect_exactly(0, QUIET).await;
    app.expect_events(0).await;
    assert_eq!(
        refused(&app).await,
        "switchboard_provider_requests_rejected_total{provider=\"twilio\",reason=\"invalid_signature\"} 1"
    );
}

async fn account_sid_routes_when_the_number_is_not_listed() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let mut params = sms_params("SMbysid", "to another number of the account");
    for p in params.iter_mut().filter(|p| p.0 == "To") {
        p.1 = "+14155550111";
    }
    assert_eq!(app.post_twilio(&params, AUTH_TOKEN).await.status(), 200);
    let got = receiver.expect_exactly(1, QUIET).await;
    app.expect_events(1).await;
    assert_eq!(got[0].json()["to"], "+14155550111");
}

async fn same_message_sid_twice_is_one_message_and_one_delivery() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let params = sms_params("SMduplicate", "only once");
    assert_eq!(app.post_twilio(&params, AUTH_TOKEN).await.status(), 200);
    assert_eq!(app.post_twilio(&params, AUTH_TOKEN).await.status(), 200);
    let got = receiver.expect_exactly(1, QUIET).await;
    app.expect_events(1).await;
    let message_id = got[0].json()["messageId"].as_str().unwrap().to_owned();
    let report: Value = app
        .admin_get(&format!("/v1/messages/{message_id}/deliveries"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["data"].as_array().unwrap().len(), 1);
}

async fn one_contact_and_conversation_per_number() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    app.post_twilio(&sms_params("SMfirst", "one"), AUTH_TOKEN)
        .await;
    app.post_twilio(&sms_params("SMsecond", "two"), AUTH_TOKEN)
        .await;
    let mut other = sms_params("SMthird", "from someone else");
    for p in other.iter_mut().filter(|p| p.0 == "From") {
        p.1 = "+12125550123";
    }
    app.post_twilio(&other, AUTH_TOKEN).await;
    let got = receiver.expect_exactly(3, QUIET).await;
    app.expect_events(3).await;
    let by_body = |b: &str| {
        got.iter()
            .map(|r| r.json())
            .find(|j| j["body"] == b)
            .unwrap()
    };
    let (one, two, three) = (by_body("one"), by_body("two"), by_body("from someone else"));
    assert_eq!(one["contactId"], two["contactId"]);
    assert_eq!(one["conversationId"], two["conversationId"]);
    assert_ne!(one["messageId"], two["messageId"]);
    assert_ne!(one["contactId"], three["contactId"]);
    assert_ne!(one["conversationId"], three["conversationId"]);
}

async fn mms_media_become_attachments_in_order() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let mut params = sms_params("MMmedia", "two pictures");
    params.retain(|p| p.0 != "NumMedia");
    params.extend([
        ("NumMedia", "2"),
        ("MediaContentType1", "application/pdf"),
        (
            "MediaUrl1",
            "https://api.twilio.com/2010-04-01/Accounts/AC3/Messages/MM/Media/ME1",
        ),
        ("MediaContentType0", "image/jpeg"),
        (
            "MediaUrl0",
            "https://api.twilio.com/2010-04-01/Accounts/AC3/Messages/MM/Media/ME0",
        ),
    ]);
    assert_eq!(app.post_twilio(&params, AUTH_TOKEN).await.status(), 200);
    let got = receiver.expect_exactly(1, QUIET).await;
    app.expect_events(1).await;
    assert_eq!(
        got[0].json()["attachments"],
        serde_json::json!([
            "https://api.twilio.com/2010-04-01/Accounts/AC3/Messages/MM/Media/ME0",
            "https://api.twilio.com/2010-04-01/Accounts/AC3/Messages/MM/Media/ME1"
        ])
    );
}

async fn malformed_provider_requests_are_4xx_with_a_json_error() {
    let app = spawn_app_with(|c| c.max_body_bytes = 1024).await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let url = app.url("/conversations/providers/twilio/inbound_message");

    let json = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 415);

    let missing = app
        .client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("Body=hi")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let error: Value = missing.json().await.unwrap();
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("MessageSid"));

    let huge = app
        .client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("Body={}", "x".repeat(4096)))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    assert_eq!(
        huge.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );

    let bad_media = {
        let mut p = sms_params("SMbadmedia", "x");
        for q in p.iter_mut().filter(|q| q.0 == "NumMedia") {
            q.1 = "3";
        }
        app.post_twilio(&p, AUTH_TOKEN).await
    };
    assert_eq!(bad_media.status(), 400);

    // NUL in an identifier (PostgreSQL text cannot hold it), before and after the signature
    // check: a 400 that names the parameter. In the text a person wrote it is dropped.
    for (name, value) in [("To", "+1415555\u{0}0100"), ("MessageSid", "SM\u{0}nul")] {
        let mut p = sms_params("SMnul", "x");
        for q in p.iter_mut().filter(|q| q.0 == name) {
            q.1 = value;
        }
        let nul = app.post_twilio(&p, AUTH_TOKEN).await;
        assert_eq!(nul.status(), 400, "{name}");
        let error: Value = nul.json().await.unwrap();
        assert_eq!(error["error"]["code"], "malformed_request");
        assert!(error["error"]["message"].as_str().unwrap().contains(name));
    }
    receiver.expect_exactly(0, QUIET).await;
    app.expect_events(0).await;
    // A parameter Switchboard does not read may hold anything.
    let mut unread = sms_params("SMunreadnul", "fine");
    for q in unread.iter_mut().filter(|q| q.0 == "ToCity") {
        q.1 = "SAN\u{0}FRANCISCO";
    }
    assert_eq!(app.post_twilio(&unread, AUTH_TOKEN).await.status(), 200);
    assert_eq!(
        receiver.expect_exactly(1, QUIET).await[0].json()["body"],
        "fine"
    );
    let body_nul = app
        .post_twilio(&sms_params("SMbodynul", "a\u{0}b"), AUTH_TOKEN)
        .await;
    assert_eq!(body_nul.status(), 200);
    let got = receiver.expect_exactly(2, QUIET).await;
    app.expect_events(2).await;
    assert_eq!(got[1].json()["body"], "ab");
}

async fn the_simulator_posts_exactly_like_twilio() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let sms = switchboard::simulate::SimulatedSms {
        server: Some(app.address.clone()),
        public_url: None,
        account_sid: ACCOUNT_SID.into(),
        auth_token: AUTH_TOKEN.into(),
        from: CUSTOMER_NUMBER.into(),
        to: BUSINESS_NUMBER.into(),
        body: "simulated".into(),
        media: vec!["https://example.com/a.jpg".into()],
    };
    let (status, twiml) = switchboard::simulate::twilio_sms(&sms).await.unwrap();
    assert_eq!(status, 200, "{twiml}");
    let got = receiver.expect_exactly(1, QUIET).await;
    app.expect_events(1).await;
    assert_eq!(got[0].json()["body"], "simulated");
    assert_eq!(
        got[0].json()["attachments"],
        serde_json::json!(["https://example.com/a.jpg"])
    );
    let wrong = switchboard::simulate::SimulatedSms {
        auth_token: "wrong".into(),
        ..sms
    };
    assert_eq!(
        switchboard::simulate::twilio_sms(&wrong).await.unwrap().0,
        403
    );
}

/// Requests that arrive together are filed in one group commit: repeats of a MessageSid within
/// it and across it are one message, and each message lands under its own sender's contact.
async fn concurrent_requests_file_each_message_once_under_its_own_contact() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let senders: Vec<String> = (0..5).map(|k| format!("+1212555020{k}")).collect();
    let requests: Vec<(String, String, String)> = (0..60)
        .map(|i| {
            let n = i % 20;
            (
                format!("SMconcurrent{n}"),
                format!("concurrent {n}"),
                senders[n % 5].clone(),
            )
        })
        .collect();
    let posts = requests
        .iter()
        .map(|(sid, body, from)| {
            sms_params(sid, body)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), if k == "From" { from } else { v }.to_owned()))
                .collect()
        })
        .collect();
    for status in app.post_twilio_concurrently(posts, AUTH_TOKEN).await {
        assert_eq!(status, 200);
    }
    let got = receiver.expect_exactly(20, QUIET).await;
    app.expect_events(20).await;
    let events: Vec<Value> = got.iter().map(|r| r.json()).collect();
    let mut bodies: Vec<&str> = events.iter().map(|e| e["body"].as_str().unwrap()).collect();
    bodies.sort_unstable();
    bodies.dedup();
    assert_eq!(bodies.len(), 20, "each message delivered once: {bodies:?}");
    let mut contact_of_sender = std::collections::HashMap::new();
    let mut conversation_of_contact = std::collections::HashMap::new();
    for e in &events {
        let n: usize = e["body"].as_str().unwrap()["concurrent ".len()..]
            .parse()
            .unwrap();
        assert_eq!(e["from"].as_str(), Some(senders[n % 5].as_str()), "{e}");
        let contact = e["contactId"].as_str().unwrap().to_owned();
        let conversation = e["conversationId"].as_str().unwrap().to_owned();
        assert_eq!(
            contact_of_sender
                .entry(n % 5)
                .or_insert_with(|| contact.clone()),
            &contact,
            "one contact per sender"
        );
        assert_eq!(
            conversation_of_contact
                .entry(contact)
                .or_insert_with(|| conversation.clone()),
            &conversation,
            "one conversation per contact"
        );
        let report = app
            .get_json(&format!(
                "/v1/messages/{}/deliveries",
                e["messageId"].as_str().unwrap()
            ))
            .await;
        assert_eq!(report["data"].as_array().unwrap().len(), 1, "{report}");
    }
    let distinct_contacts: std::collections::HashSet<_> = contact_of_sender.values().collect();
    assert_eq!(distinct_contacts.len(), 5);
    let feed = app.get_json("/v1/events?limit=100").await;
    assert_eq!(feed["data"].as_array().unwrap().len(), 20, "{feed}");
}

/// A new auth token (or a number moved to another location) applies to the very next request,
/// whatever the server remembered of the account.
async fn a_changed_auth_token_applies_to_the_next_request() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let (location_id, _) = app.standard_setup(&receiver).await;
    let new_token = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
    let first = sms_params("SMtokenA", "with the first token");
    assert_eq!(app.post_twilio(&first, AUTH_TOKEN).await.status(), 200);
    let r = app
        .admin_send(
            reqwest::Method::PUT,
            &format!("/v1/locations/{location_id}/channels/twilio"),
            serde_json::json!({
                "accountSid": ACCOUNT_SID,
                "authToken": new_token,
                "phoneNumbers": [BUSINESS_NUMBER],
            }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let old = sms_params("SMtokenB", "signed with the old token");
    assert_eq!(app.post_twilio(&old, AUTH_TOKEN).await.status(), 403);
    let new = sms_params("SMtokenC", "signed with the new token");
    assert_eq!(app.post_twilio(&new, new_token).await.status(), 200);

    // The number moves to another location: its next message is filed there.
    let other = app.create_location("Other Dental").await;
    let r = app
        .admin_send(
            reqwest::Method::PUT,
            &format!("/v1/locations/{location_id}/channels/twilio"),
            serde_json::json!({ "accountSid": ACCOUNT_SID, "authToken": new_token, "phoneNumbers": [] }),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.connect_twilio(&other, &[BUSINESS_NUMBER])
            .await
            .status(),
        200
    );
    let moved = sms_params("SMtokenD", "after the move");
    assert_eq!(app.post_twilio(&moved, AUTH_TOKEN).await.status(), 200);
    let got = receiver.expect_exactly(3, QUIET).await;
    app.expect_events(3).await;
    let locations: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            let e = r.json();
            (
                e["body"].as_str().unwrap().to_owned(),
                e["locationId"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        locations.contains(&("with the first token".into(), location_id.clone())),
        "{locations:?}"
    );
    assert!(
        locations.contains(&("signed with the new token".into(), location_id.clone())),
        "{locations:?}"
    );
    assert!(
        locations.contains(&("after the move".into(), other.clone())),
        "{locations:?}"
    );
}

/// A fan-out: messages posted at once (filed in one group commit) reach two subscribers, and
/// every delivery's `x-ghl-signature` verifies over its own body. The deliveries of an event
/// share one signature (`delivery::the_deliveries_of_one_event_share_its_signature`); a
/// signature shared across events would fail here.
async fn every_subscriber_of_every_event_gets_a_valid_ghl_signature() {
    let app = spawn_app().await;
    let first = TestReceiver::start().await;
    let second = TestReceiver::start().await;
    app.standard_setup(&first).await;
    let r = app
        .admin_send(
            reqwest::Method::POST,
            "/v1/webhooks",
            serde_json::json!({ "url": second.url, "events": ["InboundMessage"] }),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let posts = (0..8)
        .map(|i| {
            let (sid, body) = (format!("SMfanout{i}"), format!("fan-out {i}"));
            owned_params(sms_params(&sid, &body))
        })
        .collect();
    for status in app.post_twilio_concurrently(posts, AUTH_TOKEN).await {
        assert_eq!(status, 200);
    }
    let keys = app.get_json("/v1/signing-keys").await;
    let key = ed25519::public_key_from_pem(keys["ed25519"].as_str().unwrap()).unwrap();
    let (a, b) = (
        first.expect_exactly(8, QUIET).await,
        second.expect_exactly(8, QUIET).await,
    );
    let mut events = std::collections::HashMap::new();
    for delivery in a.iter().chain(&b) {
        let signature = delivery.header("x-ghl-signature");
        assert_eq!(ed25519::verify(&key, &delivery.body, signature), Ok(()));
        let event = delivery.json()["webhookId"].as_str().unwrap().to_owned();
        *events.entry(event).or_insert(0) += 1;
    }
    // Eight events, each delivered to both subscribers.
    assert_eq!(events.len(), 8);
    assert!(events.values().all(|&n| n == 2), "{events:?}");
}

crate::both_stores!(
    inbound_sms_is_delivered_once_signed_in_the_source_documents_shape,
    legacy_path_is_the_same_handler,
    wrong_or_missing_signature_is_403_and_stores_nothing,
    signature_over_the_public_url_with_port_variants,
    unknown_number_is_403_and_stores_nothing,
    account_sid_routes_when_the_number_is_not_listed,
    same_message_sid_twice_is_one_message_and_one_delivery,
    one_contact_and_conversation_per_number,
    mms_media_become_attachments_in_order,
    malformed_provider_requests_are_4xx_with_a_json_error,
    the_simulator_posts_exactly_like_twilio,
    concurrent_requests_file_each_message_once_under_its_own_contact,
    every_subscriber_of_every_event_gets_a_valid_ghl_signature,
    a_changed_auth_token_applies_to_the_next_request,
);
