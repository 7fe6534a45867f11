//! Volumes: a btrfs subvolume under `<pool>/volumes/<name>` with a qgroup limit on
//! what it references, so writing past its size fails inside it and nowhere else.
//!
//! Volumes go on SSD pools (they are sold as SRU). Every call is idempotent and
//! starts from what is on disk, so the provision engine can repeat it after a crash:
//! creating a volume that exists sets its limit, deleting one that does not exist
//! succeeds.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::pools::{DiskKind, Pool, PoolName, VOLUMES};
use crate::sys::Sys;
use crate::StorageError;

/// A volume's name: 1 to 64 of `a-z 0-9 - _ .`, starting with a letter or digit.
/// It is one path component that is neither `.` nor `..`, which is what keeps a
/// volume inside its pool.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeName(String);

impl VolumeName {
    pub fn new(name: &str) -> Result<Self, StorageError> {
        let bad = |reason| StorageError::BadVolumeName {
            name: name.to_string(),
            reason,
        };
        if name.is_empty() || name.len() > 64 {
            return Err(bad("it must be 1 to 64 characters long"));
        }
        if !name.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(bad("it must start with a letter or a digit"));
        }
        let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b);
        if !name.bytes().all(ok) {
            return Err(bad("only a-z, 0-9, '-', '_' and '.' are allowed"));
        }
        Ok(VolumeName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for VolumeName {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self, StorageError> {
        VolumeName::new(s)
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A volume as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: VolumeName,
    pub pool: PoolName,
    /// Where a workload mounts it from.
    pub path: PathBuf,
    /// Its limit in bytes.
    pub size: u64,
    /// Bytes it references now (as of btrfs's last transaction commit).
    pub used: u64,
}

/// What the provision engine needs for `volume` workloads.
pub trait Volumes: Send + Sync {
    /// Creates the volume with a limit of `size` bytes, or sets the limit of the
    /// existing one to `size`.
    fn create(&self, name: &VolumeName, size: u64) -> Result<VolumeInfo, StorageError>;
    /// Deletes the volume and its data; one that does not exist is already deleted.
    fn delete(&self, name: &VolumeName) -> Result<(), StorageError>;
    /// Every volume, sorted by name.
    fn list(&self) -> Result<Vec<VolumeInfo>, StorageError>;
    /// One volume with its usage now; [`StorageError::NoVolume`] if there is none.
    fn usage(&self, name: &VolumeName) -> Result<VolumeInfo, StorageError>;
}

/// The smallest volume: btrfs needs room for its own metadata.
pub const MIN_VOLUME: u64 = 1 << 20;

/// A pool that volumes go on.
#[derive(Debug, Clone)]
struct Home {
    name: PoolName,
    mount: PathBuf,
    size: u64,
}

/// Volumes on the node's SSD pools, through the `btrfs` tool.
pub struct BtrfsVolumes<S> {
    pools: Vec<Home>,
    sys: S,
}

/// One qgroup row: bytes referenced and the limit, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Qgroup {
    referenced: u64,
    limit: Option<u64>,
}

impl<S: Sys> BtrfsVolumes<S> {
    /// Volumes on the SSD pools among `pools` (as [`crate::bring_up`] made them).
    pub fn new(pools: &[Pool], sys: S) -> Self {
        BtrfsVolumes {
            pools: pools
                .iter()
                .filter(|p| p.name.kind() == DiskKind::Ssd)
                .map(|p| Home {
                    name: p.name,
                    mount: p.mount.clone(),
                    size: p.size,
                })
                .collect(),
            sys,
        }
    }

    fn path(home: &Home, name: &VolumeName) -> PathBuf {
        home.mount.join(VOLUMES).join(name.as_str())
    }

    /// The pool holding `name` and its path; errors if the path is not a directory.
    fn find(&self, name: &VolumeName) -> Result<Option<(&Home, PathBuf)>, StorageError> {
        for home in &self.pools {
            let path = Self::path(home, name);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => return Ok(Some((home, path))),
                Ok(_) => return Err(StorageError::NotAVolume { path }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StorageError::Io {
                        op: "looking at",
                        path,
                        source,
                    })
                }
            }
        }
        Ok(None)
    }

    fn btrfs(&self, args: &[&OsStr]) -> Result<String, StorageError> {
        self.sys.btrfs(args)
    }

    /// The subvolume id of the subvolume at `path`.
    fn root_id(&self, path: &Path) -> Result<u64, StorageError> {
        let out = self.btrfs(&[
            "inspect-internal".as_ref(),
            "rootid".as_ref(),
            path.as_os_str(),
        ])?;
        out.trim().parse().map_err(|_| StorageError::BadOutput {
            command: format!("btrfs inspect-internal rootid {}", path.display()),
            reason: format!("expected a subvolume id, got {:?}", out.trim()),
        })
    }

    /// Level-0 qgroups of a pool by subvolume id.
    fn qgroups(&self, mount: &Path) -> Result<BTreeMap<u64, Qgroup>, StorageError> {
        let out = self.btrfs(&[
            "qgroup".as_ref(),
            "show".as_ref(),
            "-re".as_ref(),
            "--raw".as_ref(),
            mount.as_os_str(),
        ])?;
        parse_qgroups(&out).map_err(|reason| StorageError::BadOutput {
            command: format!("btrfs qgroup show -re --raw {}", mount.display()),
            reason,
        })
    }

    fn info(
        &self,
        home: &Home,
        name: &VolumeName,
        path: PathBuf,
        qgroups: &BTreeMap<u64, Qgroup>,
    ) -> Result<VolumeInfo, StorageError> {
        let id = self.root_id(&path)?;
        let q = qgroups.get(&id).copied().unwrap_or(Qgroup {
            referenced: 0,
            limit: None,
        });
        Ok(VolumeInfo {
            name: name.clone(),
            pool: home.name,
            path,
            size: q.limit.unwrap_or(0),
            used: q.referenced,
        })
    }

    fn limit(&self, path: &Path, size: u64) -> Result<(), StorageError> {
        let size = size.to_string();
        self.btrfs(&[
            "qgroup".as_ref(),
            "limit".as_ref(),
            size.as_ref(),
            path.as_os_str(),
        ])
        .map(|_| ())
    }

    /// The SSD pool with the most room that is not promised to volumes yet.
    fn place(&self, name: &VolumeName, size: u64) -> Result<&Home, StorageError> {
        let mut best: Option<(&Home, u64)> = None;
        for home in &self.pools {
            let promised = self
                .qgroups(&home.mount)?
                .values()
                .filter_map(|q| q.limit)
                .fold(0u64, u64::saturating_add);
            let available = self.sys.fs_size(&home.mount)?.available;
            let room = home.size.saturating_sub(promised).min(available);
            if !matches!(best, Some((_, r)) if r >= room) {
                best = Some((home, room));
            }
        }
        match best {
            None => Err(StorageError::NoSsdPool { name: name.clone() }),
            Some((home, room)) if room >= size => Ok(home),
            Some((_, room)) => Err(StorageError::NoSpace {
                name: name.clone(),
                wanted: size,
                largest: room,
            }),
        }
    }
}

impl<S: Sys> Volumes for BtrfsVolumes<S> {
    fn create(&self, name: &VolumeName, size: u64) -> Result<VolumeInfo, StorageError> {
        if size < MIN_VOLUME {
            return Err(StorageError::BadVolumeSize {
                name: name.clone(),
                size,
            });
        }
        if let Some((_, path)) = self.find(name)? {
            self.limit(&path, size)?;
            return self.usage(name);
        }
        let home = self.place(name, size)?;
        let path = Self::path(home, name);
        self.btrfs(&["subvolume".as_ref(), "create".as_ref(), path.as_os_str()])?;
        if let Err(e) = self.limit(&path, size) {
            // A volume without its limit must not stay: it could fill the pool.
            let _ = self.btrfs(&["subvolume".as_ref(), "delete".as_ref(), path.as_os_str()]);
            return Err(e);
        }
        self.usage(name)
    }

    fn delete(&self, name: &VolumeName) -> Result<(), StorageError> {
        let Some((home, path)) = self.find(name)? else {
            return Ok(());
        };
        let id = self.root_id(&path)?;
        self.btrfs(&["subvolume".as_ref(), "delete".as_ref(), path.as_os_str()])?;
        // The qgroup outlives its subvolume; drop it so `list`'s promised space is
        // right. The kernel may refuse while the cleaner still frees the extents:
        // then the stale qgroup (no subvolume, so never listed) is dropped by the
        // next delete that succeeds to, and only its limit is over-counted.
        let qgroup = format!("0/{id}");
        let _ = self.btrfs(&[
            "qgroup".as_ref(),
            "destroy".as_ref(),
            qgroup.as_ref(),
            home.mount.as_os_str(),
        ]);
        Ok(())
    }

    fn list(&self) -> Result<Vec<VolumeInfo>, StorageError> {
        let mut out = Vec::new();
        for home in &self.pools {
            let dir = home.mount.join(VOLUMES);
            let read = |source| StorageError::Read {
                path: dir.clone(),
                source,
            };
            let mut names = Vec::new();
            for e in std::fs::read_dir(&dir).map_err(read)? {
                let e = e.map_err(read)?;
                // Anything that is not a valid name is not ours to report.
                if let Ok(n) = VolumeName::new(&e.file_name().to_string_lossy()) {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        names.push(n);
                    }
                }
            }
            if names.is_empty() {
                continue;
            }
            let qgroups = self.qgroups(&home.mount)?;
            for n in names {
                let path = Self::path(home, &n);
                out.push(self.info(home, &n, path, &qgroups)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn usage(&self, name: &VolumeName) -> Result<VolumeInfo, StorageError> {
        let Some((home, path)) = self.find(name)? else {
            return Err(StorageError::NoVolume { name: name.clone() });
        };
        let qgroups = self.qgroups(&home.mount)?;
        self.info(home, name, path, &qgroups)
    }
}

/// Parses `btrfs qgroup show -re --raw`: a header, a dashes line, then rows of
/// `0/<id> <referenced> <exclusive> <max referenced|none> <max exclusive|none> [path]`.
fn parse_qgroups(out: &str) -> Result<BTreeMap<u64, Qgroup>, String> {
    let mut map = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(id) = f.first().and_then(|q| q.strip_prefix("0/")) else {
            continue;
        };
        let bad = || format!("unreadable qgroup row {line:?}");
        let id: u64 = id.parse().map_err(|_| bad())?;
        let referenced: u64 = f.get(1).and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let limit = match f.get(3) {
            Some(&"none") => None,
            Some(v) => Some(v.parse().map_err(|_| bad())?),
            None => return Err(bad()),
        };
        map.insert(id, Qgroup { referenced, limit });
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_one_safe_component() {
        for ok in ["data", "vol-1", "a.b_c", "0", &"x".repeat(64)] {
            assert_eq!(VolumeName::new(ok).expect(ok).as_str(), ok);
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "-a",
            "_a",
            "A",
            "a b",
            "ä",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(
                    VolumeName::new(bad),
                    Err(StorageError::BadVolumeName { .. })
                ),
                "{bad:?} was accepted"
            );
        }
        let e = VolumeName::new("../etc").expect_err("escape");
        assert_eq!(
            e.to_string(),
            "volume name \"../etc\" is not valid: it must start with a letter or a digit"
        );
    }

    #[test]
    fn parses_qgroup_show() {
        let out = "Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path \n\
                   --------    ----------    ---------  --------------  -------------   ---- \n\
                   0/5              16384        16384            none           none   <toplevel>\n\
                   0/256          1048576            0        10485760           none   volumes/v1\n\
                   1/100                0            0            none           none   <stale>\n";
        let q = parse_qgroups(out).expect("parse");
        assert_eq!(q.len(), 2);
        assert_eq!(
            q[&5],
            Qgroup {
                referenced: 16384,
                limit: None
            }
        );
        assert_eq!(
            q[&256],
            Qgroup {
                referenced: 1_048_576,
                limit: Some(10_485_760)
            }
        );
        assert!(parse_qgroups("0/257 12 12 lots none\n").is_err());
        assert!(parse_qgroups("0/x 1 2 3 4\n").is_err());
    }
}
