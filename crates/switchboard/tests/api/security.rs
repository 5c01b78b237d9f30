//! The attacks that got through once, each reproduced with the official `twilio` library's
//! signer (PyPI `twilio`, `RequestValidator.compute_signature`) where a signature is involved,
//! and now refused: a signature made for another URL (a `Host` that is not an authority, a
//! forwarded scheme from anyone), a repeated identifying parameter, a SID extended by the
//! parameter after it, a request for another account, the account token sent to a host that
//! is not Twilio's, an empty signing key, and what an unsigned request could learn.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::twilio_voice::{
    call_params, fake_twilio_media, post_twiml, recording_params, setup, voice_settings,
    DIAL_STATUS, QUIET, RECORDING, STATUS,
};

const PATH: &str = switchboard::channels::twilio::INBOUND_PATH;

/// `X-Twilio-Signature` for `url` and `params` (repeated names allowed) as Twilio's own Python
/// library computes it. `None` (the caller skips, or fails with `CI=true`) without it.
pub fn twilio_library_signature(url: &str, params: &[(&str, &str)], token: &str) -> Option<String> {
    const SCRIPT: &str = r#"
import json, sys
from twilio.request_validator import RequestValidator
req = json.load(sys.stdin)
class Multi(dict):
    def getall(self, name):
        return [v for k, v in req["params"] if k == name]
params = Multi((k, v) for k, v in req["params"])
print(RequestValidator(req["token"]).compute_signature(req["url"], params))
"#;
    use std::io::Write;
    use std::process::{Command, Stdio};
    let probe = Command::new("python3")
        .args(["-c", "import twilio.request_validator"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        skip("the Python package twilio is not installed (pip install twilio)");
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input = json!({ "url": url, "token": token, "params": params });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

/// A raw HTTP/1.1 POST with exactly these headers (`Host` included): (status, body).
async fn raw_post(address: &str, head: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {PATH} HTTP/1.1\r\n{head}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// POST `params` as a form with the given `X-Twilio-Signature`.
async fn post_signed(
    client: &reqwest::Client,
    url: &str,
    params: &[(&str, &str)],
    signature: &str,
) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(form(params))
        .send()
        .await
        .unwrap()
}

fn form(params: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

async fn a_signature_for_another_url_is_refused() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let params = sms_params("SMforgedhost", "spoofed");
    let body = form(&params);
    // The URL/parameter boundary moved into Host: signed over http://a/b<path>…
    let Some(sig) = twilio_library_signature(&format!("http://a/b{PATH}"), &params, AUTH_TOKEN)
    else {
        return;
    };
    let (status, answer) = raw_post(
        &app.address,
        &format!("Host: a/b\r\nX-Twilio-Signature: {sig}\r\n"),
        &body,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("invalid_host"), "{answer}");
    // A scheme forwarded by someone who is not a trusted proxy counts for nothing.
    let host = app.address.trim_start_matches("http://");
    let sig =
        twilio_library_signature(&format!("https://{host}{PATH}"), &params, AUTH_TOKEN).unwrap();
    let (status, answer) = raw_post(
        &app.address,
        &format!("Host: {host}\r\nX-Forwarded-Proto: https\r\nX-Twilio-Signature: {sig}\r\n"),
        &body,
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    receiver.expect_exactly(0, QUIET).await;
    app.expect_events(0).await;

    // From a trusted proxy, the same request is the one the provider signed.
    let proxied =
        spawn_app_with(|c| c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    proxied.standard_setup(&receiver).await;
    let host = proxied.address.trim_start_matches("http://");
    let sig =
        twilio_library_signature(&format!("https://{host}{PATH}"), &params, AUTH_TOKEN).unwrap();
    let (status, answer) = raw_post(
        &proxied.address,
        &format!("Host: {host}\r\nX-Forwarded-Proto: https\r\nX-Twilio-Signature: {sig}\r\n"),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    receiver.expect_exactly(1, QUIET).await;
    proxied.expect_events(1).await;
}

async fn a_repeated_identifying_parameter_is_refused() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let mut params = sms_params("SMtwofrom", "spoofed");
    // Twilio's signature covers both values; the first would have been read.
    params.insert(0, ("From", "+15555550123"));
    let url = app.url(PATH);
    let Some(sig) = twilio_library_signature(&url, &params, AUTH_TOKEN) else {
        return;
    };
    let r = post_signed(&app.client, &url, &params, &sig).await;
    assert_eq!(r.status(), 400);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["code"], "malformed_request");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`From`"));
    receiver.expect_exactly(0, QUIET).await;
    app.expect_events(0).await;
}

async fn a_sid_extended_by_the_next_parameter_is_not_a_second_message() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let url = app.url(PATH);
    let params = sms_params("SMcaptured", "once");
    let Some(sig) = twilio_library_signature(&url, &params, AUTH_TOKEN) else {
        return;
    };
    let post = |params: Vec<(&'static str, &str)>| {
        let (client, url, sig) = (app.client.clone(), url.clone(), sig.clone());
        let owned: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        async move {
            let params: Vec<(&str, &str)> = owned
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            post_signed(&client, &url, &params, &sig).await
        }
    };
    assert_eq!(post(params.clone()).await.status(), 200);
    // The replay: MessageSid swallows `NumMedia0`, NumMedia is gone; the signature is the same.
    let sid = twilio_sid("SMcaptured");
    let extended = format!("{sid}NumMedia0");
    let replay: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, _)| *k != "NumMedia")
        .map(|&(k, v)| {
            if k == "MessageSid" {
                (k, extended.as_str())
            } else {
                (k, v)
            }
        })
        .collect();
    assert_eq!(
        twilio_library_signature(&url, &replay, AUTH_TOKEN).unwrap(),
        sig,
        "the replay signs like the original"
    );
    let r = post(replay).await;
    assert_eq!(r.status(), 400);
    receiver.expect_exactly(1, QUIET).await;
    app.expect_events(1).await;
}

async fn a_request_naming_another_account_is_refused() {
    const OTHER_SID: &str = "AC44444444444444444444444444444444";
    const OTHER_TOKEN: &str = "another-auth-token-0123";
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let other = app.create_location("Other").await;
    let r = app
        .admin_send(
            reqwest::Method::PUT,
            &format!("/v1/locations/{other}/channels/twilio"),
            json!({ "accountSid": OTHER_SID, "authToken": OTHER_TOKEN, "phoneNumbers": ["+14155550177"] }),
        )
        .await;
    assert_eq!(r.status(), 200);
    // Routed by the number to the first location, but says (and is signed by) the other.
    let params: Vec<(&str, &str)> = sms_params("SMotheraccount", "x")
        .into_iter()
        .map(|(k, v)| {
            if k == "AccountSid" {
                (k, OTHER_SID)
            } else {
                (k, v)
            }
        })
        .collect();
    let url = app.url(PATH);
    let Some(sig) = twilio_library_signature(&url, &params, OTHER_TOKEN) else {
        return;
    };
    let r = post_signed(&app.client, &url, &params, &sig).await;
    assert_eq!(r.status(), 403);
    receiver.expect_exactly(0, QUIET).await;
    app.expect_events(0).await;
}

/// An unsigned request is answered the same whether its number is connected or not, and
/// `/metrics` (open to anyone without `metrics_token`) counts both alike; only the log says
/// which.
async fn an_unsigned_request_learns_nothing_of_what_is_connected() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let mut answers = Vec::new();
    let unknown_account = "AC99999999999999999999999999999999";
    for (to, account) in [
        (BUSINESS_NUMBER, ACCOUNT_SID),
        ("+14155550999", unknown_account),
    ] {
        let params = sms_params_for("SMprobe", "x", to, account);
        let r = app
            .client
            .post(app.url(PATH))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", "bm90IGEgc2lnbmF0dXJl")
            .body(form(&params))
            .send()
            .await
            .unwrap();
        answers.push((r.status().as_u16(), r.text().await.unwrap()));
    }
    assert_eq!(answers[0].0, 403);
    assert_eq!(answers[0], answers[1]);
    let metrics = get_metrics(&app.client, &app.address).await;
    assert!(
        metrics.contains("reason=\"invalid_signature\"} 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("not_connected"), "{metrics}");
}

async fn signing_keys_and_auth_tokens_must_be_real_secrets() {
    let app = spawn_app().await;
    let location = app.create_location("Keys").await;
    for (token, keys, code) in [
        (AUTH_TOKEN, json!({ "KS1": "" }), "invalid_signing_key"),
        (AUTH_TOKEN, json!({ "KS1": "short" }), "invalid_signing_key"),
        ("", json!({}), "invalid_auth_token"),
        ("tooshort", json!({}), "invalid_auth_token"),
    ] {
        let r = app
            .admin_send(
                reqwest::Method::PUT,
                &format!("/v1/locations/{location}/channels/twilio"),
                json!({ "accountSid": ACCOUNT_SID, "authToken": token, "phoneNumbers": [BUSINESS_NUMBER], "signingKeys": keys }),
            )
            .await;
        assert_eq!(r.status(), 422, "{token} {keys}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], code);
    }
}

async fn metrics_can_require_a_token() {
    const TOKEN: &str = "metrics-token-0123456789";
    let app = spawn_app_with(|c| c.metrics_token = Some(TOKEN.into())).await;
    let open = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(open.status(), 401);
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("metrics-token-wrong-000")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
}

/// A recording callback (forged, or signed with a Webhook Rule key) naming a host that is not
/// Twilio's: the account's credentials never go there; the event carries the plain link.
async fn the_account_token_goes_to_twilio_only() {
    let (sink, hits) = fake_twilio_media(b"audio").await;
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let mut voice = voice_settings();
    voice["downloadRecordings"] = json!(true);
    setup(&app, &receiver, voice).await;
    let recording_url = format!(
        "{sink}/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/RE55555555555555555555555555555555"
    );
    post_twiml(
        &app,
        DIAL_STATUS,
        &call_params("CAleak", &[("DialCallStatus", "no-answer")]),
    )
    .await;
    let mut rec = recording_params("CAleak", "completed", "RecordVerb");
    for p in rec.iter_mut().filter(|p| p.0 == "RecordingUrl") {
        p.1 = &recording_url;
    }
    if twilio_library_signature(&app.url(RECORDING), &rec, AUTH_TOKEN).is_none() {
        return;
    }
    post_twiml(&app, RECORDING, &rec).await;
    post_twiml(
        &app,
        STATUS,
        &call_params("CAleak", &[("CallStatus", "completed")]),
    )
    .await;
    let event = receiver.expect_exactly(1, QUIET).await[0].json();
    assert_eq!(event["attachments"], json!([recording_url]));
    // The sink counts every request, with or without credentials: none came.
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

crate::both_stores!(
    a_signature_for_another_url_is_refused,
    a_repeated_identifying_parameter_is_refused,
    a_sid_extended_by_the_next_parameter_is_not_a_second_message,
    a_request_naming_another_account_is_refused,
    an_unsigned_request_learns_nothing_of_what_is_connected,
    signing_keys_and_auth_tokens_must_be_real_secrets,
    metrics_can_require_a_token,
    the_account_token_goes_to_twilio_only,
);
