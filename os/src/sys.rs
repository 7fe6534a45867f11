//! The agent's own calls into the OS (the modules have theirs).

use nix::time::{clock_gettime, ClockId};

/// CLOCK_BOOTTIME in milliseconds, the clock init stamps `CELLOS_INIT_START` with.
pub fn boottime_ms() -> nix::Result<u64> {
    let t = clock_gettime(ClockId::CLOCK_BOOTTIME)?;
    let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
    let ms = u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000_000;
    Ok(secs.saturating_mul(1000).saturating_add(ms))
}
