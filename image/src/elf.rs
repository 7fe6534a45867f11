//! Shared-library closure of our binaries. The initramfs has no package
//! manager: a dynamically linked binary runs only if its interpreter
//! (PT_INTERP) and every DT_NEEDED library, recursively, sit at the paths
//! the loader searches. We find them on the build host and copy them to the
//! same paths in the image.

use std::collections::{BTreeSet, VecDeque};
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

/// The libraries (and loader) `binaries` need, recursively, as host paths;
/// each goes to the same path in the image. Non-ELF inputs need nothing.
pub fn closure(binaries: &[&Path], search: &[&Path]) -> Result<BTreeSet<PathBuf>> {
    let mut found = BTreeSet::new();
    let mut queue: VecDeque<PathBuf> = binaries.iter().map(|p| p.to_path_buf()).collect();
    while let Some(file) = queue.pop_front() {
        let Some(needs) = needs(&file)? else { continue };
        if let Some(interp) = needs.interpreter {
            let interp = PathBuf::from(interp);
            if !found.contains(&interp) {
                if !interp.is_file() {
                    return Err(Error::LibraryNotFound {
                        library: interp.display().to_string(),
                        needed_by: file,
                        searched: "the host".into(),
                    });
                }
                found.insert(interp.clone());
                queue.push_back(interp);
            }
        }
        for lib in needs.libraries {
            let hit = search.iter().map(|d| d.join(&lib)).find(|p| p.is_file());
            let Some(hit) = hit else {
                return Err(Error::LibraryNotFound {
                    library: lib,
                    needed_by: file,
                    searched: search
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            if found.insert(hit.clone()) {
                queue.push_back(hit);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_dirs() -> Vec<&'static Path> {
        LIBRARY_DIRS.iter().map(Path::new).collect()
    }

    #[test]
    fn test_binary_needs_libc_and_the_loader() {
        // This very test binary is a dynamically linked glibc executable.
        let me = std::env::current_exe().unwrap();
        let libs = closure(&[me.as_path()], &host_dirs()).unwrap();
        let names: Vec<_> = libs.iter().map(|p| p.display().to_string()).collect();
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
        assert!(closure(&[script.as_path()], &host_dirs())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn missing_library_is_named() {
        let me = std::env::current_exe().unwrap();
        let empty = tempfile::tempdir().unwrap();
        let err = closure(&[me.as_path()], &[empty.path()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("libc.so.6") || err.contains(".so"), "{err}");
    }
}
