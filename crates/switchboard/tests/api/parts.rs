//! One request's facts for several locations (a provider secret that several locations share)
//! commit together or not at all: the store is given them as parts of one write, and when one
//! part cannot be filed the others are rolled back with it. Checked on each store directly.

use serde_json::Value;
use switchboard::domain::Fact;
use switchboard::store::{IngestContext, Store};

use crate::helpers::*;

fn message(sid: &str) -> Fact {
    Fact::Message(new_sms("parts", sid, &format!("part {sid}")))
}

/// The bodies of every stored event with the location each was filed under.
async fn stored(store: &dyn Store) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = store
        .list_events(0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|(_, payload)| {
            let event: Value = serde_json::from_slice(payload).unwrap();
            (
                event["body"].as_str().unwrap().to_owned(),
                event["locationId"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    all.sort();
    all
}

async fn parts_commit_together_or_not_at_all(store: &dyn Store) {
    let a = store.create_location("A", 1).await.unwrap().id;
    let b = store.create_location("B", 1).await.unwrap().id;
    let context = IngestContext {
        app_id: None,
        now: 2,
        lease_until: None,
        handoffs: None,
        call_recording_wait_ms: 0,
        nonce: None,
        mail_flood_cap: None,
    };
    // Both locations' facts in one write: each filed under its own location.
    let outcome = store
        .ingest_parts(
            vec![
                (a.clone(), vec![message("P1")]),
                (b.clone(), vec![message("P2")]),
            ],
            &context,
        )
        .await
        .unwrap();
    assert_eq!(outcome.message_ids.len(), 2);
    let expected = vec![
        ("part P1".to_owned(), a.clone()),
        ("part P2".to_owned(), b.clone()),
    ];
    assert_eq!(stored(store).await, expected);

    // The second part cannot be filed (its location does not exist): the first part is rolled
    // back with it, and nothing of the write is stored.
    let failed = store
        .ingest_parts(
            vec![
                (a.clone(), vec![message("P3")]),
                ("AAAAAAAAAAAAAAAAAAAA".to_owned(), vec![message("P4")]),
            ],
            &context,
        )
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(stored(store).await, expected);

    // The first part alone is filed.
    store
        .ingest_parts(vec![(a.clone(), vec![message("P3")])], &context)
        .await
        .unwrap();
    assert_eq!(stored(store).await.len(), 3);
}

#[tokio::test]
async fn an_embedded_store_commits_a_requests_parts_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let store = switchboard::store::sqlite::SqliteStore::open(
        &url,
        switchboard::config::SqliteSynchronous::Full,
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    parts_commit_together_or_not_at_all(&store).await;
}

#[tokio::test]
async fn postgres_commits_a_requests_parts_together_or_not_at_all() {
    let Some(url) = postgres_schema_for_nodes().await else {
        return;
    };
    let store = switchboard::store::postgres::PostgresStore::open(&url, 4)
        .await
        .unwrap();
    parts_commit_together_or_not_at_all(&store).await;
}
