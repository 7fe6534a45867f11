//! Where the ledger server's time comes from.
//!
//! The state machine has no clock: a block's time is in its header. The server asks
//! a [`Clock`] for everything else that needs "now": the time of each block it
//! commits (which moves billing and grace periods), the time it reports in its
//! status (which nodes sign their usage windows and uptime with), the window of a
//! signed upload, and the mailbox's retention. Production uses [`SystemClock`]. A
//! test hands the server a [`ManualClock`] and moves time itself, so a test of
//! billing or expiry neither sleeps nor depends on the machine's speed.
//!
//! Nothing moves a server's clock from outside the process: there is no endpoint for
//! it, so no client can make a ledger bill, expire or refuse by its say-so.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of time in whole seconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> u64;
}

/// The machine's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A clock that moves only when told to; its clones share one time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock standing at `time`.
    pub fn at(time: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(time)))
    }

    /// A clock standing at the system time now (so signatures and tokens made
    /// with real time still fit its windows).
    pub fn at_system_time() -> Self {
        Self::at(SystemClock.now())
    }

    /// Moves the time forward by `secs`.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_follow() {
        let c = ManualClock::at(1_000);
        let seen_by_server: Arc<dyn Clock> = Arc::new(c.clone());
        assert_eq!(seen_by_server.now(), 1_000);
        c.advance(61);
        assert_eq!(seen_by_server.now(), 1_061);
        assert_eq!(c.now(), 1_061);
    }
}
