//! The agent's own calls into the OS (the modules have theirs).

use nix::time::{clock_gettime, ClockId};

/// CLOCK_BOOTTIME in milliseconds, the clock init stamps `CELLOS_INIT_START` with.
pub fn boottime_ms() -> nix::Result<u64> {
    let t = clock_gettime(ClockId::CLOCK_BOOTTIME)?;
    let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
    let ms = u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000_000;
    Ok(secs.saturating_mul(1000).saturating_add(ms))
}

/// The soft open-file limit init gave us (servers cap their connections below it).
pub fn open_files_limit() -> nix::Result<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map(|(soft, _)| soft)
}

/// Bytes in use on the filesystem mounted at `path` (statvfs).
pub fn fs_used(path: &std::path::Path) -> nix::Result<u64> {
    let s = nix::sys::statvfs::statvfs(path)?;
    let blocks = s.blocks().saturating_sub(s.blocks_free());
    Ok(blocks.saturating_mul(s.fragment_size()))
}

/// Only the owner (root) may open `path` (mode 0600).
pub fn owner_only(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}
