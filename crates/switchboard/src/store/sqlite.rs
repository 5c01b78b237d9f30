//! The embedded store: SQLite in WAL mode. All writes go through one connection (SQLite has
//! one writer anyway; this avoids lock upgrades failing under load); reads use a small pool.
//! One process owns the database, so nothing needs row locks or wake-ups.
//!
//! Checkpoints (copying the write-ahead log into the database file and syncing it) run on a
//! connection of their own after group commits, so the writer seldom waits for one.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::Connection;
use tokio::sync::Notify;

use crate::config::SqliteSynchronous as SyncSetting;

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    batch: super::GroupCommit,
    accounts: super::AccountCache,
    faults: Arc<super::StorageFaults>,
    _checkpointer: Checkpointer,
}

/// A connection is given out only outside a transaction. After a failed statement or commit
/// (a full disk, an I/O error) SQLite may roll the transaction back by itself; sqlx's `ROLLBACK`
/// then fails and sqlx still counts a transaction open, so the next `begin` would open a
/// SAVEPOINT inside a transaction that never commits, and every later "commit" would only
/// release it. Such a connection is closed and a new one opened instead.
fn outside_a_transaction(
    conn: &mut SqliteConnection,
    _meta: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, Result<bool, sqlx::Error>> {
    let clean = !conn.is_in_transaction();
    if !clean {
        tracing::debug!("closing a SQLite connection left inside a failed transaction");
    }
    Box::pin(std::future::ready(Ok(clean)))
}

/// The writer checkpoints itself only once the log holds this many pages (16 MiB of 4 KiB
/// pages, SQLite's default is 1,000). Until then the checkpointer does it; the writer's own
/// checkpoint then has little left to copy and lets the next transaction start the log over.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 4_000;

/// The writer's page cache, in KiB (SQLite's default is 2 MiB). Fan-out to many webhooks
/// inserts each event's deliveries all over the pending-deliveries index; with the default
/// cache those pages were read back and spilled again on every insert (1,000 webhooks: the
/// healthy webhook's p99 790 ms, with this cache 212 ms; see docs/performance.md). Taken only
/// as the database grows.
const WRITER_CACHE_KIB: u32 = 64 * 1024;

/// How long the checkpointer lets commits gather before it checkpoints.
const CHECKPOINT_GATHER: Duration = Duration::from_millis(20);
/// The longest the checkpointer waits without a group commit to wake it.
const CHECKPOINT_FALLBACK: Duration = Duration::from_secs(1);

/// Passive checkpoints on a connection of their own, after commits: they copy what the log
/// holds into the database file while the writer goes on writing, so that neither its
/// commits nor the providers waiting on them pay for writing and syncing the database file.
/// Stops when dropped.
struct Checkpointer {
    task: tokio::task::JoinHandle<()>,
}

impl Checkpointer {
    async fn start(options: &SqliteConnectOptions) -> anyhow::Result<(Checkpointer, Arc<Notify>)> {
        let first = SqliteConnection::connect_with(options)
            .await
            .context("opening the SQLite checkpoint connection")?;
        let committed = Arc::new(Notify::new());
        let wake = committed.clone();
        let options = options.clone();
        let task = tokio::spawn(async move {
            let mut conn = Some(first);
            let mut failing = false;
            loop {
                // After group commits; and now and then anyway, for the writes that are not
                // group-committed (claims, retention, the management API).
                if failing {
                    // Not after every commit while the database refuses: once a second.
                    tokio::time::sleep(CHECKPOINT_FALLBACK).await;
                } else {
                    let _ = tokio::time::timeout(CHECKPOINT_FALLBACK, wake.notified()).await;
                }
                tokio::time::sleep(CHECKPOINT_GATHER).await;
                let result = match conn.as_mut() {
                    Some(conn) => checkpoint(conn).await,
                    None => match SqliteConnection::connect_with(&options).await {
                        Ok(new) => checkpoint(conn.insert(new)).await,
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok((busy, log, copied)) => {
                        tracing::trace!(busy, log, copied, "checkpoint");
                        failing = false;
                    }
                    Err(e) => {
                        // Once per run of failures: the writer's own checkpoints still bound
                        // the log. The connection is opened again for the next try.
                        if !failing {
                            tracing::warn!(error = %e, "SQLite checkpoint failed");
                        }
                        failing = true;
                        conn = None;
                    }
                }
            }
        });
        Ok((Checkpointer { task }, committed))
    }
}

/// One PASSIVE checkpoint: it never waits for the writer or for readers, it copies what it can.
/// (busy, pages in the log, pages copied); busy = 1 when another checkpoint was running.
async fn checkpoint(conn: &mut SqliteConnection) -> Result<(i64, i64, i64), sqlx::Error> {
    sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(conn)
        .await
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SqliteStore {
    /// Open (creating the file if needed) and migrate.
    pub async fn open(
        url: &str,
        synchronous: SyncSetting,
        busy_timeout: Duration,
    ) -> anyhow::Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("invalid SQLite URL `{url}`"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match synchronous {
                SyncSetting::Full => SqliteSynchronous::Full,
                SyncSetting::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(busy_timeout)
            .foreign_keys(true)
            // Statement journals (a multi-row insert that may have to undo itself) in memory,
            // not in temporary files.
            .pragma("temp_store", "memory");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .before_acquire(outside_a_transaction)
            .connect_with(
                options
                    .clone()
                    .pragma(
                        "wal_autocheckpoint",
                        WRITER_AUTOCHECKPOINT_PAGES.to_string(),
                    )
                    // Negative: KiB rather than pages.
                    .pragma("cache_size", format!("-{WRITER_CACHE_KIB}")),
            )
            .await
            .with_context(|| format!("opening SQLite database {url}"))?;
        let migrator = super::migrations::migrator(super::migrations::SQLITE).await?;
        migrator
            .run(&writer)
            .await
            .context("migrating the SQLite database")?;
        // Readers and the checkpointer open the file the writer created, never a new one.
        let existing = options.create_if_missing(false);
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .before_acquire(outside_a_transaction)
            .connect_with(existing.clone())
            .await
            .context("opening SQLite read connections")?;
        let (checkpointer, committed) = Checkpointer::start(&existing).await?;
        // SQLite has one writer.
        let faults = Arc::new(super::StorageFaults::default());
        let batch = group_commit(&writer, 1, Some(committed), faults.clone());
        Ok(SqliteStore {
            writer,
            reader,
            batch,
            accounts: super::AccountCache::default(),
            faults,
            _checkpointer: checkpointer,
        })
    }
}

mod hooks {
    use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};

    use crate::store::StoreResult;

    /// One process owns the file: leases of a previous run may be released at start.
    pub const EMBEDDED: bool = true;
    /// One writer: no row locks.
    pub const CLAIM_LOCK: &str = "";
    pub const HEAD_LOCK: &str = "";
    pub const ROW_LOCK: &str = "";
    pub const CALLS_LOCK: &str = "";

    /// A write transaction takes the write lock first (`BEGIN IMMEDIATE`), waiting for it up
    /// to the busy timeout. A deferred one would read first and then fail at once, without
    /// waiting, when another connection (an operator's `sqlite3`, a backup) holds the lock.
    pub async fn begin_write(
        pool: &SqlitePool,
    ) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// Transactions commit one at a time: events are numbered in commit order already.
    pub async fn lock_event_stream(_conn: &mut SqliteConnection) -> StoreResult<()> {
        Ok(())
    }

    /// A read transaction in WAL mode is a snapshot already.
    pub async fn snapshot(_conn: &mut SqliteConnection) -> StoreResult<()> {
        Ok(())
    }

    /// The only dispatcher is in this process and polls.
    pub async fn notify_work(_conn: &mut SqliteConnection) -> StoreResult<()> {
        Ok(())
    }

    /// `$N` placeholders become `?`. sqlx binds a numbered parameter by looking its name up,
    /// which costs SQLite a scan of every name: quadratic in a statement of many rows. Only
    /// when the numbers appear in order (`$1`, `$2`, …, as in the statements built for many
    /// rows); otherwise the statement is kept as it is.
    pub fn positional(sql: String) -> String {
        let mut out = String::with_capacity(sql.len());
        let mut expected = 1;
        let mut rest = sql.as_str();
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let digits = rest[at + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            match rest[at + 1..at + 1 + digits].parse::<usize>() {
                Ok(n) if n == expected => {
                    out.push('?');
                    expected += 1;
                }
                _ => return sql,
            }
            rest = &rest[at + 1 + digits..];
        }
        out.push_str(rest);
        out
    }

    /// A subquery of the text values of the JSON array bound at `param`.
    pub fn json_text_list(param: &str) -> String {
        format!("SELECT value FROM json_each({param})")
    }

    pub fn listen(_pool: &sqlx::SqlitePool) -> Option<tokio::sync::mpsc::UnboundedReceiver<()>> {
        None
    }
}

super::sql::sql_store!(SqliteStore, sqlx::Sqlite, sqlx::sqlite::SqliteRow, hooks);

#[cfg(test)]
mod tests {
    use super::hooks::positional;
    use super::*;
    use crate::channels::RouteKey;
    use crate::store::{ChannelAccountInput, Locations, Webhooks};

    #[tokio::test]
    async fn only_connected_numbers_are_cached_whatever_else_a_request_carries() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::open(&url, SyncSetting::Normal, Duration::from_secs(5))
            .await
            .unwrap();
        let location = store.create_location("L", 0).await.unwrap();
        let account_sid = format!("AC{}", "0".repeat(32));
        let input = ChannelAccountInput {
            provider: "acme",
            account_id: account_sid.clone(),
            secret: "token".into(),
            settings: serde_json::json!({}),
            addresses: vec!["+14155550100".into()],
            shown_once: None,
        };
        store
            .put_channel_account(&location.id, &input, 0)
            .await
            .unwrap();
        let key = |address: &str, account_id: String| RouteKey {
            address: Some(address.to_owned()),
            also: Vec::new(),
            correlation_id: None,
            account_id: Some(account_id),
        };
        // The connected number, with a different (and long) account id each time: one entry.
        for i in 0..50 {
            let found = store
                .find_channel_account(
                    "acme",
                    &key("+14155550100", format!("{i}{}", "x".repeat(10_000))),
                )
                .await
                .unwrap();
            assert_eq!(found.unwrap().location_id, location.id);
        }
        assert_eq!(store.accounts.len(), 1);
        // Numbers that are not connected, found by the account id or not at all: none kept.
        for i in 0..50 {
            let by_account = store
                .find_channel_account(
                    "acme",
                    &key(&format!("+1212555{i:04}"), account_sid.clone()),
                )
                .await
                .unwrap();
            assert_eq!(by_account.unwrap().location_id, location.id);
            let unknown = store
                .find_channel_account("acme", &key(&format!("+1212555{i:04}"), format!("AC{i}")))
                .await
                .unwrap();
            assert!(unknown.is_none());
        }
        assert_eq!(store.accounts.len(), 1);
    }

    /// A database at `url` migrated up to `version` only, as an older release left it (foreign
    /// keys off, so that rows can be planted without their parents).
    async fn migrated_to(url: &str, version: i64) -> SqlitePool {
        let options = SqliteConnectOptions::from_str(url)
            .unwrap()
            .create_if_missing(true)
            .foreign_keys(false);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        let before = &crate::store::migrations::SQLITE[..version as usize];
        assert_eq!(before.last().unwrap().0, version);
        crate::store::migrations::migrator(before)
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        pool
    }

    /// A webhook in a rotation's overlap when the server is upgraded keeps its previous secret.
    #[tokio::test]
    async fn a_rotation_in_progress_survives_the_move_to_a_list_of_previous_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let pool = migrated_to(&url, 5).await;
        for (id, previous, until) in [("W1", Some("whsec_old"), Some(123_i64)), ("W2", None, None)]
        {
            sqlx::query(
                "INSERT INTO webhooks (id, url, events, secret, created_at, previous_secret, previous_secret_until)
                 VALUES ($1, 'https://example.com/hook', '[\"InboundMessage\"]', 'whsec_new', 0, $2, $3)",
            )
            .bind(id)
            .bind(previous)
            .bind(until)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
        let store = SqliteStore::open(&url, SyncSetting::Normal, Duration::from_secs(5))
            .await
            .unwrap();
        let w1 = store.get_webhook("W1").await.unwrap().unwrap();
        assert_eq!(
            w1.previous_secrets,
            vec![crate::store::PreviousSecret {
                secret: "whsec_old".into(),
                until: 123
            }]
        );
        let w2 = store.get_webhook("W2").await.unwrap().unwrap();
        assert!(w2.previous_secrets.is_empty());
    }

    /// A message stored twice (in two locations) before its provider id became unique keeps
    /// both rows; the later one's id is suffixed so that the unique index can be built.
    #[tokio::test]
    async fn messages_stored_twice_before_the_unique_provider_id_survive_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let pool = migrated_to(&url, 7).await;
        for (id, location) in [("M1", "L1"), ("M2", "L2"), ("M3", "L1")] {
            let provider_id = if id == "M3" { "SMother" } else { "SMsame" };
            sqlx::query(
                "INSERT INTO messages (id, location_id, conversation_id, contact_id, provider,
                     provider_message_id, direction, message_type, status, created_at)
                 VALUES ($1, $2, 'C', 'P', 'acme', $3, 'inbound', 'SMS', 'delivered', 0)",
            )
            .bind(id)
            .bind(location)
            .bind(provider_id)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
        let store = SqliteStore::open(&url, SyncSetting::Normal, Duration::from_secs(5))
            .await
            .unwrap();
        drop(store);
        let pool = SqlitePool::connect(&url).await.unwrap();
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, provider_message_id FROM messages ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(
            rows,
            [
                ("M1".into(), "SMsame".into()),
                ("M2".into(), "SMsame#M2".into()),
                ("M3".into(), "SMother".into())
            ]
        );
    }

    /// SQLite is built without its memory statistics (`.cargo/config.toml`): with them, every
    /// allocation it makes takes a process-wide mutex.
    #[tokio::test]
    async fn sqlite_is_built_without_memory_statistics() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let options: Vec<String> = sqlx::query_scalar("PRAGMA compile_options")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }

    #[test]
    fn numbered_placeholders_in_order_become_positional() {
        assert_eq!(
            positional("SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)".into()),
            "SELECT a FROM t WHERE b = ? AND c IN (?, ?)"
        );
        assert_eq!(
            positional("INSERT INTO t VALUES ($1, $2), ($3, $4), ($5, $6), ($7, $8), ($9, $10), ($11, $12)".into()),
            "INSERT INTO t VALUES (?, ?), (?, ?), (?, ?), (?, ?), (?, ?), (?, ?)"
        );
        // Out of order, repeated, or not a number: kept as written (sqlx binds it by name).
        for kept in [
            "UPDATE t SET a = $2 WHERE b = $1",
            "SELECT $1, $1",
            "SELECT '$' || $1",
        ] {
            assert_eq!(positional(kept.into()), kept);
        }
    }
}
