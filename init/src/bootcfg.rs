//! The boot stick: find the USB stick (or disk) the node booted from, read `cellos.cfg`
//! from it, and remember the stick so nothing later takes it for storage.
//!
//! Why: a farmer writes `cellos-usb.img` to a stick once and changes farm, ledger or
//! enrollment token afterwards by editing one text file on the stick's FAT partition, on
//! any computer, without rebuilding. Its values win over the cmdline's. The image build
//! adds [`BOOT_KEY`]`=usb` to the USB image's cmdline only, so a PXE boot never waits for
//! a stick that is not there.
//!
//! The stick is found by its GPT partition name ([`PARTITION_NAME`], shown by the kernel
//! as `PARTNAME` in the partition's uevent), mounted read-only just long enough to read
//! the file, and unmounted again. Its disk's kernel name goes to [`BOOT_DEVICE_FILE`] and
//! to services as [`BOOT_DEVICE_ENV`]: storage must never format it.
//!
//! The file is strict TOML with four optional keys (`farm`, `ledger`, `enroll`,
//! `extra`); anything else, or a value the cmdline parser would refuse, rejects the whole
//! file with one console line, and the values built into the image stay. A malformed
//! file never stops the boot.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::cmdline::{self, CmdlineError};

/// `cellos.boot=usb` on the cmdline: the node booted from a cellos USB image.
pub const BOOT_KEY: &str = "cellos.boot";
/// The GPT name of the boot partition (cellos-image's `BOOT_PARTITION_NAME`).
pub const PARTITION_NAME: &str = "cellos-boot";
/// The config file at the root of the boot partition.
pub const CONFIG_FILE: &str = "cellos.cfg";
/// Holds the boot disk's kernel name (e.g. `sda`) once found.
pub const BOOT_DEVICE_FILE: &str = "/run/cellos/boot-device";
/// Exported to services: the boot disk's kernel name, absent after a PXE boot.
pub const BOOT_DEVICE_ENV: &str = "CELLOS_BOOT_DEVICE";
/// Where the boot partition is mounted while the file is read.
pub const MOUNT_POINT: &str = "/run/cellos/boot";
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

/// Whether the cmdline says the node booted from a cellos USB image.
pub fn from_stick(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(BOOT_KEY)?.strip_prefix('='))
        .next_back()
        == Some("usb")
}

/// Whether a cmdline error is only the cmdline parser not knowing [`BOOT_KEY`], which
/// this module handles.
pub fn is_boot_key(e: &CmdlineError) -> bool {
    matches!(e, CmdlineError::UnknownKey { key } if key == BOOT_KEY)
}

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

/// Why a `cellos.cfg` was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    /// A key whose value cellos cannot use.
    #[error("{key}: {reason}")]
    Value { key: &'static str, reason: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    farm: Option<u32>,
    ledger: Option<String>,
    enroll: Option<String>,
    extra: Option<String>,
}

/// One word a value must be: the kernel splits the cmdline on spaces.
fn word(key: &'static str, value: &str) -> Result<(), FileError> {
    if value.contains(|c: char| c.is_whitespace() || c == '"' || c.is_control()) {
        return Err(FileError::Value {
            key,
            reason: format!("{value:?} must be one word without spaces or quotes"),
        });
    }
    Ok(())
}

/// Parses `cellos.cfg` into the cmdline words it stands for (`cellos.farm=3 ...`), to
/// be appended to the cmdline so they win. Empty strings and missing keys add nothing.
pub fn parse_file(text: &str) -> Result<String, FileError> {
    // Windows editors may add a byte order mark; CRLF line ends are TOML already.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        // serde reports an unknown key against the whole table: find its own line.
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next())
            .and_then(|key| {
                text.lines()
                    .position(|l| l.trim_start().starts_with(key))
                    .map(|i| i + 1)
            });
        let at = e.span().map_or(1, |s| {
            text[..s.start.min(text.len())].lines().count().max(1)
        });
        FileError::Syntax {
            line: unknown.unwrap_or(at),
            message,
        }
    })?;
    let mut words = Vec::new();
    if let Some(farm) = raw.farm {
        words.push(format!("cellos.farm={farm}"));
    }
    for (key, value) in [("ledger", &raw.ledger), ("enroll", &raw.enroll)] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            word(key, v)?;
            words.push(format!("cellos.{key}={v}"));
        }
    }
    for w in raw.extra.as_deref().unwrap_or_default().split_whitespace() {
        if !w.starts_with("cellos.") || w.starts_with(&format!("{BOOT_KEY}=")) || w == BOOT_KEY {
            return Err(FileError::Value {
                key: "extra",
                reason: format!(
                    "{w:?}: only cellos.* settings take effect from {CONFIG_FILE} (the kernel has already started)"
                ),
            });
        }
        word("extra", w)?;
        words.push(w.to_string());
    }
    let words = words.join(" ");
    let (_, errors) = cmdline::parse(&words);
    if let Some(e) = errors.first() {
        let key = match e {
            CmdlineError::BadValue { key, .. } | CmdlineError::UnknownKey { key } => {
                match key.as_str() {
                    "cellos.farm" => "farm",
                    "cellos.ledger" => "ledger",
                    "cellos.enroll" => "enroll",
                    _ => "extra",
                }
            }
        };
        return Err(FileError::Value {
            key,
            reason: e.to_string(),
        });
    }
    Ok(words)
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
            mount_point: MOUNT_POINT.into(),
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

    #[test]
    fn the_marker_is_read_from_the_cmdline() {
        assert!(from_stick("console=ttyS0 cellos.farm=1 cellos.boot=usb"));
        assert!(!from_stick("console=ttyS0 cellos.farm=1"));
        assert!(!from_stick("cellos.boot=usb cellos.boot=pxe"));
        assert!(!from_stick("cellos.bootx=usb"));
        let (_, errors) = cmdline::parse("cellos.boot=usb cellos.colour=blue");
        let left: Vec<_> = errors.iter().filter(|e| !is_boot_key(e)).collect();
        assert_eq!(left.len(), 1, "{errors:?}");
    }

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

    #[test]
    fn a_full_file_becomes_cmdline_words() {
        let text = "# comment\r\nfarm = 5\r\nledger = \"http://10.0.2.2:8080\"\r\n\
                    enroll = \"5.abc\"\r\nextra = \" cellos.mode=test  cellos.debug \"\r\n";
        assert_eq!(
            parse_file(&format!("\u{feff}{text}")).unwrap(),
            "cellos.farm=5 cellos.ledger=http://10.0.2.2:8080 cellos.enroll=5.abc \
             cellos.mode=test cellos.debug"
        );
        assert_eq!(parse_file("").unwrap(), "");
        assert_eq!(
            parse_file("enroll = \"\"\nextra = \"\"\nfarm = 2").unwrap(),
            "cellos.farm=2",
            "empty strings keep the image's values"
        );
    }

    #[test]
    fn the_file_the_image_build_writes_is_accepted() {
        // cellos-image's golden cellos.cfg: what the build writes is what init reads.
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/tests/golden");
        let text = std::fs::read_to_string(golden.join("cellos.cfg")).unwrap();
        assert_eq!(
            parse_file(&text).unwrap(),
            "cellos.farm=3 cellos.ledger=http://10.0.2.2:8080 \
             cellos.enroll=3.18446744073709551615.ENROLLTOKEN cellos.mode=test cellos.debug"
        );
        let text = std::fs::read_to_string(golden.join("cellos-no-token.cfg")).unwrap();
        assert_eq!(
            parse_file(&text).unwrap(),
            "cellos.farm=3 cellos.ledger=http://10.0.2.2:8080"
        );
    }

    #[test]
    fn the_words_win_over_the_cmdline() {
        let baked = "console=ttyS0 cellos.farm=1 cellos.ledger=http://a cellos.enroll=x";
        let words = parse_file("farm = 2\nenroll = \"y\"").unwrap();
        let (cfg, errors) = cmdline::parse(&format!("{baked} {words}"));
        assert!(errors.is_empty());
        assert_eq!(cfg.farm, Some(2));
        assert_eq!(cfg.ledger.as_deref(), Some("http://a"));
        assert_eq!(cfg.enroll.as_deref(), Some("y"));
    }

    #[test]
    fn malformed_files_are_refused_whole_with_the_reason() {
        for (text, want) in [
            ("farm = 3\nledger = http://x\n", "line 2: "),
            ("farm = \"3\"\n", "line 1: invalid type"),
            ("farm = -1\n", "line 1: "),
            (
                "farm = 3\ncolour = \"blue\"\n",
                "line 2: unknown field `colour`",
            ),
            ("farm = 3\nfarm = 4\n", "line 1: duplicate key `farm`"),
            (
                "ledger = \"ftp://x\"",
                "ledger: bad cellos.ledger=\"ftp://x\"",
            ),
            ("enroll = \"a b\"", "enroll: \"a b\" must be one word"),
            ("extra = \"quiet\"", "extra: \"quiet\": only cellos.*"),
            ("extra = \"cellos.mode=staging\"", "extra: bad cellos.mode"),
            (
                "extra = \"cellos.colour=blue\"",
                "extra: unknown key cellos.colour",
            ),
            ("extra = \"cellos.boot=pxe\"", "extra: \"cellos.boot=pxe\""),
        ] {
            let err = parse_file(text).unwrap_err().to_string();
            assert!(err.starts_with(want), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one console line: {err:?}");
        }
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
