//! Workload logs: one file per workload, appended to by the workload itself (a
//! container's stdout and stderr are the file, opened `O_APPEND`; a VM's serial
//! console is a file QEMU appends to), kept to a size by punching a hole in its head.
//!
//! Why a hole and not rotation: the writer holds the file open and keeps
//! appending, so the file cannot be renamed or replaced under it, and copying the
//! tail then truncating loses what is written in between. A punched hole frees the
//! disk blocks of old output while every later byte keeps its offset, so readers
//! (`cellos logs --follow`) ask "from offset N" and never see a byte twice or miss
//! one that is kept. The apparent size only grows; the space used stays near the cap.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use crate::LogChunk;

#[derive(Debug, thiserror::Error)]
#[error("{what} {}", path.display())]
pub struct LogError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> LogError + 'a {
    move |source| LogError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Punching works in whole blocks.
const BLOCK: u64 = 4096;

/// The oldest offset kept in a log of `len` bytes capped at `keep`.
fn first_kept(len: u64, keep: u64) -> u64 {
    len.saturating_sub(keep) / BLOCK * BLOCK
}

/// Up to `max` bytes of the log at `path` from offset `from` (or from the oldest
/// byte kept, if `from` is older); a missing log is an empty one.
pub fn read(path: &Path, from: u64, max: u64, keep: u64) -> Result<LogChunk, LogError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(LogChunk {
                start: 0,
                from: 0,
                next: 0,
                text: String::new(),
            })
        }
        Err(e) => return Err(io_err("opening the log", path)(e)),
    };
    let len = f.metadata().map_err(io_err("reading the log", path))?.len();
    let start = first_kept(len, keep);
    let from = from.clamp(start, len);
    f.seek(SeekFrom::Start(from))
        .map_err(io_err("reading the log", path))?;
    let mut bytes = Vec::new();
    f.take(max)
        .read_to_end(&mut bytes)
        .map_err(io_err("reading the log", path))?;
    Ok(LogChunk {
        start,
        from,
        next: from + bytes.len() as u64,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Frees all but the last `keep` bytes (about) of the log at `path`; offsets do not
/// change. A missing log is fine.
pub fn cap(path: &Path, keep: u64) -> Result<(), LogError> {
    let f = match File::options().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("opening the log", path)(e)),
    };
    let len = f.metadata().map_err(io_err("reading the log", path))?.len();
    let end = first_kept(len, keep);
    if end == 0 {
        return Ok(());
    }
    use nix::fcntl::{fallocate, FallocateFlags};
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let end = i64::try_from(end).unwrap_or(i64::MAX);
    fallocate(f.as_raw_fd(), flags, 0, end)
        .map_err(|e| io_err("freeing the head of the log", path)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn capped_logs_keep_their_tail_and_their_offsets() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("c.log");
        let mut w = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .expect("log");
        let line = |i: usize| format!("line {i:06}\n");
        for i in 0..20_000 {
            w.write_all(line(i).as_bytes()).expect("write");
        }
        let len = std::fs::metadata(&path).expect("meta").len();
        assert_eq!(len, 20_000 * 12);
        let keep = 16 << 10;
        cap(&path, keep).expect("cap");
        let m = std::fs::metadata(&path).expect("meta");
        assert_eq!(m.len(), len, "the size (and so every offset) stays");
        assert!(
            m.blocks() * 512 <= keep + 2 * BLOCK,
            "{} bytes still used",
            m.blocks() * 512
        );

        // Reading from 0 starts at the oldest byte kept; the bytes are the ones written.
        let c = read(&path, 0, 100, keep).expect("read");
        assert_eq!(c.start, first_kept(len, keep));
        assert_eq!(c.from, c.start);
        let at = c.from as usize;
        let all: String = (0..20_000).map(line).collect();
        assert_eq!(c.text, all[at..at + 100]);
        // The container keeps appending; a follower goes on from `next`.
        w.write_all(b"after the cap\n").expect("write");
        let tail = read(&path, len, 1 << 20, keep).expect("tail");
        assert_eq!(tail.text, "after the cap\n");
        assert_eq!(tail.next, len + 14);
        let none = read(&path, tail.next + 100, 10, keep).expect("past the end");
        assert!(none.text.is_empty() && none.next == tail.next);
        assert!(read(&dir.path().join("missing.log"), 0, 10, keep)
            .expect("missing")
            .text
            .is_empty());
    }
}
