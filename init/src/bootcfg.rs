//! The boot stick: find the USB stick (or disk) the node booted from, read `cellos.cfg`
//! from it, and remember the stick so nothing later takes it for storage.
//!
//! Why: a farmer writes `cellos-usb.img` to a stick once and changes farm, ledger or
//! enrollment token afterwards by editing one text file on the stick's FAT partition, on
//! any computer, without rebuilding. Its values win over the cmdline's. The contract with
//! the image build (the cmdline marker, the partition's name, the file and its parser) is
//! in [`cellos_boot::stick`]; this module does the finding, mounting and reading.
//!
//! The stick is found by its GPT partition name (shown by the kernel as `PARTNAME` in the
//! partition's uevent), mounted read-only just long enough to read the file, and unmounted
//! again. Its disk's kernel name goes to [`cellos_boot::run::BOOT_DEVICE_FILE`] and to
//! services as [`cellos_boot::env::BOOT_DEVICE`]: storage must never format it. A missing
//! or malformed file is one console line and never stops the boot.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cellos_boot::run;
use cellos_boot::stick::{parse_file, CONFIG_FILE, PARTITION_NAME};

/// Modules a stick boot needs before the stick shows up: the first coldplug pass may run
/// before the USB device has enumerated, so its drivers are loaded by name.
pub const MODULES: &[&str] = &[
    "xhci_pci",
    "ehci_pci",
    "usb_storage",
    "uas",
    "sd_mod",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
];
/// vfat options naming the code pages the image carries (the kernel's default
/// iocharset would need nls modules the image does not have).
pub const MOUNT_OPTIONS: &str = "codepage=437,iocharset=iso8859-1";
/// How long init waits for the stick: USB enumeration plus usb-storage's settle delay,
/// generously, for emulated machines.
pub const WAIT: Duration = Duration::from_secs(30);

/// The boot partition and the disk that holds it, as kernel names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPartition {
    /// e.g. `sda1`.
    pub partition: String,
    /// e.g. `sda`.
    pub disk: String,
}

/// Looks in `class_block` (`/sys/class/block`) for a partition named [`PARTITION_NAME`].
/// Its disk is the directory the partition's sysfs entry sits in.
pub fn find_partition(class_block: &Path) -> Option<BootPartition> {
    let mut names: Vec<String> = std::fs::read_dir(class_block)
        .ok()?
        .filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_string()))
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let entry = class_block.join(&name);
        let uevent = std::fs::read_to_string(entry.join("uevent")).ok()?;
        let field = |key: &str| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        };
        if field("DEVTYPE") != Some("partition") || field("PARTNAME") != Some(PARTITION_NAME) {
            return None;
        }
        let real = std::fs::canonicalize(&entry).ok()?;
        let disk = real.parent()?.file_name()?.to_str()?.to_string();
        Some(BootPartition {
            partition: field("DEVNAME").unwrap_or(&name).to_string(),
            disk,
        })
    })
}

/// The side effects of reading the stick, so the flow is tested without a kernel.
pub trait Stick {
    /// Mounts `device` (vfat) read-only on `at`.
    fn mount(&mut self, device: &Path, at: &Path) -> io::Result<()>;
    fn unmount(&mut self, at: &Path) -> io::Result<()>;
}

/// What [`read_stick`] found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The boot partition, if it showed up.
    pub partition: Option<BootPartition>,
    /// The cmdline words from a valid `cellos.cfg`.
    pub words: Option<String>,
    /// Console lines: what was found, and every problem.
    pub messages: Vec<String>,
}

/// Where to look and for how long.
#[derive(Debug, Clone)]
pub struct StickPaths {
    /// `/sys/class/block`.
    pub class_block: PathBuf,
    /// `/dev`.
    pub dev: PathBuf,
    /// Where to mount the partition.
    pub mount_point: PathBuf,
    pub wait: Duration,
}

impl Default for StickPaths {
    fn default() -> Self {
        StickPaths {
            class_block: "/sys/class/block".into(),
            dev: "/dev".into(),
            mount_point: run::STICK_MOUNT.into(),
            wait: WAIT,
        }
    }
}

/// Waits for the boot partition, mounts it, reads and parses `cellos.cfg`, unmounts.
pub fn read_stick(paths: &StickPaths, stick: &mut impl Stick) -> Outcome {
    let mut out = Outcome::default();
    let started = Instant::now();
    let partition = loop {
        if let Some(p) = find_partition(&paths.class_block) {
            break p;
        }
        if started.elapsed() >= paths.wait {
            out.messages.push(format!(
                "booted from a USB image but no partition named {PARTITION_NAME} showed up in {} s: using the settings built into the image",
                paths.wait.as_secs()
            ));
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    out.messages.push(format!(
        "boot disk {} (partition {}) found after {} ms; it is never used for storage",
        partition.disk,
        partition.partition,
        started.elapsed().as_millis()
    ));
    let device = paths.dev.join(&partition.partition);
    let at = &paths.mount_point;
    let text = match std::fs::create_dir_all(at).and_then(|()| stick.mount(&device, at)) {
        Ok(()) => {
            let read = std::fs::read_to_string(at.join(CONFIG_FILE));
            if let Err(e) = stick.unmount(at) {
                out.messages
                    .push(format!("cannot unmount {}: {e}", at.display()));
            }
            read
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot mount {} read-only: {e}", device.display()),
        )),
    };
    let source = format!("{CONFIG_FILE} on {}", partition.partition);
    match text {
        Ok(text) => match parse_file(&text) {
            Ok(words) => {
                out.messages.push(format!(
                    "{source}: {}",
                    if words.is_empty() {
                        "no settings"
                    } else {
                        "applied"
                    }
                ));
                out.words = Some(words);
            }
            Err(e) => out.messages.push(format!(
                "{source} is not used: {e}; using the settings built into the image"
            )),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => out.messages.push(format!(
            "no {source}: using the settings built into the image"
        )),
        Err(e) => out.messages.push(format!(
            "cannot read {source}: {e}; using the settings built into the image"
        )),
    }
    out.partition = Some(partition);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sysfs tree like the kernel's: /sys/class/block/<name> are links into
    /// /sys/devices/.../block/<disk>[/<partition>].
    fn sysfs(partname: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let block = dir.path().join("devices/pci0/usb1/host0/block");
        let class = dir.path().join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        for (rel, uevent) in [
            ("vda", "MAJOR=253\nDEVNAME=vda\nDEVTYPE=disk\n".to_string()),
            ("sda", "DEVNAME=sda\nDEVTYPE=disk\n".to_string()),
            (
                "sda/sda1",
                format!("PARTN=1\nPARTNAME={partname}\nDEVNAME=sda1\nDEVTYPE=partition\n"),
            ),
        ] {
            let d = block.join(rel);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("uevent"), uevent).unwrap();
            symlink(&d, class.join(rel.rsplit('/').next().unwrap())).unwrap();
        }
        dir
    }

    #[test]
    fn the_boot_partition_and_its_disk_are_found_by_name() {
        let dir = sysfs(PARTITION_NAME);
        assert_eq!(
            find_partition(&dir.path().join("class/block")),
            Some(BootPartition {
                partition: "sda1".into(),
                disk: "sda".into()
            })
        );
        let dir = sysfs("EFI system partition");
        assert_eq!(find_partition(&dir.path().join("class/block")), None);
        assert_eq!(find_partition(Path::new("/nonexistent")), None);
    }

    /// Mounting copies a fixture directory in; unmounting empties the mount point.
    struct FakeStick {
        content: Option<&'static str>,
        mounted: Vec<PathBuf>,
        unmounted: usize,
    }

    impl Stick for FakeStick {
        fn mount(&mut self, device: &Path, at: &Path) -> io::Result<()> {
            self.mounted.push(device.to_path_buf());
            if let Some(c) = self.content {
                std::fs::write(at.join(CONFIG_FILE), c)?;
            }
            Ok(())
        }
        fn unmount(&mut self, at: &Path) -> io::Result<()> {
            self.unmounted += 1;
            let _ = std::fs::remove_file(at.join(CONFIG_FILE));
            Ok(())
        }
    }

    fn paths(sys: &Path, mnt: &Path) -> StickPaths {
        StickPaths {
            class_block: sys.join("class/block"),
            dev: "/dev".into(),
            mount_point: mnt.join("boot"),
            wait: Duration::from_millis(300),
        }
    }

    #[test]
    fn the_stick_is_read_and_unmounted() {
        let sys = sysfs(PARTITION_NAME);
        let mnt = tempfile::tempdir().unwrap();
        let mut stick = FakeStick {
            content: Some("farm = 9\n"),
            mounted: vec![],
            unmounted: 0,
        };
        let out = read_stick(&paths(sys.path(), mnt.path()), &mut stick);
        assert_eq!(out.words.as_deref(), Some("cellos.farm=9"));
        assert_eq!(out.partition.unwrap().disk, "sda");
        assert_eq!(stick.mounted, [PathBuf::from("/dev/sda1")]);
        assert_eq!(stick.unmounted, 1);
        assert!(out.messages[0].starts_with("boot disk sda (partition sda1) found"));
        assert_eq!(out.messages[1], "cellos.cfg on sda1: applied");
    }

    #[test]
    fn a_bad_or_missing_file_or_stick_keeps_the_image_settings() {
        let sys = sysfs(PARTITION_NAME);
        let mnt = tempfile::tempdir().unwrap();
        let mut stick = FakeStick {
            content: Some("farm = x\n"),
            mounted: vec![],
            unmounted: 0,
        };
        let out = read_stick(&paths(sys.path(), mnt.path()), &mut stick);
        assert!(out.words.is_none());
        assert!(out.partition.is_some(), "the stick is still the boot disk");
        assert!(
            out.messages[1].starts_with("cellos.cfg on sda1 is not used: line 1: "),
            "{:?}",
            out.messages
        );
        stick.content = None;
        let out = read_stick(&paths(sys.path(), mnt.path()), &mut stick);
        assert!(out.words.is_none());
        assert_eq!(
            out.messages[1],
            "no cellos.cfg on sda1: using the settings built into the image"
        );
        let none = sysfs("other");
        let out = read_stick(&paths(none.path(), mnt.path()), &mut stick);
        assert!(out.partition.is_none() && out.words.is_none());
        assert!(out.messages[0].contains("no partition named cellos-boot"));
    }
}
