//! `switchboard bench`: the end-to-end benchmark. It starts a Switchboard server (this same
//! binary, as a child process, so its memory and CPU are its own) on SQLite or PostgreSQL and
//! a subscriber sink on loopback, posts N signed Twilio webhooks at concurrency C (many
//! contacts, 100–600-byte bodies), waits until every one is delivered, and reports
//! throughput, latencies, the server's peak RSS and CPU time — and, as the ceiling, the same
//! load posted straight to the sink (what HTTP alone costs on this machine). It also measures
//! a relay that only receives each webhook and posts its body on to the sink: the same four
//! HTTP handlings as Switchboard's path, with no storage, parsing or signing; then the same
//! relay signing each post as Switchboard signs a delivery.
//!
//! This file holds the options, the report and the run; `processes` starts the server and the
//! relays, `relay` is the relay itself, `sink` the subscriber, `load` what is posted, `table`
//! the printed report; `hanging` is the variant with subscribers that never answer.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::channels::twilio::INBOUND_PATH as TWILIO_INBOUND_PATH;

mod hanging;
mod load;
mod processes;
mod relay;
mod sink;
mod table;

use load::{configure, post_all, relay_phase, twilio_requests};
use processes::{process_usage, start_server};
use sink::{start_sink, timed};

pub use hanging::{hanging_table, run_hanging, HangingReport, HangingRun};
pub use relay::relay;
pub use table::table;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
const AUTH_TOKEN: &str = "bench_auth_token_0123456789abcdef";
const BUSINESS_NUMBER: &str = "+14155550100";
/// The fewest posts the ceiling is measured with.
const CEILING_POSTS: usize = 50_000;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub messages: usize,
    pub concurrency: usize,
    /// Post at this many requests a second (open loop: a request's latency counts from when
    /// it was due, so falling behind shows); None: as fast as `concurrency` allows.
    pub rate: Option<f64>,
    /// None: embedded SQLite in a temporary directory.
    pub database_url: Option<String>,
    /// Extra `SWITCHBOARD_*` settings for the server.
    pub server_env: Vec<(String, String)>,
    /// List, by 50 ms of posting time, the requests whose ingest→delivery took longer than
    /// this many milliseconds: bursts of slow requests show as runs of full windows.
    pub slow_ms: Option<f64>,
    /// A command (and its arguments) to run the server under, such as a profiler; empty: none.
    /// The server is then stopped with SIGTERM instead of SIGKILL, so the command can finish.
    pub server_wrapper: Vec<String>,
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub store: String,
    pub messages: usize,
    pub concurrency: usize,
    /// The offered rate (`--rate`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    pub accepted_per_sec: f64,
    pub delivered_per_sec: f64,
    pub ingest_p50_ms: f64,
    pub ingest_p99_ms: f64,
    pub end_to_end_p50_ms: f64,
    pub end_to_end_p95_ms: f64,
    pub end_to_end_p99_ms: f64,
    pub server_peak_rss_mb: f64,
    pub server_cpu_seconds: f64,
    pub ceiling_per_sec: f64,
    pub delivered_share_of_ceiling: f64,
    /// The relay's delivered/s: HTTP in and HTTP out, nothing else.
    pub relay_per_sec: f64,
    /// The relay's user+system CPU seconds for the same N: what HTTP alone costs a gateway.
    pub relay_cpu_seconds: f64,
    pub relay_share_of_ceiling: f64,
    /// The same relay signing each post as Switchboard signs a delivery (Ed25519
    /// `x-ghl-signature` and the Standard Webhooks HMAC): the signing that the delivery
    /// contract requires, and still no parsing, verification or storage.
    pub signing_relay_per_sec: f64,
    pub signing_relay_cpu_seconds: f64,
    pub signing_relay_share_of_ceiling: f64,
    pub repeated_deliveries: usize,
    /// With `--slow-ms`: the 50 ms windows of posting time that held slow requests.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub slow_windows: Vec<SlowWindow>,
}

/// Requests posted in one 50 ms window of a run, when some of them were slow.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlowWindow {
    /// When the window starts, in seconds from the first post.
    pub at_s: f64,
    pub posted: usize,
    pub slow: usize,
    /// The slowest of them, ingest→delivery.
    pub max_ms: f64,
}

/// The width of a window of `slow_windows`.
const SLOW_WINDOW_SECS: f64 = 0.05;

/// `(posted at, ingest→delivery ms)` of each request, in windows of `SLOW_WINDOW_SECS`: those
/// that hold a request slower than `slow_ms`, in order.
fn slow_windows(requests: &[(f64, f64)], slow_ms: f64) -> Vec<SlowWindow> {
    let mut windows: std::collections::BTreeMap<u64, SlowWindow> = Default::default();
    for &(at, ms) in requests {
        let index = (at / SLOW_WINDOW_SECS) as u64;
        let window = windows.entry(index).or_insert(SlowWindow {
            at_s: index as f64 * SLOW_WINDOW_SECS,
            posted: 0,
            slow: 0,
            max_ms: 0.0,
        });
        window.posted += 1;
        if ms > slow_ms {
            window.slow += 1;
        }
        window.max_ms = window.max_ms.max(ms);
    }
    windows.into_values().filter(|w| w.slow > 0).collect()
}

/// The client that posts the load: keep-alive connections for `concurrency` requests at once.
fn load_client(concurrency: usize) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub async fn run(options: BenchOptions) -> anyhow::Result<BenchReport> {
    let n = options.messages;
    anyhow::ensure!(
        n > 0 && options.concurrency > 0,
        "messages and concurrency must be above 0"
    );
    anyhow::ensure!(
        options.rate.is_none_or(|r| r.is_finite() && r > 0.0),
        "rate must be above 0"
    );
    let (state, sink_url) = start_sink().await?;
    let client = load_client(options.concurrency)?;

    // The ceiling: ~500-byte JSON posts straight to the sink at the same concurrency; at
    // least CEILING_POSTS of them, so a short run still measures it steadily.
    let payload = format!(
        "{{\"type\":\"InboundMessage\",\"body\":\"{}\"}}",
        "y".repeat(460)
    );
    let ceiling_posts = n.max(CEILING_POSTS);
    let direct: Vec<_> = (0..ceiling_posts)
        .map(|_| {
            (
                payload.clone(),
                vec![("content-type", "application/json".to_owned())],
            )
        })
        .collect();
    let started = Instant::now();
    let (_, _, failed) = post_all(&client, &sink_url, direct, options.concurrency, None).await;
    let ceiling = ceiling_posts as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(failed == 0, "{failed} posts to the sink failed");
    state.reset();

    // Ports are held until their child starts: the relay phase opens many loopback
    // connections, and one of them could otherwise take the server's port.
    let reserve = || -> anyhow::Result<(std::net::TcpListener, u16)> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        Ok((listener, port))
    };
    let (server_listener, port) = reserve()?;
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("{base}{TWILIO_INBOUND_PATH}");
    let requests = twilio_requests(n, &url);

    // The relay: the same requests, received and posted on, nothing else; then signed too.
    let (relay_per_sec, relay_cpu) =
        relay_phase(false, &state, &client, &sink_url, &requests, &options).await?;
    let (signing_relay_per_sec, signing_relay_cpu) =
        relay_phase(true, &state, &client, &sink_url, &requests, &options).await?;

    drop(server_listener);
    let server = start_server(&options, port).await?;
    configure(&client, &base, &sink_url).await?;

    let started = Instant::now();
    let (mut ingest, sent, failed) =
        post_all(&client, &url, requests, options.concurrency, options.rate).await;
    let accepted_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(failed == 0, "{failed} provider requests were refused");

    state
        .wait_for(n, "events", |s| s.arrivals.lock().expect("sink lock").len())
        .await?;
    let unsigned = state.unsigned.load(Ordering::Relaxed);
    anyhow::ensure!(
        unsigned == 0,
        "{unsigned} of the server's deliveries were not signed"
    );
    let arrivals = state.arrivals.lock().expect("sink lock").clone();
    let delivered_secs = arrivals
        .values()
        .map(|t| t.duration_since(started).as_secs_f64())
        .fold(0.0, f64::max);
    let (peak_rss, cpu) = process_usage(server.child.id());
    drop(server);

    // Ingest → delivery: from when a message's request was sent to when its event arrived.
    let timed = timed(&arrivals, &sent, started);
    let slow_windows = options
        .slow_ms
        .map(|ms| slow_windows(&timed, ms))
        .unwrap_or_default();
    let mut end_to_end: Vec<f64> = timed.iter().map(|&(_, ms)| ms).collect();
    end_to_end.sort_by(f64::total_cmp);
    ingest.sort_by(f64::total_cmp);
    let delivered_per_sec = n as f64 / delivered_secs;
    Ok(BenchReport {
        store: if options.database_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
        .to_owned(),
        messages: n,
        concurrency: options.concurrency,
        rate: options.rate,
        accepted_per_sec: n as f64 / accepted_secs,
        delivered_per_sec,
        ingest_p50_ms: percentile(&ingest, 50.0),
        ingest_p99_ms: percentile(&ingest, 99.0),
        end_to_end_p50_ms: percentile(&end_to_end, 50.0),
        end_to_end_p95_ms: percentile(&end_to_end, 95.0),
        end_to_end_p99_ms: percentile(&end_to_end, 99.0),
        server_peak_rss_mb: peak_rss,
        server_cpu_seconds: cpu,
        ceiling_per_sec: ceiling,
        delivered_share_of_ceiling: delivered_per_sec / ceiling,
        relay_per_sec,
        relay_cpu_seconds: relay_cpu,
        relay_share_of_ceiling: relay_per_sec / ceiling,
        signing_relay_per_sec,
        signing_relay_cpu_seconds: signing_relay_cpu,
        signing_relay_share_of_ceiling: signing_relay_per_sec / ceiling,
        repeated_deliveries: state.total.load(Ordering::Relaxed).saturating_sub(n),
        slow_windows,
    })
}

#[cfg(test)]
mod tests {
    use super::slow_windows;

    #[test]
    fn slow_windows_hold_the_slow_requests_by_50_ms_of_posting() {
        // (posted at s, ingest→delivery ms)
        let requests = [
            (0.01, 3.0),
            (0.02, 30.0),
            (0.04, 5.0),
            (0.07, 4.0),
            (0.12, 40.0),
            (0.13, 25.0),
        ];
        let windows = slow_windows(&requests, 20.0);
        let got: Vec<(f64, usize, usize, f64)> = windows
            .iter()
            .map(|w| (w.at_s, w.posted, w.slow, w.max_ms))
            .collect();
        assert_eq!(got, [(0.0, 3, 1, 30.0), (0.1, 2, 2, 40.0)]);
        assert!(slow_windows(&requests, 50.0).is_empty());
    }
}
