//! First deliveries from the stream: a webhook never tried is held in the event stream from
//! the moment its dispatcher reads it, so the message that first goes to a thousand new
//! webhooks costs its ingest nothing for them (reading them and writing a thousand rows was
//! most of the first message's commit, and every message of the moment waited for it). Its
//! dispatcher writes their first deliveries here, many webhooks a transaction, leased to it.
//! Once a webhook has one out it is on probation with an attempt out, and its backlog stays
//! held as any other's (`backlog.rs`).

macro_rules! sql_first_deliveries {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
        /// Ids of these webhooks' deliveries or events, by a statement over many ids.
        async fn ids_in(
            tx: &mut Transaction<'_, $db>,
            what: &'static str,
            select_where: &'static str,
            ids: &[&str],
        ) -> StoreResult<Vec<$row>> {
            let mut found = Vec::new();
            for chunk in chunks(ids, rows_per_statement(1, 0)) {
                let sql = TEXTS.get(what, "first deliveries", chunk.len(), || {
                    $hooks::positional(format!(
                        "{select_where} IN ({})",
                        placeholders(chunk.len(), 1)
                    ))
                });
                let mut query = sqlx::query(&sql);
                for id in chunk {
                    query = query.bind(*id);
                }
                found.extend(query.fetch_all(&mut **tx).await?);
            }
            Ok(found)
        }

        /// Whether no event came after the places of these webhooks (all held): read without
        /// the writer, so that a thousand webhooks never tried, with no message for them, cost
        /// a read a poll, not ten write transactions.
        async fn nothing_after(
            reader: &sqlx::Pool<$db>,
            webhook_ids: &[String],
        ) -> StoreResult<bool> {
            let sql = TEXTS.get("first places", "webhooks", webhook_ids.len(), || {
                $hooks::positional(format!(
                    "SELECT MIN(backlog_after_seq), COUNT(backlog_after_seq) FROM webhooks
                     WHERE deleted_at IS NULL AND id IN ({})",
                    placeholders(webhook_ids.len(), 1)
                ))
            });
            let mut query = sqlx::query(&sql);
            for id in webhook_ids {
                query = query.bind(id.as_str());
            }
            let row = query.fetch_one(reader).await?;
            let (place, held): (Option<i64>, i64) = (row.get(0), row.get(1));
            let Some(place) = place.filter(|_| held as usize == webhook_ids.len()) else {
                // Some given back or gone: the transaction says which.
                return Ok(false);
            };
            let later: Option<i64> = sqlx::query_scalar("SELECT seq FROM events WHERE seq > $1 LIMIT 1")
                .bind(place)
                .fetch_optional(reader)
                .await?;
            Ok(later.is_none())
        }

        /// `Backlogs::first_deliveries`, in one transaction.
        async fn first_deliveries_tx(
            writer: &sqlx::Pool<$db>,
            reader: &sqlx::Pool<$db>,
            webhook_ids: &[String],
            now: i64,
            lease_until: i64,
        ) -> StoreResult<$crate::store::FirstDeliveries> {
            let mut done = $crate::store::FirstDeliveries::default();
            if nothing_after(reader, webhook_ids).await? {
                return Ok(done);
            }
            done.read = true;
            let mut tx = $hooks::begin_write(writer).await?;
            // The event stream's lock before any webhook's row, as everywhere; the rows in
            // the order of their ids, as recording attempts locks them.
            $hooks::lock_event_stream(&mut *tx).await?;
            let ids: Vec<&str> = webhook_ids.iter().map(String::as_str).collect();
            let rows = {
                let sql = TEXTS.get("first deliveries' webhooks", "webhooks", ids.len(), || {
                    $hooks::positional(format!(
                        "SELECT {WEBHOOK_COLUMNS} FROM webhooks
                         WHERE deleted_at IS NULL AND id IN ({}) ORDER BY id{}",
                        placeholders(ids.len(), 1),
                        $hooks::ROW_LOCK
                    ))
                });
                let mut query = sqlx::query(&sql);
                for id in &ids {
                    query = query.bind(*id);
                }
                query.fetch_all(&mut *tx).await?
            };
            let webhooks: Vec<Webhook> = rows.iter().map(webhook_from_row).collect();
            // Given back (or never held), gone, disabled, or with an open breaker: the
            // dispatcher's other paths have them.
            let mut waiting: Vec<&Webhook> = Vec::with_capacity(webhooks.len());
            for w in &webhooks {
                let open = w.health.breaker_open_until.is_some_and(|until| until > now);
                if w.backlog_after_seq.is_some() && w.disabled_at.is_none() && !open {
                    waiting.push(w);
                }
            }
            let kept: HashSet<&str> = waiting.iter().map(|w| w.id.as_str()).collect();
            let waiting_ids: Vec<&str> = kept.iter().copied().collect();
            // Tried already: a delivery pending (written before its hold, or by another node).
            let pending: HashSet<String> = ids_in(
                &mut tx,
                "pending of webhooks",
                "SELECT DISTINCT webhook_id FROM deliveries WHERE status = 'pending' AND webhook_id",
                &waiting_ids,
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
            waiting.retain(|w| !pending.contains(&w.id));
            let mut settled: Vec<String> = webhook_ids
                .iter()
                .filter(|id| !kept.contains(id.as_str()) || pending.contains(id.as_str()))
                .cloned()
                .collect();
            let Some(from) = waiting.iter().filter_map(|w| w.backlog_after_seq).min() else {
                done.settled.append(&mut settled);
                return Ok(done);
            };
            let events = read_stream_rows(&mut tx, from).await?;
            let at_head = events.len() < BACKLOG_SCAN;
            // Each webhook's first event after its place that goes to it.
            let mut first: Vec<(&Webhook, &StreamRow)> = Vec::new();
            let mut places: HashMap<i64, Vec<&str>> = HashMap::new();
            for &w in &waiting {
                let place = w.backlog_after_seq.unwrap_or_default();
                match events.iter().find(|e| e.seq > place && e.wanted_by(w)) {
                    Some(e) => first.push((w, e)),
                    None => {
                        // None up to what was read: its place moves past it.
                        if let Some(last) = events.last().filter(|e| e.seq > place) {
                            places.entry(last.seq).or_default().push(&w.id);
                        }
                        done.more |= !at_head;
                    }
                }
            }
            let mut event_ids: Vec<&str> = first.iter().map(|(_, e)| e.id.as_str()).collect();
            event_ids.sort_unstable();
            event_ids.dedup();
            // A delivery of that event already (a replay): the next call looks further. (At
            // most a hundred events and a hundred webhooks: one statement.)
            let delivered: HashSet<(String, String)> = if first.is_empty() {
                HashSet::new()
            } else {
                let webhook_ids: Vec<&str> = first.iter().map(|(w, _)| w.id.as_str()).collect();
                let (e, w) = (event_ids.len(), webhook_ids.len());
                let sql = TEXTS.get("deliveries of events", "first deliveries", e * 1000 + w, || {
                    $hooks::positional(format!(
                        "SELECT webhook_id, event_id FROM deliveries
                         WHERE event_id IN ({}) AND webhook_id IN ({})",
                        placeholders(e, 1),
                        placeholders(w, e + 1)
                    ))
                });
                let mut query = sqlx::query(&sql);
                for id in event_ids.iter().chain(&webhook_ids) {
                    query = query.bind(*id);
                }
                query
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|row| (row.get(0), row.get(1)))
                    .collect()
            };
            first.retain(|(w, e)| {
                let again = delivered.contains(&(w.id.clone(), e.id.clone()));
                if again {
                    places.entry(e.seq).or_default().push(&w.id);
                    done.more = true;
                }
                !again
            });
            let payloads: HashMap<String, Bytes> = ids_in(
                &mut tx,
                "payloads of events",
                "SELECT id, payload FROM events WHERE id",
                &event_ids,
            )
            .await?
            .iter()
            .map(|row| (row.get(0), Bytes::from(row.get::<Vec<u8>, _>(1))))
            .collect();
            let rows: Vec<(String, &Webhook, &StreamRow)> =
                first.iter().map(|(w, e)| (new_id(), *w, *e)).collect();
            for chunk in chunks(&rows, rows_per_statement(10, 0)) {
                let sql = insert_text("deliveries", DELIVERY_COLUMNS, chunk.len(), "");
                let mut query = sqlx::query(&sql);
                for (id, w, e) in chunk {
                    query = query
                        .bind(id.as_str())
                        .bind(e.id.as_str())
                        .bind(w.id.as_str())
                        .bind(delivery_status::PENDING)
                        .bind(0_i64)
                        .bind(now)
                        .bind(lease_until)
                        .bind(now)
                        .bind(e.conversation_id.as_deref())
                        .bind(e.seq);
                }
                query.execute(&mut *tx).await?;
            }
            for (_, w, e) in &rows {
                places.entry(e.seq).or_default().push(&w.id);
            }
            for (place, ids) in &places {
                for chunk in chunks(ids, rows_per_statement(1, 1)) {
                    let sql = TEXTS.get("move backlogs", "webhooks", chunk.len(), || {
                        $hooks::positional(format!(
                            "UPDATE webhooks SET backlog_after_seq = $1 WHERE id IN ({})",
                            placeholders(chunk.len(), 2)
                        ))
                    });
                    let mut query = sqlx::query(&sql).bind(*place);
                    for id in chunk {
                        query = query.bind(*id);
                    }
                    query.execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            done.settled.append(&mut settled);
            // One signature cell per event, shared by its deliveries.
            let mut signatures: HashMap<&str, std::sync::Arc<std::sync::OnceLock<String>>> =
                HashMap::new();
            for (id, w, e) in rows {
                let Some(payload) = payloads.get(&e.id) else {
                    continue;
                };
                done.jobs.push(DeliveryJob {
                    delivery_id: id,
                    event_id: e.id.clone(),
                    webhook_id: w.id.clone(),
                    payload: payload.clone(),
                    attempts: 0,
                    retry_offset: 0,
                    conversation_id: e.conversation_id.clone(),
                    event_seq: e.seq,
                    lease_until,
                    is_retry: false,
                    ghl_signature: signatures.entry(e.id.as_str()).or_default().clone(),
                });
            }
            Ok(done)
        }
    };
}

pub(crate) use sql_first_deliveries;
