//! The OS boundary of the storage module: block device reads and writes, the seek
//! probe, mkfs.btrfs, mount, statvfs and the `btrfs` tool.
//!
//! Everything else in the crate is logic over [`Sys`], so unit tests run it against a
//! recording fake; [`System`] is the real thing. Files under the injected
//! [`crate::HostPaths`] roots (sysfs, mountinfo, the pool directories) are read with
//! `std::fs` directly: tests point those roots at fixture trees.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::StorageError;

/// A filesystem's size as statvfs reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSize {
    /// Bytes in the filesystem (for a one-disk btrfs pool: the disk's size).
    pub total: u64,
    /// Bytes an unprivileged writer could still use.
    pub available: u64,
}

/// What the storage module asks of the OS.
pub trait Sys: Send + Sync {
    /// Reads up to `len` bytes at `offset` of a block device (fewer at its end).
    fn read_at(&self, dev: &Path, offset: u64, len: usize) -> Result<Vec<u8>, StorageError>;
    /// Zeroes the first and last MiB of a device (partition tables, superblocks,
    /// the backup GPT) and asks the kernel to forget its partitions.
    fn wipe(&self, dev: &Path, size: u64) -> Result<(), StorageError>;
    /// The median time of a few random 4 KiB reads that bypass the page cache.
    fn seek_time(&self, dev: &Path, size: u64) -> Result<Duration, StorageError>;
    /// `mkfs.btrfs -f -L <label> <dev>`.
    fn mkfs_btrfs(&self, dev: &Path, label: &str) -> Result<(), StorageError>;
    /// Mounts the btrfs on `dev` at `target` (which exists).
    fn mount_btrfs(&self, dev: &Path, target: &Path) -> Result<(), StorageError>;
    /// statvfs of a mounted filesystem.
    fn fs_size(&self, path: &Path) -> Result<FsSize, StorageError>;
    /// Runs the `btrfs` tool with `args`; its stdout on success.
    fn btrfs(&self, args: &[&OsStr]) -> Result<String, StorageError>;
}

/// The real OS.
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

const MIB: u64 = 1 << 20;
/// Random reads in one seek probe; the median of an odd count is one of them.
const PROBE_READS: usize = 31;

/// A 4 KiB buffer aligned for O_DIRECT, so no unsafe allocation is needed.
#[repr(C, align(4096))]
struct Block([u8; 4096]);

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io { op, path, source }
}

nix::ioctl_none!(blkrrpart, 0x12, 95);

impl Sys for System {
    fn read_at(&self, dev: &Path, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
        let f = File::open(dev).map_err(io("opening", dev))?;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io("reading", dev)(e)),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn wipe(&self, dev: &Path, size: u64) -> Result<(), StorageError> {
        let f = OpenOptions::new()
            .write(true)
            .open(dev)
            .map_err(io("opening for writing", dev))?;
        let zeros = vec![0u8; MIB as usize];
        f.write_all_at(&zeros, 0).map_err(io("wiping", dev))?;
        if size > 2 * MIB {
            f.write_all_at(&zeros, size - MIB)
                .map_err(io("wiping", dev))?;
        }
        f.sync_all().map_err(io("syncing", dev))?;
        // SAFETY: BLKRRPART takes no argument; the fd is an open block device that
        // lives until the end of this function.
        let reread = unsafe { blkrrpart(std::os::fd::AsRawFd::as_raw_fd(&f)) };
        // EBUSY (a partition is in use) or ENOTTY (not a partitionable device) leave
        // stale partition nodes behind, which mkfs on the whole disk does not mind.
        let _ = reread;
        Ok(())
    }

    fn seek_time(&self, dev: &Path, size: u64) -> Result<Duration, StorageError> {
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc_o_direct())
            .open(dev);
        // Some devices refuse O_DIRECT: a cached read is still a read.
        let f = match direct {
            Ok(f) => f,
            Err(_) => File::open(dev).map_err(io("opening", dev))?,
        };
        let blocks = (size / 4096).max(1);
        let mut state = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
            | 1;
        let mut buf = Box::new(Block([0; 4096]));
        let mut times = Vec::with_capacity(PROBE_READS);
        for _ in 0..PROBE_READS {
            // xorshift64: spread reads over the whole disk so each one is a seek.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let offset = (state % blocks) * 4096;
            let t = Instant::now();
            f.read_at(&mut buf.0, offset)
                .map_err(io("seek-probing", dev))?;
            times.push(t.elapsed());
        }
        times.sort();
        Ok(times[PROBE_READS / 2])
    }

    fn mkfs_btrfs(&self, dev: &Path, label: &str) -> Result<(), StorageError> {
        let mut cmd = Command::new("mkfs.btrfs");
        cmd.arg("-f").arg("-q").arg("-L").arg(label).arg(dev);
        run(cmd).map(|_| ())
    }

    fn mount_btrfs(&self, dev: &Path, target: &Path) -> Result<(), StorageError> {
        use nix::mount::{mount, MsFlags};
        mount(
            Some(dev),
            target,
            Some("btrfs"),
            MsFlags::MS_NOATIME,
            None::<&str>,
        )
        .map_err(|errno| StorageError::Mount {
            device: dev.to_path_buf(),
            target: target.to_path_buf(),
            source: std::io::Error::from(errno),
        })
    }

    fn fs_size(&self, path: &Path) -> Result<FsSize, StorageError> {
        let st = nix::sys::statvfs::statvfs(path)
            .map_err(|errno| io("statvfs", path)(std::io::Error::from(errno)))?;
        let frsize = st.fragment_size();
        Ok(FsSize {
            total: st.blocks().saturating_mul(frsize),
            available: st.blocks_available().saturating_mul(frsize),
        })
    }

    fn btrfs(&self, args: &[&OsStr]) -> Result<String, StorageError> {
        let mut cmd = Command::new("btrfs");
        cmd.args(args);
        run(cmd)
    }
}

fn libc_o_direct() -> i32 {
    nix::fcntl::OFlag::O_DIRECT.bits()
}

/// Runs a tool; its stdout, or an error naming the command line and its stderr.
fn run(mut cmd: Command) -> Result<String, StorageError> {
    let line = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.output().map_err(|e| StorageError::Command {
        command: line.clone(),
        detail: if e.kind() == std::io::ErrorKind::NotFound {
            "not found (is btrfs-progs in the image?)".into()
        } else {
            e.to_string()
        },
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(StorageError::Command {
            command: line,
            detail: format!("{}: {}", out.status, stderr.trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_probes_and_wipes_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0xabu8; 4 * MIB as usize]).expect("write");
        let head = System.read_at(&path, 4 * MIB - 10, 100).expect("read");
        assert_eq!(head, vec![0xab; 10], "short read at the end");
        // tmpfs refuses O_DIRECT on some kernels: the probe falls back.
        let t = System.seek_time(&path, 4 * MIB).expect("probe");
        assert!(t < Duration::from_secs(1), "{t:?}");
        System.wipe(&path, 4 * MIB).expect("wipe");
        let all = std::fs::read(&path).expect("read");
        assert!(all[..MIB as usize].iter().all(|b| *b == 0));
        assert!(all[3 * MIB as usize..].iter().all(|b| *b == 0));
        assert!(all[MIB as usize..3 * MIB as usize]
            .iter()
            .all(|b| *b == 0xab));
    }

    #[test]
    fn a_failing_tool_says_what_ran_and_why() {
        let e = System
            .btrfs(&[OsStr::new("no-such-subcommand")])
            .expect_err("bad subcommand");
        let msg = e.to_string();
        assert!(msg.contains("btrfs no-such-subcommand"), "{msg}");
    }
}
