//! Request bodies with a deadline, whose bytes count against the server's body budget until
//! the body is dropped.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// The error a request body gives once its time is up.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

/// The error a request body gives when the server's budget for bodies being received is
/// spent (answered 503).
#[derive(Debug, thiserror::Error)]
#[error("the server is receiving as many request bodies as it holds at once")]
pub struct BodyBudgetSpent;

/// A request body that fails with [`BodyTimedOut`] once `timeout` has passed since its
/// request's headers arrived, and ends there. The timer is only made when the body is not
/// already there. Every byte it yields is taken from `budget` and given back when it is
/// dropped (after its handler read it whole); past the budget it fails with
/// [`BodyBudgetSpent`].
pub struct DeadlineBody {
    inner: Incoming,
    timeout: Duration,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    /// Ended: timed out, or the budget was spent.
    ended: bool,
    budget: Arc<super::limits::BodyBudget>,
    /// Whose share of the budget the bytes count against (None: a trusted proxy).
    client: Option<std::net::IpAddr>,
    taken: usize,
}

impl DeadlineBody {
    pub fn new(
        inner: Incoming,
        timeout: Duration,
        budget: Arc<super::limits::BodyBudget>,
        client: Option<std::net::IpAddr>,
    ) -> DeadlineBody {
        DeadlineBody {
            inner,
            timeout,
            deadline: Instant::now() + timeout,
            timer: None,
            ended: false,
            budget,
            client,
            taken: 0,
        }
    }
}

impl Drop for DeadlineBody {
    fn drop(&mut self) {
        self.budget.give_back(self.client, self.taken);
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
        if this.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                let n = data.map_or(0, Bytes::len);
                if !this.budget.take(this.client, n) {
                    this.ended = true;
                    return Poll::Ready(Some(Err(BodyBudgetSpent.into())));
                }
                this.taken += n;
            }
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.ended = true;
                Poll::Ready(Some(Err(BodyTimedOut(this.timeout).into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}
