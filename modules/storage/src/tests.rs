//! Pools and volumes over a recording fake of [`Sys`], on fixture /sys trees.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::disks::tests::{disk, paths, write};
use crate::probe::HEADER_LEN;
use crate::sys::{FsSize, Sys};
use crate::*;

const GIB: u64 = 1 << 30;

/// Disks are headers in memory; subvolumes are directories; qgroups a map.
#[derive(Default)]
struct FakeSys {
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    headers: BTreeMap<PathBuf, Vec<u8>>,
    sizes: BTreeMap<PathBuf, u64>,
    seeks: BTreeMap<PathBuf, Duration>,
    mounts: BTreeMap<PathBuf, PathBuf>,
    /// Subvolume path -> (id, limit, referenced).
    subvols: BTreeMap<PathBuf, (u64, Option<u64>, u64)>,
    next_id: u64,
    calls: Vec<String>,
    /// Calls starting with one of these fail.
    failing: Vec<String>,
}

impl FakeSys {
    fn add_disk(&self, dev: PathBuf, size: u64, header: Vec<u8>, seek_ms: u64) {
        let mut s = self.state.lock().expect("lock");
        s.headers.insert(dev.clone(), header);
        s.sizes.insert(dev.clone(), size);
        s.seeks.insert(dev, Duration::from_millis(seek_ms));
    }

    fn calls(&self) -> Vec<String> {
        self.state.lock().expect("lock").calls.clone()
    }

    fn fail(&self, prefix: &str) {
        self.state.lock().expect("lock").failing.push(prefix.into());
    }

    fn set_referenced(&self, path: &Path, bytes: u64) {
        let mut s = self.state.lock().expect("lock");
        if let Some(v) = s.subvols.get_mut(path) {
            v.2 = bytes;
        }
    }

    fn record(&self, call: String) -> Result<(), StorageError> {
        let mut s = self.state.lock().expect("lock");
        s.calls.push(call.clone());
        if s.failing.iter().any(|f| call.starts_with(f)) {
            return Err(StorageError::Command {
                command: call,
                detail: "injected failure".into(),
            });
        }
        Ok(())
    }
}

fn btrfs_header(label: &str) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN];
    h[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
    h[0x1012b..0x1012b + label.len()].copy_from_slice(label.as_bytes());
    h
}

impl Sys for FakeSys {
    fn read_at(&self, dev: &Path, _offset: u64, _len: usize) -> Result<Vec<u8>, StorageError> {
        self.record(format!("read {}", dev.display()))?;
        Ok(self.state.lock().expect("lock").headers[dev].clone())
    }

    fn wipe(&self, dev: &Path, _size: u64) -> Result<(), StorageError> {
        self.record(format!("wipe {}", dev.display()))?;
        let mut s = self.state.lock().expect("lock");
        s.headers.insert(dev.to_path_buf(), vec![0; HEADER_LEN]);
        Ok(())
    }

    fn seek_time(&self, dev: &Path, _size: u64) -> Result<Duration, StorageError> {
        self.record(format!("seek {}", dev.display()))?;
        Ok(self.state.lock().expect("lock").seeks[dev])
    }

    fn mkfs_btrfs(&self, dev: &Path, label: &str) -> Result<(), StorageError> {
        self.record(format!("mkfs {} {label}", dev.display()))?;
        let mut s = self.state.lock().expect("lock");
        s.headers.insert(dev.to_path_buf(), btrfs_header(label));
        Ok(())
    }

    fn mount_btrfs(&self, dev: &Path, target: &Path) -> Result<(), StorageError> {
        self.record(format!("mount {} {}", dev.display(), target.display()))?;
        let mut s = self.state.lock().expect("lock");
        s.mounts.insert(target.to_path_buf(), dev.to_path_buf());
        Ok(())
    }

    fn fs_size(&self, path: &Path) -> Result<FsSize, StorageError> {
        let s = self.state.lock().expect("lock");
        let total = s
            .mounts
            .get(path)
            .and_then(|d| s.sizes.get(d))
            .copied()
            .unwrap_or(10 * GIB);
        Ok(FsSize {
            total,
            available: total - GIB,
        })
    }

    fn btrfs(&self, args: &[&OsStr]) -> Result<String, StorageError> {
        let a: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        self.record(format!("btrfs {}", a.join(" ")))?;
        let mut s = self.state.lock().expect("lock");
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        match a.as_slice() {
            ["subvolume", "create", p] => {
                std::fs::create_dir(p).expect("fake subvolume");
                s.next_id += 1;
                let id = 256 + s.next_id;
                s.subvols.insert(PathBuf::from(p), (id, None, 0));
            }
            ["subvolume", "delete", p] => {
                std::fs::remove_dir_all(p).expect("fake delete");
                s.subvols.remove(Path::new(p));
            }
            ["qgroup", "limit", size, p] => {
                let v = s
                    .subvols
                    .get_mut(Path::new(p))
                    .expect("limit on a subvolume");
                v.1 = Some(size.parse().expect("size"));
            }
            ["inspect-internal", "rootid", p] => {
                return Ok(format!("{}\n", s.subvols[Path::new(p)].0));
            }
            ["qgroup", "show", "-re", "--raw", mount] => {
                let mut out = String::from("Qgroupid Referenced Exclusive Max-referenced Max-exclusive Path\n-------- ---------- --------- -------------- ------------- ----\n0/5 16384 16384 none none <toplevel>\n");
                for (p, (id, limit, used)) in &s.subvols {
                    if p.starts_with(mount) {
                        let l = limit.map_or("none".to_string(), |l| l.to_string());
                        out.push_str(&format!("0/{id} {used} {used} {l} none x\n"));
                    }
                }
                return Ok(out);
            }
            _ => {}
        }
        Ok(String::new())
    }
}

struct Node {
    _dir: tempfile::TempDir,
    paths: HostPaths,
    sys: FakeSys,
}

/// A node with an SSD (sda), an HDD (sdb) and a disk holding ext4 (sdc).
fn node() -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path();
    let paths = paths(r);
    let sys = FakeSys::default();
    disk(r, "sda", 20 * GIB, false, false);
    disk(r, "sdb", 100 * GIB, true, false);
    disk(r, "sdc", 8 * GIB, false, false);
    sys.add_disk(paths.dev.join("sda"), 20 * GIB, vec![0; HEADER_LEN], 0);
    sys.add_disk(paths.dev.join("sdb"), 100 * GIB, vec![0; HEADER_LEN], 12);
    let mut ext4 = vec![0u8; HEADER_LEN];
    ext4[1080] = 0x53;
    ext4[1081] = 0xef;
    sys.add_disk(paths.dev.join("sdc"), 8 * GIB, ext4, 0);
    Node {
        _dir: dir,
        paths,
        sys,
    }
}

fn bring(n: &Node, opts: &Options) -> (Storage, Vec<String>) {
    let mut lines = Vec::new();
    let s = bring_up(&n.paths, &n.sys, opts, &mut |e| lines.push(e.to_string())).expect("bring up");
    let root = n.paths.mnt.parent().expect("root").display().to_string();
    let lines = lines.into_iter().map(|l| l.replace(&root, "")).collect();
    (s, lines)
}

#[test]
fn first_boot_formats_blank_disks_and_leaves_ext4_alone() {
    let n = node();
    let (s, lines) = bring(&n, &Options::default());
    assert_eq!(
        lines,
        [
            "cellos: disk sdc holds an ext2/3/4 filesystem; left alone (boot with cellos.disks=wipe to make a pool of it)",
            "cellos: disk sda rotational=0, median seek 0.00 ms: ssd",
            "cellos: formatting sda as btrfs pool ssd0 (label cellos-ssd0)",
            "cellos: pool ssd0 on sda (20.0GiB, ssd) mounted at /mnt/ssd0",
            "cellos: disk sdb rotational=1, median seek 12.00 ms: hdd",
            "cellos: formatting sdb as btrfs pool hdd0 (label cellos-hdd0)",
            "cellos: pool hdd0 on sdb (100.0GiB, hdd) mounted at /mnt/hdd0",
            "cellos: state on /mnt/ssd0/state",
        ]
    );
    assert_eq!((s.sru(), s.hru()), (20 * GIB, 100 * GIB));
    assert!(s.state.persistent);
    assert_eq!(s.state.path, n.paths.mnt.join("ssd0/state"));
    assert!(s.pools.iter().all(|p| p.created));
    let calls = n.sys.calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("sdc") && !c.starts_with("read")),
        "{calls:?}"
    );
    assert!(calls.iter().any(|c| c.starts_with("btrfs quota enable")));
    assert!(n.paths.mnt.join("ssd0/volumes").is_dir());
}

#[test]
fn second_boot_finds_the_same_pools_without_formatting() {
    let n = node();
    bring(&n, &Options::default());
    let before = n.sys.calls().len();
    let (s, lines) = bring(&n, &Options::default());
    let calls = &n.sys.calls()[before..];
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("mkfs") || c.starts_with("seek")),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.contains("subvolume create")),
        "{calls:?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("cellos: state on /mnt/ssd0/state")
    );
    assert!(s.pools.iter().all(|p| !p.created));
    assert_eq!((s.sru(), s.hru()), (20 * GIB, 100 * GIB));
}

#[test]
fn a_pool_left_mounted_by_an_earlier_run_is_used_as_is() {
    let n = node();
    bring(&n, &Options::default());
    let mnt = n.paths.mnt.display();
    let root = n.paths.mnt.parent().expect("root");
    write(
        root,
        "proc/self/mountinfo",
        &format!("31 22 8:0 / {mnt}/ssd0 rw - btrfs /dev/sda rw\n"),
    );
    let before = n.sys.calls().len();
    let (s, _) = bring(&n, &Options::default());
    let calls = &n.sys.calls()[before..];
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("mount /") && c.contains("sda")),
        "{calls:?}"
    );
    assert_eq!(s.pools.len(), 2);
}

#[test]
fn wipe_takes_foreign_disks() {
    let n = node();
    let opts = Options {
        foreign: ForeignDisks::Wipe,
        boot_device: None,
    };
    let (s, lines) = bring(&n, &opts);
    assert!(lines.contains(
        &"cellos: disk sdc holds an ext2/3/4 filesystem; wiping it (cellos.disks=wipe)".to_string()
    ));
    assert!(lines
        .contains(&"cellos: formatting sdc as btrfs pool ssd1 (label cellos-ssd1)".to_string()));
    assert_eq!(s.sru(), 28 * GIB);
    let calls = n.sys.calls();
    let wipe = calls
        .iter()
        .position(|c| c.starts_with("wipe") && c.ends_with("sdc"));
    let mkfs = calls
        .iter()
        .position(|c| c.starts_with("mkfs") && c.contains("sdc"));
    assert!(wipe.is_some() && wipe < mkfs, "{calls:?}");
}

#[test]
fn the_boot_medium_is_never_taken_even_with_wipe() {
    let n = node();
    let opts = Options {
        foreign: ForeignDisks::Wipe,
        boot_device: Some("/dev/sdc".into()),
    };
    let (_, lines) = bring(&n, &opts);
    assert!(lines.contains(&"cellos: disk sdc not used: it is the boot medium".to_string()));
    assert!(!n.sys.calls().iter().any(|c| c.contains("sdc")));
}

#[test]
fn an_ssd_that_seeks_like_a_disk_is_an_hdd() {
    assert_eq!(
        pools::classify(false, Duration::from_micros(200)),
        DiskKind::Ssd
    );
    assert_eq!(
        pools::classify(false, Duration::from_millis(9)),
        DiskKind::Hdd
    );
    assert_eq!(
        pools::classify(true, Duration::from_micros(200)),
        DiskKind::Hdd
    );
    let n = node();
    n.sys
        .add_disk(n.paths.dev.join("sda"), 20 * GIB, vec![0; HEADER_LEN], 9);
    let (s, lines) = bring(&n, &Options::default());
    assert!(lines.contains(&"cellos: disk sda rotational=0, median seek 9.00 ms: hdd; the rotational flag says ssd but seeks are slow".to_string()));
    assert_eq!(s.sru(), 0);
    assert!(!s.state.persistent);
}

#[test]
fn no_ssd_means_tmpfs_state_and_says_so() {
    let n = node();
    std::fs::remove_dir_all(n.paths.sys.join("block/sda")).expect("rm");
    let (s, lines) = bring(&n, &Options::default());
    assert_eq!(s.state.path, n.paths.run.join("cellos/state"));
    assert!(!s.state.persistent && s.state.path.is_dir());
    assert_eq!(
        lines.last().map(String::as_str),
        Some("cellos: no SSD pool: state on /run/cellos/state (tmpfs), lost at reboot; this node has no persistent state and accepts no contracts")
    );
}

#[test]
fn a_failing_disk_is_reported_and_left_out() {
    let n = node();
    n.sys.fail("mkfs /");
    let (s, lines) = bring(&n, &Options::default());
    assert!(s.pools.is_empty());
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("cellos: disk sda: `mkfs ")
                && l.ends_with("injected failure; not used")),
        "{lines:?}"
    );
}

#[test]
fn the_state_stays_on_the_pool_that_has_it() {
    let n = node();
    bring(&n, &Options::default());
    // Another blank SSD that sorts first by kernel name, on a later boot.
    let root = n.paths.mnt.parent().expect("root");
    disk(root, "nvme0n1", 50 * GIB, false, false);
    n.sys.add_disk(
        n.paths.dev.join("nvme0n1"),
        50 * GIB,
        vec![0; HEADER_LEN],
        0,
    );
    std::fs::remove_dir(n.paths.mnt.join("ssd0/state")).expect("rm state");
    std::fs::create_dir(n.paths.mnt.join("ssd0/state")).expect("state");
    let (s, lines) = bring(&n, &Options::default());
    assert!(lines.contains(
        &"cellos: formatting nvme0n1 as btrfs pool ssd1 (label cellos-ssd1)".to_string()
    ));
    assert_eq!(s.state.path, n.paths.mnt.join("ssd0/state"));
    assert_eq!(s.sru(), 70 * GIB);
}

#[test]
fn duplicate_pool_labels_keep_the_first() {
    let n = node();
    n.sys.add_disk(
        n.paths.dev.join("sda"),
        20 * GIB,
        btrfs_header("cellos-ssd0"),
        0,
    );
    n.sys.add_disk(
        n.paths.dev.join("sdc"),
        8 * GIB,
        btrfs_header("cellos-ssd0"),
        0,
    );
    let (s, lines) = bring(&n, &Options::default());
    assert!(lines.contains(
        &"cellos: disk sdc is pool ssd0 too, another disk has that name; left alone".to_string()
    ));
    assert_eq!(s.sru(), 20 * GIB);
}

fn volumes(n: &Node) -> BtrfsVolumes<&FakeSys> {
    let (s, _) = bring(n, &Options::default());
    BtrfsVolumes::new(&s.pools, &n.sys)
}

impl Sys for &FakeSys {
    fn read_at(&self, d: &Path, o: u64, l: usize) -> Result<Vec<u8>, StorageError> {
        (*self).read_at(d, o, l)
    }
    fn wipe(&self, d: &Path, s: u64) -> Result<(), StorageError> {
        (*self).wipe(d, s)
    }
    fn seek_time(&self, d: &Path, s: u64) -> Result<Duration, StorageError> {
        (*self).seek_time(d, s)
    }
    fn mkfs_btrfs(&self, d: &Path, l: &str) -> Result<(), StorageError> {
        (*self).mkfs_btrfs(d, l)
    }
    fn mount_btrfs(&self, d: &Path, t: &Path) -> Result<(), StorageError> {
        (*self).mount_btrfs(d, t)
    }
    fn fs_size(&self, p: &Path) -> Result<FsSize, StorageError> {
        (*self).fs_size(p)
    }
    fn btrfs(&self, a: &[&OsStr]) -> Result<String, StorageError> {
        (*self).btrfs(a)
    }
}

#[test]
fn volumes_are_subvolumes_with_limits_on_ssd_pools() {
    let n = node();
    let vols = volumes(&n);
    let name = VolumeName::new("data").expect("name");
    let v = vols.create(&name, GIB).expect("create");
    assert_eq!(v.path, n.paths.mnt.join("ssd0/volumes/data"));
    assert_eq!(
        (v.size, v.used, v.pool.to_string()),
        (GIB, 0, "ssd0".to_string())
    );
    let calls = n.sys.calls();
    let p = v.path.display();
    assert!(calls.contains(&format!("btrfs subvolume create {p}")));
    assert!(calls.contains(&format!("btrfs qgroup limit {GIB} {p}")));

    // Idempotent: the same call again changes nothing but the limit.
    n.sys.set_referenced(&v.path, 4096);
    let again = vols.create(&name, 2 * GIB).expect("create again");
    assert_eq!((again.size, again.used), (2 * GIB, 4096));
    assert_eq!(vols.usage(&name).expect("usage"), again);
    assert_eq!(vols.list().expect("list"), vec![again]);

    vols.delete(&name).expect("delete");
    assert!(!v.path.exists());
    vols.delete(&name).expect("delete again");
    assert!(vols.list().expect("list").is_empty());
    assert!(matches!(
        vols.usage(&name),
        Err(StorageError::NoVolume { .. })
    ));
    assert!(n
        .sys
        .calls()
        .iter()
        .any(|c| c.starts_with("btrfs qgroup destroy 0/")));
}

#[test]
fn volumes_refuse_what_does_not_fit_and_clean_up_a_failed_limit() {
    let n = node();
    let vols = volumes(&n);
    let big = VolumeName::new("big").expect("name");
    let e = vols.create(&big, 30 * GIB).expect_err("too big");
    assert_eq!(
        e.to_string(),
        format!(
            "volume big: no SSD pool has {} bytes unreserved (the most is {})",
            30 * GIB,
            19 * GIB
        )
    );
    let a = VolumeName::new("a").expect("name");
    vols.create(&a, 15 * GIB).expect("fits");
    // 15 GiB of the 20 are promised to `a`.
    assert!(
        matches!(vols.create(&big, 6 * GIB), Err(StorageError::NoSpace { largest, .. }) if largest == 5 * GIB)
    );

    n.sys.fail("btrfs qgroup limit");
    let b = VolumeName::new("b").expect("name");
    assert!(vols.create(&b, GIB).is_err());
    assert!(
        !n.paths.mnt.join("ssd0/volumes/b").exists(),
        "no volume without a limit"
    );
    assert!(matches!(
        vols.create(&b, 10),
        Err(StorageError::BadVolumeSize { .. })
    ));
}

#[test]
fn a_symlink_is_not_a_volume() {
    let n = node();
    let vols = volumes(&n);
    std::os::unix::fs::symlink("/etc", n.paths.mnt.join("ssd0/volumes/evil")).expect("symlink");
    let evil = VolumeName::new("evil").expect("name");
    assert!(matches!(
        vols.usage(&evil),
        Err(StorageError::NotAVolume { .. })
    ));
    assert!(matches!(
        vols.delete(&evil),
        Err(StorageError::NotAVolume { .. })
    ));
    assert!(vols.list().expect("list").is_empty());
}

#[test]
fn no_ssd_pool_no_volumes() {
    let n = node();
    std::fs::remove_dir_all(n.paths.sys.join("block/sda")).expect("rm");
    let vols = volumes(&n);
    let v = VolumeName::new("v").expect("name");
    assert_eq!(
        vols.create(&v, GIB).expect_err("no ssd").to_string(),
        "volume v: the node has no SSD pool to put it on"
    );
}
