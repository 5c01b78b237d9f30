//! Webhooks: create, read, change, rotate their secrets, delete, disable (emitting
//! `WebhookDisabled`), enable, and the circuit breaker's state.

macro_rules! sql_webhooks {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
        fn webhook_from_row(row: &$row) -> Webhook {
            let json_list = |column: &str| -> Option<Vec<String>> {
                row.get::<Option<&str>, _>(column)
                    .and_then(|j| serde_json::from_str(j).ok())
            };
            Webhook {
                id: row.get("id"),
                url: row.get("url"),
                events: parse_events(row.get::<&str, _>("events")),
                location_id: row.get("location_id"),
                secret: row.get("secret"),
                created_at: row.get("created_at"),
                message_types: json_list("message_types"),
                direction: match row.get::<Option<&str>, _>("direction") {
                    Some("inbound") => Some(Direction::Inbound),
                    Some("outbound") => Some(Direction::Outbound),
                    _ => None,
                },
                ordering: match row.get::<&str, _>("ordering") {
                    "conversation" => Ordering::Conversation,
                    _ => Ordering::None,
                },
                max_in_flight: row.get::<Option<i64>, _>("max_in_flight").map(|n| n as u32),
                max_per_second: row.get("max_per_second"),
                retry_schedule: row
                    .get::<Option<&str>, _>("retry_schedule")
                    .and_then(|j| serde_json::from_str::<Vec<u64>>(j).ok())
                    .map(|ms| ms.into_iter().map(Duration::from_millis).collect()),
                allowed_networks: json_list("allowed_networks")
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|n| n.parse().ok())
                    .collect(),
                legacy_signature: row.get::<bool, _>("legacy_signature"),
                previous_secrets: serde_json::from_str(row.get::<&str, _>("previous_secrets"))
                    .unwrap_or_default(),
                disabled_at: row.get("disabled_at"),
                disabled_reason: row.get("disabled_reason"),
                health: WebhookHealth {
                    consecutive_failures: row.get::<i64, _>("consecutive_failures") as u32,
                    failing_since: row.get("failing_since"),
                    breaker_open_until: row.get("breaker_open_until"),
                    answered: row.get("answered"),
                },
                backlog_after_seq: row.get("backlog_after_seq"),
            }
        }

        const WEBHOOK_COLUMNS: &str = "id, url, events, location_id, secret, created_at, message_types,
            direction, ordering, max_in_flight, max_per_second, retry_schedule, allowed_networks,
            legacy_signature, previous_secrets, disabled_at, disabled_reason, consecutive_failures,
            failing_since, breaker_open_until, answered, backlog_after_seq";

        /// The settings a PATCH may change, in the order `bind_settings` binds them. The secret
        /// and the disabled state have statements of their own, so a concurrent rotation or
        /// disable is never written back over.
        const SETTINGS_COLUMNS: &str = "url, events, location_id, message_types, direction,
            ordering, max_in_flight, max_per_second, retry_schedule, allowed_networks, legacy_signature";

        fn bind_settings<'q>(
            query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
            w: &'q Webhook,
        ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>> {
            let events: Vec<&str> = w.events.iter().map(|e| e.as_str()).collect();
            let networks: Vec<String> = w.allowed_networks.iter().map(|n| n.to_string()).collect();
            query
                .bind(&w.url)
                .bind(serde_json::to_string(&events).expect("strings serialize"))
                .bind(&w.location_id)
                .bind(
                    w.message_types
                        .as_ref()
                        .map(|t| serde_json::to_string(t).expect("strings serialize")),
                )
                .bind(w.direction.map(|d| d.as_str()))
                .bind(w.ordering.as_str())
                .bind(w.max_in_flight.map(i64::from))
                .bind(w.max_per_second)
                .bind(w.retry_schedule.as_ref().map(|s| {
                    let ms: Vec<u64> = s.iter().map(|d| d.as_millis() as u64).collect();
                    serde_json::to_string(&ms).expect("numbers serialize")
                }))
                .bind(
                    (!networks.is_empty())
                        .then(|| serde_json::to_string(&networks).expect("strings serialize")),
                )
                .bind(w.legacy_signature)
        }

        #[async_trait]
        impl $crate::store::Webhooks for $store {
            async fn create_webhook(&self, w: &Webhook) -> StoreResult<()> {

                self.faults.track(async {
                let query = format!(
                    "INSERT INTO webhooks (id, created_at, secret, {SETTINGS_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
                );
                let query = sqlx::query(&query)
                    .bind(&w.id)
                    .bind(w.created_at)
                    .bind(&w.secret);
                bind_settings(query, w).execute(&self.writer).await?;
                Ok(())

                }).await

            }

            async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>> {
                let rows = sqlx::query(&format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE deleted_at IS NULL ORDER BY created_at, id"
                ))
                .fetch_all(&self.reader)
                .await?;
                Ok(rows.iter().map(webhook_from_row).collect())
            }

            async fn get_webhook(&self, id: &str) -> StoreResult<Option<Webhook>> {
                let row = sqlx::query(&format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND deleted_at IS NULL"
                ))
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
                Ok(row.as_ref().map(webhook_from_row))
            }

            async fn update_webhook(&self, w: &Webhook) -> StoreResult<()> {

                self.faults.track(async {
                let assignments: Vec<String> = SETTINGS_COLUMNS
                    .split(',')
                    .enumerate()
                    .map(|(i, c)| format!("{} = ${}", c.trim(), i + 1))
                    .collect();
                let query = format!(
                    "UPDATE webhooks SET {} WHERE id = ${} AND deleted_at IS NULL",
                    assignments.join(", "),
                    assignments.len() + 1
                );
                let done = bind_settings(sqlx::query(&query), w)
                    .bind(&w.id)
                    .execute(&self.writer)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("no webhook {}", w.id)));
                }
                Ok(())

                }).await

            }

            async fn rotate_secret(
                &self,
                id: &str,
                secret: &str,
                previous_until: i64,
                now: i64,
            ) -> StoreResult<()> {

                self.faults.track(async {
                use $crate::store::{PreviousSecret, MAX_PREVIOUS_SECRETS};
                // Read and written under the row's lock: two rotations at once keep both.
                let mut tx = $hooks::begin_write(&self.writer).await?;
                let row = sqlx::query(&format!(
                    "SELECT secret, previous_secrets FROM webhooks
                     WHERE id = $1 AND deleted_at IS NULL{}",
                    $hooks::ROW_LOCK
                ))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("no webhook {id}")))?;
                let mut previous = Vec::new();
                if previous_until > now {
                    previous.push(PreviousSecret { secret: row.get("secret"), until: previous_until });
                    let earlier: Vec<PreviousSecret> =
                        serde_json::from_str(row.get::<&str, _>("previous_secrets")).unwrap_or_default();
                    previous.extend(earlier.into_iter().filter(|p| p.until > now));
                    previous.truncate(MAX_PREVIOUS_SECRETS);
                }
                sqlx::query("UPDATE webhooks SET secret = $1, previous_secrets = $2 WHERE id = $3")
                    .bind(secret)
                    .bind(serde_json::to_string(&previous).map_err(anyhow::Error::from)?)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())

                }).await

            }

            async fn delete_webhook(&self, id: &str, now: i64) -> StoreResult<bool> {

                self.faults.track(async {
                let mut tx = $hooks::begin_write(&self.writer).await?;
                let done =
                    sqlx::query("UPDATE webhooks SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL")
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                sqlx::query(
                    "UPDATE deliveries SET status = $1, finished_at = $2, lease_until = NULL
                     WHERE webhook_id = $3 AND status = 'pending'",
                )
                .bind(delivery_status::CANCELLED)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(done.rows_affected() == 1)

                }).await

            }

            async fn disable_webhook(
                &self,
                id: &str,
                reason: &str,
                now: i64,
                lease_until: i64,
            ) -> StoreResult<Vec<DeliveryJob>> {

                self.faults.track(async {
                let mut tx = $hooks::begin_write(&self.writer).await?;
                // The event stream's lock before the webhook's row (its event is numbered
                // below): top-ups and first deliveries take them in that order.
                $hooks::lock_event_stream(&mut *tx).await?;
                let row = sqlx::query(&format!(
                    "UPDATE webhooks SET disabled_at = $1, disabled_reason = $2, breaker_open_until = NULL
                     WHERE id = $3 AND deleted_at IS NULL AND disabled_at IS NULL
                     RETURNING {WEBHOOK_COLUMNS}"
                ))
                .bind(now)
                .bind(reason)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Ok(vec![]);
                };
                // Its pending deliveries wait: claims skip disabled webhooks. Leases are left
                // alone, so one being sent right now is never taken over while in flight.
                let disabled = webhook_from_row(&row);
                let event_id = new_id();
                let payload = Bytes::from(event::render_webhook_disabled(&disabled, &event_id, now));
                let disabled_event = NewEvent {
                    id: event_id,
                    message_id: None,
                    location_id: disabled.location_id.as_deref(),
                    event_type: EventType::WebhookDisabled,
                    payload,
                    now,
                };
                let seq = insert_events(&mut tx, std::slice::from_ref(&disabled_event)).await?[0];
                let subscribers: Vec<Webhook> = sqlx::query(&format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE deleted_at IS NULL AND id <> $1"
                ))
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(webhook_from_row)
                .filter(|w| {
                    w.matches(
                        EventType::WebhookDisabled,
                        disabled.location_id.as_deref(),
                        None,
                    )
                })
                .collect();
                let deliveries: Vec<NewDelivery<'_>> = subscribers
                    .iter()
                    .map(|webhook| NewDelivery {
                        webhook,
                        event_id: &disabled_event.id,
                        event_seq: seq,
                        conversation_id: None,
                        payload: &disabled_event.payload,
                        now,
                        lease_until: Some(lease_until),
                        left_for_claim: false,
                        item: 0,
                        hold: false,
                    })
                    .collect();
                let mut outcome = IngestOutcome::default();
                queue_deliveries(&mut tx, &deliveries, std::slice::from_mut(&mut outcome)).await?;
                tx.commit().await?;
                Ok(outcome.jobs)

                }).await

            }

            async fn enable_webhook(&self, id: &str) -> StoreResult<()> {

                self.faults.track(async {
                sqlx::query(
                    "UPDATE webhooks SET disabled_at = NULL, disabled_reason = NULL,
                         consecutive_failures = 0, failing_since = NULL, breaker_open_until = NULL
                     WHERE id = $1 AND deleted_at IS NULL",
                )
                .bind(id)
                .execute(&self.writer)
                .await?;
                $hooks::notify_work(&mut *self.writer.acquire().await?).await?;
                Ok(())

                }).await

            }

            async fn set_breaker(&self, id: &str, open_until: Option<i64>) -> StoreResult<()> {

                self.faults.track(async {
                sqlx::query("UPDATE webhooks SET breaker_open_until = $1 WHERE id = $2")
                    .bind(open_until)
                    .bind(id)
                    .execute(&self.writer)
                    .await?;
                Ok(())

                }).await

            }
        }
    };
}

pub(crate) use sql_webhooks;
