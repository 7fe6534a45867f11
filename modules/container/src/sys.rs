//! The OS boundary of the container module: fd-relative file operations for
//! unpacking, and the [`Snapshots`] trait for layer composition.
//!
//! Unpacking never joins a path from a tar onto the root and hands it to
//! `std::fs`: a symlink planted by an earlier entry would take the write outside.
//! Instead [`RootDir::open_dir`] asks the kernel (`openat2` with
//! `RESOLVE_IN_ROOT`) to resolve an entry's parent directory as if the root were
//! `/` — `..` stops at the root and absolute symlinks land inside it — and every
//! operation on the entry itself is an `*at` call on that directory fd with one
//! plain name and no symlink following.
//!
//! [`Snapshots`] is how layers and container roots are made: btrfs subvolumes on a
//! node ([`BtrfsSnapshots`], through cellos-storage's `btrfs` tool runner), plain
//! directory copies where there is no btrfs ([`DirCopySnapshots`], host tests).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchownat, linkat, mkfifoat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::ContainerError;

fn wrap(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and is owned by
    // nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A directory that paths are resolved under, as if it were `/`.
#[derive(Debug)]
pub struct RootDir {
    fd: OwnedFd,
}

impl RootDir {
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(RootDir { fd: wrap(fd) })
    }

    /// Opens the directory at `rel` (relative, no `..`), following symlinks as if
    /// the root were `/`; `rel` empty is the root itself.
    pub fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        let rel: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_IN_ROOT
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        match openat2(self.fd.as_raw_fd(), rel, how) {
            Ok(fd) => Ok(wrap(fd)),
            Err(Errno::ENOSYS) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "openat2 is missing (Linux 5.6 or newer is needed to unpack images)",
            )),
            Err(e) => Err(e.into()),
        }
    }
}

/// What is at `name` in `dir`, without following a symlink; `None` if nothing.
pub fn lstat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The file type bits of a stat.
pub fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Opens the directory `name` in `dir`, refusing a symlink.
pub fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    let fd = openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(wrap(fd))
}

/// The names in a directory, without `.` and `..`.
pub fn list_dir(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut d = nix::dir::Dir::openat(
        Some(dir.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            out.push(OsString::from(OsStr::from_bytes(&name)));
        }
    }
    Ok(out)
}

/// Removes `name` in `dir` and, if it is a directory, everything under it; never
/// follows a symlink. Nothing there is not an error.
pub fn remove_all_at(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if kind(&st) == SFlag::S_IFDIR {
        let sub = open_dir_at(dir, name)?;
        for child in list_dir(&sub)? {
            remove_all_at(&sub, &child)?;
        }
        unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir)?;
    } else {
        unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)?;
    }
    Ok(())
}

pub fn mkdir_at(dir: &OwnedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    Ok(mkdirat(
        Some(dir.as_raw_fd()),
        name,
        Mode::from_bits_truncate(mode),
    )?)
}

/// Creates a new regular file (it must not exist; a symlink there is not followed).
pub fn create_file_at(dir: &OwnedFd, name: &OsStr, mode: u32) -> io::Result<File> {
    let fd = openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )?;
    Ok(File::from(wrap(fd)))
}

pub fn symlink_at(target: &OsStr, dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    Ok(symlinkat(target, Some(dir.as_raw_fd()), name)?)
}

/// A hard link `new_dir/new_name` to `old_dir/old_name` (a symlink there is linked
/// itself, not followed; callers refuse that case first).
pub fn hardlink_at(
    old_dir: &OwnedFd,
    old_name: &OsStr,
    new_dir: &OwnedFd,
    new_name: &OsStr,
) -> io::Result<()> {
    Ok(linkat(
        Some(old_dir.as_raw_fd()),
        old_name,
        Some(new_dir.as_raw_fd()),
        new_name,
        AtFlags::empty(),
    )?)
}

pub fn mkfifo_at(dir: &OwnedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    Ok(mkfifoat(
        Some(dir.as_raw_fd()),
        name,
        Mode::from_bits_truncate(mode),
    )?)
}

/// Sets the owner of `name` in `dir` (a symlink itself, not its target).
pub fn chown_at(dir: &OwnedFd, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    Ok(fchownat(
        Some(dir.as_raw_fd()),
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

/// Sets the permission bits of an open file or directory.
pub fn chmod_fd(fd: &impl AsRawFd, mode: u32) -> io::Result<()> {
    Ok(nix::sys::stat::fchmod(
        fd.as_raw_fd(),
        Mode::from_bits_truncate(mode),
    )?)
}

/// Whether this process may give files away (chown to the tar's uid/gid).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// How layer trees and container roots are made.
pub trait Snapshots: Send + Sync {
    /// Creates an empty tree at `path`.
    fn create(&self, path: &Path) -> Result<(), ContainerError>;
    /// Creates `dst` as a writable copy of `src`.
    fn snapshot(&self, src: &Path, dst: &Path) -> Result<(), ContainerError>;
    /// Deletes the tree at `path` (made by this trait); nothing there is fine.
    fn delete(&self, path: &Path) -> Result<(), ContainerError>;
}

/// btrfs subvolumes and snapshots, through cellos-storage's `btrfs` tool runner
/// (the same one volumes use). Snapshots share extents with their source, so a
/// layer chain costs the space of its changes.
pub struct BtrfsSnapshots<S> {
    sys: S,
}

impl<S: cellos_storage::sys::Sys> BtrfsSnapshots<S> {
    pub fn new(sys: S) -> Self {
        BtrfsSnapshots { sys }
    }

    fn btrfs(&self, op: &'static str, path: &Path, args: &[&OsStr]) -> Result<(), ContainerError> {
        self.sys
            .btrfs(args)
            .map(|_| ())
            .map_err(|source| ContainerError::Snapshot {
                op,
                path: path.to_path_buf(),
                source,
            })
    }
}

impl<S: cellos_storage::sys::Sys> Snapshots for BtrfsSnapshots<S> {
    fn create(&self, path: &Path) -> Result<(), ContainerError> {
        self.btrfs(
            "creating subvolume",
            path,
            &["subvolume".as_ref(), "create".as_ref(), path.as_os_str()],
        )
    }

    fn snapshot(&self, src: &Path, dst: &Path) -> Result<(), ContainerError> {
        self.btrfs(
            "snapshotting into",
            dst,
            &[
                "subvolume".as_ref(),
                "snapshot".as_ref(),
                src.as_os_str(),
                dst.as_os_str(),
            ],
        )
    }

    fn delete(&self, path: &Path) -> Result<(), ContainerError> {
        if fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        self.btrfs(
            "deleting subvolume",
            path,
            &["subvolume".as_ref(), "delete".as_ref(), path.as_os_str()],
        )
    }
}

/// Plain directories and full copies: for hosts without btrfs (tests). Paths
/// come from directory listings of trees this crate made, and symlinks in them
/// are copied as symlinks, never followed.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirCopySnapshots;

impl Snapshots for DirCopySnapshots {
    fn create(&self, path: &Path) -> Result<(), ContainerError> {
        fs::create_dir(path).map_err(crate::io_err("creating", path))
    }

    fn snapshot(&self, src: &Path, dst: &Path) -> Result<(), ContainerError> {
        copy_tree(src, dst)
    }

    fn delete(&self, path: &Path) -> Result<(), ContainerError> {
        match fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(crate::io_err("deleting", path)(e)),
        }
    }
}

fn copy_tree(src: &Path, dst: &Path) -> Result<(), ContainerError> {
    let meta = fs::symlink_metadata(src).map_err(crate::io_err("looking at", src))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        fs::create_dir(dst).map_err(crate::io_err("creating", dst))?;
        for entry in fs::read_dir(src).map_err(crate::io_err("listing", src))? {
            let entry = entry.map_err(crate::io_err("listing", src))?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
        fs::set_permissions(dst, meta.permissions())
            .map_err(crate::io_err("setting the mode of", dst))?;
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(crate::io_err("reading link", src))?;
        std::os::unix::fs::symlink(target, dst).map_err(crate::io_err("creating symlink", dst))?;
    } else if ft.is_file() {
        fs::copy(src, dst).map_err(crate::io_err("copying to", dst))?;
    } else {
        // FIFOs are the only other thing unpacking makes.
        nix::unistd::mkfifo(dst, Mode::from_bits_truncate(meta_mode(&meta)))
            .map_err(|e| crate::io_err("creating fifo", dst)(e.into()))?;
    }
    Ok(())
}

fn meta_mode(meta: &fs::Metadata) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellos_storage::sys::FsSize;
    use cellos_storage::StorageError;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Records `btrfs` command lines; makes a directory for `subvolume create`.
    #[derive(Default)]
    struct Recording(Mutex<Vec<String>>);

    impl cellos_storage::sys::Sys for Recording {
        fn read_at(&self, _: &Path, _: u64, _: usize) -> Result<Vec<u8>, StorageError> {
            unreachable!("not a block device test")
        }
        fn wipe(&self, _: &Path, _: u64) -> Result<(), StorageError> {
            unreachable!("not a block device test")
        }
        fn seek_time(&self, _: &Path, _: u64) -> Result<Duration, StorageError> {
            unreachable!("not a block device test")
        }
        fn mkfs_btrfs(&self, _: &Path, _: &str) -> Result<(), StorageError> {
            unreachable!("not a block device test")
        }
        fn mount_btrfs(&self, _: &Path, _: &Path) -> Result<(), StorageError> {
            unreachable!("not a block device test")
        }
        fn fs_size(&self, _: &Path) -> Result<FsSize, StorageError> {
            unreachable!("not a block device test")
        }
        fn btrfs(&self, args: &[&OsStr]) -> Result<String, StorageError> {
            let line: Vec<_> = args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            if line[..2] == ["subvolume", "create"] {
                fs::create_dir(&line[2]).expect("fake subvolume");
            }
            self.0.lock().expect("calls").push(line.join(" "));
            Ok(String::new())
        }
    }

    #[test]
    fn btrfs_snapshots_are_subvolume_commands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let snaps = BtrfsSnapshots::new(Recording::default());
        snaps.create(&a).expect("create");
        snaps.snapshot(&a, &b).expect("snapshot");
        snaps.delete(&a).expect("delete");
        snaps
            .delete(&dir.path().join("missing"))
            .expect("nothing to delete");
        let calls = snaps.sys.0.lock().expect("calls").clone();
        let (a, b) = (a.display(), b.display());
        assert_eq!(
            calls,
            [
                format!("subvolume create {a}"),
                format!("subvolume snapshot {a} {b}"),
                format!("subvolume delete {a}"),
            ]
        );
    }

    #[test]
    fn resolution_stays_under_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root_path = dir.path().join("root");
        fs::create_dir_all(root_path.join("etc")).expect("etc");
        std::os::unix::fs::symlink("/", root_path.join("up")).expect("symlink");
        std::os::unix::fs::symlink("../../..", root_path.join("rel")).expect("symlink");
        let root = RootDir::open(&root_path).expect("root");
        for via in ["up/etc", "rel/etc", "etc/../../etc"] {
            let fd = root.open_dir(Path::new(via)).expect(via);
            let names = list_dir(&fd).expect("list");
            assert!(names.is_empty(), "{via} left the root: {names:?}");
        }
        assert!(
            root.open_dir(Path::new("up/tmp")).is_err(),
            "the host's /tmp is not in the root"
        );
    }
}
