//! Picks the kernel modules the image carries: the manifest's sets, closed
//! over modules.dep (hard dependencies) and modules.softdep (modules a driver
//! needs but does not link against, such as btrfs -> crc32c). The whole
//! Debian tree is 391 MB; a node needs a few tens of MB of it.
//!
//! The chosen modules are copied into a staging tree and depmod runs there
//! again, so the image's modules.dep/alias/softdep describe exactly the
//! modules it carries (init's coldplug trusts modules.alias).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use cellos_boot::modules::{normalize, ModuleIndex};

use crate::error::{io, Error, Result};
use crate::manifest::Manifest;
use crate::sys;

/// Closes the manifest's module sets over dependencies and softdeps (what init's loader
/// would load for each, [`ModuleIndex::plan`]). Returns module paths relative to
/// lib/modules/<release>, sorted.
pub fn select(index: &ModuleIndex, manifest: &Manifest, release: &str) -> Result<Selection> {
    let mut wanted = BTreeSet::new();
    let mut taken = BTreeSet::new();
    for (set, module) in manifest.wanted_modules() {
        if index.contains(&module) {
            taken.extend(index.plan(&module));
        } else if !index.is_builtin(&module) {
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
    Ok(Selection {
        paths: taken
            .iter()
            .filter_map(|m| index.relative_path(m).map(str::to_string))
            .collect(),
    })
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
        ModuleIndex::parse(Path::new("/lib/modules/6.1"), DEP, ALIAS, SOFTDEP, BUILTIN)
    }

    #[test]
    fn selection_follows_deps_and_softdep_aliases() {
        let m = manifest(
            "[kernel]\npackage='k'\n[modules]\nfs=['btrfs']\nvirtio=['virtio']\n\
             [load]\nalways=['btrfs','virtio']\n",
        );
        let sel = select(&index(), &m, "6.1").unwrap();
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
        let err = select(&index(), &m, "6.1").unwrap_err().to_string();
        assert!(err.contains("nosuch_nic") && err.contains("nic"), "{err}");
    }

    #[test]
    fn load_must_name_a_module_in_the_image() {
        let m = manifest(
            "[kernel]\npackage='k'\n[modules]\ninput=['button']\n[load]\nalways=['btrfs']\n",
        );
        let err = select(&index(), &m, "6.1").unwrap_err().to_string();
        assert!(err.contains("btrfs"), "{err}");
    }

    #[test]
    fn dashes_and_underscores_are_one_name() {
        let m = manifest("[kernel]\npackage='k'\n[modules]\nc=['crc32c-intel']\n");
        assert_eq!(select(&index(), &m, "6.1").unwrap().paths.len(), 1);
    }
}
