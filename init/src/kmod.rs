//! Kernel module loading without udev or kmod.
//!
//! The image carries Debian's modules uncompressed plus the `modules.alias`, `modules.dep` and
//! `modules.softdep` that depmod wrote at build time. Coldplug reads every `modalias` file under
//! `/sys/devices`, matches it against the alias patterns and loads the modules with their
//! dependencies; loading a bus driver makes new devices appear, so it repeats until a round
//! loads nothing new. The same index answers the kernel's on-demand `/sbin/modprobe` calls.
//!
//! Everything here is plain logic over text and a directory tree; the one syscall
//! (`finit_module`) sits behind [`ModuleInserter`] so tests record loads instead of doing them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use crate::glob;

/// What can go wrong while loading modules.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// An index file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Neither a module nor an alias of that name exists.
    #[error("no module or alias matches {name:?}")]
    NotFound {
        /// The name or alias asked for.
        name: String,
    },
    /// The kernel refused a module.
    #[error("cannot load module {module} ({path}): {source}")]
    Insert {
        /// Module name.
        module: String,
        /// Its `.ko` file.
        path: PathBuf,
        /// The OS error from `finit_module`.
        source: io::Error,
    },
}

/// Inserts one module file into the kernel. `Ok` also when it is already loaded.
pub trait ModuleInserter {
    /// Load the `.ko` at `path` with the given parameter string.
    fn insert(&mut self, path: &Path, params: &str) -> io::Result<()>;
}

/// Module names treat `-` and `_` alike; the kernel reports them with `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Normalize an alias or alias pattern: `-` becomes `_` except inside `[...]`, as kmod does.
fn normalize_alias(alias: &str) -> String {
    let mut out = String::with_capacity(alias.len());
    let mut in_class = false;
    for c in alias.chars() {
        match c {
            '[' => in_class = true,
            ']' => in_class = false,
            _ => {}
        }
        out.push(if c == '-' && !in_class { '_' } else { c });
    }
    out
}

/// Module name from a path such as `kernel/fs/btrfs/btrfs.ko`.
fn name_from_path(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    normalize(base)
}

#[derive(Debug, Clone)]
struct ModEntry {
    path: PathBuf,
    deps: Vec<String>,
}

/// The parsed depmod output of one kernel release.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    aliases: Vec<(String, String)>,
    modules: HashMap<String, ModEntry>,
    softdeps: HashMap<String, (Vec<String>, Vec<String>)>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    /// Read the index under `dir` (`/lib/modules/<release>`). `modules.dep` is required; the
    /// alias, softdep and builtin files are optional.
    pub fn load(dir: &Path) -> Result<Self, KmodError> {
        let read = |name: &str, required: bool| -> Result<String, KmodError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(s),
                Err(e) if !required && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(source) => Err(KmodError::Read { path, source }),
            }
        };
        Ok(Self::parse(
            dir,
            &read("modules.dep", true)?,
            &read("modules.alias", false)?,
            &read("modules.softdep", false)?,
            &read("modules.builtin", false)?,
        ))
    }

    fn parse(dir: &Path, dep: &str, alias: &str, softdep: &str, builtin: &str) -> Self {
        let mut idx = ModuleIndex {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(name_from_path).collect();
            let entry = ModEntry {
                path: PathBuf::from(path),
                deps,
            };
            idx.modules.insert(name_from_path(path), entry);
            // Paths of deps are listed too; each has its own line, so names suffice.
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                idx.aliases
                    .push((normalize_alias(pattern), normalize(module)));
            }
        }
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            let (Some("softdep"), Some(module)) = (words.next(), words.next()) else {
                continue;
            };
            let entry = idx.softdeps.entry(normalize(module)).or_default();
            let mut post = false;
            for w in words {
                match w {
                    "pre:" => post = false,
                    "post:" => post = true,
                    name if post => entry.1.push(normalize(name)),
                    name => entry.0.push(normalize(name)),
                }
            }
        }
        idx.builtin = builtin.lines().map(name_from_path).collect();
        idx
    }

    /// Modules a name or alias stands for: the module itself if one has that name, else every
    /// module whose alias pattern matches. Empty if nothing matches.
    pub fn resolve(&self, name_or_alias: &str) -> Vec<String> {
        let name = normalize(name_or_alias);
        if self.modules.contains_key(&name) || self.builtin.contains(&name) {
            return vec![name];
        }
        let alias = normalize_alias(name_or_alias);
        let mut out: Vec<String> = Vec::new();
        for (pattern, module) in &self.aliases {
            if glob::matches(pattern, &alias) && !out.contains(module) {
                out.push(module.clone());
            }
        }
        out
    }

    /// Load order for one module: soft pre-deps, hard deps (deepest first), the module, soft
    /// post-deps. Builtin and unknown names are left out; cycles are cut.
    pub fn plan(&self, module: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        self.visit(&normalize(module), &mut seen, &mut out);
        out
    }

    fn visit(&self, name: &str, seen: &mut HashSet<String>, out: &mut Vec<String>) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let (pre, post) = self.softdeps.get(name).cloned().unwrap_or_default();
        for soft in &pre {
            for m in self.resolve(soft) {
                self.visit(&m, seen, out);
            }
        }
        if let Some(entry) = self.modules.get(name) {
            // depmod lists each module's full dependency closure; recursing makes the order
            // right whatever order the list is in.
            for dep in entry.deps.iter().rev() {
                self.visit(dep, seen, out);
            }
            out.push(name.to_string());
        }
        for soft in &post {
            for m in self.resolve(soft) {
                self.visit(&m, seen, out);
            }
        }
    }

    fn path_of(&self, module: &str) -> Option<PathBuf> {
        self.modules.get(module).map(|e| self.dir.join(&e.path))
    }
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
                let Some(path) = self.index.path_of(&module) else {
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

    #[derive(Default)]
    struct Recorder {
        loaded: Vec<(String, String)>,
        fail: Vec<String>,
        exists: Vec<String>,
    }

    impl ModuleInserter for Recorder {
        fn insert(&mut self, path: &Path, params: &str) -> io::Result<()> {
            let name = name_from_path(&path.to_string_lossy());
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

    const DEP: &str = "\
kernel/fs/btrfs/btrfs.ko: kernel/crypto/xor.ko kernel/lib/raid6/raid6_pq.ko kernel/lib/libcrc32c.ko
kernel/crypto/xor.ko:
kernel/lib/raid6/raid6_pq.ko:
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/net/virtio_net.ko: kernel/net/core/failover/net_failover.ko kernel/net/core/failover.ko
kernel/net/core/failover/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/input/evdev.ko:
kernel/drivers/usb/host/xhci-pci.ko: kernel/drivers/usb/host/xhci-hcd.ko
kernel/drivers/usb/host/xhci-hcd.ko:
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
";
    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias virtio:d00000001v* virtio_net
alias pci:v*d*sv*sd*bc0Csc03i30* xhci_pci
alias fs-btrfs btrfs
alias crypto-crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias usb:v0BDAp8153d[0-2]*dc*dsc*dp*ic*isc*ip*in* r8152
";
    const SOFTDEP: &str =
        "softdep btrfs pre: crc32c post: evdev\nsoftdep crc32c_generic pre: crc32c-intel\n";
    const BUILTIN: &str = "kernel/drivers/virtio/virtio_pci.ko\n";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(
            Path::new("/lib/modules/6.1.0"),
            DEP,
            ALIAS,
            SOFTDEP,
            BUILTIN,
        )
    }

    #[test]
    fn resolve_names_and_aliases() {
        let idx = index();
        assert_eq!(idx.resolve("btrfs"), vec!["btrfs"]);
        assert_eq!(idx.resolve("xhci-pci"), vec!["xhci_pci"]);
        assert_eq!(idx.resolve("fs-btrfs"), vec!["btrfs"]);
        assert_eq!(
            idx.resolve("crypto-crc32c"),
            vec!["crc32c_intel", "crc32c_generic"]
        );
        assert_eq!(idx.resolve("virtio:d00000001v00001AF4"), vec!["virtio_net"]);
        assert_eq!(
            idx.resolve("pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30"),
            vec!["xhci_pci"]
        );
        assert!(idx
            .resolve("pci:v00001234d00001111sv00001AF4sd00001100bc03sc00i00")
            .is_empty());
        assert_eq!(idx.resolve("virtio_pci"), vec!["virtio_pci"]);
        assert!(idx.resolve("nope").is_empty());
    }

    #[test]
    fn plan_orders_deps_and_softdeps() {
        let idx = index();
        let plan = idx.plan("btrfs");
        let pos = |m: &str| plan.iter().position(|x| x == m).unwrap_or(usize::MAX);
        assert!(pos("crc32c_intel") < pos("btrfs"), "{plan:?}");
        assert!(pos("xor") < pos("btrfs"));
        assert!(pos("raid6_pq") < pos("btrfs"));
        assert!(pos("libcrc32c") < pos("btrfs"));
        assert!(pos("btrfs") < pos("evdev"));
        assert!(pos("crc32c_intel") < pos("crc32c_generic"));
        let plan = idx.plan("virtio_net");
        assert_eq!(plan, vec!["failover", "net_failover", "virtio_net"]);
        // a cycle terminates
        let plan = idx.plan("a");
        assert_eq!(plan, vec!["b", "a"]);
        // builtin modules need no load
        assert!(idx.plan("virtio_pci").is_empty());
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
        let msg = r.failed[0].to_string();
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

    #[test]
    fn alias_normalization_keeps_classes() {
        assert_eq!(normalize_alias("fs-btrfs"), "fs_btrfs");
        assert_eq!(normalize_alias("dmi:bvn[A-Z]-x"), "dmi:bvn[A-Z]_x");
        assert_eq!(
            name_from_path("kernel/arch/x86/crypto/crc32c-intel.ko"),
            "crc32c_intel"
        );
        assert_eq!(name_from_path("kernel/x/y.ko.zst"), "y");
    }
}
