//! The events feed on PostgreSQL, read while several nodes ingest: a cursor never passes an
//! event that commits later (events are numbered in commit order). A planted bug that removed
//! the ordering lock passed the whole suite, which read the feed only after every write.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::helpers::*;

/// The webhook ids of every event after `after`, following the cursor; the last cursor.
async fn read_from(client: &reqwest::Client, node: &str, after: String) -> (Vec<String>, String) {
    let (events, last) = read_events(client, node, after, 100).await;
    let ids = events
        .iter()
        .map(|e| e["webhookId"].as_str().unwrap().to_owned())
        .collect();
    (ids, last)
}

#[tokio::test]
async fn the_feed_read_while_three_nodes_ingest_skips_no_event() {
    let Some(database) = postgres_schema_for_nodes().await else {
        return;
    };
    let receiver = TestReceiver::start().await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let env = [
        ("SWITCHBOARD_DATABASE_URL", database.clone()),
        ("SWITCHBOARD_DATABASE_MAX_CONNECTIONS", "8".to_owned()),
    ];
    let mut nodes = Vec::new();
    for dir in &dirs {
        nodes.push(Node::start(dir.path(), free_port(), &env).await);
    }
    nodes[0].configure(&receiver).await;
    let addresses: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();

    const TOTAL: usize = 1500;
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();
    // The reader follows the feed on the first node while the writes go on.
    let reader = {
        let (client, node, done) = (client.clone(), addresses[0].clone(), done.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = "0".to_owned();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let (ids, cursor) = read_from(&client, &node, after).await;
                seen.extend(ids);
                after = cursor;
                if finished {
                    return seen;
                }
            }
        })
    };
    let mut writers = Vec::new();
    for _ in 0..24 {
        let (client, addresses, next) = (client.clone(), addresses.clone(), next.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= TOTAL {
                    return;
                }
                let sid = format!("SM{i:032}");
                let from = format!("+1212555{:04}", i % 700);
                let mut params = sms_params(&sid, "feed");
                for p in params.iter_mut().filter(|p| p.0 == "From") {
                    p.1 = &from;
                }
                let url = format!(
                    "{}{}",
                    addresses[i % 3],
                    switchboard::channels::twilio::INBOUND_PATH
                );
                let r = post_twilio_to(&client, &url, &params, AUTH_TOKEN).await;
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    let (all, _) = read_from(&client, &addresses[0], "0".to_owned()).await;
    assert_eq!(all.len(), TOTAL);
    let all: BTreeSet<String> = all.into_iter().collect();
    let seen_set: BTreeSet<String> = seen.iter().cloned().collect();
    let skipped: Vec<&String> = all.difference(&seen_set).collect();
    println!(
        "{TOTAL} messages over 3 nodes; the reader following the cursor meanwhile saw {} events, skipped {}",
        seen.len(),
        skipped.len()
    );
    assert!(
        skipped.is_empty(),
        "the cursor passed {} events that committed later",
        skipped.len()
    );
    assert_eq!(seen.len(), TOTAL, "an event was read twice");
}
