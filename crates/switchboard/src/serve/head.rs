//! A deadline for a request's headers of its own, shorter than the idle keep-alive time.
//! hyper's header timeout runs from the moment a connection waits for a request, idle or not,
//! so it must stay above a proxy's idle timeout (`request_timeout`, 75 s). A client that has
//! begun a request's headers gets only `header_timeout` to finish them: it starts with the
//! first byte read while the connection is idle, and ends when hyper hands the request's
//! headers to the service.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const REQUEST: u8 = 2;

/// Where a connection is: idle, reading a request's headers, or serving a request. The
/// service marks the request's start and end; the socket, the first byte of the next one.
#[derive(Clone, Default)]
pub struct Phase(Arc<AtomicU8>);

impl Phase {
    /// The request's headers are in (the service was called).
    pub fn request_started(&self) {
        self.0.store(REQUEST, Ordering::Relaxed);
    }

    /// The service has answered: the next byte read begins another request.
    pub fn request_ended(&self) {
        self.0.store(IDLE, Ordering::Relaxed);
    }
}

/// A connection's socket whose reads fail with `TimedOut` once a request's headers have taken
/// longer than `timeout`.
pub struct HeadDeadline<S> {
    inner: S,
    phase: Phase,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> HeadDeadline<S> {
    pub fn new(inner: S, phase: Phase, timeout: Duration) -> HeadDeadline<S> {
        HeadDeadline {
            inner,
            phase,
            timeout,
            deadline: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let phase = this.phase.0.load(Ordering::Relaxed);
        if phase != HEAD {
            this.deadline = None;
        }
        match poll {
            Poll::Ready(Ok(())) if buf.filled().len() > before && phase == IDLE => {
                this.phase.0.store(HEAD, Ordering::Relaxed);
                let timeout = this.timeout;
                this.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
                Poll::Ready(Ok(()))
            }
            Poll::Pending if phase == HEAD => {
                let timeout = this.timeout;
                super::poll_deadline(&mut this.deadline, timeout, cx, || {
                    format!("the request's headers did not arrive within {timeout:?}")
                })
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
