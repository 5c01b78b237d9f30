//! Building and running the application: `Application::build(config)` opens the store, loads
//! the keys, binds the listener (port 0 in tests) and prepares the dispatcher;
//! `run_until_stopped()` serves HTTP and runs the dispatcher until a shutdown signal.

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::config::{Config, Role};
use crate::dispatcher::{DispatchHandle, Dispatcher};
use crate::domain::time::{Clock, SystemClock};
use crate::ingest::Ingest;
use crate::keys::{self, SecretSource, SigningKeys};
use crate::media::MediaStore;
use crate::metrics::Metrics;
use crate::routes;
use crate::serve;
use crate::ssrf::TargetPolicy;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

/// What every handler shares.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub keys: Arc<SigningKeys>,
    pub admin_token_hash: [u8; 32],
    /// When set, `/metrics` needs this bearer token.
    pub metrics_token_hash: Option<[u8; 32]>,
    pub public_url: Option<String>,
    /// Proxies whose `X-Forwarded-Proto` / `X-Forwarded-Host` count.
    pub trusted_proxies: crate::routes::host::TrustedProxies,
    pub max_body_bytes: usize,
    /// The body limit of mail routes.
    pub max_email_bytes: usize,
    pub lease: Duration,
    pub media: Arc<MediaStore>,
    pub metrics: Arc<Metrics>,
    /// Where webhooks may point (checked again at every connection).
    pub targets: TargetPolicy,
    pub dispatch: DispatchHandle,
    /// From a provider request to a stored message: every receiver of provider traffic uses it.
    pub ingest: Ingest,
}

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    /// None on an API-only node.
    dispatcher: Option<Dispatcher>,
    local_addr: SocketAddr,
    timeouts: serve::Timeouts,
    limits: serve::limits::Limits,
    /// The channels' own servers (the SMTP listener), bound.
    listeners: Vec<Box<dyn crate::channels::Listener>>,
    // Held for the life of the process: one server per embedded database.
    _data_lock: Option<File>,
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Open the store named by the configuration, applying migrations. The embedded store first
/// takes the data directory's lock (one process per SQLite file).
pub async fn open_store(config: &Config) -> anyhow::Result<(Arc<dyn Store>, Option<File>)> {
    crate::files::private_dir(&config.data_dir)?;
    let url = config.database_url();
    if is_postgres(&url) {
        let store = PostgresStore::open(&url, config.database_max_connections).await?;
        return Ok((Arc::new(store), None));
    }
    check_writable(&config.data_dir)?;
    crate::files::restrict_tree(&config.data_dir)?;
    // Created 0600 before SQLite opens it: its journals then get the same mode.
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .map(|p| p.split('?').next().unwrap_or(p))
    {
        if !path.is_empty() && !path.starts_with(':') {
            crate::files::private_file(std::path::Path::new(path))?;
        }
    }
    let lock_path = config.data_dir.join("switchboard.lock");
    crate::files::private_file(&lock_path)?;
    let lock = File::options()
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "another switchboard process is using {} (lock held on {})",
            config.data_dir.display(),
            lock_path.display()
        )
    })?;
    let store =
        SqliteStore::open(&url, config.sqlite_synchronous, config.sqlite_busy_timeout).await?;
    Ok((Arc::new(store), Some(lock)))
}

/// File descriptors kept for the database, outbound deliveries (those of webhooks on probation
/// too) and media downloads, whatever the connections take.
fn descriptor_reserve(config: &Config) -> usize {
    config.dispatcher_concurrency * (1 + crate::dispatcher::PROBATION_FACTOR)
        + config.database_max_connections as usize
        + 64
}

/// `max_connections`, lowered to what the open-file limit leaves after the reserve.
fn connection_cap(config: &Config) -> usize {
    let limit = rlimit::Resource::NOFILE.get().map_or(1024, |(soft, _)| {
        usize::try_from(soft).unwrap_or(usize::MAX)
    });
    let room = limit.saturating_sub(descriptor_reserve(config)).max(16);
    if room < config.max_connections {
        tracing::warn!(
            max_connections = config.max_connections,
            open_file_limit = limit,
            kept = room,
            "max_connections lowered to fit the open-file limit, with {} descriptors kept for the database and deliveries",
            descriptor_reserve(config)
        );
    }
    room.min(config.max_connections)
}

/// The space the embedded store needs free in the data directory to start.
const START_FREE_BYTES: usize = 1024 * 1024;

/// A start on a full disk or a read-only data directory fails at once, naming the directory,
/// rather than later with every request answered 503: the data directory must take a write
/// of [`START_FREE_BYTES`] (written, synced and removed).
fn check_writable(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let probe = data_dir.join(".write-check");
    let written = File::create(&probe).and_then(|mut file| {
        file.write_all(&vec![0_u8; START_FREE_BYTES])?;
        file.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    written.with_context(|| {
        format!(
            "the data directory {} cannot take a write of {} MiB (the embedded store needs that much free to start)",
            data_dir.display(),
            START_FREE_BYTES / (1024 * 1024)
        )
    })
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Application> {
        // First: a port in use stops the start before anything is created (the data directory,
        // the admin token printed once).
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let (store, data_lock) = open_store(&config).await?;
        if store.embedded() {
            // This process is the embedded database's only user: what a previous run had
            // leased (and may not have finished) is due again now.
            let released = store.release_leases().await?;
            if released > 0 {
                tracing::info!(
                    released,
                    "resuming deliveries left in flight by the previous run"
                );
            }
        }
        // Embedded: files in the data directory. Shared database: rows in it, so every node
        // signs with the same keys and accepts the same admin token.
        let secrets = if store.embedded() {
            SecretSource::Dir(config.data_dir.clone())
        } else {
            SecretSource::Database(store.clone())
        };
        let keys = Arc::new(SigningKeys::load_or_create(secrets.clone()).await?);
        let admin_token = keys::admin_token(&secrets, config.admin_token.as_deref()).await?;
        let targets = TargetPolicy {
            allow_private: config.allow_private_targets,
            allowed_networks: vec![],
            overrides: Arc::new(config.dns_overrides.clone()),
        };
        let metrics = Arc::new(Metrics::default());
        let (dispatcher, dispatch) = Dispatcher::new(
            &config,
            store.clone(),
            clock.clone(),
            keys.clone(),
            metrics.clone(),
            targets.clone(),
        )?;
        // This node sends deliveries itself (role `all`); otherwise it leaves them to the
        // dispatchers.
        let sends = config.role != Role::Api;
        let media = MediaStore::new(
            &config.data_dir,
            keys::attachment_url_key(&secrets).await?,
            config.attachment_url_ttl,
            config.max_attachment_bytes,
            targets.clone(),
            crate::credential_hosts::CredentialHosts::new(config.credential_hosts.clone()),
        )?;
        let ingest = Ingest {
            store: store.clone(),
            clock: clock.clone(),
            media: media.clone(),
            metrics: metrics.clone(),
            dispatch: dispatch.clone(),
            app_id: config.app_id.as_deref().map(Arc::from),
            lease: config.delivery_lease,
            dispatch_here: sends,
            call_recording_wait: Duration::from_secs(config.call_recording_wait_seconds),
            mail_flood_cap: (config.max_mails_per_conversation_per_minute > 0)
                .then_some(config.max_mails_per_conversation_per_minute),
        };
        let state = Arc::new(AppState {
            store,
            clock,
            keys,
            admin_token_hash: Sha256::digest(admin_token.as_bytes()).into(),
            metrics_token_hash: config
                .metrics_token
                .as_deref()
                .map(|t| Sha256::digest(t.as_bytes()).into()),
            public_url: config.public_url.clone(),
            trusted_proxies: crate::routes::host::TrustedProxies(config.trusted_proxies.clone()),
            max_body_bytes: config.max_body_bytes,
            max_email_bytes: config.max_email_bytes,
            lease: config.delivery_lease,
            media,
            metrics,
            targets,
            dispatch,
            ingest,
        });
        let local_addr = listener.local_addr()?;
        if config.public_url.is_none() && !local_addr.ip().is_loopback() {
            tracing::warn!(
                listen = %local_addr,
                "public_url is not set: provider signatures are checked against a URL rebuilt from each request's Host header; set public_url to the URL providers call"
            );
        }
        if config.metrics_token.is_none() && !local_addr.ip().is_loopback() {
            tracing::warn!(
                listen = %local_addr,
                "metrics_token is not set: anyone who reaches this address can read /metrics (queue depths, webhook ids, request counts); set metrics_token"
            );
        }
        let mut listeners = vec![];
        if config.role != Role::Dispatcher {
            let base = config
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{local_addr}"));
            let context = crate::channels::ListenerContext {
                config: &config,
                ingest: &state.ingest,
                base: base.trim_end_matches('/'),
            };
            for channel in crate::channels::CHANNELS {
                listeners.extend(channel.listeners(&context)?);
            }
        }
        let router = match config.role {
            Role::Dispatcher => routes::health_router(state),
            Role::Api | Role::All => routes::router(state),
        };
        Ok(Application {
            listener,
            router,
            dispatcher: sends.then_some(dispatcher),
            local_addr,
            timeouts: serve::Timeouts {
                request: config.request_timeout,
                header: config.header_timeout,
                write: config.write_timeout,
                shutdown: config.shutdown_timeout,
            },
            limits: serve::limits::Limits {
                max_connections: connection_cap(&config),
                max_connections_per_client: config.max_connections_per_client,
                max_buffered_body_bytes: config.max_buffered_body_bytes,
                max_buffered_body_bytes_per_client: config.max_buffered_body_bytes_per_client,
                trusted_proxies: crate::routes::host::TrustedProxies(
                    config.trusted_proxies.clone(),
                ),
            },
            listeners,
            _data_lock: data_lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of a channel's own server by its protocol (`smtp`), when it runs.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name() == name)
            .map(|l| l.local_addr())
    }

    /// Serve until Ctrl-C or SIGTERM.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serve until `shutdown` completes; requests in progress get `shutdown_timeout` to finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.local_addr, "switchboard listening");
        let dispatcher = self.dispatcher.map(|d| tokio::spawn(d.run()));
        let listeners: Vec<_> = self
            .listeners
            .into_iter()
            .map(|l| tokio::spawn(l.run()))
            .collect();
        serve::serve(
            self.listener,
            self.router,
            self.timeouts,
            self.limits,
            shutdown,
        )
        .await;
        // A conversation cut off here has been acknowledged nothing it was not stored for.
        for listener in listeners {
            listener.abort();
        }
        // Deliveries still in flight keep their leases and resume at the next start.
        if let Some(dispatcher) = dispatcher {
            dispatcher.abort();
        }
        Ok(())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
