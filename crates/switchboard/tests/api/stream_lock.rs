//! The event stream's lock of a PostgreSQL store, taken by a test to hold its server's ingests
//! at a chosen point: after they read the webhooks, before they number their events.

use std::time::Duration;

use crate::helpers::TestApp;

/// The lock a PostgreSQL store numbers events under (the server's constant), held by a test:
/// every ingest of its server waits for it after reading the webhooks, until `release`.
pub struct StreamLock {
    /// The connection holding it, in a transaction (a test may write in it).
    pub conn: sqlx::PgConnection,
    watch: sqlx::PgConnection,
}

impl StreamLock {
    const KEY: i64 = 0x5357_4254_4556;

    pub async fn take(app: &TestApp) -> StreamLock {
        use sqlx::Connection;
        let url = app.database_url.clone().expect("a PostgreSQL test");
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let watch = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(Self::KEY)
            .execute(&mut conn)
            .await
            .unwrap();
        StreamLock { conn, watch }
    }

    /// Until a connection of this test's server waits for the lock (tests share the database,
    /// and with it the advisory locks; a test server's connections carry its schema as their
    /// application name, as this test's do).
    pub async fn until_waited_for(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND NOT l.granted
                   AND a.application_name = current_setting('application_name')
                   AND l.classid::bigint = $1 AND l.objid::bigint = $2",
            )
            .bind(Self::KEY >> 32)
            .bind(Self::KEY & 0xffff_ffff)
            .fetch_one(&mut self.watch)
            .await
            .unwrap();
            if waiting > 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no ingest of this server waited for the event stream's lock within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn release(mut self) {
        sqlx::query("COMMIT").execute(&mut self.conn).await.unwrap();
    }
}
