//! Storage faults on PostgreSQL: a private PostgreSQL server (its own data directory and
//! port, so the other tests' server is left alone) restarted under load. Every message
//! answered 200 is stored, every other request is answered 503 with `Retry-After`, and the
//! server stores new messages again once PostgreSQL is back, without a restart of its own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::Connection;

use crate::helpers::*;
use crate::storage_faults::{post_many, sid, stored_within, Tally};

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

    // 600 messages at concurrency 8; PostgreSQL restarts (fast: open sessions are ended)
    // while they are posted.
    let load = tokio::spawn({
        let address = server.address.clone();
        async move {
            let answers = post_many(&address, 4, 600, 8).await;
            (answers, std::time::Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let restarted = tokio::task::spawn_blocking(move || {
        let result = pg.ctl(&["restart", "-m", "fast"]);
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

    let mut conn = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
    let stored: BTreeSet<String> =
        sqlx::query_scalar::<_, String>("SELECT provider_message_id FROM messages")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .collect();
    eprintln!(
        "PostgreSQL restart under load: {} answered 200, {unavailable} answered 503, {} stored",
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
