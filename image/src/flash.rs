//! Writing `cellos-usb.img` to a stick (`cellos image flash`).
//!
//! Writing a disk image over the wrong device destroys a machine's data, so the target is
//! checked first: it must be a whole disk (`/sys/block/<name>` exists), nothing on it may
//! be mounted, it must be large enough, and it must say it is removable
//! (`/sys/block/<name>/removable`) unless the caller forces it. The write is synced
//! before this returns, so pulling the stick afterwards is safe.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{io, Error, Result};

/// A block device as the checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashTarget {
    /// The path given, symlinks resolved (e.g. `/dev/disk/by-id/usb-...` -> `/dev/sdb`).
    pub device: PathBuf,
    /// Kernel name, e.g. `sdb`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    pub removable: bool,
    /// Mount points of the disk or its partitions.
    pub mounted: Vec<String>,
}

fn refuse(device: &Path, reason: String) -> Error {
    Error::Flash {
        device: device.to_path_buf(),
        reason,
    }
}

/// Describes `device` from `sys_block` (`/sys/block`) and `mounts` (the text of
/// `/proc/mounts`).
pub fn inspect(device: &Path, sys_block: &Path, mounts: &str) -> Result<FlashTarget> {
    let real = fs::canonicalize(device).map_err(io("cannot find", device))?;
    let name = real
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| refuse(device, "has no device name".into()))?
        .to_string();
    let dir = sys_block.join(&name);
    if !dir.is_dir() {
        return Err(refuse(
            device,
            format!(
                "is not a whole disk (no {}): give the disk, e.g. /dev/sdb, not a partition",
                dir.display()
            ),
        ));
    }
    let read = |file: &str| -> Result<String> {
        let p = dir.join(file);
        Ok(fs::read_to_string(&p)
            .map_err(io("cannot read", &p))?
            .trim()
            .to_string())
    };
    let sectors: u64 = read("size")?.parse().map_err(|_| {
        refuse(
            device,
            format!("has a {}/size that is not a number", dir.display()),
        )
    })?;
    let removable = read("removable")? == "1";
    let mounted = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let source = f.next()?.strip_prefix("/dev/")?;
            let rest = source.strip_prefix(name.as_str())?;
            let partition = rest.is_empty()
                || rest
                    .trim_start_matches('p')
                    .chars()
                    .all(|c| c.is_ascii_digit());
            partition.then(|| f.next().unwrap_or_default().to_string())
        })
        .collect();
    Ok(FlashTarget {
        device: real,
        name,
        size: sectors * 512,
        removable,
        mounted,
    })
}

/// Refuses a target that is mounted, too small, or (without `force`) not removable.
pub fn check(target: &FlashTarget, image_size: u64, force: bool) -> Result<()> {
    let device = &target.device;
    if !target.mounted.is_empty() {
        return Err(refuse(
            device,
            format!(
                "is mounted on {}: unmount it first",
                target.mounted.join(", ")
            ),
        ));
    }
    if target.size < image_size {
        return Err(refuse(
            device,
            format!(
                "holds {} MiB, the image needs {} MiB",
                target.size >> 20,
                image_size.div_ceil(1 << 20)
            ),
        ));
    }
    if !target.removable && !force {
        return Err(refuse(
            device,
            format!(
                "is not a removable disk (/sys/block/{}/removable is 0); pass --force if you are sure",
                target.name
            ),
        ));
    }
    Ok(())
}

/// Copies `image` onto `device` in 4 MiB blocks, calling `progress(written, total)` after
/// each, and syncs. Returns the bytes written.
pub fn write(image: &Path, device: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<u64> {
    let mut from = fs::File::open(image).map_err(io("cannot open", image))?;
    let total = from.metadata().map_err(io("cannot stat", image))?.len();
    let mut to = fs::OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(io("cannot open for writing", device))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut written = 0;
    loop {
        let n = from.read(&mut buf).map_err(io("cannot read", image))?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n])
            .map_err(io("cannot write to", device))?;
        written += n as u64;
        progress(written, total);
    }
    to.sync_all().map_err(io("cannot sync", device))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /dev/<name> (a regular file) and /sys/block/<name>.
    fn fixture(name: &str, sectors: u64, removable: bool) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        let block = dir.path().join("sys/block").join(name);
        fs::create_dir_all(&dev).unwrap();
        fs::create_dir_all(&block).unwrap();
        fs::write(dev.join(name), b"").unwrap();
        fs::write(block.join("size"), format!("{sectors}\n")).unwrap();
        fs::write(
            block.join("removable"),
            if removable { "1\n" } else { "0\n" },
        )
        .unwrap();
        let device = dev.join(name);
        (dir, device)
    }

    #[test]
    fn a_removable_unmounted_disk_is_accepted_and_written() {
        let (dir, device) = fixture("sdz", 4096, true);
        let mounts = "/dev/sda1 / ext4 rw 0 0\n/dev/sdzz1 /mnt vfat rw 0 0\n";
        let t = inspect(&device, &dir.path().join("sys/block"), mounts).unwrap();
        assert_eq!(
            (t.name.as_str(), t.size, t.removable),
            ("sdz", 4096 * 512, true)
        );
        assert!(
            t.mounted.is_empty(),
            "sdzz is another disk: {:?}",
            t.mounted
        );
        check(&t, 1 << 20, false).unwrap();
        let image = dir.path().join("img");
        let data: Vec<u8> = (0..(5u32 << 20)).map(|i| i as u8).collect();
        fs::write(&image, &data).unwrap();
        let mut calls = Vec::new();
        let n = write(&image, &device, &mut |w, t| calls.push((w, t))).unwrap();
        assert_eq!(n, 5 << 20);
        assert_eq!(calls, [(4 << 20, 5 << 20), (5 << 20, 5 << 20)]);
        assert_eq!(fs::read(&device).unwrap(), data);
    }

    #[test]
    fn fixed_mounted_small_or_partition_targets_are_refused() {
        let (dir, device) = fixture("nvme0n1", 1 << 30, false);
        let sys = dir.path().join("sys/block");
        let t = inspect(&device, &sys, "").unwrap();
        let err = check(&t, 1 << 20, false).unwrap_err().to_string();
        assert!(
            err.contains("not a removable disk") && err.contains("--force"),
            "{err}"
        );
        check(&t, 1 << 20, true).unwrap();
        let t = inspect(&device, &sys, "/dev/nvme0n1p2 /boot ext4 rw 0 0\n").unwrap();
        assert_eq!(t.mounted, ["/boot"]);
        let err = check(&t, 1 << 20, true).unwrap_err().to_string();
        assert!(err.contains("is mounted on /boot"), "{err}");
        let t = inspect(&device, &sys, "").unwrap();
        assert!(check(&t, 1 << 40, true).is_err(), "too small");
        let part = dir.path().join("dev/nvme0n1p1");
        fs::write(&part, b"").unwrap();
        let err = inspect(&part, &sys, "").unwrap_err().to_string();
        assert!(err.contains("not a whole disk"), "{err}");
    }
}
