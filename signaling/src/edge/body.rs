//! A deadline on reading a request body.
//!
//! hyper's header-read timeout stops at the end of the request head: a client that announces
//! `Content-Length: 100` and then sends one byte would hold its connection (and whatever route awaits the
//! body) for as long as it keeps the socket open. Every request body is read through [`Deadline`], which fails
//! once the body has not fully arrived within the limit, counted from when the head was parsed. The edge then
//! answers `408 request-timeout`, and hyper closes the connection because the body was not read to its end.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The error a body read gets at its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body-read timeout")]
pub struct BodyTimedOut;

/// A request body that fails once it has not been fully received by its deadline.
pub struct Deadline<B> {
    inner: B,
    at: Instant,
    // Created on the first read that has to wait, so a body read at once (or never) costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl<B> Deadline<B> {
    /// Wraps `inner`, which must be fully read within `limit` from now. `expired` is set when it was not.
    pub fn new(inner: B, limit: Duration, expired: Arc<AtomicBool>) -> Self {
        Deadline { inner, at: Instant::now() + limit, timer: None, expired }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                let at = this.at;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.expired.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that yields one chunk and then never finishes.
    struct Stuck(bool);
    impl Body for Stuck {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.0 {
                Poll::Pending
            } else {
                self.0 = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
            }
        }
    }

    #[tokio::test]
    async fn an_unfinished_body_fails_at_the_deadline_and_says_so() {
        let expired = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let r = Deadline::new(Stuck(false), Duration::from_millis(200), expired.clone()).collect().await;
        assert!(r.is_err());
        assert!(expired.load(Ordering::Relaxed));
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_complete_body_is_passed_through() {
        let expired = Arc::new(AtomicBool::new(false));
        let body = http_body_util::Full::new(Bytes::from_static(b"hello"));
        let got = Deadline::new(body, Duration::from_secs(3), expired.clone()).collect().await.map(|c| c.to_bytes());
        assert_eq!(got.ok(), Some(Bytes::from_static(b"hello")));
        assert!(!expired.load(Ordering::Relaxed));
    }
}
