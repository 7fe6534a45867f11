//! Retry delays: doubling from one second up to a cap, reset by any success.

use std::time::Duration;

pub(crate) const FIRST: Duration = Duration::from_secs(1);
/// The longest delay, also the rate at which refusals are retried.
pub(crate) const SLOW: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { next: FIRST }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(SLOW);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let secs: Vec<u64> = (0..7).map(|_| b.next().as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.next(), FIRST);
    }
}
