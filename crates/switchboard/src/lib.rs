//! Switchboard: a self-hosted inbound messaging gateway. Providers' webhooks come in, are
//! verified and normalized into `InboundMessage` / `OutboundMessage` events, stored durably
//! with their deliveries, and sent signed to every subscriber until accepted.
#![forbid(unsafe_code)]
// The OpenAPI document is one large `json!` literal.
#![recursion_limit = "256"]

pub mod bench;
pub mod channels;
pub mod config;
pub mod credential_hosts;
pub mod dispatcher;
pub mod domain;
pub mod error;
pub mod event;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod ingest;
pub mod keys;
pub mod media;
pub mod metrics;
pub mod routes;
pub mod serve;
pub mod simulate;
pub mod ssrf;
pub mod startup;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use startup::Application;
