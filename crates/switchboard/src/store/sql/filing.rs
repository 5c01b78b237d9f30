//! Filing messages: a location's messages of one group commit filed with a few statements for
//! all of them; provider ids already stored anywhere (or repeated in the batch) filed once.

macro_rules! sql_filing {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
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

            let senders: Vec<Sender<'_>> = fresh
                .iter()
                .map(|(f, _)| Sender {
                    identities: f
                        .message
                        .verified_identities()
                        .map(|i| (i.kind, i.value.as_str()))
                        .collect(),
                    name: f.message.contact_name.as_deref(),
                })
                .collect();
            let contacts = contacts_of(tx, location_id, &senders, now).await?;
            let not_filed = |what: &str, m: &NewMessage| {
                StoreError::Internal(anyhow::anyhow!(
                    "no {what} was found or created for {} message {}",
                    m.provider,
                    m.provider_message_id
                ))
            };
            let contact_ids: Vec<&str> = contacts.iter().map(String::as_str).collect();
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

            // Mail: its thread, from the mails stored before it (and before it in this batch).
            let mut threads = Vec::with_capacity(filed.len());
            for (f, message_id, _, conversation_id) in &filed {
                let Some(email) = &f.message.email else {
                    threads.push(None);
                    continue;
                };
                let thread = file_in_thread(
                    tx,
                    location_id,
                    message_id,
                    conversation_id,
                    email,
                    f.ctx.now,
                    f.ctx.mail_flood_cap,
                )
                .await?;
                if thread.suppressed {
                    sqlx::query("UPDATE messages SET status = 'suppressed' WHERE id = $1")
                    .bind(*message_id)
                    .execute(&mut **tx)
                    .await?;
                    outcomes[f.item]
                        .suppressed
                        .push(((*message_id).to_owned(), (*conversation_id).to_owned()));
                }
                threads.push(Some(thread));
            }

            let events: Vec<NewEvent<'_>> = filed
                .iter()
                .zip(&threads)
                .map(|((f, message_id, contact_id, conversation_id), thread)| {
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
                        thread: thread.as_ref(),
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
            let late = released_since(tx, location_id, webhooks).await?;

            let mut deliveries: Vec<NewDelivery<'_>> = Vec::new();
            // A webhook the caller's dispatcher holds in the stream gets no row: only its
            // lowest-numbered event here counts (the place its hold starts from, when the store
            // does not hold it yet), so one row each, by index. With a thousand webhooks just
            // held, a batch of 63 requests built 63,000 such rows to find that (39 ms).
            let targets: Vec<&Webhook> = webhooks.iter().chain(&late).collect();
            let mut held_here: Vec<Option<usize>> = vec![None; targets.len()];
            // Whether each webhook is held, asked once for the batch when its requests share one
            // dispatcher (they do, but for a test's mixed contexts): per message and webhook, a
            // thousand webhooks and 63 requests were 63,000 lookups under a lock (10 ms).
            let shared_ctx = filed
                .first()
                .map(|(f, ..)| f.ctx)
                .filter(|c| filed.iter().all(|(f, ..)| f.ctx.same_handoffs(c)));
            let held_once: Option<Vec<bool>> =
                shared_ctx.map(|c| targets.iter().map(|w| c.holds_in_stream(&w.id)).collect());
            for ((((f, _, _, conversation_id), e), seq), thread) in
                filed.iter().zip(&events).zip(seqs).zip(&threads)
            {
                if thread.as_ref().is_some_and(|t| t.suppressed) {
                    continue;
                }
                let m = f.message;
                let matching = targets.iter().enumerate().filter(|(_, w)| {
                    w.matches(e.event_type, Some(location_id), Some((&m.message_type, m.direction)))
                });
                for (w, &webhook) in matching {
                    let hold = match &held_once {
                        Some(held) => held[w],
                        None => f.ctx.holds_in_stream(&webhook.id),
                    };
                    // A held webhook's row already here: replaced if this event is lower.
                    let replace = match hold.then_some(held_here[w]) {
                        Some(Some(i)) if seq >= deliveries[i].event_seq => continue,
                        Some(Some(i)) => Some(i),
                        Some(None) => {
                            held_here[w] = Some(deliveries.len());
                            None
                        }
                        None => None,
                    };
                    let row = NewDelivery {
                        webhook,
                        event_id: &e.id,
                        event_seq: seq,
                        conversation_id: Some(conversation_id),
                        payload: &e.payload,
                        now: f.ctx.now,
                        lease_until: f.ctx.lease_for(&webhook.id),
                        left_for_claim: f.ctx.lease_until.is_some()
                            && f.ctx.lease_for(&webhook.id).is_none(),
                        item: f.item,
                        hold,
                    };
                    match replace {
                        Some(i) => deliveries[i] = row,
                        None => deliveries.push(row),
                    }
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

        /// For each of `keys`, the `id` column of the row of `table` whose `key` column holds it
        /// and whose `fixed` columns hold the values given, where there is one: (key, id)
        /// pairs. `id` is determined by the table (the statement text is cached by table, key
        /// and count).
        /// Written `SELECT v.column1, (SELECT … = v.column1) FROM (VALUES …) AS v`: one
        /// unique-index probe per key whatever the planner believes of the table
        /// (PostgreSQL's generic plan for `… AND key IN (…)` scanned the whole location's rows
        /// while its statistics still said the table was empty).
        async fn probe_ids(
            tx: &mut Transaction<'_, $db>,
            table: &'static str,
            id: &'static str,
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
                        "SELECT v.column1, (SELECT t.{id} FROM {table} t WHERE {conditions}t.{key} = v.column1)
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
                    probe_ids(tx, "messages", "id", &fixed, "provider_message_id", &of_provider).await?;
                for (provider_message_id, id) in found {
                    known.insert((provider.to_owned(), provider_message_id), id);
                }
            }
            Ok(known)
        }
    };
}

pub(crate) use sql_filing;
