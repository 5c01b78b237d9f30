//! The e-mail channel: its configuration (addresses and domains claimed like phone numbers, a
//! generated inbound token shown once) and the raw MIME route with real-world mail (charsets,
//! encodings, encoded words, HTML-only and plain-only mail, auto-replies, bounces, mail
//! without Message-ID), each event in the source document's Email shape.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard::channels::email::RAW_PATH;

use crate::engine::create_webhook;
use crate::helpers::*;

/// A mail of `tests/data/email/`.
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/email")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `PUT /v1/locations/{location}/channels/email`.
pub(crate) async fn configure_email(
    app: &TestApp,
    location: &str,
    body: Value,
) -> reqwest::Response {
    app.admin_send(
        reqwest::Method::PUT,
        &format!("/v1/locations/{location}/channels/email"),
        body,
    )
    .await
}

/// A location receiving mail for support@acme.test (and the whole of `acme.test` and
/// `inbox.acme.test`), its
/// inbound token, and a receiver of its events.
pub(crate) async fn setup(app: &TestApp) -> (String, String, TestReceiver) {
    let location = app.create_location("Mail").await;
    let r = configure_email(
        app,
        &location,
        json!({ "addresses": ["support@acme.test"], "domains": ["acme.test", "inbox.acme.test"] }),
    )
    .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let token = answer["inboundToken"].as_str().unwrap().to_owned();
    let receiver = TestReceiver::start().await;
    create_webhook(
        app,
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await;
    (location, token, receiver)
}

/// `POST` raw mail with `Authorization: Bearer <token>` (and `?recipient=` when given).
pub(crate) async fn post_raw(
    app: &TestApp,
    mail: Vec<u8>,
    token: &str,
    recipient: Option<&str>,
) -> reqwest::Response {
    let mut url = app.url(RAW_PATH);
    if let Some(r) = recipient {
        url = format!("{url}?recipient={}", r.replace('+', "%2B"));
    }
    app.client
        .post(url)
        .header("content-type", "message/rfc822")
        .bearer_auth(token)
        .body(mail)
        .send()
        .await
        .unwrap()
}

/// Post `mail` raw and return its delivered event (the `n`th the receiver got).
pub(crate) async fn deliver(
    app: &TestApp,
    receiver: &TestReceiver,
    token: &str,
    mail: Vec<u8>,
    n: usize,
) -> Value {
    let r = post_raw(app, mail, token, None).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let got = receiver.wait_for(n, Duration::from_secs(10)).await;
    got[n - 1].json()
}

async fn the_configuration_claims_addresses_and_shows_a_generated_token_once() {
    let app = spawn_app().await;
    let location = app.create_location("Mail").await;
    let r = configure_email(
        &app,
        &location,
        json!({ "addresses": ["Support@Acme.test"], "domains": ["@Example.org"] }),
    )
    .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let token = answer["inboundToken"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 32, "{answer}");
    assert_eq!(answer["addresses"], json!(["support@acme.test"]));
    assert_eq!(answer["domains"], json!(["example.org"]));
    // Shown once: the GET masks it.
    let seen = app
        .admin_get(&format!("/v1/locations/{location}/channels/email"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!seen.contains(&token), "{seen}");
    assert!(seen.contains(&token[28..]), "last 4 shown: {seen}");

    // A given token is kept and never echoed; a short one is refused.
    let given = "a-token-of-our-own-0123456789";
    let r = configure_email(
        &app,
        &location,
        json!({ "addresses": ["support@acme.test"], "domains": ["example.org"], "inboundToken": given }),
    )
    .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(given), "{text}");
    // A PUT without a token keeps the stored one (nothing generated, nothing shown).
    let kept = configure_email(
        &app,
        &location,
        json!({ "addresses": ["support@acme.test"], "domains": ["example.org"] }),
    )
    .await;
    let kept: Value = kept.json().await.unwrap();
    assert!(kept.get("inboundToken").is_none(), "{kept}");
    assert_eq!(
        kept["secrets"]["inboundToken"]["last4"],
        &given[given.len() - 4..]
    );
    let short = configure_email(&app, &location, json!({ "inboundToken": "too-short" })).await;
    assert_eq!(short.status(), 422);
    let plus = configure_email(&app, &location, json!({ "addresses": ["a+b@acme.test"] })).await;
    assert_eq!(plus.status(), 422);

    // An address or a domain belongs to one location.
    let other = app.create_location("Other").await;
    for body in [
        json!({ "addresses": ["support@acme.test"] }),
        json!({ "domains": ["example.org"] }),
    ] {
        let r = configure_email(&app, &other, body.clone()).await;
        assert_eq!(r.status(), 409, "{body}");
    }
    // Given back when the first location lets it go.
    configure_email(&app, &location, json!({ "addresses": [] })).await;
    let r = configure_email(&app, &other, json!({ "domains": ["example.org"] })).await;
    assert_eq!(r.status(), 200);
}

async fn a_raw_mail_becomes_the_source_documents_email_event() {
    let app = spawn_app().await;
    let (location, token, receiver) = setup(&app).await;
    let event = deliver(&app, &receiver, &token, fixture("sample.eml"), 1).await;

    // The source document's Email example, field for field, plus HighLevel's additions.
    let mut keys: Vec<&str> = event
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "attachments",
            "body",
            "contactId",
            "conversationId",
            "dateAdded",
            "direction",
            "emailMessageId",
            "from",
            "locationId",
            "messageId",
            "messageType",
            "messageTypeId",
            "messageTypeString",
            "plainText",
            "provider",
            "subject",
            "threadId",
            "timestamp",
            "to",
            "type",
            "webhookId"
        ],
        "{event:#}"
    );
    assert_eq!(event["type"], "InboundMessage");
    assert_eq!(event["locationId"], location.as_str());
    assert_eq!(event["direction"], "inbound");
    assert_eq!(event["messageType"], "Email");
    assert_eq!(event["messageTypeId"], 3);
    assert_eq!(event["messageTypeString"], "TYPE_EMAIL");
    assert_eq!(event["provider"], "raw");
    assert_eq!(event["emailMessageId"], "CAF00D-reply-2@mail.example.com");
    // A reply: its thread is the first id of References.
    assert_eq!(event["threadId"], "thread-root-1@inbox.acme.test");
    assert_eq!(event["from"], "Ana Perez <Ana@Example.com>");
    assert_eq!(event["to"], json!(["support@inbox.acme.test"]));
    assert_eq!(event["subject"], "Re: Your appointment");
    // The HTML part is the body; the text part (quoted-printable, UTF-8) is plainText.
    assert_eq!(event["body"], "<p>Yes, Thursday works. Gr&agrave;cies!</p>");
    assert!(
        event["plainText"]
            .as_str()
            .unwrap()
            .starts_with("Yes, Thursday works. Gràcies!"),
        "{event}"
    );

    // The contact is the lower-cased From address: another mail from it, written in
    // another case, is the same contact and conversation.
    let mail = b"Message-ID: <again@example.com>\r\nFrom: ANA@example.COM\r\nTo: support@acme.test\r\nSubject: again\r\n\r\nhi\r\n";
    let again = deliver(&app, &receiver, &token, mail.to_vec(), 2).await;
    assert_eq!(again["contactId"], event["contactId"]);
    assert_eq!(again["conversationId"], event["conversationId"]);
    assert_eq!(again["from"], "ANA@example.COM");
}

async fn legacy_charsets_and_encoded_words_become_utf8() {
    let app = spawn_app().await;
    let (_, token, receiver) = setup(&app).await;
    let cases = [
        (
            "latin1.eml",
            "Réservation: café crème",
            "André Müller <andre@example.fr>",
            "je voudrais réserver une table",
        ),
        (
            "windows1252.eml",
            "Invoice – €12",
            "Bob <bob@example.com>",
            "Price: €12 – “quoted”",
        ),
        (
            "shift_jis.eml",
            "予約について",
            "田中太郎 <tanaka@example.jp>",
            "こんにちは。予約の件でご連絡しました。",
        ),
        (
            "iso2022jp.eml",
            "お問い合わせ",
            "鈴木 <suzuki@example.jp>",
            "お問い合わせありがとうございます。",
        ),
    ];
    for (n, (file, subject, from, text)) in cases.iter().enumerate() {
        let event = deliver(&app, &receiver, &token, fixture(file), n + 1).await;
        assert_eq!(event["subject"], *subject, "{file}: {event:#}");
        assert_eq!(event["from"], *from, "{file}");
        assert!(
            event["plainText"].as_str().unwrap().contains(text),
            "{file}: {event:#}"
        );
        assert!(
            event["body"].as_str().unwrap().contains(text),
            "{file}: {event:#}"
        );
    }
}

async fn html_only_and_plain_only_mail_get_both_forms() {
    let app = spawn_app().await;
    let (_, token, receiver) = setup(&app).await;
    let html = deliver(&app, &receiver, &token, fixture("html_only.eml"), 1).await;
    assert!(
        html["body"].as_str().unwrap().contains("<b>there</b>"),
        "{html}"
    );
    let text = html["plainText"].as_str().unwrap();
    assert!(
        text.contains("Hello there") && text.contains("Second & last"),
        "{text:?}"
    );
    assert!(!text.contains('<'), "{text:?}");

    // Plain text only: minimal escaped HTML, its line breaks kept.
    let mail = b"Message-ID: <plain-1@example.com>\r\nFrom: p@example.com\r\nTo: support@acme.test\r\nSubject: plain\r\n\r\n1 < 2 & \"3\"\r\n<script>x</script>\r\nlast line\r\n";
    let plain = deliver(&app, &receiver, &token, mail.to_vec(), 2).await;
    assert_eq!(
        plain["body"],
        "<div>1 &lt; 2 &amp; &quot;3&quot;<br>\n&lt;script&gt;x&lt;/script&gt;<br>\nlast line</div>"
    );
}

async fn auto_replies_and_bounces_are_filed_and_marked() {
    let app = spawn_app().await;
    let (_, token, receiver) = setup(&app).await;
    let auto = deliver(&app, &receiver, &token, fixture("autoreply.eml"), 1).await;
    assert_eq!(auto["autoReply"], true, "{auto}");
    assert!(auto.get("bounce").is_none());

    // Filed under the contact it bounced for, not under MAILER-DAEMON.
    let bounce = deliver(&app, &receiver, &token, fixture("bounce.eml"), 2).await;
    assert_eq!(
        bounce["bounce"],
        json!({ "recipient": "dana@example.org", "status": "5.1.1", "action": "failed" })
    );
    let dana = deliver(
        &app,
        &receiver,
        &token,
        b"Message-ID: <d-1@example.org>\r\nFrom: Dana <Dana@example.org>\r\nTo: support@acme.test\r\nSubject: hi\r\n\r\nhello\r\n".to_vec(),
        3,
    )
    .await;
    assert_eq!(bounce["contactId"], dana["contactId"]);
    assert_ne!(bounce["contactId"], auto["contactId"]);
    // A normal mail carries neither mark.
    assert!(
        dana.get("autoReply").is_none() && dana.get("bounce").is_none(),
        "{dana}"
    );
}

async fn the_same_mail_twice_is_one_message_even_without_a_message_id() {
    let app = spawn_app().await;
    let (_, token, receiver) = setup(&app).await;
    let first = deliver(&app, &receiver, &token, fixture("no_message_id.eml"), 1).await;
    let id = first["emailMessageId"].as_str().unwrap();
    assert!(id.ends_with("@content.invalid"), "{first}");
    assert_eq!(first["threadId"], id);
    let again = post_raw(&app, fixture("no_message_id.eml"), &token, None).await;
    assert_eq!(again.status(), 200);
    let sample = post_raw(&app, fixture("sample.eml"), &token, None).await;
    assert_eq!(sample.status(), 200);
    let sample_again = post_raw(&app, fixture("sample.eml"), &token, None).await;
    assert_eq!(sample_again.status(), 200);
    app.expect_events(2).await;
    receiver.expect_exactly(2, Duration::from_millis(300)).await;
}

async fn recipients_route_by_address_then_domain_and_plus_tags_are_ignored() {
    let app = spawn_app().await;
    let (location, token, receiver) = setup(&app).await;
    let sales = app.create_location("Sales").await;
    let r = configure_email(
        &app,
        &sales,
        json!({ "addresses": ["sales@acme.test"], "inboundToken": token }),
    )
    .await;
    assert_eq!(r.status(), 200);
    let mail = |to: &str| {
        format!(
            "Message-ID: <{to}@x>\r\nFrom: a@example.com\r\nTo: {to}\r\nSubject: s\r\n\r\nbody\r\n"
        )
        .into_bytes()
    };
    // The address before the domain; a tag does not hide it.
    let e = deliver(&app, &receiver, &token, mail("Sales+Q3@acme.test"), 1).await;
    assert_eq!(e["locationId"], sales.as_str());
    // Any other address of the domain: the catch-all.
    let e = deliver(&app, &receiver, &token, mail("billing@acme.test"), 2).await;
    assert_eq!(e["locationId"], location.as_str());
    // The envelope recipient decides over the headers.
    let r = post_raw(
        &app,
        mail("billing@acme.test"),
        &token,
        Some("sales+x@acme.test"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got[2].json()["locationId"], sales.as_str());
    // Nobody's: 404 (which the mail services retry), nothing stored.
    let r = post_raw(&app, mail("someone@elsewhere.test"), &token, None).await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_recipient", "{body}");
    app.expect_events(3).await;
}

async fn wrong_credentials_bad_bodies_and_large_mail_are_refused_and_store_nothing() {
    let app = spawn_app_with(|c| c.max_email_bytes = 1_000_000).await;
    let (_, token, _receiver) = setup(&app).await;
    let wrong = post_raw(
        &app,
        fixture("sample.eml"),
        "wrong-token-0123456789abcdef",
        Some("support@acme.test"),
    )
    .await;
    assert_eq!(wrong.status(), 403);
    let none = app
        .client
        .post(app.url(RAW_PATH))
        .header("content-type", "message/rfc822")
        .body(fixture("latin1.eml"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 403);
    let not_mail = post_raw(
        &app,
        b"{\"hello\": \"world\"}".to_vec(),
        &token,
        Some("support@acme.test"),
    )
    .await;
    assert_eq!(not_mail.status(), 400);
    let body: Value = not_mail.json().await.unwrap();
    assert!(body.to_string().contains("not an e-mail message"), "{body}");
    let wrong_type = app
        .client
        .post(app.url(RAW_PATH))
        .header("content-type", "text/plain")
        .bearer_auth(&token)
        .body(fixture("latin1.eml"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);
    let mut large = fixture("latin1.eml");
    large.extend(std::iter::repeat_n(b'x', 1_000_000));
    let too_large = post_raw(&app, large, &token, None).await;
    assert_eq!(too_large.status(), 413);
    app.expect_events(0).await;
}

async fn a_26_mb_mail_is_413_with_the_default_limit() {
    let app = spawn_app().await;
    let (_, token, _receiver) = setup(&app).await;
    let mut large = fixture("latin1.eml");
    large.extend(std::iter::repeat_n(b'x', 26_000_000));
    let r = post_raw(&app, large, &token, None).await;
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert!(body.to_string().contains("25000000"), "{body}");
    app.expect_events(0).await;
}

crate::both_stores!(
    the_configuration_claims_addresses_and_shows_a_generated_token_once,
    a_raw_mail_becomes_the_source_documents_email_event,
    legacy_charsets_and_encoded_words_become_utf8,
    html_only_and_plain_only_mail_get_both_forms,
    auto_replies_and_bounces_are_filed_and_marked,
    the_same_mail_twice_is_one_message_even_without_a_message_id,
    recipients_route_by_address_then_domain_and_plus_tags_are_ignored,
    wrong_credentials_bad_bodies_and_large_mail_are_refused_and_store_nothing,
    a_26_mb_mail_is_413_with_the_default_limit,
);
