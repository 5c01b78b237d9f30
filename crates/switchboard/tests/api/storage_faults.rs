//! Storage faults: a full disk, a database locked by another process, a store that cannot
//! record an attempt. The rule under test: a provider gets its 200 only for a message that
//! is stored; every other request gets a 503 with `Retry-After`, never a dropped connection;
//! the server recovers by itself once the fault is gone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;

use crate::helpers::*;

/// A tmpfs of `size` mounted on a new directory; unmounted when dropped. `None` (the test is
/// skipped, with the reason printed) where mounting is not allowed; with `CI=true` a test
/// that needs it fails instead.
pub struct SmallFs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallFs {
    pub fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output();
        let why = match out {
            Ok(out) if out.status.success() => {
                return Some(SmallFs { path, _dir: dir });
            }
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            Err(e) => e.to_string(),
        };
        skip(&format!(
            "mounting a tmpfs for the full-disk tests needs root ({why})"
        ));
        None
    }

    /// Fill the filesystem until at most `leave` bytes are free, with a file of its own.
    pub fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0x5a_u8; 4096];
        while self.free() > leave {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = file.sync_all();
        filler
    }

    /// Bytes free on the filesystem.
    pub fn free(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// What one provider request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Stored,
    Unavailable,
    /// Anything else: a status that is neither, a 503 without `Retry-After` or without the
    /// JSON error, or no answer at all.
    Wrong(String),
}

/// Classify a provider answer: 200, or a 503 that says storage is unavailable and when to
/// come back.
pub async fn classify(result: Result<reqwest::Response, reqwest::Error>) -> Answer {
    let response = match result {
        Ok(r) => r,
        Err(e) => return Answer::Wrong(format!("no answer: {e}")),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await.unwrap_or_default();
    match status {
        200 => Answer::Stored,
        503 => {
            let code = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
            match (retry_after, code.as_deref()) {
                (Some(r), Some("storage_unavailable")) if r.parse::<u64>().is_ok() => {
                    Answer::Unavailable
                }
                _ => Answer::Wrong(format!("503 without Retry-After or code: {body}")),
            }
        }
        other => Answer::Wrong(format!("{other}: {body}")),
    }
}

/// POST a signed SMS with the given sid, as Twilio would, and classify the answer.
pub async fn post_sms(client: &reqwest::Client, address: &str, sid: &str, body: &str) -> Answer {
    let url = format!("{address}{}", switchboard::channels::twilio::INBOUND_PATH);
    let params = sms_params(sid, body);
    let (form, signature) = signed_twilio_form(&url, &params, AUTH_TOKEN);
    classify(
        client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(form)
            .timeout(Duration::from_secs(60))
            .send()
            .await,
    )
    .await
}

/// Post the SMS `sid` until it is answered 200 (the store recovered), within `within`.
pub async fn stored_within(address: &str, sid: String, within: Duration) -> String {
    let client = reqwest::Client::new();
    eventually(
        within,
        "a message stored after the fault was gone",
        || async {
            (post_sms(&client, address, &sid, "after").await == Answer::Stored).then(|| sid.clone())
        },
    )
    .await
}

/// A Twilio message SID (`SM` + 32 hex digits) for a number.
pub fn sid(prefix: u32, n: u32) -> String {
    format!("SM{prefix:08x}{:024x}", n)
}

/// The provider message ids stored in the SQLite database at `db`, read by a connection of
/// the test's own (not the server's).
async fn stored_sids(db: &Path) -> BTreeSet<String> {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query_scalar::<_, String>("SELECT provider_message_id FROM messages")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Post `count` signed SMS with `concurrency` requests at a time; each sid's answer.
pub async fn post_many(
    address: &str,
    prefix: u32,
    count: u32,
    concurrency: usize,
) -> Vec<(String, Answer)> {
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (next, client, address) = (next.clone(), client.clone(), address.to_owned());
        tasks.spawn(async move {
            let mut answers = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= count {
                    return answers;
                }
                let sid = sid(prefix, n);
                // A body of some size, so that the disk fills within the run.
                let text = format!("message {n} {}", "x".repeat(600));
                answers.push((sid.clone(), post_sms(&client, &address, &sid, &text).await));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(answers) = tasks.join_next().await {
        all.extend(answers.unwrap());
    }
    all
}

/// The answers of a load, by kind.
pub struct Tally<'a> {
    /// The sids answered 200.
    pub acknowledged: BTreeSet<String>,
    /// How many were answered 503 with `Retry-After`.
    pub unavailable: usize,
    /// Every other answer.
    pub wrong: Vec<&'a (String, Answer)>,
}

impl Tally<'_> {
    pub fn of(answers: &[(String, Answer)]) -> Tally<'_> {
        Tally {
            acknowledged: answers
                .iter()
                .filter(|(_, a)| *a == Answer::Stored)
                .map(|(s, _)| s.clone())
                .collect(),
            unavailable: answers
                .iter()
                .filter(|(_, a)| *a == Answer::Unavailable)
                .count(),
            wrong: answers
                .iter()
                .filter(|(_, a)| matches!(a, Answer::Wrong(_)))
                .collect(),
        }
    }
}

#[tokio::test]
async fn a_full_disk_never_acknowledges_a_message_it_did_not_store() {
    let Some(fs) = SmallFs::mount("4m") else {
        return;
    };
    let data = fs.path.join("data");
    let port = free_port();
    let receiver = TestReceiver::start().await;
    let server = Node::start(&data, port, &[("SWITCHBOARD_SQLITE_BUSY_TIMEOUT", "2s")]).await;
    server.configure(&receiver).await;
    let filler = fs.fill(400 * 1024);

    let answers = post_many(&server.address, 1, 1500, 8).await;
    let Tally {
        acknowledged,
        unavailable,
        wrong,
    } = Tally::of(&answers);
    let stored_while_full = stored_sids(&data.join("switchboard.db")).await;
    eprintln!(
        "full disk: {} answered 200, {unavailable} answered 503, {} stored, {} other",
        acknowledged.len(),
        stored_while_full.intersection(&acknowledged).count(),
        wrong.len()
    );
    assert!(wrong.is_empty(), "answers that are neither: {wrong:?}");
    assert!(
        unavailable > 0,
        "the disk never filled: every request was stored"
    );
    assert!(
        !acknowledged.is_empty(),
        "nothing was stored before the disk filled"
    );
    let missing: Vec<&String> = acknowledged.difference(&stored_while_full).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );

    // While full, the server says it is not ready.
    let ready = reqwest::get(format!("{}/readyz", server.address))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "/readyz while the disk is full");

    // Space comes back: new messages are stored and acknowledged without a restart.
    std::fs::remove_file(&filler).unwrap();
    let after = stored_within(&server.address, sid(2, 0), Duration::from_secs(10)).await;
    let recovered = post_many(&server.address, 3, 20, 4).await;
    assert!(
        recovered.iter().all(|(_, a)| *a == Answer::Stored),
        "{recovered:?}"
    );
    let ready = reqwest::get(format!("{}/readyz", server.address))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "/readyz once space is back");

    // SIGKILL and a restart: every acknowledged message is in the file.
    drop(server);
    let server = Node::start(&data, port, &[] as &[(&str, &str)]).await;
    drop(server);
    let stored = stored_sids(&data.join("switchboard.db")).await;
    let mut expected = acknowledged.clone();
    expected.insert(after);
    expected.extend(recovered.into_iter().map(|(s, _)| s));
    let missing: Vec<&String> = expected.difference(&stored).collect();
    eprintln!(
        "after SIGKILL and restart: {} acknowledged in all, {} stored",
        expected.len(),
        stored.len()
    );
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}

/// A second connection to the server's SQLite file holding the write lock, as an operator's
/// `sqlite3` session in a transaction (or a backup) would.
async fn hold_write_lock(db: &Path) -> sqlx::SqliteConnection {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn release_write_lock(mut conn: sqlx::SqliteConnection) {
    sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_lock_held_past_the_busy_timeout_is_answered_503_and_then_recovers() {
    let app = spawn_app_with(|c| c.sqlite_busy_timeout = Duration::from_secs(1)).await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let db = app.data_dir().join("switchboard.db");
    let client = reqwest::Client::new();

    let lock = hold_write_lock(&db).await;
    let started = std::time::Instant::now();
    let answer = post_sms(&client, &app.address, &sid(7, 1), "while locked").await;
    let waited = started.elapsed();
    assert_eq!(answer, Answer::Unavailable);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "answered after {waited:?}, the busy timeout is 1 s"
    );
    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let metrics = get_metrics(&client, &app.address).await;
    assert!(
        metrics.contains("switchboard_storage_failures_total{kind=\"locked\"}")
            && !metrics.contains("switchboard_storage_failures_total{kind=\"locked\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchboard_storage_writable 0"),
        "{metrics}"
    );
    release_write_lock(lock).await;

    // Nothing was stored or sent for the refused request; the provider's retry is stored.
    assert!(!stored_sids(&db).await.contains(&sid(7, 1)));
    receiver.expect_exactly(0, Duration::from_millis(300)).await;
    let retry = post_sms(&client, &app.address, &sid(7, 1), "while locked").await;
    assert_eq!(retry, Answer::Stored);
    assert!(stored_sids(&db).await.contains(&sid(7, 1)));
    receiver.expect_exactly(1, Duration::from_millis(300)).await;
    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = get_metrics(&client, &app.address).await;
    assert!(
        metrics.contains("switchboard_storage_writable 1"),
        "{metrics}"
    );
}

/// One log line when a storage-fault episode begins and one when it ends, however many
/// requests it refused (docs/operations.md), read from the log of a real server process.
#[tokio::test]
async fn a_lock_episode_is_logged_once_when_it_begins_and_once_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let receiver = TestReceiver::start().await;
    let server = Node::start_logging_to(
        dir.path(),
        free_port(),
        &[],
        &[("SWITCHBOARD_SQLITE_BUSY_TIMEOUT", "200ms")],
        log.into(),
    )
    .await;
    server.configure(&receiver).await;
    let db = dir.path().join("switchboard.db");
    let client = reqwest::Client::new();

    let lock = hold_write_lock(&db).await;
    for n in 1..=6 {
        let answer = post_sms(&client, &server.address, &sid(9, n), "while locked").await;
        assert_eq!(answer, Answer::Unavailable, "request {n}");
    }
    release_write_lock(lock).await;
    let answer = post_sms(&client, &server.address, &sid(9, 1), "after the lock").await;
    assert_eq!(answer, Answer::Stored);
    receiver.wait_for(1, Duration::from_secs(5)).await;

    let count = || {
        let text = std::fs::read_to_string(&log_path).unwrap();
        let began = text.matches("storage failing:").count();
        let ended = text.matches("storage recovered").count();
        (began, ended, text)
    };
    eventually(
        Duration::from_secs(5),
        "the episode's end logged",
        || async { (count().1 > 0).then_some(()) },
    )
    .await;
    let (began, ended, text) = count();
    assert_eq!(
        (began, ended),
        (1, 1),
        "six refused requests, one episode:\n{text}"
    );
}

#[tokio::test]
async fn a_delivery_whose_attempt_could_not_be_recorded_is_sent_again_after_recovery() {
    let app = spawn_app_with(|c| c.sqlite_busy_timeout = Duration::from_millis(500)).await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;
    let db = app.data_dir().join("switchboard.db");
    // The subscriber takes its time: the store is locked before the attempt is recorded.
    receiver.slow(Duration::from_millis(1500));
    let client = reqwest::Client::new();
    assert_eq!(
        post_sms(&client, &app.address, &sid(8, 1), "owed").await,
        Answer::Stored
    );
    let first = receiver.wait_for(1, Duration::from_secs(5)).await;
    let lock = hold_write_lock(&db).await;
    receiver.slow(Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(3)).await;
    release_write_lock(lock).await;

    // The attempt was not recorded: the delivery is still owed, and sent again.
    let all = receiver.wait_for(2, Duration::from_secs(15)).await;
    assert_eq!(all[1].header("webhook-id"), first[0].header("webhook-id"));
    assert_eq!(all[1].body, first[0].body);
    let message_id = first[0].json()["messageId"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(5), "the delivery recorded", || async {
        let report = app
            .get_json(&format!("/v1/messages/{message_id}/deliveries"))
            .await;
        (report["data"][0]["status"] == "delivered").then_some(())
    })
    .await;
}

/// Send a request with a body of `size` bytes over a plain socket, writing all of it before
/// reading anything (as Python's `urllib` does); the status line of the answer.
fn post_all_then_read(
    address: &str,
    path: &str,
    headers: &str,
    size: usize,
) -> Result<String, String> {
    use std::io::{Read, Write};
    let host = address.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n{headers}\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("writing the head: {e}"))?;
    // In pieces, as over a real network: the server answers (and, without a lingering
    // close, closes) long before the last piece is written.
    let piece = vec![b'a'; 64 * 1024];
    for _ in 0..size / piece.len() {
        stream
            .write_all(&piece)
            .map_err(|e| format!("writing the body: {e}"))?;
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut answer = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn an_oversized_body_written_before_reading_gets_its_413() {
    let app = spawn_app().await;
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    let json = "Content-Type: application/json\r\n";
    let admin = format!("{json}Authorization: Bearer {ADMIN_TOKEN}\r\n");
    // A provider route, and the API with and without its token (401 before the body is read).
    for (path, headers, status) in [
        (
            switchboard::channels::twilio::INBOUND_PATH,
            form,
            "413 Payload Too Large",
        ),
        ("/v1/locations", admin.as_str(), "413 Payload Too Large"),
        ("/v1/locations", json, "401 Unauthorized"),
    ] {
        let (address, sent) = (app.address.clone(), headers.to_owned());
        let answer = tokio::task::spawn_blocking(move || {
            post_all_then_read(&address, path, &sent, 2 * 1024 * 1024)
        })
        .await
        .unwrap();
        assert_eq!(answer, Ok(format!("HTTP/1.1 {status}")), "{path} {headers}");
    }
}

/// `switchboard serve` on `data` until it exits: (whether it succeeded, what it printed).
fn serve_once(data: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("SWITCHBOARD_DATA_DIR", data)
        .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn starting_on_a_full_disk_fails_naming_the_path() {
    let Some(fs) = SmallFs::mount("1m") else {
        return;
    };
    let data = fs.path.join("data");
    std::fs::create_dir(&data).unwrap();
    fs.fill(0);
    let (started, text) = serve_once(&data);
    assert!(!started, "started on a full disk: {text}");
    assert!(text.contains(&data.display().to_string()), "{text}");
    assert!(text.contains("No space left on device"), "{text}");
}

#[tokio::test]
async fn starting_on_a_read_only_data_directory_fails_naming_the_path() {
    let Some(fs) = SmallFs::mount("1m") else {
        return;
    };
    let data = fs.path.join("data");
    std::fs::create_dir(&data).unwrap();
    let remount = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&fs.path)
        .status()
        .unwrap();
    assert!(remount.success());
    let (started, text) = serve_once(&data);
    assert!(!started, "started on a read-only directory: {text}");
    assert!(text.contains(&data.display().to_string()), "{text}");
    assert!(text.contains("Read-only file system"), "{text}");
}
