//! The sink: the subscriber the benchmark delivers to. It checks both signatures of every post,
//! counts repeats by `webhook-id`, and times each message from its post to its delivery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use axum::extract::State;
use axum::http::StatusCode;

use switchboard_events::headers;

/// The sink: records when each message (by the number in its body) arrived, and when the
/// last post of any kind did.
#[derive(Default)]
pub(super) struct Sink {
    pub(super) arrivals: Mutex<HashMap<usize, Instant>>,
    pub(super) last: Mutex<Option<Instant>>,
    pub(super) total: AtomicUsize,
    /// Posts that carried both delivery signatures, and posts that did not.
    pub(super) signed: AtomicUsize,
    pub(super) unsigned: AtomicUsize,
}

impl Sink {
    pub(super) fn reset(&self) {
        self.arrivals.lock().expect("sink lock").clear();
        *self.last.lock().expect("sink lock") = None;
        self.total.store(0, Ordering::Relaxed);
        self.signed.store(0, Ordering::Relaxed);
        self.unsigned.store(0, Ordering::Relaxed);
    }

    /// Wait until `count` reaches `n` (at most 300 s); `what` names what is counted.
    pub(super) async fn wait_for(
        &self,
        n: usize,
        what: &str,
        count: impl Fn(&Sink) -> usize,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let arrived = count(self);
            if arrived >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {arrived} of {n} {what} arrived within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Start the sink on a loopback port: its state and the URL to deliver to.
pub(super) async fn start_sink() -> anyhow::Result<(Arc<Sink>, String)> {
    let state = Arc::new(Sink::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(sink))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((state, url))
}

/// `(posted at, in seconds from `started`; ingest→delivery ms)` of each message that arrived,
/// from when each was sent (`sent`, by message number).
pub(super) fn timed(
    arrivals: &HashMap<usize, Instant>,
    sent: &HashMap<usize, Instant>,
    started: Instant,
) -> Vec<(f64, f64)> {
    arrivals
        .iter()
        .filter_map(|(i, t)| {
            sent.get(i).map(|s| {
                (
                    s.saturating_duration_since(started).as_secs_f64(),
                    t.saturating_duration_since(*s).as_secs_f64() * 1000.0,
                )
            })
        })
        .collect()
}

async fn sink(State(sink): State<Arc<Sink>>, request: axum::extract::Request) -> StatusCode {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST;
    };
    let now = Instant::now();
    let signed = parts.headers.contains_key(headers::GHL_SIGNATURE)
        && parts.headers.contains_key(headers::WEBHOOK_SIGNATURE);
    if signed { &sink.signed } else { &sink.unsigned }.fetch_add(1, Ordering::Relaxed);
    // The latest arrival is kept before the post is counted, so whoever sees the count sees
    // its time.
    {
        let mut last = sink.last.lock().expect("sink lock");
        *last = (*last).max(Some(now));
    }
    sink.total.fetch_add(1, Ordering::Relaxed);
    // The number follows "bench " in the message body.
    if let Some(i) = std::str::from_utf8(&body)
        .ok()
        .and_then(|t| t.split("\"body\":\"bench ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok())
    {
        sink.arrivals
            .lock()
            .expect("sink lock")
            .entry(i)
            .or_insert(now);
    }
    StatusCode::OK
}
