//! The store's SQL, written once for both backends. Every query uses numbered `$N`
//! placeholders, which PostgreSQL and SQLite (through sqlx) both bind by number; the few
//! differences (row locks, the event-stream lock, wake-ups) are the backend's `hooks`.
//!
//! `sql_store!(Store, Db, Row, hooks)` implements [`super::Store`] for `Store`, a struct with
//! `writer` and `reader` pools of `Db`.

pub(super) mod attempts;
pub(super) mod calls;
pub(super) mod contacts;
pub(super) mod deliveries;
pub(super) mod feed;
pub(super) mod locations;
pub(super) mod outbox;
pub(super) mod setup;
pub(super) mod webhooks;

macro_rules! sql_store {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
        use std::collections::{HashMap, HashSet};
        use std::fmt::Write as _;
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
        use $crate::domain::{Fact, NewMessage};
        use $crate::event::{self, Filed};
        use $crate::store::statements::{chunks, placeholders, rows_per_statement, tuples};

        /// This backend's statement texts over many rows, each built once.
        static TEXTS: std::sync::LazyLock<$crate::store::statements::Texts> =
            std::sync::LazyLock::new(Default::default);

        /// The text of an insert of `rows` rows of `columns` (comma-separated) into `table`,
        /// followed by `rest` (a conflict clause, `RETURNING`); built once per row count.
        fn insert_text(
            table: &'static str,
            columns: &'static str,
            rows: usize,
            rest: &'static str,
        ) -> std::sync::Arc<str> {
            TEXTS.get("insert", table, rows, || {
                let per_row = columns.split(',').count();
                $hooks::positional(format!(
                    "INSERT INTO {table} ({columns}) VALUES {} {rest}",
                    tuples(rows, per_row, 1)
                ))
            })
        }

        fn parse_events(json: &str) -> Vec<EventType> {
            serde_json::from_str::<Vec<String>>(json)
                .unwrap_or_default()
                .iter()
                .filter_map(|s| EventType::parse(s))
                .collect()
        }

        /// One message of a group commit, with the request it came in.
        struct ToFile<'a> {
            message: &'a NewMessage,
            ctx: &'a IngestContext,
            /// The request's outcome (index into the batch's outcomes).
            item: usize,
        }

        /// File the messages of one location with a few statements for all of them: provider
        /// ids already stored (or repeated in the batch) are not filed again; contacts and
        /// conversations are found or created; messages, their events and their deliveries
        /// are inserted many rows to a statement.
        async fn file_messages(
            tx: &mut Transaction<'_, $db>,
            location_id: &str,
            batch: &[ToFile<'_>],
            webhooks: &[Webhook],
            outcomes: &mut [IngestOutcome],
        ) -> StoreResult<()> {
            let mut ids = known_messages(tx, batch).await?;
            let mut fresh: Vec<(&ToFile<'_>, String)> = Vec::with_capacity(batch.len());
            for f in batch {
                let key = (f.message.provider.to_owned(), f.message.provider_message_id.clone());
                let id = ids
                    .entry(key)
                    .or_insert_with(|| {
                        let id = new_id();
                        fresh.push((f, id.clone()));
                        id
                    })
                    .clone();
                outcomes[f.item].message_ids.push(id);
            }
            let Some(now) = fresh.iter().map(|(f, _)| f.ctx.now).max() else {
                return Ok(());
            };

            let mut identities: Vec<(&str, &str, Option<&str>)> = Vec::new();
            let mut seen = HashSet::new();
            for (f, _) in &fresh {
                let c = &f.message.contact;
                if seen.insert((c.kind, c.value.as_str())) {
                    identities.push((c.kind, c.value.as_str(), f.message.contact_name.as_deref()));
                }
            }
            let contacts = contacts_of(tx, location_id, &identities, now).await?;
            let not_filed = |what: &str, m: &NewMessage| {
                StoreError::Internal(anyhow::anyhow!(
                    "no {what} was found or created for {} message {}",
                    m.provider,
                    m.provider_message_id
                ))
            };
            let mut contact_ids = Vec::with_capacity(fresh.len());
            for (f, _) in &fresh {
                let m = f.message;
                let key = (m.contact.kind.to_owned(), m.contact.value.clone());
                contact_ids.push(
                    contacts.get(&key).map(String::as_str).ok_or_else(|| not_filed("contact", m))?,
                );
            }
            let mut distinct = contact_ids.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let conversations = conversations_of(tx, location_id, &distinct, now).await?;
            // Each new message with the ids it is filed under.
            let mut filed = Vec::with_capacity(fresh.len());
            for ((f, message_id), contact_id) in fresh.iter().zip(contact_ids) {
                let conversation_id = conversations
                    .get(contact_id)
                    .map(String::as_str)
                    .ok_or_else(|| not_filed("conversation", f.message))?;
                filed.push((*f, message_id.as_str(), contact_id, conversation_id));
            }

            for chunk in chunks(&filed, rows_per_statement(10, 0)) {
                let sql = insert_text(
                    "messages",
                    "id, location_id, conversation_id, contact_id, provider, provider_message_id, \
                     direction, message_type, status, created_at",
                    chunk.len(),
                    "",
                );
                let mut query = sqlx::query(&sql);
                for (f, id, contact_id, conversation_id) in chunk {
                    let m = f.message;
                    query = query
                        .bind(*id)
                        .bind(location_id)
                        .bind(*conversation_id)
                        .bind(*contact_id)
                        .bind(m.provider)
                        .bind(m.provider_message_id.as_str())
                        .bind(m.direction.as_str())
                        .bind(m.message_type.as_str())
                        .bind(m.status.as_str())
                        .bind(f.ctx.now);
                }
                query.execute(&mut **tx).await?;
            }

            let events: Vec<NewEvent<'_>> = filed
                .iter()
                .map(|(f, message_id, contact_id, conversation_id)| {
                    let m = f.message;
                    let id = new_id();
                    let payload = Bytes::from(event::render(&Filed {
                        message: m,
                        location_id,
                        contact_id,
                        conversation_id,
                        message_id,
                        event_id: &id,
                        emitted_at: f.ctx.now,
                        app_id: f.ctx.app_id.as_deref(),
                    }));
                    NewEvent {
                        id,
                        message_id: Some(message_id),
                        location_id: Some(location_id),
                        event_type: m.direction.event_type(),
                        payload,
                        now: f.ctx.now,
                    }
                })
                .collect();
            let seqs = insert_events(tx, &events).await?;

            let mut deliveries = Vec::new();
            for (((f, _, _, conversation_id), e), seq) in filed.iter().zip(&events).zip(seqs) {
                let m = f.message;
                let targets = webhooks.iter().filter(|w| {
                    w.matches(e.event_type, Some(location_id), Some((&m.message_type, m.direction)))
                });
                for webhook in targets {
                    deliveries.push(NewDelivery {
                        webhook,
                        event_id: &e.id,
                        event_seq: seq,
                        conversation_id: Some(conversation_id),
                        payload: &e.payload,
                        now: f.ctx.now,
                        lease_until: f.ctx.lease_until,
                        item: f.item,
                    });
                }
            }
            queue_deliveries(tx, &deliveries, outcomes).await
        }

        /// One message alone (a call's, when its outcome is final).
        async fn file_message(
            tx: &mut Transaction<'_, $db>,
            location_id: &str,
            message: &NewMessage,
            webhooks: &[Webhook],
            ctx: &IngestContext,
            outcome: &mut IngestOutcome,
        ) -> StoreResult<()> {
            let one = [ToFile { message, ctx, item: 0 }];
            file_messages(tx, location_id, &one, webhooks, std::slice::from_mut(outcome)).await
        }

        /// For each of `keys`, the id of the row of `table` whose `key` column holds it and whose
        /// `fixed` columns hold the values given, where there is one: (key, id) pairs.
        /// Written `SELECT v.column1, (SELECT … = v.column1) FROM (VALUES …) AS v`: one
        /// unique-index probe per key whatever the planner believes of the table
        /// (PostgreSQL's generic plan for `… AND key IN (…)` scanned the whole location's rows
        /// while its statistics still said the table was empty).
        async fn probe_ids(
            tx: &mut Transaction<'_, $db>,
            table: &'static str,
            fixed: &[(&str, &str)],
            key: &'static str,
            keys: &[&str],
        ) -> StoreResult<Vec<(String, String)>> {
            let mut ids = Vec::with_capacity(keys.len());
            for chunk in chunks(keys, rows_per_statement(1, fixed.len())) {
                // Each (table, key) is probed with the same `fixed` columns.
                let sql = TEXTS.get(key, table, chunk.len(), || {
                    let mut conditions = String::new();
                    for (i, (column, _)) in fixed.iter().enumerate() {
                        let _ = write!(conditions, "t.{column} = ${} AND ", i + 1);
                    }
                    $hooks::positional(format!(
                        "SELECT v.column1, (SELECT t.id FROM {table} t WHERE {conditions}t.{key} = v.column1)
                         FROM (VALUES {}) AS v",
                        tuples(chunk.len(), 1, fixed.len() + 1)
                    ))
                });
                let mut query = sqlx::query(&sql);
                for (_, value) in fixed {
                    query = query.bind(*value);
                }
                for k in chunk {
                    query = query.bind(*k);
                }
                for row in query.fetch_all(&mut **tx).await? {
                    if let Some(id) = row.get::<Option<String>, _>(1) {
                        ids.push((row.get(0), id));
                    }
                }
            }
            Ok(ids)
        }

        /// The ids of the batch's messages already stored, by (provider, provider id), in any
        /// location: a provider's message id names one message wherever its number has moved
        /// since (a captured request replayed after the move must not be stored again).
        async fn known_messages(
            tx: &mut Transaction<'_, $db>,
            batch: &[ToFile<'_>],
        ) -> StoreResult<HashMap<(String, String), String>> {
            let mut known = HashMap::new();
            let mut providers: Vec<&str> = batch.iter().map(|f| f.message.provider).collect();
            providers.sort_unstable();
            providers.dedup();
            for provider in providers {
                let of_provider: Vec<&str> = batch
                    .iter()
                    .filter(|f| f.message.provider == provider)
                    .map(|f| f.message.provider_message_id.as_str())
                    .collect();
                let fixed = [("provider", provider)];
                let found =
                    probe_ids(tx, "messages", &fixed, "provider_message_id", &of_provider).await?;
                for (provider_message_id, id) in found {
                    known.insert((provider.to_owned(), provider_message_id), id);
                }
            }
            Ok(known)
        }

        /// `writers` writers for the group-committed writes of this store.
        /// `committed`, if given, is notified after every group commit.
        fn group_commit(
            pool: &sqlx::Pool<$db>,
            writers: usize,
            committed: Option<std::sync::Arc<tokio::sync::Notify>>,
            faults: std::sync::Arc<$crate::store::StorageFaults>,
        ) -> $crate::store::GroupCommit {
            let pool = pool.clone();
            $crate::store::GroupCommit {
                writes: $crate::store::Batcher::start(writers, move |items| {
                    let (pool, committed, faults) = (pool.clone(), committed.clone(), faults.clone());
                    async move {
                        let written = write_batch(&pool, items, &faults).await;
                        if let Some(committed) = committed {
                            committed.notify_one();
                        }
                        written
                    }
                }),
            }
        }

        /// One group commit: the attempts and the provider requests that arrived while the
        /// previous one was being written, in one transaction. When it fails, attempts and
        /// requests are written apart (and each alone if need be), so one bad write never
        /// fails the others; but a storage fault (a full disk, a lock, a lost connection)
        /// fails every write of the batch at once: each would meet it again.
        async fn write_batch(
            pool: &sqlx::Pool<$db>,
            items: Vec<$crate::store::Write>,
            faults: &$crate::store::StorageFaults,
        ) -> Vec<StoreResult<$crate::store::Written>> {
            use $crate::store::{Write, Written};
            let (mut ingests, mut attempts, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
            for item in items {
                kinds.push(matches!(item, Write::Ingest(_)));
                match item {
                    Write::Ingest(i) => ingests.push(i),
                    Write::Attempt(a) => attempts.push(a),
                }
            }
            let together = || async {
                let mut tx = $hooks::begin_write(pool).await?;
                let health = attempts_in(&mut tx, &attempts).await?;
                let outcomes = ingest_in(&mut tx, &ingests).await?;
                tx.commit().await?;
                Ok::<_, StoreError>((outcomes, health))
            };
            let mut tries = 0;
            let written = loop {
                match together().await {
                    Err(StoreError::Internal(e)) if tries < 3 && is_conflict(&e) => tries += 1,
                    other => break other,
                }
            };
            faults.observe(&written);
            let (outcomes, health) = match written {
                Ok((outcomes, health)) => (
                    outcomes.into_iter().map(Ok).collect(),
                    health.into_iter().map(Ok).collect(),
                ),
                Err(StoreError::Unavailable(fault)) => {
                    let each = || StoreError::Unavailable(fault.for_another());
                    (
                        (0..ingests.len()).map(|_| Err(each())).collect(),
                        (0..attempts.len()).map(|_| Err(each())).collect(),
                    )
                }
                Err(_) => (
                    ingest_batch(pool, ingests).await,
                    record_attempts(pool, attempts).await,
                ),
            };
            let (mut outcomes, mut health): (Vec<_>, Vec<_>) = (outcomes, health);
            outcomes.reverse();
            health.reverse();
            kinds
                .into_iter()
                .map(|ingest| {
                    let missing = || StoreError::Internal(anyhow::anyhow!("a write went unanswered"));
                    if ingest {
                        outcomes.pop().ok_or_else(missing)?.map(Written::Ingest)
                    } else {
                        health.pop().ok_or_else(missing)?.map(Written::Attempt)
                    }
                })
                .collect()
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

        /// Two nodes filing the same provider message at once: one commits; the other hits a
        /// unique constraint and, tried again, finds what the first stored. Two batches that
        /// touch the same conversations in another order may deadlock: one is tried again.
        async fn ingest_with_retries(
            pool: &sqlx::Pool<$db>,
            items: &[$crate::store::IngestItem],
        ) -> StoreResult<Vec<IngestOutcome>> {
            let mut tries = 0;
            loop {
                match ingest_once(pool, items).await {
                    Err(StoreError::Internal(e)) if tries < 3 && is_conflict(&e) => tries += 1,
                    other => return other,
                }
            }
        }

        async fn ingest_once(
            pool: &sqlx::Pool<$db>,
            items: &[$crate::store::IngestItem],
        ) -> StoreResult<Vec<IngestOutcome>> {
            let mut tx = $hooks::begin_write(pool).await?;
            let outcomes = ingest_in(&mut tx, items).await?;
            tx.commit().await?;
            Ok(outcomes)
        }

        /// File provider requests in the caller's transaction.
        async fn ingest_in(
            tx: &mut Transaction<'_, $db>,
            items: &[$crate::store::IngestItem],
        ) -> StoreResult<Vec<IngestOutcome>> {
            let mut outcomes = vec![IngestOutcome::default(); items.len()];
            // A batch is mostly one location's messages: its webhooks are read once, and its
            // messages are filed together.
            let mut locations: Vec<&str> = Vec::new();
            let mut messages_of: HashMap<&str, Vec<ToFile<'_>>> = HashMap::new();
            for (i, item) in items.iter().enumerate() {
                let location_id = item.location_id.as_str();
                if !messages_of.contains_key(location_id) {
                    locations.push(location_id);
                }
                let messages = messages_of.entry(location_id).or_default();
                for fact in &item.facts {
                    if let Fact::Message(message) = fact {
                        messages.push(ToFile { message, ctx: &item.context, item: i });
                    }
                }
            }
            let mut webhooks_of: HashMap<&str, Vec<Webhook>> = HashMap::new();
            for location_id in locations {
                let webhooks = location_webhooks(tx, location_id).await?;
                file_messages(tx, location_id, &messages_of[location_id], &webhooks, &mut outcomes)
                    .await?;
                webhooks_of.insert(location_id, webhooks);
            }
            // Call callbacks merge one at a time, each under its call's row lock.
            for (item, outcome) in items.iter().zip(&mut outcomes) {
                let location_id = item.location_id.as_str();
                for fact in &item.facts {
                    if let Fact::Call(update) = fact {
                        merge_call(
                            tx,
                            location_id,
                            channels::twilio::PROVIDER,
                            update,
                            &webhooks_of[location_id],
                            &item.context,
                            outcome,
                        )
                        .await?;
                    }
                }
            }
            Ok(outcomes)
        }

        /// A unique violation, a deadlock or a serialization failure: worth trying again.
        fn is_conflict(e: &anyhow::Error) -> bool {
            e.downcast_ref::<sqlx::Error>()
                .and_then(|e| e.as_database_error())
                .is_some_and(|e| {
                    e.is_unique_violation() || matches!(e.code().as_deref(), Some("40P01" | "40001"))
                })
        }

        #[async_trait]
        impl Store for $store {

            async fn ingest(
                &self,
                location_id: &str,
                facts: Vec<Fact>,
                ctx: &IngestContext,
            ) -> StoreResult<IngestOutcome> {
                self.batch
                    .ingest($crate::store::IngestItem {
                        location_id: location_id.to_owned(),
                        facts,
                        context: ctx.clone(),
                    })
                    .await
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

        }
        $crate::store::sql::feed::sql_feed!($store, $db, $row, $hooks);
        $crate::store::sql::setup::sql_setup!($store, $db, $row, $hooks);
        $crate::store::sql::locations::sql_locations!($store, $db, $row, $hooks);
        $crate::store::sql::webhooks::sql_webhooks!($store, $db, $row, $hooks);
        $crate::store::sql::deliveries::sql_deliveries!($store, $db, $row, $hooks);
        $crate::store::sql::attempts::sql_attempts!($store, $db, $row, $hooks);
        $crate::store::sql::calls::sql_calls!($store, $db, $row, $hooks);
        $crate::store::sql::outbox::sql_outbox!($store, $db, $row, $hooks);
        $crate::store::sql::contacts::sql_contacts!($store, $db, $row, $hooks);
    };
}

pub(crate) use sql_store;
