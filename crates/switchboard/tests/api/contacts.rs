//! Contacts by any identity: a contact is found by any of its verified identities (a phone
//! number, an e-mail address, a channel's own id) and gains the verified ones it did not have;
//! an identity the sender only claimed never attaches a message to an existing contact; two
//! requests racing with one new identity make one contact. Messages come through Twilio and the
//! test channel (whose `also` carries more identities) into one location.

use std::time::Duration;

use serde_json::{json, Value};

use crate::engine::create_webhook;
use crate::helpers::*;
use crate::registry::{configure_test_channel, post_signed, SECRET};

/// A location with Twilio (the business number) and the test channel (`room-1`), and a
/// webhook to the returned receiver.
async fn setup(app: &TestApp) -> TestReceiver {
    let location = app.create_location("Identities").await;
    assert_eq!(
        app.connect_twilio(&location, &[BUSINESS_NUMBER])
            .await
            .status(),
        200
    );
    let r = configure_test_channel(app, &location, SECRET, &["room-1"]).await;
    assert_eq!(r.status(), 200);
    let receiver = TestReceiver::start().await;
    create_webhook(
        app,
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await;
    receiver
}

/// A test channel message; its event once delivered (the `n`th the receiver got).
async fn via_test_channel(
    app: &TestApp,
    receiver: &TestReceiver,
    n: usize,
    message: Value,
) -> Value {
    let r = post_signed(app, &message, SECRET).await;
    assert_eq!(r.status(), 200, "{message}");
    receiver.wait_for(n, Duration::from_secs(5)).await[n - 1].json()
}

async fn via_sms(app: &TestApp, receiver: &TestReceiver, n: usize, sid: &str) -> Value {
    let sid = twilio_sid(sid);
    let r = app
        .post_twilio(&sms_params(&sid, "by sms"), AUTH_TOKEN)
        .await;
    assert_eq!(r.status(), 200);
    receiver.wait_for(n, Duration::from_secs(5)).await[n - 1].json()
}

/// An SMS contact, then a message with the same phone and a new e-mail address: one contact
/// and one conversation, and the contact is then found by the e-mail address alone (any case).
async fn a_verified_identity_joins_the_contact_it_arrives_with() {
    let app = spawn_app().await;
    let receiver = setup(&app).await;
    let sms = via_sms(&app, &receiver, 1, "SMident1").await;
    let contact = sms["contactId"].as_str().unwrap().to_owned();
    let both = via_test_channel(
        &app,
        &receiver,
        2,
        json!({ "id": "t-1", "to": "room-1", "from": CUSTOMER_NUMBER, "text": "with mail",
                "also": [{ "kind": "email", "value": "Pat@Example.TEST", "verified": true }] }),
    )
    .await;
    assert_eq!(both["contactId"], contact.as_str(), "{both}");
    assert_eq!(both["conversationId"], sms["conversationId"], "{both}");
    let by_mail = via_test_channel(
        &app,
        &receiver,
        3,
        json!({ "id": "t-2", "to": "room-1", "from": "pat@example.test", "text": "mail only" }),
    )
    .await;
    assert_eq!(by_mail["contactId"], contact.as_str(), "{by_mail}");
    assert_eq!(by_mail["conversationId"], sms["conversationId"]);
}

/// A visitor who claims a customer's phone number is a contact of their own, and the claim is
/// not stored: the customer's next SMS is still theirs alone.
async fn an_unverified_claim_never_attaches_to_an_existing_contact() {
    let app = spawn_app().await;
    let receiver = setup(&app).await;
    let sms = via_sms(&app, &receiver, 1, "SMclaim1").await;
    let customer = sms["contactId"].as_str().unwrap().to_owned();
    let visitor = via_test_channel(
        &app,
        &receiver,
        2,
        json!({ "id": "t-claim", "to": "room-1", "from": "visitor-1", "text": "I am them",
                "also": [{ "kind": "phone", "value": CUSTOMER_NUMBER, "verified": false }] }),
    )
    .await;
    assert_ne!(visitor["contactId"], customer.as_str(), "{visitor}");
    assert_ne!(visitor["conversationId"], sms["conversationId"]);
    let again = via_sms(&app, &receiver, 3, "SMclaim2").await;
    assert_eq!(again["contactId"], customer.as_str());
    // The visitor is found again by their own id.
    let back = via_test_channel(
        &app,
        &receiver,
        4,
        json!({ "id": "t-claim-2", "to": "room-1", "from": "visitor-1", "text": "again" }),
    )
    .await;
    assert_eq!(back["contactId"], visitor["contactId"]);
}

/// Twenty requests at once, each a new message from one new e-mail address: one contact.
async fn requests_racing_with_one_new_identity_make_one_contact() {
    let app = spawn_app().await;
    let receiver = setup(&app).await;
    let posts = (0..20).map(|i| {
        let app = &app;
        async move {
            let message = json!({ "id": format!("race-{i}"), "to": "room-1",
                                  "from": "new@example.test", "text": format!("race {i}") });
            post_signed(app, &message, SECRET).await.status()
        }
    });
    for status in futures_util::future::join_all(posts).await {
        assert_eq!(status, 200);
    }
    let got = receiver.wait_for(20, Duration::from_secs(10)).await;
    let mut contacts: Vec<String> = got
        .iter()
        .map(|d| d.json()["contactId"].as_str().unwrap().to_owned())
        .collect();
    contacts.sort();
    contacts.dedup();
    assert_eq!(contacts.len(), 1, "{contacts:?}");
}

crate::both_stores!(
    a_verified_identity_joins_the_contact_it_arrives_with,
    an_unverified_claim_never_attaches_to_an_existing_contact,
    requests_racing_with_one_new_identity_make_one_contact,
);
