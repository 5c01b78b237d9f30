//! Sender authentication on the SMTP listener: SPF for the connecting address (loopback here)
//! and the envelope sender, DKIM signatures made by an independent signer (dkimpy, the
//! Python DKIM library) with the test key in `tests/data/smtp/dkim.key` (a 2048-bit RSA key
//! made for these tests), DMARC for the `From` domain; every record served by the test's own
//! DNS server. Each verdict lands in the event's `authentication`; with
//! `smtp_refuse_dmarc_rejects`, a DMARC failure under `p=reject` is 550 and nothing is stored.

use std::time::Duration;

use serde_json::{json, Value};

use crate::dns::TestDns;
use crate::email::setup;
use crate::helpers::*;
use crate::smtp::{smtp_app_with_dns, smtplib};

/// DNS for the senders: example.com (SPF allows loopback, DKIM key `sel`, DMARC reject),
/// spoofed.test (SPF allows only 192.0.2.1, DMARC reject), soft.test (SPF `~all`, no DMARC),
/// alias.test (SPF allows the address of its `a:` host, loopback).
fn records(dns: &TestDns) {
    let key = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/smtp/dkim.pub.b64"),
    )
    .unwrap();
    dns.txt("example.com", "v=spf1 ip4:127.0.0.0/8 -all");
    dns.txt(
        "sel._domainkey.example.com",
        &format!("v=DKIM1; k=rsa; p={}", key.trim()),
    );
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject");
    dns.txt("spoofed.test", "v=spf1 ip4:192.0.2.1 -all");
    dns.txt("_dmarc.spoofed.test", "v=DMARC1; p=reject");
    dns.txt("soft.test", "v=spf1 ip4:192.0.2.1 ~all");
    dns.txt("alias.test", "v=spf1 a:mx.alias.test -all");
    dns.a("mx.alias.test", std::net::Ipv4Addr::LOCALHOST);
}

/// `mail` signed by dkimpy for example.com with selector `sel`, or `None` (the test skips)
/// without it.
async fn dkim_signed(mail: Vec<u8>) -> Option<Vec<u8>> {
    const SIGN: &str = "import sys, dkim\nkey = open(sys.argv[1], 'rb').read()\nmail = sys.stdin.buffer.read()\nsys.stdout.buffer.write(dkim.sign(mail, b'sel', b'example.com', key, include_headers=[b'from', b'to', b'subject', b'message-id']) + mail)\n";
    let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/smtp/dkim.key");
    match python(vec!["-c".into(), SIGN.into(), key.into()], mail).await {
        Some(out) if out.status.success() => Some(out.stdout),
        _ => {
            skip("the DKIM tests sign with dkimpy (pip install dkimpy)");
            None
        }
    }
}

/// Send `mail` from `from` to support@acme.test; the answer.
async fn send(app: &TestApp, from: &str, mail: Vec<u8>) -> Option<Value> {
    smtplib(
        app.smtp.as_deref().unwrap(),
        json!({ "from": from, "to": ["support@acme.test"] }),
        mail,
    )
    .await
}

/// A mail from `from` (header) with `id`.
fn mail_from(from: &str, id: &str, body: &str) -> Vec<u8> {
    format!("Message-ID: <{id}>\r\nFrom: {from}\r\nTo: support@acme.test\r\nSubject: Authenticated?\r\n\r\n{body}\r\n").into_bytes()
}

async fn spf_dkim_and_dmarc_verdicts_are_in_the_event() {
    let dns = TestDns::start().await;
    records(&dns);
    let app = smtp_app_with_dns(&dns, |_| {}).await;
    let (_, _, receiver) = setup(&app).await;

    // Signed and sent from an address SPF allows: everything passes.
    let Some(signed) = dkim_signed(mail_from(
        "Ana <ana@example.com>",
        "signed-1@example.com",
        "signed",
    ))
    .await
    else {
        return;
    };
    let answer = send(&app, "ana@example.com", signed.clone()).await.unwrap();
    assert_eq!(answer["data"], 250, "{answer}");
    // The body changed after signing: DKIM fails; SPF still passes, so DMARC does too.
    let text = String::from_utf8(signed).unwrap();
    let tampered = text
        .replace("signed-1@example.com", "signed-2@example.com")
        .replace("\r\nsigned\r\n", "\r\nsigned, and then changed\r\n");
    let answer = send(&app, "ana@example.com", tampered.into_bytes())
        .await
        .unwrap();
    assert_eq!(answer["data"], 250, "{answer}");
    // A signed header changed (the subject): the signature itself fails.
    let forged = text
        .replace("signed-1@example.com", "signed-3@example.com")
        .replace(
            "Subject: Authenticated?",
            "Subject: Urgent: new bank details",
        );
    let answer = send(&app, "ana@example.com", forged.into_bytes())
        .await
        .unwrap();
    assert_eq!(answer["data"], 250, "{answer}");
    // From an address SPF does not allow (hard fail), and soft fail.
    let answer = send(
        &app,
        "ceo@spoofed.test",
        mail_from(
            "CEO <ceo@spoofed.test>",
            "spoofed-1@example.com",
            "wire money",
        ),
    )
    .await
    .unwrap();
    assert_eq!(answer["data"], 250, "stored by default: {answer}");
    let answer = send(
        &app,
        "bo@soft.test",
        mail_from("Bo <bo@soft.test>", "soft-1@example.com", "hello"),
    )
    .await
    .unwrap();
    assert_eq!(answer["data"], 250, "{answer}");

    // SPF through an `a:` mechanism (one more lookup).
    let answer = send(
        &app,
        "bo@alias.test",
        mail_from("Bo <bo@alias.test>", "alias-1@example.com", "hello"),
    )
    .await
    .unwrap();
    assert_eq!(answer["data"], 250, "{answer}");

    let got = receiver.wait_for(6, Duration::from_secs(20)).await;
    let by_id = |id: &str| -> Value {
        got.iter()
            .map(|d| d.json())
            .find(|e| e["emailMessageId"] == id)
            .unwrap_or_else(|| panic!("{id} not delivered"))
    };
    assert_eq!(
        by_id("signed-1@example.com")["authentication"],
        json!({ "spf": "pass", "dkim": "pass", "dmarc": "pass" })
    );
    assert_eq!(
        by_id("signed-2@example.com")["authentication"],
        json!({ "spf": "pass", "dkim": "fail", "dmarc": "pass" })
    );
    assert_eq!(
        by_id("signed-3@example.com")["authentication"],
        json!({ "spf": "pass", "dkim": "fail", "dmarc": "pass" })
    );
    assert_eq!(
        by_id("spoofed-1@example.com")["authentication"],
        json!({ "spf": "fail", "dkim": "none", "dmarc": "fail" })
    );
    assert_eq!(
        by_id("alias-1@example.com")["authentication"],
        json!({ "spf": "pass", "dkim": "none", "dmarc": "none" })
    );
    assert_eq!(
        by_id("soft-1@example.com")["authentication"],
        json!({ "spf": "softfail", "dkim": "none", "dmarc": "none" })
    );
}

async fn with_the_refusal_on_a_dmarc_reject_is_550_and_nothing_is_stored() {
    let dns = TestDns::start().await;
    records(&dns);
    let app = smtp_app_with_dns(&dns, |c| c.smtp_refuse_dmarc_rejects = true).await;
    let (_, _, receiver) = setup(&app).await;
    let Some(answer) = send(
        &app,
        "ceo@spoofed.test",
        mail_from(
            "CEO <ceo@spoofed.test>",
            "spoofed-2@example.com",
            "wire money",
        ),
    )
    .await
    else {
        return;
    };
    assert_eq!(answer["data"], 550, "{answer}");
    assert!(
        answer["data_text"].as_str().unwrap().starts_with("5.7.1"),
        "{answer}"
    );
    // Soft fail without a DMARC policy, and a passing sender, are still taken.
    for (from, id) in [
        ("bo@soft.test", "soft-2@example.com"),
        ("ana@example.com", "ana-2@example.com"),
    ] {
        let answer = send(&app, from, mail_from(from, id, "hi")).await.unwrap();
        assert_eq!(answer["data"], 250, "{from}: {answer}");
    }
    let got = receiver.expect_exactly(2, Duration::from_millis(500)).await;
    assert!(got
        .iter()
        .all(|d| d.json()["emailMessageId"] != "spoofed-2@example.com"));
    assert_eq!(app.events().await.len(), 2);
}

crate::both_stores!(
    spf_dkim_and_dmarc_verdicts_are_in_the_event,
    with_the_refusal_on_a_dmarc_reject_is_550_and_nothing_is_stored,
);
