//! The module index depmod writes (`modules.dep`, `modules.alias`, `modules.softdep`,
//! `modules.builtin`), read once for both of its users: the image builder closes the
//! manifest's modules over it to pick what the image carries, and init resolves device
//! aliases and load order with it at boot (there is no kmod in the image).
//!
//! Module names treat `-` and `_` alike, as the kernel does: every name is stored and looked
//! up in its [`normalize`]d spelling, and alias patterns likewise outside `[...]` classes,
//! as kmod does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use crate::glob;

/// An index file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}")]
pub struct ReadError {
    /// The file.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// The canonical spelling of a module name: dashes become underscores, as the kernel
/// reports them.
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

/// The module name of a path in modules.dep or modules.builtin, e.g.
/// `kernel/arch/x86/crypto/crc32c-intel.ko` -> `crc32c_intel`.
fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .unwrap_or(file);
    normalize(stem)
}

#[derive(Debug, Clone)]
struct Module {
    /// Relative to the index's directory.
    path: String,
    /// Names of the modules it depends on (depmod lists the whole closure).
    deps: Vec<String>,
}

/// The parsed depmod output of one kernel release.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    modules: BTreeMap<String, Module>,
    /// (normalized pattern, module), in file order.
    aliases: Vec<(String, String)>,
    /// Module -> (pre, post) soft dependencies, names or aliases.
    softdeps: HashMap<String, (Vec<String>, Vec<String>)>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    /// Reads the index under `dir` (`lib/modules/<release>`). `modules.dep` is required; the
    /// alias, softdep and builtin files are optional.
    pub fn load(dir: &Path) -> Result<Self, ReadError> {
        let read = |name: &str, required: bool| -> Result<String, ReadError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(s),
                Err(e) if !required && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(source) => Err(ReadError { path, source }),
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

    /// The index of the files' contents; `dir` is where the module paths are relative to.
    pub fn parse(dir: &Path, dep: &str, alias: &str, softdep: &str, builtin: &str) -> Self {
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
            let module = Module {
                path: path.to_string(),
                deps: deps.split_whitespace().map(name_of).collect(),
            };
            idx.modules.insert(name_of(path), module);
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
        idx.builtin = builtin.lines().map(name_of).collect();
        idx
    }

    /// Whether `module` is a loadable module of this release.
    pub fn contains(&self, module: &str) -> bool {
        self.modules.contains_key(&normalize(module))
    }

    /// Whether `module` is built into the kernel (nothing to load).
    pub fn is_builtin(&self, module: &str) -> bool {
        self.builtin.contains(&normalize(module))
    }

    /// A module's file, relative to the index's directory (as modules.dep writes it).
    pub fn relative_path(&self, module: &str) -> Option<&str> {
        self.modules
            .get(&normalize(module))
            .map(|m| m.path.as_str())
    }

    /// A module's file under the index's directory.
    pub fn path(&self, module: &str) -> Option<PathBuf> {
        self.relative_path(module).map(|p| self.dir.join(p))
    }

    /// Modules a name or alias stands for: the module itself if one has that name (loadable
    /// or built in), else every module whose alias pattern matches. Empty if nothing matches.
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
    /// post-deps. Builtin and unknown names are left out, as modprobe treats a softdep that
    /// cannot load; cycles are cut.
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
        if let Some(module) = self.modules.get(name) {
            // depmod lists each module's full dependency closure; recursing makes the order
            // right whatever order the list is in.
            for dep in module.deps.iter().rev() {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture init's tests use too (`boot/testdata`).
    fn index() -> ModuleIndex {
        ModuleIndex::parse(
            Path::new("/lib/modules/6.1.0"),
            include_str!("../testdata/modules.dep"),
            include_str!("../testdata/modules.alias"),
            include_str!("../testdata/modules.softdep"),
            include_str!("../testdata/modules.builtin"),
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
    fn dashes_and_underscores_are_one_name() {
        let idx = index();
        assert!(idx.contains("crc32c-intel") && idx.contains("crc32c_intel"));
        assert!(idx.is_builtin("virtio-pci"));
        assert_eq!(
            idx.path("xhci_pci"),
            Some(PathBuf::from(
                "/lib/modules/6.1.0/kernel/drivers/usb/host/xhci-pci.ko"
            ))
        );
    }

    #[test]
    fn alias_normalization_keeps_classes() {
        assert_eq!(normalize_alias("fs-btrfs"), "fs_btrfs");
        assert_eq!(normalize_alias("dmi:bvn[A-Z]-x"), "dmi:bvn[A-Z]_x");
        assert_eq!(
            name_of("kernel/arch/x86/crypto/crc32c-intel.ko"),
            "crc32c_intel"
        );
        assert_eq!(name_of("kernel/x/y.ko.zst"), "y");
        assert_eq!(name_of("kernel/fs/x.ko.xz"), "x");
    }

    #[test]
    fn a_missing_dep_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = ModuleIndex::load(dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot read {}", dir.path().join("modules.dep").display())
        );
        std::fs::write(dir.path().join("modules.dep"), "kernel/a.ko:\n").unwrap();
        let idx = ModuleIndex::load(dir.path()).unwrap();
        assert_eq!(idx.plan("a"), vec!["a"]);
    }
}
