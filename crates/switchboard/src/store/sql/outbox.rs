//! The outbox: events stored with their bodies frozen as sent, and one delivery per matching
//! webhook queued in the same transaction (leased to the caller when it can go at once).

macro_rules! sql_outbox {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
        /// The columns a new delivery is inserted with (the statement text is cached by table
        /// and row count, so every insert of deliveries names these).
        const DELIVERY_COLUMNS: &str =
            "id, event_id, webhook_id, status, attempts, next_attempt_at, \
            lease_until, created_at, conversation_id, event_seq";

        /// An event to store; its body is frozen as sent.
        struct NewEvent<'a> {
            id: String,
            message_id: Option<&'a str>,
            location_id: Option<&'a str>,
            event_type: EventType,
            payload: Bytes,
            now: i64,
        }

        /// Store events; returns their places in the event stream, in the order given.
        async fn insert_events(
            tx: &mut Transaction<'_, $db>,
            events: &[NewEvent<'_>],
        ) -> StoreResult<Vec<i64>> {
            $hooks::lock_event_stream(&mut **tx).await?;
            let mut seq_of: HashMap<String, i64> = HashMap::with_capacity(events.len());
            for chunk in chunks(&events, rows_per_statement(6, 0)) {
                let sql = insert_text(
                    "events",
                    "id, message_id, location_id, event_type, payload, created_at",
                    chunk.len(),
                    "RETURNING id, seq",
                );
                let mut query = sqlx::query(&sql);
                for e in chunk {
                    query = query
                        .bind(e.id.as_str())
                        .bind(e.message_id)
                        .bind(e.location_id)
                        .bind(e.event_type.as_str())
                        .bind(&e.payload[..])
                        .bind(e.now);
                }
                for row in query.fetch_all(&mut **tx).await? {
                    seq_of.insert(row.get(0), row.get(1));
                }
            }
            events
                .iter()
                .map(|e| {
                    seq_of.get(&e.id).copied().ok_or_else(|| {
                        StoreError::Internal(anyhow::anyhow!("event {} was not numbered", e.id))
                    })
                })
                .collect()
        }

        /// A delivery row to insert. It is leased to the caller and returned as a job to send at
        /// once, unless the webhook cannot take it now (disabled, breaker open), no lease is
        /// asked (an API-only node), or, for an ordered webhook, an earlier event of the
        /// conversation is still pending: then a dispatcher claims it in turn.
        #[derive(Clone)]
        struct NewDelivery<'a> {
            webhook: &'a Webhook,
            event_id: &'a str,
            event_seq: i64,
            conversation_id: Option<&'a str>,
            payload: &'a Bytes,
            now: i64,
            lease_until: Option<i64>,
            /// Not leased although the caller takes deliveries: its dispatcher holds enough of
            /// this webhook's already and claims the rest in turn; no one needs telling.
            left_for_claim: bool,
            /// The outcome that receives the job (index into the batch's outcomes).
            item: usize,
            /// The caller's dispatcher holds the webhook's backlog in the stream: hold it here
            /// if it is not yet, and write no row.
            hold: bool,
        }

        async fn queue_deliveries(
            tx: &mut Transaction<'_, $db>,
            rows: &[NewDelivery<'_>],
            outcomes: &mut [IngestOutcome],
        ) -> StoreResult<()> {
            // A webhook whose backlog is held in the stream gets no row: its top-up writes it.
            // Those the dispatcher holds and the store does not yet are held here, after the
            // stream's events before these. On PostgreSQL the webhooks were read before this
            // transaction took the event-stream lock (its events are numbered), so the store is
            // asked again now for every one: a dispatcher (this node's, whose own view may
            // have let go of it since, or another's) may have held it in between, and a row
            // written here after its place went out before the held events before it.
            let placed = hold_backlogs_here(tx, rows).await?;
            let mut maybe_held: Vec<&str> = rows
                .iter()
                .filter(|r| !$hooks::EMBEDDED || r.webhook.backlog_after_seq.is_some() || r.hold)
                .map(|r| r.webhook.id.as_str())
                .collect();
            let kept: Vec<NewDelivery<'_>>;
            let rows = if maybe_held.is_empty() {
                rows
            } else {
                maybe_held.sort_unstable();
                maybe_held.dedup();
                // Only the events after its place: one numbered before it (a row of this
                // transaction the dispatcher had not asked to hold yet) is not the top-up's.
                let held: HashMap<String, i64> = if $hooks::EMBEDDED {
                    // One writer, and the webhooks were read in this transaction: their places
                    // are those read or those just set (asking again took 4–12 ms with a
                    // thousand webhooks just held).
                    rows.iter()
                        .filter_map(|r| {
                            let id = r.webhook.id.as_str();
                            let place = r.webhook.backlog_after_seq.or(placed.get(id).copied());
                            place.map(|p| (id.to_owned(), p))
                        })
                        .collect()
                } else {
                    held_backlogs(tx, &maybe_held).await?
                };
                kept = rows
                    .iter()
                    .filter(|r| {
                        held.get(&r.webhook.id)
                            .is_none_or(|place| r.event_seq <= *place)
                    })
                    .map(NewDelivery::clone)
                    .collect();
                &kept[..]
            };
            let mut send_now: Vec<bool> = rows
                .iter()
                .map(|r| {
                    r.lease_until.is_some()
                        && r.webhook.disabled_at.is_none()
                        && r.webhook
                            .health
                            .breaker_open_until
                            .is_none_or(|until| until <= r.now)
                })
                .collect();
            // An ordered webhook sends only the first pending delivery of a conversation.
            let mut ordered: HashMap<&str, Vec<&str>> = HashMap::new();
            for r in rows {
                if let (Ordering::Conversation, Some(c)) = (r.webhook.ordering, r.conversation_id) {
                    ordered.entry(r.webhook.id.as_str()).or_default().push(c);
                }
            }
            let mut waiting: HashSet<(&str, String)> = HashSet::new();
            for (webhook_id, mut conversations) in ordered {
                conversations.sort_unstable();
                conversations.dedup();
                for chunk in chunks(&conversations, rows_per_statement(1, 1)) {
                    let sql = TEXTS.get(
                        "pending in conversations",
                        "deliveries",
                        chunk.len(),
                        || {
                            $hooks::positional(format!(
                                "SELECT v.column1 FROM (VALUES {}) AS v
                             WHERE EXISTS (SELECT 1 FROM deliveries d
                                 WHERE d.conversation_id = v.column1 AND d.webhook_id = ${}
                                   AND d.status = 'pending')",
                                tuples(chunk.len(), 1, 1),
                                chunk.len() + 1
                            ))
                        },
                    );
                    let mut query = sqlx::query(&sql);
                    for c in chunk {
                        query = query.bind(*c);
                    }
                    query = query.bind(webhook_id);
                    for row in query.fetch_all(&mut **tx).await? {
                        waiting.insert((webhook_id, row.get(0)));
                    }
                }
            }
            for (r, now) in rows.iter().zip(send_now.iter_mut()) {
                if let (Ordering::Conversation, Some(c)) = (r.webhook.ordering, r.conversation_id) {
                    // The first of the conversation here, and none pending before it.
                    *now &= waiting.insert((r.webhook.id.as_str(), c.to_owned()));
                }
            }

            let ids: Vec<String> = rows.iter().map(|_| new_id()).collect();
            let all = rows.iter().zip(&ids).zip(&send_now).collect::<Vec<_>>();
            for chunk in chunks(&all, rows_per_statement(10, 0)) {
                let sql = insert_text("deliveries", DELIVERY_COLUMNS, chunk.len(), "");
                let mut query = sqlx::query(&sql);
                for ((r, id), now) in chunk {
                    query = query
                        .bind(id.as_str())
                        .bind(r.event_id)
                        .bind(r.webhook.id.as_str())
                        .bind(delivery_status::PENDING)
                        .bind(0_i64)
                        .bind(r.now)
                        .bind(r.lease_until.filter(|_| **now))
                        .bind(r.now)
                        .bind(r.conversation_id)
                        .bind(r.event_seq);
                }
                query.execute(&mut **tx).await?;
            }
            // Deliveries nobody holds: a dispatcher claims them.
            if rows
                .iter()
                .zip(&send_now)
                .any(|(r, now)| !now && !r.left_for_claim)
            {
                $hooks::notify_work(&mut **tx).await?;
            }
            // One signature cell per event, shared by its deliveries.
            let mut signatures: HashMap<&str, std::sync::Arc<std::sync::OnceLock<String>>> =
                HashMap::new();
            for ((r, id), now) in all {
                let (true, Some(lease_until)) = (*now, r.lease_until) else {
                    continue;
                };
                outcomes[r.item].jobs.push(DeliveryJob {
                    delivery_id: id.clone(),
                    event_id: r.event_id.to_owned(),
                    webhook_id: r.webhook.id.clone(),
                    payload: r.payload.clone(),
                    attempts: 0,
                    retry_offset: 0,
                    conversation_id: r.conversation_id.map(str::to_owned),
                    event_seq: r.event_seq,
                    lease_until,
                    is_retry: false,
                    ghl_signature: signatures.entry(r.event_id).or_default().clone(),
                });
            }
            Ok(())
        }

        /// The webhooks a location's new events are queued for at ingest: not those whose
        /// backlog is held in the stream (with a thousand hanging webhooks, reading them was
        /// most of an ingest). See `released_since` for those given back meanwhile.
        async fn location_webhooks(
            tx: &mut Transaction<'_, $db>,
            location_id: &str,
        ) -> StoreResult<Vec<Webhook>> {
            Ok(sqlx::query(&format!(
                "SELECT {WEBHOOK_COLUMNS} FROM webhooks
                 WHERE deleted_at IS NULL AND (location_id IS NULL OR location_id = $1)
                   AND backlog_after_seq IS NULL"
            ))
            .bind(location_id)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(webhook_from_row)
            .collect())
        }
    };
}

pub(crate) use sql_outbox;
