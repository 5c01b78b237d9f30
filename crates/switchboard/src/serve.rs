//! The HTTP/1.1 server loop: every connection gets `request_timeout` to send a request's
//! headers (hyper's header timeout, which also closes idle keep-alive connections) and the same
//! again for the body once the headers are in. HTTP/2 without TLS (h2c), which `axum::serve`
//! also answered, is not served: hyper gives it none of these timeouts, and a proxy in front
//! speaks HTTP/2 to clients and HTTP/1.1 to us. A stop signal ends accepting at once, and open
//! connections get `shutdown_timeout` to finish what they are doing; after that the server
//! stops anyway. So a client that opens a connection and then sends nothing, or stops halfway
//! through a body, can neither hold a request open nor keep the process from stopping.

use std::future::Future;
use std::io::ErrorKind;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the headers of each request, and again for its body.
    pub request: Duration,
    /// For connections still open after the stop signal.
    pub shutdown: Duration,
}

/// Serve `router` on `listener` until `stop` completes, then wait at most `timeouts.shutdown`
/// for open connections.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    timeouts: Timeouts,
    stop: impl Future<Output = ()>,
) {
    let mut connections = JoinSet::new();
    // Dropped at the stop signal: every connection then finishes its request and closes.
    let (stopping_tx, stopping_rx) = watch::channel(());
    let mut stop = std::pin::pin!(stop);
    // After an accept error other than a client giving up: a pause before the next accept.
    let mut pause: Option<Pin<Box<Sleep>>> = None;
    loop {
        tokio::select! {
            accepted = listener.accept(), if pause.is_none() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(
                        stream,
                        router.clone(),
                        timeouts.request,
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
    router: axum::Router,
    request_timeout: Duration,
    mut stopping: watch::Receiver<()>,
) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let request = request.map(|body| Body::new(DeadlineBody::new(body, request_timeout)));
        router.clone().call(request)
    });
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout);
    let conn = http1.serve_connection(TokioIo::new(Lingering::new(stream)), service);
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

/// The error a request body gives once its time is up.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

/// A request body that fails with [`BodyTimedOut`] once `timeout` has passed since its
/// request's headers arrived, and ends there. The timer is only made when the body is not
/// already there.
struct DeadlineBody {
    inner: Incoming,
    timeout: Duration,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            timeout,
            deadline: Instant::now() + timeout,
            timer: None,
            timed_out: false,
        }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.timed_out = true;
                Poll::Ready(Some(Err(BodyTimedOut(this.timeout).into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

/// What a closing connection still reads and discards from its client: at most this much,
/// for at most [`LINGER_TIME`].
const LINGER_BYTES: usize = 4 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// A connection that closes as nginx's lingering close does. A client that writes its whole
/// body before it reads (Python's `urllib`, many shell tools) would otherwise get a reset
/// instead of the answer sent before the body was read (a 413, a 401): closing a socket with
/// unread data makes the kernel send RST, which throws away the answer still on its way. So
/// the write side is shut first (the answer and a FIN go out), then what the client still
/// sends is read and dropped until it closes too, or [`LINGER_BYTES`] or [`LINGER_TIME`] is
/// reached.
struct Lingering {
    stream: TcpStream,
    /// Set once the write side is shut: how much more may be read, and until when.
    draining: Option<(usize, Pin<Box<Sleep>>)>,
}

impl Lingering {
    fn new(stream: TcpStream) -> Lingering {
        Lingering {
            stream,
            draining: None,
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.draining.is_none() {
            if let Err(e) = std::task::ready!(Pin::new(&mut this.stream).poll_shutdown(cx)) {
                return Poll::Ready(Err(e));
            }
            this.draining = Some((LINGER_BYTES, Box::pin(tokio::time::sleep(LINGER_TIME))));
        }
        let (left, deadline) = this.draining.as_mut().expect("set above");
        let mut scratch = [0_u8; 8192];
        loop {
            if *left == 0 || deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                // The client closed (or failed): nothing more can be lost.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => *left = left.saturating_sub(buf.filled().len()),
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
