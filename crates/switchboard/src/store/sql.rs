//! The store's SQL, written once for both backends. Every query uses numbered `$N`
//! placeholders, which PostgreSQL and SQLite (through sqlx) both bind by number; the few
//! differences (row locks, the event-stream lock, wake-ups) are the backend's `hooks`.
//!
//! `sql_store!(Store, Db, Row, hooks)` implements [`super::Store`] for `Store`, a struct with
//! `writer` and `reader` pools of `Db`.

macro_rules! sql_store {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
        use std::time::Duration;

        use anyhow::Context;
        use async_trait::async_trait;
        use bytes::Bytes;
        use sqlx::{Row, Transaction};
        use switchboard_events::{Direction, EventType};

        use $crate::store::{
            delivery_status, AttemptRecord, AttemptReport, ChannelAccountInput, DeliveryJob,
            DeliveryReport, IngestContext, IngestOutcome, Location, NextStep, Ordering, Store,
            StoreError, StoreResult, Webhook, WebhookHealth,
        };
        use $crate::channels::{self, ChannelAccount, RouteKey};
        use $crate::domain::call::{CallState, CallUpdate};
        use $crate::domain::ids::new_id;
        use $crate::domain::{ContactIdentity, Fact, NewMessage};
        use $crate::event::{self, Filed};

        fn parse_events(json: &str) -> Vec<EventType> {
            serde_json::from_str::<Vec<String>>(json)
                .unwrap_or_default()
                .iter()
                .filter_map(|s| EventType::parse(s))
                .collect()
        }

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
                previous_secret: row.get("previous_secret"),
                previous_secret_until: row.get("previous_secret_until"),
                disabled_at: row.get("disabled_at"),
                disabled_reason: row.get("disabled_reason"),
                health: WebhookHealth {
                    consecutive_failures: row.get::<i64, _>("consecutive_failures") as u32,
                    failing_since: row.get("failing_since"),
                    breaker_open_until: row.get("breaker_open_until"),
                },
            }
        }

        const WEBHOOK_COLUMNS: &str = "id, url, events, location_id, secret, created_at, message_types,
            direction, ordering, max_in_flight, max_per_second, retry_schedule, allowed_networks,
            legacy_signature, previous_secret, previous_secret_until, disabled_at, disabled_reason, consecutive_failures,
            failing_since, breaker_open_until";

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
            }
        }

        async fn contact_id(
            tx: &mut Transaction<'_, $db>,
            location_id: &str,
            identity: &ContactIdentity,
            name: Option<&str>,
            now: i64,
        ) -> StoreResult<String> {
            let existing: Option<String> = sqlx::query_scalar(
                "SELECT id FROM contacts WHERE location_id = $1 AND identity_kind = $2 AND identity = $3",
            )
            .bind(location_id)
            .bind(identity.kind)
            .bind(&identity.value)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(id) = existing {
                return Ok(id);
            }
            let id = new_id();
            sqlx::query(
                "INSERT INTO contacts (id, location_id, identity_kind, identity, name, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&id)
            .bind(location_id)
            .bind(identity.kind)
            .bind(&identity.value)
            .bind(name)
            .bind(now)
            .execute(&mut **tx)
            .await?;
            Ok(id)
        }

        async fn conversation_id(
            tx: &mut Transaction<'_, $db>,
            location_id: &str,
            contact_id: &str,
            now: i64,
        ) -> StoreResult<String> {
            let existing: Option<String> = sqlx::query_scalar(
                "UPDATE conversations SET last_message_at = $1 WHERE location_id = $2 AND contact_id = $3
                 RETURNING id",
            )
            .bind(now)
            .bind(location_id)
            .bind(contact_id)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(id) = existing {
                return Ok(id);
            }
            let id = new_id();
            sqlx::query(
                "INSERT INTO conversations (id, location_id, contact_id, created_at, last_message_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&id)
            .bind(location_id)
            .bind(contact_id)
            .bind(now)
            .bind(now)
            .execute(&mut **tx)
            .await?;
            Ok(id)
        }

        /// Store one new message with its event and deliveries; `None` when the provider id is known.
        async fn file_message(
            tx: &mut Transaction<'_, $db>,
            location_id: &str,
            m: &NewMessage,
            webhooks: &[Webhook],
            ctx: &IngestContext,
            outcome: &mut IngestOutcome,
        ) -> StoreResult<()> {
            let (now, lease_until) = (ctx.now, ctx.lease_until);
            let known: Option<String> = sqlx::query_scalar(
                "SELECT id FROM messages WHERE location_id = $1 AND provider = $2 AND provider_message_id = $3",
            )
            .bind(location_id)
            .bind(m.provider)
            .bind(&m.provider_message_id)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(id) = known {
                outcome.message_ids.push(id);
                return Ok(());
            }
            let contact_id =
                contact_id(tx, location_id, &m.contact, m.contact_name.as_deref(), now).await?;
            let conversation_id = conversation_id(tx, location_id, &contact_id, now).await?;
            let message_id = new_id();
            sqlx::query(
                "INSERT INTO messages (id, location_id, conversation_id, contact_id, provider,
                     provider_message_id, direction, message_type, status, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&message_id)
            .bind(location_id)
            .bind(&conversation_id)
            .bind(&contact_id)
            .bind(m.provider)
            .bind(&m.provider_message_id)
            .bind(m.direction.as_str())
            .bind(m.message_type.as_str())
            .bind(&m.status)
            .bind(now)
            .execute(&mut **tx)
            .await?;

            let event_id = new_id();
            let event_type = m.direction.event_type();
            let payload = Bytes::from(event::render(&Filed {
                message: m,
                location_id,
                contact_id: &contact_id,
                conversation_id: &conversation_id,
                message_id: &message_id,
                event_id: &event_id,
                emitted_at: now,
                app_id: ctx.app_id.as_deref(),
            }));
            let seq = insert_event(
                tx,
                &event_id,
                Some(&message_id),
                Some(location_id),
                event_type,
                &payload,
                now,
            )
            .await?;
            let targets = webhooks.iter().filter(|w| {
                w.matches(
                    event_type,
                    Some(location_id),
                    Some((&m.message_type, m.direction)),
                )
            });
            for webhook in targets {
                queue_delivery(
                    tx,
                    webhook,
                    &event_id,
                    seq,
                    Some(&conversation_id),
                    &payload,
                    now,
                    lease_until,
                    outcome,
                )
                .await?;
            }
            outcome.message_ids.push(message_id);
            Ok(())
        }

        async fn insert_event(
            tx: &mut Transaction<'_, $db>,
            event_id: &str,
            message_id: Option<&str>,
            location_id: Option<&str>,
            event_type: EventType,
            payload: &[u8],
            now: i64,
        ) -> StoreResult<i64> {
            $hooks::lock_event_stream(&mut **tx).await?;
            Ok(sqlx::query_scalar(
                "INSERT INTO events (id, message_id, location_id, event_type, payload, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
            )
            .bind(event_id)
            .bind(message_id)
            .bind(location_id)
            .bind(event_type.as_str())
            .bind(payload)
            .bind(now)
            .fetch_one(&mut **tx)
            .await?)
        }

        /// One delivery row. It is leased to the caller and returned as a job to send at once, unless
        /// the webhook cannot take it now (disabled, breaker open) or, for an ordered webhook, an
        /// earlier event of the conversation is still pending: then the dispatcher claims it in turn.
        /// A delivery row nobody holds yet: a dispatcher claims it.
        async fn queue_unleased(
            tx: &mut Transaction<'_, $db>,
            webhook: &Webhook,
            event_id: &str,
            event_seq: i64,
            conversation_id: Option<&str>,
            now: i64,
        ) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO deliveries (id, event_id, webhook_id, status, attempts, next_attempt_at,
                     created_at, conversation_id, event_seq)
                 VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8)",
            )
            .bind(new_id())
            .bind(event_id)
            .bind(&webhook.id)
            .bind(delivery_status::PENDING)
            .bind(now)
            .bind(now)
            .bind(conversation_id)
            .bind(event_seq)
            .execute(&mut **tx)
            .await?;
            $hooks::notify_work(&mut **tx).await
        }

        #[allow(clippy::too_many_arguments)]
        async fn queue_delivery(
            tx: &mut Transaction<'_, $db>,
            webhook: &Webhook,
            event_id: &str,
            event_seq: i64,
            conversation_id: Option<&str>,
            payload: &Bytes,
            now: i64,
            lease_until: Option<i64>,
            outcome: &mut IngestOutcome,
        ) -> StoreResult<()> {
            // Without a lease (an API-only node) the dispatchers are woken to claim it.
            let Some(lease_until) = lease_until.filter(|_| webhook.disabled_at.is_none()) else {
                return queue_unleased(tx, webhook, event_id, event_seq, conversation_id, now).await;
            };
            let mut send_now = webhook.disabled_at.is_none()
                && webhook
                    .health
                    .breaker_open_until
                    .is_none_or(|until| until <= now);
            if send_now && webhook.ordering == Ordering::Conversation {
                if let Some(conversation) = conversation_id {
                    let earlier: Option<i32> = sqlx::query_scalar(
                        "SELECT 1 FROM deliveries
                         WHERE webhook_id = $1 AND conversation_id = $2 AND status = 'pending' LIMIT 1",
                    )
                    .bind(&webhook.id)
                    .bind(conversation)
                    .fetch_optional(&mut **tx)
                    .await?;
                    send_now = earlier.is_none();
                }
            }
            let delivery_id = new_id();
            sqlx::query(
                "INSERT INTO deliveries (id, event_id, webhook_id, status, attempts, next_attempt_at,
                     lease_until, created_at, conversation_id, event_seq)
                 VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8, $9)",
            )
            .bind(&delivery_id)
            .bind(event_id)
            .bind(&webhook.id)
            .bind(delivery_status::PENDING)
            .bind(now)
            .bind(send_now.then_some(lease_until))
            .bind(now)
            .bind(conversation_id)
            .bind(event_seq)
            .execute(&mut **tx)
            .await?;
            if !send_now {
                $hooks::notify_work(&mut **tx).await?;
            }
            if send_now {
                outcome.jobs.push(DeliveryJob {
                    delivery_id,
                    event_id: event_id.to_owned(),
                    webhook_id: webhook.id.clone(),
                    payload: payload.clone(),
                    attempts: 0,
                    retry_offset: 0,
                    conversation_id: conversation_id.map(str::to_owned),
                    event_seq,
                    lease_until,
                    is_retry: false,
                });
            }
            Ok(())
        }

        async fn location_webhooks(
            tx: &mut Transaction<'_, $db>,
            location_id: &str,
        ) -> StoreResult<Vec<Webhook>> {
            Ok(sqlx::query(&format!(
                "SELECT {WEBHOOK_COLUMNS} FROM webhooks
                 WHERE deleted_at IS NULL AND (location_id IS NULL OR location_id = $1)"
            ))
            .bind(location_id)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(webhook_from_row)
            .collect())
        }

        /// Merge one call callback; emit the call when its outcome is final.
        async fn merge_call(
            tx: &mut Transaction<'_, $db>,
            location_id: &str,
            provider: &'static str,
            update: &CallUpdate,
            webhooks: &[Webhook],
            ctx: &IngestContext,
            outcome: &mut IngestOutcome,
        ) -> StoreResult<()> {
            // The row exists before it is locked, so the first two callbacks of a call arriving
            // at once (at two nodes) merge one after the other instead of overwriting.
            sqlx::query(
                "INSERT INTO calls (location_id, provider, call_sid, state, updated_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (provider, call_sid) DO NOTHING",
            )
            .bind(location_id)
            .bind(provider)
            .bind(&update.call_sid)
            .bind(
                serde_json::to_string(&CallState::new(&update.call_sid, ctx.now))
                    .expect("call state serializes"),
            )
            .bind(ctx.now)
            .execute(&mut **tx)
            .await?;
            let row = sqlx::query(&format!(
                "SELECT state, message_id FROM calls WHERE provider = $1 AND call_sid = $2{}",
                $hooks::ROW_LOCK
            ))
            .bind(provider)
            .bind(&update.call_sid)
            .fetch_one(&mut **tx)
            .await?;
            let mut state = serde_json::from_str::<CallState>(row.get::<&str, _>("state"))
                .context("stored call state")?;
            let emitted = row.get::<Option<String>, _>("message_id");
            state.apply(update, ctx.now);
            let mut message_id = emitted.clone();
            let mut emit_at = None;
            if emitted.is_none() {
                match state.emit_at(ctx.call_recording_wait_ms) {
                    Some(at) if at <= ctx.now => {
                        let before = outcome.message_ids.len();
                        file_message(
                            tx,
                            location_id,
                            &state.message(provider),
                            webhooks,
                            ctx,
                            outcome,
                        )
                        .await?;
                        message_id = outcome.message_ids.get(before).cloned();
                    }
                    at => emit_at = at,
                }
            }
            sqlx::query(
                "INSERT INTO calls (location_id, provider, call_sid, state, emit_at, message_id, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (provider, call_sid) DO UPDATE SET state = excluded.state,
                     emit_at = excluded.emit_at, message_id = excluded.message_id,
                     updated_at = excluded.updated_at",
            )
            .bind(location_id)
            .bind(provider)
            .bind(&update.call_sid)
            .bind(serde_json::to_string(&state).expect("call state serializes"))
            .bind(emit_at)
            .bind(&message_id)
            .bind(ctx.now)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }


        /// The writer tasks for the group-committed writes of this store.
        fn group_commit(pool: &sqlx::Pool<$db>) -> $crate::store::GroupCommit {
            let (ingest_pool, attempts_pool) = (pool.clone(), pool.clone());
            $crate::store::GroupCommit {
                ingest: $crate::store::Batcher::start(move |items| {
                    let pool = ingest_pool.clone();
                    async move { ingest_batch(&pool, items).await }
                }),
                attempts: $crate::store::Batcher::start(move |items| {
                    let pool = attempts_pool.clone();
                    async move { record_attempts(&pool, items).await }
                }),
            }
        }

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
                let mut tx = pool.begin().await?;
                // Each webhook's health is read once (locked, with other nodes), moved on
                // attempt by attempt, and written once.
                let mut health_of: std::collections::HashMap<&str, WebhookHealth> =
                    std::collections::HashMap::new();
                let mut health = Vec::with_capacity(items.len());
                for item in items {
                    write_attempt(&mut tx, &item.job, &item.attempt, item.next).await?;
                    let webhook_id = item.job.webhook_id.as_str();
                    if !health_of.contains_key(webhook_id) {
                        let row = sqlx::query(&format!(
                            "SELECT consecutive_failures, failing_since, breaker_open_until
                             FROM webhooks WHERE id = $1{}",
                            $hooks::ROW_LOCK
                        ))
                        .bind(webhook_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let current = row
                            .map(|r| WebhookHealth {
                                consecutive_failures: r.get::<i64, _>("consecutive_failures") as u32,
                                failing_since: r.get("failing_since"),
                                breaker_open_until: r.get("breaker_open_until"),
                            })
                            .unwrap_or_default();
                        health_of.insert(webhook_id, current);
                    }
                    let h = health_of.get_mut(webhook_id).expect("inserted above");
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
                        "UPDATE webhooks SET consecutive_failures = $1, failing_since = $2 WHERE id = $3",
                    )
                    .bind(i64::from(h.consecutive_failures))
                    .bind(h.failing_since)
                    .bind(*webhook_id)
                    .execute(&mut *tx)
                    .await?;
                }
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

        /// The delivery's new state and the attempt's row (the webhook's health is written once
        /// per batch by `record_attempts`).
        async fn write_attempt(
            tx: &mut Transaction<'_, $db>,
            job: &DeliveryJob,
            attempt: &AttemptRecord,
            next: NextStep,
        ) -> StoreResult<()> {
            let finished_at = attempt.started_at + attempt.duration_ms;
            let updated: Option<i64> = sqlx::query_scalar(
                "UPDATE deliveries SET attempts = attempts + 1, lease_until = NULL,
                     status = $1, next_attempt_at = $2, finished_at = $3
                 WHERE id = $4 AND status = 'pending'
                   AND (lease_until IS NULL OR lease_until = $5)
                 RETURNING attempts",
            )
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
                _ => Some(finished_at),
            })
            .bind(&job.delivery_id)
            .bind(job.lease_until)
            .fetch_optional(&mut **tx)
            .await?;
            // A delivery cancelled meanwhile keeps its state; the attempt is still recorded.
            let number = updated.unwrap_or(i64::from(job.attempts) + 1);
            sqlx::query(
                "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, http_status,
                     error, response_body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&job.delivery_id)
            .bind(number)
            .bind(attempt.started_at)
            .bind(attempt.duration_ms)
            .bind(attempt.http_status.map(i64::from))
            .bind(&attempt.error)
            .bind(&attempt.response_excerpt)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        /// File several provider requests in one transaction (group commit): one commit, one
        /// fsync, for everything that arrived while the previous batch was being written. When
        /// the batch fails as a whole, each request is tried alone, so one bad request never
        /// fails the others.
        async fn ingest_batch(
            pool: &sqlx::Pool<$db>,
            items: Vec<$crate::store::IngestItem>,
        ) -> Vec<StoreResult<IngestOutcome>> {
            if items.len() > 1 {
                if let Ok(outcomes) = ingest_with_retries(pool, &items).await {
                    return outcomes.into_iter().map(Ok).collect();
                }
            }
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                results.push(
                    ingest_with_retries(pool, std::slice::from_ref(&item))
                        .await
                        .map(|mut o| o.remove(0)),
                );
            }
            results
        }

        /// Two nodes filing the same provider message (or creating the same contact) at once:
        /// one commits; the other hits a unique constraint and, tried again, finds what the
        /// first stored.
        async fn ingest_with_retries(
            pool: &sqlx::Pool<$db>,
            items: &[$crate::store::IngestItem],
        ) -> StoreResult<Vec<IngestOutcome>> {
            let mut tries = 0;
            loop {
                match ingest_once(pool, items).await {
                    Err(StoreError::Internal(e)) if tries < 3 && is_unique_violation(&e) => tries += 1,
                    other => return other,
                }
            }
        }

        async fn ingest_once(
            pool: &sqlx::Pool<$db>,
            items: &[$crate::store::IngestItem],
        ) -> StoreResult<Vec<IngestOutcome>> {
            let mut tx = pool.begin().await?;
            let mut outcomes = Vec::with_capacity(items.len());
            // A batch is mostly one location's messages: its webhooks are read once.
            let mut webhooks_of: std::collections::HashMap<&str, Vec<Webhook>> =
                std::collections::HashMap::new();
            for item in items {
                let (location_id, ctx) = (item.location_id.as_str(), &item.context);
                if !webhooks_of.contains_key(location_id) {
                    let found = location_webhooks(&mut tx, location_id).await?;
                    webhooks_of.insert(location_id, found);
                }
                let webhooks = &webhooks_of[location_id];
                let mut outcome = IngestOutcome::default();
                for fact in &item.facts {
                    match fact {
                        Fact::Message(m) => {
                            file_message(&mut tx, location_id, m, webhooks, ctx, &mut outcome).await?
                        }
                        Fact::Call(update) => {
                            merge_call(
                                &mut tx,
                                location_id,
                                channels::twilio::PROVIDER,
                                update,
                                webhooks,
                                ctx,
                                &mut outcome,
                            )
                            .await?
                        }
                    }
                }
                outcomes.push(outcome);
            }
            tx.commit().await?;
            Ok(outcomes)
        }

        fn is_unique_violation(e: &anyhow::Error) -> bool {
            e.downcast_ref::<sqlx::Error>()
                .and_then(|e| e.as_database_error())
                .is_some_and(|e| e.is_unique_violation())
        }

        #[async_trait]
        impl Store for $store {
            fn embedded(&self) -> bool {
                $hooks::EMBEDDED
            }

            fn work_notifications(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<()>> {
                $hooks::listen(&self.writer)
            }

            async fn secret(&self, name: &str) -> StoreResult<Option<String>> {
                Ok(sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.reader)
                    .await?)
            }

            async fn put_secret_if_absent(&self, name: &str, value: &str) -> StoreResult<String> {
                sqlx::query(
                    "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(value)
                .execute(&self.writer)
                .await?;
                Ok(sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
                    .bind(name)
                    .fetch_one(&self.writer)
                    .await?)
            }

            async fn health(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.reader).await?;
                Ok(())
            }

            async fn release_leases(&self) -> StoreResult<u64> {
                let done = sqlx::query(
                    "UPDATE deliveries SET lease_until = NULL
                     WHERE status = 'pending' AND lease_until IS NOT NULL",
                )
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected())
            }

            async fn create_location(&self, name: &str, now: i64) -> StoreResult<Location> {
                let location = Location {
                    id: new_id(),
                    name: name.to_owned(),
                    created_at: now,
                };
                sqlx::query("INSERT INTO locations (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(&location.id)
                    .bind(&location.name)
                    .bind(now)
                    .execute(&self.writer)
                    .await?;
                Ok(location)
            }

            async fn get_location(&self, id: &str) -> StoreResult<Option<Location>> {
                let row = sqlx::query("SELECT id, name, created_at FROM locations WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.reader)
                    .await?;
                Ok(row.map(|r| Location {
                    id: r.get("id"),
                    name: r.get("name"),
                    created_at: r.get("created_at"),
                }))
            }

            async fn put_channel_account(
                &self,
                location_id: &str,
                input: &ChannelAccountInput,
                now: i64,
            ) -> StoreResult<()> {
                let mut tx = self.writer.begin().await?;
                let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM locations WHERE id = $1")
                    .bind(location_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_none() {
                    return Err(StoreError::NotFound(format!("no location {location_id}")));
                }
                for address in &input.addresses {
                    let owner: Option<String> = sqlx::query_scalar(
                        "SELECT location_id FROM channel_addresses WHERE provider = $1 AND address = $2",
                    )
                    .bind(input.provider)
                    .bind(address)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(owner) = owner.filter(|o| o != location_id) {
                        return Err(StoreError::Conflict(format!(
                            "{address} already belongs to location {owner}"
                        )));
                    }
                }
                sqlx::query("DELETE FROM channel_addresses WHERE provider = $1 AND location_id = $2")
                    .bind(input.provider)
                    .bind(location_id)
                    .execute(&mut *tx)
                    .await?;
                for address in &input.addresses {
                    sqlx::query(
                        "INSERT INTO channel_addresses (provider, address, location_id) VALUES ($1, $2, $3)",
                    )
                    .bind(input.provider)
                    .bind(address)
                    .bind(location_id)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "INSERT INTO channel_accounts (location_id, provider, account_id, secret, settings, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (location_id, provider) DO UPDATE SET account_id = excluded.account_id,
                         secret = excluded.secret, settings = excluded.settings,
                         updated_at = excluded.updated_at",
                )
                .bind(location_id)
                .bind(input.provider)
                .bind(&input.account_id)
                .bind(&input.secret)
                .bind(input.settings.to_string())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn find_channel_account(
                &self,
                provider: &str,
                key: &RouteKey,
            ) -> StoreResult<Option<ChannelAccount>> {
                const COLUMNS: &str = "SELECT a.location_id, a.account_id, a.secret, a.settings
                                       FROM channel_accounts a";
                let to_account = |r: $row| ChannelAccount {
                    location_id: r.get("location_id"),
                    account_id: r.get("account_id"),
                    secret: r.get("secret"),
                    settings: serde_json::from_str(r.get::<&str, _>("settings"))
                        .unwrap_or(serde_json::Value::Null),
                };
                if let Some(address) = &key.address {
                    let row = sqlx::query(&format!(
                        "{COLUMNS} JOIN channel_addresses n
                           ON n.location_id = a.location_id AND n.provider = a.provider
                         WHERE n.provider = $1 AND n.address = $2"
                    ))
                    .bind(provider)
                    .bind(address)
                    .fetch_optional(&self.reader)
                    .await?;
                    if let Some(row) = row {
                        return Ok(Some(to_account(row)));
                    }
                }
                if let Some(call_sid) = &key.correlation_id {
                    let row = sqlx::query(&format!(
                        "{COLUMNS} JOIN calls c ON c.location_id = a.location_id AND c.provider = a.provider
                         WHERE c.provider = $1 AND c.call_sid = $2"
                    ))
                    .bind(provider)
                    .bind(call_sid)
                    .fetch_optional(&self.reader)
                    .await?;
                    if let Some(row) = row {
                        return Ok(Some(to_account(row)));
                    }
                }
                if let Some(account_id) = &key.account_id {
                    let mut rows = sqlx::query(&format!(
                        "{COLUMNS} WHERE a.provider = $1 AND a.account_id = $2 LIMIT 2"
                    ))
                    .bind(provider)
                    .bind(account_id)
                    .fetch_all(&self.reader)
                    .await?;
                    if rows.len() == 1 {
                        return Ok(rows.pop().map(to_account));
                    }
                }
                Ok(None)
            }

            async fn create_webhook(&self, w: &Webhook) -> StoreResult<()> {
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
            }

            async fn rotate_secret(&self, id: &str, secret: &str, previous_until: i64) -> StoreResult<()> {
                let done = sqlx::query(
                    "UPDATE webhooks SET previous_secret = secret, secret = $1, previous_secret_until = $2
                     WHERE id = $3 AND deleted_at IS NULL",
                )
                .bind(secret)
                .bind(previous_until)
                .bind(id)
                .execute(&self.writer)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("no webhook {id}")));
                }
                Ok(())
            }

            async fn delete_webhook(&self, id: &str, now: i64) -> StoreResult<bool> {
                let mut tx = self.writer.begin().await?;
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
            }

            async fn disable_webhook(
                &self,
                id: &str,
                reason: &str,
                now: i64,
                lease_until: i64,
            ) -> StoreResult<Vec<DeliveryJob>> {
                let mut tx = self.writer.begin().await?;
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
                let seq = insert_event(
                    &mut tx,
                    &event_id,
                    None,
                    disabled.location_id.as_deref(),
                    EventType::WebhookDisabled,
                    &payload,
                    now,
                )
                .await?;
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
                let mut outcome = IngestOutcome::default();
                for webhook in &subscribers {
                    queue_delivery(
                        &mut tx,
                        webhook,
                        &event_id,
                        seq,
                        None,
                        &payload,
                        now,
                        Some(lease_until),
                        &mut outcome,
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(outcome.jobs)
            }

            async fn enable_webhook(&self, id: &str) -> StoreResult<()> {
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
            }

            async fn set_breaker(&self, id: &str, open_until: Option<i64>) -> StoreResult<()> {
                sqlx::query("UPDATE webhooks SET breaker_open_until = $1 WHERE id = $2")
                    .bind(open_until)
                    .bind(id)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn ingest(
                &self,
                location_id: &str,
                facts: Vec<Fact>,
                ctx: &IngestContext,
            ) -> StoreResult<IngestOutcome> {
                self.batch
                    .ingest
                    .submit($crate::store::IngestItem {
                        location_id: location_id.to_owned(),
                        facts,
                        context: ctx.clone(),
                    })
                    .await
            }

            async fn emit_due_calls(&self, ctx: &IngestContext) -> StoreResult<Vec<DeliveryJob>> {
                let now = ctx.now;
                // Most polls find nothing: ask a reader before taking the writer.
                let any: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM calls WHERE emit_at IS NOT NULL AND emit_at <= $1 LIMIT 1",
                )
                .bind(now)
                .fetch_optional(&self.reader)
                .await?;
                if any.is_none() {
                    return Ok(vec![]);
                }
                let mut tx = self.writer.begin().await?;
                let due = sqlx::query(&format!(
                    "SELECT location_id, provider, call_sid, state FROM calls
                     WHERE emit_at IS NOT NULL AND emit_at <= $1 ORDER BY emit_at LIMIT 100{}",
                    $hooks::CALLS_LOCK
                ))
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                let mut outcome = IngestOutcome::default();
                for row in due {
                    let location_id: String = row.get("location_id");
                    let state: CallState =
                        serde_json::from_str(row.get::<&str, _>("state")).context("stored call state")?;
                    let provider = channels::provider_name(row.get::<&str, _>("provider"));
                    let webhooks = location_webhooks(&mut tx, &location_id).await?;
                    let before = outcome.message_ids.len();
                    file_message(
                        &mut tx,
                        &location_id,
                        &state.message(provider),
                        &webhooks,
                        ctx,
                        &mut outcome,
                    )
                    .await?;
                    sqlx::query(
                        "UPDATE calls SET emit_at = NULL, message_id = $1, updated_at = $2
                         WHERE provider = $3 AND call_sid = $4",
                    )
                    .bind(outcome.message_ids.get(before))
                    .bind(now)
                    .bind(provider)
                    .bind(row.get::<&str, _>("call_sid"))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(outcome.jobs)
            }

            async fn message_event(&self, message_id: &str) -> StoreResult<Option<Bytes>> {
                let payload: Option<Vec<u8>> = sqlx::query_scalar(
                    "SELECT payload FROM events WHERE message_id = $1 ORDER BY seq LIMIT 1",
                )
                .bind(message_id)
                .fetch_optional(&self.reader)
                .await?;
                Ok(payload.map(Bytes::from))
            }

            async fn message_deliveries(&self, message_id: &str) -> StoreResult<Vec<DeliveryReport>> {
                // One read transaction: the deliveries and their attempts from the same snapshot.
                let mut tx = self.reader.begin().await?;
                $hooks::snapshot(&mut *tx).await?;
                let rows = sqlx::query(
                    "SELECT d.id, d.webhook_id, w.url, d.status, d.next_attempt_at
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
                    reports.push(DeliveryReport {
                        id,
                        webhook_id: row.get("webhook_id"),
                        url: row.get("url"),
                        next_attempt_at: if status == delivery_status::PENDING {
                            row.get("next_attempt_at")
                        } else {
                            None
                        },
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
                let mut tx = self.writer.begin().await?;
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
            }

            async fn claim_conversation_head(
                &self,
                webhook_id: &str,
                conversation_id: &str,
                now: i64,
                lease_until: i64,
            ) -> StoreResult<Option<DeliveryJob>> {
                let mut tx = self.writer.begin().await?;
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
            }

            async fn extend_lease(&self, delivery_id: &str, current: i64, until: i64) -> StoreResult<bool> {
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
            }

            async fn release_leases_of(&self, leases: &[(String, i64)]) -> StoreResult<()> {
                let mut tx = self.writer.begin().await?;
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
            }

            async fn record_attempt(
                &self,
                job: &DeliveryJob,
                attempt: &AttemptRecord,
                next: NextStep,
            ) -> StoreResult<WebhookHealth> {
                self.batch
                    .attempts
                    .submit($crate::store::AttemptItem {
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
                let mut tx = self.writer.begin().await?;
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
            }

            async fn replay(
                &self,
                webhook_id: &str,
                since: i64,
                until: i64,
                only_failed: bool,
                now: i64,
            ) -> StoreResult<u64> {
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
                .execute(&self.writer)
                .await?;
                $hooks::notify_work(&mut *self.writer.acquire().await?).await?;
                Ok(done.rows_affected())
            }

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
                let mut tx = self.writer.begin().await?;
                let attempts = sqlx::query(
                    "DELETE FROM attempts WHERE id IN
                         (SELECT id FROM attempts WHERE started_at < $1 ORDER BY id LIMIT $2)",
                )
                .bind(before)
                .bind(i64::from(batch))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                // Events whose deliveries are all finished, with those deliveries and their attempts.
                let old_events: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM events e WHERE created_at < $1
                       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status = 'pending')
                     ORDER BY seq LIMIT $2",
                )
                .bind(before)
                .bind(i64::from(batch))
                .fetch_all(&mut *tx)
                .await?;
                let mut rows = attempts;
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
            }

            async fn queue_depth(&self, now: i64) -> StoreResult<(u64, u64, u64)> {
                let row = sqlx::query(
                    "SELECT
                         COALESCE(SUM(CASE WHEN next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until <= $1) THEN 1 ELSE 0 END), 0) AS due,
                         COALESCE(SUM(CASE WHEN next_attempt_at > $1 AND (lease_until IS NULL OR lease_until <= $1) THEN 1 ELSE 0 END), 0) AS scheduled,
                         COALESCE(SUM(CASE WHEN lease_until > $1 THEN 1 ELSE 0 END), 0) AS leased
                     FROM deliveries WHERE status = 'pending'",
                )
                .bind(now)
                .fetch_one(&self.reader)
                .await?;
                Ok((
                    row.get::<i64, _>("due") as u64,
                    row.get::<i64, _>("scheduled") as u64,
                    row.get::<i64, _>("leased") as u64,
                ))
            }
        }
    };
}

pub(crate) use sql_store;
