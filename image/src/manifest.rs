//! `os/manifest.toml`: the parts the image build reads. Init reads the same
//! file (its `[[service]]` list) from /etc/cellos/manifest.toml, so the build
//! copies it verbatim and ignores sections it does not use.

use std::collections::BTreeMap;
use std::path::Path;

use cellos_boot::modules::normalize;
use serde::Deserialize;

use crate::error::{io, Error, Result};

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub kernel: KernelSpec,
    /// Named sets of kernel modules taken into the image.
    #[serde(default)]
    pub modules: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub load: Load,
    /// Debian packages whose listed files (absolute paths inside the .deb)
    /// go to the same paths in the image, with their shared libraries.
    #[serde(default)]
    pub packages: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KernelSpec {
    /// Debian package, a metapackage (`linux-image-amd64`) or a concrete one.
    pub package: String,
    /// The base kernel cmdline; the build appends the cellos.* parameters.
    #[serde(default)]
    pub cmdline: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Load {
    /// Modules init loads at every boot.
    #[serde(default)]
    pub always: Vec<String>,
}

impl Manifest {
    /// Reads and parses the manifest; returns it with its raw text, which
    /// goes into the image unchanged.
    pub fn load(path: &Path) -> Result<(Manifest, String)> {
        let text = std::fs::read_to_string(path).map_err(io("cannot read manifest", path))?;
        let manifest = toml::from_str(&text).map_err(|source| Error::Manifest {
            path: path.to_path_buf(),
            source,
        })?;
        Ok((manifest, text))
    }

    /// Module names as the kernel spells them (`-` and `_` are the same to
    /// modprobe; modules.dep file names use either).
    pub fn wanted_modules(&self) -> impl Iterator<Item = (&str, String)> {
        self.modules
            .iter()
            .flat_map(|(set, names)| names.iter().map(move |n| (set.as_str(), normalize(n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_repository_manifest() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../os/manifest.toml");
        let (m, text) = Manifest::load(&path).unwrap();
        assert_eq!(m.kernel.package, "linux-image-amd64");
        assert!(m.kernel.cmdline.contains("panic=1"));
        assert!(m.modules["fs"].contains(&"btrfs".to_string()));
        assert!(m.load.always.contains(&"button".to_string()));
        assert!(text.contains("[[service]]"));
        assert!(m.packages["btrfs-progs"].contains(&"/sbin/mkfs.btrfs".to_string()));
        assert_eq!(m.packages["busybox-static"], ["/bin/busybox"]);
        let wanted: Vec<_> = m.wanted_modules().collect();
        assert!(wanted.contains(&("storage", "usb_storage".to_string())));
    }

    #[test]
    fn bad_manifest_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, "[kernel]\n").unwrap();
        let err = Manifest::load(&path).unwrap_err();
        assert!(err.to_string().contains("m.toml"), "{err}");
    }
}
