//! The connection's socket: a lingering close, and a write timeout for clients that do not
//! read their answers (a client that pipelines requests and never reads would otherwise hold
//! its connection, and the answers queued for it, for ever).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

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
pub struct Lingering {
    stream: TcpStream,
    /// Set once the write side is shut: how much more may be read, and until when.
    draining: Option<(usize, Pin<Box<Sleep>>)>,
    write_timeout: Duration,
    /// Running while a write waits for the client to read.
    write_stalled: Option<Pin<Box<Sleep>>>,
}

impl Lingering {
    pub fn new(stream: TcpStream, write_timeout: Duration) -> Lingering {
        Lingering {
            stream,
            draining: None,
            write_timeout,
            write_stalled: None,
        }
    }

    /// A write's outcome, failed once it has waited `write_timeout` for the client.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.write_stalled = None;
            return poll;
        }
        let timeout = self.write_timeout;
        super::poll_deadline(&mut self.write_stalled, timeout, cx, || {
            format!("the client read nothing of the answer for {timeout:?}")
        })
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
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.timed(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.timed(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.timed(cx, poll)
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
