//! Many nodes on one PostgreSQL database: real binaries, one killed with SIGKILL under load;
//! the same Twilio request at two nodes at once; API-only and dispatcher-only nodes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

/// Every event in the feed, following the cursor.
async fn all_events(node: &Node) -> Vec<Value> {
    let mut after = "0".to_owned();
    let mut events = Vec::new();
    loop {
        let page = node
            .get_json(&format!("/v1/events?after={after}&limit=1000"))
            .await;
        let data = page["data"].as_array().unwrap();
        if data.is_empty() {
            return events;
        }
        events.extend(data.iter().map(|e| e["event"].clone()));
        after = page["next"].as_str().unwrap().to_owned();
    }
}

/// Settings every cluster node gets, with the shared database.
fn cluster_env(database: &str) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&str, String)> = CLUSTER_ENV
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .collect();
    env.push(("SWITCHBOARD_DATABASE_URL", database.to_owned()));
    env
}

const CLUSTER_ENV: [(&str, &str); 4] = [
    ("SWITCHBOARD_DELIVERY_TIMEOUT", "2s"),
    ("SWITCHBOARD_DELIVERY_LEASE", "4s"),
    (
        "SWITCHBOARD_RETRY_SCHEDULE",
        "200ms,500ms,1s,1s,1s,1s,1s,1s",
    ),
    ("SWITCHBOARD_DATABASE_MAX_CONNECTIONS", "8"),
];

#[tokio::test]
async fn three_nodes_2000_messages_one_killed_nothing_lost_nothing_doubled() {
    let Some(database) = postgres_schema_for_nodes().await else {
        return;
    };
    let receiver = Arc::new(TestReceiver::start().await);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let env = cluster_env(&database);
    let mut nodes = Vec::new();
    for dir in &dirs {
        nodes.push(Node::start(dir.path(), free_port(), &env).await);
    }
    nodes[0].configure(&receiver).await;
    let addresses: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();

    const TOTAL: usize = 2000;
    const CONCURRENCY: usize = 16;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let acked = Arc::new(std::sync::Mutex::new(HashMap::<usize, String>::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let mut victim = Some(nodes.remove(2));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, addresses, acked, next) = (
            client.clone(),
            addresses.clone(),
            acked.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= TOTAL {
                    return;
                }
                let sid = format!("SM{i:032}");
                let body = format!("cluster message {i}");
                // Distinct senders: many contacts and conversations.
                let from = format!("+1212555{:04}", i % 500);
                let mut params = sms_params(&sid, &body);
                for p in params.iter_mut().filter(|p| p.0 == "From") {
                    p.1 = &from;
                }
                // Like Twilio's Fallback URL: a node that fails is followed by another.
                for attempt in 0..6 {
                    let node = &addresses[(i + attempt) % addresses.len()];
                    let url = format!("{node}/conversations/providers/twilio/inbound_message");
                    let owned: Vec<(String, String)> = params
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    let sig = switchboard::channels::twilio::signature::sign(
                        switchboard::channels::twilio::signature::Algorithm::HmacSha1,
                        AUTH_TOKEN.as_bytes(),
                        &url,
                        &owned,
                    );
                    let form = form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(&params)
                        .finish();
                    let answer = client
                        .post(&url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .header("x-twilio-signature", sig)
                        .body(form)
                        .send()
                        .await;
                    if matches!(&answer, Ok(r) if r.status() == 200) {
                        acked.lock().unwrap().insert(i, body.clone());
                        break;
                    }
                }
            }
        }));
    }
    // Halfway: SIGKILL the third node, with its requests and deliveries in flight.
    while next.load(std::sync::atomic::Ordering::SeqCst) < TOTAL / 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(mut node) = victim.take() {
        node.child.kill().unwrap();
        node.child.wait().unwrap();
        killed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    for w in workers {
        w.await.unwrap();
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    let acked = acked.lock().unwrap().clone();
    assert!(killed.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(
        acked.len(),
        TOTAL,
        "every message was acknowledged by some node"
    );

    // Delivered at least once: every acknowledged body reaches the subscriber.
    let expected: HashSet<&str> = acked.values().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let received = loop {
        let received = receiver.received();
        let bodies: HashSet<String> = received
            .iter()
            .map(|r| r.json()["body"].as_str().unwrap().to_owned())
            .collect();
        if expected.iter().all(|b| bodies.contains(*b)) {
            break received;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {TOTAL} delivered after 60 s",
            bodies.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delivered_secs = started.elapsed().as_secs_f64();

    // Stored exactly once: one event per acknowledged message, none unacknowledged.
    let events = all_events(&nodes[0]).await;
    let mut per_body: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *per_body
            .entry(e["body"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(events.len(), TOTAL, "events stored");
    assert!(
        per_body.values().all(|n| *n == 1),
        "a message was stored twice"
    );
    assert!(expected.iter().all(|b| per_body.contains_key(*b)));
    let message_ids: HashSet<&str> = events
        .iter()
        .map(|e| e["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(message_ids.len(), TOTAL);
    // One contact per sender, whichever nodes raced to file its first messages.
    let mut contacts_of: HashMap<usize, HashSet<&str>> = HashMap::new();
    for e in &events {
        let i: usize = e["body"].as_str().unwrap()["cluster message ".len()..]
            .parse()
            .unwrap();
        contacts_of
            .entry(i % 500)
            .or_default()
            .insert(e["contactId"].as_str().unwrap());
    }
    assert_eq!(contacts_of.len(), 500);
    let split: Vec<_> = contacts_of.values().filter(|c| c.len() > 1).collect();
    assert!(
        split.is_empty(),
        "senders filed under more than one contact: {split:?}"
    );

    // Repeats after the kill are the same delivery again (same webhookId), counted here.
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for r in &received {
        *per_id.entry(r.header("webhook-id")).or_default() += 1;
    }
    let repeated: usize = per_id.values().map(|n| n - 1).sum();
    assert_eq!(per_id.len(), TOTAL);
    println!(
        "cluster: {TOTAL} messages acknowledged over 3 nodes (one SIGKILLed halfway) in {ingest_secs:.1} s, \
         all delivered after {delivered_secs:.1} s; {} deliveries received, {repeated} repeated after the kill (same webhookId)",
        received.len()
    );
}

/// Two nodes on one PostgreSQL schema, configured with a webhook to the receiver; None when
/// PostgreSQL is not there (the suite says so).
async fn two_nodes() -> Option<(TestReceiver, Node, Node, Vec<tempfile::TempDir>)> {
    let database = postgres_schema_for_nodes().await?;
    let receiver = TestReceiver::start().await;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let env = cluster_env(&database);
    let a = Node::start(dirs[0].path(), free_port(), &env).await;
    let b = Node::start(dirs[1].path(), free_port(), &env).await;
    a.configure(&receiver).await;
    Some((receiver, a, b, dirs))
}

/// A new sender's first messages arrive at two nodes at the same moment: each node's
/// transaction creates a contact for the phone number, one of them finds the number taken when
/// it writes it and files its message under the other's contact. One contact per sender.
#[tokio::test]
async fn a_new_sender_at_two_nodes_at_once_is_one_contact() {
    let Some((receiver, a, b, _dirs)) = two_nodes().await else {
        return;
    };
    let client = reqwest::Client::new();
    const SENDERS: usize = 30;
    for sender in 0..SENDERS {
        let from = format!("+1212666{sender:04}");
        let posts = (0..4).map(|k| {
            let node = if k % 2 == 0 { &a } else { &b };
            let url = format!(
                "{}/conversations/providers/twilio/inbound_message",
                node.address
            );
            let sid = format!("SMnew{sender}x{k}");
            let body = format!("sender {sender} message {k}");
            let from = from.clone();
            let client = client.clone();
            async move {
                let mut params = sms_params(&sid, &body);
                for p in params.iter_mut().filter(|p| p.0 == "From") {
                    p.1 = &from;
                }
                post_twilio_to(&client, &url, &params, AUTH_TOKEN)
                    .await
                    .status()
            }
        });
        for status in futures_util::future::join_all(posts).await {
            assert_eq!(status, 200);
        }
    }
    let got = receiver
        .wait_for(SENDERS * 4, Duration::from_secs(20))
        .await;
    let mut contacts_of: HashMap<usize, HashSet<String>> = HashMap::new();
    for d in &got {
        let event = d.json();
        let sender: usize = event["body"].as_str().unwrap()["sender ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        contacts_of
            .entry(sender)
            .or_default()
            .insert(event["contactId"].as_str().unwrap().to_owned());
    }
    assert_eq!(contacts_of.len(), SENDERS);
    let split: Vec<_> = contacts_of.iter().filter(|(_, c)| c.len() > 1).collect();
    assert!(
        split.is_empty(),
        "senders filed under more than one contact: {split:?}"
    );
}

#[tokio::test]
async fn the_same_twilio_request_at_two_nodes_at_once_is_one_message() {
    let Some((receiver, a, b, _dirs)) = two_nodes().await else {
        return;
    };
    let client = reqwest::Client::new();
    for round in 0..20 {
        let sid = format!("SMrace{round}");
        let body = format!("raced {round}");
        let params = sms_params(&sid, &body);
        let url_a = format!(
            "{}/conversations/providers/twilio/inbound_message",
            a.address
        );
        let url_b = format!(
            "{}/conversations/providers/twilio/inbound_message",
            b.address
        );
        let (ra, rb) = tokio::join!(
            post_twilio_to(&client, &url_a, &params, AUTH_TOKEN),
            post_twilio_to(&client, &url_b, &params, AUTH_TOKEN)
        );
        assert_eq!(
            (ra.status().as_u16(), rb.status().as_u16()),
            (200, 200),
            "round {round}"
        );
    }
    let got = receiver
        .expect_exactly(20, Duration::from_millis(800))
        .await;
    let bodies: HashSet<String> = got
        .iter()
        .map(|r| r.json()["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies.len(), 20);
    let events = all_events(&b).await;
    assert_eq!(events.len(), 20, "one event per message");
}

#[tokio::test]
async fn an_api_node_stores_and_a_dispatcher_node_delivers() {
    let Some(database) = postgres_schema_for_nodes().await else {
        return;
    };
    let receiver = TestReceiver::start().await;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut env = cluster_env(&database);
    // Polling every 30 s: a delivery within that proves the NOTIFY wake-up.
    env.push(("SWITCHBOARD_POLL_INTERVAL", "30s".into()));
    let mut api_env = env.clone();
    api_env.push(("SWITCHBOARD_ROLE", "api".into()));
    let mut dispatcher_env = env.clone();
    dispatcher_env.push(("SWITCHBOARD_ROLE", "dispatcher".into()));
    let api = Node::start(dirs[0].path(), free_port(), &api_env).await;
    let dispatcher = Node::start(dirs[1].path(), free_port(), &dispatcher_env).await;
    api.configure(&receiver).await;
    // Let the dispatcher's first poll pass.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::new();
    let url = format!(
        "{}/conversations/providers/twilio/inbound_message",
        api.address
    );
    let sent = Instant::now();
    let r = post_twilio_to(
        &client,
        &url,
        &sms_params("SMsplit", "stored here, sent there"),
        AUTH_TOKEN,
    )
    .await;
    assert_eq!(r.status(), 200);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert!(sent.elapsed() < Duration::from_secs(10));
    assert_eq!(got[0].json()["body"], "stored here, sent there");
    // The dispatcher node serves health and metrics, not the API or provider routes.
    let health = client
        .get(format!("{}/healthz", dispatcher.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Counted once the dispatcher has recorded the attempt, a moment after the subscriber
    // answered.
    eventually(Duration::from_secs(5), "the delivery counted", || async {
        let metrics = get_metrics(&client, &dispatcher.address).await;
        metrics
            .contains("switchboard_delivery_attempts_total{outcome=\"delivered\"} 1")
            .then_some(())
    })
    .await;
    let api_route = client
        .post(format!(
            "{}/conversations/providers/twilio/inbound_message",
            dispatcher.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(api_route.status(), 404);
    // Both nodes share the keys: the signing key the API serves signed the delivery.
    let keys = api.get_json("/v1/signing-keys").await;
    let key = switchboard_events::ed25519::public_key_from_pem(keys["ed25519"].as_str().unwrap())
        .unwrap();
    assert!(switchboard_events::ed25519::verify(
        &key,
        &got[0].body,
        got[0].header("x-ghl-signature")
    )
    .is_ok());
}
