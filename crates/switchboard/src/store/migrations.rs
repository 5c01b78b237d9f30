//! Migrations embedded in the binary and run through sqlx's migrator (checksums, history table).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// (version, description, SQL).
pub type Embedded = &'static [(i64, &'static str, &'static str)];

pub const SQLITE: Embedded = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "calls",
        include_str!("../../migrations/sqlite/0002_calls.sql"),
    ),
    (
        3,
        "delivery engine",
        include_str!("../../migrations/sqlite/0003_delivery_engine.sql"),
    ),
    (
        4,
        "conversation writes",
        include_str!("../../migrations/sqlite/0004_conversation_writes.sql"),
    ),
    (
        5,
        "fewer delivery indexes",
        include_str!("../../migrations/sqlite/0005_fewer_delivery_indexes.sql"),
    ),
    (
        6,
        "previous secrets",
        include_str!("../../migrations/sqlite/0006_previous_secrets.sql"),
    ),
    (
        7,
        "storage probe",
        include_str!("../../migrations/sqlite/0007_storage_probe.sql"),
    ),
    (
        8,
        "provider message id unique",
        include_str!("../../migrations/sqlite/0008_provider_message_id_unique.sql"),
    ),
    (
        9,
        "contact identities",
        include_str!("../../migrations/sqlite/0009_contact_identities.sql"),
    ),
    (
        10,
        "email messages",
        include_str!("../../migrations/sqlite/0010_email_messages.sql"),
    ),
    (
        11,
        "provider nonces",
        include_str!("../../migrations/sqlite/0011_provider_nonces.sql"),
    ),
    (
        12,
        "mail flood",
        include_str!("../../migrations/sqlite/0012_mail_flood.sql"),
    ),
    (
        13,
        "stream backlog",
        include_str!("../../migrations/sqlite/0013_stream_backlog.sql"),
    ),
    (
        14,
        "answered",
        include_str!("../../migrations/sqlite/0014_answered.sql"),
    ),
];

pub const POSTGRES: Embedded = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "conversation writes",
        include_str!("../../migrations/postgres/0002_conversation_writes.sql"),
    ),
    (
        3,
        "fewer delivery indexes",
        include_str!("../../migrations/postgres/0003_fewer_delivery_indexes.sql"),
    ),
    (
        4,
        "previous secrets",
        include_str!("../../migrations/postgres/0004_previous_secrets.sql"),
    ),
    (
        5,
        "storage probe",
        include_str!("../../migrations/postgres/0005_storage_probe.sql"),
    ),
    (
        6,
        "provider message id unique",
        include_str!("../../migrations/postgres/0006_provider_message_id_unique.sql"),
    ),
    (
        7,
        "contact identities",
        include_str!("../../migrations/postgres/0007_contact_identities.sql"),
    ),
    (
        8,
        "email messages",
        include_str!("../../migrations/postgres/0008_email_messages.sql"),
    ),
    (
        9,
        "provider nonces",
        include_str!("../../migrations/postgres/0009_provider_nonces.sql"),
    ),
    (
        10,
        "mail flood",
        include_str!("../../migrations/postgres/0010_mail_flood.sql"),
    ),
    (
        11,
        "stream backlog",
        include_str!("../../migrations/postgres/0011_stream_backlog.sql"),
    ),
    (
        12,
        "answered",
        include_str!("../../migrations/postgres/0012_answered.sql"),
    ),
];

#[derive(Debug)]
struct Source(Embedded);

impl MigrationSource<'static> for Source {
    #[allow(clippy::type_complexity)]
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

pub async fn migrator(set: Embedded) -> anyhow::Result<Migrator> {
    Ok(Migrator::new(Source(set)).await?)
}
