//! Documented behaviours that had no test of their own: a manual disable and its `"manual"`
//! reason, and a circuit breaker that opens again when its probe fails.

use std::time::Duration;

use crate::engine::{subscribed, watched_webhook};
use crate::helpers::*;

/// `POST /v1/webhooks/{id}/disable`: a `WebhookDisabled` event with reason `manual`, nothing
/// sent while disabled, and the backlog sent on `enable`.
async fn a_manual_disable_says_manual_and_enable_sends_the_backlog() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let watcher = TestReceiver::start().await;
    let id = watched_webhook(&app, &receiver, &watcher).await;
    let r = app.webhook_action(&id, "disable").await;
    assert!(r.status().is_success(), "{}", r.status());
    let disabled = watcher.wait_for(1, Duration::from_secs(5)).await[0].json();
    assert_eq!(disabled["type"], "WebhookDisabled");
    assert_eq!(disabled["endpointId"], id.as_str());
    assert_eq!(disabled["reason"], "manual");
    assert!(disabled.get("failingSince").is_none(), "{disabled}");

    app.post_twilio(&sms_params("SMmanual", "held"), AUTH_TOKEN)
        .await;
    receiver.expect_exactly(0, Duration::from_millis(800)).await;
    let events = app.get_json("/v1/events?limit=10").await;
    assert_eq!(events["data"].as_array().unwrap().len(), 2, "{events}");
    let r = app.webhook_action(&id, "enable").await;
    assert!(r.status().is_success(), "{}", r.status());
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].json()["body"], "held");
}

/// After `breaker_threshold` failures the breaker opens; a probe after the cooldown that fails
/// opens it again for another cooldown, and the next probe that succeeds closes it.
async fn a_failed_probe_opens_the_breaker_again() {
    let app = spawn_app_with(|c| {
        c.breaker_threshold = 2;
        c.breaker_cooldown = Duration::from_millis(1000);
        c.retry_schedule = vec![Duration::from_millis(50); 8];
    })
    .await;
    let (receiver, _) = subscribed(&app).await;
    receiver.script(&[Reply::Status(500), Reply::Status(500), Reply::Status(500)]);
    app.post_twilio(&sms_params("SMprobe-fails", "wait"), AUTH_TOKEN)
        .await;
    let got = receiver.wait_for(4, Duration::from_secs(10)).await;
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    // Two failures open it; the probe (third) comes after the cooldown and fails; the fourth
    // attempt waits a whole cooldown again instead of the 50 ms retry delay.
    assert!(gaps[0] < Duration::from_millis(900), "{gaps:?}");
    assert!(
        gaps[1] >= Duration::from_millis(900),
        "the first probe: {gaps:?}"
    );
    assert!(
        gaps[2] >= Duration::from_millis(900),
        "the breaker did not open again: {gaps:?}"
    );
    assert_eq!(got[3].status, 200);
    receiver.expect_exactly(4, Duration::from_millis(800)).await;
}

/// The default schedule beyond its first delay: a delivery that keeps failing is tried again
/// 5 s after its first attempt, then 30 s after its second (no jitter here). The server runs
/// on a `ManualClock`, so the test moves time rather than sleeping through it, and it can say
/// that the retry did not come a millisecond early.
async fn the_default_schedule_waits_5_s_then_30_s() {
    let defaults = switchboard::Config::defaults();
    assert_eq!(
        defaults.retry_schedule[..3],
        [
            Duration::from_secs(5),
            Duration::from_secs(30),
            Duration::from_secs(120)
        ]
    );
    let (app, clock) = spawn_app_on_manual_clock(|c| {
        c.retry_schedule = defaults.retry_schedule.clone();
        c.retry_jitter = 0.0;
    })
    .await;
    let (receiver, _) = subscribed(&app).await;
    receiver.fail_when("schedule", 500, 10);
    app.post_twilio(&sms_params("SMschedule", "schedule"), AUTH_TOKEN)
        .await;
    let first = receiver.wait_for(1, Duration::from_secs(5)).await[0].clone();
    let message_id = first.json()["messageId"].as_str().unwrap().to_owned();
    let path = format!("/v1/messages/{message_id}/deliveries");
    let after = |attempts: usize| {
        let (app, path) = (&app, &path);
        async move {
            eventually(Duration::from_secs(10), "the attempt recorded", || async {
                let report = app.get_json(path).await;
                let delivery = report["data"][0].clone();
                (delivery["attempts"].as_array().unwrap().len() == attempts).then_some(delivery)
            })
            .await
        }
    };
    for (attempts, delay) in [(1, 5_000), (2, 30_000)] {
        let delivery = after(attempts).await;
        let last = &delivery["attempts"][attempts - 1];
        let wait = iso_ms(&delivery["nextAttemptAt"]) - iso_ms(&last["at"]);
        assert_eq!(wait, delay, "retry after attempt {attempts}: {delivery}");
        // A millisecond early: not sent, though the dispatcher polls every 50 ms.
        clock.advance(Duration::from_millis(delay as u64 - 1));
        receiver
            .expect_exactly(attempts, Duration::from_millis(300))
            .await;
        clock.advance(Duration::from_millis(1));
        receiver
            .wait_for(attempts + 1, Duration::from_secs(2))
            .await;
    }
    let three = after(3).await;
    assert_eq!(
        iso_ms(&three["nextAttemptAt"]) - iso_ms(&three["attempts"][2]["at"]),
        120_000
    );
}

crate::both_stores!(
    a_manual_disable_says_manual_and_enable_sends_the_backlog,
    a_failed_probe_opens_the_breaker_again,
    the_default_schedule_waits_5_s_then_30_s,
);
