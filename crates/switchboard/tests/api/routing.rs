//! One request, several locations: a request verified with a secret that several locations
//! share carries facts for each of them (Meta signs one request for several pages with one app
//! secret). Each fact is filed under the location that claims its address, only when that
//! location's account holds the secret that verified the request; a fact for an address no
//! location claims, or for one holding another secret, is skipped and counted, and the others
//! are filed. Shown through the test channel.

use std::time::Duration;

use serde_json::{json, Value};

use crate::engine::create_webhook;
use crate::helpers::*;
use crate::registry::{configure_test_channel, post_signed, SECRET};

async fn location_with(app: &TestApp, name: &str, secret: &str, address: &str) -> String {
    let location = app.create_location(name).await;
    let r = configure_test_channel(app, &location, secret, &[address]).await;
    assert_eq!(r.status(), 200);
    location
}

async fn facts_go_to_the_locations_that_share_the_requests_secret() {
    let app = spawn_app().await;
    let first = location_with(&app, "First", SECRET, "room-1").await;
    let second = location_with(&app, "Second", SECRET, "room-2").await;
    location_with(&app, "Other", "another-secret-0123456789", "room-3").await;
    let receiver = TestReceiver::start().await;
    create_webhook(
        &app,
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await;

    let message = json!({
        "id": "m-1", "to": "room-1", "from": "+14155550123", "text": "for the first",
        "others": [
            { "id": "m-2", "to": "room-2", "from": "+14155550124", "text": "for the second" },
            { "id": "m-3", "to": "room-3", "from": "+14155550125", "text": "another secret" },
            { "id": "m-9", "to": "room-9", "from": "+14155550126", "text": "nobody's" },
        ]
    });
    let r = post_signed(&app, &message, SECRET).await;
    assert_eq!(r.status(), 200);
    let got = receiver.expect_exactly(2, Duration::from_millis(500)).await;
    let mut filed: Vec<(String, String)> = got
        .iter()
        .map(|d| {
            let e: Value = d.json();
            (
                e["body"].as_str().unwrap().to_owned(),
                e["locationId"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    filed.sort();
    assert_eq!(
        filed,
        [
            ("for the first".to_owned(), first),
            ("for the second".to_owned(), second)
        ]
    );
    app.expect_events(2).await;
    let metrics = get_metrics(&app.client, &app.address).await;
    assert!(
        metrics.contains("switchboard_provider_facts_skipped_total{provider=\"testchannel\"} 2"),
        "{metrics}"
    );
}

/// Plant a failure in the app's own database: inserting the message with provider id `m-2`
/// raises an error (a trigger), as a write that cannot be made would.
async fn fail_the_insert_of_m2(app: &TestApp) {
    use sqlx::Connection;
    match &app.database_url {
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            for statement in [
                "CREATE FUNCTION planted_failure() RETURNS trigger AS $$
                 BEGIN
                     IF NEW.provider_message_id = 'm-2' THEN RAISE EXCEPTION 'planted failure'; END IF;
                     RETURN NEW;
                 END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER planted_failure BEFORE INSERT ON messages
                 FOR EACH ROW EXECUTE FUNCTION planted_failure()",
            ] {
                sqlx::query(statement).execute(&mut conn).await.unwrap();
            }
        }
        None => {
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(app.sqlite_path());
            let mut conn = sqlx::SqliteConnection::connect_with(&options)
                .await
                .unwrap();
            sqlx::query(
                "CREATE TRIGGER planted_failure BEFORE INSERT ON messages
                 WHEN NEW.provider_message_id = 'm-2'
                 BEGIN SELECT RAISE(ABORT, 'planted failure'); END",
            )
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
}

/// When the second location's fact cannot be filed, the first location's is not filed either:
/// the request is refused (the provider sends it again) and nothing of it is stored.
async fn a_request_for_two_locations_is_filed_whole_or_not_at_all() {
    let app = spawn_app().await;
    location_with(&app, "First", SECRET, "room-1").await;
    location_with(&app, "Second", SECRET, "room-2").await;
    fail_the_insert_of_m2(&app).await;
    let message = json!({
        "id": "m-1", "to": "room-1", "from": "+14155550123", "text": "for the first",
        "others": [{ "id": "m-2", "to": "room-2", "from": "+14155550124", "text": "for the second" }]
    });
    let r = post_signed(&app, &message, SECRET).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    app.expect_events(0).await;
    // Without the second location's fact, the first is filed.
    let alone = json!({ "id": "m-1", "to": "room-1", "from": "+14155550123", "text": "alone" });
    assert_eq!(post_signed(&app, &alone, SECRET).await.status(), 200);
    app.expect_events(1).await;
}

crate::both_stores!(
    facts_go_to_the_locations_that_share_the_requests_secret,
    a_request_for_two_locations_is_filed_whole_or_not_at_all,
);
