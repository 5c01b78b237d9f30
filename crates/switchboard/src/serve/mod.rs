//! The HTTP/1.1 server loop: an idle keep-alive connection is closed after `request_timeout`
//! (hyper's header timeout); once a request's first byte has arrived its headers get
//! `header_timeout` (`head`), and its body `request_timeout` again. HTTP/2 without TLS (h2c), which `axum::serve`
//! also answered, is not served: hyper gives it none of these timeouts, and a proxy in front
//! speaks HTTP/2 to clients and HTTP/1.1 to us. A stop signal ends accepting at once, and open
//! connections get `shutdown_timeout` to finish what they are doing; after that the server
//! stops anyway. So a client that opens a connection and then sends nothing, or stops halfway
//! through a body, can neither hold a request open nor keep the process from stopping.
//! Connections are capped in total and per client, bodies being received share one budget of
//! bytes (`limits`), and an answer the client does not read fails the connection after
//! `write_timeout` (`linger`).

use std::future::Future;
use std::io::ErrorKind;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tower_service::Service;

mod body;
mod head;
pub mod limits;
mod linger;

use body::DeadlineBody;
pub use body::{BodyBudgetSpent, BodyTimedOut};
use limits::{BodyBudget, ConnectionSlots, Limits};
use linger::Lingering;

/// A deadline for a socket operation that waits: started the first time it is polled (kept in
/// `deadline` until the caller clears it), `Pending` until `timeout` has passed, then the error
/// `TimedOut` with `what`.
fn poll_deadline<T>(
    deadline: &mut Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    cx: &mut Context<'_>,
    what: impl FnOnce() -> String,
) -> Poll<std::io::Result<T>> {
    let sleep = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
    sleep
        .as_mut()
        .poll(cx)
        .map(|()| Err(std::io::Error::new(ErrorKind::TimedOut, what())))
}

/// The request line and headers of one request, at most (431 and the connection closed past
/// it). Providers send a few KiB; hyper's own default is the read buffer's ~400 KiB, which a
/// connection stalled before the blank line would hold for the whole header timeout.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The connection's read buffer, at most: what a stalled connection can make the server hold
/// besides its share of the body budget.
pub const MAX_READ_BUFFER_BYTES: usize = 32 * 1024;

/// The address a request's connection comes from (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the headers of each request (also how long an idle keep-alive connection stays
    /// open), and again for its body.
    pub request: Duration,
    /// For a request's headers once their first byte has arrived.
    pub header: Duration,
    /// For an answer the client does not read.
    pub write: Duration,
    /// For connections still open after the stop signal.
    pub shutdown: Duration,
}

/// Serve `router` on `listener` until `stop` completes, then wait at most `timeouts.shutdown`
/// for open connections.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    timeouts: Timeouts,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let budget = BodyBudget::new(
        limits.max_buffered_body_bytes,
        limits.max_buffered_body_bytes_per_client,
    );
    let slots = ConnectionSlots::new(limits);
    let mut connections = JoinSet::new();
    // Dropped at the stop signal: every connection then finishes its request and closes.
    let (stopping_tx, stopping_rx) = watch::channel(());
    let mut stop = std::pin::pin!(stop);
    // After an accept error other than a client giving up: a pause before the next accept.
    let mut pause: Option<Pin<Box<Sleep>>> = None;
    loop {
        tokio::select! {
            accepted = listener.accept(), if pause.is_none() => match accepted {
                Ok((stream, peer)) => {
                    // Over a limit: closed at once, holding nothing.
                    let Some(slot) = slots.admit(peer) else { continue };
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(
                        stream,
                        slot,
                        router.clone(),
                        timeouts,
                        budget.clone(),
                        stopping_rx.clone(),
                    ));
                }
                // The client gave up before it was accepted: nothing to do.
                Err(e) if matches!(
                    e.kind(),
                    ErrorKind::ConnectionRefused
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::ConnectionReset
                ) => {}
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed; retrying in 1 s");
                    pause = Some(Box::pin(tokio::time::sleep(Duration::from_secs(1))));
                }
            },
            () = async { pause.as_mut().expect("guarded").await }, if pause.is_some() => {
                pause = None;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut stop => break,
        }
    }
    drop(listener);
    drop(stopping_tx);
    let open = connections.len();
    let finished = tokio::time::timeout(timeouts.shutdown, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            open = connections.len(),
            of = open,
            "connections still open {:?} after the stop signal; closing them",
            timeouts.shutdown
        );
        connections.shutdown().await;
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    slot: limits::Slot,
    router: axum::Router,
    timeouts: Timeouts,
    budget: Arc<BodyBudget>,
    mut stopping: watch::Receiver<()>,
) {
    let request_timeout = timeouts.request;
    let client = slot.client();
    let peer = stream.peer_addr().ok().map(ClientAddr);
    let phase = head::Phase::default();
    let service_phase = phase.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        service_phase.request_started();
        let budget = budget.clone();
        let mut request =
            request.map(|body| Body::new(DeadlineBody::new(body, request_timeout, budget, client)));
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        let answer = router.clone().call(request);
        let phase = service_phase.clone();
        async move {
            let answer = answer.await;
            phase.request_ended();
            answer
        }
    });
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_READ_BUFFER_BYTES);
    let socket = head::HeadDeadline::new(
        Lingering::new(stream, timeouts.write),
        phase,
        timeouts.header,
    );
    let conn = http1.serve_connection(TokioIo::new(socket), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = stopping.changed() => {}
    }
    // Stopping: finish the request in progress, if any, then close.
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
