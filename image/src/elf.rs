//! Shared-library closure of our binaries. The initramfs has no package
//! manager: a dynamically linked binary runs only if its interpreter
//! (PT_INTERP) and every DT_NEEDED library, recursively, sit at the paths
//! the loader searches. We look for them under a list of roots (unpacked
//! Debian packages first, then the build host's `/`) and copy each to the
//! path it has under its root, which is where the image's loader looks.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use goblin::elf::Elf;

use crate::error::{io, Error, Result};

/// Where the Debian loader looks for libraries (its trusted multiarch dirs).
pub const LIBRARY_DIRS: [&str; 3] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
];

/// What one ELF file asks the loader for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Needs {
    interpreter: Option<String>,
    libraries: Vec<String>,
}

/// Reads `path`; `Ok(None)` if it is not an ELF file at all.
fn needs(path: &Path) -> Result<Option<Needs>> {
    let bytes = fs::read(path).map_err(io("cannot read", path))?;
    if !bytes.starts_with(b"\x7fELF") {
        return Ok(None);
    }
    let elf = Elf::parse(&bytes).map_err(|e| Error::Elf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Some(Needs {
        interpreter: elf.interpreter.map(str::to_string),
        libraries: elf.libraries.iter().map(|l| l.to_string()).collect(),
    }))
}

/// Whether `path` is an ELF file.
pub fn is_elf(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = fs::File::open(path).map_err(io("cannot open", path))?;
    use std::io::Read;
    Ok(file.read_exact(&mut magic).is_ok() && &magic == b"\x7fELF")
}

/// `image_path` (absolute) under the first root that has it as a file.
fn find(roots: &[&Path], image_path: &str) -> Option<PathBuf> {
    let relative = image_path.trim_start_matches('/');
    roots.iter().map(|r| r.join(relative)).find(|p| p.is_file())
}

/// The libraries (and loader) `binaries` need, recursively: image path ->
/// where the build reads it. Each library is looked for in every
/// [`LIBRARY_DIRS`] directory of the first root that has it, so a library
/// shipped by an unpacked package (a root before `/`) wins over the host's.
/// Non-ELF inputs need nothing.
pub fn closure(binaries: &[&Path], roots: &[&Path]) -> Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    let mut queue: VecDeque<PathBuf> = binaries.iter().map(|p| p.to_path_buf()).collect();
    let searched = || {
        roots
            .iter()
            .flat_map(|r| LIBRARY_DIRS.iter().map(move |d| r.join(&d[1..])))
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    while let Some(file) = queue.pop_front() {
        let Some(needs) = needs(&file)? else { continue };
        let mut wanted = Vec::new();
        if let Some(interp) = needs.interpreter {
            wanted.push(vec![interp]);
        }
        for lib in needs.libraries {
            wanted.push(LIBRARY_DIRS.iter().map(|d| format!("{d}/{lib}")).collect());
        }
        for candidates in wanted {
            if candidates.iter().any(|c| found.contains_key(c)) {
                continue;
            }
            let hit = roots.iter().find_map(|root| {
                candidates
                    .iter()
                    .find_map(|c| Some((c.clone(), find(&[root], c)?)))
            });
            let Some((image, source)) = hit else {
                let library = match candidates.as_slice() {
                    [interp] if !interp.contains("x86_64-linux-gnu/") => interp.clone(),
                    _ => candidates[0].rsplit('/').next().unwrap_or_default().into(),
                };
                return Err(Error::LibraryNotFound {
                    library,
                    needed_by: file,
                    searched: searched(),
                });
            };
            found.insert(image, source.clone());
            queue.push_back(source);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Vec<&'static Path> {
        vec![Path::new("/")]
    }

    #[test]
    fn test_binary_needs_libc_and_the_loader() {
        // This very test binary is a dynamically linked glibc executable.
        let me = std::env::current_exe().unwrap();
        let libs = closure(&[me.as_path()], &host()).unwrap();
        for (image, source) in &libs {
            assert_eq!(Path::new(image), source, "host files keep their path");
        }
        let names: Vec<_> = libs.keys().collect();
        assert!(names.iter().any(|n| n.ends_with("/libc.so.6")), "{names:?}");
        assert!(
            names.iter().any(|n| n.contains("ld-linux-x86-64.so.2")),
            "{names:?}"
        );
    }

    #[test]
    fn static_and_non_elf_files_need_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s.sh");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(!is_elf(&script).unwrap());
        assert!(closure(&[script.as_path()], &host()).unwrap().is_empty());
    }

    #[test]
    fn missing_library_is_named() {
        let me = std::env::current_exe().unwrap();
        let empty = tempfile::tempdir().unwrap();
        let err = closure(&[me.as_path()], &[empty.path()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ld-linux") || err.contains(".so"), "{err}");
    }

    #[test]
    fn a_package_root_wins_over_the_host() {
        // A fake package shipping its own libc: found under the package root,
        // copied to the path it has there.
        let me = std::env::current_exe().unwrap();
        let pkg = tempfile::tempdir().unwrap();
        let host_libc = closure(&[me.as_path()], &host())
            .unwrap()
            .into_iter()
            .find(|(i, _)| i.ends_with("/libc.so.6"))
            .unwrap();
        let dir = pkg.path().join("usr/lib/x86_64-linux-gnu");
        fs::create_dir_all(&dir).unwrap();
        fs::copy(&host_libc.1, dir.join("libc.so.6")).unwrap();
        let libs = closure(&[me.as_path()], &[pkg.path(), Path::new("/")]).unwrap();
        let (image, source) = libs
            .iter()
            .find(|(i, _)| i.ends_with("/libc.so.6"))
            .unwrap();
        assert_eq!(image, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(source, &dir.join("libc.so.6"));
        assert_eq!(
            libs.keys().filter(|i| i.ends_with("/libc.so.6")).count(),
            1,
            "one libc only: {libs:?}"
        );
    }
}
