//! File I/O for data files, in one place.
//!
//! Every call that touches the disk goes through here so the engine above reads
//! as logic, errors carry the path they happened on, and the durability rules
//! (fsync the file, fsync the directory after creating or renaming an entry) are
//! written once.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// An I/O error together with what was being done and on which path.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}")]
pub struct IoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

pub type Result<T> = std::result::Result<T, IoError>;

fn ctx<T>(op: &'static str, path: &Path, r: io::Result<T>) -> Result<T> {
    r.map_err(|source| IoError {
        op,
        path: path.to_path_buf(),
        source,
    })
}

/// Opens (creating if needed) a data file for reading and positional writes.
pub fn open_rw(path: &Path) -> Result<File> {
    ctx(
        "open",
        path,
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path),
    )
}

pub fn len(file: &File, path: &Path) -> Result<u64> {
    ctx("stat", path, file.metadata().map(|m| m.len()))
}

pub fn write_at(file: &File, path: &Path, buf: &[u8], offset: u64) -> Result<()> {
    ctx("write", path, file.write_all_at(buf, offset))
}

/// Reads exactly `buf.len()` bytes at `offset`; a short file is an error.
pub fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    ctx("read", path, file.read_exact_at(buf, offset))
}

pub fn sync_data(file: &File, path: &Path) -> Result<()> {
    ctx("fsync", path, file.sync_data())
}

pub fn truncate(file: &File, path: &Path, len: u64) -> Result<()> {
    ctx("truncate", path, file.set_len(len))?;
    sync_data(file, path)
}

/// Makes the directory's entries (new files, renames) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    ctx(
        "fsync directory",
        dir,
        File::open(dir).and_then(|d| d.sync_all()),
    )
}

pub fn create_dir(dir: &Path) -> Result<()> {
    ctx("create directory", dir, fs::create_dir_all(dir))
}

pub fn remove_dir(dir: &Path) -> Result<()> {
    ctx("remove directory", dir, fs::remove_dir_all(dir))
}

pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    ctx("read", path, fs::read(path))
}

/// Names of the entries of `dir` (not recursive), sorted.
pub fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let rd = ctx("list", dir, fs::read_dir(dir))?;
    let mut names = Vec::new();
    for e in rd {
        let e = ctx("list", dir, e)?;
        if let Some(n) = e.file_name().to_str() {
            names.push(n.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Replaces `path` with `data` atomically and durably (write, fsync, rename,
/// fsync the directory).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let f = ctx("create", &tmp, File::create(&tmp))?;
        write_at(&f, &tmp, data, 0)?;
        ctx("fsync", &tmp, f.sync_all())?;
    }
    ctx("rename", path, fs::rename(&tmp, path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}
