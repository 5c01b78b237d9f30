//! The SMTP listener: Switchboard as the MX of the domains locations claim. ESMTP with `SIZE`,
//! `8BITMIME`, `PIPELINING`, `SMTPUTF8`, `ENHANCEDSTATUSCODES` and, with a certificate,
//! `STARTTLS` (the protocol's parsing is `smtp-proto`'s). A recipient is accepted only when a
//! location claims its address or domain (never a relay); the mail goes through the ingest
//! service like every other route's (`provider` `smtp`), and `250` is sent only once it is
//! stored, `451 4.3.0` on a storage fault so that the sender retries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;

use crate::channels::{Listener, ListenerContext};
use crate::ingest::Ingest;
use crate::serve::limits::{BodyBudget, ConnectionSlots, Limits};

mod auth;
mod session;
mod tls;

/// The event's `provider` for mail received by the SMTP listener.
pub const VIA: &str = "smtp";

/// What every conversation shares.
struct Shared {
    ingest: Ingest,
    /// Signed media links start with it.
    base: String,
    hostname: String,
    max_bytes: usize,
    max_recipients: usize,
    max_line: usize,
    idle: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Mail bytes being received, across every connection and per client address.
    budget: Arc<BodyBudget>,
    /// SPF, DKIM and DMARC.
    auth: auth::Authenticator,
    /// Refuse mail that fails DMARC under a reject policy.
    refuse_dmarc_rejects: bool,
}

pub struct SmtpListener {
    listener: tokio::net::TcpListener,
    slots: Arc<ConnectionSlots>,
    shared: Arc<Shared>,
}

/// The listener `smtp_listen` asks for, bound; none when it is not set.
pub fn listeners(context: &ListenerContext<'_>) -> anyhow::Result<Vec<Box<dyn Listener>>> {
    let config = context.config;
    let Some(address) = &config.smtp_listen else {
        return Ok(vec![]);
    };
    let tls = match (&config.smtp_tls_cert, &config.smtp_tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let bound = std::net::TcpListener::bind(address)
        .with_context(|| format!("binding smtp_listen {address}"))?;
    bound.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(bound)?;
    let hostname = config.smtp_hostname.clone().unwrap_or_else(|| {
        config
            .public_url
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok())
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "localhost".to_owned())
    });
    let auth = auth::Authenticator::new(&config.smtp_dns_servers, &hostname)?;
    if config.public_url.is_none() {
        tracing::warn!(
            base = context.base,
            "smtp_listen is set but public_url is not: links to mail attachments start with the listen address (there is no request to take the host from); set public_url"
        );
    }
    let slots = ConnectionSlots::new(Limits {
        max_connections: config.smtp_max_connections,
        max_connections_per_client: config.smtp_max_connections_per_client,
        max_buffered_body_bytes: config.max_buffered_body_bytes,
        max_buffered_body_bytes_per_client: config.max_buffered_body_bytes_per_client,
        trusted_proxies: crate::routes::host::TrustedProxies(vec![]),
    });
    let shared = Arc::new(Shared {
        ingest: context.ingest.clone(),
        base: context.base.to_owned(),
        hostname,
        max_bytes: config.max_email_bytes,
        max_recipients: config.smtp_max_recipients,
        max_line: config.smtp_max_line_bytes,
        idle: config.smtp_idle_timeout,
        tls,
        budget: BodyBudget::new(
            config.max_buffered_body_bytes,
            config.max_buffered_body_bytes_per_client,
        ),
        auth,
        refuse_dmarc_rejects: config.smtp_refuse_dmarc_rejects,
    });
    Ok(vec![Box::new(SmtpListener {
        listener,
        slots,
        shared,
    })])
}

impl Listener for SmtpListener {
    fn name(&self) -> &'static str {
        VIA
    }

    fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    fn run(self: Box<Self>) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(self.accept_forever())
    }
}

impl SmtpListener {
    async fn accept_forever(self: Box<Self>) {
        tracing::info!(address = %self.local_addr(), tls = self.shared.tls.is_some(), "smtp listening");
        loop {
            let (mut stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "smtp: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Pipelined answers go out when written, not after a delayed ACK.
            let _ = stream.set_nodelay(true);
            let Some(slot) = self.slots.admit(peer) else {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        stream.write_all(b"421 4.7.0 Too many connections, try again later\r\n"),
                    )
                    .await;
                });
                continue;
            };
            let shared = self.shared.clone();
            tokio::spawn(async move {
                session::serve(&shared, stream, peer, slot.client()).await;
                drop(slot);
            });
        }
    }
}
