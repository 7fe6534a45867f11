//! Kernel module loading without udev or kmod.
//!
//! The image carries Debian's modules uncompressed plus the `modules.alias`, `modules.dep` and
//! `modules.softdep` that depmod wrote at build time. Coldplug reads every `modalias` file under
//! `/sys/devices`, matches it against the alias patterns and loads the modules with their
//! dependencies; loading a bus driver makes new devices appear, so it repeats until a round
//! loads nothing new. The same index answers the kernel's on-demand `/sbin/modprobe` calls.
//!
//! The index itself (parsing, alias matching, load order) is [`cellos_boot::modules`], shared
//! with the image builder that picked the modules. Everything here is plain logic over the
//! index and a directory tree; the one syscall (`finit_module`) sits behind
//! [`ModuleInserter`] so tests record loads instead of doing them.

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use cellos_boot::modules::ModuleIndex;

/// What can go wrong while loading modules.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// Neither a module nor an alias of that name exists.
    #[error("no module or alias matches {name:?}")]
    NotFound {
        /// The name or alias asked for.
        name: String,
    },
    /// The kernel refused a module.
    #[error("cannot load module {module} ({path})")]
    Insert {
        /// Module name.
        module: String,
        /// Its `.ko` file.
        path: PathBuf,
        /// The OS error from `finit_module`.
        #[source]
        source: io::Error,
    },
}

/// Inserts one module file into the kernel. `Ok` also when it is already loaded.
pub trait ModuleInserter {
    /// Load the `.ko` at `path` with the given parameter string.
    fn insert(&mut self, path: &Path, params: &str) -> io::Result<()>;
}

/// What one [`Modprobe::load`] did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Modules inserted by this call (or found already loaded by the kernel).
    pub loaded: Vec<String>,
    /// Modules the kernel refused; the others were still tried.
    pub failed: Vec<KmodError>,
}

/// Loads modules by name or alias, remembering what it already tried.
pub struct Modprobe<I: ModuleInserter> {
    index: ModuleIndex,
    inserter: I,
    tried: HashSet<String>,
}

impl<I: ModuleInserter> Modprobe<I> {
    /// A loader over `index` that inserts through `inserter`.
    pub fn new(index: ModuleIndex, inserter: I) -> Self {
        Modprobe {
            index,
            inserter,
            tried: HashSet::new(),
        }
    }

    /// Load what `name_or_alias` stands for, dependencies first. `params` go to the named
    /// module(s) only. A module tried before (loaded or failed) is not tried again.
    pub fn load(&mut self, name_or_alias: &str, params: &str) -> Result<LoadReport, KmodError> {
        let targets = self.index.resolve(name_or_alias);
        if targets.is_empty() {
            return Err(KmodError::NotFound {
                name: name_or_alias.to_string(),
            });
        }
        let mut report = LoadReport::default();
        for target in &targets {
            for module in self.index.plan(target) {
                if !self.tried.insert(module.clone()) {
                    continue;
                }
                let Some(path) = self.index.path(&module) else {
                    continue;
                };
                let p = if &module == target { params } else { "" };
                match self.inserter.insert(&path, p) {
                    Ok(()) => report.loaded.push(module),
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => report.loaded.push(module),
                    Err(source) => report.failed.push(KmodError::Insert {
                        module,
                        path,
                        source,
                    }),
                }
            }
        }
        Ok(report)
    }

    /// The inserter, for tests that look at what was loaded.
    #[cfg(test)]
    fn inserter(&self) -> &I {
        &self.inserter
    }
}

/// Every `modalias` value under `root` (normally `/sys/devices`). Symlinks are not followed,
/// so the walk ends; unreadable entries are skipped.
pub fn read_modaliases(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![(root.to_path_buf(), 0u32)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() && depth < 64 {
                stack.push((entry.path(), depth + 1));
            } else if ft.is_file() && entry.file_name() == "modalias" {
                if let Ok(s) = std::fs::read_to_string(entry.path()) {
                    let s = s.trim();
                    if !s.is_empty() {
                        out.insert(s.to_string());
                    }
                }
            }
        }
    }
    out
}

/// Names in a `modules.load` list: one per line, `#` comments and blank lines skipped.
pub fn parse_module_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Load modules for every device under `sys_devices`, repeating while new modules load (new
/// buses bring new devices), at most `max_rounds` times. Returns the modules loaded and the
/// failures, which the caller prints.
pub fn coldplug<I: ModuleInserter>(
    mp: &mut Modprobe<I>,
    sys_devices: &Path,
    max_rounds: u32,
) -> LoadReport {
    let mut total = LoadReport::default();
    let mut seen_aliases = HashSet::new();
    for _ in 0..max_rounds {
        let mut new_loads = 0;
        for alias in read_modaliases(sys_devices) {
            if !seen_aliases.insert(alias.clone()) {
                continue;
            }
            // Most devices have no module (or a builtin driver): NotFound is normal here.
            if let Ok(report) = mp.load(&alias, "") {
                new_loads += report.loaded.len();
                total.loaded.extend(report.loaded);
                total.failed.extend(report.failed);
            }
        }
        if new_loads == 0 {
            break;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console;
    use cellos_boot::modules::normalize;

    #[derive(Default)]
    struct Recorder {
        loaded: Vec<(String, String)>,
        fail: Vec<String>,
        exists: Vec<String>,
    }

    impl ModuleInserter for Recorder {
        fn insert(&mut self, path: &Path, params: &str) -> io::Result<()> {
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            let name = normalize(&stem);
            if self.fail.contains(&name) {
                return Err(io::Error::from_raw_os_error(libc::ENOEXEC));
            }
            if self.exists.contains(&name) {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            self.loaded.push((name, params.to_string()));
            Ok(())
        }
    }

    /// cellos-boot's fixture index, which its own tests resolve and plan on.
    fn index() -> ModuleIndex {
        ModuleIndex::parse(
            Path::new("/lib/modules/6.1.0"),
            include_str!("../../boot/testdata/modules.dep"),
            include_str!("../../boot/testdata/modules.alias"),
            include_str!("../../boot/testdata/modules.softdep"),
            include_str!("../../boot/testdata/modules.builtin"),
        )
    }

    #[test]
    fn modprobe_loads_once_and_treats_eexist_as_success() {
        let rec = Recorder {
            exists: vec!["failover".into()],
            ..Default::default()
        };
        let mut mp = Modprobe::new(index(), rec);
        let r = mp
            .load("virtio:d00000001v00001AF4", "napi_tx=1")
            .expect("found");
        assert_eq!(r.loaded, vec!["failover", "net_failover", "virtio_net"]);
        assert!(r.failed.is_empty());
        assert_eq!(
            mp.inserter().loaded,
            vec![
                ("net_failover".to_string(), String::new()),
                ("virtio_net".to_string(), "napi_tx=1".to_string())
            ]
        );
        let r = mp.load("virtio-net", "").expect("found");
        assert!(r.loaded.is_empty());
        assert!(matches!(
            mp.load("nothing", ""),
            Err(KmodError::NotFound { .. })
        ));
    }

    #[test]
    fn modprobe_reports_failures_and_goes_on() {
        let rec = Recorder {
            fail: vec!["xor".into()],
            ..Default::default()
        };
        let mut mp = Modprobe::new(index(), rec);
        let r = mp.load("btrfs", "").expect("found");
        assert_eq!(r.failed.len(), 1);
        let msg = console::chain(&r.failed[0]);
        assert!(
            msg.starts_with("cannot load module xor (/lib/modules/6.1.0/kernel/crypto/xor.ko):"),
            "{msg}"
        );
        assert!(r.loaded.contains(&"btrfs".to_string()));
    }

    #[test]
    fn coldplug_walks_sysfs_until_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path().join("pci0000:00/0000:00:03.0/virtio0");
        std::fs::create_dir_all(&dev).expect("mkdir");
        std::fs::write(dev.join("modalias"), "virtio:d00000001v00001AF4\n").expect("write");
        let xhci = dir.path().join("pci0000:00/0000:00:04.0");
        std::fs::create_dir_all(&xhci).expect("mkdir");
        let pci = "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30\n";
        std::fs::write(xhci.join("modalias"), pci).expect("write");
        std::fs::write(dir.path().join("pci0000:00/modalias"), "unknown:thing\n").expect("write");
        // a symlink loop must not be followed
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path(), dev.join("subsystem")).expect("symlink");
        let aliases = read_modaliases(dir.path());
        assert_eq!(aliases.len(), 3);
        let mut mp = Modprobe::new(index(), Recorder::default());
        let r = coldplug(&mut mp, dir.path(), 5);
        assert_eq!(
            r.loaded,
            vec![
                "xhci_hcd",
                "xhci_pci",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
    }

    #[test]
    fn module_list_file() {
        let list = parse_module_list("# base\nbtrfs\n\n  overlay  # for containers\nwireguard\n");
        assert_eq!(list, vec!["btrfs", "overlay", "wireguard"]);
    }
}
