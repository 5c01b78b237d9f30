//! Secrets at rest and in logs, on the real binary: the data directory and everything in it
//! is its owner's only whatever the umask, a file left readable by others is named and fixed
//! at start, and a full run's log holds none of the secrets it was given.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every directory under `dir` is 0700 and every file 0600; the offenders otherwise.
fn readable_by_others(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if mode(dir) != 0o700 {
        found.push(format!("{} {:o}", dir.display(), mode(dir)));
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            found.extend(readable_by_others(&entry.path()));
        } else if mode(&entry.path()) != 0o600 {
            found.push(format!(
                "{} {:o}",
                entry.path().display(),
                mode(&entry.path())
            ));
        }
    }
    found
}

/// `switchboard serve` under `umask 000`, with its log in `log`; no admin token given (it is
/// generated into the data directory).
fn serve_with_open_umask(data: &Path, port: u16, log: &Path) -> std::process::Child {
    Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" serve"])
        .arg(env!("CARGO_BIN_EXE_switchboard"))
        .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD_DATA_DIR", data)
        .env("SWITCHBOARD_ALLOW_PRIVATE_TARGETS", "true")
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn wait_healthy(address: &str) {
    eventually(Duration::from_secs(15), "/healthz", || async {
        reqwest::get(format!("{address}/healthz"))
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test]
async fn the_data_directory_is_the_owners_only_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("log");
    let mut child = serve_with_open_umask(&data, port, &log);
    wait_healthy(&address).await;
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let client = reqwest::Client::new();
    connect_location(&client, &address, token.trim(), json!({})).await;
    let url = format!("{address}{}", switchboard::channels::twilio::INBOUND_PATH);
    let r = post_twilio_to(&client, &url, &sms_params("SMmodes", "x"), AUTH_TOKEN).await;
    assert_eq!(r.status(), 200);
    // The database, its journals, keys, the token, the lock: all there, all 0600.
    for file in [
        "switchboard.db",
        "switchboard.db-wal",
        "switchboard.db-shm",
        "admin-token",
        "ed25519-private-key.pem",
        "switchboard.lock",
    ] {
        assert!(data.join(file).exists(), "{file}");
    }
    assert_eq!(readable_by_others(&data), Vec::<String>::new());
    child.kill().unwrap();
    child.wait().unwrap();

    // A file an older version (or a copy) left readable is named at start, and fixed.
    std::fs::set_permissions(
        data.join("switchboard.db"),
        PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(&data, PermissionsExt::from_mode(0o755)).unwrap();
    let log = dir.path().join("log2");
    let mut child = serve_with_open_umask(&data, port, &log);
    wait_healthy(&address).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().any(|l| l.contains("readable by others")
            && l.contains(&data.join("switchboard.db").display().to_string())),
        "{text}"
    );
    assert_eq!(readable_by_others(&data), Vec::<String>::new());
}

#[tokio::test]
async fn a_full_run_logs_none_of_its_secrets() {
    const METRICS_TOKEN: &str = "metrics-token-for-the-log-test";
    const SIGNING_KEY: &str = "webhook-rule-shared-key-0001";
    const BODY: &str = "a private message body 4417";
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("log");
    let receiver = TestReceiver::start().await;
    let server = Node::start_logging_to(
        dir.path(),
        port,
        &[],
        &[
            ("SWITCHBOARD_LOG", "debug"),
            ("SWITCHBOARD_METRICS_TOKEN", METRICS_TOKEN),
        ],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    )
    .await;
    let client = reqwest::Client::new();
    connect_location(
        &client,
        &server.address,
        ADMIN_TOKEN,
        json!({ "signingKeys": { "KS1": SIGNING_KEY } }),
    )
    .await;
    let webhook: Value = admin_request(
        &client,
        &server.address,
        ADMIN_TOKEN,
        reqwest::Method::POST,
        "/v1/webhooks",
        json!({ "url": receiver.url, "events": ["InboundMessage"] }),
    )
    .await
    .json()
    .await
    .unwrap();
    let mut secrets = vec![
        ADMIN_TOKEN.to_owned(),
        AUTH_TOKEN.to_owned(),
        SIGNING_KEY.to_owned(),
        METRICS_TOKEN.to_owned(),
        webhook["secret"].as_str().unwrap().to_owned(),
    ];
    assert_eq!(server.post_sms("SMlogged", BODY).await.status(), 200);
    receiver.wait_for(1, Duration::from_secs(10)).await;
    // A refused request, a rotation, the metrics.
    let url = format!(
        "{}{}",
        server.address,
        switchboard::channels::twilio::INBOUND_PATH
    );
    let refused = post_twilio_to(
        &client,
        &url,
        &sms_params("SMbad", BODY),
        "wrong-token-000000",
    )
    .await;
    assert_eq!(refused.status(), 403);
    let rotated = admin_request(
        &client,
        &server.address,
        ADMIN_TOKEN,
        reqwest::Method::POST,
        &format!(
            "/v1/webhooks/{}/rotate-secret",
            webhook["id"].as_str().unwrap()
        ),
        json!({}),
    )
    .await;
    assert_eq!(
        rotated.status(),
        200,
        "the rotation's secret must be checked too"
    );
    let rotated: Value = rotated.json().await.unwrap();
    secrets.push(rotated["secret"].as_str().unwrap().to_owned());
    let metrics = client
        .get(format!("{}/metrics", server.address))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    drop(server);
    let mut text = std::fs::read_to_string(&log).unwrap();

    // `migrate` with a password in the database URL (PostgreSQL trusts loopback here).
    if let Ok(url) = fresh_postgres_schema().await {
        let password = "db-password-not-for-logs";
        let with_password = url.replacen("postgres@", &format!("postgres:{password}@"), 1);
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["migrate", "--database-url", &with_password])
            .env("SWITCHBOARD_LOG", "debug")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("migrations applied"), "{text}");
        secrets.push(password.to_owned());
    } else {
        skip("the migrate part of this test needs PostgreSQL");
    }

    eprintln!(
        "{} log lines checked for {} secrets",
        text.lines().count(),
        secrets.len()
    );
    assert!(
        text.lines().count() > 10,
        "the log is nearly empty:\n{text}"
    );
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "the log holds `{secret}`:\n{text}"
        );
    }
    let info: String = text
        .lines()
        .filter(|l| l.contains(" INFO ") || l.contains(" WARN ") || l.contains(" ERROR "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !info.contains(BODY),
        "a message body at info level:\n{info}"
    );
}
