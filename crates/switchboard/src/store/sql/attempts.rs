//! Recording attempts: many to a transaction (group commit), each delivery moved on only while
//! this node holds its lease, and the webhooks' health counted once per batch.

macro_rules! sql_attempts {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
        /// Record several attempts in one transaction (group commit); when the batch fails,
        /// each is tried alone.
        async fn record_attempts(
            pool: &sqlx::Pool<$db>,
            items: Vec<$crate::store::AttemptItem>,
        ) -> Vec<StoreResult<WebhookHealth>> {
            async fn all(
                pool: &sqlx::Pool<$db>,
                items: &[$crate::store::AttemptItem],
            ) -> StoreResult<Vec<WebhookHealth>> {
                let mut tx = $hooks::begin_write(pool).await?;
                let health = attempts_in(&mut tx, items).await?;
                tx.commit().await?;
                Ok(health)
            }
            if items.len() > 1 {
                if let Ok(health) = all(pool, &items).await {
                    return health.into_iter().map(Ok).collect();
                }
            }
            let mut results = Vec::with_capacity(items.len());
            for item in &items {
                results.push(all(pool, std::slice::from_ref(item)).await.map(|mut h| h.remove(0)));
            }
            results
        }

        /// Record attempts and move each webhook's health on, in the caller's transaction.
        async fn attempts_in(
            tx: &mut Transaction<'_, $db>,
            items: &[$crate::store::AttemptItem],
        ) -> StoreResult<Vec<WebhookHealth>> {
            if items.is_empty() {
                return Ok(vec![]);
            }
            write_attempts(tx, items).await?;
            // Every row this batch will write is locked (with other nodes) in one pass, in id
            // order, so two writers never wait on each other in opposite orders: webhooks with a
            // failure here, webhooks whose successes here clear earlier failures, and webhooks
            // whose subscriber answers for the first time (or again). A webhook already healthy
            // and answering with only successes here stays as it is and is not touched, so
            // writers do not queue on it. Each locked webhook's health is moved on attempt by
            // attempt and written once.
            let mut all: Vec<&str> = items.iter().map(|i| i.job.webhook_id.as_str()).collect();
            all.sort_unstable();
            all.dedup();
            let mut failing: Vec<&str> = items
                .iter()
                .filter(|i| i.next != NextStep::Delivered)
                .map(|i| i.job.webhook_id.as_str())
                .collect();
            failing.sort_unstable();
            failing.dedup();
            let mut health_of: HashMap<String, WebhookHealth> = HashMap::new();
            for chunk in chunks(&all, rows_per_statement(1, 0) / 2) {
                let failing_here: Vec<&str> = chunk
                    .iter()
                    .copied()
                    .filter(|id| failing.binary_search(id).is_ok())
                    .collect();
                let sql = $hooks::positional(format!(
                    "SELECT id, consecutive_failures, failing_since, breaker_open_until, answered
                     FROM webhooks
                     WHERE id IN ({}) AND (consecutive_failures <> 0 OR failing_since IS NOT NULL
                         OR NOT answered OR id IN ({}))
                     ORDER BY id{}",
                    placeholders(chunk.len(), 1),
                    if failing_here.is_empty() {
                        "NULL".to_owned()
                    } else {
                        placeholders(failing_here.len(), chunk.len() + 1)
                    },
                    $hooks::ROW_LOCK
                ));
                let mut query = sqlx::query(&sql);
                for id in chunk.iter().chain(&failing_here) {
                    query = query.bind(*id);
                }
                for r in query.fetch_all(&mut **tx).await? {
                    health_of.insert(
                        r.get("id"),
                        WebhookHealth {
                            consecutive_failures: r.get::<i64, _>("consecutive_failures") as u32,
                            failing_since: r.get("failing_since"),
                            breaker_open_until: r.get("breaker_open_until"),
                            answered: r.get("answered"),
                        },
                    );
                }
            }
            let mut health = Vec::with_capacity(items.len());
            for item in items {
                let Some(h) = health_of.get_mut(&item.job.webhook_id) else {
                    // Healthy and answering, and only successes here (or the webhook is gone).
                    health.push(WebhookHealth {
                        answered: true,
                        ..WebhookHealth::default()
                    });
                    continue;
                };
                h.answered = item.attempt.http_status.is_some();
                if item.next == NextStep::Delivered {
                    h.consecutive_failures = 0;
                    h.failing_since = None;
                } else {
                    h.consecutive_failures += 1;
                    h.failing_since.get_or_insert(item.attempt.started_at);
                }
                health.push(*h);
            }
            for (webhook_id, h) in &health_of {
                sqlx::query(
                    "UPDATE webhooks SET consecutive_failures = $1, failing_since = $2, answered = $3
                     WHERE id = $4",
                )
                .bind(i64::from(h.consecutive_failures))
                .bind(h.failing_since)
                .bind(h.answered)
                .bind(webhook_id.as_str())
                .execute(&mut **tx)
                .await?;
            }
            Ok(health)
        }

        /// The deliveries' new states and the attempts' rows, many to a statement (the
        /// webhooks' health is written once per batch by `record_attempts`). A delivery appears
        /// once per statement, so a second attempt of it in the batch sees the first's update.
        async fn write_attempts(
            tx: &mut Transaction<'_, $db>,
            items: &[$crate::store::AttemptItem],
        ) -> StoreResult<()> {
            let mut start = 0;
            while start < items.len() {
                let mut distinct = HashSet::new();
                // The UPDATE's rows are a UNION ALL, and SQLite allows 500 terms in one.
                let run = items[start..]
                    .iter()
                    .take(rows_per_statement(7, 0).min(256))
                    .take_while(|i| distinct.insert(i.job.delivery_id.as_str()))
                    .count();
                let end = start + chunks(&items[start..start + run], run).next().map_or(run, <[_]>::len);
                write_attempt_rows(tx, &items[start..end]).await?;
                start = end;
            }
            Ok(())
        }

        /// Attempts of distinct deliveries: each delivery moves on if this node still holds its
        /// lease (a delivery cancelled meanwhile keeps its state); every attempt is recorded.
        async fn write_attempt_rows(
            tx: &mut Transaction<'_, $db>,
            items: &[$crate::store::AttemptItem],
        ) -> StoreResult<()> {
            let mut rows = String::with_capacity(items.len() * 160);
            for i in 0..items.len() {
                let p = 1 + i * 5;
                if i == 0 {
                    let _ = write!(
                        rows,
                        "SELECT CAST(${} AS TEXT) AS delivery_id, CAST(${} AS TEXT) AS new_status,
                             CAST(${} AS BIGINT) AS retry_at, CAST(${} AS BIGINT) AS done_at,
                             CAST(${} AS BIGINT) AS held_until",
                        p, p + 1, p + 2, p + 3, p + 4
                    );
                } else {
                    let _ = write!(
                        rows,
                        " UNION ALL SELECT CAST(${} AS TEXT), CAST(${} AS TEXT), CAST(${} AS BIGINT),
                             CAST(${} AS BIGINT), CAST(${} AS BIGINT)",
                        p, p + 1, p + 2, p + 3, p + 4
                    );
                }
            }
            let sql = $hooks::positional(format!(
                "UPDATE deliveries SET attempts = attempts + 1, lease_until = NULL,
                     status = v.new_status, next_attempt_at = v.retry_at, finished_at = v.done_at
                 FROM ({rows}) AS v
                 WHERE deliveries.id = v.delivery_id AND deliveries.status = 'pending'
                   AND (deliveries.lease_until IS NULL OR deliveries.lease_until = v.held_until)
                 RETURNING id, attempts"
            ));
            let mut query = sqlx::query(&sql);
            for item in items {
                let next = item.next;
                query = query
                    .bind(item.job.delivery_id.as_str())
                    .bind(match next {
                        NextStep::Delivered => delivery_status::DELIVERED,
                        NextStep::RetryAt(_) => delivery_status::PENDING,
                        NextStep::Failed => delivery_status::FAILED,
                    })
                    .bind(match next {
                        NextStep::RetryAt(at) => Some(at),
                        _ => None,
                    })
                    .bind(match next {
                        NextStep::RetryAt(_) => None,
                        _ => Some(item.attempt.started_at + item.attempt.duration_ms),
                    })
                    .bind(item.job.lease_until);
            }
            let numbers: HashMap<String, i64> = query
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();

            let sql = $hooks::positional(format!(
                "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, http_status,
                     error, response_body)
                 VALUES {}",
                tuples(items.len(), 7, 1)
            ));
            let mut query = sqlx::query(&sql);
            for item in items {
                let (job, attempt) = (&item.job, &item.attempt);
                query = query
                    .bind(job.delivery_id.as_str())
                    .bind(
                        numbers
                            .get(&job.delivery_id)
                            .copied()
                            .unwrap_or(i64::from(job.attempts) + 1),
                    )
                    .bind(attempt.started_at)
                    .bind(attempt.duration_ms)
                    .bind(attempt.http_status.map(i64::from))
                    .bind(attempt.error.as_deref())
                    .bind(attempt.response_excerpt.as_deref());
            }
            query.execute(&mut **tx).await?;
            Ok(())
        }
    };
}

pub(crate) use sql_attempts;
