//! Clients that connect and then send too little: each is cut off after `request_timeout`
//! without holding up anyone else, and none of them keeps the server from stopping.

use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::channels::twilio::INBOUND_PATH as TWILIO_INBOUND_PATH;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

async fn connect(address: &str) -> TcpStream {
    TcpStream::connect(address.trim_start_matches("http://"))
        .await
        .expect("the server accepts a connection")
}

/// Everything the server sends until it closes the connection; fails when the connection is
/// still open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        // A reset ends the connection as well as a close does.
        while let Ok(n @ 1..) = stream.read(&mut chunk).await {
            received.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection is still open after {within:?}"
    );
    String::from_utf8_lossy(&received).into_owned()
}

/// One whole response (its head and a `content-length` body), leaving the connection open.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if body.len() >= length {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("the response arrives")
            .unwrap();
        assert!(n > 0, "closed before the whole response");
        received.extend_from_slice(&chunk[..n]);
    }
}

/// Timers fire at their deadline or later; this much earlier is measuring noise.
const SLACK: Duration = Duration::from_millis(50);

/// Connect and send the head of a signed Twilio POST with `Expect: 100-continue`; once the
/// handler asks for the body (`100 Continue`: the request is in progress), send the body's first
/// half. The connection, and the half not sent.
async fn half_a_request(address: &str, message_sid: &str, body: &str) -> (TcpStream, Vec<u8>) {
    let url = format!("{address}{TWILIO_INBOUND_PATH}");
    let (form, signature) = signed_twilio_form(&url, &sms_params(message_sid, body), AUTH_TOKEN);
    let head = format!(
        "POST {TWILIO_INBOUND_PATH} HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: {signature}\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        address.trim_start_matches("http://"),
        form.len()
    );
    let mut stream = connect(address).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    let continue_line = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut got = vec![0u8; continue_line.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut got))
        .await
        .expect("100 Continue arrives")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(continue_line)
    );
    let (first, second) = form.as_bytes().split_at(form.len() / 2);
    stream.write_all(first).await.unwrap();
    (stream, second.to_vec())
}

#[tokio::test]
async fn a_body_that_stops_coming_is_408_and_stores_nothing_while_others_go_through() {
    let app = spawn_app_with(|c| c.request_timeout = REQUEST_TIMEOUT).await;
    let receiver = TestReceiver::start().await;
    app.standard_setup(&receiver).await;

    // A valid, signed request that stops halfway through its body.
    let sent = Instant::now();
    let (mut stalled, _) = half_a_request(&app.address, "SMstalled", "never finished").await;

    // Meanwhile the server serves everyone else.
    let ok = app
        .post_twilio(&sms_params("SMmeanwhile", "in the meantime"), AUTH_TOKEN)
        .await;
    assert_eq!(ok.status(), 200);

    let answer = read_until_closed(&mut stalled, Duration::from_secs(15)).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    let after = sent.elapsed();
    assert!(after >= REQUEST_TIMEOUT - SLACK, "{after:?}");
    let error: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "request_timeout", "{error}");

    let delivered = receiver.expect_exactly(1, Duration::from_millis(400)).await;
    assert_eq!(delivered[0].json()["body"], "in the meantime");
    let events = app.get_json("/v1/events").await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1, "{events}");
}

#[tokio::test]
async fn incomplete_headers_and_idle_connections_are_closed_after_the_request_timeout() {
    let app = spawn_app_with(|c| c.request_timeout = REQUEST_TIMEOUT).await;

    let opened = Instant::now();
    let mut half_a_head = connect(&app.address).await;
    half_a_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = connect(&app.address).await;
    // (The server's idle time starts when it has answered, after this.)
    let asked = Instant::now();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The idle one has its answer, kept alive...
    let answer = read_response(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    // ...others are served meanwhile...
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // ...and both are closed once their time is up.
    let nothing = read_until_closed(&mut half_a_head, Duration::from_secs(15)).await;
    assert_eq!(nothing, "");
    let after = opened.elapsed();
    assert!(after >= REQUEST_TIMEOUT - SLACK, "{after:?}");
    let nothing = read_until_closed(&mut idle, Duration::from_secs(15)).await;
    assert_eq!(nothing, "");
    let idle_for = asked.elapsed();
    assert!(idle_for >= REQUEST_TIMEOUT - SLACK, "{idle_for:?}");
}

#[tokio::test]
async fn sigterm_lets_a_request_in_progress_finish_and_stops_despite_a_stalled_client() {
    // Long enough for the request in progress to be stored and delivered meanwhile.
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let receiver = TestReceiver::start().await;
    let mut server = Node::start(
        dir.path(),
        free_port(),
        &[
            ("SWITCHBOARD_REQUEST_TIMEOUT", "60s"),
            ("SWITCHBOARD_SHUTDOWN_TIMEOUT", "5s"),
        ],
    )
    .await;
    server.configure(&receiver).await;

    // Two requests in progress: one will never finish its body, the other will.
    let (mut stalled, _) = half_a_request(&server.address, "SMstalled", "never finished").await;
    let (mut in_progress, rest) =
        half_a_request(&server.address, "SMinflight", "sent during the stop").await;

    let stop = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("the kill command runs");
    assert!(kill.success());
    // Once stopping, new connections are refused...
    eventually(Duration::from_secs(5), "connections refused", || async {
        TcpStream::connect(server.address.trim_start_matches("http://"))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    // ...but the request in progress completes and is answered.
    in_progress.write_all(&rest).await.unwrap();
    let answer = read_until_closed(&mut in_progress, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    // (Delivered while the stalled client keeps the server up: the dispatcher stops with it.)
    let delivered = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(delivered[0].json()["body"], "sent during the stop");

    // The stalled client holds the server until the shutdown timeout, no longer.
    let status = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        drop(server);
        status
    });
    let status = tokio::time::timeout(Duration::from_secs(20), status)
        .await
        .expect("the server stops within the shutdown timeout")
        .unwrap();
    let took = stop.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took >= SHUTDOWN_TIMEOUT - SLACK, "{took:?}");
    assert!(took < SHUTDOWN_TIMEOUT + Duration::from_secs(5), "{took:?}");
    assert_eq!(
        read_until_closed(&mut stalled, Duration::from_secs(1)).await,
        ""
    );
}
