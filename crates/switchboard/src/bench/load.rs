//! The load: the server configured (a location, a number, a webhook to the sink), signed
//! requests prepared ahead, posted at a concurrency or a rate, and the relays driven the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use serde_json::json;

use super::processes::{process_usage, start_relay};
use super::sink::Sink;
use super::{BenchOptions, ACCOUNT_SID, ADMIN_TOKEN, AUTH_TOKEN, BUSINESS_NUMBER};
use crate::channels::twilio::signature::{self, Algorithm};
use crate::channels::twilio::INBOUND_PATH as TWILIO_INBOUND_PATH;

pub(super) async fn configure(
    client: &reqwest::Client,
    base: &str,
    sink_url: &str,
) -> anyhow::Result<()> {
    let location: serde_json::Value = client
        .post(format!("{base}/v1/locations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "Bench" }))
        .send()
        .await?
        .json()
        .await?;
    let id = location["id"].as_str().context("location id")?;
    client
        .put(format!("{base}/v1/locations/{id}/channels/twilio"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN, "phoneNumbers": [BUSINESS_NUMBER] }))
        .send()
        .await?
        .error_for_status()?;
    client
        .post(format!("{base}/v1/webhooks"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "url": sink_url, "events": ["InboundMessage"] }))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// A request to post: its body and headers.
pub(super) type Request = (String, Vec<(&'static str, String)>);

/// Requests as Twilio sends them, signed, built before the clock starts.
pub(super) fn twilio_requests(n: usize, url: &str) -> Vec<Request> {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|i| {
            let sid = format!("SM{i:032}");
            let from = format!("+1212{:07}", i % 5000);
            let filler_len = rng.gen_range(100..=600usize);
            let text: String = format!("bench {i} ")
                .chars()
                .chain((0..filler_len).map(|k| if k % 7 == 6 { ' ' } else { 'x' }))
                .take(filler_len)
                .collect();
            let params: Vec<(String, String)> = [
                ("MessageSid", sid.as_str()),
                ("SmsMessageSid", sid.as_str()),
                ("AccountSid", ACCOUNT_SID),
                ("From", from.as_str()),
                ("To", BUSINESS_NUMBER),
                ("Body", text.as_str()),
                ("NumMedia", "0"),
                ("NumSegments", "1"),
                ("SmsStatus", "received"),
                ("ApiVersion", "2010-04-01"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let sig = signature::sign(Algorithm::HmacSha1, AUTH_TOKEN.as_bytes(), url, &params);
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&params)
                .finish();
            let headers = vec![
                (
                    "content-type",
                    "application/x-www-form-urlencoded".to_owned(),
                ),
                ("x-twilio-signature", sig),
            ];
            (body, headers)
        })
        .collect()
}

/// Post `requests` at `concurrency` (paced at `rate` a second if given); returns each
/// request's latency (ms), when each request (by index) was sent — or due, when paced — and
/// the failures.
pub(super) async fn post_all(
    client: &reqwest::Client,
    url: &str,
    requests: Vec<Request>,
    concurrency: usize,
    rate: Option<f64>,
) -> (Vec<f64>, HashMap<usize, Instant>, usize) {
    let begin = Instant::now();
    let tickets = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(Mutex::new(HashMap::with_capacity(requests.len())));
    let queue = Arc::new(Mutex::new(
        requests.into_iter().enumerate().collect::<Vec<_>>(),
    ));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            let (queue, latencies, failures) = (queue.clone(), latencies.clone(), failures.clone());
            let (sent, tickets) = (sent.clone(), tickets.clone());
            tokio::spawn(async move {
                loop {
                    let Some((i, (body, headers))) = queue.lock().expect("queue").pop() else {
                        return;
                    };
                    let started = match rate {
                        Some(rate) => {
                            let ticket = tickets.fetch_add(1, Ordering::Relaxed);
                            let due = begin + Duration::from_secs_f64(ticket as f64 / rate);
                            tokio::time::sleep_until(due.into()).await;
                            due
                        }
                        None => Instant::now(),
                    };
                    sent.lock().expect("sent").insert(i, started);
                    let mut request = client.post(&url).body(body);
                    for (name, value) in headers {
                        request = request.header(name, value);
                    }
                    match request.send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            latencies
                                .lock()
                                .expect("latencies")
                                .push(started.elapsed().as_secs_f64() * 1000.0);
                        }
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let latencies = std::mem::take(&mut *latencies.lock().expect("latencies"));
    let sent = std::mem::take(&mut *sent.lock().expect("sent"));
    (latencies, sent, failures.load(Ordering::Relaxed))
}

/// One relay phase: `requests` posted through a relay (signing each post when `sign`) until
/// the sink has them all; the relay's delivered/s and CPU seconds.
pub(super) async fn relay_phase(
    sign: bool,
    sink: &Sink,
    client: &reqwest::Client,
    sink_url: &str,
    requests: &[Request],
    options: &BenchOptions,
) -> anyhow::Result<(f64, f64)> {
    let n = requests.len();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let relay = start_relay(port, sink_url, sign).await?;
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}{TWILIO_INBOUND_PATH}");
    let (_, _, failed) = post_all(
        client,
        &url,
        requests.to_vec(),
        options.concurrency,
        options.rate,
    )
    .await;
    anyhow::ensure!(failed == 0, "{failed} posts to the relay failed");
    sink.wait_for(n, "posts", |s| s.total.load(Ordering::Relaxed))
        .await?;
    // Counted by kind, so a repeated post (a retried forward) cannot fail the check.
    if sign {
        let unsigned = sink.unsigned.load(Ordering::Relaxed);
        anyhow::ensure!(
            unsigned == 0,
            "{unsigned} of the signing relay's posts were not signed"
        );
    } else {
        let signed = sink.signed.load(Ordering::Relaxed);
        anyhow::ensure!(
            signed == 0,
            "{signed} of the plain relay's posts were signed"
        );
    }
    let last = sink.last.lock().expect("sink lock").unwrap_or(started);
    let per_sec = n as f64 / last.duration_since(started).as_secs_f64();
    let (_, cpu) = process_usage(relay.child.id());
    drop(relay);
    sink.reset();
    Ok((per_sec, cpu))
}
