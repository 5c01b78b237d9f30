//! Integration tests: one binary, the real server over real HTTP. The API suites run once per
//! store (SQLite and PostgreSQL) through `both_stores!`.

/// Run each named `async fn` test once on SQLite and once on PostgreSQL, as
/// `<module>::sqlite::<name>` and `<module>::postgres::<name>`.
#[macro_export]
macro_rules! both_stores {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    $crate::helpers::on_store($crate::helpers::Backend::Sqlite, super::$test()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    $crate::helpers::on_store($crate::helpers::Backend::Postgres, super::$test()).await
                }
            )*
        }
    };
}

mod admin;
mod backlog;
mod channel_api;
mod connections;
mod contacts;
mod delivery;
mod dns;
mod docs;
mod email;
mod email_files;
mod email_flood;
mod email_routes;
mod email_threads;
mod engine;
mod fairness;
mod feed;
mod fuzz_regressions;
mod hardening;
mod helpers;
mod isolation;
mod layout;
mod multinode;
mod parts;
mod pg_restart;
mod promises;
mod quick_start;
mod registry;
mod resources;
mod restart;
mod rotation;
mod routing;
mod secrets_at_rest;
mod security;
mod skips;
mod slow_subscribers;
mod smtp;
mod smtp_auth;
mod smtp_faults;
mod smtp_garbage;
mod storage_faults;
mod stream_lock;
mod takeover;
mod targets;
mod twilio_sms;
mod twilio_voice;
mod upgrade;
