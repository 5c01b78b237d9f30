//! What an outsider sends the SMTP listener cannot crash it or hold it: connections sending
//! random bytes, broken commands, NUL bytes, invalid UTF-8, endless lines and half mails, in
//! many shapes from a seeded generator. No panic in the listener's code, every connection
//! answered or closed, and afterwards a real client's mail is stored as usual.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::email::setup;
use crate::smtp::{mail_to, smtp_app, smtplib};

/// Panics raised in the SMTP listener's code or its protocol parser, whatever test runs.
static SMTP_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_smtp_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let file = info.location().map(|l| l.file()).unwrap_or_default();
            if file.contains("email/smtp") || file.contains("smtp-proto") {
                SMTP_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// One line of garbage: random bytes, or a command with a random argument.
fn garbage(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    const VERBS: &[&str] = &[
        "EHLO",
        "HELO",
        "MAIL FROM:",
        "RCPT TO:",
        "DATA",
        "BDAT",
        "AUTH",
        "STARTTLS",
        "RSET",
        "VRFY",
        "NOOP",
        "HELP",
        "EXPN",
        "ETRN",
        "LHLO",
        "QUIT",
    ];
    let mut line = Vec::new();
    match rng.gen_range(0..5) {
        0 => line.extend((0..rng.gen_range(0..300)).map(|_| rng.gen::<u8>())),
        1 => {
            line.extend_from_slice(VERBS[rng.gen_range(0..VERBS.len())].as_bytes());
            line.extend((0..rng.gen_range(0..80)).map(|_| rng.gen_range(0x20..0x7f_u8)));
        }
        2 => {
            line.extend_from_slice(b"MAIL FROM:<a@b.example> SIZE=");
            line.extend_from_slice(
                ["99999999999999999999999", "-1", "0x10", ""][rng.gen_range(0..4)].as_bytes(),
            );
            line.extend_from_slice(
                [" BODY=8BITMIME", " SMTPUTF8", " X=Y", ""][rng.gen_range(0..4)].as_bytes(),
            );
        }
        3 => {
            line.extend_from_slice(b"RCPT TO:<");
            line.extend((0..rng.gen_range(0..600)).map(|_| rng.gen::<u8>()));
            line.push(b'>');
        }
        _ => line.extend(std::iter::repeat_n(b'A', rng.gen_range(0..20_000))),
    }
    if rng.gen_bool(0.9) {
        line.extend_from_slice(if rng.gen_bool(0.8) { b"\r\n" } else { b"\n" });
    }
    line
}

/// Probing for addresses: each refused recipient counts as an error, and the 20th closes the
/// connection.
#[tokio::test]
async fn probing_for_addresses_costs_the_connection() {
    let app = smtp_app(|_| {}).await;
    setup(&app).await;
    let (mut wire, _) = crate::smtp::Wire::connect(app.smtp.as_deref().unwrap()).await;
    let mut batch = b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n".to_vec();
    for n in 0..25 {
        batch.extend_from_slice(format!("RCPT TO:<guess{n}@acme.example>\r\n").as_bytes());
    }
    wire.send(&batch).await;
    let codes = wire.codes(23).await;
    assert_eq!(&codes[..2], [250, 250]);
    assert!(codes[2..22].iter().all(|c| *c == 550), "{codes:?}");
    assert_eq!(codes[22], 421, "{codes:?}");
    assert_eq!(wire.reply().await.0, 0, "closed");
}

#[tokio::test]
async fn garbage_from_outsiders_cannot_crash_or_hold_the_listener() {
    count_smtp_panics();
    let app = smtp_app(|c| {
        c.smtp_idle_timeout = Duration::from_millis(500);
        c.smtp_max_connections_per_client = 100;
    })
    .await;
    let (_, _, receiver) = setup(&app).await;
    let smtp = app.smtp.clone().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(34);
    let mut tasks = Vec::new();
    for connection in 0..40 {
        let mut script = Vec::new();
        if connection % 2 == 0 {
            // Half of them get as far as a mail's body before the garbage.
            script.extend_from_slice(
                b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<support@acme.test>\r\nDATA\r\n",
            );
        }
        for _ in 0..rng.gen_range(1..60) {
            script.extend(garbage(&mut rng));
        }
        let smtp = smtp.clone();
        tasks.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(&smtp).await.unwrap();
            let (mut read, mut write) = stream.split();
            // Write everything while draining the answers, then wait for the server to
            // close (QUIT, too many errors, or the idle timeout).
            let writing = async {
                let _ = write.write_all(&script).await;
            };
            let mut answers = Vec::new();
            let reading = async {
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut answers))
                        .await
                        .expect("the server closes every connection in the end");
            };
            tokio::join!(writing, reading);
            answers
        }));
    }
    for task in tasks {
        let answers = task.await.unwrap();
        assert!(answers.starts_with(b"220 "), "greeted first");
    }
    assert_eq!(
        SMTP_PANICS.load(Ordering::SeqCst),
        0,
        "a panic in the SMTP code"
    );

    let Some(answer) = smtplib(
        &smtp,
        json!({ "from": "ana@example.com", "to": ["support@acme.test"] }),
        mail_to(
            "support@acme.test",
            "after-garbage@example.com",
            "still here",
        ),
    )
    .await
    else {
        return;
    };
    assert_eq!(answer["data"], 250, "{answer}");
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert!(got
        .iter()
        .any(|d| d.json()["emailMessageId"] == "after-garbage@example.com"));
}
