//! Backlogs held in the event stream: a webhook whose subscriber has not answered gets no
//! delivery rows at ingest (`queue_deliveries` leaves it out); its place in the stream
//! (`webhooks.backlog_after_seq`) says which events it still owes, and a dispatcher writes their
//! deliveries a few at a time as the webhook can take them, then gives it back to ingest.
//!
//! Holding and giving back take the event-stream lock, so an ingest that numbers its event
//! after the place is seen by the top-up, and one that numbered it before wrote its row (a
//! top-up never writes a second one for an event). On PostgreSQL an ingest reads the webhooks
//! before it takes the lock, so it asks again under the lock which are held
//! (`queue_deliveries`).

macro_rules! sql_backlog {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
        /// Events a top-up reads per statement, and statements per call.
        const BACKLOG_SCAN: usize = 500;
        const BACKLOG_SCANS: usize = 2;

        /// Of `webhook_ids`, those whose backlog is held now, with their places. Called under
        /// the event-stream lock: what it reads stays true until the caller's commit.
        async fn held_backlogs(
            tx: &mut Transaction<'_, $db>,
            webhook_ids: &[&str],
        ) -> StoreResult<HashMap<String, i64>> {
            let mut held = HashMap::new();
            for chunk in chunks(webhook_ids, rows_per_statement(1, 0)) {
                let sql = TEXTS.get("held backlogs", "webhooks", chunk.len(), || {
                    $hooks::positional(format!(
                        "SELECT id, backlog_after_seq FROM webhooks
                         WHERE backlog_after_seq IS NOT NULL AND id IN ({})",
                        placeholders(chunk.len(), 1)
                    ))
                });
                let mut query = sqlx::query(&sql);
                for id in chunk {
                    query = query.bind(*id);
                }
                for row in query.fetch_all(&mut **tx).await? {
                    held.insert(row.get(0), row.get(1));
                }
            }
            Ok(held)
        }

        /// Hold the backlogs of the webhooks the caller's dispatcher holds in the stream and
        /// the store did not yet: each from just before its first event here. Called under
        /// the event-stream lock, so no other event comes in between. Returns the places it
        /// set, by webhook (those not held already and not deleted when the rows were read).
        async fn hold_backlogs_here<'r>(
            tx: &mut Transaction<'_, $db>,
            rows: &'r [NewDelivery<'_>],
        ) -> StoreResult<HashMap<&'r str, i64>> {
            let mut first: HashMap<&str, i64> = HashMap::new();
            for r in rows.iter().filter(|r| r.hold && r.webhook.backlog_after_seq.is_none()) {
                let seq = first.entry(r.webhook.id.as_str()).or_insert(r.event_seq);
                *seq = (*seq).min(r.event_seq);
            }
            // By place: a batch's events are few, its webhooks may be a thousand.
            let mut by_place: HashMap<i64, Vec<&str>> = HashMap::new();
            for (&id, seq) in &first {
                by_place.entry(seq - 1).or_default().push(id);
            }
            for (place, ids) in by_place {
                hold_backlogs_after(tx, &ids, place).await?;
            }
            Ok(first.into_iter().map(|(id, seq)| (id, seq - 1)).collect())
        }

        /// Hold these webhooks' backlogs after the stream's head (called under the
        /// event-stream lock: every later event is the caller's or later).
        async fn hold_backlogs_at_head<S: AsRef<str>>(
            tx: &mut Transaction<'_, $db>,
            webhook_ids: &[S],
        ) -> StoreResult<()> {
            let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
                .fetch_one(&mut **tx)
                .await?;
            hold_backlogs_after(tx, webhook_ids, head).await
        }

        /// Hold these webhooks' backlogs after `place`, those not held already (or deleted),
        /// many per statement: with a thousand webhooks, one statement each took 90 ms while
        /// the runtime was busy (each statement waits its turn to be answered). Called under
        /// the event-stream lock.
        async fn hold_backlogs_after<S: AsRef<str>>(
            tx: &mut Transaction<'_, $db>,
            webhook_ids: &[S],
            place: i64,
        ) -> StoreResult<()> {
            for chunk in chunks(webhook_ids, rows_per_statement(1, 1)) {
                let sql = TEXTS.get("hold backlogs", "webhooks", chunk.len(), || {
                    $hooks::positional(format!(
                        "UPDATE webhooks SET backlog_after_seq = $1
                         WHERE id IN ({}) AND deleted_at IS NULL AND backlog_after_seq IS NULL",
                        placeholders(chunk.len(), 2)
                    ))
                });
                let mut query = sqlx::query(&sql).bind(place);
                for id in chunk {
                    query = query.bind(id.as_ref());
                }
                query.execute(&mut **tx).await?;
            }
            Ok(())
        }

        /// The location's webhooks given back to ingest (or created) since `read` was read by
        /// `location_webhooks`. Called under the event-stream lock: on PostgreSQL the list was
        /// read before it, and a webhook given back in between had its top-up read the stream
        /// before this transaction's events, so they are queued here. SQLite's one writer read
        /// the latest already.
        async fn released_since(
            tx: &mut Transaction<'_, $db>,
            location_id: &str,
            read: &[Webhook],
        ) -> StoreResult<Vec<Webhook>> {
            if $hooks::EMBEDDED {
                return Ok(vec![]);
            }
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM webhooks
                 WHERE deleted_at IS NULL AND (location_id IS NULL OR location_id = $1)
                   AND backlog_after_seq IS NULL",
            )
            .bind(location_id)
            .fetch_all(&mut **tx)
            .await?;
            let mut late = Vec::new();
            for id in ids {
                if read.iter().any(|w| w.id == id) {
                    continue;
                }
                let row = sqlx::query(&format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"
                ))
                .bind(&id)
                .fetch_one(&mut **tx)
                .await?;
                late.push(webhook_from_row(&row));
            }
            Ok(late)
        }

        /// One event after a held webhook's place, with what its filters look at.
        struct StreamEvent {
            seq: i64,
            id: String,
            conversation_id: Option<String>,
            /// Whether it goes to the webhook (its filters, not a suppressed mail, not the
            /// webhook's own `WebhookDisabled`).
            wanted: bool,
        }

        /// One event of the stream as read, before any webhook's filters.
        struct StreamRow {
            seq: i64,
            id: String,
            event_type: Option<EventType>,
            location_id: Option<String>,
            message: Option<(switchboard_events::MessageType, Direction)>,
            conversation_id: Option<String>,
            suppressed: bool,
            /// For a `WebhookDisabled` event: the webhook it tells of.
            disabled_endpoint: Option<String>,
        }

        impl StreamRow {
            /// Whether it goes to this webhook.
            fn wanted_by(&self, webhook: &Webhook) -> bool {
                self.event_type.is_some_and(|t| {
                    webhook.matches(
                        t,
                        self.location_id.as_deref(),
                        self.message.as_ref().map(|(m, d)| (m, *d)),
                    )
                }) && !self.suppressed
                    && self.disabled_endpoint.as_deref() != Some(webhook.id.as_str())
            }
        }

        /// The stream's events after `after`, at most `BACKLOG_SCAN`, in order.
        async fn read_stream_rows(
            tx: &mut Transaction<'_, $db>,
            after: i64,
        ) -> StoreResult<Vec<StreamRow>> {
            let rows = sqlx::query(
                "SELECT e.seq, e.id, e.event_type, e.location_id, m.message_type, m.direction,
                        m.conversation_id, m.status,
                        CASE WHEN e.event_type = 'WebhookDisabled' THEN e.payload END AS disabled
                 FROM events e LEFT JOIN messages m ON m.id = e.message_id
                 WHERE e.seq > $1 ORDER BY e.seq LIMIT $2",
            )
            .bind(after)
            .bind(BACKLOG_SCAN as i64)
            .fetch_all(&mut **tx)
            .await?;
            Ok(rows
                .iter()
                .map(|row| {
                    let direction = match row.get::<Option<&str>, _>("direction") {
                        Some("outbound") => Direction::Outbound,
                        _ => Direction::Inbound,
                    };
                    let message = row
                        .get::<Option<&str>, _>("message_type")
                        .map(|m| (switchboard_events::MessageType::parse(m), direction));
                    let disabled_endpoint = row
                        .get::<Option<Vec<u8>>, _>("disabled")
                        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
                        .and_then(|p| p["endpointId"].as_str().map(str::to_owned));
                    StreamRow {
                        seq: row.get("seq"),
                        id: row.get("id"),
                        event_type: EventType::parse(row.get::<&str, _>("event_type")),
                        location_id: row.get("location_id"),
                        message,
                        conversation_id: row.get("conversation_id"),
                        suppressed: row.get::<Option<&str>, _>("status") == Some("suppressed"),
                        disabled_endpoint,
                    }
                })
                .collect())
        }

        async fn read_stream(
            tx: &mut Transaction<'_, $db>,
            webhook: &Webhook,
            after: i64,
        ) -> StoreResult<Vec<StreamEvent>> {
            Ok(read_stream_rows(tx, after)
                .await?
                .into_iter()
                .map(|row| StreamEvent {
                    wanted: row.wanted_by(webhook),
                    seq: row.seq,
                    id: row.id,
                    conversation_id: row.conversation_id,
                })
                .collect())
        }

        /// Of `events`, those the webhook has a delivery of already (written at ingest before
        /// it was held, or by a replay).
        async fn delivered_already(
            tx: &mut Transaction<'_, $db>,
            webhook_id: &str,
            events: &[&str],
        ) -> StoreResult<HashSet<String>> {
            let mut found = HashSet::new();
            for chunk in chunks(events, rows_per_statement(1, 1)) {
                let sql = TEXTS.get("delivered already", "deliveries", chunk.len(), || {
                    $hooks::positional(format!(
                        "SELECT event_id FROM deliveries WHERE webhook_id = $1 AND event_id IN ({})",
                        placeholders(chunk.len(), 2)
                    ))
                });
                let mut query = sqlx::query(&sql).bind(webhook_id);
                for id in chunk {
                    query = query.bind(*id);
                }
                for row in query.fetch_all(&mut **tx).await? {
                    found.insert(row.get(0));
                }
            }
            Ok(found)
        }

        /// One transaction of `top_up_backlog`; with `lock_first` under the event stream's lock
        /// from its start. Without it, a give-back that reached the stream's head writes what
        /// it read and returns true: the rest is for a pass with the lock.
        async fn top_up_pass(
            writer: &sqlx::Pool<$db>,
            webhook_id: &str,
            want: Option<u32>,
            release: bool,
            lock_first: bool,
            now: i64,
        ) -> StoreResult<($crate::store::BacklogTopUp, bool)> {
            let mut done = $crate::store::BacklogTopUp::default();
            let mut at_head = false;
            let mut tx = $hooks::begin_write(writer).await?;
            if lock_first {
                $hooks::lock_event_stream(&mut *tx).await?;
            }
            // One top-up of a webhook at a time, on any node.
            let row = sqlx::query(&format!(
                "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND deleted_at IS NULL{}",
                $hooks::ROW_LOCK
            ))
            .bind(webhook_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(webhook) = row.as_ref().map(webhook_from_row) else {
                done.released = true;
                return Ok((done, false));
            };
            let Some(mut after) = webhook.backlog_after_seq else {
                done.released = true;
                return Ok((done, false));
            };
            let mut room = match want {
                None => usize::MAX,
                Some(want) => {
                    let pending: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries
                             WHERE webhook_id = $1 AND status = 'pending' LIMIT $2) AS p",
                    )
                    .bind(webhook_id)
                    .bind(i64::from(want))
                    .fetch_one(&mut *tx)
                    .await?;
                    (want as usize).saturating_sub(pending as usize)
                }
            };
            if room == 0 {
                // It holds what it can take: the next top-up comes when some are done.
                return Ok((done, false));
            }
            let mut rows: Vec<(String, StreamEvent)> = Vec::new();
            // Read as many events as one call may: call again.
            done.more = true;
            for _ in 0..BACKLOG_SCANS {
                let events = read_stream(&mut tx, &webhook, after).await?;
                let reached_head = events.len() < BACKLOG_SCAN;
                let wanted: Vec<&str> =
                    events.iter().filter(|e| e.wanted).map(|e| e.id.as_str()).collect();
                let already = delivered_already(&mut tx, webhook_id, &wanted).await?;
                let mut stopped = false;
                for e in events {
                    if e.wanted && !already.contains(&e.id) {
                        if room == 0 {
                            stopped = true;
                            break;
                        }
                        room -= 1;
                        after = e.seq;
                        rows.push((new_id(), e));
                    } else {
                        after = e.seq;
                    }
                }
                if stopped {
                    done.more = false;
                    break;
                }
                if !reached_head {
                    continue;
                }
                if !release {
                    done.more = false;
                    break;
                }
                if !lock_first {
                    // Read once more under the lock, in a pass that takes it first:
                    // nothing numbered after it can have been left out.
                    at_head = true;
                    done.more = false;
                    break;
                }
                done.more = false;
                done.released = true;
                break;
            }
            for chunk in chunks(&rows, rows_per_statement(10, 0)) {
                let sql = insert_text("deliveries", DELIVERY_COLUMNS, chunk.len(), "");
                let mut query = sqlx::query(&sql);
                for (id, e) in chunk {
                    query = query
                        .bind(id.as_str())
                        .bind(e.id.as_str())
                        .bind(webhook_id)
                        .bind(delivery_status::PENDING)
                        .bind(0_i64)
                        .bind(now)
                        .bind(None::<i64>)
                        .bind(now)
                        .bind(e.conversation_id.as_deref())
                        .bind(e.seq);
                }
                query.execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE webhooks SET backlog_after_seq = $1 WHERE id = $2")
                .bind((!done.released).then_some(after))
                .bind(webhook_id)
                .execute(&mut *tx)
                .await?;
            if !rows.is_empty() {
                $hooks::notify_work(&mut *tx).await?;
            }
            tx.commit().await?;
            done.queued = rows.len() as u32;
            Ok((done, at_head))
        }

        #[async_trait]
        impl $crate::store::Backlogs for $store {
            async fn hold_backlogs(
                &self,
                webhook_ids: &[String],
                handoffs: &$crate::store::Handoffs,
            ) -> StoreResult<()> {
                if webhook_ids.is_empty() {
                    return Ok(());
                }
                self.faults.track(async {
                    let mut tx = $hooks::begin_write(&self.writer).await?;
                    // Asked again now: on SQLite the ingest this waited for may have held them
                    // (a redundant hold of a thousand made the next commit wait 15–50 ms).
                    let webhook_ids: Vec<&String> = webhook_ids
                        .iter()
                        .filter(|id| handoffs.hold_unwritten(id))
                        .collect();
                    if webhook_ids.is_empty() {
                        return Ok(());
                    }
                    $hooks::lock_event_stream(&mut *tx).await?;
                    hold_backlogs_at_head(&mut tx, &webhook_ids).await?;
                    tx.commit().await?;
                    handoffs.holds_written(&webhook_ids);
                    Ok(())
                })
                .await
            }

            async fn top_up_backlog(
                &self,
                webhook_id: &str,
                want: Option<u32>,
                release: bool,
                now: i64,
            ) -> StoreResult<$crate::store::BacklogTopUp> {
                self.faults.track(async {
                    // A give-back reads the stream once more under the event stream's lock,
                    // taken before the webhook's row, as ingest and holds take them: taken
                    // after the row, it waited for an ingest that waited for the row (a
                    // deadlock, broken after a second on PostgreSQL, every ingest of the
                    // cluster waiting). A webhook on probation (one delivery at most, few
                    // events after its place) takes it at once; one that answered first
                    // writes what it reads without it, and at the head takes it in a second
                    // transaction for the rest.
                    let lock_first = release && want.is_some();
                    let (mut done, at_head) =
                        top_up_pass(&self.writer, webhook_id, want, release, lock_first, now)
                            .await?;
                    if at_head {
                        let (rest, _) =
                            top_up_pass(&self.writer, webhook_id, want, release, true, now).await?;
                        done.queued += rest.queued;
                        done.more = rest.more;
                        done.released = rest.released;
                    }
                    Ok(done)
                })
                .await
            }

            async fn first_deliveries(
                &self,
                webhook_ids: &[String],
                now: i64,
                lease_until: i64,
            ) -> StoreResult<$crate::store::FirstDeliveries> {
                self.faults
                    .track(first_deliveries_tx(&self.writer, &self.reader, webhook_ids, now, lease_until))
                    .await
            }
        }
    };
}

pub(crate) use sql_backlog;
