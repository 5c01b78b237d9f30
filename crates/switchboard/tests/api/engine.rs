//! The delivery engine against real subscribers on loopback, with short configured schedules:
//! retry schedule and Retry-After, 410, redirects, the circuit breaker, auto-disable, filters,
//! ordering, limits, retry and replay, rotation, SSRF, metrics, retention and the events feed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

const QUIET: Duration = Duration::from_millis(400);

pub(crate) async fn create_webhook(app: &TestApp, body: Value) -> Value {
    let r = app
        .admin_send(reqwest::Method::POST, "/v1/webhooks", body.clone())
        .await;
    let status = r.status();
    let created: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{body} → {created}");
    created
}

pub(crate) async fn location_with_twilio(app: &TestApp) -> String {
    let location_id = app.create_location("Engine").await;
    assert_eq!(
        app.connect_twilio(&location_id, &[BUSINESS_NUMBER])
            .await
            .status(),
        200
    );
    location_id
}

fn sms_from<'a>(sid: &'a str, body: &'a str, from: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut p = sms_params(sid, body);
    for x in p.iter_mut().filter(|x| x.0 == "From") {
        x.1 = from;
    }
    p
}

async fn default_schedule_puts_the_first_retry_five_seconds_out_within_jitter() {
    let app = spawn_app_with(|c| {
        c.retry_schedule = switchboard::Config::defaults().retry_schedule;
        c.retry_jitter = 0.2;
    })
    .await;
    let receiver = TestReceiver::start().await;
    receiver.script(&[Reply::Status(500)]);
    app.standard_setup(&receiver).await;
    app.post_twilio(&sms_params("SMsched", "later"), AUTH_TOKEN)
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    let message_id = got[0].json()["messageId"].as_str().unwrap().to_owned();
    let delivery = eventually(
        Duration::from_secs(5),
        "the first attempt recorded",
        || async {
            let report = app
                .get_json(&format!("/v1/messages/{message_id}/deliveries"))
                .await;
            let d = report["data"][0].clone();
            (d["attempts"].as_array().unwrap().len() == 1).then_some(d)
        },
    )
    .await;
    assert_eq!(delivery["status"], "pending");
    let attempt = &delivery["attempts"][0];
    let ended = iso_ms(&attempt["at"]) + attempt["durationMs"].as_i64().unwrap();
    let wait = iso_ms(&delivery["nextAttemptAt"]) - ended;
    assert!(
        (3_990..=6_010).contains(&wait),
        "first retry {wait} ms after the attempt, not 5 s ± 20 %"
    );
}

/// On a `ManualClock`: each retry comes exactly when it is due, not a millisecond before.
async fn a_webhooks_own_schedule_and_retry_after() {
    let (app, clock) = spawn_app_on_manual_clock(|_| {}).await;
    let receiver = TestReceiver::start().await;
    location_with_twilio(&app).await;
    create_webhook(
        &app,
        json!({ "url": receiver.url, "events": ["InboundMessage"], "retrySchedule": ["100ms", "3s"] }),
    )
    .await;
    // 429 with Retry-After: 1 → one second (within [100 ms, 3 s]); then 503 asking an hour → 3 s.
    receiver.script(&[
        Reply::WithHeader(429, "retry-after", "1"),
        Reply::WithHeader(503, "retry-after", "3600"),
    ]);
    app.post_twilio(&sms_params("SMretryafter", "slow down"), AUTH_TOKEN)
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    let message_id = got[0].json()["messageId"].as_str().unwrap().to_owned();
    let after = |attempts: usize| {
        let (app, message_id) = (&app, &message_id);
        async move {
            eventually(Duration::from_secs(5), "the attempt recorded", || async {
                let report = app
                    .get_json(&format!("/v1/messages/{message_id}/deliveries"))
                    .await;
                let d = report["data"][0].clone();
                (d["attempts"].as_array().unwrap().len() == attempts).then_some(d)
            })
            .await
        }
    };
    for (attempts, status, wait) in [(1, 429, 1_000), (2, 503, 3_000)] {
        let delivery = after(attempts).await;
        let attempt = &delivery["attempts"][attempts - 1];
        assert_eq!(attempt["httpStatus"], status);
        // The clock stood still during the attempt: due exactly `wait` after it.
        assert_eq!(
            iso_ms(&delivery["nextAttemptAt"]) - iso_ms(&attempt["at"]),
            wait,
            "Retry-After → {wait} ms: {delivery}"
        );
        if attempts == 1 {
            clock.advance(Duration::from_millis(wait as u64 - 1));
            receiver.expect_exactly(1, Duration::from_millis(300)).await;
            clock.advance(Duration::from_millis(1));
            receiver.wait_for(2, Duration::from_secs(2)).await;
        }
    }
}

async fn redirects_are_not_followed() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let elsewhere = TestReceiver::start().await;
    let location: &'static str = Box::leak(elsewhere.url.clone().into_boxed_str());
    receiver.script(&[Reply::WithHeader(302, "location", location)]);
    app.standard_setup(&receiver).await;
    app.post_twilio(&sms_params("SMredirect", "stay"), AUTH_TOKEN)
        .await;
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got[0].status, 302);
    elsewhere.expect_exactly(0, Duration::ZERO).await;
    let message_id = got[0].json()["messageId"].as_str().unwrap().to_owned();
    let report = eventually(Duration::from_secs(5), "delivered", || async {
        let report = app
            .get_json(&format!("/v1/messages/{message_id}/deliveries"))
            .await;
        (report["data"][0]["status"] == "delivered").then_some(report)
    })
    .await;
    assert_eq!(report["data"][0]["attempts"][0]["httpStatus"], 302);
}

/// A location with Twilio and a receiver started for a webhook of `InboundMessage`; the
/// receiver and the webhook as created (its `id` and `secret`).
pub(crate) async fn subscribed(app: &TestApp) -> (TestReceiver, Value) {
    let receiver = TestReceiver::start().await;
    location_with_twilio(app).await;
    let webhook = create_webhook(
        app,
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await;
    (receiver, webhook)
}

/// A location with Twilio, a webhook to `receiver` and a second one to `watcher` that
/// subscribes to `WebhookDisabled`; the first webhook's id.
pub(crate) async fn watched_webhook(
    app: &TestApp,
    receiver: &TestReceiver,
    watcher: &TestReceiver,
) -> String {
    location_with_twilio(app).await;
    let webhook = create_webhook(
        app,
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await;
    create_webhook(
        app,
        json!({ "url": watcher.url, "events": ["WebhookDisabled"] }),
    )
    .await;
    webhook["id"].as_str().unwrap().to_owned()
}

async fn gone_disables_the_webhook_tells_subscribers_and_the_backlog_resumes_on_enable() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let watcher = TestReceiver::start().await;
    let id = watched_webhook(&app, &receiver, &watcher).await;
    receiver.script(&[Reply::Status(410)]);

    app.post_twilio(&sms_params("SMgone1", "first"), AUTH_TOKEN)
        .await;
    let disabled = watcher.wait_for(1, Duration::from_secs(5)).await[0].json();
    assert_eq!(disabled["type"], "WebhookDisabled");
    assert_eq!(disabled["endpointId"], id.as_str());
    assert_eq!(disabled["reason"], "gone");
    assert_eq!(disabled["url"], receiver.url.as_str());
    let view = app.get_json(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(view["disabled"], true);
    assert_eq!(view["disabledReason"], "gone");

    // While disabled nothing is sent; messages queue up, held, not due.
    app.post_twilio(&sms_params("SMgone2", "second"), AUTH_TOKEN)
        .await;
    receiver.expect_exactly(1, QUIET).await;
    // Both messages and the WebhookDisabled event are stored.
    app.expect_events(3).await;
    // The queue depth is read at most once a second.
    eventually(Duration::from_secs(3), "two held, none due", || async {
        let metrics = get_metrics(&app.client, &app.address).await;
        [
            "switchboard_delivery_queue{state=\"held\"} 2",
            "switchboard_delivery_queue{state=\"due\"} 0",
        ]
        .iter()
        .all(|needle| metrics.contains(needle))
        .then_some(())
    })
    .await;
    let first_message = got_message_id(&receiver.received()[0]);
    let report = app
        .get_json(&format!("/v1/messages/{first_message}/deliveries"))
        .await;
    assert_eq!(report["data"][0]["status"], "pending");
    assert_eq!(report["data"][0]["held"], "webhook_disabled", "{report}");

    let r = app.webhook_action(&id, "enable").await;
    assert_eq!(r.status(), 200);
    let got = receiver.wait_for(3, Duration::from_secs(5)).await;
    let bodies: Vec<String> = got[1..]
        .iter()
        .map(|r| r.json()["body"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        bodies.contains(&"first".to_owned()) && bodies.contains(&"second".to_owned()),
        "{bodies:?}"
    );
    assert_eq!(
        got[1..]
            .iter()
            .find(|r| r.json()["body"] == "first")
            .unwrap()
            .header("webhook-id"),
        got[0].header("webhook-id")
    );
    watcher.expect_exactly(1, QUIET).await;
    let report = app
        .get_json(&format!("/v1/messages/{first_message}/deliveries"))
        .await;
    assert_eq!(report["data"][0]["status"], "delivered");
    assert!(report["data"][0].get("held").is_none(), "{report}");
    held_gauge_reads(&app, 0).await;
}

/// Wait until `/metrics` counts `held` deliveries held (the queue depth is read at most once
/// a second).
async fn held_gauge_reads(app: &TestApp, held: u64) {
    let line = format!("switchboard_delivery_queue{{state=\"held\"}} {held}");
    eventually(Duration::from_secs(3), "the held gauge", || async {
        get_metrics(&app.client, &app.address)
            .await
            .contains(&line)
            .then_some(())
    })
    .await;
}

fn got_message_id(delivery: &Received) -> String {
    delivery.json()["messageId"].as_str().unwrap().to_owned()
}

async fn breaker_opens_waits_probes_and_closes() {
    let app = spawn_app_with(|c| {
        c.breaker_threshold = 2;
        // Longer than the queue depth's reading lasts (1 s), so that /metrics can show it held.
        c.breaker_cooldown = Duration::from_millis(2000);
        c.retry_schedule = vec![Duration::from_millis(50); 8];
    })
    .await;
    let receiver = TestReceiver::start().await;
    receiver.script(&[Reply::Status(500), Reply::Status(500)]);
    location_with_twilio(&app).await;
    let webhook = create_webhook(
        &app,
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await;
    let id = webhook["id"].as_str().unwrap().to_owned();
    app.post_twilio(&sms_params("SMbreaker", "wait for me"), AUTH_TOKEN)
        .await;
    receiver.wait_for(2, Duration::from_secs(5)).await;

    // Open: the metrics say so, and nothing is attempted while it is.
    let metrics = eventually(
        Duration::from_secs(2),
        "breaker open in /metrics",
        || async {
            let text = get_metrics(&app.client, &app.address).await;
            text.contains(&format!(
                "switchboard_webhook_breaker_state{{webhook=\"{id}\"}} 1"
            ))
            .then_some(text)
        },
    )
    .await;
    assert!(
        metrics.contains("switchboard_delivery_attempts_total{outcome=\"retrying\"} 2"),
        "{metrics}"
    );
    // The breaker is saved before the metric shows it.
    let view = eventually(Duration::from_secs(2), "breakerOpenUntil saved", || async {
        let view = app.get_json(&format!("/v1/webhooks/{id}")).await;
        view["health"]["breakerOpenUntil"]
            .is_string()
            .then_some(view)
    })
    .await;
    assert_eq!(view["health"]["consecutiveFailures"], 2);
    // Its delivery is held, not due.
    let message_id = got_message_id(&receiver.received()[0]);
    let report = app
        .get_json(&format!("/v1/messages/{message_id}/deliveries"))
        .await;
    assert_eq!(report["data"][0]["held"], "breaker_open", "{report}");
    held_gauge_reads(&app, 1).await;

    // The probe, after the cooldown, succeeds and closes it.
    let got = receiver.wait_for(3, Duration::from_secs(5)).await;
    let gap = got[2].at - got[1].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "attempted {gap:?} after opening; the breaker should hold it"
    );
    assert_eq!(got[2].status, 200);
    eventually(Duration::from_secs(2), "breaker closed", || async {
        let text = get_metrics(&app.client, &app.address).await;
        text.contains(&format!(
            "switchboard_webhook_breaker_state{{webhook=\"{id}\"}} 0"
        ))
        .then_some(())
    })
    .await;
    let view = app.get_json(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(view["health"]["consecutiveFailures"], 0);
    assert!(view["health"]["breakerOpenUntil"].is_null());
    // Waiting burned no retries: three attempts in all.
    let message_id = got[0].json()["messageId"].as_str().unwrap().to_owned();
    let report = app
        .get_json(&format!("/v1/messages/{message_id}/deliveries"))
        .await;
    assert_eq!(report["data"][0]["attempts"].as_array().unwrap().len(), 3);
}

async fn failing_for_too_long_disables_and_reenabling_resumes() {
    let app = spawn_app_with(|c| {
        c.auto_disable_after = Duration::from_millis(500);
        c.breaker_threshold = 1000;
        c.retry_schedule = vec![Duration::from_millis(100); 50];
    })
    .await;
    let receiver = TestReceiver::start().await;
    let watcher = TestReceiver::start().await;
    location_with_twilio(&app).await;
    let webhook = create_webhook(
        &app,
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await;
    let id = webhook["id"].as_str().unwrap().to_owned();
    create_webhook(
        &app,
        json!({ "url": watcher.url, "events": ["WebhookDisabled"] }),
    )
    .await;
    receiver.fail_when("keep failing", 500, 1000);
    app.post_twilio(&sms_params("SMfailing", "keep failing"), AUTH_TOKEN)
        .await;

    let event = watcher.wait_for(1, Duration::from_secs(5)).await[0].json();
    assert_eq!(event["type"], "WebhookDisabled");
    assert_eq!(event["endpointId"], id.as_str());
    assert_eq!(event["reason"], "failing");
    assert!(event["failingSince"].is_string() && event["webhookId"].is_string());
    let attempts_when_disabled = receiver.received().len();
    assert!(attempts_when_disabled >= 3, "{attempts_when_disabled}");
    receiver.expect_exactly(attempts_when_disabled, QUIET).await;

    receiver.clear_failures();
    let r = app.webhook_action(&id, "enable").await;
    assert_eq!(r.status(), 200);
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["disabled"], false);
    let got = receiver
        .wait_for(attempts_when_disabled + 1, Duration::from_secs(5))
        .await;
    assert_eq!(got.last().unwrap().status, 200);
}

async fn filters_by_message_type_and_direction() {
    let app = spawn_app().await;
    let sms_only = TestReceiver::start().await;
    let calls_only = TestReceiver::start().await;
    let outbound_only = TestReceiver::start().await;
    location_with_twilio(&app).await;
    create_webhook(
        &app,
        json!({ "url": sms_only.url, "events": ["InboundMessage"], "messageTypes": ["SMS"] }),
    )
    .await;
    create_webhook(&app, json!({ "url": calls_only.url, "events": ["InboundMessage", "OutboundMessage"], "messageTypes": ["CALL"] })).await;
    create_webhook(&app, json!({ "url": outbound_only.url, "events": ["InboundMessage", "OutboundMessage"], "direction": "outbound" })).await;
    app.post_twilio(&sms_params("SMfilter", "text"), AUTH_TOKEN)
        .await;
    sms_only.expect_exactly(1, QUIET).await;
    calls_only.expect_exactly(0, Duration::ZERO).await;
    outbound_only.expect_exactly(0, Duration::ZERO).await;
    // An outbound call: only the CALL and the outbound webhooks.
    let params = [
        ("CallSid", sid_str("CAfilter")),
        ("AccountSid", ACCOUNT_SID),
        ("From", BUSINESS_NUMBER),
        ("To", CUSTOMER_NUMBER),
        ("Direction", "outbound-api"),
        ("CallStatus", "completed"),
        ("CallDuration", "9"),
    ];
    let r = app
        .post_twilio_path(
            "/conversations/providers/twilio/voice/status",
            &params,
            AUTH_TOKEN,
        )
        .await;
    assert_eq!(r.status(), 200);
    calls_only.expect_exactly(1, QUIET).await;
    outbound_only.expect_exactly(1, Duration::ZERO).await;
    sms_only.expect_exactly(1, Duration::ZERO).await;
    // Bad filters are refused.
    for (body, code) in [
        (
            json!({ "url": sms_only.url, "events": ["InboundMessage"], "messageTypes": ["Pigeon"] }),
            "invalid_message_types",
        ),
        (
            json!({ "url": sms_only.url, "events": ["InboundMessage"], "direction": "sideways" }),
            "invalid_direction",
        ),
        (
            json!({ "url": sms_only.url, "events": ["InboundMessage"], "ordering": "random" }),
            "invalid_ordering",
        ),
        (
            json!({ "url": sms_only.url, "events": ["InboundMessage"], "maxInFlight": 0 }),
            "invalid_max_in_flight",
        ),
        (
            json!({ "url": sms_only.url, "events": ["InboundMessage"], "retrySchedule": ["soon"] }),
            "invalid_retry_schedule",
        ),
    ] {
        let r = app
            .admin_send(reqwest::Method::POST, "/v1/webhooks", body)
            .await;
        assert_eq!(r.status(), 422);
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"]["code"], code);
        if code == "invalid_retry_schedule" {
            let message = error["error"]["message"].as_str().unwrap();
            assert!(message.contains("`soon` is not a duration"), "{message}");
            assert!(message.contains("such as 500ms, 10s, 2m, 1h"), "{message}");
        }
    }
}

/// The standard location and Twilio number, and a webhook ordered by conversation.
async fn subscribe_ordered(app: &TestApp, receiver: &TestReceiver) {
    location_with_twilio(app).await;
    create_webhook(
        app,
        json!({ "url": receiver.url, "events": ["InboundMessage"], "ordering": "conversation" }),
    )
    .await;
}

async fn ordered_conversation_waits_for_its_failing_head_while_others_flow() {
    let app = spawn_app_with(|c| c.retry_schedule = vec![Duration::from_millis(300); 5]).await;
    let receiver = TestReceiver::start().await;
    subscribe_ordered(&app, &receiver).await;
    receiver.fail_when("A-one", 500, 2);
    let (a, b) = ("+12125550101", "+12125550102");
    for (sid, body, from) in [
        ("SMa1", "A-one", a),
        ("SMa2", "A-two", a),
        ("SMb1", "B-one", b),
        ("SMa3", "A-three", a),
        ("SMb2", "B-two", b),
    ] {
        assert_eq!(
            app.post_twilio(&sms_from(sid, body, from), AUTH_TOKEN)
                .await
                .status(),
            200
        );
    }
    let got = receiver.wait_for(7, Duration::from_secs(10)).await;
    receiver.expect_exactly(7, QUIET).await;
    let order: Vec<(String, u16)> = got
        .iter()
        .map(|r| (r.json()["body"].as_str().unwrap().to_owned(), r.status))
        .collect();
    let position = |body: &str, status: u16| {
        order
            .iter()
            .position(|(b, s)| b == body && *s == status)
            .unwrap_or_else(|| panic!("{body} {status} in {order:?}"))
    };
    // A's head failed twice, then succeeded; A's later events came after it, in order.
    let a1_ok = position("A-one", 200);
    assert!(
        position("A-two", 200) > a1_ok && position("A-three", 200) > position("A-two", 200),
        "{order:?}"
    );
    // B was not held back by A's failing head.
    assert!(
        position("B-one", 200) < a1_ok && position("B-two", 200) < a1_ok,
        "{order:?}"
    );
    assert_eq!(order.iter().filter(|(b, _)| b == "A-one").count(), 3);
}

async fn max_in_flight_holds_under_a_slow_subscriber_and_fresh_traffic_still_flows() {
    let app = spawn_app().await;
    let slow = TestReceiver::start().await;
    let fast = TestReceiver::start().await;
    slow.slow(Duration::from_millis(250));
    location_with_twilio(&app).await;
    create_webhook(
        &app,
        json!({ "url": slow.url, "events": ["InboundMessage"], "maxInFlight": 2 }),
    )
    .await;
    create_webhook(
        &app,
        json!({ "url": fast.url, "events": ["InboundMessage"] }),
    )
    .await;
    let started = Instant::now();
    for i in 0..8 {
        let sid = format!("SMslow{i}");
        app.post_twilio(&sms_params(&sid, "slow lane"), AUTH_TOKEN)
            .await;
    }
    // The fast subscriber is not held up by the slow one.
    fast.wait_for(8, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "fast lane took {:?}",
        started.elapsed()
    );
    slow.wait_for(8, Duration::from_secs(10)).await;
    assert_eq!(
        slow.max_concurrent(),
        2,
        "maxInFlight 2 must be reached and never exceeded"
    );
}

async fn max_per_second_spreads_deliveries() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    location_with_twilio(&app).await;
    create_webhook(
        &app,
        json!({ "url": receiver.url, "events": ["InboundMessage"], "maxPerSecond": 5 }),
    )
    .await;
    for i in 0..10 {
        let sid = format!("SMrate{i}");
        app.post_twilio(&sms_params(&sid, "rate"), AUTH_TOKEN).await;
    }
    let got = receiver.wait_for(10, Duration::from_secs(10)).await;
    let spread = got[9].at - got[0].at;
    // 5 per second with a burst of 5: the tenth goes at least ~1 s after the first.
    assert!(
        spread >= Duration::from_millis(900),
        "10 deliveries within {spread:?}"
    );
}

/// Replay a webhook's deliveries since 2000 with this status filter; the 202's answer.
async fn replay(app: &TestApp, id: &str, status: &str) -> Value {
    let r = app
        .admin_send(
            reqwest::Method::POST,
            &format!("/v1/webhooks/{id}/replay"),
            json!({ "since": "2000-01-01T00:00:00Z", "status": status }),
        )
        .await;
    assert_eq!(r.status(), 202);
    r.json().await.unwrap()
}

async fn retry_and_replay_keep_the_webhook_id_and_body() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    location_with_twilio(&app).await;
    let webhook = create_webhook(
        &app,
        json!({ "url": receiver.url, "events": ["InboundMessage"], "retrySchedule": [] }),
    )
    .await;
    let id = webhook["id"].as_str().unwrap().to_owned();
    receiver.fail_when("replay me", 500, 1);
    app.post_twilio(&sms_params("SMok", "deliver me"), AUTH_TOKEN)
        .await;
    app.post_twilio(&sms_params("SMfail", "replay me"), AUTH_TOKEN)
        .await;
    let first = receiver.expect_exactly(2, QUIET).await;
    let ok = first.iter().find(|r| r.status == 200).unwrap().clone();
    let failed = first.iter().find(|r| r.status == 500).unwrap().clone();
    let message_id = ok.json()["messageId"].as_str().unwrap().to_owned();
    let report = app
        .get_json(&format!("/v1/messages/{message_id}/deliveries"))
        .await;
    let delivery_id = report["data"][0]["id"].as_str().unwrap().to_owned();

    // Resend one delivery now.
    let r = app
        .admin_send(
            reqwest::Method::POST,
            &format!("/v1/deliveries/{delivery_id}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let again = receiver.wait_for(3, Duration::from_secs(5)).await[2].clone();
    assert_eq!(again.header("webhook-id"), ok.header("webhook-id"));
    assert_eq!(again.body, ok.body);
    let missing = app
        .admin_send(
            reqwest::Method::POST,
            "/v1/deliveries/AAAAAAAAAAAAAAAAAAAA/retry",
            json!({}),
        )
        .await;
    assert_eq!(missing.status(), 404);

    // Replay the failed ones (schedule empty: it failed for good after one attempt).
    let failed_message = failed.json()["messageId"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(5), "failed", || async {
        let r = app
            .get_json(&format!("/v1/messages/{failed_message}/deliveries"))
            .await;
        (r["data"][0]["status"] == "failed").then_some(())
    })
    .await;
    assert_eq!(replay(&app, &id, "failed").await["replayed"], 1);
    let replayed = receiver.wait_for(4, Duration::from_secs(5)).await[3].clone();
    assert_eq!(replayed.header("webhook-id"), failed.header("webhook-id"));
    assert_eq!(replayed.body, failed.body);
    assert_eq!(replayed.status, 200);
    // Both finished (a delivery still in flight is not replayed).
    for message in [&message_id, &failed_message] {
        eventually(Duration::from_secs(5), "delivered", || async {
            let r = app
                .get_json(&format!("/v1/messages/{message}/deliveries"))
                .await;
            (r["data"][0]["status"] == "delivered").then_some(())
        })
        .await;
    }

    // Replay all: both, again, same ids.
    assert_eq!(replay(&app, &id, "all").await["replayed"], 2);
    let all = receiver.wait_for(6, Duration::from_secs(5)).await;
    let mut ids: Vec<&str> = all[4..].iter().map(|r| r.header("webhook-id")).collect();
    ids.sort();
    let mut expected = vec![ok.header("webhook-id"), failed.header("webhook-id")];
    expected.sort();
    assert_eq!(ids, expected);
    // At once again: each of the two is either still on its way (left alone, counted as
    // pending) or delivered by now (replayed), never both and never neither.
    let again = replay(&app, &id, "all").await;
    assert_eq!(
        again["replayed"].as_u64().unwrap() + again["alreadyPending"].as_u64().unwrap(),
        2,
        "{again}"
    );
    let bad = app
        .admin_send(
            reqwest::Method::POST,
            &format!("/v1/webhooks/{id}/replay"),
            json!({ "since": "yesterday" }),
        )
        .await;
    assert_eq!(bad.status(), 422);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_time");
}

/// Rotate a webhook's secret with this overlap; the answer.
pub(crate) async fn rotate(app: &TestApp, id: &str, overlap_seconds: u64) -> Value {
    let r = app
        .admin_send(
            reqwest::Method::POST,
            &format!("/v1/webhooks/{id}/rotate-secret"),
            json!({ "overlapSeconds": overlap_seconds }),
        )
        .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn rotation_signs_with_both_secrets_during_the_overlap() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    location_with_twilio(&app).await;
    let webhook = create_webhook(
        &app,
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await;
    let id = webhook["id"].as_str().unwrap().to_owned();
    let old = webhook["secret"].as_str().unwrap().to_owned();
    let rotated = rotate(&app, &id, 3600).await;
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(old, new);
    assert!(rotated["previousSecretValidUntil"].is_string());

    app.post_twilio(&sms_params("SMrotate", "both"), AUTH_TOKEN)
        .await;
    let delivery = receiver.wait_for(1, Duration::from_secs(5)).await[0].clone();
    let signatures: Vec<&str> = delivery.header("webhook-signature").split(' ').collect();
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    for secret in [&old, &new] {
        assert!(
            signed_with(&delivery, secret),
            "verifies with either secret"
        );
        match verify_with_reference_library(secret, &delivery) {
            Some(result) => result.expect("the reference library verifies with either secret"),
            None => skip(
                "the Standard Webhooks reference library check needs python3 with standardwebhooks (pip install standardwebhooks)",
            ),
        }
    }

    // A second rotation during the overlap: the first secret keeps its own end, so three
    // secrets sign, each of which verifies.
    let third = rotate(&app, &id, 600).await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let secrets = app.get_json(&format!("/v1/webhooks/{id}/secret")).await;
    assert_eq!(secrets["secret"], third.as_str());
    assert_eq!(secrets["previousSecret"], new.as_str());
    let previous: Vec<&str> = secrets["previousSecrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["secret"].as_str().unwrap())
        .collect();
    assert_eq!(previous, [new.as_str(), old.as_str()], "{secrets}");
    app.post_twilio(&sms_params("SMrotate3", "three"), AUTH_TOKEN)
        .await;
    let delivery = receiver.wait_for(2, Duration::from_secs(5)).await[1].clone();
    assert_eq!(delivery.header("webhook-signature").split(' ').count(), 3);
    for secret in [&old, &new, &third] {
        assert!(
            signed_with(&delivery, secret),
            "each secret in its overlap verifies"
        );
    }

    // A rotation without overlap (a leaked secret) ends every earlier secret at once: only
    // the new one signs.
    let newest = rotate(&app, &id, 0).await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post_twilio(&sms_params("SMrotate2", "one"), AUTH_TOKEN)
        .await;
    let delivery = receiver.wait_for(3, Duration::from_secs(5)).await[2].clone();
    assert_eq!(delivery.header("webhook-signature").split(' ').count(), 1);
    assert!(signed_with(&delivery, &newest));
}

async fn highlevels_sdk_verifies_our_deliveries() {
    let app = spawn_app_with(|c| c.app_id = Some("sbapp1".into())).await;
    let receiver = TestReceiver::start().await;
    let legacy = TestReceiver::start().await;
    location_with_twilio(&app).await;
    create_webhook(
        &app,
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await;
    let webhook = create_webhook(
        &app,
        json!({ "url": legacy.url, "events": ["InboundMessage"], "legacySignature": true }),
    )
    .await;
    assert_eq!(webhook["legacySignature"], true);
    app.post_twilio(
        &sms_params("SMsdk", "verify me, gr\u{e0}cies / <ok>"),
        AUTH_TOKEN,
    )
    .await;
    let delivery = receiver.wait_for(1, Duration::from_secs(5)).await[0].clone();
    let legacy_delivery = legacy.wait_for(1, Duration::from_secs(5)).await[0].clone();
    assert_eq!(delivery.json()["appId"], "sbapp1");
    assert!(delivery.headers.get("x-wh-signature").is_none());
    let keys = app.get_json("/v1/signing-keys").await;
    let pem = keys["ed25519"].as_str().unwrap().to_owned();
    let rsa_pem = keys["rsa"].as_str().unwrap().to_owned();
    assert!(rsa_pem.starts_with("-----BEGIN PUBLIC KEY-----"));

    // Our own check of the legacy signature, with the rsa crate.
    {
        use base64::Engine;
        use rsa::pkcs8::DecodePublicKey;
        use rsa::signature::Verifier;
        let public = rsa::RsaPublicKey::from_public_key_pem(&rsa_pem).unwrap();
        let verifier = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(legacy_delivery.header("x-wh-signature"))
            .unwrap();
        let signature = rsa::pkcs1v15::Signature::try_from(raw.as_slice()).unwrap();
        assert!(verifier.verify(&legacy_delivery.body, &signature).is_ok());
    }

    match verify_with_highlevel_sdk(&pem, None, "sbapp1-client", &delivery) {
        Some(result) => {
            result.expect("HighLevel's SDK verifies the delivery with our key");
            verify_with_highlevel_sdk(&pem, Some(&rsa_pem), "sbapp1-client", &legacy_delivery)
                .unwrap()
                .expect("HighLevel's SDK verifies the legacy RSA signature with our key");
            let mut forged = delivery.clone();
            forged.body = bytes::Bytes::from(
                String::from_utf8(delivery.body.to_vec()).unwrap().replace("verify me", "verify us"),
            );
            assert!(verify_with_highlevel_sdk(&pem, None, "sbapp1-client", &forged).unwrap().is_err());
        }
        None => skip("HighLevel's SDK check needs node and the SDK (npm ci --prefix crates/switchboard/tests/verifiers)"),
    }
}

async fn private_targets_are_refused_at_creation_unless_allowed() {
    let mut overrides = std::collections::HashMap::new();
    overrides.insert(
        "hooks.internal".to_owned(),
        vec!["10.0.0.1".parse().unwrap()],
    );
    overrides.insert(
        "loopback.internal".to_owned(),
        vec!["127.0.0.1".parse().unwrap()],
    );
    let app = spawn_app_with(move |c| {
        c.allow_private_targets = false;
        c.dns_overrides = overrides;
    })
    .await;
    for (url, needle) in [
        ("http://127.0.0.1/hook", "127.0.0.1"),
        ("http://[::ffff:127.0.0.1]/hook", "127.0.0.1"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://hooks.internal/hook", "10.0.0.1"),
    ] {
        let r = app
            .admin_send(
                reqwest::Method::POST,
                "/v1/webhooks",
                json!({ "url": url, "events": ["InboundMessage"] }),
            )
            .await;
        assert_eq!(r.status(), 422, "{url}");
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"]["code"], "forbidden_target");
        assert!(
            error["error"]["message"].as_str().unwrap().contains(needle),
            "{error}"
        );
    }
    // A webhook's allowlist lifts it for its networks, and the delivery connects.
    let receiver = TestReceiver::start().await;
    location_with_twilio(&app).await;
    let port = receiver.url.rsplit(':').next().unwrap().to_owned();
    let url = format!("http://loopback.internal:{port}");
    create_webhook(
        &app,
        json!({ "url": url, "events": ["InboundMessage"], "allowedNetworks": ["127.0.0.0/8"] }),
    )
    .await;
    app.post_twilio(&sms_params("SMallowed", "inside"), AUTH_TOKEN)
        .await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
}

async fn metrics_count_outcomes_and_queue_depth() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    receiver.script(&[Reply::Status(500)]);
    app.standard_setup(&receiver).await;
    app.post_twilio(&sms_params("SMmetrics", "count me"), AUTH_TOKEN)
        .await;
    receiver.wait_for(2, Duration::from_secs(5)).await;
    let text = eventually(Duration::from_secs(5), "two attempts counted", || async {
        let text = get_metrics(&app.client, &app.address).await;
        // The queue depth is read at most once a second: wait for a reading after the
        // delivery too.
        (text.contains("switchboard_delivery_attempts_total{outcome=\"delivered\"} 1")
            && text.contains("switchboard_delivery_queue{state=\"scheduled\"} 0")
            && text.contains("switchboard_delivery_queue{state=\"due\"} 0"))
        .then_some(text)
    })
    .await;
    for needle in [
        "switchboard_delivery_attempts_total{outcome=\"retrying\"} 1",
        "switchboard_delivery_attempt_duration_seconds_count 2",
        "switchboard_delivery_queue{state=\"due\"} 0",
        "switchboard_delivery_queue{state=\"scheduled\"} 0",
        "switchboard_provider_requests_total 1",
        "# TYPE switchboard_delivery_attempt_duration_seconds histogram",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
}

async fn retention_prunes_old_events_and_attempts() {
    let app = spawn_app_with(|c| c.retention = Duration::from_millis(300)).await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    app.post_twilio(&sms_params("SMold", "forget me"), AUTH_TOKEN)
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    let message_id = got[0].json()["messageId"].as_str().unwrap().to_owned();
    assert_eq!(
        app.admin_get(&format!("/v1/messages/{message_id}"))
            .await
            .status(),
        200
    );
    eventually(Duration::from_secs(5), "the old event pruned", || async {
        (app.admin_get(&format!("/v1/messages/{message_id}"))
            .await
            .status()
            == 404)
            .then_some(())
    })
    .await;
    let feed = app.get_json("/v1/events").await;
    assert_eq!(feed["data"], json!([]));
    // The provider id is still known: a late Twilio retry is not a new message.
    app.post_twilio(&sms_params("SMold", "forget me"), AUTH_TOKEN)
        .await;
    receiver.expect_exactly(1, QUIET).await;
    app.expect_events(0).await;
}

async fn events_feed_pages_in_order_with_a_stable_cursor() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    for i in 0..5 {
        let sid = format!("SMfeed{i}");
        let body = format!("feed {i}");
        app.post_twilio(&sms_params(&sid, &body), AUTH_TOKEN).await;
    }
    let page1 = app.get_json("/v1/events?limit=3").await;
    assert_eq!(page1["data"].as_array().unwrap().len(), 3);
    let next = page1["next"].as_str().unwrap().to_owned();
    let page2 = app
        .get_json(&format!("/v1/events?after={next}&limit=3"))
        .await;
    let bodies: Vec<String> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["data"].as_array().unwrap())
        .map(|e| e["event"]["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        bodies,
        (0..5).map(|i| format!("feed {i}")).collect::<Vec<_>>()
    );
    let end = app
        .get_json(&format!(
            "/v1/events?after={}",
            page2["next"].as_str().unwrap()
        ))
        .await;
    assert_eq!(end["data"], json!([]));
    assert_eq!(end["next"], page2["next"]);
    assert_eq!(app.admin_get("/v1/events?after=banana").await.status(), 400);
    assert_eq!(app.admin_get("/v1/events?limit=0").await.status(), 400);
}

async fn a_subscriber_that_does_not_answer_in_time_is_retried_as_a_timeout() {
    let app = spawn_app_with(|c| c.delivery_timeout = Duration::from_millis(300)).await;
    let receiver = TestReceiver::start().await;
    receiver.script(&[Reply::Hang]);
    app.standard_setup(&receiver).await;
    app.post_twilio(&sms_params("SMtimeout", "are you there"), AUTH_TOKEN)
        .await;
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got[1].header("webhook-id"), got[0].header("webhook-id"));
    let message_id = got[0].json()["messageId"].as_str().unwrap().to_owned();
    let delivery = eventually(
        Duration::from_secs(5),
        "delivered after a timeout",
        || async {
            let report = app
                .get_json(&format!("/v1/messages/{message_id}/deliveries"))
                .await;
            (report["data"][0]["status"] == "delivered").then(|| report["data"][0].clone())
        },
    )
    .await;
    let first = &delivery["attempts"][0];
    assert_eq!(first["errorKind"], "timeout", "{delivery}");
    assert!(first.get("httpStatus").is_none());
    assert!(first["durationMs"].as_i64().unwrap() >= 290);
    assert_eq!(delivery["attempts"][1]["httpStatus"], 200);
}

async fn limits_that_would_break_the_dispatcher_are_refused() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    location_with_twilio(&app).await;
    let webhook = create_webhook(
        &app,
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await;
    let id = webhook["id"].as_str().unwrap().to_owned();
    for (body, code) in [
        (json!({ "maxPerSecond": 1e-20 }), "invalid_max_per_second"),
        (json!({ "maxPerSecond": 1e9 }), "invalid_max_per_second"),
        (
            json!({ "retrySchedule": ["30d"] }),
            "invalid_retry_schedule",
        ),
        // Fields without a "none" refuse null instead of ignoring it.
        (json!({ "events": null }), "invalid_body"),
        (json!({ "url": null }), "invalid_body"),
        (json!({ "ordering": null }), "invalid_body"),
        (json!({ "legacySignature": null }), "invalid_body"),
    ] {
        let r = app
            .admin_send(
                reqwest::Method::PATCH,
                &format!("/v1/webhooks/{id}"),
                body.clone(),
            )
            .await;
        assert_eq!(r.status(), 422, "{body}");
        let error = r.json::<Value>().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{error}");
        if code == "invalid_body" {
            // The message names the field.
            let field = body.as_object().unwrap().keys().next().unwrap();
            assert!(
                error["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(field.as_str()),
                "{error}"
            );
        }
    }
    let r = app
        .admin_send(
            reqwest::Method::POST,
            &format!("/v1/webhooks/{id}/rotate-secret"),
            json!({ "overlapSeconds": 300_000_000_000u64 }),
        )
        .await;
    assert_eq!(r.status(), 422);
    // Nothing was changed, and the webhook still reads back.
    let view = app.get_json(&format!("/v1/webhooks/{id}")).await;
    assert!(view["maxPerSecond"].is_null() && view["retrySchedule"].is_null());
    app.post_twilio(&sms_params("SMstill", "still flowing"), AUTH_TOKEN)
        .await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
}

async fn a_patch_keeps_a_rotated_secret_and_a_deleted_webhooks_delivery_is_not_retried() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    location_with_twilio(&app).await;
    let webhook = create_webhook(
        &app,
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await;
    let id = webhook["id"].as_str().unwrap().to_owned();
    let rotated: Value = app
        .admin_send(
            reqwest::Method::POST,
            &format!("/v1/webhooks/{id}/rotate-secret"),
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let r = app
        .admin_send(
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            json!({ "maxInFlight": 3 }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let secret = app.get_json(&format!("/v1/webhooks/{id}/secret")).await;
    assert_eq!(secret["secret"], rotated["secret"]);
    assert_eq!(secret["previousSecret"], webhook["secret"]);

    app.post_twilio(&sms_params("SMgoneaway", "then deleted"), AUTH_TOKEN)
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    let message_id = got[0].json()["messageId"].as_str().unwrap().to_owned();
    let delivery_id = eventually(Duration::from_secs(5), "delivered", || async {
        let r = app
            .get_json(&format!("/v1/messages/{message_id}/deliveries"))
            .await;
        (r["data"][0]["status"] == "delivered")
            .then(|| r["data"][0]["id"].as_str().unwrap().to_owned())
    })
    .await;
    let r = app
        .admin_send(
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{id}"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 204);
    let r = app
        .admin_send(
            reqwest::Method::POST,
            &format!("/v1/deliveries/{delivery_id}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 404);
    receiver.expect_exactly(1, QUIET).await;
}

/// Messages of a conversation that arrive together (one group commit) still go out one at a
/// time in the order of the event stream: each is sent only after the one before it was
/// answered.
async fn ordered_conversation_posted_all_at_once_goes_out_one_at_a_time_in_stream_order() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    subscribe_ordered(&app, &receiver).await;
    let answer_after = Duration::from_millis(30);
    receiver.slow(answer_after);
    let senders = ["+12125550301", "+12125550302", "+12125550303"];
    let requests: Vec<Vec<(String, String)>> = (0..24)
        .map(|i| {
            let (sid, body) = (format!("SMordered{i}"), format!("ordered {i}"));
            owned_params(sms_from(&sid, &body, senders[i % 3]))
        })
        .collect();
    for status in app.post_twilio_concurrently(requests, AUTH_TOKEN).await {
        assert_eq!(status, 200);
    }
    let got = receiver.wait_for(24, Duration::from_secs(20)).await;
    receiver.expect_exactly(24, QUIET).await;
    let feed = app.get_json("/v1/events?limit=100").await;
    for sender in senders {
        let in_stream: Vec<String> = feed["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"]["from"] == sender)
            .map(|e| e["event"]["messageId"].as_str().unwrap().to_owned())
            .collect();
        let arrived: Vec<&Received> = got.iter().filter(|r| r.json()["from"] == sender).collect();
        let arrived_ids: Vec<String> = arrived
            .iter()
            .map(|r| r.json()["messageId"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            arrived_ids, in_stream,
            "{sender}: delivered in stream order"
        );
        for pair in arrived.windows(2) {
            let gap = pair[1].at.duration_since(pair[0].at);
            assert!(
                gap >= answer_after - Duration::from_millis(5),
                "{sender}: the next delivery came {gap:?} after the one before, before it was answered"
            );
        }
    }
}

crate::both_stores!(
    limits_that_would_break_the_dispatcher_are_refused,
    a_patch_keeps_a_rotated_secret_and_a_deleted_webhooks_delivery_is_not_retried,
    default_schedule_puts_the_first_retry_five_seconds_out_within_jitter,
    a_webhooks_own_schedule_and_retry_after,
    redirects_are_not_followed,
    gone_disables_the_webhook_tells_subscribers_and_the_backlog_resumes_on_enable,
    breaker_opens_waits_probes_and_closes,
    failing_for_too_long_disables_and_reenabling_resumes,
    filters_by_message_type_and_direction,
    ordered_conversation_waits_for_its_failing_head_while_others_flow,
    ordered_conversation_posted_all_at_once_goes_out_one_at_a_time_in_stream_order,
    max_in_flight_holds_under_a_slow_subscriber_and_fresh_traffic_still_flows,
    max_per_second_spreads_deliveries,
    retry_and_replay_keep_the_webhook_id_and_body,
    rotation_signs_with_both_secrets_during_the_overlap,
    highlevels_sdk_verifies_our_deliveries,
    private_targets_are_refused_at_creation_unless_allowed,
    metrics_count_outcomes_and_queue_depth,
    retention_prunes_old_events_and_attempts,
    events_feed_pages_in_order_with_a_stable_cursor,
    a_subscriber_that_does_not_answer_in_time_is_retried_as_a_timeout,
);
