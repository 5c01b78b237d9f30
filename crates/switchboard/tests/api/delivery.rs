//! The dispatcher against real subscribers: retries, attempt records, fan-out, give-up.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

async fn failing_subscriber_gets_the_same_delivery_until_it_accepts() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    receiver.script(&[Reply::Status(500), Reply::Status(500)]);
    app.standard_setup(&receiver).await;

    assert_eq!(
        app.post_twilio(&sms_params("SMretry", "retry me"), AUTH_TOKEN)
            .await
            .status(),
        200
    );
    let got = receiver.expect_exactly(3, Duration::from_millis(600)).await;
    let first = &got[0];
    for later in &got[1..] {
        assert_eq!(later.header("webhook-id"), first.header("webhook-id"));
        assert_eq!(later.body, first.body);
        assert_eq!(
            later.header("x-ghl-signature"),
            first.header("x-ghl-signature")
        );
    }

    let message_id = first.json()["messageId"].as_str().unwrap().to_owned();
    let report: Value = app
        .admin_get(&format!("/v1/messages/{message_id}/deliveries"))
        .await
        .json()
        .await
        .unwrap();
    let delivery = &report["data"][0];
    assert_eq!(delivery["status"], "delivered");
    let attempts = delivery["attempts"].as_array().unwrap();
    let statuses: Vec<i64> = attempts
        .iter()
        .map(|a| a["httpStatus"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, vec![500, 500, 200]);
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["attempt"], i as i64 + 1);
        assert!(a["durationMs"].as_i64().unwrap() >= 0);
        assert!(a["at"].as_str().unwrap().ends_with('Z'));
    }
    assert!(delivery.get("nextAttemptAt").is_none());
}

async fn delivery_fails_after_the_schedule_and_records_connection_errors() {
    let app = spawn_app().await;
    // A port with nobody listening: every attempt is a connection error.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let location_id = app.create_location("Closed").await;
    app.connect_twilio(&location_id, &[BUSINESS_NUMBER]).await;
    let r = app
        .admin_send(
            reqwest::Method::POST,
            "/v1/webhooks",
            json!({ "url": format!("http://{closed}/hook"), "events": ["InboundMessage"] }),
        )
        .await;
    assert_eq!(r.status(), 201);
    // A working subscriber too: one failing endpoint does not hold back another.
    let receiver = TestReceiver::start().await;
    app.admin_send(
        reqwest::Method::POST,
        "/v1/webhooks",
        json!({ "url": receiver.url, "events": ["InboundMessage"], "locationId": location_id }),
    )
    .await;

    app.post_twilio(&sms_params("SMclosed", "nobody home"), AUTH_TOKEN)
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    let message_id = got[0].json()["messageId"].as_str().unwrap().to_owned();

    // Schedule: 1 attempt + 2 retries of 200 ms.
    let failed = eventually(Duration::from_secs(10), "a failed delivery", || async {
        let report = app
            .get_json(&format!("/v1/messages/{message_id}/deliveries"))
            .await;
        report["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["status"] == "failed")
            .cloned()
    })
    .await;
    let attempts = failed["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    for a in attempts {
        assert!(a.get("httpStatus").is_none());
        assert!(a["error"].as_str().unwrap().starts_with("connect"), "{a}");
    }
}

async fn webhooks_receive_only_their_locations_and_events() {
    let app = spawn_app().await;
    let all = TestReceiver::start().await;
    let mine = TestReceiver::start().await;
    let other = TestReceiver::start().await;
    let outbound_only = TestReceiver::start().await;
    let location = app.create_location("Mine").await;
    let other_location = app.create_location("Other").await;
    app.connect_twilio(&location, &[BUSINESS_NUMBER]).await;
    for (url, events, loc) in [
        (&all.url, json!(["InboundMessage", "OutboundMessage"]), None),
        (&mine.url, json!(["InboundMessage"]), Some(&location)),
        (&other.url, json!(["InboundMessage"]), Some(&other_location)),
        (&outbound_only.url, json!(["OutboundMessage"]), None),
    ] {
        let r = app
            .admin_send(
                reqwest::Method::POST,
                "/v1/webhooks",
                json!({ "url": url, "events": events, "locationId": loc }),
            )
            .await;
        assert_eq!(r.status(), 201);
    }
    app.post_twilio(&sms_params("SMfanout", "fan out"), AUTH_TOKEN)
        .await;
    let a = all.expect_exactly(1, Duration::from_millis(400)).await;
    let m = mine.expect_exactly(1, Duration::ZERO).await;
    other.expect_exactly(0, Duration::ZERO).await;
    outbound_only.expect_exactly(0, Duration::ZERO).await;
    // One event: the same webhookId and bytes for every subscriber, signed per subscriber.
    assert_eq!(a[0].body, m[0].body);
    assert_eq!(a[0].header("webhook-id"), m[0].header("webhook-id"));
    assert_ne!(
        a[0].header("webhook-signature"),
        m[0].header("webhook-signature")
    );
}

async fn deleted_webhook_gets_nothing_more() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let list: Value = app.admin_get("/v1/webhooks").await.json().await.unwrap();
    let id = list["data"][0]["id"].as_str().unwrap().to_owned();
    assert!(list["data"][0].get("secret").is_none());
    let r = app
        .admin_send(
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{id}"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 204);
    let again = app
        .admin_send(
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{id}"),
            json!({}),
        )
        .await;
    assert_eq!(again.status(), 404);
    app.post_twilio(&sms_params("SMafterdelete", "anyone?"), AUTH_TOKEN)
        .await;
    receiver.expect_exactly(0, Duration::from_millis(400)).await;
}

/// The deliveries of one event, to two webhooks, share one signature cell, so the event is
/// signed once however many subscribers it has; another event has its own.
#[tokio::test]
async fn the_deliveries_of_one_event_share_its_signature() {
    use std::sync::Arc;
    use switchboard::domain::Fact;
    use switchboard::store::{
        sqlite::SqliteStore, IngestContext, Locations, Messages, Webhook, Webhooks,
    };
    use switchboard_events::EventType;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let store = SqliteStore::open(
        &url,
        switchboard::config::SqliteSynchronous::Full,
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    let location = store.create_location("Fan-out", 1).await.unwrap();
    for id in ["wh_a", "wh_b"] {
        let webhook = Webhook::new(
            id.into(),
            format!("http://127.0.0.1:9/{id}"),
            vec![EventType::InboundMessage],
            "whsec_c2VjcmV0".into(),
            1,
        );
        store.create_webhook(&webhook).await.unwrap();
    }
    let message = |sid: &str| Fact::Message(new_sms("twilio", sid, "hello"));
    let context = IngestContext {
        app_id: None,
        now: 2,
        lease_until: Some(60_000),
        handoffs: None,
        call_recording_wait_ms: 0,
        nonce: None,
        mail_flood_cap: None,
    };
    let outcome = store
        .ingest(
            &location.id,
            vec![message("SMshare1"), message("SMshare2")],
            &context,
        )
        .await
        .unwrap();
    assert_eq!(outcome.jobs.len(), 4);
    for a in &outcome.jobs {
        for b in &outcome.jobs {
            assert_eq!(
                Arc::ptr_eq(&a.ghl_signature, &b.ghl_signature),
                a.event_id == b.event_id,
                "{} / {}",
                a.webhook_id,
                b.webhook_id
            );
        }
    }
}

crate::both_stores!(
    failing_subscriber_gets_the_same_delivery_until_it_accepts,
    delivery_fails_after_the_schedule_and_records_connection_errors,
    webhooks_receive_only_their_locations_and_events,
    deleted_webhook_gets_nothing_more,
);
