//! A mail's attachments and inline images: kept by Switchboard and sent as signed, expiring
//! URLs in the mail's order, served byte-identical under their decoded file names (RFC 2231
//! and encoded words), `cid:` references pointing at the kept copies; a file over
//! `max_attachment_bytes` listed in `omittedAttachments`, never dropped silently; a mail with
//! a broken part filed with what could be read.

use serde_json::{json, Value};

use crate::email::{deliver, fixture, setup};
use crate::helpers::*;

/// GET a kept attachment: status, content type, content disposition and bytes.
async fn fetch(app: &TestApp, url: &str) -> (u16, String, String, Vec<u8>) {
    let r = app.client.get(url).send().await.unwrap();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, content_type, disposition) = (
        r.status().as_u16(),
        header("content-type"),
        header("content-disposition"),
    );
    (
        status,
        content_type,
        disposition,
        r.bytes().await.unwrap().to_vec(),
    )
}

fn urls(event: &Value) -> Vec<String> {
    event["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect()
}

async fn attachments_and_inline_images_are_kept_and_served_byte_identical() {
    let app = spawn_app().await;
    let (_, token, receiver) = setup(&app).await;
    let event = deliver(&app, &receiver, &token, fixture("attachments.eml"), 1).await;
    let urls = urls(&event);
    // In the mail's order, each under its decoded name.
    let expected = [
        ("logo.png", "logo.png", "image/png"),
        ("Factura nº 1.pdf", "factura.pdf", "application/pdf"),
        ("résumé.txt", "resume.txt", "text/plain"),
    ];
    assert_eq!(urls.len(), expected.len(), "{event:#}");
    for (url, (name, file, content_type)) in urls.iter().zip(expected) {
        let (status, served_type, disposition, bytes) = fetch(&app, url).await;
        assert_eq!(status, 200, "{url}");
        assert_eq!(bytes, fixture(file), "{name}: not byte-identical");
        assert_eq!(served_type, content_type, "{name}");
        let encoded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        assert_eq!(
            disposition,
            format!("attachment; filename*=UTF-8''{encoded}")
        );
    }
    // The inline image's cid: points at its kept copy.
    let body = event["body"].as_str().unwrap();
    assert!(!body.contains("cid:"), "{body}");
    assert!(body.contains(&urls[0].replace('&', "&amp;")), "{body}");
    // The name is signed: another name is refused.
    let renamed = urls[1].replace("name=Factura", "name=Invoice");
    assert_eq!(fetch(&app, &renamed).await.0, 403);
    assert!(event.get("omittedAttachments").is_none());
}

async fn an_attachment_over_the_limit_is_listed_not_dropped() {
    let app = spawn_app_with(|c| c.max_attachment_bytes = 100).await;
    let (_, token, receiver) = setup(&app).await;
    let event = deliver(&app, &receiver, &token, fixture("attachments.eml"), 1).await;
    // The 264-byte logo is over 100 bytes; the two small files are kept.
    assert_eq!(
        event["omittedAttachments"],
        json!([{ "name": "logo.png", "contentType": "image/png", "size": fixture("logo.png").len() }])
    );
    assert_eq!(urls(&event).len(), 2, "{event:#}");
}

async fn a_mail_with_a_broken_part_is_filed_with_what_could_be_read() {
    let app = spawn_app().await;
    let (_, token, receiver) = setup(&app).await;
    // A base64 part that is not base64, a part cut off without its closing boundary, and a
    // byte that is no UTF-8 in a part that says UTF-8.
    let mail = b"Message-ID: <broken-1@example.com>\r\nFrom: Ana <ana@example.com>\r\nTo: support@acme.test\r\nSubject: broken\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nthe readable part \xff\xfe ok\r\n--B\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"bad.pdf\"\r\n\r\n!!!! not base64 !!!!\r\n--B\r\nContent-Type: text/plain\r\n\r\ncut off here";
    let event = deliver(&app, &receiver, &token, mail.to_vec(), 1).await;
    let text = event["plainText"].as_str().unwrap();
    assert!(text.contains("the readable part"), "{event:#}");
    assert!(
        text.contains('\u{FFFD}'),
        "the invalid bytes are replaced: {text:?}"
    );
    assert_eq!(event["subject"], "broken");
}

/// `switchboard simulate email` reaches a subscriber by every route and by SMTP, with an
/// attachment and a reply threaded to the first mail.
async fn simulate_email_reaches_a_subscriber_by_every_route() {
    let app = crate::smtp::smtp_app(|_| {}).await;
    let (location, token, receiver) = setup(&app).await;
    let r = crate::email::configure_email(
        &app,
        &location,
        json!({ "addresses": ["support@acme.test"], "inboundToken": token,
                "mailgunSigningKey": crate::email_routes::MAILGUN_KEY }),
    )
    .await;
    assert_eq!(r.status(), 200);
    let attachment =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/email/factura.pdf");
    for (n, via) in ["raw", "mailgun", "sendgrid", "postmark", "smtp"]
        .iter()
        .enumerate()
    {
        let server = match *via {
            "smtp" => app.smtp.clone().unwrap(),
            _ => app.address.clone(),
        };
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command
            .args(["simulate", "email", "--server", &server, "--via", via])
            .args([
                "--inbound-token",
                &token,
                "--mailgun-signing-key",
                crate::email_routes::MAILGUN_KEY,
            ])
            .args([
                "--from",
                "Ana Pérez <ana@example.com>",
                "--to",
                "support+sim@acme.test",
            ])
            .args([
                "--subject",
                &format!("Hola por {via}"),
                "--body",
                "¿Abren hoy?\nGracias",
            ])
            .args([
                "--message-id",
                &format!("sim-{via}@example.com"),
                "--in-reply-to",
                "sim-raw@example.com",
            ])
            .arg("--attach")
            .arg(&attachment);
        // Off the runtime's thread: the server under test runs on it.
        let out = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{via}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let event = receiver
            .wait_for(n + 1, std::time::Duration::from_secs(10))
            .await[n]
            .json();
        assert_eq!(event["provider"], *via, "{event:#}");
        assert_eq!(event["subject"], format!("Hola por {via}"));
        assert_eq!(event["from"], "Ana Pérez <ana@example.com>");
        assert_eq!(event["plainText"], "¿Abren hoy?\nGracias");
        assert_eq!(event["threadId"], "sim-raw@example.com", "{via}");
        let urls = urls(&event);
        assert_eq!(urls.len(), 1, "{via}: {event:#}");
        assert_eq!(
            fetch(&app, &urls[0]).await.3,
            fixture("factura.pdf"),
            "{via}"
        );
    }
    app.expect_events(5).await;
}

/// The attachments of one mail are the same by every route: the same names, the same bytes.
async fn attachments_arrive_alike_by_every_route() {
    let app = spawn_app().await;
    let (_, token, receiver) = crate::email_routes::mailgun_setup(&app).await;
    let files = ["logo.png", "factura.pdf", "resume.txt"];
    for (n, route) in crate::email_routes::ROUTES.into_iter().enumerate() {
        let mail = String::from_utf8(fixture("attachments.eml"))
            .unwrap()
            .replace("att-1@", &format!("att-{route:?}@"));
        let r = crate::email_routes::post_via(
            &app,
            route,
            mail.into_bytes(),
            &token,
            &format!("att-{n:0>46}"),
        )
        .await;
        assert_eq!(r.status(), 200, "{route:?}");
        let event = receiver
            .wait_for(n + 1, std::time::Duration::from_secs(10))
            .await[n]
            .json();
        let urls = urls(&event);
        assert_eq!(urls.len(), 3, "{route:?}: {event:#}");
        for (url, file) in urls.iter().zip(files) {
            assert_eq!(fetch(&app, url).await.3, fixture(file), "{route:?} {file}");
        }
        assert!(
            urls[1].contains("name=Factura+n%C2%BA+1.pdf"),
            "{route:?}: {}",
            urls[1]
        );
        assert!(
            urls[2].contains("name=r%C3%A9sum%C3%A9.txt"),
            "{route:?}: {}",
            urls[2]
        );
    }
}

crate::both_stores!(
    attachments_arrive_alike_by_every_route,
    simulate_email_reaches_a_subscriber_by_every_route,
    attachments_and_inline_images_are_kept_and_served_byte_identical,
    an_attachment_over_the_limit_is_listed_not_dropped,
    a_mail_with_a_broken_part_is_filed_with_what_could_be_read,
);
