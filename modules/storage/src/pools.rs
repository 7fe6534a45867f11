//! Disks to pools: one btrfs filesystem per disk, mounted at `<mnt>/<pool>`, and the
//! node's state directory on the first SSD pool.
//!
//! Pools are named by kind and number (`ssd0`, `hdd1`) and the name is the
//! filesystem label with a `cellos-` prefix, so a disk says by itself which pool it
//! is and what kind it was found to be: the SSD/HDD decision (and its seek probe) is
//! made once, when the disk is formatted, and read back from the label on every later
//! boot. Bringing pools up is idempotent: a pool an earlier run of the agent mounted
//! is found mounted and used as is.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use cellos_ledger::deployment::Size;

use crate::disks::{self, BlockDisk, Skipped};
use crate::probe::{self, Content, LABEL_PREFIX};
use crate::sys::Sys;
use crate::{HostPaths, StorageError};

/// Solid state or spinning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiskKind {
    Ssd,
    Hdd,
}

impl DiskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskKind::Ssd => "ssd",
            DiskKind::Hdd => "hdd",
        }
    }
}

impl fmt::Display for DiskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pool's name: its kind and a number, `ssd0`. Also its mount directory's name,
/// so it is never more than that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolName {
    kind: DiskKind,
    index: u32,
}

impl PoolName {
    pub fn new(kind: DiskKind, index: u32) -> Self {
        PoolName { kind, index }
    }

    pub fn kind(&self) -> DiskKind {
        self.kind
    }

    /// The filesystem label that carries this name on the disk.
    pub fn label(&self) -> String {
        format!("{LABEL_PREFIX}{self}")
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind, self.index)
    }
}

impl FromStr for PoolName {
    type Err = ();
    /// `ssd<N>` or `hdd<N>`, N in decimal without leading zeros.
    fn from_str(s: &str) -> Result<Self, ()> {
        let (kind, n) = if let Some(n) = s.strip_prefix("ssd") {
            (DiskKind::Ssd, n)
        } else if let Some(n) = s.strip_prefix("hdd") {
            (DiskKind::Hdd, n)
        } else {
            return Err(());
        };
        if n.is_empty()
            || (n.len() > 1 && n.starts_with('0'))
            || !n.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(());
        }
        let index = n.parse().map_err(|_| ())?;
        Ok(PoolName { kind, index })
    }
}

/// A mounted pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: PoolName,
    /// The disk's kernel name.
    pub disk: String,
    /// Bytes in the filesystem (statvfs), what the ledger is told.
    pub size: u64,
    pub mount: PathBuf,
    /// Formatted during this boot.
    pub created: bool,
}

/// Where the node keeps what must survive a reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    pub path: PathBuf,
    /// `false`: a tmpfs fallback, lost at reboot; the node must not accept contracts.
    pub persistent: bool,
}

/// What to do with disks that hold something else (`cellos.disks=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForeignDisks {
    /// Leave them alone and say so (the default).
    #[default]
    Keep,
    /// Wipe them and make pools of them (`cellos.disks=wipe`).
    Wipe,
}

impl FromStr for ForeignDisks {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" | "keep" => Ok(ForeignDisks::Keep),
            "wipe" => Ok(ForeignDisks::Wipe),
            other => Err(format!(
                "{other:?} is not a disks policy: expected keep or wipe"
            )),
        }
    }
}

/// How [`bring_up`] behaves.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub foreign: ForeignDisks,
    /// The device the node booted from, never taken (init's `CELLOS_BOOT_DEVICE`).
    pub boot_device: Option<String>,
}

/// Pools and the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// Sorted by name (SSDs first).
    pub pools: Vec<Pool>,
    pub state: StateDir,
}

impl Storage {
    fn total(&self, kind: DiskKind) -> u64 {
        self.pools
            .iter()
            .filter(|p| p.name.kind == kind)
            .fold(0u64, |sum, p| sum.saturating_add(p.size))
    }

    /// SRU: bytes in SSD pools.
    pub fn sru(&self) -> u64 {
        self.total(DiskKind::Ssd)
    }

    /// HRU: bytes in HDD pools.
    pub fn hru(&self) -> u64 {
        self.total(DiskKind::Hdd)
    }
}

/// One thing worth a console line; `Display` is the line.
#[derive(Debug)]
pub enum Event {
    Skipped(Skipped),
    LeftAlone {
        disk: String,
        holds: String,
    },
    Wiping {
        disk: String,
        holds: String,
    },
    Classified {
        disk: String,
        rotational: bool,
        seek: Duration,
        kind: DiskKind,
    },
    Formatting {
        disk: String,
        pool: PoolName,
    },
    Duplicate {
        disk: String,
        pool: PoolName,
    },
    Failed {
        disk: String,
        error: StorageError,
    },
    Mounted(Pool),
    StateFailed {
        pool: PoolName,
        error: StorageError,
    },
    State(StateDir),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Skipped(s) => write!(f, "{s}"),
            Event::LeftAlone { disk, holds } => write!(
                f,
                "cellos: disk {disk} holds {holds}; left alone (boot with cellos.disks=wipe to make a pool of it)"
            ),
            Event::Wiping { disk, holds } => {
                write!(f, "cellos: disk {disk} holds {holds}; wiping it (cellos.disks=wipe)")
            }
            Event::Classified { disk, rotational, seek, kind } => {
                let ms = seek.as_secs_f64() * 1000.0;
                let why = match (rotational, kind) {
                    (false, DiskKind::Hdd) => "; the rotational flag says ssd but seeks are slow",
                    (true, _) if *seek < HDD_SEEK => {
                        "; seeks are fast but the disk says it spins, kept as hdd"
                    }
                    _ => "",
                };
                write!(
                    f,
                    "cellos: disk {disk} rotational={}, median seek {ms:.2} ms: {kind}{why}",
                    u8::from(*rotational)
                )
            }
            Event::Formatting { disk, pool } => {
                write!(f, "cellos: formatting {disk} as btrfs pool {pool} (label {})", pool.label())
            }
            Event::Duplicate { disk, pool } => write!(
                f,
                "cellos: disk {disk} is pool {pool} too, another disk has that name; left alone"
            ),
            Event::Failed { disk, error } => write!(f, "cellos: disk {disk}: {error}; not used"),
            Event::Mounted(p) => write!(
                f,
                "cellos: pool {} on {} ({}, {}) mounted at {}",
                p.name,
                p.disk,
                Size(p.size),
                p.name.kind,
                p.mount.display()
            ),
            Event::StateFailed { pool, error } => {
                write!(f, "cellos: no state directory on pool {pool}: {error}")
            }
            Event::State(s) if s.persistent => write!(f, "cellos: state on {}", s.path.display()),
            Event::State(s) => write!(
                f,
                "cellos: no SSD pool: state on {} (tmpfs), lost at reboot; this node has no persistent state and accepts no contracts",
                s.path.display()
            ),
        }
    }
}

/// A median random read slower than this is a spinning disk (a 7200 rpm disk
/// averages 8-12 ms; any SSD, even behind USB, stays well under 1 ms).
pub const HDD_SEEK: Duration = Duration::from_millis(5);

/// The kind of a new disk.
///
/// The probe only ever demotes: a disk that says it is an SSD but seeks like a disk
/// is an HDD (selling it as SSD would cheat the users who pay for SSD). A disk that
/// says it spins stays an HDD even when it seeks fast, because fast seeks are easy
/// to fake (a virtual disk, a RAID controller's cache, reads of never-written
/// blocks) and under-selling harms nobody but the farmer, who can see why on the
/// console.
pub fn classify(rotational: bool, seek: Duration) -> DiskKind {
    if rotational || seek >= HDD_SEEK {
        DiskKind::Hdd
    } else {
        DiskKind::Ssd
    }
}

/// The name of the state subvolume on its pool.
pub const STATE: &str = "state";
/// The directory on each pool that holds the volumes.
pub const VOLUMES: &str = "volumes";

/// Finds the disks, makes and mounts the pools, and picks the state directory.
///
/// Fails only when the disks cannot be listed at all; a disk that fails is an event
/// and is left out, and with no SSD pool the state directory falls back to tmpfs.
pub fn bring_up(
    paths: &HostPaths,
    sys: &dyn Sys,
    opts: &Options,
    notify: &mut dyn FnMut(Event),
) -> Result<Storage, StorageError> {
    let (candidates, skipped) = disks::discover(paths, opts.boot_device.as_deref())?;
    for s in skipped {
        notify(Event::Skipped(s));
    }

    let mut existing: Vec<(BlockDisk, PoolName)> = Vec::new();
    let mut blank: Vec<BlockDisk> = Vec::new();
    for d in candidates {
        let header = match sys.read_at(&d.dev, 0, probe::HEADER_LEN) {
            Ok(h) => h,
            Err(error) => {
                notify(Event::Failed {
                    disk: d.name,
                    error,
                });
                continue;
            }
        };
        match probe::identify(&header) {
            Content::Pool(name) if existing.iter().any(|(_, n)| *n == name) => {
                notify(Event::Duplicate {
                    disk: d.name,
                    pool: name,
                })
            }
            Content::Pool(name) => existing.push((d, name)),
            Content::Blank => blank.push(d),
            Content::Foreign(holds) => match opts.foreign {
                ForeignDisks::Keep => notify(Event::LeftAlone {
                    disk: d.name,
                    holds,
                }),
                ForeignDisks::Wipe => {
                    notify(Event::Wiping {
                        disk: d.name.clone(),
                        holds,
                    });
                    match sys.wipe(&d.dev, d.size) {
                        Ok(()) => blank.push(d),
                        Err(error) => notify(Event::Failed {
                            disk: d.name,
                            error,
                        }),
                    }
                }
            },
        }
    }

    let mut pools = Vec::new();
    for (d, name) in existing {
        if let Some(p) = mount_pool(paths, sys, &d, name, false, notify) {
            pools.push(p);
        }
    }
    let mut taken: Vec<PoolName> = pools.iter().map(|p| p.name).collect();
    for d in blank {
        let seek = match sys.seek_time(&d.dev, d.size) {
            Ok(t) => t,
            Err(error) => {
                notify(Event::Failed {
                    disk: d.name,
                    error,
                });
                continue;
            }
        };
        let kind = classify(d.rotational, seek);
        notify(Event::Classified {
            disk: d.name.clone(),
            rotational: d.rotational,
            seek,
            kind,
        });
        let name = (0..)
            .map(|i| PoolName::new(kind, i))
            .find(|n| !taken.contains(n))
            .unwrap_or(PoolName::new(kind, u32::MAX));
        notify(Event::Formatting {
            disk: d.name.clone(),
            pool: name,
        });
        if let Err(error) = sys.mkfs_btrfs(&d.dev, &name.label()) {
            notify(Event::Failed {
                disk: d.name,
                error,
            });
            continue;
        }
        taken.push(name);
        if let Some(p) = mount_pool(paths, sys, &d, name, true, notify) {
            pools.push(p);
        }
    }
    pools.sort_by_key(|p| p.name);

    let state = state_dir(paths, sys, &pools, notify)?;
    notify(Event::State(state.clone()));
    Ok(Storage { pools, state })
}

/// Mounts one pool and readies it for volumes; `None` (and an event) on failure.
fn mount_pool(
    paths: &HostPaths,
    sys: &dyn Sys,
    d: &BlockDisk,
    name: PoolName,
    created: bool,
    notify: &mut dyn FnMut(Event),
) -> Option<Pool> {
    let mount = paths.mnt.join(name.to_string());
    let r = (|| {
        match &d.mounted_at {
            Some(at) if *at == mount => {}
            Some(at) => {
                return Err(StorageError::MountedElsewhere {
                    device: d.dev.clone(),
                    at: at.clone(),
                    pool: name.to_string(),
                })
            }
            None => {
                mkdir(&mount)?;
                sys.mount_btrfs(&d.dev, &mount)?;
            }
        }
        sys.btrfs(&["quota".as_ref(), "enable".as_ref(), mount.as_os_str()])?;
        mkdir(&mount.join(VOLUMES))?;
        sys.fs_size(&mount)
    })();
    match r {
        Ok(size) => {
            let p = Pool {
                name,
                disk: d.name.clone(),
                size: size.total,
                mount,
                created,
            };
            notify(Event::Mounted(p.clone()));
            Some(p)
        }
        Err(error) => {
            notify(Event::Failed {
                disk: d.name.clone(),
                error,
            });
            None
        }
    }
}

/// The `state` subvolume of the SSD pool that has one (so it stays put when disks
/// are added), else of the first SSD pool; tmpfs under `run` when there is none.
fn state_dir(
    paths: &HostPaths,
    sys: &dyn Sys,
    pools: &[Pool],
    notify: &mut dyn FnMut(Event),
) -> Result<StateDir, StorageError> {
    let mut ssds: Vec<&Pool> = pools
        .iter()
        .filter(|p| p.name.kind == DiskKind::Ssd)
        .collect();
    ssds.sort_by_key(|p| (!p.mount.join(STATE).exists(), p.name));
    for p in ssds {
        let path = p.mount.join(STATE);
        if path.exists() {
            return Ok(StateDir {
                path,
                persistent: true,
            });
        }
        match sys.btrfs(&["subvolume".as_ref(), "create".as_ref(), path.as_os_str()]) {
            Ok(_) => {
                return Ok(StateDir {
                    path,
                    persistent: true,
                })
            }
            Err(error) => notify(Event::StateFailed {
                pool: p.name,
                error,
            }),
        }
    }
    let path = paths.run.join("cellos/state");
    mkdir(&path)?;
    Ok(StateDir {
        path,
        persistent: false,
    })
}

fn mkdir(path: &Path) -> Result<(), StorageError> {
    std::fs::create_dir_all(path).map_err(|source| StorageError::Io {
        op: "creating directory",
        path: path.to_path_buf(),
        source,
    })
}
