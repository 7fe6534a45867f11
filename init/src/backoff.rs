//! Restart delays for services that exit.
//!
//! A crashing service must not spin the CPU or flood the console, yet one that ran fine for a
//! while and then died should come back quickly. So the delay doubles on each quick exit up to
//! a cap, and resets once a run lasted long enough.

use std::time::Duration;

/// The numbers behind [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// A run at least this long resets the delay to `initial`.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    /// 1 s doubling to 30 s, reset after a 60 s run.
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// The restart delay state of one service.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    next: Duration,
}

impl Backoff {
    /// A fresh state: the next delay is `policy.initial`.
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            policy,
            next: policy.initial,
        }
    }

    /// The service exited after running for `ran_for`: how long to wait before restarting.
    pub fn on_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.policy.reset_after {
            self.next = self.policy.initial;
        }
        let delay = self.next.min(self.policy.max);
        self.next = delay.saturating_mul(2).min(self.policy.max);
        delay
    }
}

/// `2s`, `1.5s` or `250ms`: short and readable on the console.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_cap_and_resets_after_long_run() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let quick = Duration::from_millis(10);
        let got: Vec<u64> = (0..7).map(|_| b.on_exit(quick).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.on_exit(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(b.on_exit(Duration::from_secs(59)), Duration::from_secs(2));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(2)), "2s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
    }
}
