//! Isolation: a subscriber that hangs delays no one else's deliveries (webhooks on probation
//! send one attempt at a time, outside the slots of webhooks that answer), and every part of
//! an attempt is bounded: a subscriber that answers at once and then drips its body a byte at
//! a time is cut off at the delivery timeout, and the slot it held is free again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine::{create_webhook, location_with_twilio};
use crate::helpers::*;
use crate::stream_lock::StreamLock;

/// A subscriber written on bare TCP: its first request is answered `200` with a 1,000-byte
/// body sent one byte every 200 ms; every later one is answered `204` at once. Returns its URL
/// and when each request arrived.
async fn dripping_subscriber() -> (String, Arc<Mutex<Vec<Instant>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut read = 0;
                // The request's head and body (the body is small: one read after the head).
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let first = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(Instant::now());
                    seen.len() == 1
                };
                if first {
                    let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
                    if conn.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for _ in 0..1000 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if conn.write_all(b"x").await.is_err() {
                            return;
                        }
                    }
                } else {
                    let answer = "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
                    let _ = conn.write_all(answer.as_bytes()).await;
                    // Keep the connection open for the client's pool.
                    let _ = conn.read(&mut buf).await;
                }
            });
        }
    });
    (url, arrivals)
}

/// With one delivery in flight at most, the second waits for the dripping first; the first is
/// cut off at the 1 s delivery timeout, so the second goes out about a second after it, not
/// after the 200 s the drip would take.
async fn a_dripping_body_is_cut_off_at_the_timeout_and_frees_its_slot() {
    let timeout = Duration::from_secs(1);
    let app = spawn_app_with(|c| c.delivery_timeout = timeout).await;
    let (url, arrivals) = dripping_subscriber().await;
    location_with_twilio(&app).await;
    create_webhook(
        &app,
        json!({ "url": url, "events": ["InboundMessage"], "maxInFlight": 1 }),
    )
    .await;
    assert_eq!(
        app.post_twilio(&sms_params("SMdrip1", "first"), AUTH_TOKEN)
            .await
            .status(),
        200
    );
    let first = eventually(Duration::from_secs(5), "the first request", || async {
        arrivals.lock().unwrap().first().copied()
    })
    .await;
    assert_eq!(
        app.post_twilio(&sms_params("SMdrip2", "second"), AUTH_TOKEN)
            .await
            .status(),
        200
    );
    let second = eventually(Duration::from_secs(10), "the second request", || async {
        arrivals.lock().unwrap().get(1).copied()
    })
    .await;
    let waited = second - first;
    assert!(
        waited >= timeout - Duration::from_millis(100) && waited < timeout * 3,
        "the second delivery started {waited:?} after the first; the timeout is {timeout:?}"
    );

    // The dripping attempt is recorded as it ended: at the timeout, with what had arrived.
    let events = app.expect_events(2).await;
    let message_id = events[0]["messageId"].as_str().unwrap().to_owned();
    let report = app
        .get_json(&format!("/v1/messages/{message_id}/deliveries"))
        .await;
    let attempt = &report["data"][0]["attempts"][0];
    let took = attempt["durationMs"].as_u64().unwrap();
    assert!(
        (900..3000).contains(&took),
        "the dripping attempt took {took} ms: {report}"
    );
}

/// A subscriber that takes the TCP connection and never answers the TLS handshake (it reads
/// the ClientHello and stays silent): the attempt ends at the delivery timeout, and the next
/// delivery goes out about a second after the first, not never.
async fn a_stalled_tls_handshake_ends_at_the_timeout() {
    let timeout = Duration::from_secs(1);
    let app = spawn_app_with(|c| c.delivery_timeout = timeout).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hook", listener.local_addr().unwrap());
    let connections = Arc::new(Mutex::new(Vec::new()));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            seen.lock().unwrap().push(Instant::now());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(1..) = conn.read(&mut buf).await {}
            });
        }
    });
    location_with_twilio(&app).await;
    create_webhook(
        &app,
        json!({ "url": url, "events": ["InboundMessage"], "maxInFlight": 1 }),
    )
    .await;
    for sid in ["SMtls1", "SMtls2"] {
        assert_eq!(
            app.post_twilio(&sms_params(sid, "tls"), AUTH_TOKEN)
                .await
                .status(),
            200
        );
    }
    let times = eventually(Duration::from_secs(10), "two connections", || async {
        let times = connections.lock().unwrap().clone();
        (times.len() >= 2).then_some(times)
    })
    .await;
    let waited = times[1] - times[0];
    assert!(
        waited >= timeout - Duration::from_millis(100) && waited < timeout * 3,
        "the second attempt started {waited:?} after the first; the timeout is {timeout:?}"
    );
}

/// For each delivery of a `message {i}`, by message number: how long after `posted[i]` it
/// arrived.
pub(crate) fn waits(got: &[Received], posted: &[Instant]) -> Vec<(usize, Duration)> {
    let mut waits: Vec<(usize, Duration)> = got
        .iter()
        .map(|delivery| {
            let body = delivery.json()["body"].as_str().unwrap().to_owned();
            let i: usize = body.trim_start_matches("message ").parse().unwrap();
            (i, delivery.at - posted[i])
        })
        .collect();
    waits.sort();
    waits
}

/// 200 webhooks whose subscriber hangs and one that answers, with the default 256 slots and
/// the default 10 s delivery timeout: from the first message on, every delivery to the healthy
/// webhook arrives well before any timeout could have freed a slot (under a quarter of it:
/// the first ones share the test's one thread with 200 connections being opened, which on a
/// loaded machine took over a second). Before probation, the second message's 200 hanging
/// attempts filled the slots and the healthy webhook waited for the timeouts.
async fn two_hundred_hanging_webhooks_delay_no_healthy_delivery() {
    let timeout = Duration::from_secs(10);
    let app = spawn_app_with(|c| c.delivery_timeout = timeout).await;
    assert_eq!(switchboard::Config::defaults().dispatcher_concurrency, 256);
    location_with_twilio(&app).await;
    // A subscriber that takes every request and never answers within the timeout.
    let hanging = TestReceiver::start().await;
    hanging.slow(Duration::from_secs(3600));
    for _ in 0..200 {
        create_webhook(
            &app,
            json!({ "url": hanging.url, "events": ["InboundMessage"] }),
        )
        .await;
    }
    let healthy = TestReceiver::start().await;
    create_webhook(
        &app,
        json!({ "url": healthy.url, "events": ["InboundMessage"] }),
    )
    .await;

    let messages = 15;
    let mut posted = Vec::new();
    for i in 0..messages {
        let sid = twilio_sid(&format!("SMhang{i}"));
        let body = format!("message {i}");
        posted.push(Instant::now());
        let r = app.post_twilio(&sms_params(&sid, &body), AUTH_TOKEN).await;
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = healthy.wait_for(messages, Duration::from_secs(20)).await;
    let waits = waits(&got, &posted);
    for (i, waited) in &waits {
        assert!(
            *waited < timeout / 4,
            "message {i} reached the healthy webhook after {waited:?} (timeout {timeout:?}): {waits:?}"
        );
    }
}

/// `health.probation` of a webhook, from `GET /v1/webhooks/{id}`.
pub(crate) async fn probation_of(app: &TestApp, webhook_id: &str) -> Value {
    let r = app.admin_get(&format!("/v1/webhooks/{webhook_id}")).await;
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["health"]["probation"].clone()
}

/// The value of one metric line (`name{labels}` as written), if the scrape has it.
pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A webhook whose subscriber answers leaves probation, one that hangs stays on it (one
/// attempt in a probation slot), and the hanging one leaves it once its subscriber answers a
/// retry: each visible in `GET /v1/webhooks/{id}` and in `/metrics`.
async fn each_webhooks_probation_shows_in_the_api_and_the_metrics() {
    let app = spawn_app_with(|c| c.delivery_timeout = Duration::from_secs(1)).await;
    location_with_twilio(&app).await;
    let hanging = TestReceiver::start().await;
    hanging.slow(Duration::from_secs(3600));
    let stalled = create_webhook(
        &app,
        json!({ "url": hanging.url, "events": ["InboundMessage"], "retrySchedule": ["1s"] }),
    )
    .await;
    let stalled = stalled["id"].as_str().unwrap().to_owned();
    let receiver = TestReceiver::start().await;
    let healthy = create_webhook(
        &app,
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await;
    let healthy = healthy["id"].as_str().unwrap().to_owned();
    // Not tried yet: on probation as soon as the dispatcher has read it.
    eventually(Duration::from_secs(5), "both read", || async {
        (probation_of(&app, &stalled).await == json!(true)
            && probation_of(&app, &healthy).await == json!(true))
        .then_some(())
    })
    .await;

    let sid = twilio_sid("SMprobation");
    let r = app
        .post_twilio(&sms_params(&sid, "probation"), AUTH_TOKEN)
        .await;
    assert_eq!(r.status(), 200);
    receiver.wait_for(1, Duration::from_secs(5)).await;
    hanging.wait_for(1, Duration::from_secs(5)).await;
    let healthy_series = format!("switchboard_webhook_probation{{webhook=\"{healthy}\"}}");
    let stalled_series = format!("switchboard_webhook_probation{{webhook=\"{stalled}\"}}");
    // Proven when its subscriber answered; its attempt left the probation slot once recorded.
    let text = eventually(Duration::from_secs(5), "the healthy one proven", || async {
        let text = get_metrics(&app.client, &app.address).await;
        (metric(&text, &healthy_series) == Some(0.0)
            && metric(&text, "switchboard_deliveries_sending_on_probation") == Some(1.0))
        .then_some(text)
    })
    .await;
    assert_eq!(metric(&text, &stalled_series), Some(1.0), "{text}");
    assert_eq!(
        metric(&text, "switchboard_deliveries_sending_on_probation"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(probation_of(&app, &healthy).await, json!(false));
    assert_eq!(probation_of(&app, &stalled).await, json!(true));

    // The subscriber recovers: the retry (after the 1 s timeout and the 1 s schedule) is
    // answered, and the webhook leaves probation.
    hanging.slow(Duration::ZERO);
    hanging.wait_for(2, Duration::from_secs(10)).await;
    eventually(Duration::from_secs(5), "the stalled one proven", || async {
        (probation_of(&app, &stalled).await == json!(false)).then_some(())
    })
    .await;
    let text = eventually(Duration::from_secs(5), "its attempt recorded", || async {
        let text = get_metrics(&app.client, &app.address).await;
        (metric(&text, "switchboard_deliveries_sending_on_probation") == Some(0.0)).then_some(text)
    })
    .await;
    assert_eq!(metric(&text, &stalled_series), Some(0.0), "{text}");
}

/// A webhook's answer is remembered: after a restart (SIGKILL), the webhook whose subscriber
/// answered its last attempt is not on probation (it uses the shared slots at once, rather than
/// being tried among the webhooks that never answered), and the one whose subscriber did not
/// answer is.
#[tokio::test]
async fn probation_is_remembered_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = [("SWITCHBOARD_DELIVERY_TIMEOUT", "1s")];
    let answering = TestReceiver::start().await;
    let hanging = TestReceiver::start().await;
    hanging.slow(Duration::from_secs(3600));
    let mut server = Node::start(dir.path(), port, &env).await;
    let healthy = server.configure(&answering).await;
    let stalled = server.add_webhook(&hanging.url).await;
    assert_eq!(
        server.post_sms("SMremember", "remember").await.status(),
        200
    );
    answering.wait_for(1, Duration::from_secs(5)).await;
    hanging.wait_for(1, Duration::from_secs(5)).await;
    let health = |id: String| health_on(&server, id);
    // The answer is stored with the attempt, before the dispatcher takes the webhook off
    // probation; the timeout is stored as a failure.
    eventually(
        Duration::from_secs(10),
        "both attempts recorded",
        || async {
            (health(healthy.clone()).await["probation"] == json!(false)
                && health(stalled.clone()).await["consecutiveFailures"] == json!(1))
            .then_some(())
        },
    )
    .await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);

    let server = Node::start(dir.path(), port, &env).await;
    let health = |id: String| health_on(&server, id);
    eventually(
        Duration::from_secs(10),
        "both read after the restart",
        || async {
            (!health(healthy.clone()).await["probation"].is_null()
                && !health(stalled.clone()).await["probation"].is_null())
            .then_some(())
        },
    )
    .await;
    assert_eq!(health(healthy.clone()).await["probation"], json!(false));
    assert_eq!(health(stalled.clone()).await["probation"], json!(true));
}

/// A webhook leaves probation when its subscriber answers, not once the attempt is recorded:
/// with the record held up (the delivery's row locked in PostgreSQL), its next message is
/// delivered all the same. Before, everything queued behind a new webhook's first attempt
/// waited for that record (with a thousand new webhooks, tens of milliseconds).
#[tokio::test]
async fn a_webhook_leaves_probation_when_its_subscriber_answers() {
    use sqlx::Connection;
    on_store(Backend::Postgres, async {
        let app = spawn_app().await;
        let (receiver, webhook) = crate::engine::subscribed(&app).await;
        receiver.slow(Duration::from_millis(1500));
        let id = webhook["id"].as_str().unwrap().to_owned();
        let first = twilio_sid("SManswered-first");
        let r = app
            .post_twilio(&sms_params(&first, "first"), AUTH_TOKEN)
            .await;
        assert_eq!(r.status(), 200);
        // Its answer comes 1.5 s after it arrives; meanwhile its row is locked, before the
        // attempt is recorded (checked: still pending).
        receiver.wait_for(1, Duration::from_secs(5)).await;
        let url = app.database_url.clone().expect("a PostgreSQL test");
        let mut lock = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
        let locked: Vec<(String, String)> =
            sqlx::query_as("SELECT id, status FROM deliveries WHERE webhook_id = $1 FOR UPDATE")
                .bind(&id)
                .fetch_all(&mut lock)
                .await
                .unwrap();
        assert_eq!(locked.len(), 1);
        let (first_delivery, status) = locked.into_iter().next().unwrap();
        assert_eq!(
            status, "pending",
            "the row was locked after the attempt was recorded"
        );
        receiver.slow(Duration::ZERO);

        eventually(
            Duration::from_secs(5),
            "off probation on the answer",
            || async { (probation_of(&app, &id).await == json!(false)).then_some(()) },
        )
        .await;
        let second = twilio_sid("SManswered-second");
        let r = app
            .post_twilio(&sms_params(&second, "second"), AUTH_TOKEN)
            .await;
        assert_eq!(r.status(), 200);
        let got = receiver.wait_for(2, Duration::from_secs(5)).await;
        assert!(String::from_utf8_lossy(&got[1].body).contains("second"));
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (delivered, first_done): (i64, Option<bool>) = sqlx::query_as(
                "SELECT count(*), bool_or(id = $2) FROM deliveries
                 WHERE webhook_id = $1 AND status = 'delivered'",
            )
            .bind(&id)
            .bind(&first_delivery)
            .fetch_one(&mut lock)
            .await
            .unwrap();
            if delivered == 2 && first_done == Some(true) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{delivered} of 2 recorded delivered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        receiver.expect_exactly(2, Duration::from_millis(500)).await;
    })
    .await;
}

/// The probation thread runs at a lower priority (nice 10 above the rest, at most 19) than
/// the threads that serve requests, write the store and send to webhooks that answer: when a
/// thousand connections are opened on it at once, the operating system gives the cores to the
/// rest first.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_probation_thread_yields_the_cores_to_the_rest() {
    /// The nice value of a thread, from its `stat` (field 19; fields count from the state,
    /// field 3, after the name in parentheses).
    fn nice(stat: &str) -> i32 {
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        fields[16].parse().unwrap()
    }
    let _app = spawn_app().await;
    // The test's own thread, like the server's others, keeps the process's value.
    let own = nice(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    // Comm names are cut to 15 bytes. Every server of this test process has one such thread.
    let mut niceness = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue; // The thread ended meanwhile.
        };
        if comm.trim_end() != "switchboard-pro" {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(task.join("stat")) {
            niceness.push(nice(&stat));
        }
    }
    assert!(!niceness.is_empty(), "no probation thread found");
    let expected = (own + 10).min(19);
    assert!(
        niceness.iter().all(|&n| n == expected),
        "{niceness:?}, expected {expected}"
    );
}

/// `health` of a webhook, from the binary's `GET /v1/webhooks/{id}`.
async fn health_on(server: &Node, webhook_id: String) -> Value {
    server.get_json(&format!("/v1/webhooks/{webhook_id}")).await["health"].clone()
}

crate::both_stores!(
    a_stalled_tls_handshake_ends_at_the_timeout,
    a_dripping_body_is_cut_off_at_the_timeout_and_frees_its_slot,
    two_hundred_hanging_webhooks_delay_no_healthy_delivery,
    each_webhooks_probation_shows_in_the_api_and_the_metrics,
);

/// A delivery committed for a request whose handler is gone (its client closed the
/// connection while it waited for the commit) goes out at once: the group commit hands it to
/// the dispatcher, not the request's handler. Before, it was leased to this node with nobody
/// to send it, and went out when the lease ran out (here a minute).
#[tokio::test]
async fn a_committed_delivery_goes_out_though_its_requests_handler_is_gone() {
    on_store(Backend::Postgres, async {
        let app = spawn_app_with(|c| c.delivery_lease = Duration::from_secs(60)).await;
        let (receiver, _) = crate::engine::subscribed(&app).await;
        let mut lock = StreamLock::take(&app).await;
        let path = switchboard::channels::twilio::INBOUND_PATH;
        let sid = twilio_sid("SMhandler-gone");
        let (form, signature) = signed_twilio_form(
            &app.url(path),
            &sms_params(&sid, "handler gone"),
            AUTH_TOKEN,
        );
        let host = app.address.trim_start_matches("http://");
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: {signature}\r\n\
             Content-Length: {}\r\n\r\n{form}",
            form.len()
        );
        let mut client = tokio::net::TcpStream::connect(host).await.unwrap();
        client.write_all(request.as_bytes()).await.unwrap();
        lock.until_waited_for().await;
        // The client gives up: the server drops the handler.
        drop(client);
        tokio::time::sleep(Duration::from_millis(300)).await;
        lock.release().await;
        let got = receiver.wait_for(1, Duration::from_secs(5)).await;
        assert!(String::from_utf8_lossy(&got[0].body).contains("handler gone"));
    })
    .await;
}
