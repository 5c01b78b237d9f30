//! PostgreSQL: any number of nodes on one database. Deliveries are claimed with
//! `FOR UPDATE SKIP LOCKED` and leases; a call's callbacks are merged under a row lock; events
//! are numbered in commit order under a transaction-level advisory lock; work queued for the
//! dispatchers (deliveries not sent by the node that stored them) wakes them with `NOTIFY`,
//! with polling as the fallback.

use sqlx::postgres::{PgPool, PgPoolOptions};

pub struct PostgresStore {
    writer: PgPool,
    reader: PgPool,
    batch: super::GroupCommit,
    accounts: super::AccountCache,
    faults: std::sync::Arc<super::StorageFaults>,
}

impl PostgresStore {
    /// Connect and migrate (migrations take an advisory lock: nodes may start together).
    pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<PostgresStore> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // A connection is given out only outside a transaction (one whose ROLLBACK failed
            // with the connection is closed instead).
            .before_acquire(|conn, _| {
                use sqlx::Connection;
                Box::pin(std::future::ready(Ok(!conn.is_in_transaction())))
            })
            .connect(url)
            .await
            .context("connecting to PostgreSQL")?;
        let migrator = super::migrations::migrator(super::migrations::POSTGRES).await?;
        migrator
            .run(&pool)
            .await
            .context("migrating the PostgreSQL database")?;
        // Group commits are written on up to four connections at once (while one waits for
        // the database the next gathers), leaving at least two for reads, claims and the API.
        let writers = (max_connections as usize).saturating_sub(2).clamp(1, 4);
        let faults = std::sync::Arc::new(super::StorageFaults::default());
        let batch = group_commit(&pool, writers, None, faults.clone());
        Ok(PostgresStore {
            writer: pool.clone(),
            reader: pool,
            batch,
            accounts: super::AccountCache::default(),
            faults,
        })
    }
}

mod hooks {
    use std::time::Duration;

    use sqlx::postgres::PgListener;
    use sqlx::PgConnection;

    use crate::store::StoreResult;

    /// The channel dispatchers listen on.
    const WORK_CHANNEL: &str = "switchboard_work";
    /// The advisory lock that orders event inserts (any constant, the same on every node).
    const EVENT_STREAM_LOCK: i64 = 0x5357_4254_4556;

    /// Other nodes share the database: leases are never released wholesale.
    pub const EMBEDDED: bool = false;
    /// Claims skip rows another node is claiming.
    pub const CLAIM_LOCK: &str = " FOR UPDATE OF d SKIP LOCKED";
    /// A conversation's head is waited for, never skipped (that would break its order).
    pub const HEAD_LOCK: &str = " FOR UPDATE OF d";
    /// A call's callbacks merge one at a time.
    pub const ROW_LOCK: &str = " FOR UPDATE";
    pub const CALLS_LOCK: &str = " FOR UPDATE SKIP LOCKED";

    /// A write transaction: row locks and the event-stream lock order writers.
    pub async fn begin_write(
        pool: &sqlx::PgPool,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        pool.begin().await
    }

    /// Number this transaction's events only once the ones before it committed.
    pub async fn lock_event_stream(conn: &mut PgConnection) -> StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENT_STREAM_LOCK)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Make this (read) transaction see one snapshot for all its statements.
    pub async fn snapshot(conn: &mut PgConnection) -> StoreResult<()> {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Wake the dispatchers (delivered at commit; repeats in one transaction fold into one).
    pub async fn notify_work(conn: &mut PgConnection) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(WORK_CHANNEL)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// PostgreSQL binds `$N` by number already.
    pub fn positional(sql: String) -> String {
        sql
    }

    /// A subquery of the text values of the JSON array bound at `param`.
    pub fn json_text_list(param: &str) -> String {
        format!("SELECT jsonb_array_elements_text({param}::jsonb)")
    }

    /// A wake-up per notification; reconnects on its own when the connection drops.
    pub fn listen(pool: &sqlx::PgPool) -> Option<tokio::sync::mpsc::UnboundedReceiver<()>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pool = pool.clone();
        tokio::spawn(async move {
            loop {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection failed; polling meanwhile");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Err(e) = listener.listen(WORK_CHANNEL).await {
                    tracing::warn!(error = %e, "LISTEN failed; polling meanwhile");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                loop {
                    match listener.recv().await {
                        Ok(_) => {
                            if tx.send(()).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                            break;
                        }
                    }
                }
            }
        });
        Some(rx)
    }
}

super::sql::sql_store!(PostgresStore, sqlx::Postgres, sqlx::postgres::PgRow, hooks);
