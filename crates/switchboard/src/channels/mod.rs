//! Channel adapters: the only code that knows a provider's format. Each one reads a request,
//! names the account it claims to come from, verifies it with that account's secret, and
//! turns it into normalized [`Fact`]s. They never touch the database; the route, body limit,
//! account lookup and store call are written once, in `routes::ingress`.
//!
//! A channel is a folder here and one line of [`CHANNELS`]: from that list come the provider
//! routes the router mounts, their part of the OpenAPI document, the persisted provider names
//! and each provider's credential hosts.

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::MethodRouter;
use bytes::Bytes;

use crate::domain::Fact;
use crate::error::ApiError;
use crate::startup::AppState;
use crate::store::ChannelAccountInput;

pub mod email;
#[cfg(feature = "test-channel")]
pub mod testchannel;
pub mod twilio;

/// Every channel, once.
pub static CHANNELS: &[&dyn Provider] = &[
    &twilio::TWILIO,
    &email::EMAIL,
    #[cfg(feature = "test-channel")]
    &testchannel::TESTCHANNEL,
];

/// One provider as the rest of Switchboard sees it: its name, its endpoints and where its
/// credentials may go. Each channel folder defines one and [`CHANNELS`] lists it.
pub trait Provider: Sync {
    /// The persisted provider name (with every message and channel account; never renamed).
    fn name(&self) -> &'static str;
    /// The routes providers call.
    fn endpoints(&self) -> &'static [Endpoint];
    /// The origins its credentials may be sent to (see [`crate::credential_hosts`]).
    fn credential_hosts(&self) -> &'static [&'static str];
    /// The OpenAPI operation of one of its endpoints: how requests are signed (`parameters`),
    /// what they hold (`requestBody`) and how they are answered (`responses`). The summary,
    /// the tag and the absence of bearer security are the same for every endpoint and are
    /// added by the document.
    fn operation(&self, endpoint: &Endpoint) -> serde_json::Value;
    /// For people: "Twilio".
    fn title(&self) -> &'static str;
    /// The third-party names only this channel's folder may say: its own name where that is
    /// a vendor's (`twilio`), or the vendors whose routes it holds (the e-mail channel's
    /// `mailgun`, `sendgrid`, `postmark`). The project's layout test holds the rest of the
    /// code to it.
    fn vendors(&self) -> &'static [&'static str];
    /// A location's settings (`PUT /v1/locations/{id}/channels/{name}`, JSON), checked at the
    /// edge: what the store keeps, or the 4xx that names what is wrong. The addresses it
    /// claims (phone numbers, e-mail addresses, page ids) each belong to one location.
    fn configure(&self, body: &[u8]) -> Result<ChannelAccountInput, ApiError>;
    /// What `GET` shows of a stored configuration: never a secret's value; each secret masked
    /// ([`mask_secret`]) under `secrets`.
    fn view(
        &self,
        account: &ChannelAccount,
        addresses: &[String],
        public_url: Option<&str>,
    ) -> serde_json::Value;
    /// The settings body's JSON schema, for the OpenAPI document.
    fn settings_schema(&self) -> serde_json::Value;
    /// Servers of its own beside the HTTP routes (the e-mail channel's SMTP listener), bound
    /// as the application is built (a port in use fails the start) and run with it.
    fn listeners(&self, _context: &ListenerContext<'_>) -> anyhow::Result<Vec<Box<dyn Listener>>> {
        Ok(vec![])
    }
}

/// What a channel's own server is built from.
pub struct ListenerContext<'a> {
    pub config: &'a crate::config::Config,
    /// The path to a stored message every receiver of provider traffic takes.
    pub ingest: &'a crate::ingest::Ingest,
    /// The public URL of the HTTP server, without a path: signed media links start with it.
    pub base: &'a str,
}

/// A channel's own server, bound and ready to serve.
pub trait Listener: Send {
    /// Its protocol, for logs and `Application::listener_addr` ("smtp").
    fn name(&self) -> &'static str;
    fn local_addr(&self) -> std::net::SocketAddr;
    /// Serve until the task is dropped. What it has acknowledged is stored; a conversation cut
    /// off by the stop acknowledges nothing more.
    fn run(self: Box<Self>) -> futures_util::future::BoxFuture<'static, ()>;
}

/// The shortest secret a provider may sign with (auth tokens, shared signing keys).
pub const MIN_SECRET_LEN: usize = 16;

/// A write-only secret as a GET shows it: that it is set, and its last 4 characters.
pub fn mask_secret(secret: &str) -> serde_json::Value {
    let chars: Vec<char> = secret.chars().collect();
    let last4: String = chars[chars.len().saturating_sub(4)..].iter().collect();
    serde_json::json!({ "set": !secret.is_empty(), "last4": last4 })
}

/// One route a provider calls.
pub struct Endpoint {
    pub path: &'static str,
    /// For the OpenAPI document.
    pub summary: &'static str,
    /// Its handler: the one ingress route for the endpoint's [`Channel`]
    /// (`crate::routes::provider_route::<C>`).
    pub handler: fn() -> MethodRouter<Arc<AppState>>,
}

/// The channel of a persisted provider name.
pub fn find(name: &str) -> Option<&'static dyn Provider> {
    CHANNELS.iter().copied().find(|c| c.name() == name)
}

/// The persisted provider name as the `'static` name its channel gives.
pub fn provider_name(stored: &str) -> &'static str {
    find(stored).map_or("unknown", |c| c.name())
}

/// The origins a provider's credentials may be sent to (see [`crate::credential_hosts`]).
pub fn credential_hosts(provider: &str) -> &'static [&'static str] {
    find(provider).map_or(&[], |c| c.credential_hosts())
}

/// What a provider sent, with the URL it called (as the provider saw it, for signatures).
#[derive(Debug)]
pub struct ProviderRequest {
    /// Public URL: scheme, host, optional port, path and query exactly as received.
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it was received (ms since the epoch): a signed timestamp is checked against it.
    pub received_at_ms: i64,
}

impl ProviderRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How to find the account a request claims to come from: by the address it was sent to
/// (a phone number, a page id, a mailbox) first, then by the provider id of something already
/// stored (a call's earlier callbacks), else by the provider account id when exactly one
/// location uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteKey {
    pub address: Option<String>,
    /// More addresses, tried in order when `address` finds no account (a mail's other
    /// recipients, a recipient's domain).
    pub also: Vec<String>,
    pub correlation_id: Option<String>,
    pub account_id: Option<String>,
}

/// A location's credentials for one provider, as the core found them.
#[derive(Debug, Clone)]
pub struct ChannelAccount {
    pub location_id: String,
    pub account_id: String,
    /// The secret the provider signs with (Twilio: the auth token).
    pub secret: String,
    /// Provider-specific settings (JSON object).
    pub settings: serde_json::Value,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    /// 400: the request is not what this provider sends.
    #[error("{0}")]
    Malformed(String),
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 403: the signature is missing or wrong.
    #[error("{0}")]
    BadSignature(String),
}

/// One provider endpoint.
pub trait Channel: Send + Sync + 'static {
    /// The provider's name (persisted with every message; never renamed).
    const PROVIDER: &'static str;
    /// A mail route: its bodies may be as large as `max_email_bytes` rather than
    /// `max_body_bytes`.
    const MAIL: bool = false;
    /// The request decoded but not yet trusted.
    type Parsed: Send;

    fn parse(req: &ProviderRequest) -> Result<Self::Parsed, ChannelError>;
    fn route(parsed: &Self::Parsed) -> RouteKey;
    fn verify(
        req: &ProviderRequest,
        parsed: &Self::Parsed,
        account: &ChannelAccount,
    ) -> Result<(), ChannelError>;
    /// What the request says, and the answer to give once that is durably stored.
    fn handle(
        req: &ProviderRequest,
        parsed: Self::Parsed,
        account: &ChannelAccount,
        now_ms: i64,
    ) -> Result<Handled, ChannelError>;
}

/// The facts of one provider request and the provider's answer.
pub struct Handled {
    /// For the location of the account that verified the request.
    pub facts: Vec<Fact>,
    /// Facts for other accounts of this provider that the request carries (one provider
    /// secret that several locations share signs entries for all of them), each with the key
    /// that finds its account. Each is filed under that account's location when that account
    /// holds the secret that verified the request; otherwise it is skipped and counted.
    pub routed: Vec<(RouteKey, Fact)>,
    /// A value the provider sends once (Mailgun's `token`): stored with the facts, and a
    /// request carrying one already stored is refused as a replay (403).
    pub nonce: Option<String>,
    pub reply: Response,
}
