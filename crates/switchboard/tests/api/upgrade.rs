//! Upgrading in place: a database as the release before contact identities left it (each
//! contact's phone number in its own row, no `contact_identities`) is migrated when the new
//! release starts on it, its contacts get their phone identity, and it keeps serving: the same
//! customer's next SMS lands on the contact and conversation it had.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// Turn the current schema back into the previous release's: each contact's first identity in
/// its own columns, no `contact_identities`, its migration not applied. (Migrations before it
/// are the files the previous release ran, unchanged: their checksums are checked at start.)
const DOWNGRADE: [&str; 4] = [
    "UPDATE contacts SET
         identity_kind = (SELECT ci.kind FROM contact_identities ci WHERE ci.contact_id = contacts.id
                          ORDER BY ci.created_at, ci.kind LIMIT 1),
         identity = (SELECT ci.value FROM contact_identities ci WHERE ci.contact_id = contacts.id
                     ORDER BY ci.created_at, ci.kind LIMIT 1)
     WHERE identity_kind = 'contact'",
    "DROP TABLE contact_identities",
    "DELETE FROM _sqlx_migrations WHERE description = 'contact identities'",
    "SELECT COUNT(*) FROM contacts WHERE identity_kind = 'phone'",
];

async fn downgrade<C: sqlx::Connection>(conn: &mut C)
where
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    i64: for<'r> sqlx::Decode<'r, C::Database> + sqlx::Type<C::Database>,
    for<'q> <C::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    for statement in &DOWNGRADE[..3] {
        sqlx::query(statement).execute(&mut *conn).await.unwrap();
    }
    let phones: i64 = sqlx::query_scalar(DOWNGRADE[3])
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        phones, 1,
        "the customer's contact holds its phone number again"
    );
}

/// One SMS from the customer through `node`; its event. (A delivery of an earlier one may
/// come again after a restart: the event is found by its body.)
async fn sms(node: &Node, receiver: &TestReceiver, sid: &str) -> Value {
    let client = reqwest::Client::new();
    let url = format!(
        "{}{}",
        node.address,
        switchboard::channels::twilio::INBOUND_PATH
    );
    let body = format!("upgrade {sid}");
    let sid = twilio_sid(sid);
    let r = post_twilio_to(&client, &url, &sms_params(&sid, &body), AUTH_TOKEN).await;
    assert_eq!(r.status(), 200);
    eventually(Duration::from_secs(10), "the event delivered", || async {
        receiver
            .received()
            .iter()
            .map(|d| d.json())
            .find(|e| e["body"] == body.as_str())
    })
    .await
}

async fn upgrade(database_url: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(&str, String)> = database_url
        .iter()
        .map(|url| ("SWITCHBOARD_DATABASE_URL", url.clone()))
        .collect();
    let receiver = TestReceiver::start().await;
    let node = Node::start(dir.path(), free_port(), &env).await;
    node.configure(&receiver).await;
    let before = sms(&node, &receiver, "SMupgrade1").await;
    drop(node);

    match &database_url {
        Some(url) => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            downgrade(&mut conn).await;
        }
        None => {
            use sqlx::Connection;
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(dir.path().join("switchboard.db"));
            let mut conn = sqlx::SqliteConnection::connect_with(&options)
                .await
                .unwrap();
            downgrade(&mut conn).await;
        }
    }

    let node = Node::start(dir.path(), free_port(), &env).await;
    let after = sms(&node, &receiver, "SMupgrade2").await;
    assert_eq!(after["contactId"], before["contactId"], "{after}");
    assert_eq!(after["conversationId"], before["conversationId"]);
}

#[tokio::test]
async fn an_embedded_database_of_the_previous_release_upgrades_in_place() {
    upgrade(None).await;
}

#[tokio::test]
async fn a_postgres_database_of_the_previous_release_upgrades_in_place() {
    let Some(url) = postgres_schema_for_nodes().await else {
        return;
    };
    upgrade(Some(url)).await;
}
