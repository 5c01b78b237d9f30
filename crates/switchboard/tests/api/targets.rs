//! Webhook targets stay off private networks at delivery time too, in the real binary: a name
//! that resolves to a private address by then is refused, and proxy settings in the
//! environment cannot route a delivery past the check.

use std::ffi::OsStr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// The port of a test server's URL.
fn port_of(url: &str) -> u16 {
    reqwest::Url::parse(url).unwrap().port().unwrap()
}

#[tokio::test]
async fn a_name_that_resolves_to_a_private_address_by_delivery_time_is_refused_then() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    let receiver = TestReceiver::start().await;
    let hook = format!("http://rebind.test:{}/hook", port_of(&receiver.url));
    let private = [("SWITCHBOARD_ALLOW_PRIVATE_TARGETS", "false")];
    let args = [OsStr::new("--config"), config.as_os_str()];

    // Public when the webhook is created...
    std::fs::write(
        &config,
        "[dns_overrides]\n\"rebind.test\" = [\"93.184.215.14\"]\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let server = Node::start_with_args(&data, port, &args, &private).await;
    let client = reqwest::Client::new();
    let admin = |path: &str, body: Value| {
        client
            .post(format!("{}{path}", server.address))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let location: Value = admin("/v1/locations", json!({ "name": "L" }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let channel = client
        .put(format!(
            "{}/v1/locations/{}/channels/twilio",
            server.address,
            location["id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN, "phoneNumbers": [BUSINESS_NUMBER] }))
        .send()
        .await
        .unwrap();
    assert_eq!(channel.status(), 200);
    let created = admin(
        "/v1/webhooks",
        json!({ "url": hook, "events": ["InboundMessage"] }),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    drop(server);

    // ...loopback when the delivery is sent.
    std::fs::write(
        &config,
        "[dns_overrides]\n\"rebind.test\" = [\"127.0.0.1\"]\n",
    )
    .unwrap();
    let server = Node::start_with_args(&data, port, &args, &private).await;
    let ack = server.post_sms("SMrebind", "where to?").await;
    assert_eq!(ack.status(), 200);
    let events = server.get_json("/v1/events").await;
    let message_id = events["data"][0]["event"]["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    let delivery = eventually(Duration::from_secs(10), "the attempt recorded", || async {
        let report = server
            .get_json(&format!("/v1/messages/{message_id}/deliveries"))
            .await;
        // A webhook never tried has its first delivery written from the stream, just after.
        let d = report["data"][0].clone();
        d["attempts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(d)
    })
    .await;
    let attempt = &delivery["attempts"][0];
    assert_eq!(attempt["errorKind"], "refused target", "{delivery}");
    assert!(
        attempt["error"].as_str().unwrap().contains("non-public"),
        "{delivery}"
    );
    receiver.expect_exactly(0, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn proxy_settings_in_the_environment_are_not_used_for_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = TestReceiver::start().await;
    // Would receive the deliveries if the client went through the environment's proxy.
    let proxy = TestReceiver::start().await;
    let proxy_url = format!("http://127.0.0.1:{}", port_of(&proxy.url));
    let server = Node::start(
        dir.path(),
        free_port(),
        &[
            ("HTTP_PROXY", proxy_url.as_str()),
            ("http_proxy", proxy_url.as_str()),
            ("HTTPS_PROXY", proxy_url.as_str()),
            ("ALL_PROXY", proxy_url.as_str()),
            // Whatever the machine running the tests has: loopback is not exempted.
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ],
    )
    .await;
    server.configure(&receiver).await;
    let ack = server.post_sms("SMdirect", "straight there").await;
    assert_eq!(ack.status(), 200);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].json()["body"], "straight there");
    proxy.expect_exactly(0, Duration::from_millis(300)).await;
}
