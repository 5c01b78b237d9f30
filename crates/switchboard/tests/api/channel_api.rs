//! The channel-configuration API, one route for every channel of the registry: the list of a
//! location's channels with their secrets masked, a 404 for an unknown channel that names the
//! known ones, a 422 that names a wrong field, and the rule that an address belongs to one
//! location, through the generic route.

use serde_json::{json, Value};

use crate::helpers::*;

async fn a_locations_channels_are_listed_with_their_secrets_masked() {
    let app = spawn_app().await;
    let location = app.create_location("Listed").await;
    let empty: Value = app
        .admin_get(&format!("/v1/locations/{location}/channels"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(empty, json!({ "data": [] }));
    let r = app
        .admin_send(
            reqwest::Method::PUT,
            &format!("/v1/locations/{location}/channels/twilio"),
            json!({
                "accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN,
                "phoneNumbers": [BUSINESS_NUMBER],
                "signingKeys": { "key-1": "signing-secret-value-7890" },
            }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = app
        .admin_get(&format!("/v1/locations/{location}/channels"))
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(AUTH_TOKEN) && !text.contains("signing-secret-value-7890"),
        "a secret is shown: {text}"
    );
    let listed: Value = serde_json::from_str(&text).unwrap();
    let channels = listed["data"].as_array().unwrap();
    assert_eq!(channels.len(), 1, "{listed}");
    let twilio = &channels[0];
    assert_eq!(twilio["provider"], "twilio");
    assert_eq!(twilio["phoneNumbers"], json!([BUSINESS_NUMBER]));
    let last4 = &AUTH_TOKEN[AUTH_TOKEN.len() - 4..];
    assert_eq!(
        twilio["secrets"]["authToken"],
        json!({ "set": true, "last4": last4 })
    );
    assert_eq!(
        twilio["secrets"]["signingKeys"]["key-1"],
        json!({ "set": true, "last4": "7890" })
    );
    // The list holds what each channel's own GET shows.
    let own: Value = app
        .admin_get(&format!("/v1/locations/{location}/channels/twilio"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(&own, twilio);
    assert_eq!(
        app.admin_get("/v1/locations/AAAAAAAAAAAAAAAAAAAA/channels")
            .await
            .status(),
        404
    );
}

async fn an_unknown_channel_is_404_naming_the_known_ones() {
    let app = spawn_app().await;
    let location = app.create_location("Unknown").await;
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::GET,
        reqwest::Method::DELETE,
    ] {
        let r = app
            .admin_send(
                method.clone(),
                &format!("/v1/locations/{location}/channels/nosuch"),
                json!({ "accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN }),
            )
            .await;
        assert_eq!(r.status(), 404, "{method}");
        let body: Value = r.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("nosuch") && message.contains("twilio"),
            "{method}: {message}"
        );
    }
}

async fn a_wrong_settings_field_is_422_naming_it() {
    let app = spawn_app().await;
    let location = app.create_location("Wrong").await;
    let path = format!("/v1/locations/{location}/channels/twilio");
    let unknown = app
        .admin_send(
            reqwest::Method::PUT,
            &path,
            json!({ "accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN, "phoneNumber": [BUSINESS_NUMBER] }),
        )
        .await;
    assert_eq!(unknown.status(), 422);
    let body: Value = unknown.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("phoneNumber"),
        "{body}"
    );
    let wrong_type = app
        .admin_send(
            reqwest::Method::PUT,
            &path,
            json!({ "accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN, "phoneNumbers": "+14155550100" }),
        )
        .await;
    assert_eq!(wrong_type.status(), 422);
    let body: Value = wrong_type.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("phoneNumbers"),
        "{body}"
    );
    // Nothing was configured.
    assert_eq!(app.admin_get(&path).await.status(), 404);
}

/// An address belongs to at most one location: the second is 409 naming the address and the
/// location that has it, and keeps nothing of its request.
async fn an_address_belongs_to_one_location_through_the_generic_route() {
    let app = spawn_app().await;
    let first = app.create_location("First").await;
    let second = app.create_location("Second").await;
    assert_eq!(
        app.connect_twilio(&first, &[BUSINESS_NUMBER])
            .await
            .status(),
        200
    );
    let r = app
        .connect_twilio(&second, &["+14155550199", BUSINESS_NUMBER])
        .await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(BUSINESS_NUMBER) && message.contains(&first),
        "{message}"
    );
    assert_eq!(
        app.admin_get(&format!("/v1/locations/{second}/channels/twilio"))
            .await
            .status(),
        404
    );
}

crate::both_stores!(
    a_locations_channels_are_listed_with_their_secrets_masked,
    an_unknown_channel_is_404_naming_the_known_ones,
    a_wrong_settings_field_is_422_naming_it,
    an_address_belongs_to_one_location_through_the_generic_route,
);
