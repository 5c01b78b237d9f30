//! E-mail threading and duplicates against the location's stored mail: a reply joins the
//! thread of any stored id of its chain (even when its headers name only its parent), a reply
//! that came before its parent keeps the parent in its thread, and two different mails under
//! one Message-ID are two messages, the second marked `messageIdReused`. The mails take the
//! four routes in turn: threading and duplicates do not depend on the route.

use std::time::Duration;

use serde_json::Value;

use crate::email::post_raw;
use crate::email_routes::{mailgun_setup as setup, post_via, ROUTES};
use crate::helpers::*;

/// Post a mail by the `n`th route in turn and return its event (the `n`th the receiver got).
async fn send(
    app: &TestApp,
    receiver: &TestReceiver,
    token: &str,
    mail: Vec<u8>,
    n: usize,
) -> Value {
    let route = ROUTES[n % ROUTES.len()];
    let r = post_via(app, route, mail, token, &format!("thread-{n:0>43}")).await;
    assert_eq!(r.status(), 200, "{route:?}: {}", r.text().await.unwrap());
    receiver.wait_for(n, Duration::from_secs(10)).await[n - 1].json()
}

/// A mail from ana@example.com to support@acme.test with these extra headers.
fn mail(headers: &str, text: &str) -> Vec<u8> {
    format!(
        "{headers}From: Ana <ana@example.com>\r\nTo: support@acme.test\r\nSubject: Booking\r\n\r\n{text}\r\n"
    )
    .into_bytes()
}

async fn a_three_message_chain_with_its_middle_never_stored_is_one_thread() {
    let app = spawn_app().await;
    let (_, token, receiver) = setup(&app).await;
    // The first stored mail replies to one of the business's own (never stored here).
    let first = send(
        &app,
        &receiver,
        &token,
        mail(
            "Message-ID: <m1@example.com>\r\nIn-Reply-To: <out-0@acme.test>\r\n",
            "one",
        ),
        1,
    )
    .await;
    assert_eq!(first["threadId"], "out-0@acme.test");
    // m2 (a reply to m1) never reaches Switchboard; m3 names only its parent m2 and m1.
    let third = send(
        &app,
        &receiver,
        &token,
        mail(
            "Message-ID: <m3@example.com>\r\nReferences: <m1@example.com> <m2@example.com>\r\nIn-Reply-To: <m2@example.com>\r\n",
            "three",
        ),
        2,
    )
    .await;
    // Through the stored m1, not the first id of its own References.
    assert_eq!(third["threadId"], "out-0@acme.test", "{third}");
    // A client that sends only In-Reply-To still lands in the thread.
    let fourth = send(
        &app,
        &receiver,
        &token,
        mail(
            "Message-ID: <m4@example.com>\r\nIn-Reply-To: <m3@example.com>\r\n",
            "four",
        ),
        3,
    )
    .await;
    assert_eq!(fourth["threadId"], "out-0@acme.test", "{fourth}");
    // A mail that replies to nothing starts its own thread.
    let fresh = send(
        &app,
        &receiver,
        &token,
        mail("Message-ID: <new@example.com>\r\n", "new"),
        4,
    )
    .await;
    assert_eq!(fresh["threadId"], "new@example.com");
}

async fn a_reply_that_arrives_before_its_parent_threads_with_it() {
    let app = spawn_app().await;
    let (_, token, receiver) = setup(&app).await;
    // The reply comes first, naming only its parent p1: its thread is p1.
    let reply = send(
        &app,
        &receiver,
        &token,
        mail(
            "Message-ID: <r1@example.com>\r\nIn-Reply-To: <p1@example.com>\r\n",
            "reply",
        ),
        1,
    )
    .await;
    assert_eq!(reply["threadId"], "p1@example.com");
    // The parent, itself a reply to a mail never stored: it keeps the thread its reply
    // already has rather than start another.
    let parent = send(
        &app,
        &receiver,
        &token,
        mail(
            "Message-ID: <p1@example.com>\r\nReferences: <root-elsewhere@example.net>\r\n",
            "parent",
        ),
        2,
    )
    .await;
    assert_eq!(parent["threadId"], "p1@example.com", "{parent}");
    assert!(parent.get("messageIdReused").is_none(), "{parent}");
    // With the full chain, a reply before its parent joins the root's thread.
    let root = send(
        &app,
        &receiver,
        &token,
        mail("Message-ID: <root@example.com>\r\n", "root"),
        3,
    )
    .await;
    assert_eq!(root["threadId"], "root@example.com");
    let early = send(
        &app,
        &receiver,
        &token,
        mail(
            "Message-ID: <c@example.com>\r\nReferences: <root@example.com> <b@example.com>\r\nIn-Reply-To: <b@example.com>\r\n",
            "c",
        ),
        4,
    )
    .await;
    let late = send(
        &app,
        &receiver,
        &token,
        mail(
            "Message-ID: <b@example.com>\r\nReferences: <root@example.com>\r\n",
            "b",
        ),
        5,
    )
    .await;
    assert_eq!(early["threadId"], "root@example.com");
    assert_eq!(late["threadId"], "root@example.com");
}

async fn two_different_mails_with_one_message_id_are_two_messages() {
    let app = spawn_app().await;
    let (_, token, receiver) = setup(&app).await;
    let headers = "Message-ID: <reused@example.com>\r\n";
    let first = send(&app, &receiver, &token, mail(headers, "the first text"), 1).await;
    assert!(first.get("messageIdReused").is_none(), "{first}");
    let second = send(
        &app,
        &receiver,
        &token,
        mail(headers, "another text entirely"),
        2,
    )
    .await;
    assert_eq!(second["messageIdReused"], true, "{second}");
    assert_eq!(second["emailMessageId"], "reused@example.com");
    assert_ne!(second["messageId"], first["messageId"]);
    // The first again is still one message; whitespace does not make it another.
    let again = post_raw(&app, mail(headers, "the   first\r\n text"), &token, None).await;
    assert_eq!(again.status(), 200);
    app.expect_events(2).await;
}

crate::both_stores!(
    a_three_message_chain_with_its_middle_never_stored_is_one_thread,
    a_reply_that_arrives_before_its_parent_threads_with_it,
    two_different_mails_with_one_message_id_are_two_messages,
);
