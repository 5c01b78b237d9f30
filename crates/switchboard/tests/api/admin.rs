//! The management API: authentication, validation, and what it answers to bad input.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

async fn v1_needs_the_admin_token() {
    let app = spawn_app().await;
    for path in ["/v1/webhooks", "/v1/signing-keys", "/v1/locations/x"] {
        let none = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path}");
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        let body: Value = none.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        let wrong = app
            .client
            .get(app.url(path))
            .bearer_auth("wrong-token-wrong-token")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        // The scheme is case-insensitive; the token is not.
        for (header, status) in [
            (format!("bearer {ADMIN_TOKEN}"), 200),
            (format!("BEARER {ADMIN_TOKEN}"), 200),
            (format!("Bearer {}", ADMIN_TOKEN.to_uppercase()), 401),
            (format!("Basic {ADMIN_TOKEN}"), 401),
            (ADMIN_TOKEN.to_owned(), 401),
        ] {
            let r = app
                .client
                .get(app.url("/v1/webhooks"))
                .header("authorization", &header)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), status, "{header}");
        }
    }
    let create = app
        .client
        .post(app.url("/v1/locations"))
        .json(&json!({ "name": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 401);
    // Health needs no token.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

async fn locations_and_twilio_channels() {
    let app = spawn_app().await;
    let r = app
        .admin_send(
            reqwest::Method::POST,
            "/v1/locations",
            json!({ "name": "Acme" }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let location: Value = r.json().await.unwrap();
    let id = location["id"].as_str().unwrap();
    assert_eq!(id.len(), 20);
    assert_eq!(location["name"], "Acme");
    let fetched: Value = app
        .admin_get(&format!("/v1/locations/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, location);

    let r = app.connect_twilio(id, &["+1 (415) 555-0100"]).await;
    assert_eq!(r.status(), 200);
    let channel: Value = r.json().await.unwrap();
    assert_eq!(channel["phoneNumbers"], json!(["+14155550100"]));
    assert!(channel.get("authToken").is_none());

    // A number belongs to at most one location.
    let other = app.create_location("Other").await;
    let conflict = app.connect_twilio(&other, &["+14155550100"]).await;
    assert_eq!(conflict.status(), 409);
    let body: Value = conflict.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict");
    // Re-putting the same location's numbers is fine.
    assert_eq!(
        app.connect_twilio(id, &["+14155550100", "+14155550101"])
            .await
            .status(),
        200
    );

    let missing = app.connect_twilio("AAAAAAAAAAAAAAAAAAAA", &[]).await;
    assert_eq!(missing.status(), 404);

    let bad_number = app.connect_twilio(id, &["4155550100"]).await;
    assert_eq!(bad_number.status(), 422);
    let body: Value = bad_number.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_phone_number");

    let bad_sid = app
        .admin_send(
            reqwest::Method::PUT,
            &format!("/v1/locations/{id}/channels/twilio"),
            json!({ "accountSid": "AC123", "authToken": "t", "phoneNumbers": [] }),
        )
        .await;
    assert_eq!(bad_sid.status(), 422);
}

/// What is connected can be read back (never the auth token or signing secrets), and a
/// connection can be undone: its numbers are then free, and requests for them are 404.
async fn locations_and_connections_can_be_listed_read_back_and_disconnected() {
    const OTHER_ACCOUNT: &str = "AC44444444444444444444444444444444";
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let (first, _) = app.standard_setup(&receiver).await;
    let second = app.create_location("Second").await;
    let listed: Value = app.admin_get("/v1/locations").await.json().await.unwrap();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [first.as_str(), second.as_str()], "{listed}");
    assert_eq!(listed["data"][1]["name"], "Second");

    let put = app
        .admin_send(
            reqwest::Method::PUT,
            &format!("/v1/locations/{second}/channels/twilio"),
            json!({
                "accountSid": OTHER_ACCOUNT, "authToken": "second-token-secret",
                "phoneNumbers": ["+14155550177", "+14155550166"],
                "signingKeys": { "key-1": "signing-secret-value" },
                "voice": { "forwardTo": "+14155550111", "userId": "staff-7" },
            }),
        )
        .await;
    assert_eq!(put.status(), 200);
    let put: Value = put.json().await.unwrap();
    let got = app
        .admin_get(&format!("/v1/locations/{second}/channels/twilio"))
        .await;
    assert_eq!(got.status(), 200);
    let text = got.text().await.unwrap();
    assert!(
        !text.contains("second-token-secret") && !text.contains("signing-secret-value"),
        "{text}"
    );
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got["accountSid"], OTHER_ACCOUNT);
    assert_eq!(got["phoneNumbers"], json!(["+14155550166", "+14155550177"]));
    assert_eq!(got["signingKeyIds"], json!(["key-1"]));
    assert_eq!(got["voice"]["forwardTo"], "+14155550111");
    assert_eq!(got["voice"]["userId"], "staff-7");
    assert_eq!(got["voice"], put["voice"]);
    let none = app
        .admin_get("/v1/locations/AAAAAAAAAAAAAAAAAAAA/channels/twilio")
        .await;
    assert_eq!(none.status(), 404);

    // The first location's number works, until it is disconnected.
    assert_eq!(
        app.post_twilio(&sms_params("SMbefore", "hi"), AUTH_TOKEN)
            .await
            .status(),
        200
    );
    receiver.expect_exactly(1, Duration::from_millis(300)).await;
    app.expect_events(1).await;
    let path = format!("/v1/locations/{first}/channels/twilio");
    let deleted = app
        .admin_send(reqwest::Method::DELETE, &path, json!(null))
        .await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(app.admin_get(&path).await.status(), 404);
    let again = app
        .admin_send(reqwest::Method::DELETE, &path, json!(null))
        .await;
    assert_eq!(again.status(), 404);
    let after = app
        .post_twilio(&sms_params("SMafter", "hi"), AUTH_TOKEN)
        .await;
    assert_eq!(after.status(), 403, "{}", after.text().await.unwrap());
    // The number is free for another location; what was stored stays.
    assert_eq!(
        app.connect_twilio(&second, &[BUSINESS_NUMBER])
            .await
            .status(),
        200
    );
    let first_message = receiver.received()[0].json()["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.admin_get(&format!("/v1/messages/{first_message}"))
            .await
            .status(),
        200
    );
}

async fn bad_request_bodies_say_what_is_wrong() {
    let app = spawn_app().await;
    let not_json = app
        .client
        .post(app.url("/v1/locations"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    assert_eq!(
        not_json.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_json"
    );

    let wrong_type = app
        .client
        .post(app.url("/v1/locations"))
        .bearer_auth(ADMIN_TOKEN)
        .body("name=x")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);

    let unknown_field = app
        .admin_send(
            reqwest::Method::POST,
            "/v1/locations",
            json!({ "name": "x", "nmae": "y" }),
        )
        .await;
    assert_eq!(unknown_field.status(), 422);
    let body: Value = unknown_field.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("nmae"));

    let empty = app
        .admin_send(
            reqwest::Method::POST,
            "/v1/locations",
            json!({ "name": " " }),
        )
        .await;
    assert_eq!(empty.status(), 422);

    // NUL (PostgreSQL text cannot hold it) is refused on either store; a backslash is not NUL.
    let nul = app
        .admin_send(
            reqwest::Method::POST,
            "/v1/locations",
            json!({ "name": "a\u{0}b" }),
        )
        .await;
    assert_eq!(nul.status(), 422);
    let body: Value = nul.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("NUL"),
        "{body}"
    );
    let backslash = app
        .admin_send(
            reqwest::Method::POST,
            "/v1/locations",
            json!({ "name": "a\\u0000b" }),
        )
        .await;
    assert_eq!(backslash.status(), 201);

    let no_route = app.admin_get("/v1/nothing-here").await;
    assert_eq!(no_route.status(), 404);
    assert_eq!(
        no_route.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );

    let wrong_method = app
        .client
        .get(app.url("/conversations/providers/twilio/inbound_message"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);

    let no_message = app.admin_get("/v1/messages/AAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!(no_message.status(), 404);
    let no_deliveries = app.admin_get("/v1/messages/nonsense/deliveries").await;
    assert_eq!(no_deliveries.status(), 404);

    // Refused before any handler runs (by axum's extractors), or a body over the limit: the
    // same JSON error shape.
    let not_utf8 = app.admin_get("/v1/messages/%FF").await;
    let attachment = app
        .client
        .get(app.url("/attachments/%FF?expires=1&signature=x"))
        .send()
        .await
        .unwrap();
    let too_large = app
        .client
        .post(app.url("/v1/webhooks/nothing/rotate-secret"))
        .bearer_auth(ADMIN_TOKEN)
        .body(vec![b'x'; 3 << 20])
        .send()
        .await
        .unwrap();
    for (response, status, code) in [
        (not_utf8, 400, "bad_request"),
        (attachment, 400, "bad_request"),
        (too_large, 413, "payload_too_large"),
    ] {
        assert_eq!(response.status(), status);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
}

async fn webhooks_are_validated_and_private_targets_refused_by_default() {
    let app = spawn_app_with(|c| c.allow_private_targets = false).await;
    for (url, needle) in [
        ("http://127.0.0.1:9/hook", "127.0.0.1"),
        ("http://[::ffff:127.0.0.1]/hook", "127.0.0.1"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        (
            "http://localhost:8080/hook",
            "localhost resolves to 127.0.0.1, a loopback",
        ),
        ("ftp://example.com/hook", "scheme"),
        ("not a url", "not a URL"),
    ] {
        let r = app
            .admin_send(
                reqwest::Method::POST,
                "/v1/webhooks",
                json!({ "url": url, "events": ["InboundMessage"] }),
            )
            .await;
        assert_eq!(r.status(), 422, "{url}");
        let body: Value = r.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{url}: {body}");
        // A refused address says what would permit it; a malformed URL does not.
        let address = !["scheme", "not a URL"].contains(&needle);
        assert_eq!(
            message.contains("allowedNetworks") && message.contains("allow_private_targets"),
            address,
            "{url}: {body}"
        );
    }
    let bad_event = app
        .admin_send(
            reqwest::Method::POST,
            "/v1/webhooks",
            json!({ "url": "https://8.8.8.8/hook", "events": ["Everything"] }),
        )
        .await;
    assert_eq!(bad_event.status(), 422);
    let no_events = app
        .admin_send(
            reqwest::Method::POST,
            "/v1/webhooks",
            json!({ "url": "https://8.8.8.8/hook", "events": [] }),
        )
        .await;
    assert_eq!(no_events.status(), 422);
    let unknown_location = app
        .admin_send(
            reqwest::Method::POST,
            "/v1/webhooks",
            json!({ "url": "https://8.8.8.8/hook", "events": ["InboundMessage"], "locationId": "AAAAAAAAAAAAAAAAAAAA" }),
        )
        .await;
    assert_eq!(unknown_location.status(), 422);
    // A public literal is accepted (nothing is sent until a message arrives).
    let ok = app
        .admin_send(
            reqwest::Method::POST,
            "/v1/webhooks",
            json!({ "url": "https://8.8.8.8/hook", "events": ["InboundMessage"] }),
        )
        .await;
    assert_eq!(ok.status(), 201);
    let created: Value = ok.json().await.unwrap();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["locationId"], Value::Null);
    let id = created["id"].as_str().unwrap();
    let secret: Value = app
        .admin_get(&format!("/v1/webhooks/{id}/secret"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(secret["secret"], created["secret"]);
}

/// Every operation the OpenAPI document lists is served (not the fallback 404 or a 405).
async fn the_openapi_document_describes_served_routes() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 25, "{} paths", paths.len());
    for (path, operations) in paths {
        let concrete = path
            .replace("{locationId}", "AAAAAAAAAAAAAAAAAAAA")
            .replace("{webhookId}", "AAAAAAAAAAAAAAAAAAAA")
            .replace("{deliveryId}", "AAAAAAAAAAAAAAAAAAAA")
            .replace("{messageId}", "AAAAAAAAAAAAAAAAAAAA")
            .replace("{file}", "AAAAAAAAAAAAAAAAAAAA.mp3")
            .replace("{provider}", "twilio");
        for method in operations.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app
                .client
                .request(method.clone(), app.url(&concrete))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path}: {body}");
            assert!(
                !(status == 404 && body.contains("no such route")),
                "{method} {path} is not served"
            );
        }
    }
}

crate::both_stores!(
    the_openapi_document_describes_served_routes,
    v1_needs_the_admin_token,
    locations_and_twilio_channels,
    locations_and_connections_can_be_listed_read_back_and_disconnected,
    bad_request_bodies_say_what_is_wrong,
    webhooks_are_validated_and_private_targets_refused_by_default,
);
