//! Host integration: the real `Sys` and `BtrfsVolumes` on a btrfs made by
//! mkfs.btrfs on a loop device. Needs root, losetup and btrfs-progs; skipped (with a
//! line saying so) where they are missing. The same code runs in the guest in the
//! end-to-end suite.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use cellos_storage::sys::{Sys, System};
use cellos_storage::{BtrfsVolumes, DiskKind, Pool, PoolName, StorageError, VolumeName, Volumes};

const MIB: u64 = 1 << 20;

struct Loop {
    dev: PathBuf,
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn loop_device(size: u64) -> Option<Loop> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: skipping the loop-device test");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(size))
        .expect("image");
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&img)
        .output();
    let dev = match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        other => {
            eprintln!("losetup unavailable ({other:?}): skipping the loop-device test");
            return None;
        }
    };
    let mount = dir.path().join("mnt");
    std::fs::create_dir(&mount).expect("mount dir");
    Some(Loop {
        dev,
        mount,
        _dir: dir,
    })
}

/// Writes `total` bytes in 1 MiB chunks with fsync; how many were written and the
/// error that stopped it, if any.
fn fill(path: &Path, total: u64) -> (u64, Option<std::io::Error>) {
    let mut f = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return (0, Some(e)),
    };
    let chunk = vec![0x5au8; MIB as usize];
    let mut written = 0;
    while written < total {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_data()) {
            return (written, Some(e));
        }
        written += MIB;
    }
    (written, None)
}

#[test]
fn real_btrfs_volume_quota() {
    let Some(lp) = loop_device(512 * MIB) else {
        return;
    };
    let name = PoolName::new(DiskKind::Ssd, 0);
    System.mkfs_btrfs(&lp.dev, &name.label()).expect("mkfs");
    let header = System.read_at(&lp.dev, 0, 1 << 20).expect("read");
    assert_eq!(
        cellos_storage::probe::identify(&header),
        cellos_storage::probe::Content::Pool(name)
    );
    System.mount_btrfs(&lp.dev, &lp.mount).expect("mount");
    System
        .btrfs(&["quota".as_ref(), "enable".as_ref(), lp.mount.as_os_str()])
        .expect("quota");
    std::fs::create_dir(lp.mount.join("volumes")).expect("volumes dir");
    let size = System.fs_size(&lp.mount).expect("statvfs");
    assert_eq!(size.total, 512 * MIB, "a one-disk pool is the disk's size");
    let pool = Pool {
        name,
        disk: "loop".into(),
        size: size.total,
        mount: lp.mount.clone(),
        created: true,
    };
    let vols = BtrfsVolumes::new(&[pool], System);
    let v = VolumeName::new("quota").expect("name");
    let info = vols.create(&v, 16 * MIB).expect("create");
    assert_eq!(info.size, 16 * MIB);
    assert_eq!(vols.create(&v, 16 * MIB).expect("again"), info);

    let (written, err) = fill(&info.path.join("file"), 64 * MIB);
    let err = err.expect("writing 64 MiB into a 16 MiB volume fails");
    assert_eq!(err.raw_os_error(), Some(nix::libc::EDQUOT), "{err}");
    assert!(written <= 16 * MIB, "wrote {written} bytes");
    let (outside, err) = fill(&lp.mount.join("outside"), 64 * MIB);
    assert!(err.is_none() && outside == 64 * MIB, "{err:?}");

    let used = vols.usage(&v).expect("usage");
    assert!(used.used >= written.saturating_sub(MIB), "{used:?}");
    assert_eq!(vols.list().expect("list"), vec![used]);
    vols.delete(&v).expect("delete");
    assert!(vols.list().expect("list").is_empty());
    assert!(matches!(vols.usage(&v), Err(StorageError::NoVolume { .. })));
}
