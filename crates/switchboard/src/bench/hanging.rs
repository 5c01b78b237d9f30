//! `switchboard bench --hanging-webhooks N`: what N subscribers that accept a connection and
//! never answer cost a healthy one. The same load runs twice, each time on a fresh server: once
//! with only the healthy webhook, once with N more webhooks at a sink that takes every
//! connection and never answers, made after one message was delivered to the healthy one. For
//! each run it reports the healthy webhook's ingest→delivery latencies (every message, not a
//! sample), the server's peak RSS and its peak of open file descriptors (read from /proc every
//! 50 ms), and how many connections the hanging sink held at most.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncReadExt;

use super::load::{configure, post_all, twilio_requests};
use super::processes::{process_usage, start_server};
use super::sink::{start_sink, timed, Sink};
use super::{load_client, percentile, BenchOptions, ADMIN_TOKEN};
use crate::channels::twilio::INBOUND_PATH as TWILIO_INBOUND_PATH;

/// One of the two runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HangingRun {
    pub hanging_webhooks: usize,
    pub accepted_per_sec: f64,
    pub ingest_p50_ms: f64,
    pub ingest_p99_ms: f64,
    /// The healthy webhook's ingest→delivery.
    pub healthy_p50_ms: f64,
    pub healthy_p95_ms: f64,
    pub healthy_p99_ms: f64,
    pub healthy_max_ms: f64,
    pub server_peak_rss_mb: f64,
    pub server_peak_open_fds: usize,
    pub server_cpu_seconds: f64,
    /// Connections the hanging sink held open at once, at most.
    pub hanging_connections_peak: usize,
    /// The slowest messages to the healthy webhook: (posted at, in seconds from the first
    /// post; ingest→delivery ms), slowest first.
    pub slowest: Vec<(f64, f64)>,
}

/// How many of the slowest messages a run lists.
const SLOWEST: usize = 5;

/// What `--hanging-webhooks` measured: the run without them, then the run with them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HangingReport {
    pub store: String,
    pub messages: usize,
    pub concurrency: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    pub without: HangingRun,
    pub with: HangingRun,
    /// The healthy webhook's p99 with the hanging ones over its p99 without them.
    pub p99_ratio: f64,
}

/// The sink that never answers: it takes every connection and reads (and drops) whatever
/// comes until the client gives up. Counts the connections open now and at most.
#[derive(Default)]
struct Hang {
    open: AtomicUsize,
    peak: AtomicUsize,
}

/// On a thread and runtime of its own: hanging subscribers are other machines, and on the
/// benchmark's runtime accepting a thousand connections at once delayed the healthy sink's
/// answers (and so the latencies measured) by tens of milliseconds.
async fn hanging_sink() -> anyhow::Result<(String, Arc<Hang>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let url = format!("http://{}", listener.local_addr()?);
    let hang = Arc::new(Hang::default());
    let counts = hang.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registered with the sink's own runtime, here, so that a failure is reported.
    let listener = {
        let _inside = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    std::thread::Builder::new()
        .name("hanging-sink".into())
        .spawn(move || {
            runtime.block_on(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let counts = counts.clone();
                    let open = counts.open.fetch_add(1, Ordering::Relaxed) + 1;
                    counts.peak.fetch_max(open, Ordering::Relaxed);
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        while let Ok(1..) = conn.read(&mut buf).await {}
                        counts.open.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            })
        })?;
    Ok((url, hang))
}

/// The open file descriptors of a process, from /proc.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

pub async fn run_hanging(options: BenchOptions, hanging: usize) -> anyhow::Result<HangingReport> {
    anyhow::ensure!(
        options.messages > 0 && options.concurrency > 0,
        "messages and concurrency must be above 0"
    );
    let (state, sink_url) = start_sink().await?;
    let (hang_url, hang) = hanging_sink().await?;
    let client = load_client(options.concurrency)?;

    // Each run needs an empty store: on PostgreSQL a schema of its own in the database given,
    // dropped after the run (the benchmark empties nothing it was given).
    let (run_options, schema) = own_store(&options).await?;
    let without = one_run(&run_options, &client, &state, &sink_url, None).await;
    drop_store(&options, schema).await;
    let without = without?;
    state.reset();
    let (run_options, schema) = own_store(&options).await?;
    let with = one_run(
        &run_options,
        &client,
        &state,
        &sink_url,
        Some((&hang_url, hanging, &hang)),
    )
    .await;
    drop_store(&options, schema).await;
    let with = with?;
    Ok(HangingReport {
        store: if options.database_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
        .to_owned(),
        messages: options.messages,
        concurrency: options.concurrency,
        rate: options.rate,
        p99_ratio: with.healthy_p99_ms / without.healthy_p99_ms,
        without,
        with,
    })
}

/// One message delivered to the healthy webhook before the hanging ones are made, in both
/// runs: the healthy subscriber is an established one, which has answered before (as after a
/// restart, its stored answer says so). A webhook made in the same moment as a thousand that
/// hang is tried together with them, in no order the server could choose better: its first
/// delivery waits for its place among a thousand connections opened (see performance.md).
async fn warm_up(
    client: &reqwest::Client,
    url: &str,
    state: &Sink,
    measured: usize,
) -> anyhow::Result<()> {
    // Numbered after the measured messages, so it is neither one of them nor a duplicate.
    let warm = twilio_requests(measured + 1, url).split_off(measured);
    let (_, _, failed) = post_all(client, url, warm, 1, None).await;
    anyhow::ensure!(failed == 0, "the warm-up message was refused");
    state
        .wait_for(1, "warm-up deliveries", |s| s.total.load(Ordering::Relaxed))
        .await?;
    state.reset();
    Ok(())
}

/// Wait until the server's dispatcher has read all `webhooks` (each shows in `/metrics`):
/// the load starts on a server whose webhooks were made before it, as in production, not in
/// the middle of reading a thousand new ones (25 ms of the dispatcher's loop, measured).
async fn settled(client: &reqwest::Client, base: &str, webhooks: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let read = text
            .lines()
            .filter(|l| l.starts_with("switchboard_webhook_probation{"))
            .count();
        if read >= webhooks {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server read {read} of {webhooks} webhooks in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The options for one run with a store of its own: on PostgreSQL, a new schema in the
/// database of `--database-url` (its name is returned, to drop after the run).
async fn own_store(options: &BenchOptions) -> anyhow::Result<(BenchOptions, Option<String>)> {
    use anyhow::Context as _;
    use sqlx::Connection as _;
    let Some(base) = &options.database_url else {
        return Ok((options.clone(), None));
    };
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .context("connecting to --database-url")?;
    let schema = format!(
        "switchboard_bench_{}",
        crate::domain::ids::new_id().to_lowercase()
    );
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(&mut conn)
        .await
        .context("creating a schema for the run (the user needs CREATE on the database)")?;
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut run = options.clone();
    run.database_url = Some(format!("{base}{sep}options[search_path]={schema}"));
    Ok((run, Some(schema)))
}

/// Drop the schema `own_store` made; a failure is reported and the run's figures kept.
async fn drop_store(options: &BenchOptions, schema: Option<String>) {
    use sqlx::Connection as _;
    let (Some(base), Some(schema)) = (&options.database_url, schema) else {
        return;
    };
    let dropped = async {
        let mut conn = sqlx::PgConnection::connect(base).await?;
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&mut conn)
            .await
    };
    if let Err(e) = dropped.await {
        eprintln!("dropping the benchmark's schema {schema} failed: {e}");
    }
}

/// One run on a fresh server: the healthy webhook, and with `hanging` N webhooks at the
/// hanging sink.
async fn one_run(
    options: &BenchOptions,
    client: &reqwest::Client,
    state: &Sink,
    sink_url: &str,
    hanging: Option<(&str, usize, &Hang)>,
) -> anyhow::Result<HangingRun> {
    let n = options.messages;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("{base}{TWILIO_INBOUND_PATH}");
    let server = start_server(options, port).await?;
    configure(client, &base, sink_url).await?;
    warm_up(client, &url, state, n).await?;
    let count = hanging.map_or(0, |(_, count, _)| count);
    if let Some((hang_url, count, _)) = hanging {
        for i in 0..count {
            client
                .post(format!("{base}/v1/webhooks"))
                .bearer_auth(ADMIN_TOKEN)
                .json(
                    &json!({ "url": format!("{hang_url}/hang/{i}"), "events": ["InboundMessage"] }),
                )
                .send()
                .await?
                .error_for_status()?;
        }
    }
    if hanging.is_some() {
        settled(client, &base, count + 1).await?;
    }
    if let Some((_, _, hang)) = hanging {
        hang.peak
            .store(hang.open.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    let requests = twilio_requests(n, &url);

    // The server's open descriptors, sampled until the run ends.
    let pid = server.child.id();
    let peak_fds = Arc::new(AtomicUsize::new(open_fds(pid)));
    let sampler = {
        let peak_fds = peak_fds.clone();
        tokio::spawn(async move {
            loop {
                peak_fds.fetch_max(open_fds(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    let (mut ingest, sent, failed) =
        post_all(client, &url, requests, options.concurrency, options.rate).await;
    let accepted_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(failed == 0, "{failed} provider requests were refused");
    state
        .wait_for(n, "events", |s| s.arrivals.lock().expect("sink lock").len())
        .await?;
    sampler.abort();
    let (peak_rss, cpu) = process_usage(pid);
    drop(server);

    let arrivals = state.arrivals.lock().expect("sink lock").clone();
    // (posted at, ingest→delivery ms) of every message.
    let mut timed = timed(&arrivals, &sent, started);
    timed.sort_by(|a, b| a.1.total_cmp(&b.1));
    let healthy: Vec<f64> = timed.iter().map(|&(_, ms)| ms).collect();
    let slowest = timed.iter().rev().take(SLOWEST).copied().collect();
    ingest.sort_by(f64::total_cmp);
    Ok(HangingRun {
        hanging_webhooks: count,
        accepted_per_sec: n as f64 / accepted_secs,
        ingest_p50_ms: percentile(&ingest, 50.0),
        ingest_p99_ms: percentile(&ingest, 99.0),
        healthy_p50_ms: percentile(&healthy, 50.0),
        healthy_p95_ms: percentile(&healthy, 95.0),
        healthy_p99_ms: percentile(&healthy, 99.0),
        healthy_max_ms: healthy.last().copied().unwrap_or(0.0),
        server_peak_rss_mb: peak_rss,
        server_peak_open_fds: peak_fds.load(Ordering::Relaxed),
        server_cpu_seconds: cpu,
        hanging_connections_peak: hanging.map_or(0, |(_, _, h)| h.peak.load(Ordering::Relaxed)),
        slowest,
    })
}

/// One cell of the table: a run's figure, formatted.
type Cell = fn(&HangingRun) -> String;

/// The two runs side by side, for people.
pub fn hanging_table(r: &HangingReport) -> String {
    let mut table = format!(
        "store                         {}\n\
         messages × concurrency        {} × {}{}\n\
         {:<30}{:>12}{:>12}",
        r.store,
        r.messages,
        r.concurrency,
        r.rate
            .map(|rate| format!(", offered at {rate:.0}/s"))
            .unwrap_or_default(),
        "hanging webhooks",
        r.without.hanging_webhooks,
        r.with.hanging_webhooks,
    );
    let rows: [(&str, Cell); 11] = [
        ("accepted/s", |x| format!("{:.0}", x.accepted_per_sec)),
        ("ingest p50 (ms)", |x| format!("{:.2}", x.ingest_p50_ms)),
        ("ingest p99 (ms)", |x| format!("{:.2}", x.ingest_p99_ms)),
        ("healthy p50 (ms)", |x| format!("{:.1}", x.healthy_p50_ms)),
        ("healthy p95 (ms)", |x| format!("{:.1}", x.healthy_p95_ms)),
        ("healthy p99 (ms)", |x| format!("{:.1}", x.healthy_p99_ms)),
        ("healthy max (ms)", |x| format!("{:.1}", x.healthy_max_ms)),
        ("server peak RSS (MiB)", |x| {
            format!("{:.1}", x.server_peak_rss_mb)
        }),
        ("server open fds, peak", |x| {
            x.server_peak_open_fds.to_string()
        }),
        ("server CPU (s)", |x| format!("{:.2}", x.server_cpu_seconds)),
        ("hanging connections, peak", |x| {
            x.hanging_connections_peak.to_string()
        }),
    ];
    for (name, value) in rows {
        let _ = write!(
            table,
            "\n{name:<30}{:>12}{:>12}",
            value(&r.without),
            value(&r.with)
        );
    }
    let _ = write!(
        table,
        "\nhealthy p99, with / without   {:.2} ×",
        r.p99_ratio
    );
    table
}
