//! One connection: hyper's HTTP/1 state machine and a watchdog for its deadlines.
//!
//! The watchdog needs two facts: whether a request is in flight (the service marks
//! the start; the response body marks the end when hyper drops it), and when the
//! first byte of a request head arrived (a wrapper around the socket sees every
//! read). From those it keeps one deadline:
//!
//! - waiting for a request, no byte yet: the connection's start plus the header
//!   timeout for the first request, the end of the last response plus the idle
//!   timeout for later ones;
//! - a head begun: at most the first byte's time plus the header timeout;
//! - a request in flight: none (its body has its own deadline, [`TimedBody`]).
//!
//! When the deadline passes with no request in flight, the connection is dropped.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};
use tokio::time::{sleep_until, Instant, Sleep};

use crate::Limits;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error a request body gives when it did not arrive within the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs_f64())]
pub struct BodyTimeout(pub Duration);

pub(crate) struct Conn {
    pub router: axum::Router,
    pub limits: Arc<Limits>,
    pub stop: watch::Receiver<bool>,
}

impl Conn {
    /// Serves requests on `io` until the client closes, a deadline passes, or the
    /// server stops (then the request in flight may finish).
    pub async fn run<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let dog = Arc::new(Watchdog::new(&self.limits));
        let io = TokioIo::new(Watched {
            inner: io,
            dog: dog.clone(),
        });
        let router = self.router.clone();
        let body_timeout = self.limits.body_timeout;
        let d = dog.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let busy = Busy::start(d.clone());
            let deadline = Instant::now() + body_timeout;
            let req = req.map(|b| Body::new(TimedBody::new(b, deadline, body_timeout)));
            let mut router = router.clone();
            async move {
                let resp = match tower_service::Service::call(&mut router, req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(resp.map(|inner| Body::new(DoneBody { inner, _busy: busy })))
            }
        });
        let conn = http1::Builder::new()
            .keep_alive(true)
            .max_buf_size(self.limits.read_buffer)
            .serve_connection(io, svc);
        tokio::pin!(conn);
        let mut stopping = false;
        loop {
            // Created before the deadline is read, so a change in between still wakes us.
            let changed = dog.changed.notified();
            let deadline = dog.deadline();
            tokio::select! {
                _ = conn.as_mut() => return,
                () = changed => {}
                () = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                    if dog.expired(Instant::now()) {
                        return;
                    }
                }
                _ = self.stop.changed(), if !stopping => {
                    stopping = true;
                    // No more requests on this connection; the one in flight may finish.
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// No byte of the next request yet.
    Waiting { deadline: Instant },
    /// A request head is arriving.
    Head { deadline: Instant },
    /// Requests whose responses are not done yet.
    Busy { n: usize },
}

struct Watchdog {
    phase: Mutex<Phase>,
    changed: Notify,
    header: Duration,
    idle: Duration,
}

impl Watchdog {
    fn new(limits: &Limits) -> Self {
        Watchdog {
            phase: Mutex::new(Phase::Waiting {
                deadline: Instant::now() + limits.header_timeout,
            }),
            changed: Notify::new(),
            header: limits.header_timeout,
            idle: limits.idle_timeout,
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        // Plain values: a panic elsewhere cannot leave them half-written.
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deadline(&self) -> Option<Instant> {
        match *self.phase() {
            Phase::Waiting { deadline } | Phase::Head { deadline } => Some(deadline),
            Phase::Busy { .. } => None,
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        let mut p = self.phase();
        if let Phase::Waiting { deadline } = *p {
            *p = Phase::Head {
                deadline: deadline.min(Instant::now() + self.header),
            };
            drop(p);
            self.changed.notify_one();
        }
    }

    fn begin(&self) {
        let mut p = self.phase();
        *p = match *p {
            Phase::Busy { n } => Phase::Busy { n: n + 1 },
            _ => Phase::Busy { n: 1 },
        };
    }

    fn end(&self) {
        let mut p = self.phase();
        if let Phase::Busy { n } = *p {
            *p = if n > 1 {
                Phase::Busy { n: n - 1 }
            } else {
                Phase::Waiting {
                    deadline: Instant::now() + self.idle,
                }
            };
        }
        drop(p);
        self.changed.notify_one();
    }
}

/// A request in flight, from the service call until hyper drops its response body.
struct Busy(Arc<Watchdog>);

impl Busy {
    fn start(dog: Arc<Watchdog>) -> Self {
        dog.begin();
        Busy(dog)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The client's socket, telling the watchdog when bytes arrive.
struct Watched<I> {
    inner: I,
    dog: Arc<Watchdog>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.dog.on_read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
}

/// A request body that fails with [`BodyTimeout`] once its deadline has passed.
struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    timeout: Duration,
    /// Made on the first read that has to wait (most bodies never do).
    sleep: Option<Pin<Box<Sleep>>>,
}

impl TimedBody {
    fn new(inner: Incoming, deadline: Instant, timeout: Duration) -> Self {
        TimedBody {
            inner,
            deadline,
            timeout,
            sleep: None,
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(r.map(|f| f.map_err(BoxError::from)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that ends its request's [`Busy`] span when hyper drops it.
struct DoneBody {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for DoneBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
