//! Fresh deliveries go before retries on the same webhook, so that retries cannot starve fresh
//! traffic (docs/delivery.md, "Limits per webhook"). A planted bug that served retries first
//! once passed the whole suite.

use std::time::Duration;

use serde_json::json;

use crate::engine::{create_webhook, location_with_twilio};
use crate::helpers::*;

/// One slot (`maxInFlight: 1`) and a subscriber that takes 500 ms to answer. A's first attempt
/// fails and its retry falls due (200 ms later) while B holds the slot; C arrives after the
/// retry fell due. When B's slot frees, the fresh C goes before the due retry of A.
async fn a_fresh_delivery_goes_before_a_due_retry() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    location_with_twilio(&app).await;
    create_webhook(
        &app,
        json!({ "url": receiver.url, "events": ["InboundMessage"], "maxInFlight": 1 }),
    )
    .await;
    receiver.slow(Duration::from_millis(500));
    receiver.script(&[Reply::Status(500)]);
    let post = |sid: &'static str, body: &'static str| {
        let app = &app;
        async move {
            let r = app.post_twilio(&sms_params(sid, body), AUTH_TOKEN).await;
            assert_eq!(r.status(), 200);
        }
    };
    post("SMfairness-a", "A").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    post("SMfairness-b", "B").await;
    // A's retry is due 200 ms after its first attempt failed (at ~500 ms); C comes after.
    tokio::time::sleep(Duration::from_millis(700)).await;
    post("SMfairness-c", "C").await;
    let got = receiver.wait_for(4, Duration::from_secs(10)).await;
    let order: Vec<String> = got
        .iter()
        .map(|r| r.json()["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        order,
        ["A", "B", "C", "A"],
        "fresh C must go before A's retry"
    );
    receiver.expect_exactly(4, Duration::from_millis(800)).await;
}

crate::both_stores!(a_fresh_delivery_goes_before_a_due_retry);
