//! Debian packages as build inputs: find the version apt would install,
//! download the .deb once into the cache, unpack it once (data only, no
//! maintainer scripts), and resolve files inside the unpacked tree.
//!
//! Cache layout, keyed by package and version so a newer package never
//! reuses an old tree:
//!   CACHE/debs/<package>_<version>.deb
//!   CACHE/packages/<package>_<version>/...   (+ `.complete`)
//! Both are written under a temporary name and renamed, so an interrupted
//! build leaves nothing that looks finished. The kernel (kernel.rs) shares
//! the download half and unpacks into its own directory, with depmod.

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::error::{io, Error, Result};
use crate::sys;

/// A concrete package and the version apt would install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

impl Package {
    /// `name_version` with the epoch colon escaped the way apt names files.
    pub fn key(&self) -> String {
        format!("{}_{}", self.name, self.version.replace(':', "%3a"))
    }
}

impl std::fmt::Display for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.version)
    }
}

/// The candidate version of `name` (what `apt-get install` would take).
pub fn candidate(name: &str) -> Result<Package> {
    let record = sys::apt_show(name).map_err(|e| Error::Package {
        package: name.to_string(),
        reason: format!("{e} (is `apt-get update` done?)"),
    })?;
    match field(&record, "Version") {
        Some(version) if !version.is_empty() => Ok(Package {
            name: name.to_string(),
            version: version.to_string(),
        }),
        _ => Err(Error::Package {
            package: name.to_string(),
            reason: "no Version field in apt-cache output".into(),
        }),
    }
}

/// A field of the first control record in `apt-cache show` output.
pub fn field<'a>(record: &'a str, key: &str) -> Option<&'a str> {
    let first = record.split("\n\n").next().unwrap_or_default();
    first
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

/// The .deb of `package` in the cache, downloaded first if needed.
pub fn download(package: &Package, cache: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    let debs = cache.join("debs");
    let deb = debs.join(format!("{}.deb", package.key()));
    if deb.exists() {
        progress(&format!("using cached {}", deb.display()));
        return Ok(deb);
    }
    fs::create_dir_all(&debs).map_err(io("cannot create", &debs))?;
    progress(&format!("downloading {package}"));
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&debs)
        .map_err(io("cannot create a temporary directory in", &debs))?;
    sys::apt_download(&package.name, &package.version, tmp.path())?;
    let got = single_deb(tmp.path(), package)?;
    fs::rename(&got, &deb).map_err(io("cannot move download to", &deb))?;
    let size = fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);
    progress(&format!("downloaded {} ({} KB)", deb.display(), size >> 10));
    Ok(deb)
}

/// The one .deb in `dir`.
fn single_deb(dir: &Path, package: &Package) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("cannot list", dir))? {
        let entry = entry.map_err(io("cannot list", dir))?;
        if entry.file_name().to_string_lossy().ends_with(".deb") {
            found.push(entry.path());
        }
    }
    match <[PathBuf; 1]>::try_from(found) {
        Ok([one]) => Ok(one),
        Err(found) => Err(Error::Package {
            package: package.to_string(),
            reason: format!(
                "apt-get download left {} .deb files in {}, expected one",
                found.len(),
                dir.display()
            ),
        }),
    }
}

/// The unpacked tree of `package` in the cache, downloaded and unpacked
/// first if needed.
pub fn unpacked(package: &Package, cache: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    let parent = cache.join("packages");
    let root = parent.join(package.key());
    if root.join(".complete").exists() {
        return Ok(root);
    }
    let deb = download(package, cache, progress)?;
    progress(&format!("unpacking {}", deb.display()));
    fs::create_dir_all(&parent).map_err(io("cannot create", &parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(&parent)
        .map_err(io("cannot create a temporary directory in", &parent))?;
    sys::deb_extract(&deb, tmp.path())?;
    let marker = tmp.path().join(".complete");
    fs::write(&marker, format!("{package}\n")).map_err(io("cannot write", &marker))?;
    let tmp = tmp.keep();
    if let Err(e) = fs::rename(&tmp, &root) {
        // Another build unpacked the same package first: use theirs.
        let _ = fs::remove_dir_all(&tmp);
        if !root.join(".complete").exists() {
            return Err(io("cannot rename unpacked package to", &root)(e));
        }
    }
    Ok(root)
}

/// The regular file that `path` (absolute, as inside the package) names in
/// the tree unpacked at `root`, following symlinks the way they would
/// resolve on an installed system: absolute targets from `root`, relative
/// ones from the link's directory. Never leaves `root`.
pub fn resolve(root: &Path, path: &str) -> Result<PathBuf> {
    let bad = |reason: String| Error::PackageFile {
        root: root.to_path_buf(),
        path: path.to_string(),
        reason,
    };
    let mut parts: Vec<String> = Vec::new();
    let mut pending: Vec<String> = components(path).map_err(&bad)?;
    pending.reverse();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            parts.pop();
            continue;
        }
        let here = parts.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let candidate = here.join(&part);
        let meta = fs::symlink_metadata(&candidate)
            .map_err(|e| bad(format!("{} is missing: {e}", candidate.display())))?;
        if !meta.file_type().is_symlink() {
            parts.push(part);
            continue;
        }
        links += 1;
        if links > 32 {
            return Err(bad("too many levels of symbolic links".into()));
        }
        let target = fs::read_link(&candidate).map_err(io("cannot read link", &candidate))?;
        let target = target
            .to_str()
            .ok_or_else(|| bad(format!("link {} is not UTF-8", candidate.display())))?;
        if target.starts_with('/') {
            parts.clear();
        }
        let mut more = components(target).map_err(&bad)?;
        more.reverse();
        pending.extend(more);
    }
    let file = parts.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    if !file.is_file() {
        return Err(bad(format!("{} is not a regular file", file.display())));
    }
    Ok(file)
}

/// Path components without the root; `.` dropped, `..` kept for the caller.
fn components(path: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => out.push("..".to_string()),
            Component::Normal(p) => out.push(
                p.to_str()
                    .ok_or_else(|| format!("{path:?} is not UTF-8"))?
                    .to_string(),
            ),
            Component::Prefix(_) => return Err(format!("{path:?} is not a Unix path")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn fields_come_from_the_first_record() {
        let out = "Package: btrfs-progs\nVersion: 6.2-1+deb12u2\nDepends: libc6\n\n\
                   Package: btrfs-progs\nVersion: 6.0-1\n";
        assert_eq!(field(out, "Version"), Some("6.2-1+deb12u2"));
        assert_eq!(field(out, "Depends"), Some("libc6"));
        assert_eq!(field(out, "Homepage"), None);
        let p = Package {
            name: "busybox-static".into(),
            version: "1:1.35.0-4".into(),
        };
        assert_eq!(p.key(), "busybox-static_1%3a1.35.0-4");
        assert_eq!(p.to_string(), "busybox-static=1:1.35.0-4");
    }

    #[test]
    fn symlinks_resolve_inside_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("sbin")).unwrap();
        fs::write(root.join("usr/bin/tool"), b"elf").unwrap();
        symlink("tool", root.join("usr/bin/relative")).unwrap();
        symlink("/usr/bin/tool", root.join("sbin/absolute")).unwrap();
        symlink("../usr/bin/relative", root.join("sbin/chain")).unwrap();
        symlink("/etc/passwd", root.join("sbin/host")).unwrap();
        symlink("loop", root.join("sbin/loop")).unwrap();
        for p in [
            "/usr/bin/tool",
            "/usr/bin/relative",
            "/sbin/absolute",
            "/sbin/chain",
        ] {
            assert_eq!(resolve(root, p).unwrap(), root.join("usr/bin/tool"), "{p}");
        }
        // An absolute link resolves in the package, never on the host.
        let err = resolve(root, "/sbin/host").unwrap_err().to_string();
        assert!(
            err.contains("/sbin/host") && err.contains("missing"),
            "{err}"
        );
        assert!(resolve(root, "/sbin/loop").is_err());
        assert!(resolve(root, "/usr/bin").is_err());
        // `..` above the root stays at the root.
        assert_eq!(
            resolve(root, "/../../usr/bin/tool").unwrap(),
            root.join("usr/bin/tool")
        );
    }
}
