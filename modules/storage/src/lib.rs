//! cellos-storage: the node's disks as btrfs pools, its state directory, and
//! volumes for workloads.
//!
//! A node keeps nothing on its boot medium, so everything it must remember lives on
//! its disks. [`bring_up`] turns every blank disk (and every disk that already is one
//! of our pools) into one btrfs filesystem per disk, mounted at `/mnt/<pool>`, decides
//! once per disk whether it is an SSD or an HDD (the rotational flag, checked by a
//! seek probe) and puts the node's state directory on the first SSD pool. SRU and HRU
//! on the ledger are the sizes of these pools.
//!
//! What it must never do: touch a disk that holds anything else (a partition table,
//! a filesystem, any non-zero byte in its first MiB) unless the farmer said
//! `cellos.disks=wipe`; take the boot medium or a removable device; let a volume
//! name reach outside its pool.
//!
//! [`Volumes`] is the interface the provision engine uses for `volume` workloads: a
//! volume is a btrfs subvolume with a qgroup limit; [`BtrfsVolumes`] is the real one
//! and [`fake::MemVolumes`] an in-memory one for other crates' unit tests. All calls
//! into the OS go through [`sys::Sys`]; files under /sys, /proc, /dev and the mount
//! root are read under an injected [`HostPaths`].

pub mod disks;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod pools;
pub mod probe;
pub mod sys;
mod volumes;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use pools::{
    bring_up, DiskKind, Event, ForeignDisks, Options, Pool, PoolName, StateDir, Storage,
};
pub use volumes::{BtrfsVolumes, VolumeInfo, VolumeName, Volumes};

/// Where the kernel's and the node's trees are (`/sys`, `/proc`, `/dev`, `/mnt`,
/// `/run` on a node); tests point them at fixture directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    pub sys: PathBuf,
    pub proc: PathBuf,
    pub dev: PathBuf,
    /// Pools are mounted at `<mnt>/<pool>`.
    pub mnt: PathBuf,
    /// A tmpfs; the fallback state directory is `<run>/cellos/state`.
    pub run: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            sys: "/sys".into(),
            proc: "/proc".into(),
            dev: "/dev".into(),
            mnt: "/mnt".into(),
            run: "/run".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting {device} at {target}")]
    Mount {
        device: PathBuf,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{device} is pool {pool} but is mounted at {at}")]
    MountedElsewhere {
        device: PathBuf,
        at: PathBuf,
        pool: String,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("`{command}` printed something unexpected: {reason}")]
    BadOutput { command: String, reason: String },
    #[error("volume name {name:?} is not valid: {reason}")]
    BadVolumeName { name: String, reason: &'static str },
    #[error("volume {name}: a size of {size} bytes is below the 1 MiB minimum")]
    BadVolumeSize { name: VolumeName, size: u64 },
    #[error("volume {name}: the node has no SSD pool to put it on")]
    NoSsdPool { name: VolumeName },
    #[error("volume {name}: no SSD pool has {wanted} bytes unreserved (the most is {largest})")]
    NoSpace {
        name: VolumeName,
        wanted: u64,
        largest: u64,
    },
    #[error("volume {name} does not exist")]
    NoVolume { name: VolumeName },
    #[error("{path} is not a volume directory (a symlink or a file?)")]
    NotAVolume { path: PathBuf },
}
