//! Which block devices are candidates for pools, from /sys/block and mountinfo.
//!
//! Never candidates: devices that are not disks (loop, RAM, optical, device-mapper),
//! removable media, the boot medium, read-only devices, disks that something else
//! holds (md, dm) and disks with a filesystem mounted anywhere but at our own pool
//! mount point (that one is a pool left mounted by an earlier run of the agent).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::{HostPaths, StorageError};

/// Block device name prefixes that are never disks for pools.
const NOT_DISKS: [&str; 7] = ["loop", "ram", "zram", "sr", "dm-", "fd", "nbd"];
/// Smaller devices are not worth a pool (btrfs needs about 110 MiB at least).
pub const MIN_SIZE: u64 = 256 << 20;

/// A whole disk that may become a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDisk {
    /// Kernel name, e.g. `sda`.
    pub name: String,
    /// Its node under the injected /dev.
    pub dev: PathBuf,
    pub size: u64,
    pub rotational: bool,
    /// Where it is mounted already, if anywhere (as a whole-disk btrfs).
    pub mounted_at: Option<PathBuf>,
}

/// A disk that is not a candidate, and why; `Display` is the console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cellos: disk {} not used: {}", self.name, self.reason)
    }
}

/// Lists candidate disks, sorted by name, and the ones skipped.
///
/// `boot_device` is the device the node booted from (a disk or partition name or
/// a /dev path), when init knows it.
pub fn discover(
    paths: &HostPaths,
    boot_device: Option<&str>,
) -> Result<(Vec<BlockDisk>, Vec<Skipped>), StorageError> {
    let block = paths.sys.join("block");
    let mut disks = Vec::new();
    let mut skipped = Vec::new();
    // Partition name -> disk name, for mountinfo sources and the boot device.
    let mut parent: BTreeMap<String, String> = BTreeMap::new();
    let names = entries(&block)?;
    for name in &names {
        parent.insert(name.clone(), name.clone());
        if let Ok(subs) = entries(&block.join(name)) {
            for s in subs {
                if block.join(name).join(&s).join("partition").exists() {
                    parent.insert(s, name.clone());
                }
            }
        }
    }
    let boot = boot_device
        .map(|b| b.trim().trim_start_matches("/dev/").to_string())
        .filter(|b| !b.is_empty())
        .map(|b| parent.get(&b).cloned().unwrap_or(b));
    let mounts = mounts(paths, &parent)?;

    for name in names {
        if NOT_DISKS.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dir = block.join(&name);
        let mut skip = |reason: String| {
            skipped.push(Skipped {
                name: name.clone(),
                reason,
            })
        };
        let attrs = (|| {
            Ok::<_, StorageError>((
                read_u64(&dir.join("size"))?.saturating_mul(512),
                read_u64(&dir.join("queue/rotational"))? != 0,
                read_u64(&dir.join("removable"))? != 0,
                read_u64(&dir.join("ro")).unwrap_or(0) != 0,
            ))
        })();
        let (size, rotational, removable, ro) = match attrs {
            Ok(a) => a,
            Err(e) => {
                // The reason is a string: keep the OS error the variant holds as its source.
                let cause = std::error::Error::source(&e).map(|c| format!(": {c}"));
                skip(format!("{e}{}", cause.unwrap_or_default()));
                continue;
            }
        };
        if size == 0 {
            continue; // a card reader without a card
        }
        if boot.as_deref() == Some(name.as_str()) {
            skip("it is the boot medium".into());
            continue;
        }
        if removable {
            skip("removable".into());
            continue;
        }
        if ro {
            skip("read-only".into());
            continue;
        }
        if size < MIN_SIZE {
            skip(format!(
                "too small ({})",
                cellos_ledger::deployment::Size(size)
            ));
            continue;
        }
        let holders = entries(&dir.join("holders")).unwrap_or_default();
        if let Some(h) = holders.first() {
            skip(format!("held by {h}"));
            continue;
        }
        let mut mounted_at = None;
        if let Some(ms) = mounts.get(&name) {
            let whole_disk_under_mnt = ms
                .iter()
                .all(|(src, at)| src == &name && at.parent() == Some(paths.mnt.as_path()));
            match ms.first() {
                Some((_, at)) if ms.len() == 1 && whole_disk_under_mnt => {
                    mounted_at = Some(at.clone())
                }
                _ => {
                    let list: Vec<String> = ms
                        .iter()
                        .map(|(src, at)| format!("{src} on {}", at.display()))
                        .collect();
                    skip(format!("in use (mounted: {})", list.join(", ")));
                    continue;
                }
            }
        }
        disks.push(BlockDisk {
            dev: paths.dev.join(&name),
            name,
            size,
            rotational,
            mounted_at,
        });
    }
    Ok((disks, skipped))
}

/// Mounts by disk name: (source device name, mount point).
fn mounts(
    paths: &HostPaths,
    parent: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Vec<(String, PathBuf)>>, StorageError> {
    let path = paths.proc.join("self/mountinfo");
    let text = fs::read_to_string(&path).map_err(|source| StorageError::Read {
        path: path.clone(),
        source,
    })?;
    let mut out: BTreeMap<String, Vec<(String, PathBuf)>> = BTreeMap::new();
    for line in text.lines() {
        // id parent maj:min root mountpoint options [optional...] - fstype source superopts
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(at), Some(source)) = (fields.get(4), fields.get(dash + 2)) else {
            continue;
        };
        let Some(dev) = source.strip_prefix("/dev/") else {
            continue;
        };
        if let Some(disk) = parent.get(dev) {
            out.entry(disk.clone())
                .or_default()
                .push((dev.to_string(), PathBuf::from(unescape(at))));
        }
    }
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn entries(dir: &Path) -> Result<Vec<String>, StorageError> {
    let read = |source| StorageError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for e in fs::read_dir(dir).map_err(read)? {
        names.push(e.map_err(read)?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn read_u64(path: &Path) -> Result<u64, StorageError> {
    let text = fs::read_to_string(path).map_err(|source| StorageError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.trim().parse().map_err(|_| StorageError::Parse {
        path: path.to_path_buf(),
        reason: format!("expected a number, found {:?}", text.trim()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("fixture paths have a parent")).expect("mkdir");
        fs::write(p, text).expect("write fixture");
    }

    pub fn disk(root: &Path, name: &str, bytes: u64, rotational: bool, removable: bool) {
        let b = format!("sys/block/{name}");
        write(root, &format!("{b}/size"), &format!("{}\n", bytes / 512));
        write(
            root,
            &format!("{b}/queue/rotational"),
            if rotational { "1\n" } else { "0\n" },
        );
        write(
            root,
            &format!("{b}/removable"),
            if removable { "1\n" } else { "0\n" },
        );
        write(root, &format!("{b}/ro"), "0\n");
        fs::create_dir_all(root.join(format!("{b}/holders"))).expect("holders");
    }

    pub fn paths(root: &Path) -> HostPaths {
        let p = HostPaths {
            sys: root.join("sys"),
            proc: root.join("proc"),
            dev: root.join("dev"),
            mnt: root.join("mnt"),
            run: root.join("run"),
        };
        if !p.proc.join("self/mountinfo").exists() {
            write(root, "proc/self/mountinfo", "");
        }
        fs::create_dir_all(root.join("sys/block")).expect("sys/block");
        p
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn candidates_and_the_reasons_for_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = dir.path();
        let p = paths(r);
        disk(r, "sda", 20 * GIB, false, false);
        disk(r, "sdb", 100 * GIB, true, false);
        disk(r, "sdc", 8 * GIB, false, true); // USB stick
        disk(r, "sdd", 8 * GIB, false, false); // boot medium, by partition
        write(r, "sys/block/sdd/sdd1/partition", "1\n");
        disk(r, "sde", 8 * GIB, false, false); // holds the root
        write(r, "sys/block/sde/sde2/partition", "2\n");
        disk(r, "sdf", 8 * GIB, false, false);
        write(r, "sys/block/sdf/holders/md0", "");
        disk(r, "sdg", 100 << 20, false, false);
        disk(r, "sdh", 8 * GIB, false, false); // our pool, left mounted
        disk(r, "loop0", 8 * GIB, false, false);
        disk(r, "mmcblk0", 0, false, true);
        let mnt = p.mnt.display().to_string();
        write(
            r,
            "proc/self/mountinfo",
            &format!(
                "22 1 0:5 / / rw - rootfs rootfs rw\n\
                 30 22 8:66 / /media/my\\040disk rw,relatime shared:1 - ext4 /dev/sde2 rw\n\
                 31 22 8:112 / {mnt}/ssd1 rw - btrfs /dev/sdh rw\n"
            ),
        );
        let (disks, skipped) = discover(&p, Some("/dev/sdd1")).expect("discover");
        let names: Vec<_> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["sda", "sdb", "sdh"]);
        assert_eq!(disks[0].dev, p.dev.join("sda"));
        assert_eq!(disks[0].size, 20 * GIB);
        assert!(!disks[0].rotational && disks[1].rotational);
        assert_eq!(disks[2].mounted_at, Some(p.mnt.join("ssd1")));
        let lines: Vec<String> = skipped.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            lines,
            [
                "cellos: disk sdc not used: removable",
                "cellos: disk sdd not used: it is the boot medium",
                "cellos: disk sde not used: in use (mounted: sde2 on /media/my disk)",
                "cellos: disk sdf not used: held by md0",
                "cellos: disk sdg not used: too small (100.0MiB)",
            ]
        );
    }

    #[test]
    fn unreadable_attributes_skip_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = dir.path();
        let p = paths(r);
        disk(r, "sda", 20 * GIB, false, false);
        write(r, "sys/block/sda/size", "lots\n");
        let (disks, skipped) = discover(&p, None).expect("discover");
        assert!(disks.is_empty());
        assert!(
            skipped[0].reason.contains("expected a number"),
            "{}",
            skipped[0]
        );
    }
}
