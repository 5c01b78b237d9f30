//! Ingest by group commit: the provider requests and attempts that arrived while the previous
//! commit was being written go in one transaction; when it fails as a whole each is written
//! alone, and a write that meets a conflict or a deadlock is tried again.

macro_rules! sql_group_commit {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
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
                    let (pool, committed, faults) =
                        (pool.clone(), committed.clone(), faults.clone());
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
                // With provider requests, the event stream's lock first: recording attempts
                // writes webhooks' rows, and holds (ingest's, the dispatcher's, a give-back's)
                // write them after taking that lock. Taken after the rows, each waited for the
                // other (on PostgreSQL a deadlock, broken after a second, every ingest of the
                // cluster waiting meanwhile).
                if !ingests.is_empty() && !attempts.is_empty() {
                    $hooks::lock_event_stream(&mut *tx).await?;
                }
                let health = attempts_in(&mut tx, &attempts).await?;
                let held = hold_unwritten(&mut tx, &ingests).await?;
                let outcomes = ingest_in(&mut tx, &ingests).await?;
                tx.commit().await?;
                holds_written(&ingests, &held);
                Ok::<_, StoreError>((outcomes, health))
            };
            let mut tries = 0;
            let mut written = loop {
                match together().await {
                    Err(StoreError::Internal(e)) if tries < 3 && is_conflict(&e) => tries += 1,
                    other => break other,
                }
            };
            if let Ok((outcomes, _)) = &mut written {
                hand_off(&ingests, outcomes);
            }
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
                    let missing =
                        || StoreError::Internal(anyhow::anyhow!("a write went unanswered"));
                    if ingest {
                        outcomes.pop().ok_or_else(missing)?.map(Written::Ingest)
                    } else {
                        health.pop().ok_or_else(missing)?.map(Written::Attempt)
                    }
                })
                .collect()
        }

        /// A group commit's deliveries, committed: to the callers' dispatcher at once, the
        /// whole batch's together, rather than by each request's handler once it is woken.
        /// On SQLite a delivery for a webhook on probation holds the webhook in the stream
        /// first (`hold_unwritten`); on PostgreSQL only the dispatcher holds in the stream.
        fn hand_off(items: &[$crate::store::IngestItem], outcomes: &mut [IngestOutcome]) {
            if $hooks::EMBEDDED {
                for (item, outcome) in items.iter().zip(outcomes.iter()) {
                    if let Some(handoffs) = &item.context.handoffs {
                        for job in &outcome.jobs {
                            handoffs.delivery_committed(&job.webhook_id);
                        }
                    }
                }
            }
            for handoffs in distinct_handoffs(items) {
                if !handoffs.hands_off() {
                    continue;
                }
                let mut jobs = Vec::new();
                for (item, outcome) in items.iter().zip(outcomes.iter_mut()) {
                    let ask = item.context.handoffs.as_ref();
                    if ask.is_some_and(|h| std::sync::Arc::ptr_eq(h, handoffs)) {
                        outcome.handed_off = outcome.jobs.len();
                        jobs.append(&mut outcome.jobs);
                    }
                }
                handoffs.hand_off(jobs);
            }
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
                if let Ok(mut outcomes) = ingest_with_retries(pool, &items).await {
                    hand_off(&items, &mut outcomes);
                    return outcomes.into_iter().map(Ok).collect();
                }
            }
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                let one = std::slice::from_ref(&item);
                results.push(ingest_with_retries(pool, one).await.map(|mut o| {
                    hand_off(one, &mut o);
                    o.remove(0)
                }));
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
            let held = hold_unwritten(&mut tx, items).await?;
            let outcomes = ingest_in(&mut tx, items).await?;
            tx.commit().await?;
            holds_written(items, &held);
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
                for (location_id, facts) in &item.parts {
                    let location_id = location_id.as_str();
                    if !messages_of.contains_key(location_id) {
                        locations.push(location_id);
                    }
                    let messages = messages_of.entry(location_id).or_default();
                    for fact in facts {
                        if let Fact::Message(message) = fact {
                            messages.push(ToFile {
                                message,
                                ctx: &item.context,
                                item: i,
                            });
                        }
                    }
                }
            }
            let mut webhooks_of: HashMap<&str, Vec<Webhook>> = HashMap::new();
            for location_id in locations {
                let webhooks = location_webhooks(tx, location_id).await?;
                file_messages(
                    tx,
                    location_id,
                    &messages_of[location_id],
                    &webhooks,
                    &mut outcomes,
                )
                .await?;
                webhooks_of.insert(location_id, webhooks);
            }
            // Nonces, stored with what their requests carried (two requests with one nonce at
            // once: both were checked before; the messages they carry are the same, filed once).
            for item in items {
                if let Some((provider, nonce)) = &item.context.nonce {
                    sqlx::query(
                        "INSERT INTO provider_nonces (provider, nonce, created_at)
                         VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    )
                    .bind(*provider)
                    .bind(nonce)
                    .bind(item.context.now)
                    .execute(&mut **tx)
                    .await?;
                }
            }
            // Call callbacks merge one at a time, each under its call's row lock.
            for (item, outcome) in items.iter().zip(&mut outcomes) {
                for (location_id, facts) in &item.parts {
                    let location_id = location_id.as_str();
                    for fact in facts {
                        if let Fact::Call(update) = fact {
                            merge_call(
                                tx,
                                location_id,
                                update.provider,
                                update,
                                &webhooks_of[location_id],
                                &item.context,
                                outcome,
                            )
                            .await?;
                        }
                    }
                }
            }
            Ok(outcomes)
        }

        /// SQLite: the webhooks the caller's dispatcher holds in the stream and has not
        /// written the hold of yet are held here first, after the stream's head (as the
        /// dispatcher's hold would: this transaction is the one writer, so every event after
        /// the head is this transaction's or later). Then the webhooks read for filing leave
        /// them out: with a thousand just put on probation, reading them all (the rows
        /// handed over one by one) took 8–14 ms of a group commit, and holding them event by
        /// event as many again.
        /// Returns the ids it held, to be marked written once the transaction has committed
        /// (`holds_written`): should it fail, they are still to be written.
        async fn hold_unwritten(
            tx: &mut Transaction<'_, $db>,
            items: &[$crate::store::IngestItem],
        ) -> StoreResult<Vec<String>> {
            if !$hooks::EMBEDDED {
                return Ok(Vec::new());
            }
            let mut ids: Vec<String> = Vec::new();
            for handoffs in distinct_handoffs(items) {
                ids.extend(handoffs.unwritten_holds());
            }
            if ids.is_empty() {
                return Ok(ids);
            }
            ids.sort_unstable();
            ids.dedup();
            hold_backlogs_at_head(tx, &ids).await?;
            Ok(ids)
        }

        /// The holds `hold_unwritten` wrote, now committed.
        fn holds_written(items: &[$crate::store::IngestItem], ids: &[String]) {
            for handoffs in distinct_handoffs(items) {
                handoffs.holds_written(ids);
            }
        }

        /// The dispatchers the requests of a batch ask (one, but for a test's mixed contexts).
        fn distinct_handoffs(
            items: &[$crate::store::IngestItem],
        ) -> Vec<&std::sync::Arc<$crate::store::Handoffs>> {
            let mut asked: Vec<&std::sync::Arc<$crate::store::Handoffs>> = Vec::new();
            for handoffs in items.iter().filter_map(|i| i.context.handoffs.as_ref()) {
                if !asked.iter().any(|a| std::sync::Arc::ptr_eq(a, handoffs)) {
                    asked.push(handoffs);
                }
            }
            asked
        }

        /// A unique violation, a deadlock or a serialization failure: worth trying again.
        fn is_conflict(e: &anyhow::Error) -> bool {
            e.downcast_ref::<sqlx::Error>()
                .and_then(|e| e.as_database_error())
                .is_some_and(|e| {
                    e.is_unique_violation()
                        || matches!(e.code().as_deref(), Some("40P01" | "40001"))
                })
        }

        #[async_trait]
        impl $crate::store::Messages for $store {
            async fn ingest_parts(
                &self,
                parts: Vec<(String, Vec<Fact>)>,
                ctx: &IngestContext,
            ) -> StoreResult<IngestOutcome> {
                self.batch
                    .ingest($crate::store::IngestItem {
                        parts,
                        context: ctx.clone(),
                    })
                    .await
            }

            async fn nonce_seen(&self, provider: &str, nonce: &str) -> StoreResult<bool> {
                let seen: Option<i64> = sqlx::query_scalar(
                    "SELECT created_at FROM provider_nonces WHERE provider = $1 AND nonce = $2",
                )
                .bind(provider)
                .bind(nonce)
                .fetch_optional(&self.reader)
                .await?;
                Ok(seen.is_some())
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
    };
}

pub(crate) use sql_group_commit;
