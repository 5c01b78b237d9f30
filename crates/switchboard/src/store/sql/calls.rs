//! Calls: each callback merged into its call's state under the call's row lock, and the call
//! emitted once, when its outcome is final or it waited long enough for a recording.

macro_rules! sql_calls {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
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
                "SELECT state, message_id FROM calls
                 WHERE provider = $1 AND call_sid = $2 AND location_id = $3{}",
                $hooks::ROW_LOCK
            ))
            .bind(provider)
            .bind(&update.call_sid)
            .bind(location_id)
            .fetch_optional(&mut **tx)
            .await?;
            let Some(row) = row else {
                // The call is another location's. Callbacks of a call are routed to the call's
                // location, so this one was not (say, a first callback racing a change of the
                // number's location); it cannot change another location's call.
                tracing::warn!(
                    call_sid = %update.call_sid,
                    location_id,
                    "ignored a callback for another location's call"
                );
                return Ok(());
            };
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

        #[async_trait]
        impl $crate::store::Calls for $store {
            async fn emit_due_calls(&self, ctx: &IngestContext) -> StoreResult<Vec<DeliveryJob>> {

                self.faults.track(async {
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
                let mut tx = $hooks::begin_write(&self.writer).await?;
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

                }).await

            }
        }
    };
}

pub(crate) use sql_calls;
