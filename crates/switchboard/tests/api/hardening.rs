//! The second security review's findings, each tried as an outsider would: what one request or
//! one client address can cost the server, and what it can learn.

use std::time::{Duration, Instant};

use switchboard::channels::twilio::INBOUND_PATH as TWILIO_INBOUND_PATH;

use crate::helpers::*;

/// The median time the server takes to answer `body` posted to the Twilio inbound route.
async fn median_answer(app: &TestApp, body: &str, runs: usize) -> (Duration, u16) {
    let mut times = Vec::new();
    let mut status = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let r = app
            .client
            .post(app.url(TWILIO_INBOUND_PATH))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", "c2lnbmF0dXJl")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        status = r.status().as_u16();
        let _ = r.bytes().await;
        times.push(start.elapsed());
    }
    times.sort();
    (times[runs / 2], status)
}

/// A form of about `size` bytes whose keys are `prefix` and a distinct three-letter suffix.
fn distinct_keys(prefix: &str, size: usize) -> String {
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    let mut body = String::with_capacity(size + 16);
    let mut n = 0usize;
    while body.len() + prefix.len() + 5 < size {
        let suffix: String = [n / 676, (n / 26) % 26, n % 26]
            .iter()
            .map(|i| letters[i % 26] as char)
            .collect();
        body.push_str(prefix);
        body.push_str(&suffix);
        body.push_str("=&");
        n += 1;
    }
    body
}

/// Finding 1: keys that look like `MediaUrl…` were checked for repeats with a linear search
/// each, so one 256 KiB body of ~20,000 distinct ones cost half a second of a worker's CPU.
/// Now the parse is linear and capped: such a body costs what any other body of its size does.
#[tokio::test]
async fn a_form_of_many_media_keys_costs_what_any_other_form_costs() {
    let app = spawn_app().await;
    let size = 250 * 1024;
    let adversarial = distinct_keys("MediaUrl", size);
    let control = distinct_keys("Whatever", size);
    assert_eq!(adversarial.len(), control.len());
    // Warm up the connection and the route.
    median_answer(&app, &control, 1).await;
    let (attack, attack_status) = median_answer(&app, &adversarial, 3).await;
    let (plain, plain_status) = median_answer(&app, &control, 3).await;
    println!(
        "{} distinct MediaUrl keys: median {attack:?} ({attack_status}); the same size of other keys: {plain:?} ({plain_status})",
        adversarial.matches('&').count()
    );
    assert_eq!(attack_status, 400);
    assert_eq!(plain_status, 400);
    assert!(
        attack < plain * 4 + Duration::from_millis(50),
        "the adversarial form took {attack:?} against {plain:?} for the control"
    );
}

/// Finding 9: connecting a list of phone numbers removed repeats with a linear search each
/// (60,000 numbers: 5.8 s of a worker). Now the list is capped and read once.
#[tokio::test]
async fn a_long_phone_number_list_is_capped_and_read_in_linear_time() {
    let app = spawn_app().await;
    let location = app.create_location("Acme Dental").await;
    let path = format!("/v1/locations/{location}/channels/twilio");
    let put = |numbers: Vec<String>| {
        app.admin_send(
            reqwest::Method::PUT,
            &path,
            serde_json::json!({ "accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN, "phoneNumbers": numbers }),
        )
    };
    let too_many: Vec<String> = (0..60_000).map(|i| format!("+1415{i:07}")).collect();
    let start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), put(too_many))
        .await
        .expect("60,000 numbers were not answered within 10 s");
    println!(
        "60,000 numbers answered {} in {:?}",
        r.status(),
        start.elapsed()
    );
    assert_eq!(r.status(), 422);
    let error: serde_json::Value = r.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 10000"),
        "{error}"
    );
    assert_eq!(
        app.admin_get(&path).await.status(),
        404,
        "nothing was connected"
    );

    // At the cap, each number twice: every one kept once, in the order given.
    let distinct: Vec<String> = (0..5_000).map(|i| format!("+1415{i:07}")).collect();
    let twice: Vec<String> = distinct.iter().chain(distinct.iter()).cloned().collect();
    let start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), put(twice))
        .await
        .expect("10,000 numbers were not answered within 30 s");
    println!(
        "10,000 numbers (5,000 distinct) answered {} in {:?}",
        r.status(),
        start.elapsed()
    );
    assert_eq!(r.status(), 200);
    let connected = app
        .admin_get(&path)
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let numbers: Vec<&str> = connected["phoneNumbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(numbers, distinct);
}

/// Finding 9: behind a proxy that appends to `X-Forwarded-Host` / `-Proto`, the first value is
/// the client's. Only the last one, the trusted proxy's own, may choose the signed URL.
#[tokio::test]
async fn behind_an_appending_proxy_only_the_proxys_forwarded_values_count() {
    let app = spawn_app_with(|c| c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let post = |url: &str, sid: &str| {
        let (body, signature) = signed_twilio_form(url, &sms_params(sid, "hello"), AUTH_TOKEN);
        app.client
            .post(app.url(TWILIO_INBOUND_PATH))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            // What the client sent, then what the proxy appended.
            .header("x-forwarded-host", "attacker.example, hooks.example.com")
            .header("x-forwarded-proto", "http, https")
            .body(body)
            .send()
    };
    let path = TWILIO_INBOUND_PATH;
    let by_client = post(&format!("http://attacker.example{path}"), "SMfwd-client")
        .await
        .unwrap();
    let status = by_client.status();
    assert_eq!(
        status,
        403,
        "the client's own forwarded values were believed: {}",
        by_client.text().await.unwrap()
    );
    let by_proxy = post(&format!("https://hooks.example.com{path}"), "SMfwd-proxy")
        .await
        .unwrap();
    assert_eq!(by_proxy.status(), 200, "{}", by_proxy.text().await.unwrap());
    assert_eq!(receiver.wait_for(1, Duration::from_secs(10)).await.len(), 1);
}

/// Finding 6: a NUL in a subscriber's answer could not be stored in PostgreSQL's `text`, so
/// the attempt was never recorded and the delivery was sent again at every lease expiry,
/// forever. Now the answer is stored with U+FFFD in its place, and the delivery ends.
async fn an_answer_holding_nul_is_recorded_once_as_delivered() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    receiver.script(&[Reply::Body(200, b"ok\0ok")]);
    assert_eq!(
        app.post_twilio(&sms_params("SMnul-answer", "hello"), AUTH_TOKEN)
            .await
            .status(),
        200
    );
    // Longer than the test's delivery lease (5 s): an unrecorded attempt would be sent again.
    let got = receiver.expect_exactly(1, Duration::from_secs(7)).await;
    let message_id = got[0].json()["messageId"].as_str().unwrap().to_owned();
    let report = app
        .get_json(&format!("/v1/messages/{message_id}/deliveries"))
        .await;
    let delivery = &report["data"][0];
    assert_eq!(delivery["status"], "delivered", "{report}");
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{report}");
    assert_eq!(attempts[0]["httpStatus"], 200);
    assert_eq!(attempts[0]["response"], "ok\u{FFFD}ok");
}

/// Finding 8: every scrape of `/metrics` counted every pending delivery (42 ms a scrape with
/// 100,000 pending; eight scrapers used both cores). Now one reading a second serves them all.
#[tokio::test]
async fn scraping_metrics_with_50000_pending_deliveries_stays_cheap() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let location = app.create_location("Acme Dental").await;
    assert_eq!(
        app.connect_twilio(&location, &[BUSINESS_NUMBER])
            .await
            .status(),
        200
    );
    // Five disabled webhooks: each message leaves five deliveries held.
    for _ in 0..5 {
        let r = app
            .admin_send(
                reqwest::Method::POST,
                "/v1/webhooks",
                serde_json::json!({ "url": receiver.url, "events": ["InboundMessage"] }),
            )
            .await;
        let id = r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = app.webhook_action(&id, "disable").await;
        assert!(r.status().is_success(), "{}", r.status());
    }
    let start = Instant::now();
    for chunk in 0..50 {
        let requests = (0..200)
            .map(|i| owned_params(sms_params(&format!("SMpending-{chunk}-{i}"), "hello")))
            .collect();
        let statuses = app.post_twilio_concurrently(requests, AUTH_TOKEN).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    println!(
        "10,000 messages for 5 disabled webhooks stored in {:?}",
        start.elapsed()
    );

    let start = Instant::now();
    let text = get_metrics(&app.client, &app.address).await;
    let first = start.elapsed();
    assert!(
        text.contains("switchboard_delivery_queue{state=\"held\"} 50000"),
        "{text}"
    );
    // Eight scrapers, ten scrapes each, at once.
    let start = Instant::now();
    let scrapers: Vec<_> = (0..8)
        .map(|_| {
            let (client, address) = (app.client.clone(), app.address.clone());
            tokio::spawn(async move {
                for _ in 0..10 {
                    get_metrics(&client, &address).await;
                }
            })
        })
        .collect();
    for scraper in scrapers {
        scraper.await.unwrap();
    }
    let eighty = start.elapsed();
    println!("/metrics with 50,000 pending deliveries: one scrape {first:?}; 80 scrapes from 8 scrapers {eighty:?}");
    assert!(
        eighty < first * 8 + Duration::from_secs(1),
        "80 scrapes took {eighty:?}, one took {first:?}: each scrape counts the queue again"
    );
}

/// Finding 7: a message was unique per location, and Twilio signatures carry no timestamp: once
/// the operator moved a number to another location (same Twilio account), a captured request
/// replayed was stored and delivered there as new. A provider's message id now names one
/// message in every location.
async fn a_replay_after_the_number_moves_is_stored_nowhere() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let (first, _) = app.standard_setup(&receiver).await;
    let url = app.url(TWILIO_INBOUND_PATH);
    let (body, signature) =
        signed_twilio_form(&url, &sms_params("SMcaptured", "hello"), AUTH_TOKEN);
    let replay = || {
        app.client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", &signature)
            .body(body.clone())
            .send()
    };
    assert_eq!(replay().await.unwrap().status(), 200);
    receiver.wait_for(1, Duration::from_secs(10)).await;

    // The operator moves the number to another location of the same Twilio account.
    let r = app
        .admin_send(
            reqwest::Method::DELETE,
            &format!("/v1/locations/{first}/channels/twilio"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status(), 204);
    let second = app.create_location("Acme Dental, second office").await;
    assert_eq!(
        app.connect_twilio(&second, &[BUSINESS_NUMBER])
            .await
            .status(),
        200
    );

    let r = replay().await.unwrap();
    assert_eq!(r.status(), 200, "a provider's retry is answered as stored");
    receiver.expect_exactly(1, Duration::from_secs(2)).await;
    let events = app.get_json("/v1/events?limit=10").await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1, "{events}");
    // A new message to the moved number is filed under its new location.
    let r = app
        .post_twilio(&sms_params("SMafter-move", "hello again"), AUTH_TOKEN)
        .await;
    assert_eq!(r.status(), 200);
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].json()["locationId"], second.as_str());
}

/// Finding 5: an unsigned request to a connected number was answered from the account cache,
/// one to an unconnected number after two lookups in the database, so the response time told
/// them apart. Now every request that does not verify is answered after the same floor.
async fn an_unsigned_request_takes_as_long_whether_its_number_is_connected_or_not() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let probe = |to: &'static str, account: &'static str| {
        let params = sms_params_for("SMtiming", "x", to, account);
        let (body, _) = signed_twilio_form("http://nowhere.example/", &params, AUTH_TOKEN);
        body
    };
    let connected = probe(BUSINESS_NUMBER, ACCOUNT_SID);
    let unconnected = probe("+14155550999", "AC99999999999999999999999999999999");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..60 {
        for (body, times) in [(&connected, &mut a), (&unconnected, &mut b)] {
            let (took, status) = median_answer(&app, body, 1).await;
            assert_eq!(status, 403);
            times.push(took);
        }
    }
    a.sort();
    b.sort();
    let (a, b) = (a[a.len() / 2], b[b.len() / 2]);
    println!("unsigned requests, median answer: connected number {a:?}, unconnected {b:?}");
    let (fast, slow) = (a.min(b), a.max(b));
    assert!(
        slow.as_secs_f64() < fast.as_secs_f64() * 1.15,
        "the medians differ: connected {a:?}, unconnected {b:?}"
    );
}

crate::both_stores!(
    an_unsigned_request_takes_as_long_whether_its_number_is_connected_or_not,
    an_answer_holding_nul_is_recorded_once_as_delivered,
    a_replay_after_the_number_moves_is_stored_nowhere,
);
