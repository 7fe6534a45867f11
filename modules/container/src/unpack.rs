//! Applying one image layer (a tar, maybe gzip or zstd compressed) onto a root
//! directory, as the OCI image spec's changeset rules say, without letting a
//! hostile layer write outside the root.
//!
//! Rules, each enforced here and named in the refusal:
//! - entry paths and hard-link targets are relative and have no `..`: an absolute
//!   or escaping name is refused, not rewritten;
//! - an entry's parent directory is resolved by the kernel under the root (see
//!   [`crate::sys`]), so a symlink in the image — absolute or relative, planted by
//!   this layer or a lower one — resolves inside the root and the write stays there;
//! - the entry itself is created with `O_EXCL`/`O_NOFOLLOW`-style calls after
//!   whatever was at its name is removed, so it never writes through a symlink;
//! - a hard link must name an existing regular file in the root (not a symlink, a
//!   directory or anything missing);
//! - character and block devices are refused (a container must not get a device
//!   node from an image); FIFOs are made; setuid and setgid bits are dropped;
//! - ownership is kept (uid/gid numbers) only when this process runs as root;
//! - whiteouts (`.wh.<name>`) delete `<name>`; an opaque marker (`.wh..wh..opq`)
//!   deletes what lower layers put in its directory;
//! - the uncompressed stream must hash to the config's diff id, and may not write
//!   more than [`UnpackLimits`] allows (a small gzip can expand a thousandfold).
//!
//! A refused layer leaves a half-applied tree: the caller unpacks into a scratch
//! snapshot and discards it on error (see [`crate::layers`]).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::SFlag;
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use crate::pull::{Compression, Layer};
use crate::reference::Digest;
use crate::sys::{self, RootDir};
use crate::ContainerError;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// How much one layer may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of file content.
    pub max_bytes: u64,
    /// Tar entries.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 16 << 30,
            max_entries: 1 << 20,
        }
    }
}

/// What applying a layer wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Applies `layer`, read from `blob` (as stored: compressed), onto `root`.
pub fn apply_layer(
    root: &Path,
    layer: &Layer,
    blob: impl Read,
    limits: &UnpackLimits,
) -> Result<UnpackStats, ContainerError> {
    let decoder: Box<dyn Read + '_> = match layer.compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(blob).map_err(|source| {
                ContainerError::Unpack {
                    layer: layer.digest.clone(),
                    entry: String::new(),
                    op: "starting the zstd decoder",
                    source,
                }
            })?)
        }
    };
    let root_dir = RootDir::open(root).map_err(crate::io_err("opening", root))?;
    let mut u = Unpacker {
        root: root_dir,
        layer: &layer.digest,
        limits,
        stats: UnpackStats::default(),
        written: HashSet::new(),
        dir_modes: Vec::new(),
        chown: sys::is_root(),
    };
    let mut archive = tar::Archive::new(Hashing {
        inner: decoder,
        hasher: Sha256::new(),
    });
    let entries = archive
        .entries()
        .map_err(|source| u.io_error("", "reading the tar", source))?;
    for entry in entries {
        let entry = entry.map_err(|source| u.io_error("", "reading the tar", source))?;
        u.entry(entry)?;
    }
    u.finish_dirs()?;
    // The tar ends before its stream does (end-of-archive blocks, padding): the
    // diff id is over all of it.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink())
        .map_err(|source| u.io_error("", "reading the end of the layer", source))?;
    let actual = Digest::from_hasher(rest.hasher);
    if actual != layer.diff_id {
        return Err(ContainerError::DigestMismatch {
            what: "uncompressed layer (diff id)",
            digest: layer.diff_id.clone(),
            actual,
        });
    }
    Ok(u.stats)
}

struct Unpacker<'a> {
    root: RootDir,
    layer: &'a Digest,
    limits: &'a UnpackLimits,
    stats: UnpackStats,
    /// Paths this layer wrote, and their ancestors: an opaque marker keeps them.
    written: HashSet<PathBuf>,
    /// Directory modes, applied once the layer is written (a read-only
    /// directory would refuse its own entries).
    dir_modes: Vec<(PathBuf, u32)>,
    chown: bool,
}

/// An entry path split into its parent's components and its own name.
struct EntryPath {
    parent: PathBuf,
    name: OsString,
}

impl EntryPath {
    fn full(&self) -> PathBuf {
        self.parent.join(&self.name)
    }
}

impl Unpacker<'_> {
    fn refuse(&self, entry: &str, reason: impl Into<String>) -> ContainerError {
        ContainerError::Refused {
            layer: self.layer.clone(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    fn io_error(&self, entry: &str, op: &'static str, source: io::Error) -> ContainerError {
        ContainerError::Unpack {
            layer: self.layer.clone(),
            entry: entry.to_string(),
            op,
            source,
        }
    }

    /// Splits a tar path into relative components; refuses absolute paths and
    /// `..`. `None` for the root itself (`./`).
    fn clean(
        &self,
        entry: &str,
        raw: &[u8],
        what: &str,
    ) -> Result<Option<EntryPath>, ContainerError> {
        if raw.first() == Some(&b'/') {
            return Err(self.refuse(entry, format!("{what} is absolute")));
        }
        if raw.contains(&0) {
            return Err(self.refuse(entry, format!("{what} contains a NUL byte")));
        }
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in raw.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err(self.refuse(entry, format!("{what} has a '..' component"))),
                p => parts.push(p),
            }
        }
        let Some(name) = parts.pop() else {
            return Ok(None);
        };
        let parent: PathBuf = parts.iter().map(|p| OsStr::from_bytes(p)).collect();
        Ok(Some(EntryPath {
            parent,
            name: OsStr::from_bytes(name).to_os_string(),
        }))
    }

    /// The directory `rel` under the root, created (0755) with its missing
    /// ancestors if a tar left them out.
    fn dir(&self, entry: &str, rel: &Path) -> Result<OwnedFd, ContainerError> {
        match self.root.open_dir(rel) {
            Ok(fd) => Ok(fd),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
                    return Err(self.io_error(entry, "opening the root", e));
                };
                let pfd = self.dir(entry, parent)?;
                sys::mkdir_at(&pfd, name, 0o755)
                    .map_err(|e| self.io_error(entry, "creating a parent directory", e))?;
                self.root
                    .open_dir(rel)
                    .map_err(|e| self.io_error(entry, "opening the parent directory", e))
            }
            Err(e) => Err(self.io_error(entry, "opening the parent directory", e)),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ContainerError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(self.refuse(
                &shown,
                format!(
                    "the layer has more than {} entries",
                    self.limits.max_entries
                ),
            ));
        }
        let Some(path) = self.clean(&shown, &raw, "the path")? else {
            return Ok(()); // the root directory itself keeps its mode
        };
        let name_bytes = path.name.as_bytes();
        if name_bytes == OPAQUE.as_bytes() {
            let dir = self.dir(&shown, &path.parent)?;
            return self.remove_lower(&shown, &dir, &path.parent);
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT.as_bytes()) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(self.refuse(&shown, "a whiteout must name an entry"));
            }
            let dir = self.dir(&shown, &path.parent)?;
            return sys::remove_all_at(&dir, OsStr::from_bytes(hidden))
                .map_err(|e| self.io_error(&shown, "removing a whited-out entry", e));
        }

        let header = entry.header();
        let etype = header.entry_type();
        let mode = header
            .mode()
            .map_err(|e| self.io_error(&shown, "reading the mode", e))?;
        let owner = (header.uid(), header.gid());
        if mode & 0o6000 != 0 && !etype.is_symlink() {
            tracing::info!(layer = %self.layer, entry = %shown, "dropping setuid/setgid bits");
        }
        let mode = mode & 0o1777;
        let dir = self.dir(&shown, &path.parent)?;
        let existing = sys::lstat_at(&dir, &path.name)
            .map_err(|e| self.io_error(&shown, "looking at the entry's name", e))?;
        let existing_is_dir = existing
            .as_ref()
            .is_some_and(|st| sys::kind(st) == SFlag::S_IFDIR);
        let clear = |u: &Self| {
            sys::remove_all_at(&dir, &path.name)
                .map_err(|e| u.io_error(&shown, "replacing what was there", e))
        };

        match etype {
            EntryType::Directory => {
                if !existing_is_dir {
                    clear(self)?;
                    sys::mkdir_at(&dir, &path.name, 0o700)
                        .map_err(|e| self.io_error(&shown, "creating the directory", e))?;
                }
                self.dir_modes.push((path.full(), mode));
            }
            EntryType::Regular | EntryType::Continuous => {
                clear(self)?;
                let file = sys::create_file_at(&dir, &path.name, 0o600)
                    .map_err(|e| self.io_error(&shown, "creating the file", e))?;
                let room = self.limits.max_bytes.saturating_sub(self.stats.bytes);
                let mut out = io::BufWriter::new(&file);
                let n = io::copy(&mut (&mut entry).take(room.saturating_add(1)), &mut out)
                    .map_err(|e| self.io_error(&shown, "writing the file", e))?;
                drop(out);
                if n > room {
                    return Err(self.refuse(
                        &shown,
                        format!(
                            "the layer expands past the limit of {} bytes",
                            self.limits.max_bytes
                        ),
                    ));
                }
                self.stats.bytes += n;
                self.set_owner(&shown, &dir, &path.name, owner)?;
                sys::chmod_fd(&file, mode)
                    .map_err(|e| self.io_error(&shown, "setting the mode", e))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.refuse(&shown, "a symlink without a target"))?
                    .into_owned();
                clear(self)?;
                sys::symlink_at(OsStr::from_bytes(&target), &dir, &path.name)
                    .map_err(|e| self.io_error(&shown, "creating the symlink", e))?;
                self.set_owner(&shown, &dir, &path.name, owner)?;
            }
            EntryType::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.refuse(&shown, "a hard link without a target"))?
                    .into_owned();
                let target = self
                    .clean(&shown, &raw_target, "the hard link's target")?
                    .ok_or_else(|| self.refuse(&shown, "a hard link to the root directory"))?;
                let tdir = self.root.open_dir(&target.parent).map_err(|e| {
                    self.io_error(&shown, "opening the hard link target's directory", e)
                })?;
                let st = sys::lstat_at(&tdir, &target.name)
                    .map_err(|e| self.io_error(&shown, "looking at the hard link's target", e))?;
                match st.map(|st| sys::kind(&st)) {
                    Some(SFlag::S_IFREG) => {}
                    Some(SFlag::S_IFLNK) => {
                        return Err(self.refuse(&shown, "a hard link to a symlink"))
                    }
                    Some(_) => {
                        return Err(self
                            .refuse(&shown, "a hard link to something other than a regular file"))
                    }
                    None => {
                        return Err(self.refuse(&shown, "a hard link to a file that does not exist"))
                    }
                }
                clear(self)?;
                sys::hardlink_at(&tdir, &target.name, &dir, &path.name)
                    .map_err(|e| self.io_error(&shown, "creating the hard link", e))?;
            }
            EntryType::Fifo => {
                clear(self)?;
                sys::mkfifo_at(&dir, &path.name, mode)
                    .map_err(|e| self.io_error(&shown, "creating the fifo", e))?;
                self.set_owner(&shown, &dir, &path.name, owner)?;
            }
            EntryType::Char | EntryType::Block => {
                return Err(self.refuse(&shown, "device nodes are not allowed in images"));
            }
            other => {
                return Err(self.refuse(&shown, format!("unsupported tar entry type {other:?}")));
            }
        }
        let mut p = path.full();
        while self.written.insert(p.clone()) && p.pop() && !p.as_os_str().is_empty() {}
        Ok(())
    }

    fn set_owner(
        &self,
        shown: &str,
        dir: &OwnedFd,
        name: &OsStr,
        (uid, gid): (io::Result<u64>, io::Result<u64>),
    ) -> Result<(), ContainerError> {
        if !self.chown {
            return Ok(());
        }
        let uid = uid.map_err(|e| self.io_error(shown, "reading the uid", e))?;
        let gid = gid.map_err(|e| self.io_error(shown, "reading the gid", e))?;
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Err(self.refuse(shown, "uid or gid out of range"));
        };
        sys::chown_at(dir, name, uid, gid).map_err(|e| self.io_error(shown, "setting the owner", e))
    }

    /// An opaque directory: removes everything under `dir` that this layer did not write.
    fn remove_lower(&self, shown: &str, dir: &OwnedFd, rel: &Path) -> Result<(), ContainerError> {
        let names = sys::list_dir(dir)
            .map_err(|e| self.io_error(shown, "listing an opaque directory", e))?;
        for name in names {
            let child = rel.join(&name);
            if !self.written.contains(&child) {
                sys::remove_all_at(dir, &name)
                    .map_err(|e| self.io_error(shown, "clearing an opaque directory", e))?;
            } else if sys::lstat_at(dir, &name)
                .map_err(|e| self.io_error(shown, "listing an opaque directory", e))?
                .is_some_and(|st| sys::kind(&st) == SFlag::S_IFDIR)
            {
                let sub = sys::open_dir_at(dir, &name)
                    .map_err(|e| self.io_error(shown, "opening an opaque directory", e))?;
                self.remove_lower(shown, &sub, &child)?;
            }
        }
        Ok(())
    }

    /// Applies directory entries' modes, deepest first, on directories still
    /// there (a later entry may have replaced one).
    fn finish_dirs(&mut self) -> Result<(), ContainerError> {
        let mut modes = std::mem::take(&mut self.dir_modes);
        modes.sort_by_key(|m| std::cmp::Reverse(m.0.components().count()));
        for (path, mode) in modes {
            let shown = path.to_string_lossy().into_owned();
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            let Ok(pfd) = self.root.open_dir(parent) else {
                continue;
            };
            match sys::open_dir_at(&pfd, name) {
                Ok(fd) => sys::chmod_fd(&fd, mode)
                    .map_err(|e| self.io_error(&shown, "setting the directory's mode", e))?,
                // Replaced by a file or symlink, or removed, later in the layer.
                Err(_) => continue,
            }
        }
        Ok(())
    }
}
