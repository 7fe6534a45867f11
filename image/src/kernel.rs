//! Debian's kernel: resolve the manifest's package to a concrete
//! `linux-image-<abi>-amd64` version, download and unpack it once into the
//! cache, and index it with depmod (the .deb ships no modules.dep).
//!
//! Cache layout, keyed by package and version so a new Debian kernel never
//! reuses an old tree (the .deb itself is cached by [`deb::download`]):
//!   CACHE/kernels/<package>_<version>/{boot,lib/modules/<kver>}   (+ `.complete`)
//! The tree is written under a temporary name and renamed, so an interrupted
//! build leaves nothing that looks finished.

use std::fs;
use std::path::{Path, PathBuf};

use crate::deb::{self, Package};
use crate::error::{io, Error, Result};
use crate::sys;

/// An unpacked, depmod-indexed kernel in the cache.
#[derive(Debug, Clone)]
pub struct KernelTree {
    /// Root of the unpacked package (contains boot/ and lib/modules/).
    pub root: PathBuf,
    /// `uname -r` of this kernel, the directory under lib/modules.
    pub release: String,
}

impl KernelTree {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// The kernel's build config (`boot/config-<release>`).
    pub fn config(&self) -> Result<String> {
        let path = self
            .root
            .join("boot")
            .join(format!("config-{}", self.release));
        fs::read_to_string(&path).map_err(io("cannot read kernel config", path))
    }
}

/// Follows `package` through metapackage dependencies (at most a few hops)
/// to the package that holds the kernel.
pub fn resolve(package: &str) -> Result<Package> {
    let mut name = package.to_string();
    for _ in 0..4 {
        let record = sys::apt_show(&name).map_err(|e| Error::KernelPackage {
            package: name.clone(),
            reason: format!("{e} (is `apt-get update` done?)"),
        })?;
        match parse_record(&record) {
            Record::Meta(next) => name = next,
            Record::Concrete(version) => return Ok(Package { name, version }),
            Record::Unknown => break,
        }
    }
    Err(Error::KernelPackage {
        package: package.to_string(),
        reason: "no Version field or linux-image dependency in apt-cache output".into(),
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Record {
    /// A metapackage depending on this linux-image package.
    Meta(String),
    /// A package holding the kernel itself, at this version.
    Concrete(String),
    Unknown,
}

/// Reads the first control record of `apt-cache show`: a package that
/// depends on another `linux-image-*` package is a metapackage.
fn parse_record(record: &str) -> Record {
    let field = |key: &str| deb::field(record, key);
    if let Some(depends) = field("Depends") {
        let target = depends
            .split([',', '|'])
            .map(|d| d.split_whitespace().next().unwrap_or_default())
            .find(|d| d.starts_with("linux-image-"));
        if let Some(target) = target {
            return Record::Meta(target.to_string());
        }
    }
    match field("Version") {
        Some(v) if !v.is_empty() => Record::Concrete(v.to_string()),
        _ => Record::Unknown,
    }
}

/// Returns the unpacked kernel for `package` from the cache, downloading and
/// unpacking it first if needed.
pub fn fetch(package: &Package, cache: &Path, progress: &dyn Fn(&str)) -> Result<KernelTree> {
    let key = package.key();
    let root = cache.join("kernels").join(&key);
    if !root.join(".complete").exists() {
        let deb = deb::download(package, cache, progress)?;
        progress(&format!("unpacking {}", deb.display()));
        let parent = cache.join("kernels");
        fs::create_dir_all(&parent).map_err(io("cannot create", &parent))?;
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&parent)
            .map_err(io("cannot create a temporary directory in", &parent))?;
        sys::deb_extract(&deb, tmp.path())?;
        let release = release_of(tmp.path())?;
        progress(&format!("depmod {release} (full tree)"));
        sys::depmod(tmp.path(), &release)?;
        let marker = tmp.path().join(".complete");
        fs::write(&marker, format!("{key}\n")).map_err(io("cannot write", &marker))?;
        let tmp = tmp.keep();
        if let Err(e) = fs::rename(&tmp, &root) {
            // Another build finished the same kernel first: use theirs.
            let _ = fs::remove_dir_all(&tmp);
            if !root.join(".complete").exists() {
                return Err(io("cannot rename unpacked kernel to", &root)(e));
            }
        }
    }
    let release = release_of(&root)?;
    Ok(KernelTree { root, release })
}

/// The kernel release (`uname -r`) of an unpacked tree: the one directory
/// under lib/modules that has a matching boot/vmlinuz-<release>.
fn release_of(root: &Path) -> Result<String> {
    let dir = root.join("lib/modules");
    let mut releases = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io("cannot list", &dir))? {
        let entry = entry.map_err(io("cannot list", &dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if root.join("boot").join(format!("vmlinuz-{name}")).is_file() {
            releases.push(name);
        }
    }
    match <[String; 1]>::try_from(releases) {
        Ok([one]) => Ok(one),
        Err(found) => Err(Error::KernelTree {
            path: root.to_path_buf(),
            reason: format!(
                "expected one lib/modules/<release> with boot/vmlinuz-<release>, found {found:?}"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metapackage_points_at_the_concrete_kernel() {
        let record = "Package: linux-image-amd64\nVersion: 6.1.192-2\n\
            Provides: linux-image-generic\n\
            Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n\n\
            Package: other\nVersion: 1\n";
        assert_eq!(
            parse_record(record),
            Record::Meta("linux-image-6.1.0-56-amd64".into())
        );
    }

    #[test]
    fn concrete_package_gives_its_version() {
        let record = "Package: linux-image-6.1.0-56-amd64\nVersion: 6.1.192-2\n\
            Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool\n";
        assert_eq!(parse_record(record), Record::Concrete("6.1.192-2".into()));
        assert_eq!(parse_record("Package: x\n"), Record::Unknown);
    }

    #[test]
    fn release_is_found_from_boot_and_modules() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("lib/modules/6.1.0-9-amd64")).unwrap();
        fs::create_dir_all(dir.path().join("boot")).unwrap();
        assert!(release_of(dir.path()).is_err());
        fs::write(dir.path().join("boot/vmlinuz-6.1.0-9-amd64"), b"k").unwrap();
        assert_eq!(release_of(dir.path()).unwrap(), "6.1.0-9-amd64");
    }
}
