//! Flood and loop protection: an auto-responder answering the business's auto-responder 100
//! times in a minute (by SMTP and by a route alike) is stored whole, but subscribers receive
//! only `max_mails_per_conversation_per_minute` of it; the rest is marked `suppressed`,
//! counted and logged. Another sender's conversation is not held back, and a minute later the
//! looping sender's mail is delivered again.

use std::time::Duration;

use serde_json::Value;

use crate::email::{post_raw, setup};
use crate::helpers::*;
use crate::smtp::Wire;

/// The looping robot's `n`th auto-reply, each answering the one before.
fn auto_reply(n: usize) -> Vec<u8> {
    let previous = if n == 0 {
        String::new()
    } else {
        format!("In-Reply-To: <loop-{}@robot.example.net>\r\n", n - 1)
    };
    format!(
        "Message-ID: <loop-{n}@robot.example.net>\r\n{previous}From: Robot <robot@example.net>\r\nTo: support@acme.test\r\nSubject: Auto: Re: Your ticket\r\nAuto-Submitted: auto-replied\r\n\r\nThank you for your message ({n}). We will answer soon.\r\n"
    )
    .into_bytes()
}

/// Send `mail` over an open SMTP connection: pipelined envelope, then the mail; its code.
async fn over_smtp(wire: &mut Wire, mail: &[u8]) -> u16 {
    wire.send(b"MAIL FROM:<robot@example.net>\r\nRCPT TO:<support@acme.test>\r\nDATA\r\n")
        .await;
    assert_eq!(wire.codes(3).await, [250, 250, 354]);
    wire.send(mail).await;
    wire.send(b".\r\n").await;
    wire.reply().await.0
}

async fn an_auto_reply_loop_is_stored_but_delivered_only_up_to_the_cap() {
    let dns = crate::dns::TestDns::start().await;
    let (app, clock) = spawn_app_on_manual_clock(|c| {
        c.smtp_listen = Some("127.0.0.1:0".into());
        c.smtp_dns_servers = vec![dns.addr];
    })
    .await;
    let cap = switchboard::Config::defaults().max_mails_per_conversation_per_minute as usize;
    assert_eq!(cap, 20);
    let (_, token, receiver) = setup(&app).await;
    let (mut wire, _) = Wire::connect(app.smtp.as_deref().unwrap()).await;
    wire.send(b"EHLO robot.example.net\r\n").await;
    assert_eq!(wire.reply().await.0, 250);
    // 100 mails within the minute (the clock does not move), half by SMTP, half raw: every
    // one acknowledged.
    for n in 0..100 {
        if n % 2 == 0 {
            assert_eq!(over_smtp(&mut wire, &auto_reply(n)).await, 250, "mail {n}");
        } else {
            let r = post_raw(&app, auto_reply(n), &token, None).await;
            assert_eq!(r.status(), 200, "mail {n}");
        }
    }
    // A person writing in the same minute is another conversation: delivered.
    let r = post_raw(
        &app,
        crate::smtp::mail_to("support@acme.test", "person-1@example.com", "a question"),
        &token,
        None,
    )
    .await;
    assert_eq!(r.status(), 200);

    let got = receiver
        .expect_exactly(cap + 1, Duration::from_millis(800))
        .await;
    let delivered: Vec<Value> = got.iter().map(|d| d.json()).collect();
    // Which ones, not in which order: the webhook is not ordered, so deliveries queued
    // together go out side by side.
    let mut robot: Vec<usize> = Vec::new();
    for event in delivered
        .iter()
        .filter(|e| e["from"] == "Robot <robot@example.net>")
    {
        assert!(event.get("suppressed").is_none(), "{event}");
        let id = event["emailMessageId"].as_str().unwrap();
        robot.push(id["loop-".len()..id.find('@').unwrap()].parse().unwrap());
    }
    robot.sort_unstable();
    assert_eq!(
        robot,
        (0..cap).collect::<Vec<_>>(),
        "the first {cap} are delivered"
    );
    assert!(delivered
        .iter()
        .any(|e| e["emailMessageId"] == "person-1@example.com"));

    // The store holds all of them; the ones past the cap are marked.
    let events = app.events().await;
    assert_eq!(events.len(), 101);
    let suppressed: Vec<&Value> = events.iter().filter(|e| e["suppressed"] == true).collect();
    assert_eq!(suppressed.len(), 100 - cap);
    for event in &suppressed {
        assert_eq!(event["from"], "Robot <robot@example.net>");
        assert_eq!(event["autoReply"], true);
    }
    let metrics = get_metrics(&app.client, &app.address).await;
    assert!(
        metrics.contains(&format!("switchboard_mails_suppressed_total {}", 100 - cap)),
        "{metrics}"
    );

    // A minute later the robot's mail is delivered again (it may have stopped looping).
    clock.advance(Duration::from_secs(61));
    assert_eq!(over_smtp(&mut wire, &auto_reply(100)).await, 250);
    let got = receiver.wait_for(cap + 2, Duration::from_secs(10)).await;
    assert_eq!(
        got[cap + 1].json()["emailMessageId"],
        "loop-100@robot.example.net"
    );
}

/// The mails suppressed while the subscriber's backlog is held in the event stream stay out of
/// it: once the subscriber answers, it receives what ingest would have handed it, the first
/// `cap` of the loop (and the first one twice: it timed out), not the ones past the cap.
async fn suppressed_mail_stays_out_of_a_held_backlog() {
    let app = spawn_app_with(|c| c.delivery_timeout = Duration::from_secs(1)).await;
    let cap = switchboard::Config::defaults().max_mails_per_conversation_per_minute as usize;
    let (_, token, receiver) = setup(&app).await;
    receiver.slow(Duration::from_secs(3600));
    let r = post_raw(&app, auto_reply(0), &token, None).await;
    assert_eq!(r.status(), 200);
    receiver.wait_for(1, Duration::from_secs(5)).await;
    let webhook = app.get_json("/v1/webhooks").await["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(Duration::from_secs(10), "the backlog held", || async {
        let w = app.get_json(&format!("/v1/webhooks/{webhook}")).await;
        w["health"]["backlogHeldAfter"].is_i64().then_some(())
    })
    .await;
    for n in 1..cap + 10 {
        let r = post_raw(&app, auto_reply(n), &token, None).await;
        assert_eq!(r.status(), 200, "mail {n}");
    }
    let events = app.events().await;
    assert_eq!(
        events.iter().filter(|e| e["suppressed"] == true).count(),
        10
    );
    receiver.slow(Duration::ZERO);
    // The first attempt times out after 1 s and is retried 5 s later; then the rest is written.
    receiver.wait_for(cap + 1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = receiver.received();
    let mut ids: Vec<String> = got
        .iter()
        .map(|d| d.json()["emailMessageId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got.len(), cap + 1, "{ids:?}");
    ids.sort();
    ids.dedup();
    let mut expected: Vec<String> = (0..cap)
        .map(|n| format!("loop-{n}@robot.example.net"))
        .collect();
    expected.sort();
    assert_eq!(ids, expected);
}

crate::both_stores!(
    an_auto_reply_loop_is_stored_but_delivered_only_up_to_the_cap,
    suppressed_mail_stays_out_of_a_held_backlog
);
