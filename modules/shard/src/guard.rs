//! Admission and fairness for the shard server: which connections it keeps, how
//! many bytes they may make it hold, and how fast passwords may be guessed.
//!
//! Every port is on a hostile network (DESIGN.md §9), so one client must never
//! starve the others:
//! - [`Conns`] caps connections in total and per source address. At the cap, the
//!   connection that has gone longest without completing a command (and at least
//!   `evict_after`) is closed to make room; with none that stale, the newcomer is
//!   refused with a one-line error. Idle and slow-dribbling floods so lose their
//!   slots to clients that work.
//! - [`Budget`] is the bytes buffered across all connections (partial frames,
//!   queued commands, replies waiting to be written); a connection that would pass
//!   it is told so and closed.
//! - [`AuthLimiter`] meters password attempts (AUTH, SELECT with a password)
//!   before they are checked, so the answer to a guess cannot come faster than
//!   the meter allows: per source address (IPv4, or an IPv6 /64) 10 at once, then
//!   one a second; attempts from a source that has failed recently also share one
//!   server-wide allowance of 20 a second. A source with no recent failure skips
//!   the shared allowance, so a storm from elsewhere does not delay it. An attempt
//!   that would wait more than 10 s is refused without being checked. A success
//!   gives its allowance back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update below is a few assignments with no I/O in between: a panic
    // cannot leave a half-made change, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What limits count as one source: an IPv4 address, or an IPv6 /64 (what one
/// customer line usually gets).
pub(crate) fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Bytes buffered across all connections.
pub(crate) struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    fn try_add(&self, n: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let next = match cur.checked_add(n) {
                Some(v) if v <= self.max => v,
                _ => return false,
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    fn sub(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// One connection's share of the [`Budget`], given back when dropped.
pub(crate) struct Held {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Held {
    pub(crate) fn new(budget: Arc<Budget>) -> Held {
        Held { budget, bytes: 0 }
    }

    /// Makes the share `bytes`; `false`, leaving it unchanged, when growing it
    /// would pass the budget.
    pub(crate) fn set(&mut self, bytes: usize) -> bool {
        if bytes > self.bytes {
            if !self.budget.try_add(bytes - self.bytes) {
                return false;
            }
        } else {
            self.budget.sub(self.bytes - bytes);
        }
        self.bytes = bytes;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.sub(self.bytes);
    }
}

/// A connection as the table sees it.
pub(crate) struct Conn {
    id: u64,
    source: IpAddr,
    /// Milliseconds after the table's epoch at which it connected or last
    /// completed a command.
    active: AtomicU64,
    /// Notified when the connection is closed to make room for a newcomer.
    pub(crate) evicted: Notify,
}

/// How many connections, from where, and which to close when full.
pub(crate) struct Conns {
    epoch: Instant,
    max: usize,
    per_source: usize,
    evict_after: Duration,
    table: Mutex<Table>,
    refused: AtomicU64,
    evictions: AtomicU64,
}

#[derive(Default)]
struct Table {
    next: u64,
    live: HashMap<u64, Arc<Conn>>,
    sources: HashMap<IpAddr, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Arc<Conn>> {
        let c = self.live.remove(&id)?;
        if let Some(n) = self.sources.get_mut(&c.source) {
            *n -= 1;
            if *n == 0 {
                self.sources.remove(&c.source);
            }
        }
        Some(c)
    }
}

/// A connection in the table; leaves it when dropped.
pub(crate) struct Slot {
    conns: Arc<Conns>,
    pub(crate) conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.conns.table).remove(self.conn.id);
    }
}

impl Conns {
    pub(crate) fn new(max: usize, per_source: usize, evict_after: Duration) -> Conns {
        Conns {
            epoch: Instant::now(),
            max: max.max(1),
            per_source: per_source.max(1),
            evict_after,
            table: Mutex::default(),
            refused: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records that `conn` completed a command.
    pub(crate) fn touch(&self, conn: &Conn) {
        conn.active.store(self.now_ms(), Ordering::Relaxed);
    }

    /// (open connections, refused so far, evicted so far)
    pub(crate) fn stats(&self) -> (usize, u64, u64) {
        (
            lock(&self.table).live.len(),
            self.refused.load(Ordering::Relaxed),
            self.evictions.load(Ordering::Relaxed),
        )
    }

    /// Admits a connection from `ip`, closing the stalest one if the server is
    /// full; `Err` is the line to send a refused client.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, String> {
        let src = source(ip);
        let now = self.now_ms();
        let mut t = lock(&self.table);
        if t.sources.get(&src).copied().unwrap_or(0) >= self.per_source {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "too many connections from {src} (at most {})",
                self.per_source
            ));
        }
        if t.live.len() >= self.max {
            let stale = u64::try_from(self.evict_after.as_millis()).unwrap_or(u64::MAX);
            let victim = t
                .live
                .values()
                .map(|c| (c.active.load(Ordering::Relaxed), c.id))
                .filter(|(active, _)| now.saturating_sub(*active) >= stale)
                .min()
                .map(|(_, id)| id);
            match victim.and_then(|id| t.remove(id)) {
                Some(c) => {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    c.evicted.notify_one();
                }
                None => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(format!("max number of clients reached ({})", self.max));
                }
            }
        }
        t.next += 1;
        let conn = Arc::new(Conn {
            id: t.next,
            source: src,
            active: AtomicU64::new(now),
            evicted: Notify::new(),
        });
        t.live.insert(conn.id, conn.clone());
        *t.sources.entry(src).or_default() += 1;
        Ok(Slot {
            conns: self.clone(),
            conn,
        })
    }
}

const SOURCE_INTERVAL: Duration = Duration::from_secs(1);
const SOURCE_BURST: u32 = 10;
const GLOBAL_INTERVAL: Duration = Duration::from_millis(50);
const GLOBAL_BURST: u32 = 20;
/// An attempt that would wait longer is refused unchecked.
const MAX_WAIT: Duration = Duration::from_secs(10);
/// Sources remembered at most; past it, unknown sources share the global meter
/// without a free first attempt.
const MAX_SOURCES: usize = 65_536;

/// A GCRA meter: `tat` is when it is next fully at rest (as time since the epoch).
#[derive(Clone, Copy)]
struct Meter {
    tat: Duration,
}

impl Meter {
    /// How long an attempt now must wait for this meter.
    fn wait(&self, now: Duration, interval: Duration, burst: u32) -> Duration {
        let tolerance = interval * burst.saturating_sub(1);
        self.tat
            .max(now)
            .saturating_sub(tolerance)
            .saturating_sub(now)
    }

    fn charge(&mut self, now: Duration, interval: Duration) {
        self.tat = self.tat.max(now) + interval;
    }

    fn refund(&mut self, interval: Duration) {
        self.tat = self.tat.saturating_sub(interval);
    }
}

/// Meters password attempts (see the module docs).
pub(crate) struct AuthLimiter {
    epoch: Instant,
    gates: Mutex<Gates>,
    failures: AtomicU64,
}

struct Gates {
    global: Meter,
    sources: HashMap<IpAddr, Meter>,
}

/// A metered attempt: wait `wait`, then check the password.
pub(crate) struct Ticket {
    pub(crate) wait: Duration,
    source: IpAddr,
    charged_source: bool,
    charged_global: bool,
}

impl AuthLimiter {
    pub(crate) fn new() -> AuthLimiter {
        AuthLimiter {
            epoch: Instant::now(),
            gates: Mutex::new(Gates {
                global: Meter {
                    tat: Duration::ZERO,
                },
                sources: HashMap::new(),
            }),
            failures: AtomicU64::new(0),
        }
    }

    /// Reserves an attempt for `ip`; `None` when it would wait past the limit
    /// (the attempt is then refused without checking the password).
    pub(crate) fn reserve(&self, ip: IpAddr) -> Option<Ticket> {
        let src = source(ip);
        let now = self.epoch.elapsed();
        let mut g = lock(&self.gates);
        if g.sources.len() >= MAX_SOURCES / 16 && !g.sources.contains_key(&src) {
            // Sources at rest carry no state worth keeping.
            g.sources.retain(|_, m| m.tat > now);
        }
        let known = g.sources.len() < MAX_SOURCES || g.sources.contains_key(&src);
        let meter = g.sources.get(&src).copied();
        // A source with no recent failure (or none on record) skips the shared meter.
        let dirty = !known || meter.is_some_and(|m| m.tat > now);
        let mut wait = Duration::ZERO;
        if let Some(m) = meter {
            wait = wait.max(m.wait(now, SOURCE_INTERVAL, SOURCE_BURST));
        }
        if dirty {
            wait = wait.max(g.global.wait(now, GLOBAL_INTERVAL, GLOBAL_BURST));
        }
        if wait > MAX_WAIT {
            return None;
        }
        if known {
            let m = g.sources.entry(src).or_insert(Meter { tat: now });
            m.charge(now, SOURCE_INTERVAL);
        }
        if dirty {
            g.global.charge(now, GLOBAL_INTERVAL);
        }
        Some(Ticket {
            wait,
            source: src,
            charged_source: known,
            charged_global: dirty,
        })
    }

    /// The attempt succeeded: its allowance is given back.
    pub(crate) fn succeeded(&self, t: &Ticket) {
        let mut g = lock(&self.gates);
        if t.charged_source {
            if let Some(m) = g.sources.get_mut(&t.source) {
                m.refund(SOURCE_INTERVAL);
            }
        }
        if t.charged_global {
            g.global.refund(GLOBAL_INTERVAL);
        }
    }

    pub(crate) fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sources_group_ipv6_by_64() {
        assert_eq!(source(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(source(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(source(ip("10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn budget_refuses_past_its_total() {
        let b = Arc::new(Budget::new(100));
        let mut a = Held::new(b.clone());
        let mut c = Held::new(b.clone());
        assert!(a.set(60));
        assert!(!c.set(50));
        assert!(c.set(40));
        assert!(a.set(10));
        assert_eq!(b.used(), 50);
        drop(a);
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_full_table_evicts_the_stalest_or_refuses() {
        let conns = Arc::new(Conns::new(2, 2, Duration::ZERO));
        let a = conns.admit(ip("10.0.0.1")).unwrap();
        let _b = conns.admit(ip("10.0.0.2")).unwrap();
        conns.touch(&_b.conn);
        let _c = conns.admit(ip("10.0.0.3")).unwrap();
        // `a` is the stalest (ids break ties within a millisecond): it was closed.
        assert_eq!(conns.stats(), (2, 0, 1));
        assert!(!lock(&conns.table).live.contains_key(&a.conn.id));
        drop(a);
        assert_eq!(conns.stats().0, 2);
        let strict = Arc::new(Conns::new(1, 1, Duration::from_secs(3600)));
        let _x = strict.admit(ip("10.0.0.1")).unwrap();
        let e = strict.admit(ip("10.0.0.2")).err().unwrap();
        assert!(e.contains("max number of clients"), "{e}");
        let e = strict.admit(ip("10.0.0.1")).err().unwrap();
        assert!(e.contains("too many connections from 10.0.0.1"), "{e}");
    }

    #[test]
    fn guesses_are_metered_per_source_and_a_clean_source_skips_the_queue() {
        let l = AuthLimiter::new();
        let mut waits = Vec::new();
        while let Some(t) = l.reserve(ip("10.0.0.1")) {
            l.failed();
            waits.push(t.wait);
        }
        // 10 at once, then one a second until the wait passes 10 s.
        assert!(waits[..10].iter().all(|w| w.is_zero()), "{waits:?}");
        assert!(waits.len() <= 22, "{}", waits.len());
        assert!(waits.last().unwrap() > &Duration::from_secs(8));
        let t = l.reserve(ip("10.0.0.2")).unwrap();
        assert!(t.wait.is_zero());
        l.succeeded(&t);
        // Success gives the allowance back: the source stays clean.
        for _ in 0..20 {
            let t = l.reserve(ip("10.0.0.2")).unwrap();
            assert!(t.wait.is_zero());
            l.succeeded(&t);
        }
    }
}
