//! Deliveries: claiming due ones and conversation heads under leases, extending and giving
//! leases back, recording an attempt, a manual retry, replays, and the per-message report.

macro_rules! sql_deliveries {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
        /// The columns a [`DeliveryJob`] is read from (`d` deliveries, `e` events).
        const JOB_COLUMNS: &str = "d.id, d.event_id, d.webhook_id, d.attempts, d.retry_offset,
            d.conversation_id, d.event_seq, e.payload";

        fn job_from_row(row: &$row, lease_until: i64) -> DeliveryJob {
            let attempts = row.get::<i64, _>("attempts") as u32;
            let retry_offset = row.get::<i64, _>("retry_offset") as u32;
            DeliveryJob {
                delivery_id: row.get("id"),
                event_id: row.get("event_id"),
                webhook_id: row.get("webhook_id"),
                payload: Bytes::from(row.get::<Vec<u8>, _>("payload")),
                attempts,
                retry_offset,
                conversation_id: row.get("conversation_id"),
                event_seq: row.get::<Option<i64>, _>("event_seq").unwrap_or(0),
                lease_until,
                is_retry: attempts > retry_offset,
                ghl_signature: Default::default(),
            }
        }

        #[async_trait]
        impl $crate::store::Deliveries for $store {
            async fn message_deliveries(
                &self,
                message_id: &str,
                now: i64,
            ) -> StoreResult<Vec<DeliveryReport>> {
                // One read transaction: the deliveries and their attempts from the same snapshot.
                let mut tx = self.reader.begin().await?;
                $hooks::snapshot(&mut *tx).await?;
                let rows = sqlx::query(
                    "SELECT d.id, d.webhook_id, w.url, d.status, d.next_attempt_at, d.lease_until,
                            w.disabled_at, w.breaker_open_until
                     FROM deliveries d
                     JOIN events e ON e.id = d.event_id
                     JOIN webhooks w ON w.id = d.webhook_id
                     WHERE e.message_id = $1
                     ORDER BY d.created_at, d.id",
                )
                .bind(message_id)
                .fetch_all(&mut *tx)
                .await?;
                let mut reports = Vec::with_capacity(rows.len());
                for row in rows {
                    let id: String = row.get("id");
                    let attempts = sqlx::query(
                        "SELECT attempt, started_at, duration_ms, http_status, error, response_body
                         FROM attempts WHERE delivery_id = $1 ORDER BY attempt",
                    )
                    .bind(&id)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|a| AttemptReport {
                        attempt: a.get("attempt"),
                        at: a.get("started_at"),
                        duration_ms: a.get("duration_ms"),
                        http_status: a.get("http_status"),
                        error_kind: a
                            .get::<Option<&str>, _>("error")
                            .and_then(|e| e.split_once(':'))
                            .map(|(kind, _)| kind.to_owned()),
                        error: a.get("error"),
                        response: a.get("response_body"),
                    })
                    .collect();
                    let status: String = row.get("status");
                    let pending = status == delivery_status::PENDING;
                    let leased = row.get::<Option<i64>, _>("lease_until").is_some_and(|l| l > now);
                    let held = if !pending || leased {
                        None
                    } else if row.get::<Option<i64>, _>("disabled_at").is_some() {
                        Some($crate::store::held::WEBHOOK_DISABLED)
                    } else if row.get::<Option<i64>, _>("breaker_open_until").is_some_and(|u| u > now) {
                        Some($crate::store::held::BREAKER_OPEN)
                    } else {
                        None
                    };
                    reports.push(DeliveryReport {
                        id,
                        webhook_id: row.get("webhook_id"),
                        url: row.get("url"),
                        next_attempt_at: if pending { row.get("next_attempt_at") } else { None },
                        held,
                        status,
                        attempts,
                    });
                }
                tx.commit().await?;
                Ok(reports)
            }

            async fn claim_due(
                &self,
                now: i64,
                lease_until: i64,
                limit: u32,
                skip_webhooks: &[String],
            ) -> StoreResult<Vec<DeliveryJob>> {

                self.faults.track(async {
                let skip = serde_json::to_string(skip_webhooks).expect("strings serialize");
                // Due, free, for an enabled webhook with a closed breaker; for an ordered webhook only
                // the first pending delivery of its conversation.
                const CLAIMABLE: &str = "d.status = 'pending' AND d.next_attempt_at <= $1
                       AND (d.lease_until IS NULL OR d.lease_until <= $1)
                       AND w.deleted_at IS NULL AND w.disabled_at IS NULL
                       AND (w.breaker_open_until IS NULL OR w.breaker_open_until <= $1)
                       AND (w.ordering <> 'conversation' OR d.conversation_id IS NULL OR NOT EXISTS (
                           SELECT 1 FROM deliveries p
                           WHERE p.webhook_id = d.webhook_id AND p.conversation_id = d.conversation_id
                             AND p.status = 'pending' AND p.id <> d.id
                             AND (p.event_seq < d.event_seq OR p.lease_until > $1)))";
                // Most polls find nothing: ask a reader before taking the writer.
                let any: Option<i32> = sqlx::query_scalar(&format!(
                    "SELECT 1 FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
                     WHERE {CLAIMABLE} AND d.webhook_id NOT IN ({}) LIMIT 1",
                    $hooks::json_text_list("$2")
                ))
                .bind(now)
                .bind(&skip)
                .fetch_optional(&self.reader)
                .await?;
                if any.is_none() {
                    return Ok(vec![]);
                }
                let mut tx = $hooks::begin_write(&self.writer).await?;
                let rows = sqlx::query(&format!(
                    "SELECT {JOB_COLUMNS} FROM deliveries d
                     JOIN events e ON e.id = d.event_id
                     JOIN webhooks w ON w.id = d.webhook_id
                     WHERE {CLAIMABLE} AND d.webhook_id NOT IN ({})
                     ORDER BY d.next_attempt_at
                     LIMIT $2{}",
                    $hooks::json_text_list("$3"),
                    $hooks::CLAIM_LOCK
                ))
                .bind(now)
                .bind(i64::from(limit))
                .bind(&skip)
                .fetch_all(&mut *tx)
                .await?;
                let mut jobs = Vec::with_capacity(rows.len());
                for row in rows {
                    let job = job_from_row(&row, lease_until);
                    sqlx::query("UPDATE deliveries SET lease_until = $1 WHERE id = $2")
                        .bind(lease_until)
                        .bind(&job.delivery_id)
                        .execute(&mut *tx)
                        .await?;
                    jobs.push(job);
                }
                tx.commit().await?;
                Ok(jobs)

                }).await

            }

            async fn claim_conversation_head(
                &self,
                webhook_id: &str,
                conversation_id: &str,
                now: i64,
                lease_until: i64,
            ) -> StoreResult<Option<DeliveryJob>> {

                self.faults.track(async {
                let mut tx = $hooks::begin_write(&self.writer).await?;
                let row = sqlx::query(&format!(
                    "SELECT {JOB_COLUMNS}, d.next_attempt_at, d.lease_until AS held FROM deliveries d
                     JOIN events e ON e.id = d.event_id
                     WHERE d.webhook_id = $1 AND d.conversation_id = $2 AND d.status = 'pending'
                     ORDER BY d.event_seq LIMIT 1{}",
                    $hooks::HEAD_LOCK
                ))
                .bind(webhook_id)
                .bind(conversation_id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let due = row.get::<Option<i64>, _>("next_attempt_at").unwrap_or(0) <= now;
                let free = row.get::<Option<i64>, _>("held").is_none_or(|h| h <= now);
                if !(due && free) {
                    return Ok(None);
                }
                let job = job_from_row(&row, lease_until);
                sqlx::query("UPDATE deliveries SET lease_until = $1 WHERE id = $2")
                    .bind(lease_until)
                    .bind(&job.delivery_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Some(job))

                }).await

            }

            async fn extend_lease(&self, delivery_id: &str, current: i64, until: i64) -> StoreResult<bool> {

                self.faults.track(async {
                let done = sqlx::query(
                    "UPDATE deliveries SET lease_until = $1
                     WHERE id = $2 AND lease_until = $3 AND status = 'pending'",
                )
                .bind(until)
                .bind(delivery_id)
                .bind(current)
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected() == 1)

                }).await

            }

            async fn release_leases_of(&self, leases: &[(String, i64)]) -> StoreResult<()> {

                self.faults.track(async {
                let mut tx = $hooks::begin_write(&self.writer).await?;
                for (id, lease_until) in leases {
                    // Only a lease this node still holds: another node may have taken it over.
                    sqlx::query(
                        "UPDATE deliveries SET lease_until = NULL
                         WHERE id = $1 AND lease_until = $2 AND status = 'pending'",
                    )
                    .bind(id)
                    .bind(lease_until)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())

                }).await

            }

            async fn record_attempt(
                &self,
                job: &DeliveryJob,
                attempt: &AttemptRecord,
                next: NextStep,
            ) -> StoreResult<WebhookHealth> {
                self.batch
                    .attempt($crate::store::AttemptItem {
                        job: job.clone(),
                        attempt: attempt.clone(),
                        next,
                    })
                    .await
            }

            async fn retry_delivery(
                &self,
                id: &str,
                now: i64,
                lease_until: i64,
            ) -> StoreResult<Option<DeliveryJob>> {

                self.faults.track(async {
                let mut tx = $hooks::begin_write(&self.writer).await?;
                let row = sqlx::query(&format!(
                    "SELECT d.status, d.lease_until AS held, w.ordering, w.disabled_at
                     FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
                     WHERE d.id = $1 AND w.deleted_at IS NULL{}",
                    $hooks::HEAD_LOCK
                ))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| {
                    StoreError::NotFound(format!("no delivery {id} (or its webhook was deleted)"))
                })?;
                let status: String = row.get("status");
                if status == delivery_status::CANCELLED {
                    return Err(StoreError::NotFound(format!("delivery {id} was cancelled")));
                }
                if status == delivery_status::PENDING
                    && row.get::<Option<i64>, _>("held").is_some_and(|h| h > now)
                {
                    return Err(StoreError::Conflict(format!("delivery {id} is being sent right now")));
                }
                // An ordered webhook's delivery waits its turn in the conversation, and a disabled
                // webhook's waits for it to be enabled: those are left for a claim.
                let claim_later = row.get::<&str, _>("ordering") == "conversation"
                    || row.get::<Option<i64>, _>("disabled_at").is_some();
                let lease = (!claim_later).then_some(lease_until);
                sqlx::query(
                    "UPDATE deliveries SET status = 'pending', next_attempt_at = $1, lease_until = $2,
                         retry_offset = CASE WHEN status = 'pending' THEN retry_offset ELSE attempts END,
                         finished_at = NULL
                     WHERE id = $3",
                )
                .bind(now)
                .bind(lease)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                if claim_later {
                    $hooks::notify_work(&mut *tx).await?;
                    tx.commit().await?;
                    return Ok(None);
                }
                let row = sqlx::query(&format!(
                    "SELECT {JOB_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = $1"
                ))
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some(job_from_row(&row, lease_until)))

                }).await

            }

            async fn replay(
                &self,
                webhook_id: &str,
                since: i64,
                until: i64,
                only_failed: bool,
                now: i64,
            ) -> StoreResult<(u64, u64)> {

                self.faults.track(async {
                let mut tx = $hooks::begin_write(&self.writer).await?;
                // Locked, so none of them is delivered (and then replayed too) before the update.
                let pending = sqlx::query(&format!(
                    "SELECT id FROM deliveries
                     WHERE webhook_id = $1 AND status = 'pending'
                       AND event_id IN (SELECT id FROM events WHERE created_at BETWEEN $2 AND $3){}",
                    $hooks::ROW_LOCK
                ))
                .bind(webhook_id)
                .bind(since)
                .bind(until)
                .fetch_all(&mut *tx)
                .await?
                .len();
                let done = sqlx::query(
                    "UPDATE deliveries SET status = 'pending', next_attempt_at = $1, lease_until = NULL,
                         retry_offset = attempts, finished_at = NULL
                     WHERE webhook_id = $2 AND status <> 'cancelled'
                       AND (status = 'failed' OR (NOT $3 AND status = 'delivered'))
                       AND event_id IN (SELECT id FROM events WHERE created_at BETWEEN $4 AND $5)",
                )
                .bind(now)
                .bind(webhook_id)
                .bind(only_failed)
                .bind(since)
                .bind(until)
                .execute(&mut *tx)
                .await?;
                $hooks::notify_work(&mut *tx).await?;
                tx.commit().await?;
                Ok((done.rows_affected(), pending as u64))

                }).await

            }
        }
    };
}

pub(crate) use sql_deliveries;
