//! The e-mail routes of the receiving services, each authenticated as its service does it:
//! Mailgun (the parsed form and the raw `body-mime` variant, signed with the signing key; a
//! stale timestamp or a reused token refused), SendGrid Inbound Parse (raw and parsed, each
//! field in its charset) and Postmark (JSON, with and without `RawEmail`), both with HTTP
//! Basic auth. The same mail gives the same event whichever route brought it
//! (apart from `provider`), and one message however many routes deliver it.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use switchboard::channels::email::{mailgun_sign, MAILGUN_PATH, POSTMARK_PATH, SENDGRID_PATH};

use crate::email::{configure_email, fixture, post_raw, setup};
use crate::helpers::*;

pub(crate) const MAILGUN_KEY: &str = "test-webhook-signing-key";

/// One field of a multipart form: a name, its bytes and, for a file, (filename, type).
pub(crate) type Part<'a> = (&'a str, Vec<u8>, Option<(&'a str, &'a str)>);

/// A `multipart/form-data` body and its content type.
pub(crate) fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = "----sbTestBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, bytes, file) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some((filename, content_type)) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Mailgun's three signature fields for now (or `at` seconds since the epoch).
pub(crate) fn mailgun_signature(key: &str, at: Option<i64>, token: &str) -> Vec<Part<'static>> {
    let timestamp = at
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
        })
        .to_string();
    let signature = mailgun_sign(key, &timestamp, token);
    vec![
        ("timestamp", timestamp.into_bytes(), None),
        ("token", token.as_bytes().to_vec(), None),
        ("signature", signature.into_bytes(), None),
    ]
}

pub(crate) async fn post_form(app: &TestApp, path: &str, parts: &[Part<'_>]) -> reqwest::Response {
    let (content_type, body) = multipart(parts);
    app.client
        .post(app.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A location with the e-mail channel and the Mailgun key; its inbound token and receiver.
pub(crate) async fn mailgun_setup(app: &TestApp) -> (String, String, TestReceiver) {
    let (location, token, receiver) = setup(app).await;
    let r = configure_email(
        app,
        &location,
        json!({ "addresses": ["support@acme.test"], "domains": ["acme.test", "inbox.acme.test"],
                "inboundToken": token, "mailgunSigningKey": MAILGUN_KEY }),
    )
    .await;
    assert_eq!(r.status(), 200);
    (location, token, receiver)
}

/// What two events of one mail must share whichever route brought them.
fn same_mail(a: &Value, b: &Value) {
    for field in [
        "body",
        "plainText",
        "emailMessageId",
        "threadId",
        "from",
        "to",
        "subject",
        "contactId",
        "conversationId",
        "locationId",
        "autoReply",
        "bounce",
    ] {
        assert_eq!(a.get(field), b.get(field), "{field}: {a:#} / {b:#}");
    }
}

async fn mailgun_raw_mime_gives_the_raw_routes_event_for_every_fixture() {
    let app = spawn_app().await;
    let (_, _, receiver) = mailgun_setup(&app).await;
    // A second location takes the same mails by the raw route (one message per location).
    let raw_location = app.create_location("Raw").await;
    let raw_token = "raw-route-token-0123456789abcdef";
    let r = configure_email(
        &app,
        &raw_location,
        json!({ "addresses": ["raw@other.test"], "inboundToken": raw_token }),
    )
    .await;
    assert_eq!(r.status(), 200);
    let files = [
        "sample.eml",
        "latin1.eml",
        "windows1252.eml",
        "shift_jis.eml",
        "iso2022jp.eml",
        "html_only.eml",
        "autoreply.eml",
        "bounce.eml",
        "no_message_id.eml",
    ];
    for (n, file) in files.iter().enumerate() {
        let mut parts = mailgun_signature(MAILGUN_KEY, None, &format!("token-{n:0>44}"));
        parts.push(("recipient", b"support@acme.test".to_vec(), None));
        parts.push(("body-mime", fixture(file), None));
        let r = post_form(&app, MAILGUN_PATH, &parts).await;
        assert_eq!(r.status(), 200, "{file}: {}", r.text().await.unwrap());
        let r = post_raw(&app, fixture(file), raw_token, Some("raw@other.test")).await;
        assert_eq!(r.status(), 200, "{file}");
        let got = receiver.wait_for(2 * n + 2, Duration::from_secs(10)).await;
        // Two conversations: the two deliveries may arrive in either order.
        let mut pair = [got[2 * n].json(), got[2 * n + 1].json()];
        pair.sort_by_key(|e| e["provider"].as_str().unwrap_or_default().to_owned());
        let [via_mailgun, via_raw] = pair;
        assert_eq!(via_mailgun["provider"], "mailgun", "{file}");
        assert_eq!(via_raw["provider"], "raw", "{file}");
        // The locations differ, and so their ids; everything the mail says is the same.
        let strip = |mut e: Value| {
            for id in ["contactId", "conversationId", "locationId"] {
                e[id] = Value::Null;
            }
            e
        };
        same_mail(&strip(via_mailgun), &strip(via_raw));
    }
}

async fn mailgun_parsed_form_with_attachment_and_verdicts() {
    let app = spawn_app().await;
    let (_, _, receiver) = mailgun_setup(&app).await;
    let headers = json!([
        ["Received", "by mxa.mailgun.org"],
        ["From", "Ana Pérez <ana@example.com>"],
        ["To", "support@acme.test"],
        ["Subject", "Factura de mayo"],
        ["Date", "Wed, 1 May 2024 12:00:00 +0200"],
        ["Message-Id", "<mg-parsed-1@mail.example.com>"],
        ["In-Reply-To", "<thread-root-9@acme.test>"],
        ["X-Mailgun-Spf", "Pass"],
        ["X-Mailgun-Dkim-Check-Result", "Pass"],
        ["X-Mailgun-Sscore", "0.1"],
        ["Content-Type", "multipart/mixed; boundary=\"whatever\""]
    ]);
    let mut parts = mailgun_signature(MAILGUN_KEY, None, &"p".repeat(50));
    parts.extend([
        ("recipient", b"support+billing@acme.test".to_vec(), None),
        ("sender", b"ana@example.com".to_vec(), None),
        ("message-headers", headers.to_string().into_bytes(), None),
        (
            "body-plain",
            "Adjunto la factura.\n¡Gracias!".as_bytes().to_vec(),
            None,
        ),
        (
            "body-html",
            "<p>Adjunto la factura.</p><p>¡Gracias!</p>"
                .as_bytes()
                .to_vec(),
            None,
        ),
        ("attachment-count", b"1".to_vec(), None),
        (
            "attachment-1",
            b"%PDF-1.4 factura".to_vec(),
            Some(("factura.pdf", "application/pdf")),
        ),
    ]);
    let r = post_form(&app, MAILGUN_PATH, &parts).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let event = receiver.wait_for(1, Duration::from_secs(10)).await[0].json();
    assert_eq!(event["provider"], "mailgun");
    assert_eq!(event["from"], "Ana Pérez <ana@example.com>");
    assert_eq!(event["subject"], "Factura de mayo");
    assert_eq!(event["emailMessageId"], "mg-parsed-1@mail.example.com");
    assert_eq!(event["threadId"], "thread-root-9@acme.test");
    assert_eq!(event["body"], "<p>Adjunto la factura.</p><p>¡Gracias!</p>");
    assert_eq!(event["plainText"], "Adjunto la factura.\n¡Gracias!");
    assert_eq!(
        event["authentication"],
        json!({ "spf": "Pass", "dkim": "Pass", "spamScore": "0.1" })
    );
}

async fn mailgun_refuses_a_wrong_signature_a_stale_timestamp_and_no_key() {
    let app = spawn_app().await;
    let (location, token, _receiver) = mailgun_setup(&app).await;
    let with = |signature: Vec<Part<'static>>| {
        let mut parts = signature;
        parts.push(("recipient", b"support@acme.test".to_vec(), None));
        parts.push(("body-mime", fixture("latin1.eml"), None));
        parts
    };
    let wrong = with(mailgun_signature(
        "another-signing-key-0123",
        None,
        &"w".repeat(50),
    ));
    assert_eq!(post_form(&app, MAILGUN_PATH, &wrong).await.status(), 403);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let stale = with(mailgun_signature(
        MAILGUN_KEY,
        Some(now - 310),
        &"s".repeat(50),
    ));
    assert_eq!(post_form(&app, MAILGUN_PATH, &stale).await.status(), 403);
    let future = with(mailgun_signature(
        MAILGUN_KEY,
        Some(now + 310),
        &"f".repeat(50),
    ));
    assert_eq!(post_form(&app, MAILGUN_PATH, &future).await.status(), 403);
    let unsigned: Vec<Part<'static>> = with(vec![]);
    assert_eq!(post_form(&app, MAILGUN_PATH, &unsigned).await.status(), 400);
    // Without a signing key configured, nothing verifies.
    let r = configure_email(
        &app,
        &location,
        json!({ "addresses": ["support@acme.test"], "inboundToken": token }),
    )
    .await;
    assert_eq!(r.status(), 200);
    let good = with(mailgun_signature(MAILGUN_KEY, None, &"g".repeat(50)));
    assert_eq!(post_form(&app, MAILGUN_PATH, &good).await.status(), 403);
    app.expect_events(0).await;
}

async fn one_mail_through_two_routes_is_one_message() {
    let app = spawn_app().await;
    let (_, token, receiver) = mailgun_setup(&app).await;
    let r = post_raw(&app, fixture("sample.eml"), &token, None).await;
    assert_eq!(r.status(), 200);
    let mut parts = mailgun_signature(MAILGUN_KEY, None, &"d".repeat(50));
    parts.push(("recipient", b"support@inbox.acme.test".to_vec(), None));
    parts.push(("body-mime", fixture("sample.eml"), None));
    assert_eq!(post_form(&app, MAILGUN_PATH, &parts).await.status(), 200);
    app.expect_events(1).await;
    receiver.expect_exactly(1, Duration::from_millis(300)).await;
}

async fn a_reused_mailgun_token_is_refused_as_a_replay() {
    let app = spawn_app().await;
    let (_, _, receiver) = mailgun_setup(&app).await;
    let token = "r".repeat(50);
    let post = |file: &'static str| {
        let mut parts = mailgun_signature(MAILGUN_KEY, None, &token);
        parts.push(("recipient", b"support@acme.test".to_vec(), None));
        parts.push(("body-mime", fixture(file), None));
        parts
    };
    assert_eq!(
        post_form(&app, MAILGUN_PATH, &post("latin1.eml"))
            .await
            .status(),
        200
    );
    // The same token, correctly signed, with another mail: a replay.
    let replay = post_form(&app, MAILGUN_PATH, &post("shift_jis.eml")).await;
    assert_eq!(replay.status(), 403);
    app.expect_events(1).await;
    receiver.expect_exactly(1, Duration::from_millis(300)).await;
    let metrics = get_metrics(&app.client, &app.address).await;
    assert!(
        metrics.contains("switchboard_provider_requests_rejected_total{provider=\"email\",reason=\"replayed\"} 1"),
        "{metrics}"
    );
}

/// `Authorization: Basic` with the inbound token as the password.
fn basic(token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("inbound:{token}"))
    )
}

async fn post_postmark(app: &TestApp, body: &Value, token: &str) -> reqwest::Response {
    app.client
        .post(app.url(POSTMARK_PATH))
        .header("content-type", "application/json")
        .header("authorization", basic(token))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn post_sendgrid(app: &TestApp, parts: &[Part<'_>], token: &str) -> reqwest::Response {
    let (content_type, body) = multipart(parts);
    app.client
        .post(app.url(SENDGRID_PATH))
        .header("content-type", content_type)
        .header("authorization", basic(token))
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn postmark_json_with_and_without_the_raw_mail() {
    let app = spawn_app().await;
    let (_, token, receiver) = setup(&app).await;
    let png = b"\x89PNG\r\n\x1a\n fake image bytes";
    let parsed = json!({
        "FromName": "Ana Pérez", "From": "ana@example.com",
        "FromFull": { "Email": "ana@example.com", "Name": "Ana Pérez", "MailboxHash": "" },
        "To": "\"Support\" <support+q3@acme.test>", "Cc": "boss@example.com, cfo@example.com",
        "OriginalRecipient": "support+q3@acme.test", "Subject": "Photo of the damage",
        "MessageID": "73e6d360-66eb-11e1-8e72-a8904824019b", "Date": "Thu, 2 May 2024 14:00:00 +0000",
        "MailboxHash": "q3", "TextBody": "See the photo.", "HtmlBody": "<p>See <img src=\"cid:img1@ex\"></p>",
        "StrippedTextReply": "See the photo.", "Tag": "",
        "Headers": [
            { "Name": "X-Spam-Status", "Value": "No" }, { "Name": "X-Spam-Score", "Value": "-0.1" },
            { "Name": "Message-ID", "Value": "<pm-1@mail.example.com>" },
            { "Name": "In-Reply-To", "Value": "<acme-out-3@acme.test>" }
        ],
        "Attachments": [{ "Name": "damage.png", "Content": base64::engine::general_purpose::STANDARD.encode(png),
                          "ContentType": "image/png", "ContentLength": png.len(), "ContentID": "img1@ex" }]
    });
    let r = post_postmark(&app, &parsed, &token).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let event = receiver.wait_for(1, Duration::from_secs(10)).await[0].json();
    assert_eq!(event["provider"], "postmark");
    assert_eq!(event["from"], "Ana Pérez <ana@example.com>");
    assert_eq!(event["to"], json!(["support+q3@acme.test"]));
    assert_eq!(event["cc"], "boss@example.com, cfo@example.com");
    assert_eq!(
        event["ccList"],
        json!(["boss@example.com", "cfo@example.com"])
    );
    assert_eq!(event["emailMessageId"], "pm-1@mail.example.com");
    assert_eq!(event["threadId"], "acme-out-3@acme.test");
    assert_eq!(event["plainText"], "See the photo.");
    assert_eq!(
        event["authentication"],
        json!({ "spamScore": "-0.1", "spamStatus": "No" })
    );
    // Its attachment is kept, and the HTML's cid: points at the copy.
    let url = event["attachments"][0].as_str().unwrap();
    let kept = app
        .client
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(kept.as_ref(), png);
    let body = event["body"].as_str().unwrap();
    assert!(body.contains(&url.replace('&', "&amp;")), "{event}");

    // RawEmail is read as raw mail: the same event as the raw route's (one location, so the
    // raw route's copy is the same message).
    let raw = String::from_utf8(fixture("windows1252.eml")).unwrap();
    let with_raw = json!({ "From": "ignored@example.com", "OriginalRecipient": "support@acme.test",
                           "Subject": "ignored", "RawEmail": raw });
    assert_eq!(post_postmark(&app, &with_raw, &token).await.status(), 200);
    let event = receiver.wait_for(2, Duration::from_secs(10)).await[1].json();
    assert_eq!(event["subject"], "Invoice – €12");
    assert_eq!(event["from"], "Bob <bob@example.com>");
    assert_eq!(
        post_raw(&app, fixture("windows1252.eml"), &token, None)
            .await
            .status(),
        200
    );

    // Wrong or missing credentials: 403, nothing stored.
    assert_eq!(
        post_postmark(&app, &parsed, "wrong-token-0123456789abcdef")
            .await
            .status(),
        403
    );
    let unauthenticated = app
        .client
        .post(app.url(POSTMARK_PATH))
        .header("content-type", "application/json")
        .body(parsed.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 403);
    let not_json = post_postmark(&app, &json!("just a string"), &token).await;
    assert_eq!(not_json.status(), 400);
    app.expect_events(2).await;
}

async fn sendgrid_raw_and_parsed_with_charsets() {
    let app = spawn_app().await;
    let (location, token, receiver) = setup(&app).await;
    // Raw mode: the whole mail in `email`; the envelope routes.
    let envelope = json!({ "to": ["support@acme.test"], "from": "suzuki@example.jp" }).to_string();
    let raw: Vec<Part<'_>> = vec![
        ("email", fixture("iso2022jp.eml"), None),
        ("envelope", envelope.clone().into_bytes(), None),
        ("SPF", b"pass".to_vec(), None),
        ("dkim", b"{@example.jp : pass}".to_vec(), None),
    ];
    let r = post_sendgrid(&app, &raw, &token).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let event = receiver.wait_for(1, Duration::from_secs(10)).await[0].json();
    assert_eq!(event["provider"], "sendgrid");
    assert_eq!(event["locationId"], location.as_str());
    assert_eq!(event["subject"], "お問い合わせ");
    assert_eq!(
        event["authentication"],
        json!({ "spf": "pass", "dkim": "{@example.jp : pass}" })
    );

    // Parsed mode: the header block as sent, the text in the charset `charsets` names.
    let headers = "Received: by mx.sendgrid.net\r\nMessage-ID: <sg-parsed-1@example.fr>\r\nFrom: =?iso-8859-1?q?Andr=E9?= <andre@example.fr>\r\nTo: support@acme.test\r\nSubject: =?iso-8859-1?q?R=E9servation?=\r\nDate: Thu, 2 May 2024 09:30:00 +0200\r\nContent-Type: multipart/alternative; boundary=\"xx\"";
    let text_latin1: Vec<u8> = "Une table pour deux, à 20 h. Merci, André"
        .chars()
        .map(|c| c as u32 as u8)
        .collect();
    let parsed: Vec<Part<'_>> = vec![
        ("headers", headers.as_bytes().to_vec(), None),
        ("text", text_latin1, None),
        ("html", "<p>Une table pour deux, à 20 h.</p>".as_bytes().to_vec(), None),
        ("from", b"Andre <andre@example.fr>".to_vec(), None),
        ("to", b"support@acme.test".to_vec(), None),
        ("subject", b"Reservation".to_vec(), None),
        ("envelope", envelope.into_bytes(), None),
        ("charsets", br#"{"to":"UTF-8","html":"UTF-8","subject":"UTF-8","from":"UTF-8","text":"iso-8859-1"}"#.to_vec(), None),
        ("attachments", b"1".to_vec(), None),
        ("attachment-info", br#"{"attachment1":{"filename":"menu.txt","name":"menu.txt","type":"text/plain"}}"#.to_vec(), None),
        ("attachment1", b"soupe, poisson".to_vec(), Some(("menu.txt", "text/plain"))),
        ("spam_score", b"0.2".to_vec(), None),
    ];
    let r = post_sendgrid(&app, &parsed, &token).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let event = receiver.wait_for(2, Duration::from_secs(10)).await[1].json();
    assert_eq!(event["subject"], "Réservation");
    assert_eq!(event["from"], "André <andre@example.fr>");
    assert_eq!(
        event["plainText"],
        "Une table pour deux, à 20 h. Merci, André"
    );
    assert_eq!(event["body"], "<p>Une table pour deux, à 20 h.</p>");
    assert_eq!(event["emailMessageId"], "sg-parsed-1@example.fr");
    assert_eq!(event["authentication"], json!({ "spamScore": "0.2" }));

    // Wrong credentials: 403, nothing stored.
    assert_eq!(
        post_sendgrid(&app, &raw, "wrong-token-0123456789abcdef")
            .await
            .status(),
        403
    );
    app.expect_events(2).await;
}

/// The four routes, for tests that run over each.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route {
    Raw,
    Mailgun,
    SendGrid,
    Postmark,
}

pub(crate) const ROUTES: [Route; 4] =
    [Route::Raw, Route::Mailgun, Route::SendGrid, Route::Postmark];

/// Post a raw mail by `route` as its service posts one (Mailgun: signed now with `nonce` as the
/// token; SendGrid: raw mode; Postmark: `RawEmail`), for support@acme.test.
pub(crate) async fn post_via(
    app: &TestApp,
    route: Route,
    mail: Vec<u8>,
    token: &str,
    nonce: &str,
) -> reqwest::Response {
    let envelope = json!({ "to": ["support@acme.test"], "from": "x@example.com" }).to_string();
    match route {
        Route::Raw => post_raw(app, mail, token, Some("support@acme.test")).await,
        Route::Mailgun => {
            let mut parts = mailgun_signature(MAILGUN_KEY, None, nonce);
            parts.push(("recipient", b"support@acme.test".to_vec(), None));
            parts.push(("body-mime", mail, None));
            post_form(app, MAILGUN_PATH, &parts).await
        }
        Route::SendGrid => {
            let parts: Vec<Part<'_>> = vec![
                ("email", mail, None),
                ("envelope", envelope.into_bytes(), None),
            ];
            post_sendgrid(app, &parts, token).await
        }
        Route::Postmark => {
            let body = json!({ "OriginalRecipient": "support@acme.test",
                               "RawEmail": String::from_utf8(mail).unwrap() });
            post_postmark(app, &body, token).await
        }
    }
}

/// A full disk, on every route: each mail answered 200 is stored and delivered, each answered
/// 503 is not (no message, no thread record, no Mailgun token half-written: the same post
/// again once space is back is stored, as a mail never seen).
#[tokio::test]
async fn a_full_disk_answers_503_on_every_route_and_stores_no_part_of_a_mail() {
    for route in ROUTES {
        let Some(fs) = crate::storage_faults::SmallFs::mount("8m") else {
            return;
        };
        full_disk_on(route, &fs).await;
    }
}

/// One route on a server of its own whose data directory is on `fs`.
async fn full_disk_on(route: Route, fs: &crate::storage_faults::SmallFs) {
    let app = spawn_app_with(|c| {
        c.data_dir = fs.path.join("data");
        c.sqlite_busy_timeout = Duration::from_secs(2);
        // Hundreds of mails from one sender in a minute: not a loop to hold back here.
        c.max_mails_per_conversation_per_minute = 0;
    })
    .await;
    let (_, token, receiver) = mailgun_setup(&app).await;
    let text = "All work and no play. ".repeat(1000);
    let mail = |id: &str| {
        format!("Message-ID: <{id}>\r\nFrom: Ana <ana@example.com>\r\nTo: support@acme.test\r\nSubject: full\r\n\r\n{text}\r\n")
            .into_bytes()
    };
    let filler = fs.fill(1024 * 1024);
    let (mut stored, mut refused) = (Vec::new(), Vec::new());
    for n in 0..300 {
        let id = format!("full-{route:?}-{n}@example.com");
        let r = post_via(
            &app,
            route,
            mail(&id),
            &token,
            &format!("{route:?}-{n:0>46}"),
        )
        .await;
        match r.status().as_u16() {
            200 => stored.push((n, id)),
            503 => {
                assert!(r.headers().contains_key("retry-after"), "{route:?}");
                refused.push((n, id));
                if refused.len() == 5 {
                    break;
                }
            }
            other => panic!("{route:?} mail {n}: {other} {}", r.text().await.unwrap()),
        }
    }
    eprintln!(
        "{route:?} on a full disk: {} stored, {} refused",
        stored.len(),
        refused.len()
    );
    assert!(
        !refused.is_empty() && !stored.is_empty(),
        "{route:?}: the disk filled at once or never"
    );
    std::fs::remove_file(&filler).unwrap();
    for (n, id) in &refused {
        let r = post_via(
            &app,
            route,
            mail(id),
            &token,
            &format!("{route:?}-{n:0>46}"),
        )
        .await;
        assert_eq!(r.status(), 200, "{route:?}: the refused post again");
    }
    let mut expected: Vec<String> = stored
        .into_iter()
        .chain(refused)
        .map(|(_, id)| id)
        .collect();
    // The feed holds each mail once, none marked reused.
    expected.sort();
    let events = app.expect_events(expected.len()).await;
    let mut in_feed: Vec<String> = events
        .iter()
        .map(|e| {
            assert!(e.get("messageIdReused").is_none(), "{e}");
            e["emailMessageId"].as_str().unwrap().to_owned()
        })
        .collect();
    in_feed.sort();
    assert_eq!(in_feed, expected, "{route:?}");
    // Each is delivered (at least once: an attempt whose outcome could not be written while
    // the disk was full is sent again).
    eventually(
        Duration::from_secs(30),
        "every stored mail delivered",
        || async {
            let mut delivered: Vec<String> = receiver
                .received()
                .iter()
                .map(|d| d.json()["emailMessageId"].as_str().unwrap().to_owned())
                .collect();
            delivered.sort();
            delivered.dedup();
            (delivered == expected).then_some(())
        },
    )
    .await;
}

crate::both_stores!(
    postmark_json_with_and_without_the_raw_mail,
    sendgrid_raw_and_parsed_with_charsets,
    a_reused_mailgun_token_is_refused_as_a_replay,
    mailgun_raw_mime_gives_the_raw_routes_event_for_every_fixture,
    mailgun_parsed_form_with_attachment_and_verdicts,
    mailgun_refuses_a_wrong_signature_a_stale_timestamp_and_no_key,
    one_mail_through_two_routes_is_one_message,
);
