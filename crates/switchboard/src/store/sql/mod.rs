//! The store's SQL, written once for both backends. Every query uses numbered `$N`
//! placeholders, which PostgreSQL and SQLite (through sqlx) both bind by number; the few
//! differences (row locks, the event-stream lock, wake-ups) are the backend's `hooks`.
//!
//! `sql_store!(Store, Db, Row, hooks)` implements every concern of [`super::Store`] for
//! `Store`, a struct with `writer` and `reader` pools of `Db`, by invoking one macro per
//! concern, each in its own file. They expand into the backend's module side by side, so the
//! helpers one concern defines (`file_messages`, `queue_deliveries`, `job_from_row`, …) are
//! there for the others; the imports and the statement-text cache are here, once.
pub(super) mod attempts;
pub(super) mod backlog;
pub(super) mod calls;
pub(super) mod contacts;
pub(super) mod deliveries;
pub(super) mod feed;
pub(super) mod filing;
pub(super) mod first;
pub(super) mod group_commit;
pub(super) mod locations;
pub(super) mod outbox;
pub(super) mod setup;
pub(super) mod threads;
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

        use $crate::channels::{self, ChannelAccount, RouteKey};
        use $crate::domain::call::{CallState, CallUpdate};
        use $crate::domain::ids::new_id;
        use $crate::domain::{Fact, NewMessage};
        use $crate::event::{self, Filed};
        use $crate::store::statements::{chunks, placeholders, rows_per_statement, tuples};
        use $crate::store::{
            delivery_status, AttemptRecord, AttemptReport, ChannelAccountInput, DeliveryJob,
            DeliveryReport, IngestContext, IngestOutcome, Location, NextStep, Ordering, StoreError,
            StoreResult, Webhook, WebhookHealth,
        };

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

        $crate::store::sql::setup::sql_setup!($store, $db, $row, $hooks);
        $crate::store::sql::locations::sql_locations!($store, $db, $row, $hooks);
        $crate::store::sql::webhooks::sql_webhooks!($store, $db, $row, $hooks);
        $crate::store::sql::group_commit::sql_group_commit!($store, $db, $row, $hooks);
        $crate::store::sql::filing::sql_filing!($store, $db, $row, $hooks);
        $crate::store::sql::contacts::sql_contacts!($store, $db, $row, $hooks);
        $crate::store::sql::threads::sql_threads!($store, $db, $row, $hooks);
        $crate::store::sql::outbox::sql_outbox!($store, $db, $row, $hooks);
        $crate::store::sql::calls::sql_calls!($store, $db, $row, $hooks);
        $crate::store::sql::attempts::sql_attempts!($store, $db, $row, $hooks);
        $crate::store::sql::deliveries::sql_deliveries!($store, $db, $row, $hooks);
        $crate::store::sql::backlog::sql_backlog!($store, $db, $row, $hooks);
        $crate::store::sql::first::sql_first_deliveries!($store, $db, $row, $hooks);
        $crate::store::sql::feed::sql_feed!($store, $db, $row, $hooks);
    };
}

pub(crate) use sql_store;
