//! The events feed, retention (pruning old events, attempts and finished deliveries) and the
//! queue's depth by state.

macro_rules! sql_feed {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
        #[async_trait]
        impl $crate::store::Feed for $store {

            async fn list_events(&self, after: i64, limit: u32) -> StoreResult<Vec<(i64, Bytes)>> {
                let rows =
                    sqlx::query("SELECT seq, payload FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
                        .bind(after)
                        .bind(i64::from(limit))
                        .fetch_all(&self.reader)
                        .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| (r.get("seq"), Bytes::from(r.get::<Vec<u8>, _>("payload"))))
                    .collect())
            }

            async fn prune(&self, before: i64, batch: u32) -> StoreResult<u64> {

                self.faults.track(async {
                let mut tx = $hooks::begin_write(&self.writer).await?;
                let attempts = sqlx::query(
                    "DELETE FROM attempts WHERE id IN
                         (SELECT id FROM attempts WHERE started_at < $1 ORDER BY id LIMIT $2)",
                )
                .bind(before)
                .bind(i64::from(batch))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                // Events whose deliveries are all finished, with those deliveries and their
                // attempts; none after the place of a webhook whose backlog is held in the
                // stream (their deliveries are not written yet).
                let held_from: Option<i64> = sqlx::query_scalar(
                    "SELECT MIN(backlog_after_seq) FROM webhooks WHERE deleted_at IS NULL",
                )
                .fetch_one(&mut *tx)
                .await?;
                let old_events: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM events e WHERE created_at < $1 AND seq <= $3
                       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status = 'pending')
                     ORDER BY seq LIMIT $2",
                )
                .bind(before)
                .bind(i64::from(batch))
                .bind(held_from.unwrap_or(i64::MAX))
                .fetch_all(&mut *tx)
                .await?;
                let mut rows = attempts;
                rows += sqlx::query(
                    "DELETE FROM provider_nonces WHERE (provider, nonce) IN
                         (SELECT provider, nonce FROM provider_nonces WHERE created_at < $1 LIMIT $2)",
                )
                .bind(before)
                .bind(i64::from(batch))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                for event_id in &old_events {
                    rows += sqlx::query(
                        "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = $1)",
                    )
                    .bind(event_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    rows += sqlx::query("DELETE FROM deliveries WHERE event_id = $1")
                        .bind(event_id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    rows += sqlx::query("DELETE FROM events WHERE id = $1")
                        .bind(event_id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                Ok(rows)

                }).await

            }

            async fn queue_depth(&self, now: i64) -> StoreResult<$crate::store::QueueDepth> {
                // Held: not leased, and its webhook is disabled or its breaker open.
                let row = sqlx::query(
                    "SELECT
                         COALESCE(SUM(CASE WHEN NOT leased AND NOT held AND next_attempt_at <= $1 THEN 1 ELSE 0 END), 0) AS due,
                         COALESCE(SUM(CASE WHEN NOT leased AND NOT held AND next_attempt_at > $1 THEN 1 ELSE 0 END), 0) AS scheduled,
                         COALESCE(SUM(CASE WHEN leased THEN 1 ELSE 0 END), 0) AS leased,
                         COALESCE(SUM(CASE WHEN NOT leased AND held THEN 1 ELSE 0 END), 0) AS held
                     FROM (SELECT COALESCE(d.lease_until > $1, FALSE) AS leased,
                                  (w.disabled_at IS NOT NULL OR COALESCE(w.breaker_open_until > $1, FALSE)) AS held,
                                  d.next_attempt_at
                           FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
                           WHERE d.status = 'pending') AS p",
                )
                .bind(now)
                .fetch_one(&self.reader)
                .await?;
                Ok($crate::store::QueueDepth {
                    due: row.get::<i64, _>("due") as u64,
                    scheduled: row.get::<i64, _>("scheduled") as u64,
                    in_flight: row.get::<i64, _>("leased") as u64,
                    held: row.get::<i64, _>("held") as u64,
                })
            }
        }
    };
}

pub(crate) use sql_feed;
