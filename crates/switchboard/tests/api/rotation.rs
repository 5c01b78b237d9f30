//! Secret rotation's promises that a planted bug once broke without a failing test: an
//! overlap ends when it says, and at most five replaced secrets sign beside the current one.

use std::time::Duration;

use serde_json::{json, Value};

use crate::engine::{create_webhook, location_with_twilio, rotate, subscribed};
use crate::helpers::*;

/// The signatures of a delivery's `webhook-signature` header.
fn signatures(delivery: &Received) -> usize {
    delivery.header("webhook-signature").split(' ').count()
}

/// Rotated with a one-second overlap: both secrets sign at once, only the new one after.
async fn an_overlap_ends_when_it_says() {
    let app = spawn_app().await;
    let (receiver, webhook) = subscribed(&app).await;
    let id = webhook["id"].as_str().unwrap();
    let old = webhook["secret"].as_str().unwrap().to_owned();
    let new = rotate(&app, id, 1).await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post_twilio(&sms_params("SMoverlap-during", "both"), AUTH_TOKEN)
        .await;
    let during = receiver.wait_for(1, Duration::from_secs(5)).await[0].clone();
    assert_eq!(signatures(&during), 2);
    assert!(signed_with(&during, &old) && signed_with(&during, &new));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.post_twilio(&sms_params("SMoverlap-after", "one"), AUTH_TOKEN)
        .await;
    let after = receiver.wait_for(2, Duration::from_secs(5)).await[1].clone();
    assert_eq!(
        signatures(&after),
        1,
        "the old secret still signs after its overlap: {}",
        after.header("webhook-signature")
    );
    assert!(signed_with(&after, &new));
    assert!(!signed_with(&after, &old));
    let secrets = app.get_json(&format!("/v1/webhooks/{id}/secret")).await;
    assert_eq!(secrets["previousSecrets"], json!([]), "{secrets}");
}

/// Seven rotations with long overlaps: the five newest replaced secrets still sign (and are
/// listed), the two oldest do not.
async fn at_most_five_replaced_secrets_sign() {
    let app = spawn_app().await;
    let (receiver, webhook) = subscribed(&app).await;
    let id = webhook["id"].as_str().unwrap();
    let mut secrets = vec![webhook["secret"].as_str().unwrap().to_owned()];
    for _ in 0..7 {
        let rotated = rotate(&app, id, 3600).await;
        secrets.push(rotated["secret"].as_str().unwrap().to_owned());
    }
    let listed: Value = app.get_json(&format!("/v1/webhooks/{id}/secret")).await;
    let previous: Vec<&str> = listed["previousSecrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["secret"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = secrets[2..7].iter().rev().map(String::as_str).collect();
    assert_eq!(previous, newest_first, "{listed}");

    app.post_twilio(&sms_params("SMsix-secrets", "six"), AUTH_TOKEN)
        .await;
    let delivery = receiver.wait_for(1, Duration::from_secs(5)).await[0].clone();
    assert_eq!(
        signatures(&delivery),
        6,
        "{}",
        delivery.header("webhook-signature")
    );
    for (i, secret) in secrets.iter().enumerate() {
        assert_eq!(signed_with(&delivery, secret), i >= 2, "secret {i} of 8");
    }
}

/// A rotation without overlap, then at once a message: its delivery is signed with the new
/// secret alone, however it reaches the dispatcher. The race this catches: a new webhook's
/// second message waits in the store (its first attempt is still out) and a poll claimed it
/// and started it before the dispatcher had read the rotation's change. The test's thread runs
/// the server too: stalling it right after the first delivery leaves that attempt's end, a due
/// poll and the rotation's change to be taken in one turn, as on a busy machine.
async fn a_rotation_signs_every_delivery_started_after_it() {
    let app = spawn_app().await;
    location_with_twilio(&app).await;
    for round in 0..8 {
        let receiver = TestReceiver::start().await;
        let webhook = create_webhook(
            &app,
            json!({ "url": receiver.url, "events": ["InboundMessage"] }),
        )
        .await;
        let id = webhook["id"].as_str().unwrap();
        let first = format!("SMrotate-first-{round}");
        app.post_twilio(&sms_params(&first, "first"), AUTH_TOKEN)
            .await;
        receiver.wait_for(1, Duration::from_secs(5)).await;
        std::thread::sleep(Duration::from_millis(300));
        let new = rotate(&app, id, 0).await["secret"]
            .as_str()
            .unwrap()
            .to_owned();
        let second = format!("SMrotate-second-{round}");
        app.post_twilio(&sms_params(&second, "second"), AUTH_TOKEN)
            .await;
        let delivery = receiver.wait_for(2, Duration::from_secs(5)).await[1].clone();
        assert_eq!(
            signatures(&delivery),
            1,
            "round {round}: signed with a replaced secret too: {}",
            delivery.header("webhook-signature")
        );
        assert!(signed_with(&delivery, &new), "round {round}");
    }
}

crate::both_stores!(
    an_overlap_ends_when_it_says,
    at_most_five_replaced_secrets_sign,
    a_rotation_signs_every_delivery_started_after_it
);
