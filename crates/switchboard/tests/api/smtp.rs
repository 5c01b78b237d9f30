//! The SMTP listener, with real clients over loopback: Python's smtplib
//! (`tests/smtp_client.py`) for what a sending server does, and a line-level peer of our own
//! for what no library client does on purpose (a pipelined batch, a connection dropped in the
//! middle of a mail). The certificate in `tests/data/smtp/` is a self-signed test certificate
//! for mx.acme.test, localhost and 127.0.0.1 (`openssl req -x509 -newkey ec …`, valid until
//! 2126); it protects nothing.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::email::{fixture, post_raw, setup};
use crate::helpers::*;

/// A server with the SMTP listener on a loopback port, its SPF, DKIM and DMARC lookups
/// answered by a DNS server of the test's with no records, and `adjust` on top.
pub(crate) async fn smtp_app(adjust: impl FnOnce(&mut switchboard::config::Config)) -> TestApp {
    // The server's task goes on when the handle is dropped.
    smtp_app_with_dns(&crate::dns::TestDns::start().await, adjust).await
}

/// As [`smtp_app`], the lookups answered by `dns`.
pub(crate) async fn smtp_app_with_dns(
    dns: &crate::dns::TestDns,
    adjust: impl FnOnce(&mut switchboard::config::Config),
) -> TestApp {
    spawn_app_with(|c| {
        c.smtp_listen = Some("127.0.0.1:0".into());
        c.smtp_dns_servers = vec![dns.addr];
        adjust(c);
    })
    .await
}

fn data_path(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(name)
        .display()
        .to_string()
}

/// Send `mail` with Python's smtplib to `address` (host:port) as `request` says (`from`, `to`,
/// and `starttls`, `mail_options` when wanted): what the server answered, or `None` (the test
/// skips) without python3.
pub(crate) async fn smtplib(address: &str, mut request: Value, mail: Vec<u8>) -> Option<Value> {
    let (host, port) = address.rsplit_once(':').unwrap();
    request["host"] = json!(host);
    request["port"] = json!(port.parse::<u16>().unwrap());
    if request.get("starttls").is_some() {
        request["cafile"] = json!(data_path("tests/data/smtp/cert.pem"));
    }
    let script = data_path("tests/smtp_client.py");
    let Some(out) = python(vec![script.into(), request.to_string().into()], mail).await else {
        skip("the SMTP tests need python3 (its smtplib is the client)");
        return None;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let answer: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "smtp_client.py: {e}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(answer.get("error").is_none(), "{answer}");
    Some(answer)
}

/// A mail to `to` with `id` as its Message-ID.
pub(crate) fn mail_to(to: &str, id: &str, body: &str) -> Vec<u8> {
    format!(
        "Message-ID: <{id}>\r\nFrom: Ana Perez <ana@example.com>\r\nTo: {to}\r\nSubject: By SMTP\r\nDate: Wed, 1 May 2024 12:00:00 +0200\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// An SMTP peer at the level of lines, for what a library client will not do.
pub(crate) struct Wire {
    stream: BufReader<TcpStream>,
}

impl Wire {
    /// Connected, with the greeting read (and returned).
    pub(crate) async fn connect(address: &str) -> (Wire, (u16, String)) {
        let stream = TcpStream::connect(address).await.unwrap();
        let mut wire = Wire {
            stream: BufReader::new(stream),
        };
        let greeting = wire.reply().await;
        (wire, greeting)
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// One reply (all its lines): its code and its last line's text; code 0 when the
    /// connection closed first.
    pub(crate) async fn reply(&mut self) -> (u16, String) {
        loop {
            let mut line = String::new();
            let read =
                tokio::time::timeout(Duration::from_secs(20), self.stream.read_line(&mut line))
                    .await
                    .expect("a reply within 20 s")
                    .unwrap_or(0);
            if read == 0 {
                return (0, String::new());
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (code, line.trim_end().to_owned());
            }
        }
    }

    /// The codes of the next `n` replies.
    pub(crate) async fn codes(&mut self, n: usize) -> Vec<u16> {
        let mut codes = vec![];
        for _ in 0..n {
            codes.push(self.reply().await.0);
        }
        codes
    }
}

/// The events stored so far (whether or not delivered).
async fn stored(app: &TestApp) -> Vec<Value> {
    app.events().await
}

/// A mail to a claimed address: `250` from a real client, then one event in the Email shape
/// with `provider` `smtp`, equal field for field (but `provider`) to the raw route's event
/// for the same mail; the same mail again by the raw route is the same message (one event).
async fn a_mail_by_smtp_is_stored_delivered_and_the_same_as_by_a_route() {
    let app = smtp_app(|_| {}).await;
    let (_, token, receiver) = setup(&app).await;
    let smtp = app.smtp.clone().unwrap();
    let Some(answer) = smtplib(
        &smtp,
        json!({ "from": "ana@example.com", "to": ["support@inbox.acme.test"] }),
        fixture("sample.eml"),
    )
    .await
    else {
        return;
    };
    assert_eq!(answer["data"], 250, "{answer}");
    assert_eq!(answer["refused"], json!({}), "{answer}");
    for keyword in ["size", "8bitmime", "pipelining", "smtputf8"] {
        assert!(
            answer["ehlo"].as_array().unwrap().contains(&json!(keyword)),
            "{keyword}: {answer}"
        );
    }
    assert!(
        !answer["ehlo"]
            .as_array()
            .unwrap()
            .contains(&json!("starttls")),
        "STARTTLS offered without a certificate: {answer}"
    );
    let by_smtp = receiver.wait_for(1, Duration::from_secs(10)).await[0].json();
    assert_eq!(by_smtp["provider"], "smtp");
    assert_eq!(by_smtp["messageType"], "Email");
    assert_eq!(by_smtp["subject"], "Re: Your appointment");
    assert_eq!(by_smtp["from"], "Ana Perez <Ana@Example.com>");

    // The same mail by the raw route: stored already, so not a second message.
    let r = post_raw(&app, fixture("sample.eml"), &token, None).await;
    assert_eq!(r.status(), 200);
    receiver.expect_exactly(1, Duration::from_millis(500)).await;
    assert_eq!(stored(&app).await.len(), 1);

    // Field for field as the raw route files it (on a server of its own).
    let other = spawn_app().await;
    let (_, other_token, other_receiver) = setup(&other).await;
    let by_raw = crate::email::deliver(
        &other,
        &other_receiver,
        &other_token,
        fixture("sample.eml"),
        1,
    )
    .await;
    let differing: Vec<&String> = by_raw
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| by_raw[*k] != by_smtp[*k])
        .collect();
    for key in differing {
        let ids = [
            "provider",
            "locationId",
            "contactId",
            "conversationId",
            "messageId",
            "webhookId",
            "dateAdded",
            "timestamp",
            "attachments",
            "authentication",
        ];
        assert!(
            ids.contains(&key.as_str()),
            "{key}: {} by SMTP, {} by the raw route",
            by_smtp[key],
            by_raw[key]
        );
    }
    // What SMTP adds: the sender's authentication (nothing published for example.com here).
    assert_eq!(
        by_smtp["authentication"],
        json!({ "spf": "none", "dkim": "none", "dmarc": "none" })
    );
    assert!(by_raw.get("authentication").is_none());
    assert_eq!(
        by_smtp.as_object().unwrap().len(),
        by_raw.as_object().unwrap().len() + 1
    );
}

/// `RCPT TO` an address and domain nobody claims: 550 5.1.1 (never a relay); with one claimed
/// recipient among them the mail is stored once, for it.
async fn recipients_nobody_claims_are_refused_550() {
    let app = smtp_app(|_| {}).await;
    let (_, _, receiver) = setup(&app).await;
    let smtp = app.smtp.clone().unwrap();
    let Some(answer) = smtplib(
        &smtp,
        json!({ "from": "spammer@example.net", "to": ["victim@elsewhere.test"] }),
        mail_to("victim@elsewhere.test", "relay-1@example.net", "relay me"),
    )
    .await
    else {
        return;
    };
    assert_eq!(
        answer["refused"]["victim@elsewhere.test"][0], 550,
        "{answer}"
    );
    assert!(answer["refused"]["victim@elsewhere.test"][1]
        .as_str()
        .unwrap()
        .starts_with("5.1.1"));
    assert!(answer.get("data").is_none(), "{answer}");

    let answer = smtplib(
        &smtp,
        json!({ "from": "ana@example.com", "to": ["victim@elsewhere.test", "Support+Orders@Acme.test"] }),
        mail_to("support@acme.test", "mixed-1@example.com", "one of two"),
    )
    .await
    .unwrap();
    assert_eq!(answer["data"], 250, "{answer}");
    assert_eq!(answer["refused"]["victim@elsewhere.test"][0], 550);
    let got = receiver.expect_exactly(1, Duration::from_millis(500)).await;
    assert_eq!(got[0].json()["plainText"], "one of two\n");
    assert_eq!(stored(&app).await.len(), 1);
}

/// Larger than `max_email_bytes`: 552 at `MAIL` when the client declares its size, and after
/// `DATA` when it does not; nothing stored, and the connection goes on.
async fn a_mail_too_large_is_552_before_or_during_data() {
    let app = smtp_app(|c| c.max_email_bytes = 4096).await;
    let (_, _, receiver) = setup(&app).await;
    let smtp = app.smtp.clone().unwrap();
    let big = mail_to("support@acme.test", "big-1@example.com", &"x".repeat(6000));
    let Some(answer) = smtplib(
        &smtp,
        json!({ "from": "ana@example.com", "to": ["support@acme.test"] }),
        big.clone(),
    )
    .await
    else {
        return;
    };
    assert_eq!(answer["mail"][0], 552, "SIZE= declared: {answer}");
    assert!(answer["ehlo"].as_array().unwrap().contains(&json!("size")));

    // Not declared: read to its end, then refused; the same connection then sends a mail.
    let (mut wire, _) = Wire::connect(&smtp).await;
    wire.send(b"EHLO client.example.org\r\n").await;
    let (code, _) = wire.reply().await;
    assert_eq!(code, 250);
    wire.send(b"MAIL FROM:<ana@example.com>\r\nRCPT TO:<support@acme.test>\r\nDATA\r\n")
        .await;
    assert_eq!(wire.codes(3).await, [250, 250, 354]);
    wire.send(&big).await;
    wire.send(b".\r\n").await;
    let (code, text) = wire.reply().await;
    assert_eq!((code, &text[..9]), (552, "552 5.3.4"), "{text}");
    wire.send(b"MAIL FROM:<ana@example.com>\r\nRCPT TO:<support@acme.test>\r\nDATA\r\n")
        .await;
    assert_eq!(wire.codes(3).await, [250, 250, 354]);
    wire.send(&mail_to(
        "support@acme.test",
        "small-1@example.com",
        "small",
    ))
    .await;
    wire.send(b".\r\nQUIT\r\n").await;
    assert_eq!(wire.codes(2).await, [250, 221]);
    let got = receiver.expect_exactly(1, Duration::from_millis(500)).await;
    assert_eq!(got[0].json()["emailMessageId"], "small-1@example.com");
}

/// STARTTLS with the test certificate: offered only with one, verified by the client
/// against it, and the mail sent over TLS is stored; STARTTLS is not offered twice.
async fn starttls_with_a_test_certificate() {
    let app = smtp_app(|c| {
        c.smtp_tls_cert = Some(data_path("tests/data/smtp/cert.pem").into());
        c.smtp_tls_key = Some(data_path("tests/data/smtp/key.pem").into());
    })
    .await;
    let (_, _, receiver) = setup(&app).await;
    let smtp = app.smtp.clone().unwrap();
    let Some(answer) = smtplib(
        &smtp,
        json!({ "from": "ana@example.com", "to": ["support@acme.test"], "starttls": true }),
        mail_to("support@acme.test", "tls-1@example.com", "over TLS"),
    )
    .await
    else {
        return;
    };
    assert!(answer["ehlo"]
        .as_array()
        .unwrap()
        .contains(&json!("starttls")));
    assert_eq!(answer["starttls"], 220, "{answer}");
    assert!(
        answer["tls_version"]
            .as_str()
            .unwrap()
            .starts_with("TLSv1."),
        "{answer}"
    );
    assert!(
        !answer["ehlo_tls"]
            .as_array()
            .unwrap()
            .contains(&json!("starttls")),
        "{answer}"
    );
    assert_eq!(answer["data"], 250, "{answer}");
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].json()["plainText"], "over TLS\n");

    // Commands sent in the clear after STARTTLS, before the handshake, are dropped rather
    // than read as if they had come over TLS (CVE-2011-0411's injection).
    let (mut wire, _) = Wire::connect(&smtp).await;
    wire.send(b"EHLO x\r\nSTARTTLS\r\nRSET\r\n").await;
    assert_eq!(wire.codes(2).await, [250, 220]);
    // The server now waits for a TLS handshake: the RSET got no answer in the clear.
    let silent = tokio::time::timeout(Duration::from_millis(300), wire.reply()).await;
    assert!(
        silent.is_err() || silent.unwrap().0 == 0,
        "answered in the clear"
    );
}

/// A pipelined batch (RFC 2920): every command of it answered, in order, in one go; a refused
/// recipient in the middle does not stop the mail.
async fn pipelined_commands_are_answered_in_order() {
    let app = smtp_app(|_| {}).await;
    let (_, _, receiver) = setup(&app).await;
    let (mut wire, (greeting, _)) = Wire::connect(app.smtp.as_deref().unwrap()).await;
    assert_eq!(greeting, 220);
    wire.send(b"EHLO client.example.org\r\nMAIL FROM:<ana@example.com> BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<nobody@elsewhere.test>\r\nRCPT TO:<support@acme.test>\r\nRCPT TO:<ventas@acme.test>\r\nDATA\r\n").await;
    assert_eq!(wire.codes(6).await, [250, 250, 550, 250, 250, 354]);
    let mail = "Message-ID: <pipe-1@example.com>\r\nFrom: Zoë <zoe@example.com>\r\nTo: support@acme.test\r\nSubject: Pipelined ünïcode\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n..a line that starts with a dot\r\nÜber\r\n.\r\nNOOP\r\nQUIT\r\n";
    wire.send(mail.as_bytes()).await;
    assert_eq!(wire.codes(3).await, [250, 250, 221]);
    let event = receiver.wait_for(1, Duration::from_secs(10)).await[0].json();
    assert_eq!(event["plainText"], ".a line that starts with a dot\nÜber\n");

    // An empty mail: its `.` right after DATA ends it (answered at once, not by a timeout).
    let (mut wire, _) = Wire::connect(app.smtp.as_deref().unwrap()).await;
    wire.send(b"EHLO x\r\nMAIL FROM:<ana@example.com>\r\nRCPT TO:<support@acme.test>\r\nDATA\r\n.\r\nQUIT\r\n").await;
    assert_eq!(wire.codes(6).await, [250, 250, 250, 354, 554, 221]);
    assert_eq!(event["from"], "Zoë <zoe@example.com>");
    assert_eq!(
        stored(&app).await.len(),
        1,
        "two recipients, one location: one message"
    );
}

/// A connection that drops in the middle of a mail stores nothing; the server goes on.
async fn a_connection_dropped_mid_data_stores_nothing() {
    let app = smtp_app(|_| {}).await;
    let (_, _, receiver) = setup(&app).await;
    let smtp = app.smtp.clone().unwrap();
    let (mut wire, _) = Wire::connect(&smtp).await;
    wire.send(b"EHLO x\r\nMAIL FROM:<ana@example.com>\r\nRCPT TO:<support@acme.test>\r\nDATA\r\n")
        .await;
    assert_eq!(wire.codes(4).await, [250, 250, 250, 354]);
    let mail = mail_to("support@acme.test", "cut-1@example.com", "half of it");
    wire.send(&mail[..mail.len() / 2]).await;
    drop(wire);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(stored(&app).await.is_empty());
    let Some(answer) = smtplib(
        &smtp,
        json!({ "from": "ana@example.com", "to": ["support@acme.test"] }),
        mail_to("support@acme.test", "whole-1@example.com", "all of it"),
    )
    .await
    else {
        return;
    };
    assert_eq!(answer["data"], 250);
    let got = receiver.expect_exactly(1, Duration::from_millis(300)).await;
    assert_eq!(got[0].json()["emailMessageId"], "whole-1@example.com");
}

/// The listener's limits: recipients per mail (452), command line length (500), commands out
/// of order (503), connections per client (421), idle time (421).
#[tokio::test]
async fn the_listeners_limits_hold() {
    let app = smtp_app(|c| {
        c.smtp_max_recipients = 2;
        c.smtp_max_line_bytes = 512;
        c.smtp_max_connections_per_client = 3;
        c.smtp_idle_timeout = Duration::from_millis(800);
    })
    .await;
    setup(&app).await;
    let smtp = app.smtp.clone().unwrap();
    let (mut wire, _) = Wire::connect(&smtp).await;
    wire.send(b"RCPT TO:<support@acme.test>\r\nDATA\r\nMAIL FROM:<a@example.com>\r\n")
        .await;
    assert_eq!(wire.codes(3).await, [503, 503, 503], "before EHLO and MAIL");
    let long = format!("EHLO {}\r\n", "h".repeat(600));
    wire.send(long.as_bytes()).await;
    let (code, text) = wire.reply().await;
    assert_eq!(code, 500, "{text}");
    // Extensions not offered are refused, not silently ignored.
    wire.send(b"EHLO x\r\nMAIL FROM:<a@example.com> REQUIRETLS\r\nMAIL FROM:<a@example.com> BODY=BINARYMIME\r\nMAIL FROM:<a@example.com> RET=HDRS\r\n").await;
    assert_eq!(wire.codes(4).await, [250, 555, 555, 555]);
    wire.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<support@acme.test>\r\nRCPT TO:<a@acme.test>\r\nRCPT TO:<b@acme.test>\r\n").await;
    assert_eq!(wire.codes(4).await, [250, 250, 250, 452]);

    // Two more connections from this address are admitted; the fourth is told to come back.
    let (_second, (code, _)) = Wire::connect(&smtp).await;
    assert_eq!(code, 220);
    let (_third, (code, _)) = Wire::connect(&smtp).await;
    assert_eq!(code, 220);
    let (_fourth, (code, text)) = Wire::connect(&smtp).await;
    assert_eq!(code, 421, "{text}");

    // Idle past smtp_idle_timeout: 421 and closed.
    let (code, text) = wire.reply().await;
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.4.2"), "{text}");
    assert_eq!(wire.reply().await.0, 0, "closed after the 421");
}

/// A certificate that cannot be read, or an SMTP port in use, stops the start and names the
/// setting.
#[tokio::test]
async fn a_bad_certificate_or_a_port_in_use_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let mut config = test_config(dir.path());
    config.smtp_listen = Some("127.0.0.1:0".into());
    config.smtp_tls_cert = Some(not_pem);
    config.smtp_tls_key = Some(data_path("tests/data/smtp/key.pem").into());
    let err = switchboard::startup::Application::build(config)
        .await
        .err()
        .expect("a start with a bad certificate fails");
    assert!(format!("{err:#}").contains("smtp_tls_cert"), "{err:#}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.smtp_listen = Some(taken.local_addr().unwrap().to_string());
    let err = switchboard::startup::Application::build(config)
        .await
        .err()
        .expect("a start on a port in use fails");
    assert!(format!("{err:#}").contains("smtp_listen"), "{err:#}");
}

crate::both_stores!(
    a_mail_by_smtp_is_stored_delivered_and_the_same_as_by_a_route,
    recipients_nobody_claims_are_refused_550,
    a_mail_too_large_is_552_before_or_during_data,
    starttls_with_a_test_certificate,
    pipelined_commands_are_answered_in_order,
    a_connection_dropped_mid_data_stores_nothing,
);
