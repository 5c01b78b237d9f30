//! `switchboard bench-relay`: the floor a gateway is measured against, HTTP in and HTTP out with
//! no storage; with `--sign`, the same two signatures a delivery carries.

use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;

use switchboard_events::headers;
use switchboard_events::standard::{self, WebhookSecret};

use crate::domain::time::{Clock, SystemClock};
use crate::keys::{SecretSource, SigningKeys};

/// Forwards the relay has in flight at most: Switchboard's default `dispatcher_concurrency`.
const RELAY_IN_FLIGHT: usize = 256;

struct Relay {
    client: reqwest::Client,
    target: String,
    in_flight: tokio::sync::Semaphore,
    signer: Option<RelaySigner>,
}

/// What the relay signs its posts with, as Switchboard's dispatcher does: the server's
/// Ed25519 key and a webhook's secret.
struct RelaySigner {
    keys: SigningKeys,
    secret: WebhookSecret,
    /// Where the key file lives while the relay runs.
    _dir: tempfile::TempDir,
}

impl RelaySigner {
    async fn new() -> anyhow::Result<RelaySigner> {
        let dir = tempfile::tempdir()?;
        let keys = SigningKeys::load_or_create(SecretSource::Dir(dir.path().to_owned())).await?;
        Ok(RelaySigner {
            keys,
            secret: WebhookSecret::from_key(&rand::random::<[u8; 24]>()),
            _dir: dir,
        })
    }

    /// The headers Switchboard signs a delivery of `body` with.
    fn headers(&self, body: &[u8]) -> [(&'static str, String); 4] {
        let id = crate::domain::ids::new_id();
        // Unix seconds, as the dispatcher takes them.
        let timestamp = SystemClock.now_ms() / 1000;
        let signature =
            standard::signature_header(std::slice::from_ref(&self.secret), &id, timestamp, body);
        [
            (headers::WEBHOOK_ID, id),
            (headers::WEBHOOK_TIMESTAMP, timestamp.to_string()),
            (headers::WEBHOOK_SIGNATURE, signature),
            (headers::GHL_SIGNATURE, self.keys.ed25519_signature(body)),
        ]
    }
}

/// `switchboard bench-relay`: answers every POST at once with an empty TwiML document and
/// posts its body on to `target` over a pooled keep-alive client, at most `RELAY_IN_FLIGHT`
/// at a time — the four HTTP handlings of Switchboard's path and nothing else, the most any
/// gateway on this HTTP stack could do. With `sign`, each post is signed as Switchboard signs
/// a delivery, once (a retry is signed again). A failed forward is tried again (three times
/// in all) and reported on stderr.
pub async fn relay(listen: &str, target: String, sign: bool) -> anyhow::Result<()> {
    async fn forward(
        State(relay): State<Arc<Relay>>,
        body: Bytes,
    ) -> impl axum::response::IntoResponse {
        tokio::spawn(async move {
            let Ok(_permit) = relay.in_flight.acquire().await else {
                return;
            };
            let mut error = None;
            for _ in 0..3 {
                let mut request = relay.client.post(&relay.target);
                for (name, value) in relay.signer.iter().flat_map(|s| s.headers(&body)) {
                    request = request.header(name, value);
                }
                let sent = request
                    .header(
                        axum::http::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(body.clone())
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status);
                match sent {
                    Ok(response) => {
                        let _ = response.bytes().await;
                        return;
                    }
                    Err(e) => error = Some(e),
                }
            }
            if let Some(e) = error {
                eprintln!("bench-relay: forwarding failed: {e}");
            }
        });
        (
            [(axum::http::header::CONTENT_TYPE, "text/xml")],
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>",
        )
    }
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let signer = if sign {
        Some(RelaySigner::new().await?)
    } else {
        None
    };
    let app = axum::Router::new()
        .route("/readyz", axum::routing::get(|| async { "ready" }))
        .fallback(post(forward))
        .with_state(Arc::new(Relay {
            client,
            target,
            in_flight: tokio::sync::Semaphore::new(RELAY_IN_FLIGHT),
            signer,
        }));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}
