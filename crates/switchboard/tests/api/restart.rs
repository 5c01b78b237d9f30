//! Durability: the real binary is killed with SIGKILL after it acknowledged a message, while
//! the delivery is in flight, and restarted; the delivery still arrives.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

async fn start_binary(data_dir: &std::path::Path, port: u16) -> Node {
    Node::start(
        data_dir,
        port,
        &[
            ("SWITCHBOARD_DELIVERY_TIMEOUT", "30s"),
            ("SWITCHBOARD_DELIVERY_LEASE", "60s"),
        ],
    )
    .await
}

#[tokio::test]
async fn acknowledged_message_is_delivered_after_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let receiver = TestReceiver::start().await;
    // The first attempt never gets an answer: the server dies with it in flight.
    receiver.script(&[Reply::Hang]);

    let mut server = start_binary(dir.path(), port).await;
    server.configure(&receiver).await;

    let ack = server.post_sms("SMdurable", "survive a crash").await;
    assert_eq!(ack.status(), 200);
    let first = receiver.wait_for(1, Duration::from_secs(10)).await;
    let before = server.get_json("/v1/events").await;
    assert_eq!(before["data"].as_array().unwrap().len(), 1);
    let cursor = before["next"].as_str().unwrap().to_owned();

    // SIGKILL: no shutdown code runs.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);

    let server = start_binary(dir.path(), port).await;
    let all = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(all[1].header("webhook-id"), first[0].header("webhook-id"));
    assert_eq!(all[1].body, first[0].body);
    let event = all[1].json();
    assert_eq!(event["body"], "survive a crash");

    // The restarted server knows it was delivered, and still treats a Twilio retry as known.
    let message_id = event["messageId"].as_str().unwrap();
    eventually(
        Duration::from_secs(5),
        "the delivery marked delivered",
        || async {
            let report = server
                .get_json(&format!("/v1/messages/{message_id}/deliveries"))
                .await;
            (report["data"][0]["status"] == "delivered").then_some(())
        },
    )
    .await;
    let retry = server.post_sms("SMdurable", "survive a crash").await;
    assert_eq!(retry.status(), 200);
    receiver.expect_exactly(2, Duration::from_millis(400)).await;

    // The events feed goes on where it was: the old event, then the new one, no gap, no repeat.
    let ack = server.post_sms("SMafter", "after the crash").await;
    assert_eq!(ack.status(), 200);
    let all = server.get_json("/v1/events").await;
    let bodies: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["survive a crash", "after the crash"]);
    let cursors: Vec<i64> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(cursors[0] < cursors[1]);
    let newer = server.get_json(&format!("/v1/events?after={cursor}")).await;
    assert_eq!(newer["data"].as_array().unwrap().len(), 1);
    assert_eq!(newer["data"][0]["event"]["body"], "after the crash");
}

#[tokio::test]
async fn serve_with_no_configuration_starts_and_answers_healthz() {
    // The README's first command, in an empty directory: defaults only (but a free port).
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .current_dir(dir.path())
        .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let healthy = answers_healthz(port).await;
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(healthy, "GET /healthz did not answer 200");
    let data = dir.path().join("switchboard-data");
    assert!(data.join("switchboard.db").exists());
    assert!(data.join("ed25519-private-key.pem").exists());
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    // The generated token is printed once.
    assert!(String::from_utf8_lossy(&out.stdout).contains(token.trim()));
}

/// A port already in use stops `serve` before it creates anything: no data directory, and no
/// admin token printed "once" by a start that then fails.
#[tokio::test]
async fn a_port_in_use_stops_the_start_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .current_dir(dir.path())
        .env("SWITCHBOARD_LISTEN", &address)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("binding {address}")), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("admin token"));
    assert!(!dir.path().join("switchboard-data").exists());
}

/// Whether a server on `port` answers `GET /healthz` with 200 within 10 s.
async fn answers_healthz(port: u16) -> bool {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            return r.status() == 200;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// `switchboard bench` with `args`, which must succeed: its output and its JSON line.
fn run_bench(args: &[&str]) -> (String, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    (stdout, json)
}

/// The benchmark from the README, small: it fails unless every event arrives.
#[test]
fn the_benchmark_runs_and_every_event_arrives() {
    // Every request takes longer than 0 ms: each window of posting time is listed, whole.
    let (stdout, json) = run_bench(&["--messages", "300", "--concurrency", "8", "--slow-ms", "0"]);
    assert_eq!(json["messages"], 300);
    let windows = json["slow_windows"].as_array().expect("slow windows");
    let posted: u64 = windows.iter().map(|w| w["posted"].as_u64().unwrap()).sum();
    assert_eq!(posted, 300, "{json}");
    assert!(windows.iter().all(|w| w["slow"] == w["posted"]), "{json}");
    assert!(stdout.contains("slow, posted at 0.00 s"), "{stdout}");
    assert!(json["delivered_per_sec"].as_f64().unwrap() > 0.0);
    // The relay's posts all arrived too (it fails otherwise) at a measured rate.
    assert!(json["relay_per_sec"].as_f64().unwrap() > 0.0);
    assert!(json["relay_cpu_seconds"].as_f64().is_some(), "{json}");
    assert!(stdout.contains("delivered/s"));
    assert!(stdout.contains("relay (HTTP in, out)/s"), "{stdout}");
    // And the signing relay's, every one of them signed (it fails otherwise).
    assert!(json["signing_relay_per_sec"].as_f64().unwrap() > 0.0);
    assert!(
        json["signing_relay_cpu_seconds"].as_f64().is_some(),
        "{json}"
    );
    assert!(stdout.contains("relay, signing/s"), "{stdout}");
}

/// `--hanging-webhooks`, small: both runs deliver every event to the healthy webhook (it fails
/// otherwise), the second with the hanging webhooks holding connections the server opened.
#[test]
fn the_benchmark_with_hanging_webhooks_compares_two_runs() {
    let (stdout, json) = run_bench(&[
        "--hanging-webhooks",
        "20",
        "--messages",
        "40",
        "--rate",
        "40",
    ]);
    assert_eq!(json["without"]["hanging_webhooks"], 0, "{json}");
    assert_eq!(json["with"]["hanging_webhooks"], 20, "{json}");
    assert_eq!(json["without"]["hanging_connections_peak"], 0, "{json}");
    // Every hanging webhook got its first attempt, each on a connection of its own.
    assert_eq!(json["with"]["hanging_connections_peak"], 20, "{json}");
    // The server held those 20 connections (its other descriptors vary with the load's own
    // connections, so the two runs are not compared).
    assert!(
        json["with"]["server_peak_open_fds"].as_u64().unwrap() > 20,
        "{json}"
    );
    for run in ["without", "with"] {
        assert!(
            json[run]["healthy_p99_ms"].as_f64().unwrap() > 0.0,
            "{json}"
        );
        assert!(
            json[run]["server_peak_rss_mb"].as_f64().unwrap() > 0.0,
            "{json}"
        );
    }
    assert!(json["p99_ratio"].as_f64().unwrap() > 0.0, "{json}");
    assert!(stdout.contains("healthy p99, with / without"), "{stdout}");
}

/// On PostgreSQL each of the two runs has a schema of its own in the database given, dropped
/// after it.
#[tokio::test]
async fn the_benchmark_with_hanging_webhooks_runs_on_postgresql() {
    let Some(base) = postgres_base_for_tools().await else {
        return;
    };
    let schemas = || async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&postgres_base_url())
            .await
            .unwrap();
        sqlx::query_scalar::<_, String>(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'switchboard\\_bench\\_%'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
    };
    let before = schemas().await;
    let (stdout, json) = tokio::task::spawn_blocking(move || {
        run_bench(&[
            "--hanging-webhooks",
            "10",
            "--messages",
            "20",
            "--rate",
            "40",
            "--database-url",
            &base,
        ])
    })
    .await
    .unwrap();
    assert_eq!(json["store"], "postgres", "{json}");
    assert_eq!(json["with"]["hanging_webhooks"], 10, "{json}");
    assert_eq!(json["with"]["hanging_connections_peak"], 10, "{json}");
    assert!(stdout.contains("healthy p99, with / without"), "{stdout}");
    let left: Vec<String> = schemas()
        .await
        .into_iter()
        .filter(|s| !before.contains(s))
        .collect();
    assert!(left.is_empty(), "the runs' schemas are dropped: {left:?}");
}

/// `--rate` paces the requests (open loop): never faster than offered, and every event arrives.
/// This run also puts the server under a wrapper (as one would a profiler), which must run it
/// and see it stop on SIGTERM.
#[test]
fn the_benchmark_paces_requests_at_the_offered_rate() {
    let dir = tempfile::tempdir().unwrap();
    let (script, marker) = (dir.path().join("wrap.sh"), dir.path().join("wrapped"));
    // Records its arguments beside itself, runs them, and on SIGTERM waits for the server and
    // records how it ended. The server's output goes elsewhere, so that a server left running
    // cannot keep the benchmark's output open.
    std::fs::write(
        &script,
        "marker=\"$(dirname \"$0\")/wrapped\"\n\
         echo \"$@\" > \"$marker\"\n\
         \"$@\" 2>/dev/null &\n\
         trap 'wait $!; echo stopped:$? >> \"$marker\"; exit 0' TERM\n\
         wait $!\n",
    )
    .unwrap();
    let wrapper = format!("sh {}", script.display());
    let (stdout, json) = run_bench(&[
        "--messages",
        "200",
        "--concurrency",
        "8",
        "--rate",
        "400",
        "--server-wrapper",
        &wrapper,
    ]);
    let wrapped = std::fs::read_to_string(&marker).unwrap();
    assert!(wrapped.contains(" serve"), "{wrapped}");
    // SIGTERM reached the server under the wrapper (sent to their process group), and the
    // server exited cleanly.
    assert!(wrapped.contains("stopped:0"), "{wrapped}");
    assert_eq!(json["rate"], 400.0);
    // The 200th request is due 199/400 s after the first: no faster than that.
    let accepted = json["accepted_per_sec"].as_f64().unwrap();
    assert!(accepted <= 200.0 / (199.0 / 400.0) * 1.001, "{accepted}/s");
    assert!(stdout.contains("offered at 400/s"), "{stdout}");
}

/// What the server commits reaches the SQLite database file itself within moments, not only
/// its write-ahead log: checkpoints run beside the writer, after group commits and, for the
/// other writes, at least every second. Without them, these few writes would stay in the log
/// until the writer's own threshold of 4,000 pages.
#[tokio::test]
async fn committed_writes_reach_the_database_file_while_the_server_runs() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    // The management API's writes are not group commits: only the periodic checkpoint copies
    // them.
    app.standard_setup(&receiver).await;
    let database = app.data_dir().join("switchboard.db");
    count_in_database_file(&database, "SELECT COUNT(*) FROM webhooks", 1).await;

    for i in 0..5 {
        let sid = format!("SMcheckpoint{i}");
        let params = sms_params(&sid, "into the file");
        assert_eq!(app.post_twilio(&params, AUTH_TOKEN).await.status(), 200);
    }
    receiver.wait_for(5, Duration::from_secs(10)).await;
    count_in_database_file(
        &database,
        "SELECT COUNT(*) FROM messages WHERE provider_message_id LIKE 'SM%'",
        5,
    )
    .await;
}

/// Wait until `count` reads `expected` in a copy of the database file alone, without its log,
/// read as it is.
async fn count_in_database_file(database: &std::path::Path, count: &str, expected: i64) {
    use sqlx::{Connection, SqliteConnection};

    let copies = tempfile::tempdir().unwrap();
    let mut attempt = 0;
    eventually(Duration::from_secs(10), count, || {
        attempt += 1;
        let copied = copies.path().join(format!("copy{attempt}.db"));
        async move {
            std::fs::copy(database, &copied).ok()?;
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&copied)
                .immutable(true);
            let mut conn = SqliteConnection::connect_with(&options).await.ok()?;
            // Until the schema itself is copied, there is no table to count.
            let n: i64 = sqlx::query_scalar(count).fetch_one(&mut conn).await.ok()?;
            (n == expected).then_some(())
        }
    })
    .await;
}

/// Started with a soft open-file limit of 256, as a service manager might, the server raises
/// it to the hard limit: each connection is a file descriptor.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn serve_raises_its_open_file_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new("sh")
        .args([
            "-c",
            "ulimit -Sn 256 && exec \"$0\" serve",
            env!("CARGO_BIN_EXE_switchboard"),
        ])
        .current_dir(dir.path())
        .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let healthy = answers_healthz(port).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(healthy, "GET /healthz did not answer 200");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_ne!(numbers[0], "256", "{line}");
    assert_eq!(numbers[0], numbers[1], "soft and hard limits: {line}");
}

/// A refused provider request leaves a warning in the log, with what the request held escaped;
/// a flood of them is logged ten lines a second, the rest counted in the next line.
#[tokio::test]
async fn refused_provider_requests_are_logged_within_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let node = Node::start_logging_to(
        &dir.path().join("data"),
        free_port(),
        &[],
        &[("SWITCHBOARD_LOG", "warn")],
        Stdio::from(log),
    )
    .await;
    let receiver = TestReceiver::start().await;
    node.configure(&receiver).await;
    let client = reqwest::Client::new();
    let url = format!(
        "{}{}",
        node.address,
        switchboard::channels::twilio::INBOUND_PATH
    );
    // A number nobody connected, with a line break in it: the 404 names it.
    let params = sms_params_for(
        "SMforged",
        "forged",
        "+1415555\nforged line",
        "AC99999999999999999999999999999999",
    );
    let forged: Vec<_> = (0..100)
        .map(|_| post_twilio_to(&client, &url, &params, "not the auth token"))
        .collect();
    for r in futures_util::future::join_all(forged).await {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let last = post_twilio_to(&client, &url, &sms_params("SMx", "x"), "not the auth token").await;
    assert_eq!(last.status(), 403);
    let lines = eventually(
        Duration::from_secs(5),
        "the last refusal in the log",
        || async {
            let text = std::fs::read_to_string(&log_path).unwrap();
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.contains("provider request refused"))
                .map(str::to_owned)
                .collect();
            lines
                .iter()
                .any(|l| l.contains("invalid_signature"))
                .then_some(lines)
        },
    )
    .await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !text.lines().any(|l| l.starts_with("forged line")),
        "{text}"
    );
    // 101 refusals within a few seconds: at most ten lines in each second (the log's
    // timestamps start `2026-12-06T16:06:08.719501Z`: the second is the first 19 characters).
    let mut per_second = std::collections::BTreeMap::<&str, usize>::new();
    for line in &lines {
        *per_second.entry(&line[..19]).or_default() += 1;
    }
    assert!(
        per_second.values().all(|n| *n <= 10) && lines.len() < 101,
        "lines per second: {per_second:?}\n{text}"
    );
    let first = &lines[0];
    assert!(
        first.contains("not_connected") && first.contains("WARN"),
        "{first}"
    );
    assert!(first.contains("\\nforged line"), "escaped: {first}");
    let not_logged: u64 = lines
        .iter()
        .map(|line| {
            line.split("not_logged=")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no not_logged count in {line}"))
        })
        .sum();
    assert_eq!(lines.len() as u64 + not_logged, 101, "{text}");
}

/// `simulate` posts to the server the configuration describes (environment or `--config`), and
/// signs over its `public_url`, as the README says of every command.
#[tokio::test]
async fn simulate_finds_the_server_from_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let public = "https://hooks.example.com/sb";
    let node = Node::start(
        &dir.path().join("data"),
        port,
        &[("SWITCHBOARD_PUBLIC_URL", public)],
    )
    .await;
    let receiver = TestReceiver::start().await;
    node.configure(&receiver).await;
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!("listen = \"0.0.0.0:{port}\"\npublic_url = \"{public}\"\n"),
    )
    .unwrap();
    let simulate = |how: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        match how {
            "environment" => {
                command
                    .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
                    .env("SWITCHBOARD_PUBLIC_URL", public);
            }
            _ => {
                command.arg("--config").arg(&config);
            }
        }
        command
            .args(["simulate", "twilio-sms", "--account-sid", ACCOUNT_SID])
            .args(["--auth-token", AUTH_TOKEN, "--from", CUSTOMER_NUMBER])
            .args(["--to", BUSINESS_NUMBER, "--body", how])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    for how in ["environment", "config file"] {
        let out = simulate(how);
        assert!(
            out.status.success(),
            "{how}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    let bodies: Vec<String> = got
        .iter()
        .map(|d| d.json()["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies, ["environment", "config file"]);
    drop(node);
}
