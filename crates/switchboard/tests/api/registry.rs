//! The registry's seam: the test-only channel (`src/channels/testchannel`, compiled with the
//! `test-channel` feature that only the tests turn on) is a folder and one line of
//! `channels::CHANNELS`, and from that alone it has its provider route, its configuration API,
//! its OpenAPI entry and its metric labels. No other file names it.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard::channels::testchannel::{sign, INBOUND_PATH, SIGNATURE_HEADER};

use crate::engine::create_webhook;
use crate::helpers::*;

pub(crate) const SECRET: &str = "test-channel-secret-0123456789";

/// `PUT /v1/locations/{location}/channels/testchannel` with `secret` and `addresses`.
pub(crate) async fn configure_test_channel(
    app: &TestApp,
    location: &str,
    secret: &str,
    addresses: &[&str],
) -> reqwest::Response {
    app.admin_send(
        reqwest::Method::PUT,
        &format!("/v1/locations/{location}/channels/testchannel"),
        json!({ "secret": secret, "addresses": addresses }),
    )
    .await
}

pub(crate) async fn post_signed(app: &TestApp, body: &Value, secret: &str) -> reqwest::Response {
    let bytes = serde_json::to_vec(body).unwrap();
    app.client
        .post(app.url(INBOUND_PATH))
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, sign(secret, &bytes))
        .body(bytes)
        .send()
        .await
        .unwrap()
}

async fn the_test_channel_gets_its_route_configuration_openapi_and_metrics() {
    let app = spawn_app().await;
    let location = app.create_location("Seam").await;

    // Its configuration API, through the generic route.
    let r = configure_test_channel(&app, &location, SECRET, &["room-1"]).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let short = configure_test_channel(&app, &location, "short", &["room-1"]).await;
    assert_eq!(short.status(), 422);
    let listed: Value = app
        .admin_get(&format!("/v1/locations/{location}/channels"))
        .await
        .json()
        .await
        .unwrap();
    let seen = &listed["data"][0];
    assert_eq!(seen["provider"], "testchannel", "{listed}");
    assert_eq!(seen["addresses"], json!(["room-1"]));
    assert_eq!(seen["secrets"]["secret"]["last4"], "6789");
    assert!(!listed.to_string().contains(SECRET));
    // Its addresses are claimed like phone numbers.
    let other = app.create_location("Other").await;
    let taken = configure_test_channel(&app, &other, SECRET, &["room-1"]).await;
    assert_eq!(taken.status(), 409);

    // Its route: a signed message is stored and delivered; a wrong signature is 403.
    let receiver = TestReceiver::start().await;
    create_webhook(
        &app,
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await;
    let message =
        json!({ "id": "t-1", "to": "room-1", "from": "+14155550123", "text": "through the seam" });
    let r = post_signed(&app, &message, SECRET).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{\"stored\":true}");
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    let event = got[0].json();
    assert_eq!(event["body"], "through the seam");
    assert_eq!(event["locationId"], location.as_str());
    let forged = post_signed(&app, &message, "another-secret-0123456789").await;
    assert_eq!(forged.status(), 403);
    app.expect_events(1).await;

    // Its metric label.
    let metrics = get_metrics(&app.client, &app.address).await;
    assert!(
        metrics.contains(
            "switchboard_provider_requests_rejected_total{provider=\"testchannel\",reason=\"invalid_signature\"} 1"
        ),
        "{metrics}"
    );

    // Its OpenAPI entries: the route and the provider of the configuration API.
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["paths"][INBOUND_PATH]["post"]["parameters"][0]["name"],
        "X-Testchannel-Signature"
    );
    let providers = &doc["paths"]["/v1/locations/{locationId}/channels/{provider}"]["put"]
        ["parameters"][1]["schema"]["enum"];
    assert_eq!(providers, &json!(["twilio", "email", "testchannel"]));
}

crate::both_stores!(the_test_channel_gets_its_route_configuration_openapi_and_metrics);
