//! Subscribers that answered and then hang, and subscribers that are only slow: an attempt on
//! a shared slot with no answer for `slow_attempt_after` gives that slot up for a probation
//! slot, and its webhook sends one attempt at a time until its subscriber answers; its backlog
//! is not held in the stream for that.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backlog::held_after;
use crate::engine::{create_webhook, location_with_twilio};
use crate::helpers::*;
use crate::isolation::{metric, probation_of, waits};

/// Webhooks whose subscribers answered and then start hanging, more of them than there are
/// shared slots: each unanswered attempt gives its shared slot up after `slow_attempt_after`
/// and its webhook goes on probation, so the healthy webhook's deliveries wait at most about
/// that long, never for the timeouts. Before, the eight hanging attempts held the four slots
/// for the whole 10 s timeout, and the healthy webhook's deliveries waited for them.
async fn subscribers_that_start_hanging_give_their_slots_up() {
    let timeout = Duration::from_secs(10);
    let slow_after = Duration::from_millis(300);
    let app = spawn_app_with(|c| {
        c.delivery_timeout = timeout;
        c.dispatcher_concurrency = 4;
        c.slow_attempt_after = slow_after;
    })
    .await;
    location_with_twilio(&app).await;
    let turning = TestReceiver::start().await;
    let mut hanging_ids = Vec::new();
    for _ in 0..8 {
        let created = create_webhook(
            &app,
            json!({ "url": turning.url, "events": ["InboundMessage"] }),
        )
        .await;
        hanging_ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let healthy = TestReceiver::start().await;
    create_webhook(
        &app,
        json!({ "url": healthy.url, "events": ["InboundMessage"] }),
    )
    .await;
    // Every subscriber answers the first message: all nine webhooks are off probation.
    let r = app
        .post_twilio(&sms_params(&twilio_sid("SMturn0"), "message 0"), AUTH_TOKEN)
        .await;
    assert_eq!(r.status(), 200);
    turning.wait_for(8, Duration::from_secs(10)).await;
    healthy.wait_for(1, Duration::from_secs(10)).await;
    for id in &hanging_ids {
        eventually(Duration::from_secs(5), "off probation", || async {
            (probation_of(&app, id).await == json!(false)).then_some(())
        })
        .await;
    }

    turning.slow(Duration::from_secs(3600));
    let messages = 8;
    let mut posted = vec![Instant::now()];
    for i in 1..messages {
        let sid = twilio_sid(&format!("SMturn{i}"));
        posted.push(Instant::now());
        let r = app
            .post_twilio(&sms_params(&sid, &format!("message {i}")), AUTH_TOKEN)
            .await;
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = healthy.wait_for(messages, Duration::from_secs(20)).await;
    let waits = waits(&got[1..], &posted);
    for (i, waited) in &waits {
        assert!(
            *waited < slow_after * 5,
            "message {i} reached the healthy webhook after {waited:?} (slow after {slow_after:?}, timeout {timeout:?}): {waits:?}"
        );
    }
    // The webhooks that hang are on probation (each one's first unanswered attempt moved it
    // there long before its timeout), and show it.
    for id in &hanging_ids {
        assert_eq!(probation_of(&app, id).await, json!(true), "{id}");
    }
    // Every attempt still out (at least one per hanging webhook) holds a probation slot, none
    // a shared one.
    eventually(Duration::from_secs(2), "no shared slot held", || async {
        let text = get_metrics(&app.client, &app.address).await;
        let sending = metric(&text, "switchboard_deliveries_sending")?;
        let on_probation = metric(&text, "switchboard_deliveries_sending_on_probation")?;
        (sending >= 8.0 && sending == on_probation).then_some(())
    })
    .await;
}

/// A subscriber that is only slow (it answers every request after 600 ms, past
/// `slow_attempt_after`) sends one attempt at a time while its attempts are slow, but its
/// backlog is never held in the stream (no write per slow spell), it gets every message once,
/// and it is off probation again once it answers.
async fn a_slow_subscriber_is_not_held_and_gets_everything_once() {
    let app = spawn_app_with(|c| c.slow_attempt_after = Duration::from_millis(200)).await;
    location_with_twilio(&app).await;
    let receiver = TestReceiver::start().await;
    receiver.slow(Duration::from_millis(600));
    let created = create_webhook(
        &app,
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let r = app
        .post_twilio(&sms_params(&twilio_sid("SMslow0"), "message 0"), AUTH_TOKEN)
        .await;
    assert_eq!(r.status(), 200);
    eventually(Duration::from_secs(5), "off probation", || async {
        (probation_of(&app, &id).await == json!(false)).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "given back", || async {
        held_after(&app, &id).await.is_null().then_some(())
    })
    .await;

    for i in 1..7 {
        let sid = twilio_sid(&format!("SMslow{i}"));
        let r = app
            .post_twilio(&sms_params(&sid, &format!("message {i}")), AUTH_TOKEN)
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            held_after(&app, &id).await,
            Value::Null,
            "held after message {i}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.received().len() < 7 && Instant::now() < deadline {
        assert_eq!(held_after(&app, &id).await, Value::Null, "held while slow");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = receiver.expect_exactly(7, Duration::from_millis(800)).await;
    let mut bodies: Vec<String> = got
        .iter()
        .map(|d| d.json()["body"].as_str().unwrap().to_owned())
        .collect();
    bodies.sort();
    let expected: Vec<String> = (0..7).map(|i| format!("message {i}")).collect();
    assert_eq!(bodies, expected);
    eventually(
        Duration::from_secs(5),
        "off probation after the answers",
        || async { (probation_of(&app, &id).await == json!(false)).then_some(()) },
    )
    .await;
}

crate::both_stores!(
    subscribers_that_start_hanging_give_their_slots_up,
    a_slow_subscriber_is_not_held_and_gets_everything_once,
);
