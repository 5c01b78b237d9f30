//! The SMTP listener's `250` means stored: a full disk answers 451 4.3.0 (the sender retries)
//! and stores nothing of the mail; the real binary killed with SIGKILL right after a client got
//! its `250` has the mail after a restart, and delivers it.

use std::time::Duration;

use serde_json::{json, Value};

use crate::email::setup;
use crate::helpers::*;
use crate::smtp::{mail_to, smtp_app, smtplib};

/// On a full disk: every mail answered 250 is stored and delivered, every one answered 451 is
/// not (no message, no thread record), and the same mail again once space is back is stored
/// as one never seen. (The embedded store's data directory is what fills; a shared
/// PostgreSQL's faults are the storage-fault suite's.)
#[tokio::test]
async fn a_full_disk_answers_451_and_stores_nothing() {
    let Some(fs) = crate::storage_faults::SmallFs::mount("8m") else {
        return;
    };
    let app = smtp_app(|c| {
        c.data_dir = fs.path.join("data");
        c.sqlite_busy_timeout = Duration::from_secs(2);
        // Hundreds of mails from one sender in a minute: not a loop to hold back here.
        c.max_mails_per_conversation_per_minute = 0;
    })
    .await;
    let (_, _, receiver) = setup(&app).await;
    let smtp = app.smtp.clone().unwrap();
    let text = "All work and no play. ".repeat(1000);
    let send = |id: String| {
        let smtp = smtp.clone();
        let mail = mail_to("support@acme.test", &id, &text);
        async move {
            smtplib(
                &smtp,
                json!({ "from": "ana@example.com", "to": ["support@acme.test"] }),
                mail,
            )
            .await
        }
    };
    let filler = fs.fill(1024 * 1024);
    let (mut stored, mut refused) = (Vec::new(), Vec::new());
    for n in 0..300 {
        let id = format!("full-smtp-{n}@example.com");
        let Some(answer) = send(id.clone()).await else {
            return;
        };
        match answer["data"].as_u64() {
            Some(250) => stored.push(id),
            Some(451) => {
                assert!(
                    answer["data_text"].as_str().unwrap().starts_with("4.3.0"),
                    "{answer}"
                );
                refused.push(id);
                if refused.len() == 5 {
                    break;
                }
            }
            _ => panic!("mail {n}: {answer}"),
        }
    }
    eprintln!(
        "SMTP on a full disk: {} stored, {} refused",
        stored.len(),
        refused.len()
    );
    assert!(
        !refused.is_empty() && !stored.is_empty(),
        "the disk filled at once or never"
    );
    std::fs::remove_file(&filler).unwrap();
    for id in &refused {
        let answer = send(id.clone()).await.unwrap();
        assert_eq!(answer["data"], 250, "the refused mail again: {answer}");
    }
    let all = stored.len() + refused.len();
    let got = receiver
        .expect_exactly(all, Duration::from_millis(500))
        .await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|d| d.json()["emailMessageId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = stored.iter().chain(&refused).cloned().collect();
    expected.sort();
    assert_eq!(ids, expected);
    for event in got.iter().map(|d| d.json()) {
        assert!(event.get("messageIdReused").is_none(), "{event}");
    }
}

/// SIGKILL right after the client got its `250`: after a restart the mail is stored, and it is
/// delivered (its subscriber starts listening only then, so the delivery is the restarted
/// server's).
#[tokio::test]
async fn a_mail_acknowledged_by_smtp_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (port, smtp_port) = (free_port(), free_port());
    let smtp = format!("127.0.0.1:{smtp_port}");
    let dns = crate::dns::TestDns::start().await;
    let dns = dns.addr.to_string();
    let env = [
        ("SWITCHBOARD_SMTP_LISTEN", smtp.as_str()),
        ("SWITCHBOARD_SMTP_DNS_SERVERS", dns.as_str()),
        (
            "SWITCHBOARD_RETRY_SCHEDULE",
            "300ms,300ms,300ms,300ms,300ms,300ms",
        ),
    ];
    let hook = format!("127.0.0.1:{}", free_port());
    let mut server = Node::start(dir.path(), port, &env).await;
    let client = reqwest::Client::new();
    let address = server.address.clone();
    let send = |method, path: String, body: Value| {
        let (client, address) = (client.clone(), address.clone());
        async move { admin_request(&client, &address, ADMIN_TOKEN, method, &path, body).await }
    };
    let location: Value = send(
        reqwest::Method::POST,
        "/v1/locations".into(),
        json!({ "name": "Mail" }),
    )
    .await
    .json()
    .await
    .unwrap();
    let location = location["id"].as_str().unwrap();
    let r = send(
        reqwest::Method::PUT,
        format!("/v1/locations/{location}/channels/email"),
        json!({ "addresses": ["support@acme.test"] }),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = send(
        reqwest::Method::POST,
        "/v1/webhooks".into(),
        json!({ "url": format!("http://{hook}/hook"), "events": ["InboundMessage"] }),
    )
    .await;
    assert_eq!(r.status(), 201);

    let Some(answer) = smtplib(
        &smtp,
        json!({ "from": "ana@example.com", "to": ["support@acme.test"] }),
        mail_to(
            "support@acme.test",
            "durable-1@example.com",
            "survive a crash",
        ),
    )
    .await
    else {
        return;
    };
    assert_eq!(answer["data"], 250, "{answer}");
    // SIGKILL at once: no shutdown code runs.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);

    let server = Node::start(dir.path(), port, &env).await;
    let events = server.get_json("/v1/events").await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1, "{events}");
    assert_eq!(
        events["data"][0]["event"]["emailMessageId"],
        "durable-1@example.com"
    );
    let receiver = TestReceiver::start_on(&hook).await;
    let got = receiver.wait_for(1, Duration::from_secs(15)).await;
    let event = got[0].json();
    assert_eq!(event["plainText"], "survive a crash\n");
    assert_eq!(event["provider"], "smtp");
}
