//! Backlogs held in the event stream: while a webhook's subscriber has not answered, its new
//! events cost ingest no delivery rows; its place in the stream is kept instead, and its
//! deliveries are written from there as it can take them (one to try it with on probation,
//! the rest once it answers), through restarts and retention, with its filters applied.

use std::time::Duration;

use serde_json::{json, Value};

use crate::engine::{create_webhook, location_with_twilio};
use crate::helpers::*;
use crate::stream_lock::StreamLock;
use crate::twilio_voice::{outbound_params, post_twiml, setup, voice_settings, QUIET, STATUS};

/// Another number of the test account, connected to a second location.
const OTHER_NUMBER: &str = "+14155550111";

/// `health.backlogHeldAfter` of a webhook, from `GET /v1/webhooks/{id}`.
pub(crate) async fn held_after(app: &TestApp, webhook_id: &str) -> Value {
    let r = app.admin_get(&format!("/v1/webhooks/{webhook_id}")).await;
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["health"]["backlogHeldAfter"].clone()
}

/// Wait until the webhook's backlog is held (`true`) or given back (`false`).
async fn until_held(app: &TestApp, webhook_id: &str, held: bool) {
    eventually(
        Duration::from_secs(10),
        if held {
            "the backlog held in the stream"
        } else {
            "the backlog given back to ingest"
        },
        || async { (held_after(app, webhook_id).await.is_i64() == held).then_some(()) },
    )
    .await;
}

/// The message ids of the events feed, oldest first.
async fn feed_message_ids(app: &TestApp) -> Vec<String> {
    app.get_json("/v1/events?limit=500").await["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"]["messageId"].as_str().map(str::to_owned))
        .collect()
}

/// The webhooks with a delivery of this message.
async fn delivered_to(app: &TestApp, message_id: &str) -> Vec<String> {
    app.get_json(&format!("/v1/messages/{message_id}/deliveries"))
        .await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["webhookId"].as_str().unwrap().to_owned())
        .collect()
}

/// The messages' bodies delivered, each once, sorted.
fn distinct_bodies(got: &[Received]) -> Vec<String> {
    let mut bodies: Vec<String> = got
        .iter()
        .map(|d| d.json()["body"].as_str().unwrap().to_owned())
        .collect();
    bodies.sort();
    bodies.dedup();
    bodies
}

/// A webhook for inbound messages at a subscriber that does not answer (until told to), with
/// `settings` added: the subscriber, and the webhook's id.
async fn hanging_webhook(app: &TestApp, settings: Value) -> (TestReceiver, String) {
    let subscriber = TestReceiver::start().await;
    subscriber.slow(Duration::from_secs(3600));
    let mut body = json!({ "url": subscriber.url, "events": ["InboundMessage"] });
    let body_fields = body.as_object_mut().expect("an object");
    body_fields.extend(settings.as_object().expect("an object").clone());
    let webhook = create_webhook(app, body).await;
    (subscriber, webhook["id"].as_str().unwrap().to_owned())
}

/// Post the first message and wait until its delivery is out and the webhook's backlog held.
/// Messages are `SM{word}{i}` with the body `{word} {i}`.
async fn hold_after_first(app: &TestApp, subscriber: &TestReceiver, webhook_id: &str, word: &str) {
    post_sms(app, &format!("SM{word}0"), &format!("{word} 0")).await;
    subscriber.wait_for(1, Duration::from_secs(5)).await;
    until_held(app, webhook_id, true).await;
}

async fn post_sms(app: &TestApp, label: &str, body: &str) {
    let sid = twilio_sid(label);
    let r = app.post_twilio(&sms_params(&sid, body), AUTH_TOKEN).await;
    assert_eq!(r.status(), 200);
}

/// A hanging subscriber's backlog is held in the event stream: once its first delivery is out,
/// the messages after it get no delivery row for it (before, each of the 40 messages wrote one
/// in its transaction), the API and the metrics say so, and one attempt at a time is made.
async fn a_hanging_subscribers_backlog_is_held_in_the_event_stream() {
    let messages = 40;
    let app = spawn_app_with(|c| c.delivery_timeout = Duration::from_secs(60)).await;
    location_with_twilio(&app).await;
    let (hanging, webhook) = hanging_webhook(&app, json!({})).await;
    // Never tried: held from the start, its first delivery written from the stream.
    until_held(&app, &webhook, true).await;
    hold_after_first(&app, &hanging, &webhook, "held").await;
    for i in 1..messages {
        post_sms(&app, &format!("SMheld{i}"), &format!("held {i}")).await;
    }
    let ids = feed_message_ids(&app).await;
    assert_eq!(ids.len(), messages);
    assert_eq!(delivered_to(&app, &ids[0]).await, vec![webhook.clone()]);
    for id in &ids[1..] {
        assert_eq!(
            delivered_to(&app, id).await,
            Vec::<String>::new(),
            "message {id} got a delivery row while its webhook's backlog is held"
        );
    }
    let text = get_metrics(&app.client, &app.address).await;
    assert!(
        text.contains(&format!(
            "switchboard_webhook_backlog_held{{webhook=\"{webhook}\"}} 1"
        )),
        "{text}"
    );
    assert_eq!(hanging.received().len(), 1);
}

/// When the subscriber answers again, its held backlog is written and delivered, each event
/// once, through its filters (the other location's messages do not go to it), and the webhook
/// is given back to ingest: the next message has its delivery row at once.
async fn a_held_backlog_is_delivered_once_its_subscriber_answers_and_given_back() {
    let messages = 40;
    let app = spawn_app_with(|c| c.delivery_timeout = Duration::from_secs(1)).await;
    let location = location_with_twilio(&app).await;
    let other = app.create_location("Elsewhere").await;
    assert_eq!(
        app.connect_twilio(&other, &[OTHER_NUMBER]).await.status(),
        200
    );
    let (subscriber, webhook) = hanging_webhook(
        &app,
        json!({ "locationId": location, "retrySchedule": ["1s"] }),
    )
    .await;
    hold_after_first(&app, &subscriber, &webhook, "back").await;
    for i in 1..messages {
        post_sms(&app, &format!("SMback{i}"), &format!("back {i}")).await;
        // The other location's message: not for this webhook.
        let sid = twilio_sid(&format!("SMelse{i}"));
        let params = sms_params_for(&sid, "elsewhere", OTHER_NUMBER, ACCOUNT_SID);
        assert_eq!(app.post_twilio(&params, AUTH_TOKEN).await.status(), 200);
    }
    subscriber.slow(Duration::ZERO);
    // The first attempt times out after 1 s and is retried 1 s later; then the rest is written.
    let got = subscriber
        .wait_for(messages + 1, Duration::from_secs(20))
        .await;
    let bodies = distinct_bodies(&got);
    assert_eq!(bodies.len(), messages, "{bodies:?}");
    assert!(bodies.iter().all(|b| b.starts_with("back ")), "{bodies:?}");
    until_held(&app, &webhook, false).await;
    // One timed out and was sent again; nothing else twice, nothing of the other location.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(subscriber.received().len(), messages + 1);
    // Given back: a new message's delivery row is written with it.
    post_sms(&app, "SMbackafter", "after").await;
    let ids = feed_message_ids(&app).await;
    assert_eq!(
        delivered_to(&app, ids.last().unwrap()).await,
        vec![webhook.clone()]
    );
    subscriber
        .wait_for(messages + 2, Duration::from_secs(5))
        .await;
    let text = get_metrics(&app.client, &app.address).await;
    assert!(
        text.contains(&format!(
            "switchboard_webhook_backlog_held{{webhook=\"{webhook}\"}} 0"
        )),
        "{text}"
    );
}

/// Retention does not prune the events of a held backlog: they have no delivery rows yet, but
/// are owed. With a retention of 300 ms, the backlog of a subscriber that answers only after
/// two seconds still arrives whole.
async fn a_held_backlog_outlives_retention() {
    let messages = 5;
    let app = spawn_app_with(|c| {
        c.delivery_timeout = Duration::from_secs(1);
        c.retention = Duration::from_millis(300);
    })
    .await;
    location_with_twilio(&app).await;
    let (subscriber, webhook) = hanging_webhook(&app, json!({ "retrySchedule": ["2s"] })).await;
    hold_after_first(&app, &subscriber, &webhook, "keep").await;
    for i in 1..messages {
        post_sms(&app, &format!("SMkeep{i}"), &format!("keep {i}")).await;
    }
    // Retention runs every 100 ms here: several times before the subscriber answers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    subscriber.slow(Duration::ZERO);
    let got = subscriber
        .wait_for(messages + 1, Duration::from_secs(15))
        .await;
    let bodies = distinct_bodies(&got);
    assert_eq!(bodies.len(), messages, "{bodies:?}");
}

/// An ordered webhook's held backlog arrives in the conversation's order: the first message's
/// attempt timed out and is retried first, then every later one in turn.
async fn a_held_backlog_keeps_the_conversations_order() {
    let messages = 12;
    let app = spawn_app_with(|c| c.delivery_timeout = Duration::from_secs(1)).await;
    location_with_twilio(&app).await;
    let (subscriber, webhook) = hanging_webhook(
        &app,
        json!({ "ordering": "conversation", "retrySchedule": ["1s"] }),
    )
    .await;
    hold_after_first(&app, &subscriber, &webhook, "order").await;
    for i in 1..messages {
        post_sms(&app, &format!("SMorder{i}"), &format!("order {i}")).await;
    }
    subscriber.slow(Duration::ZERO);
    let got = subscriber
        .wait_for(messages + 1, Duration::from_secs(20))
        .await;
    let bodies: Vec<String> = got[1..]
        .iter()
        .map(|d| d.json()["body"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..messages).map(|i| format!("order {i}")).collect();
    assert_eq!(bodies, expected);
}

/// A held backlog is written through the webhook's type and direction filters, as ingest
/// applies them: two webhooks held at once, one for inbound SMS and one for outbound calls,
/// each get only what they subscribed to once their subscribers answer.
async fn a_held_backlog_is_written_through_the_type_and_direction_filters() {
    let rounds = 5;
    let app = spawn_app_with(|c| c.delivery_timeout = Duration::from_secs(1)).await;
    let everything = TestReceiver::start().await;
    setup(&app, &everything, voice_settings()).await;
    let mut held = Vec::new();
    for (types, direction) in [("SMS", "inbound"), ("CALL", "outbound")] {
        let subscriber = TestReceiver::start().await;
        subscriber.slow(Duration::from_secs(3600));
        let webhook = create_webhook(
            &app,
            json!({ "url": subscriber.url, "events": ["InboundMessage", "OutboundMessage"],
                    "messageTypes": [types], "direction": direction, "retrySchedule": ["1s"] }),
        )
        .await;
        held.push((subscriber, webhook["id"].as_str().unwrap().to_owned()));
    }
    let post_both = |i: usize| {
        let app = &app;
        async move {
            post_sms(app, &format!("SMfilter{i}"), &format!("filter {i}")).await;
            let completed = [("CallStatus", "completed"), ("CallDuration", "30")];
            post_twiml(
                app,
                STATUS,
                &outbound_params(&format!("CAfilter{i}"), &completed),
            )
            .await;
        }
    };
    post_both(0).await;
    for (subscriber, webhook) in &held {
        subscriber.wait_for(1, Duration::from_secs(5)).await;
        until_held(&app, webhook, true).await;
    }
    for i in 1..=rounds {
        post_both(i).await;
    }
    everything
        .wait_for(2 * (rounds + 1), Duration::from_secs(10))
        .await;
    for (subscriber, _) in &held {
        subscriber.slow(Duration::ZERO);
    }
    // Each first attempt times out after 1 s and is sent again 1 s later; then the rest.
    let expect = [
        ("InboundMessage", "SMS", "inbound"),
        ("OutboundMessage", "CALL", "outbound"),
    ];
    for ((subscriber, webhook), (kind, message_type, direction)) in held.iter().zip(expect) {
        subscriber
            .wait_for(rounds + 2, Duration::from_secs(20))
            .await;
        until_held(&app, webhook, false).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = subscriber.received();
        assert_eq!(
            got.len(),
            rounds + 2,
            "{message_type}: one sent twice, none else"
        );
        for delivery in got {
            let event = delivery.json();
            assert_eq!(
                (
                    event["type"].as_str(),
                    event["messageType"].as_str(),
                    event["direction"].as_str()
                ),
                (Some(kind), Some(message_type), Some(direction)),
                "{event}"
            );
        }
    }
}

/// A webhook never tried is held in the stream once its dispatcher has read it, before any
/// message; the first message's commit gets the dispatcher to write its first delivery from
/// there (the poll comes once a minute here: it is not what finds it), for 250 such webhooks at
/// once (three transactions of a hundred); one whose subscriber answered is given back to
/// ingest, which writes the next message's row itself, while those that hang stay held. Before,
/// the first message's own transaction read every new webhook and wrote each a row: with a
/// thousand, most of the first moment's commit, and every message of that moment waited.
async fn webhooks_never_tried_get_their_first_delivery_from_the_stream() {
    let app = spawn_app_with(|c| {
        c.poll_interval = Duration::from_secs(60);
        c.delivery_timeout = Duration::from_secs(60);
    })
    .await;
    location_with_twilio(&app).await;
    let hanging = TestReceiver::start().await;
    hanging.slow(Duration::from_secs(3600));
    let mut webhooks = Vec::new();
    for _ in 0..250 {
        let made = create_webhook(
            &app,
            json!({ "url": hanging.url, "events": ["InboundMessage"] }),
        );
        webhooks.push(made.await["id"].as_str().unwrap().to_owned());
    }
    let healthy = TestReceiver::start().await;
    let made = create_webhook(
        &app,
        json!({ "url": healthy.url, "events": ["InboundMessage"] }),
    );
    let answers = made.await["id"].as_str().unwrap().to_owned();
    webhooks.push(answers.clone());
    for webhook in &webhooks {
        until_held(&app, webhook, true).await;
    }

    post_sms(&app, "SMfirst0", "first 0").await;
    healthy.wait_for(1, Duration::from_secs(5)).await;
    hanging.wait_for(250, Duration::from_secs(10)).await;
    let ids = feed_message_ids(&app).await;
    let mut got = delivered_to(&app, &ids[0]).await;
    got.sort();
    webhooks.sort();
    assert_eq!(
        got, webhooks,
        "one delivery of the first message to each webhook"
    );

    until_held(&app, &answers, false).await;
    post_sms(&app, "SMfirst1", "first 1").await;
    healthy.wait_for(2, Duration::from_secs(5)).await;
    let ids = feed_message_ids(&app).await;
    assert_eq!(delivered_to(&app, &ids[1]).await, vec![answers]);
    assert_eq!(hanging.received().len(), 250, "one attempt each");
}

/// A webhook never tried whose subscriber answers its first delivery after 400 ms while
/// 2,000 messages come: what was held in the stream meanwhile is given back and claimed at
/// once, all of it, not at the next poll (a minute here). Before, what the give-back wrote
/// beyond one claim, or beyond what the lane takes, waited for the next poll (stalls of 1.1 s
/// in the benchmark, at the default one-second poll).
async fn a_new_webhooks_first_burst_waits_for_no_poll() {
    let app = spawn_app_with(|c| c.poll_interval = Duration::from_secs(60)).await;
    location_with_twilio(&app).await;
    let subscriber = TestReceiver::start().await;
    subscriber.slow(Duration::from_millis(400));
    let made = create_webhook(
        &app,
        json!({ "url": subscriber.url, "events": ["InboundMessage"] }),
    );
    let webhook = made.await["id"].as_str().unwrap().to_owned();
    until_held(&app, &webhook, true).await;
    // Ten rounds of 200 at once.
    let post = async {
        for round in 0..10 {
            let requests: Vec<Vec<(String, String)>> = (0..200)
                .map(|i| {
                    let sid = twilio_sid(&format!("SMburst{round}-{i}"));
                    owned_params(sms_params(&sid, &format!("burst {round} {i}")))
                })
                .collect();
            let statuses = app.post_twilio_concurrently(requests, AUTH_TOKEN).await;
            assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        }
    };
    let answer_soon = async {
        subscriber.wait_for(1, Duration::from_secs(5)).await;
        subscriber.slow(Duration::ZERO);
    };
    tokio::join!(post, answer_soon);
    let got = subscriber.wait_for(2000, Duration::from_secs(20)).await;
    assert_eq!(distinct_bodies(&got).len(), 2000);
}

crate::both_stores!(
    a_new_webhooks_first_burst_waits_for_no_poll,
    webhooks_never_tried_get_their_first_delivery_from_the_stream,
    a_held_backlog_is_written_through_the_type_and_direction_filters,
    a_held_backlog_keeps_the_conversations_order,
    a_hanging_subscribers_backlog_is_held_in_the_event_stream,
    a_held_backlog_is_delivered_once_its_subscriber_answers_and_given_back,
    a_held_backlog_outlives_retention,
    a_held_webhook_whose_delivery_gave_up_gets_the_next_message,
);

/// A webhook whose first delivery is still leased to a node killed while sending it (on
/// PostgreSQL the lease is not taken back at a start: another node may hold it) looks never
/// tried to the next node, which holds it in the stream for a first delivery and finds that
/// one pending: it gives the webhook back to ingest at once, and the next message is delivered
/// long before that lease runs out. Before, the hold stood, the top-up had no room (one
/// pending on probation), and every later message waited for the two-minute lease.
#[tokio::test]
async fn a_hold_for_a_first_delivery_that_is_pending_elsewhere_is_given_back() {
    let Some(url) = postgres_schema_for_nodes().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SWITCHBOARD_DATABASE_URL", url.as_str()),
        ("SWITCHBOARD_DELIVERY_TIMEOUT", "60s"),
        ("SWITCHBOARD_DELIVERY_LEASE", "120s"),
    ];
    let subscriber = TestReceiver::start().await;
    subscriber.slow(Duration::from_secs(3600));
    let mut first = Node::start(dir.path(), free_port(), &env).await;
    first.configure(&subscriber).await;
    assert_eq!(first.post_sms("SMelse0", "else 0").await.status(), 200);
    subscriber.wait_for(1, Duration::from_secs(5)).await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    drop(first);

    subscriber.slow(Duration::ZERO);
    let second = Node::start(dir.path(), free_port(), &env).await;
    assert_eq!(second.post_sms("SMelse1", "else 1").await.status(), 200);
    let got = subscriber.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].json()["body"], "else 1");
}

/// The place of a held backlog is stored: the real binary, killed with SIGKILL while its
/// webhook's backlog is held, delivers the whole backlog after a restart once the subscriber
/// answers.
#[tokio::test]
async fn a_held_backlog_is_delivered_after_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = [
        ("SWITCHBOARD_DELIVERY_TIMEOUT", "60s"),
        ("SWITCHBOARD_DELIVERY_LEASE", "120s"),
    ];
    let subscriber = TestReceiver::start().await;
    subscriber.slow(Duration::from_secs(3600));
    let mut server = Node::start(dir.path(), port, &env).await;
    server.configure(&subscriber).await;
    assert_eq!(server.post_sms("SMkill0", "kill 0").await.status(), 200);
    subscriber.wait_for(1, Duration::from_secs(5)).await;
    let webhooks = server.get_json("/v1/webhooks").await;
    let webhook = webhooks["data"][0]["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(10), "the backlog held", || async {
        let w = server.get_json(&format!("/v1/webhooks/{webhook}")).await;
        w["health"]["backlogHeldAfter"].is_i64().then_some(())
    })
    .await;
    for i in 1..10 {
        let r = server
            .post_sms(&format!("SMkill{i}"), &format!("kill {i}"))
            .await;
        assert_eq!(r.status(), 200);
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);

    subscriber.slow(Duration::ZERO);
    let _server = Node::start(dir.path(), port, &env).await;
    let got = subscriber.wait_for(11, Duration::from_secs(20)).await;
    let bodies = distinct_bodies(&got);
    assert_eq!(bodies.len(), 10, "{bodies:?}");
    // The first was sent twice (in flight at the kill); nothing else.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(subscriber.received().len(), 11);
}

/// An ingest that read the webhooks before a dispatcher held one in the stream (it waited for
/// the event stream's lock meanwhile) writes no delivery row after the place: the held events
/// before it would have gone out after it, out of the conversation's order (one run in a few
/// of `engine::postgres::ordered_conversation_posted_all_at_once…`, where this node's
/// dispatcher held the webhook and had let go of it in its own view by then). Here the hold
/// is written by the test, as another node's would be, while the message waits for the lock;
/// the message is delivered once, from the backlog. PostgreSQL only: SQLite reads the webhooks
/// under its one writer.
#[tokio::test]
async fn an_ingest_that_waited_for_the_stream_leaves_a_webhook_held_meanwhile_to_its_backlog() {
    on_store(Backend::Postgres, async {
        let app = spawn_app().await;
        location_with_twilio(&app).await;
        let subscriber = TestReceiver::start().await;
        let webhook = create_webhook(
            &app,
            json!({ "url": subscriber.url, "events": ["InboundMessage"],
                    "ordering": "conversation" }),
        )
        .await;
        let webhook = webhook["id"].as_str().unwrap().to_owned();
        post_sms(&app, "SMwaited0", "waited 0").await;
        subscriber.wait_for(1, Duration::from_secs(5)).await;
        until_held(&app, &webhook, false).await;

        let mut lock = StreamLock::take(&app).await;
        let sid = twilio_sid("SMwaited1");
        let params = sms_params(&sid, "waited 1");
        let hold = async {
            // The message's transaction read the webhooks and waits for the lock.
            lock.until_waited_for().await;
            sqlx::query(
                "UPDATE webhooks SET backlog_after_seq = (SELECT max(seq) FROM events)
                 WHERE id = $1",
            )
            .bind(&webhook)
            .execute(&mut lock.conn)
            .await
            .unwrap();
            lock.release().await;
        };
        let (r, ()) = tokio::join!(app.post_twilio(&params, AUTH_TOKEN), hold);
        assert_eq!(r.status(), 200);
        let ids = feed_message_ids(&app).await;
        assert_eq!(ids.len(), 2);
        assert_eq!(
            delivered_to(&app, &ids[1]).await,
            Vec::<String>::new(),
            "the message got a delivery row after the webhook's place"
        );
        assert!(held_after(&app, &webhook).await.is_i64());

        // The dispatcher reads the hold at its next read of the webhooks (a change) and
        // delivers the backlog.
        create_webhook(
            &app,
            json!({ "url": subscriber.url, "events": ["OutboundMessage"] }),
        )
        .await;
        let got = subscriber.wait_for(2, Duration::from_secs(10)).await;
        assert!(String::from_utf8_lossy(&got[1].body).contains("waited 1"));
        subscriber.expect_exactly(2, QUIET).await;
        until_held(&app, &webhook, false).await;
    })
    .await;
}

/// A webhook on probation whose held delivery ended without a retry (its schedule gave up),
/// with nothing after its place yet, still gets the next message it wants: the top-up that
/// found nothing to write is not the last one. Before, the later messages stayed in the
/// stream until a restart.
async fn a_held_webhook_whose_delivery_gave_up_gets_the_next_message() {
    let app = spawn_app_with(|c| c.delivery_timeout = Duration::from_secs(1)).await;
    location_with_twilio(&app).await;
    let (subscriber, webhook) = hanging_webhook(&app, json!({ "retrySchedule": [] })).await;
    hold_after_first(&app, &subscriber, &webhook, "gaveup").await;
    let ids = feed_message_ids(&app).await;
    eventually(
        Duration::from_secs(10),
        "the first delivery given up",
        || async {
            let d = app
                .get_json(&format!("/v1/messages/{}/deliveries", ids[0]))
                .await;
            (d["data"][0]["status"] == "failed").then_some(())
        },
    )
    .await;
    subscriber.slow(Duration::ZERO);
    post_sms(&app, "SMgaveup1", "gaveup 1").await;
    let got = subscriber.wait_for(2, Duration::from_secs(10)).await;
    assert!(String::from_utf8_lossy(&got[1].body).contains("gaveup 1"));
}
