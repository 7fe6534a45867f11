//! cellos-http: serving HTTP on a hostile network with bounded resources (DESIGN §9).
//!
//! Every HTTP server of cellos (the ledger, the node API in cellosd) runs on
//! [`serve`], so each one has the same bounds and no client can starve the others:
//!
//! - **Connections:** at most [`Limits::max_connections`] are served at once, kept
//!   below the process's file-descriptor limit (which [`raise_fd_limit`] lifts to the
//!   hard limit at start), so a flood never makes `accept` fail with EMFILE. A
//!   connection over the cap is answered `503` and closed at once; that, and any
//!   accept error, is logged once per interval, never once per connection.
//! - **Header timeout:** a request head must be complete within
//!   [`Limits::header_timeout`], counted from the connection's start for the first
//!   request and from the first byte of the head for later ones (slowloris).
//! - **Body timeout:** a request body must be complete within
//!   [`Limits::body_timeout`] of its head; a handler reading it past that gets
//!   [`BodyTimeout`] as the error and the connection is closed.
//! - **Idle timeout:** a keep-alive connection with no request in flight is closed
//!   after [`Limits::idle_timeout`].
//! - **Buffer:** hyper's read buffer per connection is capped at
//!   [`Limits::read_buffer`]; a larger request head is refused.
//!
//! TLS ([`Tls`], rustls with ring) is optional and under the same bounds; its
//! handshake must finish within the header timeout. Only HTTP/1.1 is spoken.
//!
//! The timeouts of a connection are enforced by one watchdog per connection
//! ([`conn`]): it knows whether a request is in flight (set by the service, cleared
//! when the response body is done) and when bytes arrived (seen by a wrapper around
//! the socket), which is all three deadlines need.

mod conn;
mod sys;
mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub use conn::BodyTimeout;
pub use sys::{fd_limit, raise_fd_limit};
pub use tls::Tls;

/// File descriptors kept free for everything that is not a client connection
/// (stores, logs, the listener, outgoing connections).
pub const FD_RESERVE: u64 = 256;
/// The default connection cap never exceeds this, however high the fd limit: each
/// connection may hold up to [`Limits::read_buffer`] bytes.
pub const MAX_DEFAULT_CONNECTIONS: u64 = 16_384;
/// Connections the kernel queues for `accept` (it clamps this to `net.core.somaxconn`).
/// A short queue drops SYNs during a burst, and each drop costs the client a 1 s
/// retransmit.
const BACKLOG: u32 = 4096;
/// Errors of one kind are logged at most once per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Pause after an accept error such as EMFILE, so the loop does not spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("RLIMIT_NOFILE")]
    FdLimit(#[source] std::io::Error),
    #[error(
        "{max_connections} connections leave no headroom below the file-descriptor limit \
         of {fd_limit} ({FD_RESERVE} are kept for the rest of the process)"
    )]
    NoHeadroom {
        max_connections: usize,
        fd_limit: u64,
    },
    #[error("{what} must be longer than zero")]
    ZeroTimeout { what: &'static str },
    #[error("TLS {what} {path}: {reason}")]
    Tls {
        what: &'static str,
        path: String,
        reason: String,
    },
}

/// The bounds one server applies to every client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Time for a complete request head (and for the TLS handshake).
    pub header_timeout: Duration,
    /// Time for a complete request body, from its head.
    pub body_timeout: Duration,
    /// Time a connection may sit with no request in flight.
    pub idle_timeout: Duration,
    /// Bytes hyper may buffer per connection while reading (bounds the request head).
    pub read_buffer: usize,
    /// How long a graceful shutdown waits for requests in flight.
    pub drain_timeout: Duration,
}

impl Limits {
    /// The defaults for a process that may hold `fd_limit` file descriptors: the
    /// connection cap leaves [`FD_RESERVE`] free and stays below
    /// [`MAX_DEFAULT_CONNECTIONS`].
    pub fn for_fd_limit(fd_limit: u64) -> Limits {
        let cap = fd_limit
            .saturating_sub(FD_RESERVE)
            .clamp(1, MAX_DEFAULT_CONNECTIONS);
        Limits {
            max_connections: usize::try_from(cap).unwrap_or(usize::MAX),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            read_buffer: 32 * 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }

    /// Checks the limits make sense for a process that may hold `fd_limit`
    /// descriptors.
    pub fn check(&self, fd_limit: u64) -> Result<(), HttpError> {
        let wanted = (self.max_connections as u64).saturating_add(FD_RESERVE);
        if self.max_connections == 0 || wanted > fd_limit {
            return Err(HttpError::NoHeadroom {
                max_connections: self.max_connections,
                fd_limit,
            });
        }
        for (what, d) in [
            ("the header timeout", self.header_timeout),
            ("the body timeout", self.body_timeout),
            ("the idle timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(HttpError::ZeroTimeout { what });
            }
        }
        Ok(())
    }
}

/// Logs one kind of event at most once per [`LOG_INTERVAL`], with how many were
/// not logged since.
struct Throttled {
    what: &'static str,
    last: Mutex<Option<Instant>>,
    unlogged: AtomicU64,
}

impl Throttled {
    fn new(what: &'static str) -> Self {
        Throttled {
            what,
            last: Mutex::new(None),
            unlogged: AtomicU64::new(0),
        }
    }

    fn note(&self, detail: &dyn std::fmt::Display) {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < LOG_INTERVAL) {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        let more = self.unlogged.swap(0, Ordering::Relaxed);
        if more > 0 {
            tracing::warn!(
                "{}: {detail} ({more} more since the last report)",
                self.what
            );
        } else {
            tracing::warn!("{}: {detail}", self.what);
        }
    }
}

/// A listener on `addr` with a long accept queue ([`BACKLOG`]), for [`serve`].
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// What a client over the connection cap reads before the server closes.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
content-length: 52\r\n\
connection: close\r\n\
retry-after: 1\r\n\
\r\n\
{\"error\":\"too many connections to this server; retry\"}";

/// Serves `router` on `listener` under `limits` (with TLS when `tls` is given) until
/// `shutdown` resolves; then stops accepting, lets requests in flight finish for up
/// to [`Limits::drain_timeout`] and returns.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let max = u32::try_from(limits.max_connections)
        .unwrap_or(u32::MAX)
        .min(Semaphore::MAX_PERMITS as u32);
    let permits = Arc::new(Semaphore::new(max as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let over_cap = Throttled::new("connection refused");
    let accept_failed = Throttled::new("accept failed");
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: the cap should prevent them, but if something
                // else holds the descriptors, wait a moment instead of spinning.
                accept_failed.note(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            over_cap.note(&format_args!("{peer} is over the cap of {max} connections"));
            if tls.is_none() {
                // Best effort: the socket's send buffer is empty, so this never blocks.
                let _ = tcp.try_write(OVER_CAP);
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let c = conn::Conn {
            router: router.clone(),
            limits: limits.clone(),
            stop: stop_rx.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => c.run(tcp).await,
                Some(t) => {
                    if let Some(stream) = t.accept(tcp, c.limits.header_timeout).await {
                        c.run(stream).await;
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it ends: all permits back means all done.
    let _ = tokio::time::timeout(limits.drain_timeout, permits.acquire_many(max)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cap_leaves_headroom() {
        let l = Limits::for_fd_limit(1024);
        assert_eq!(l.max_connections, 1024 - FD_RESERVE as usize);
        assert!(l.check(1024).is_ok());
        let big = Limits::for_fd_limit(1 << 20);
        assert_eq!(big.max_connections as u64, MAX_DEFAULT_CONNECTIONS);
        let too_many = Limits {
            max_connections: 1000,
            ..Limits::for_fd_limit(1024)
        };
        assert!(matches!(
            too_many.check(1024),
            Err(HttpError::NoHeadroom { .. })
        ));
        let zero = Limits {
            idle_timeout: Duration::ZERO,
            ..Limits::for_fd_limit(1024)
        };
        assert!(matches!(
            zero.check(1024),
            Err(HttpError::ZeroTimeout { .. })
        ));
    }
}
