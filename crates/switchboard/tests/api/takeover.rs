//! On PostgreSQL, a node killed (SIGKILL) while a delivery is in flight: another node takes the
//! delivery over once its lease runs out, and the subscriber gets it again with the same
//! `webhook-id`. (The SQLite counterpart is in `restart`.)

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn a_delivery_in_flight_on_a_killed_node_is_taken_over_by_another() {
    let Some(database) = postgres_schema_for_nodes().await else {
        return;
    };
    let env = [
        ("SWITCHBOARD_DATABASE_URL", database.as_str()),
        ("SWITCHBOARD_DELIVERY_LEASE", "3s"),
        ("SWITCHBOARD_DELIVERY_TIMEOUT", "2s"),
    ];
    let receiver = TestReceiver::start().await;
    // The first attempt never gets its answer: its node dies with it in flight.
    receiver.script(&[Reply::Hang]);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = Node::start(dir_a.path(), free_port(), &env).await;
    first.configure(&receiver).await;
    assert_eq!(
        first.post_sms("SMtakeover", "in flight").await.status(),
        200
    );
    let sent = receiver.wait_for(1, Duration::from_secs(5)).await[0].clone();
    drop(first); // SIGKILL

    let second = Node::start(dir_b.path(), free_port(), &env).await;
    let again = receiver.wait_for(2, Duration::from_secs(15)).await[1].clone();
    assert_eq!(again.header("webhook-id"), sent.header("webhook-id"));
    assert_eq!(again.body, sent.body);
    let message_id = sent.json()["messageId"].as_str().unwrap().to_owned();
    let report = eventually(Duration::from_secs(5), "the delivery recorded", || async {
        let report = second
            .get_json(&format!("/v1/messages/{message_id}/deliveries"))
            .await;
        (report["data"][0]["status"] == "delivered").then_some(report)
    })
    .await;
    // The killed node's attempt was never recorded; the one that took over was, once.
    assert_eq!(
        report["data"][0]["attempts"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    receiver.expect_exactly(2, Duration::from_secs(4)).await;
}
