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

use crate::config::Config;
use crate::dispatcher::{DispatchHandle, Dispatcher};
use crate::domain::time::{Clock, SystemClock};
use crate::keys::{self, SigningKeys};
use crate::media::MediaStore;
use crate::metrics::Metrics;
use crate::routes;
use crate::ssrf::TargetPolicy;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

/// What every handler shares.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub keys: Arc<SigningKeys>,
    pub admin_token_hash: [u8; 32],
    pub public_url: Option<String>,
    pub max_body_bytes: usize,
    pub lease: Duration,
    pub call_recording_wait: Duration,
    pub app_id: Option<Arc<str>>,
    pub media: Arc<MediaStore>,
    pub metrics: Arc<Metrics>,
    /// Where webhooks may point (checked again at every connection).
    pub targets: TargetPolicy,
    pub dispatch: DispatchHandle,
}

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    dispatcher: Dispatcher,
    local_addr: SocketAddr,
    // Held for the life of the process: one server per embedded database.
    _data_lock: File,
}

/// Open the embedded store, applying migrations, after taking the data directory's lock.
pub async fn open_store(config: &Config) -> anyhow::Result<(Arc<dyn Store>, File)> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let lock_path = config.data_dir.join("switchboard.lock");
    let lock =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "another switchboard process is using {} (lock held on {})",
            config.data_dir.display(),
            lock_path.display()
        )
    })?;
    let url = config.database_url();
    let store = SqliteStore::open(&url, config.sqlite_synchronous).await?;
    Ok((Arc::new(store), lock))
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Application> {
        let (store, data_lock) = open_store(&config).await?;
        // This process is the embedded database's only user: what a previous run had leased
        // (and may not have finished) is due again now.
        let released = store.release_leases().await?;
        if released > 0 {
            tracing::info!(
                released,
                "resuming deliveries left in flight by the previous run"
            );
        }
        let keys = Arc::new(SigningKeys::load_or_create(&config.data_dir)?);
        let admin_token = keys::admin_token(&config.data_dir, config.admin_token.as_deref())?;
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
        let state = Arc::new(AppState {
            store,
            clock,
            keys,
            admin_token_hash: Sha256::digest(admin_token.as_bytes()).into(),
            public_url: config.public_url.clone(),
            max_body_bytes: config.max_body_bytes,
            lease: config.delivery_lease,
            call_recording_wait: Duration::from_secs(config.call_recording_wait_seconds),
            app_id: config.app_id.as_deref().map(Arc::from),
            media: MediaStore::new(
                &config.data_dir,
                keys::attachment_url_key(&config.data_dir)?,
                config.attachment_url_ttl,
                config.max_attachment_bytes,
                targets.clone(),
            )?,
            metrics,
            targets,
            dispatch,
        });
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        Ok(Application {
            listener,
            router: routes::router(state),
            dispatcher,
            local_addr,
            _data_lock: data_lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve until Ctrl-C or SIGTERM.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serve until `shutdown` completes; in-flight requests finish first.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.local_addr, "switchboard listening");
        let dispatcher = tokio::spawn(self.dispatcher.run());
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("HTTP server");
        // Deliveries still in flight keep their leases and resume at the next start.
        dispatcher.abort();
        served
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
