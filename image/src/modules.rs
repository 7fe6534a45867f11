//! Picks the kernel modules the image carries: the manifest's sets, closed
//! over modules.dep (hard dependencies) and modules.softdep (modules a driver
//! needs but does not link against, such as btrfs -> crc32c). The whole
//! Debian tree is 391 MB; a node needs a few tens of MB of it.
//!
//! The chosen modules are copied into a staging tree and depmod runs there
//! again, so the image's modules.dep/alias/softdep describe exactly the
//! modules it carries (init's coldplug trusts modules.alias).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{io, Error, Result};
use crate::manifest::{normalize, Manifest};
use crate::sys;

/// What depmod knows about a kernel tree, read from its text index files.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// Module name -> path relative to lib/modules/<release>.
    paths: BTreeMap<String, String>,
    /// Module name -> names of the modules it depends on.
    deps: BTreeMap<String, Vec<String>>,
    /// Module name -> names or aliases it soft-depends on (pre and post).
    softdeps: BTreeMap<String, Vec<String>>,
    /// Exact alias -> module names (only aliases without wildcards: softdeps
    /// name things like `crypto-crc32c`, never device patterns).
    aliases: BTreeMap<String, BTreeSet<String>>,
    builtin: BTreeSet<String>,
}

/// The module name of a path in modules.dep or modules.builtin.
fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .unwrap_or(file);
    normalize(stem)
}

impl ModuleIndex {
    /// Reads modules.dep, modules.softdep, modules.alias and modules.builtin
    /// from `dir` (a lib/modules/<release> directory depmod has run on).
    pub fn read(dir: &Path) -> Result<ModuleIndex> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(io("cannot read", path))
        };
        Ok(ModuleIndex::parse(
            &read("modules.dep")?,
            &read("modules.softdep")?,
            &read("modules.alias")?,
            &read("modules.builtin")?,
        ))
    }

    fn parse(dep: &str, softdep: &str, alias: &str, builtin: &str) -> ModuleIndex {
        let mut index = ModuleIndex::default();
        for line in dep.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let name = name_of(module);
            index.paths.insert(name.clone(), module.trim().to_string());
            index
                .deps
                .insert(name, deps.split_whitespace().map(name_of).collect());
        }
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            index
                .softdeps
                .entry(normalize(module))
                .or_default()
                .extend(words.filter(|w| !w.ends_with(':')).map(str::to_string));
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                if !pattern.contains(['*', '?', '[']) {
                    index
                        .aliases
                        .entry(pattern.to_string())
                        .or_default()
                        .insert(normalize(module));
                }
            }
        }
        index.builtin = builtin.lines().map(name_of).collect();
        index
    }

    /// Module names a softdep entry stands for: itself if it is a module,
    /// else the modules carrying it as an alias. Nothing if it is built in
    /// or unknown, as modprobe treats a softdep that cannot load.
    fn softdep_targets(&self, name: &str) -> Vec<String> {
        let module = normalize(name);
        if self.paths.contains_key(&module) {
            return vec![module];
        }
        self.aliases
            .get(name)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Closes the manifest's module sets over dependencies and softdeps.
    /// Returns module paths relative to lib/modules/<release>, sorted.
    pub fn select(&self, manifest: &Manifest, release: &str) -> Result<Selection> {
        let mut queue = VecDeque::new();
        let mut wanted = BTreeSet::new();
        for (set, module) in manifest.wanted_modules() {
            if self.paths.contains_key(&module) {
                queue.push_back(module.clone());
            } else if !self.builtin.contains(&module) {
                return Err(Error::UnknownModule {
                    module,
                    set: set.to_string(),
                    kernel: release.to_string(),
                });
            }
            wanted.insert(module);
        }
        for module in &manifest.load.always {
            if !wanted.contains(&normalize(module)) {
                return Err(Error::LoadNotInImage(module.clone()));
            }
        }
        let mut taken = BTreeSet::new();
        while let Some(module) = queue.pop_front() {
            if !taken.insert(module.clone()) {
                continue;
            }
            queue.extend(self.deps.get(&module).into_iter().flatten().cloned());
            for soft in self.softdeps.get(&module).into_iter().flatten() {
                queue.extend(self.softdep_targets(soft));
            }
        }
        Ok(Selection {
            paths: taken
                .iter()
                .filter_map(|m| self.paths.get(m).cloned())
                .collect(),
        })
    }
}

/// The module files an image carries.
#[derive(Debug)]
pub struct Selection {
    /// Paths relative to lib/modules/<release>.
    pub paths: BTreeSet<String>,
}

/// Index files depmod needs besides the modules to index a tree; copied
/// from the full tree unchanged.
const KEEP_FILES: [&str; 3] = [
    "modules.builtin",
    "modules.builtin.modinfo",
    "modules.order",
];

/// Copies the selected modules of `full` (a lib/modules/<release> dir) into
/// `staging`/lib/modules/<release> and runs depmod on `staging`. Returns
/// the staged lib/modules/<release> directory.
pub fn stage(full: &Path, selection: &Selection, staging: &Path, release: &str) -> Result<PathBuf> {
    let dir = staging.join("lib/modules").join(release);
    for rel in &selection.paths {
        let to = dir.join(rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
        }
        let from = full.join(rel);
        fs::copy(&from, &to).map_err(io("cannot copy module", from))?;
    }
    for name in KEEP_FILES {
        let from = full.join(name);
        if from.exists() {
            fs::copy(&from, dir.join(name)).map_err(io("cannot copy", from))?;
        }
    }
    sys::depmod(staging, release)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/btrfs/btrfs.ko: kernel/crypto/xor.ko kernel/lib/raid6/raid6_pq.ko kernel/lib/libcrc32c.ko
kernel/crypto/xor.ko:
kernel/lib/raid6/raid6_pq.ko:
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/acpi/button.ko:
kernel/drivers/net/e1000e/e1000e.ko:
";
    const SOFTDEP: &str = "# comment\nsoftdep btrfs pre: blake2b-256 crypto-crc32c\n";
    const ALIAS: &str = "alias crypto-crc32c crc32c_generic\nalias crypto-crc32c crc32c_intel\n\
        alias pci:v00008086d*sv*sd*bc*sc*i* e1000e\n";
    const BUILTIN: &str = "kernel/drivers/virtio/virtio.ko\n";

    fn manifest(text: &str) -> Manifest {
        toml::from_str(text).unwrap()
    }

    fn index() -> ModuleIndex {
        ModuleIndex::parse(DEP, SOFTDEP, ALIAS, BUILTIN)
    }

    #[test]
    fn selection_follows_deps_and_softdep_aliases() {
        let m = manifest(
            "[kernel]\npackage='k'\n[modules]\nfs=['btrfs']\nvirtio=['virtio']\n\
             [load]\nalways=['btrfs','virtio']\n",
        );
        let sel = index().select(&m, "6.1").unwrap();
        let got: Vec<_> = sel.paths.iter().map(String::as_str).collect();
        assert_eq!(
            got,
            [
                "kernel/arch/x86/crypto/crc32c-intel.ko",
                "kernel/crypto/crc32c_generic.ko",
                "kernel/crypto/xor.ko",
                "kernel/fs/btrfs/btrfs.ko",
                "kernel/lib/libcrc32c.ko",
                "kernel/lib/raid6/raid6_pq.ko",
            ]
        );
    }

    #[test]
    fn unknown_module_is_an_error_naming_it() {
        let m = manifest("[kernel]\npackage='k'\n[modules]\nnic=['e1000e','nosuch_nic']\n");
        let err = index().select(&m, "6.1").unwrap_err().to_string();
        assert!(err.contains("nosuch_nic") && err.contains("nic"), "{err}");
    }

    #[test]
    fn load_must_name_a_module_in_the_image() {
        let m = manifest(
            "[kernel]\npackage='k'\n[modules]\ninput=['button']\n[load]\nalways=['btrfs']\n",
        );
        let err = index().select(&m, "6.1").unwrap_err().to_string();
        assert!(err.contains("btrfs"), "{err}");
    }

    #[test]
    fn dashes_and_underscores_are_one_name() {
        assert_eq!(
            name_of("kernel/arch/x86/crypto/crc32c-intel.ko"),
            "crc32c_intel"
        );
        assert_eq!(name_of("kernel/fs/x.ko.xz"), "x");
        let m = manifest("[kernel]\npackage='k'\n[modules]\nc=['crc32c-intel']\n");
        assert_eq!(index().select(&m, "6.1").unwrap().paths.len(), 1);
    }
}
