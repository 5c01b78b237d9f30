//! Storage faults on PostgreSQL: a private PostgreSQL server (its own data directory and
//! port, so the other tests' server is left alone) restarted under load. Every message
//! answered 200 is stored, every other request is answered 503 with `Retry-After`, and the
//! server stores new messages again once PostgreSQL is back, without a restart of its own;
//! and PostgreSQL stopped outright: 503s, `/readyz`, the storage metrics, one log line per
//! episode, and a delivery whose attempt could not be recorded sent again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::Connection;

use crate::helpers::*;
use crate::storage_faults::{post_many, post_sms, sid, stored_within, Answer, Tally};

/// A PostgreSQL server of the test's own, run as the `postgres` user; stopped when dropped.
struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// `None` (skipped, with the reason) where PostgreSQL's server programs or root are
    /// missing; with `CI=true` a failure.
    fn start() -> Option<PrivatePostgres> {
        match Self::try_start() {
            Ok(pg) => Some(pg),
            Err(why) => {
                skip(&format!("a private PostgreSQL cannot be started ({why})"));
                None
            }
        }
    }

    fn try_start() -> Result<PrivatePostgres, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("no /usr/lib/postgresql: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|bin| bin.join("initdb").exists())
            .ok_or("no initdb under /usr/lib/postgresql")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let chown = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !chown.status.success() {
            return Err(format!(
                "chown to the postgres user (needs root): {}",
                String::from_utf8_lossy(&chown.stderr).trim()
            ));
        }
        let data = dir.path().join("pgdata");
        let pg = PrivatePostgres {
            bin,
            data,
            port: free_port(),
            _dir: dir,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                path(&pg.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )?;
        pg.ctl(&["start"])?;
        Ok(pg)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl` with this server's data directory and settings, waiting for it.
    fn ctl(&self, args: &[&str]) -> Result<(), String> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            path(self.data.parent().unwrap())
        );
        let log = self.data.parent().unwrap().join("log");
        let mut all = vec![
            "-D",
            path(&self.data),
            "-w",
            "-l",
            path(&log),
            "-o",
            &options,
        ];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop", "-m", "immediate"]);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn a_postgres_restart_under_load_loses_nothing_and_recovers_by_itself() {
    let Some(pg) = PrivatePostgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let receiver = TestReceiver::start().await;
    let server = Node::start(
        dir.path(),
        free_port(),
        &[("SWITCHBOARD_DATABASE_URL", pg.url().as_str())],
    )
    .await;
    server.configure(&receiver).await;

    // 600 messages at concurrency 8; PostgreSQL stops (fast: open sessions are ended) and
    // starts again while they are posted.
    let load = tokio::spawn({
        let address = server.address.clone();
        async move {
            let answers = post_many(&address, 4, 600, 8).await;
            (answers, std::time::Instant::now())
        }
    });
    // /readyz, watched all along: 503 while PostgreSQL is away, 200 once it is back.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readiness = tokio::spawn({
        let (address, watching) = (server.address.clone(), watching.clone());
        async move {
            let client = reqwest::Client::new();
            let mut seen = Vec::new();
            while watching.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(r) = client.get(format!("{address}/readyz")).send().await {
                    let status = r.status().as_u16();
                    if seen.last() != Some(&status) {
                        seen.push(status);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let restarted = tokio::task::spawn_blocking(move || {
        // Stopped for three seconds: longer than /readyz waits for the store (2 s).
        let result = pg.ctl(&["stop", "-m", "fast"]).and_then(|()| {
            std::thread::sleep(Duration::from_secs(3));
            pg.ctl(&["start"])
        });
        (pg, result, std::time::Instant::now())
    });
    let (answers, load_ended) = load.await.unwrap();
    let (pg, result, restart_ended) = restarted.await.unwrap();
    result.unwrap();
    assert!(
        restart_ended < load_ended,
        "the load ended before PostgreSQL was back: raise the count"
    );

    let Tally {
        acknowledged,
        unavailable,
        wrong,
    } = Tally::of(&answers);
    assert!(wrong.is_empty(), "answers that are neither: {wrong:?}");

    // Back without a restart of Switchboard.
    let after = stored_within(&server.address, sid(5, 0), Duration::from_secs(20)).await;
    eventually(Duration::from_secs(10), "/readyz 200 again", || async {
        let r = reqwest::get(format!("{}/readyz", server.address))
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    let readiness = readiness.await.unwrap();
    assert!(
        readiness.windows(2).any(|w| w == [503, 200]) && readiness.last() == Some(&200),
        "/readyz during the restart: {readiness:?}"
    );
    assert!(
        unavailable >= 1,
        "no request was answered 503 while PostgreSQL restarted"
    );

    let mut conn = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
    let stored: BTreeSet<String> =
        sqlx::query_scalar::<_, String>("SELECT provider_message_id FROM messages")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .collect();
    eprintln!(
        "PostgreSQL restart under load: {} answered 200, {unavailable} answered 503 (with Retry-After), {} stored; /readyz went {readiness:?}",
        acknowledged.len(),
        stored.len()
    );
    let missing: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    assert!(stored.contains(&after));
}

/// The text of `/metrics` of the server at `address`.
async fn metrics_of(address: &str) -> String {
    get_metrics(&reqwest::Client::new(), address).await
}

#[tokio::test]
async fn a_stopped_postgres_is_answered_503_and_an_unrecorded_attempt_is_sent_again() {
    let Some(pg) = PrivatePostgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let receiver = TestReceiver::start().await;
    let url = pg.url();
    let server = Node::start_logging_to(
        dir.path(),
        free_port(),
        &[],
        &[
            ("SWITCHBOARD_DATABASE_URL", url.as_str()),
            ("SWITCHBOARD_DELIVERY_LEASE", "3s"),
            ("SWITCHBOARD_DELIVERY_TIMEOUT", "2s"),
        ],
        log.into(),
    )
    .await;
    server.configure(&receiver).await;
    let client = reqwest::Client::new();

    // A delivery in flight when PostgreSQL stops: the subscriber answers after the stop, so
    // its attempt cannot be recorded.
    receiver.slow(Duration::from_millis(1500));
    assert_eq!(
        post_sms(&client, &server.address, &sid(9, 1), "owed").await,
        Answer::Stored
    );
    let first = receiver.wait_for(1, Duration::from_secs(5)).await[0].clone();
    pg.ctl(&["stop", "-m", "fast"]).unwrap();
    receiver.slow(Duration::ZERO);

    let refused = post_sms(&client, &server.address, &sid(9, 2), "while stopped").await;
    assert_eq!(
        refused,
        Answer::Unavailable,
        "503 with Retry-After and storage_unavailable"
    );
    let ready = client
        .get(format!("{}/readyz", server.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let metrics = metrics_of(&server.address).await;
    assert!(
        metrics.contains("switchboard_storage_writable 0"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l
            .starts_with("switchboard_storage_failures_total{kind=\"connection\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );

    pg.ctl(&["start"]).unwrap();
    eventually(Duration::from_secs(30), "/readyz 200 again", || async {
        let r = client
            .get(format!("{}/readyz", server.address))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let after = stored_within(&server.address, sid(9, 2), Duration::from_secs(20)).await;
    assert_eq!(after, sid(9, 2));
    assert!(metrics_of(&server.address)
        .await
        .contains("switchboard_storage_writable 1"));

    // The owed delivery is sent again (its lease ran out), with the same webhook-id.
    let id = first.header("webhook-id").to_owned();
    eventually(
        Duration::from_secs(20),
        "the owed delivery sent again",
        || async {
            let again = receiver
                .received()
                .iter()
                .filter(|r| r.header("webhook-id") == id)
                .count();
            (again >= 2).then_some(())
        },
    )
    .await;

    // One error line when the episode began and one line when it ended, not one per request.
    let text = std::fs::read_to_string(&log_path).unwrap();
    let began = text.matches("storage failing:").count();
    let ended = text.matches("storage recovered").count();
    assert_eq!((began, ended), (1, 1), "{text}");
}
