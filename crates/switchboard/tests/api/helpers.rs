//! Test harness: the real server on a random loopback port with a fresh SQLite file, real
//! HTTP subscribers on loopback whose answers can be scripted, and Twilio requests signed
//! exactly as Twilio signs them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};
use switchboard::channels::twilio::signature::{self, Algorithm};
use switchboard::channels::twilio::INBOUND_PATH as TWILIO_INBOUND_PATH;
use switchboard::{Application, Config};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const ACCOUNT_SID: &str = "AC33333333333333333333333333333333";
pub const AUTH_TOKEN: &str = "test_auth_token_0123456789abcdef";
pub const BUSINESS_NUMBER: &str = "+14155550100";
pub const CUSTOMER_NUMBER: &str = "+12125550199";

/// Configuration for tests: loopback targets allowed, short retry schedule, fast polling.
pub fn test_config(data_dir: &std::path::Path) -> Config {
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".into();
    config.data_dir = data_dir.to_path_buf();
    config.admin_token = Some(ADMIN_TOKEN.into());
    config.allow_private_targets = true;
    config.retry_schedule = vec![Duration::from_millis(200), Duration::from_millis(200)];
    config.retry_jitter = 0.0;
    config.poll_interval = Duration::from_millis(50);
    config.delivery_timeout = Duration::from_secs(2);
    config.delivery_lease = Duration::from_secs(5);
    config
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// The PostgreSQL database (with its schema) the app stores in; None: the embedded
    /// SQLite file under its data directory (`sqlite_path`).
    pub database_url: Option<String>,
    /// The SMTP listener's address (host:port), when `smtp_listen` is set.
    pub smtp: Option<String>,
    _dir: tempfile::TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(
        adjust,
        std::sync::Arc::new(switchboard::domain::time::SystemClock),
    )
    .await
}

/// A server on a `ManualClock` that starts at the current time: schedules (retries, breakers,
/// retention) move only when the test advances the clock, so no test sleeps through them.
pub async fn spawn_app_on_manual_clock(
    adjust: impl FnOnce(&mut Config),
) -> (TestApp, switchboard::domain::time::ManualClock) {
    use switchboard::domain::time::{Clock, ManualClock, SystemClock};
    let clock = ManualClock::new(SystemClock.now_ms());
    let app = spawn_app_on(adjust, std::sync::Arc::new(clock.clone())).await;
    (app, clock)
}

/// Milliseconds since the epoch of an ISO-8601 time the API wrote.
pub fn iso_ms(iso: &Value) -> i64 {
    let t = humantime::parse_rfc3339(iso.as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn spawn_app_on(
    adjust: impl FnOnce(&mut Config),
    clock: std::sync::Arc<dyn switchboard::domain::time::Clock>,
) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = switchboard::telemetry::init("debug");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    if backend() == Backend::Postgres {
        config.database_url = Some(
            fresh_postgres_schema()
                .await
                .expect("on_store checked that PostgreSQL is reachable"),
        );
    }
    adjust(&mut config);
    let database_url = config.database_url.clone();
    let app = Application::build_with_clock(config, clock)
        .await
        .expect("app builds");
    let address = format!("http://{}", app.local_addr());
    let smtp = app.listener_addr("smtp").map(|a| a.to_string());
    tokio::spawn(app.run_until(std::future::pending()));
    TestApp {
        address,
        client: reqwest::Client::new(),
        database_url,
        smtp,
        _dir: dir,
    }
}

impl TestApp {
    /// The embedded database's file (when `database_url` is None).
    pub fn sqlite_path(&self) -> std::path::PathBuf {
        self._dir.path().join("switchboard.db")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// The server's data directory (its SQLite file, when on SQLite).
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// GET an admin route that must succeed, as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        get_json(&self.client, &self.address, path).await
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
    }

    pub async fn admin_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> reqwest::Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Every event stored so far, from the events feed (`GET /v1/events`), in order.
    pub async fn events(&self) -> Vec<Value> {
        read_events(&self.client, &self.address, "0".into(), 1000)
            .await
            .0
    }

    /// Assert that exactly `n` events are stored. Unlike a quiet window at a receiver,
    /// this cannot pass because a late delivery had not arrived yet: an event the server
    /// accepted is in the feed when its 200 is sent.
    pub async fn expect_events(&self, n: usize) -> Vec<Value> {
        let events = self.events().await;
        assert_eq!(
            events.len(),
            n,
            "expected exactly {n} stored events, the feed holds: {:#?}",
            events
                .iter()
                .map(|e| format!("{} {}", e["type"], e["messageId"]))
                .collect::<Vec<_>>()
        );
        events
    }

    /// `POST /v1/webhooks/{id}/{action}` (`enable`, `disable`) with an empty body.
    pub async fn webhook_action(&self, id: &str, action: &str) -> reqwest::Response {
        self.admin_send(
            reqwest::Method::POST,
            &format!("/v1/webhooks/{id}/{action}"),
            json!({}),
        )
        .await
    }

    pub async fn create_location(&self, name: &str) -> String {
        let r = self
            .admin_send(
                reqwest::Method::POST,
                "/v1/locations",
                json!({ "name": name }),
            )
            .await;
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn connect_twilio(&self, location_id: &str, numbers: &[&str]) -> reqwest::Response {
        self.admin_send(
            reqwest::Method::PUT,
            &format!("/v1/locations/{location_id}/channels/twilio"),
            json!({ "accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN, "phoneNumbers": numbers }),
        )
        .await
    }

    /// A location with the business number connected and one webhook to `receiver`.
    /// Returns (location id, webhook secret).
    pub async fn standard_setup(&self, receiver: &TestReceiver) -> (String, String) {
        let location_id = self.create_location("Acme Dental").await;
        assert_eq!(
            self.connect_twilio(&location_id, &[BUSINESS_NUMBER])
                .await
                .status(),
            200
        );
        let r = self
            .admin_send(
                reqwest::Method::POST,
                "/v1/webhooks",
                json!({ "url": receiver.url, "events": ["InboundMessage"] }),
            )
            .await;
        assert_eq!(r.status(), 201);
        let secret = r.json::<Value>().await.unwrap()["secret"]
            .as_str()
            .unwrap()
            .to_owned();
        (location_id, secret)
    }

    /// POST a Twilio Messaging webhook signed with `token` over the URL Twilio would call.
    pub async fn post_twilio(&self, params: &[(&str, &str)], token: &str) -> reqwest::Response {
        self.post_twilio_path(TWILIO_INBOUND_PATH, params, token)
            .await
    }

    /// POST Twilio Messaging webhooks all at once (each signed with `token`); their statuses.
    pub async fn post_twilio_concurrently(
        &self,
        requests: Vec<Vec<(String, String)>>,
        token: &str,
    ) -> Vec<u16> {
        let url = self.url(TWILIO_INBOUND_PATH);
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|params| {
                let (client, url, token) = (self.client.clone(), url.clone(), token.to_owned());
                tokio::spawn(async move {
                    let params: Vec<(&str, &str)> = params
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    post_twilio_to(&client, &url, &params, &token)
                        .await
                        .status()
                        .as_u16()
                })
            })
            .collect();
        let mut statuses = Vec::with_capacity(tasks.len());
        for task in tasks {
            statuses.push(task.await.expect("the request task"));
        }
        statuses
    }

    /// POST a Twilio webhook to `path`, signed with `token`.
    pub async fn post_twilio_path(
        &self,
        path: &str,
        params: &[(&str, &str)],
        token: &str,
    ) -> reqwest::Response {
        post_twilio_to(&self.client, &self.url(path), params, token).await
    }
}

pub async fn post_twilio_to(
    client: &reqwest::Client,
    url: &str,
    params: &[(&str, &str)],
    token: &str,
) -> reqwest::Response {
    let (body, sig) = signed_twilio_form(url, params, token);
    client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A Twilio form body and its `X-Twilio-Signature` for `url`, as Twilio would send them.
pub fn signed_twilio_form(url: &str, params: &[(&str, &str)], token: &str) -> (String, String) {
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sig = signature::sign(Algorithm::HmacSha1, token.as_bytes(), url, &owned);
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    (body, sig)
}

/// Form parameters as owned pairs, as `post_twilio_concurrently` takes them.
pub fn owned_params(params: Vec<(&str, &str)>) -> Vec<(String, String)> {
    params
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A well-formed Twilio SID (two letters and 32 hexadecimal digits, as Switchboard requires)
/// for a test's label: the label itself when it is one, else its two-letter prefix and 32
/// hexadecimal digits derived from the whole label, so each label names one SID.
pub fn twilio_sid(label: &str) -> String {
    use sha2::Digest;
    if label.len() == 34 && label[2..].bytes().all(|b| b.is_ascii_hexdigit()) {
        return label.to_owned();
    }
    let digest = sha2::Sha256::digest(label.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}{hex}", &label[..2])
}

/// [`twilio_sid`] for the life of the test, as the `&str` the parameter lists hold.
pub fn sid_str(label: &str) -> &'static str {
    Box::leak(twilio_sid(label).into_boxed_str())
}

/// [`sms_params`] with the number called (`To`) and the account (`AccountSid`) replaced:
/// a request for a number or account that may not be connected.
pub fn sms_params_for<'a>(
    message_sid: &'a str,
    body: &'a str,
    to: &'a str,
    account_sid: &'a str,
) -> Vec<(&'a str, &'a str)> {
    sms_params(message_sid, body)
        .into_iter()
        .map(|(k, v)| match k {
            "To" => (k, to),
            "AccountSid" => (k, account_sid),
            _ => (k, v),
        })
        .collect()
}

/// The fields of a real inbound SMS, as Twilio posts them (`message_sid` a SID or a label for
/// one, see [`twilio_sid`]).
pub fn sms_params<'a>(message_sid: &'a str, body: &'a str) -> Vec<(&'a str, &'a str)> {
    let message_sid = sid_str(message_sid);
    vec![
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("SmsMessageSid", message_sid),
        ("NumMedia", "0"),
        ("ToCity", "SAN FRANCISCO"),
        ("FromZip", "10001"),
        ("SmsSid", message_sid),
        ("FromState", "NY"),
        ("SmsStatus", "received"),
        ("FromCity", "NEW YORK"),
        ("Body", body),
        ("FromCountry", "US"),
        ("To", BUSINESS_NUMBER),
        ("ToZip", "94105"),
        ("NumSegments", "1"),
        ("MessageSid", message_sid),
        ("AccountSid", ACCOUNT_SID),
        ("From", CUSTOMER_NUMBER),
        ("ApiVersion", "2010-04-01"),
    ]
}

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    /// A status with one header (`Retry-After`, `Location`).
    WithHeader(u16, &'static str, &'static str),
    /// Never answer (the sender times out or is killed).
    Hang,
    /// A status with a body of these bytes.
    Body(u16, &'static [u8]),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: std::time::Instant,
    /// What the receiver answered.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap().to_str().unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct ReceiverState {
    script: Mutex<VecDeque<Reply>>,
    /// Bodies containing the text are answered with the status, this many times.
    fail_when: Mutex<Vec<(String, u16, usize)>>,
    delay: Mutex<Duration>,
    concurrent: std::sync::atomic::AtomicUsize,
    max_concurrent: std::sync::atomic::AtomicUsize,
    received: Mutex<Vec<Received>>,
    notify: Notify,
}

/// A subscriber: a real HTTP server on loopback recording every request. It answers from
/// its script in order, then 200.
pub struct TestReceiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

impl TestReceiver {
    pub async fn start() -> TestReceiver {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> TestReceiver {
        let state = Arc::new(ReceiverState::default());
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestReceiver {
            url: format!("http://{addr}/hook"),
            state,
        }
    }

    pub fn script(&self, replies: &[Reply]) {
        self.state
            .script
            .lock()
            .unwrap()
            .extend(replies.iter().copied());
    }

    /// Answer `status` to the next `times` requests whose body contains `text`.
    pub fn fail_when(&self, text: &str, status: u16, times: usize) {
        self.state
            .fail_when
            .lock()
            .unwrap()
            .push((text.to_owned(), status, times));
    }

    /// Forget every `fail_when` rule: answer from the script, then 200.
    pub fn clear_failures(&self) {
        self.state.fail_when.lock().unwrap().clear();
    }

    /// Take this long over every answer.
    pub fn slow(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// The most requests that were being answered at the same time.
    pub fn max_concurrent(&self) -> usize {
        self.state
            .max_concurrent
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Wait until at least `n` requests arrived (panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "expected {n} deliveries, got {} within {timeout:?}",
                    self.received().len()
                );
            }
        }
    }

    /// Assert that exactly `n` requests arrive and no more within `quiet`.
    pub async fn expect_exactly(&self, n: usize, quiet: Duration) -> Vec<Received> {
        if n > 0 {
            self.wait_for(n, Duration::from_secs(10)).await;
        }
        tokio::time::sleep(quiet).await;
        let got = self.received();
        assert_eq!(got.len(), n, "expected exactly {n} deliveries");
        got
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use std::sync::atomic::Ordering::SeqCst;
    let now = state.concurrent.fetch_add(1, SeqCst) + 1;
    state.max_concurrent.fetch_max(now, SeqCst);
    let text = String::from_utf8_lossy(&body).into_owned();
    let matched = {
        let mut rules = state.fail_when.lock().unwrap();
        rules
            .iter_mut()
            .find(|(t, _, n)| *n > 0 && text.contains(t.as_str()))
            .map(|rule| {
                rule.2 -= 1;
                Reply::Status(rule.1)
            })
    };
    let reply = matched
        .or_else(|| state.script.lock().unwrap().pop_front())
        .unwrap_or(Reply::Status(200));
    let status = match reply {
        Reply::Status(code) | Reply::WithHeader(code, _, _) | Reply::Body(code, _) => code,
        Reply::Hang => 0,
    };
    state.received.lock().unwrap().push(Received {
        headers,
        body,
        at: std::time::Instant::now(),
        status,
    });
    state.notify.notify_waiters();
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    state.concurrent.fetch_sub(1, SeqCst);
    match reply {
        Reply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Reply::WithHeader(code, name, value) => {
            (StatusCode::from_u16(code).unwrap(), [(name, value)]).into_response()
        }
        Reply::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Reply::Body(code, bytes) => (StatusCode::from_u16(code).unwrap(), bytes).into_response(),
    }
}

pub use crate::skips::skip;

/// Whether the delivery's `webhook-signature` verifies with `secret`, by this project's own
/// verifier (`switchboard_events::standard`). The third-party check is
/// [`verify_with_reference_library`].
pub fn signed_with(delivery: &Received, secret: &str) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    switchboard_events::standard::verify(
        &switchboard_events::standard::WebhookSecret::parse(secret).unwrap(),
        delivery.header("webhook-id"),
        delivery.header("webhook-timestamp"),
        delivery.header("webhook-signature"),
        &delivery.body,
        now,
        300,
    )
    .is_ok()
}

/// a verifier this project did not write. `None` when python3 or the library is missing.
pub fn verify_with_reference_library(
    secret: &str,
    delivery: &Received,
) -> Option<Result<(), String>> {
    use std::process::Command;
    const SCRIPT: &str = "import sys\nfrom standardwebhooks.webhooks import Webhook\nsecret, msg_id, ts, sig = sys.argv[1:5]\nWebhook(secret).verify(sys.stdin.buffer.read(), {'webhook-id': msg_id, 'webhook-timestamp': ts, 'webhook-signature': sig})\nprint('verified')\n";
    let probe = Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    let out = run_with_stdin(
        Command::new("python3").args([
            "-c",
            SCRIPT,
            secret,
            delivery.header("webhook-id"),
            delivery.header("webhook-timestamp"),
            delivery.header("webhook-signature"),
        ]),
        &delivery.body,
    )?;
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

/// Verify a delivery's `x-ghl-signature` (and `x-wh-signature` when present, with the RSA key)
/// with HighLevel's official Node SDK
/// (`tests/verifiers`, installed by `npm install --prefix crates/switchboard/tests/verifiers`).
/// `None` when node or the SDK is missing.
pub fn verify_with_highlevel_sdk(
    public_key_pem: &str,
    rsa_public_key_pem: Option<&str>,
    client_id: &str,
    delivery: &Received,
) -> Option<Result<(), String>> {
    use std::process::Command;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verifiers");
    if !dir.join("node_modules/@gohighlevel/api-client").exists() {
        return None;
    }
    let out = run_with_stdin(
        Command::new("node")
            .arg(dir.join("ghl-verify.js"))
            .current_dir(&dir)
            .env("GHL_PUBLIC_KEY", public_key_pem)
            .env("GHL_SIGNATURE", delivery.header("x-ghl-signature"))
            .env("GHL_CLIENT_ID", client_id)
            .env("GHL_RSA_PUBLIC_KEY", rsa_public_key_pem.unwrap_or_default())
            .env(
                "GHL_WH_SIGNATURE",
                delivery
                    .headers
                    .get("x-wh-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default(),
            ),
        &delivery.body,
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(if out.status.success() && text.contains("verified") {
        Ok(())
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    })
}

/// The store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

tokio::task_local! {
    static BACKEND: Backend;
}

/// The store of the test running on this task (SQLite outside `on_store`).
pub fn backend() -> Backend {
    BACKEND.try_with(|b| *b).unwrap_or(Backend::Sqlite)
}

/// The PostgreSQL the tests use: `SWITCHBOARD_TEST_POSTGRES_URL`, by default the local server's
/// `test` database.
pub fn postgres_base_url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Run a test on one store. PostgreSQL that cannot be reached skips the test with a message,
/// or fails it when `CI=true`.
pub async fn on_store(backend: Backend, test: impl std::future::Future<Output = ()>) {
    if backend == Backend::Postgres {
        if let Err(why) = postgres_reachable().await {
            skip(&format!(
                "PostgreSQL is not reachable at {} ({why}); set SWITCHBOARD_TEST_POSTGRES_URL",
                postgres_base_url()
            ));
            return;
        }
    }
    BACKEND.scope(backend, test).await
}

async fn postgres_reachable() -> Result<(), String> {
    use sqlx::Connection;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::PgConnection::connect(&postgres_base_url()),
    )
    .await
    .map_err(|_| "connecting timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    // Once per test process: drop the schemas of test runs over an hour old.
    static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    CLEANED
        .get_or_init(|| async {
            let cutoff = unix_now() - 3600;
            let old: Vec<String> =
                sqlx::query_scalar("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'sbt\\_%'")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap_or_default();
            for schema in old {
                let born: i64 = schema
                    .split('_')
                    .nth(1)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                if born < cutoff {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .execute(&mut conn)
                        .await;
                }
            }
        })
        .await;
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A new, empty schema for one test (or one multi-node cluster); returns the URL that uses it.
/// A fresh PostgreSQL schema for tests that start nodes of their own on it, or `None` when the
/// test is skipped (see [`skip`]) for want of PostgreSQL.
pub async fn postgres_schema_for_nodes() -> Option<String> {
    let mut url = None;
    on_store(Backend::Postgres, async {
        url = Some(fresh_postgres_schema().await.expect("a fresh schema"));
    })
    .await;
    url
}

/// The PostgreSQL database the tests use, for a tool that makes schemas of its own in it, or
/// `None` when the test is skipped (see [`skip`]) for want of PostgreSQL.
pub async fn postgres_base_for_tools() -> Option<String> {
    let mut url = None;
    on_store(Backend::Postgres, async {
        url = Some(postgres_base_url());
    })
    .await;
    url
}

pub async fn fresh_postgres_schema() -> Result<String, String> {
    use sqlx::Connection;
    let base = postgres_base_url();
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .map_err(|e| e.to_string())?;
    let schema = format!(
        "sbt_{}_{}",
        unix_now(),
        switchboard::domain::ids::new_id().to_lowercase()
    );
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let sep = if base.contains('?') { '&' } else { '?' };
    // Named after the schema: a test can tell its server's connections apart from those of
    // the other tests in the same database (`pg_stat_activity.application_name`).
    Ok(format!(
        "{base}{sep}options[search_path]={schema}&application_name={schema}"
    ))
}

/// The real `switchboard` binary, serving on a loopback port; killed when dropped.
pub struct Node {
    pub child: std::process::Child,
    pub address: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Node {
    /// POST a signed Twilio SMS to the node's inbound route, as Twilio would.
    pub async fn post_sms(&self, message_sid: &str, body: &str) -> reqwest::Response {
        let url = format!("{}{TWILIO_INBOUND_PATH}", self.address);
        post_twilio_to(
            &reqwest::Client::new(),
            &url,
            &sms_params(message_sid, body),
            AUTH_TOKEN,
        )
        .await
    }

    /// GET an admin route that must succeed, as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        get_json(&reqwest::Client::new(), &self.address, path).await
    }

    /// A location with the business number on Twilio and one webhook to `receiver`; the
    /// webhook's id.
    pub async fn configure(&self, receiver: &TestReceiver) -> String {
        connect_location(
            &reqwest::Client::new(),
            &self.address,
            ADMIN_TOKEN,
            json!({}),
        )
        .await;
        self.add_webhook(&receiver.url).await
    }

    /// One more webhook, for `InboundMessage` to `url`; its id.
    pub async fn add_webhook(&self, url: &str) -> String {
        let r = admin_request(
            &reqwest::Client::new(),
            &self.address,
            ADMIN_TOKEN,
            reqwest::Method::POST,
            "/v1/webhooks",
            json!({ "url": url, "events": ["InboundMessage"] }),
        )
        .await;
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Start `switchboard serve` with the test admin token, loopback targets allowed, fast
    /// polling and `env` on top; wait until `/healthz` answers.
    pub async fn start<V: AsRef<std::ffi::OsStr>>(
        data_dir: &std::path::Path,
        port: u16,
        env: &[(&str, V)],
    ) -> Node {
        Self::start_with_args(data_dir, port, &[], env).await
    }

    /// As [`Node::start`], with more arguments after `serve` (e.g. `--config FILE`).
    pub async fn start_with_args<V: AsRef<std::ffi::OsStr>>(
        data_dir: &std::path::Path,
        port: u16,
        args: &[&std::ffi::OsStr],
        env: &[(&str, V)],
    ) -> Node {
        Self::start_logging_to(data_dir, port, args, env, std::process::Stdio::null()).await
    }

    /// As [`Node::start_with_args`], with the server's log (its standard output) to `log`.
    pub async fn start_logging_to<V: AsRef<std::ffi::OsStr>>(
        data_dir: &std::path::Path,
        port: u16,
        args: &[&std::ffi::OsStr],
        env: &[(&str, V)],
        log: std::process::Stdio,
    ) -> Node {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command
            .arg("serve")
            .args(args)
            .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("SWITCHBOARD_DATA_DIR", data_dir)
            .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SWITCHBOARD_ALLOW_PRIVATE_TARGETS", "true")
            .env("SWITCHBOARD_POLL_INTERVAL", "50ms")
            .env("SWITCHBOARD_LOG", "warn")
            .stdout(log)
            .stderr(std::process::Stdio::inherit());
        for (name, value) in env {
            command.env(name, value);
        }
        // Killed on drop, also when the wait below panics.
        let node = Node {
            child: command.spawn().expect("the switchboard binary starts"),
            address: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = client.get(format!("{}/healthz", node.address)).send().await {
                if r.status() == 200 {
                    return node;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("switchboard did not answer /healthz on port {port}");
    }
}

/// The events after the cursor `after` on the server at `address`, following the cursor in pages
/// of `limit`, in order; and the last cursor.
pub async fn read_events(
    client: &reqwest::Client,
    address: &str,
    mut after: String,
    limit: u32,
) -> (Vec<Value>, String) {
    let mut events = Vec::new();
    loop {
        let path = format!("/v1/events?after={after}&limit={limit}");
        let page = get_json(client, address, &path).await;
        let data = page["data"].as_array().expect("data");
        if data.is_empty() {
            return (events, after);
        }
        events.extend(data.iter().map(|item| item["event"].clone()));
        after = page["next"].as_str().expect("next").to_owned();
    }
}

/// An admin request with `token` to the server at `address`.
pub async fn admin_request(
    client: &reqwest::Client,
    address: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> reqwest::Response {
    client
        .request(method, format!("{address}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A new location on the server at `address` with the business number on the test's Twilio
/// account, `extra` merged into the connection (e.g. `signingKeys`); its id.
pub async fn connect_location(
    client: &reqwest::Client,
    address: &str,
    token: &str,
    extra: Value,
) -> String {
    let location: Value = admin_request(
        client,
        address,
        token,
        reqwest::Method::POST,
        "/v1/locations",
        json!({ "name": "Node" }),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = location["id"].as_str().unwrap().to_owned();
    let mut channel = json!({ "accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN, "phoneNumbers": [BUSINESS_NUMBER] });
    if let (Some(channel), Some(extra)) = (channel.as_object_mut(), extra.as_object()) {
        channel.extend(extra.clone());
    }
    let r = admin_request(
        client,
        address,
        token,
        reqwest::Method::PUT,
        &format!("/v1/locations/{id}/channels/twilio"),
        channel,
    )
    .await;
    assert_eq!(r.status(), 200);
    id
}

/// The Prometheus text of the server at `address`.
pub async fn get_metrics(client: &reqwest::Client, address: &str) -> String {
    client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// GET an admin route of the server at `address` that must succeed, as JSON.
pub async fn get_json(client: &reqwest::Client, address: &str, path: &str) -> Value {
    let r = client
        .get(format!("{address}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// Poll `check` every 50 ms until it returns Some, or fail after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run `command` with `input` on its standard input; `None` when it cannot be started.
/// `python3` with `args`, `input` on its stdin, off the runtime's thread (the server under
/// test runs on it); `None` when python3 cannot be started.
pub async fn python(args: Vec<std::ffi::OsString>, input: Vec<u8>) -> Option<std::process::Output> {
    tokio::task::spawn_blocking(move || {
        run_with_stdin(std::process::Command::new("python3").args(args), &input)
    })
    .await
    .unwrap()
}

fn run_with_stdin(
    command: &mut std::process::Command,
    input: &[u8],
) -> Option<std::process::Output> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take().unwrap().write_all(input).unwrap();
    Some(child.wait_with_output().unwrap())
}

/// An inbound SMS from the customer to the business, as a channel would hand it to the store.
pub fn new_sms(provider: &'static str, sid: &str, body: &str) -> switchboard::domain::NewMessage {
    use switchboard::domain::{ContactIdentity, NewMessage, PhoneNumber};
    use switchboard_events::{Direction, MessageType};
    NewMessage {
        provider,
        provider_message_id: sid.into(),
        direction: Direction::Inbound,
        message_type: MessageType::Sms,
        status: "delivered".into(),
        body: Some(body.into()),
        content_type: Some("text/plain".into()),
        attachments: vec![],
        contact: ContactIdentity::phone(&PhoneNumber::parse(CUSTOMER_NUMBER).unwrap()),
        other_identities: vec![],
        contact_name: None,
        from: Some(CUSTOMER_NUMBER.into()),
        to: Some(BUSINESS_NUMBER.into()),
        user_id: None,
        call: None,
        email: None,
        received_at_ms: 2,
    }
}
