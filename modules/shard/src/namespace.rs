//! A namespace: append-only data files plus an in-memory index rebuilt from them.
//!
//! Layout: `<root>/<name>/namespace.json` ([`settings`]) and `data-NNNNNNNN.log`
//! files of [`record`]s. Only the last data file is written; it is closed
//! (fsynced) and a new one started when it would grow past the size limit.
//! [`recovery`] rebuilds the index on open, cuts a torn tail and keeps any other
//! damage; [`durable`] acknowledges a write only once an fsync covers it (group
//! commit); [`compact`] copies the live records of closed files to new files
//! that replace the old ones by rename. Readers may see a value before its
//! writer's acknowledgement (as in Redis and 0-db); a value is never lost once
//! acknowledged. README.md has the crash analysis.
//!
//! Modes: `user` keeps a `BTreeMap` from key to location. `seq` assigns each value
//! a key that *is* its original location (`file << 40 | offset`, 8 bytes
//! big-endian), so the index holds only the set of deleted locations, plus, for a
//! compacted file, where each moved record went.

mod compact;
#[cfg(any(test, feature = "failpoints"))]
pub use compact::STEPS as COMPACTION_STEPS;
mod durable;
mod recovery;
mod settings;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

pub use self::compact::{CompactPolicy, CompactReport};
pub use self::recovery::{Damage, Truncation};
use self::settings::{password_hash, write_settings, Settings};
pub use self::settings::{Mode, NamespaceOptions};
use crate::error_chain;
use crate::record::{self, Item, Kind, HEADER};
use crate::sys::{self, IoError};

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("namespace {ns}: settings file {path}: {error}")]
    Settings {
        ns: String,
        path: PathBuf,
        error: String,
    },
    #[error("namespace {ns}: key of {len} bytes, at most {max} allowed")]
    KeyTooLong { ns: String, len: usize, max: usize },
    #[error("namespace {ns}: empty key (user mode needs a key)")]
    EmptyKey { ns: String },
    #[error("namespace {ns}: value of {len} bytes, at most {max} allowed")]
    ValueTooLarge { ns: String, len: usize, max: usize },
    #[error("namespace {ns}: quota exceeded ({used} + {adding} bytes > {max})")]
    Quota {
        ns: String,
        used: u64,
        adding: u64,
        max: u64,
    },
    #[error("namespace {ns} is in seq mode: the server assigns keys, send an empty key")]
    SeqKeyGiven { ns: String },
    #[error("namespace {ns}: {key:?} is not a seq key (8 bytes)")]
    BadSeqKey { ns: String, key: String },
    #[error("namespace {ns}: record at {path} offset {offset} is corrupt: {reason}")]
    Corrupt {
        ns: String,
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    #[error("namespace {ns}: mode can only change while the namespace is empty")]
    ModeLocked { ns: String },
    #[error("namespace {ns} was deleted")]
    Deleted { ns: String },
    #[error("namespace {ns} refuses writes after a failed fsync: {reason}")]
    Failed { ns: String, reason: String },
    #[error("namespace {ns}: data file limit reached")]
    TooManyFiles { ns: String },
}

type Result<T> = std::result::Result<T, NsError>;

/// What NSINFO shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub mode: Mode,
    pub entries: u64,
    /// Keys + values of live records (what the quota counts).
    pub data_size: u64,
    /// Bytes of data files on disk (with overwritten and deleted records).
    pub disk_size: u64,
    pub max_size: u64,
    pub password: bool,
    pub public: bool,
    pub data_files: usize,
    /// Damaged stretches in the data files, and their bytes.
    pub damaged: u64,
    pub damaged_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    file: u32,
    offset: u64,
    key_len: u32,
    val_len: u32,
    /// The key's latest record is damaged: reads fail its checksum. Its bytes
    /// belong to a damaged stretch, which the file's `live` counts already.
    bad: bool,
}

impl Loc {
    fn live_bytes(&self) -> u64 {
        u64::from(self.key_len) + u64::from(self.val_len)
    }

    fn total(&self) -> u64 {
        HEADER as u64 + self.live_bytes()
    }
}

/// Largest file id and offset a seq key can name.
const SEQ_OFFSET_BITS: u32 = 40;
const MAX_FILES: u32 = 1 << 23;

fn seq_key(file: u32, offset: u64) -> [u8; 8] {
    ((u64::from(file) << SEQ_OFFSET_BITS) | offset).to_be_bytes()
}

fn seq_loc(key: &[u8]) -> Option<(u32, u64)> {
    let k: [u8; 8] = key.try_into().ok()?;
    let v = u64::from_be_bytes(k);
    Some((
        (v >> SEQ_OFFSET_BITS) as u32,
        v & ((1 << SEQ_OFFSET_BITS) - 1),
    ))
}

enum Index {
    User(BTreeMap<Box<[u8]>, Loc>),
    /// Locations (as seq keys) of deleted values.
    Seq(HashSet<u64>),
}

struct DataFile {
    /// Shared, so that a read takes it without an allocation.
    path: Arc<PathBuf>,
    file: Arc<File>,
    len: u64,
    /// Bytes compaction would keep: records the index refers to and damaged
    /// stretches. Never more than the truth (compaction's "nothing dead here"
    /// relies on it); `len - live` is what a rewrite reclaims.
    live: u64,
    /// Damaged stretches, in file order.
    bad: Vec<Stretch>,
    /// Seq mode, a compacted file: (key offset, current offset) of every record
    /// from the first one that moved on, in order. Records before `moved[0].1`
    /// are where their key says.
    moved: Vec<(u64, u64)>,
    /// Compaction found damage here that open did not: index entries may point
    /// into it, so the file is not rewritten before the next open.
    frozen: bool,
}

#[derive(Debug, Clone)]
struct Stretch {
    start: u64,
    end: u64,
    reason: &'static str,
    key: Option<Box<[u8]>>,
    /// Seq mode: key offsets it may have held (between its valid neighbours).
    keys: (u64, u64),
}

impl Stretch {
    /// Seq mode: the key offset its header names, if that is plausible (a key
    /// of this file between the stretch's neighbours).
    fn seq_key(&self, fid: u32) -> Option<u64> {
        let (kf, orig) = seq_loc(self.key.as_deref()?)?;
        (kf == fid && self.keys.0 <= orig && orig < self.keys.1).then_some(orig)
    }
}

/// A record's data file, that file's path, and the record's place in it.
type Located = (Arc<File>, Arc<PathBuf>, Loc);

impl DataFile {
    fn new(path: PathBuf, file: Arc<File>, len: u64) -> DataFile {
        DataFile {
            path: Arc::new(path),
            file,
            len,
            live: 0,
            bad: Vec::new(),
            moved: Vec::new(),
            frozen: false,
        }
    }

    /// Seq mode: where the record keyed `orig` (an offset in this file) is now,
    /// if it can be anywhere.
    fn seq_offset(&self, orig: u64) -> Option<u64> {
        match self.moved.first() {
            Some(&(_, first)) if orig >= first => self
                .moved
                .binary_search_by_key(&orig, |m| m.0)
                .ok()
                .map(|i| self.moved[i].1),
            _ => Some(orig),
        }
    }

    /// Seq mode: the offset of the first record keyed `orig` or later (this
    /// file's id is `fid`).
    fn seq_resume(&self, fid: u32, orig: u64) -> u64 {
        if let Some(b) = self.bad.iter().find(|b| b.seq_key(fid) == Some(orig)) {
            return b.start;
        }
        match self.moved.first() {
            Some(&(_, first)) if orig >= first => {
                let i = self.moved.partition_point(|m| m.0 < orig);
                self.moved.get(i).map_or(self.len, |m| m.1)
            }
            _ => orig,
        }
    }

    fn bad_at(&self, offset: u64) -> Option<&Stretch> {
        self.bad
            .iter()
            .find(|b| b.start <= offset && offset < b.end)
    }
}

struct State {
    settings: Settings,
    files: Vec<DataFile>,
    index: Index,
    entries: u64,
    live_bytes: u64,
    /// Bytes ever appended since open; the group commit's clock.
    appended: u64,
    synced: u64,
    syncing: bool,
    failed: Option<String>,
    deleted: bool,
    scratch: Vec<u8>,
    policy: CompactPolicy,
    /// Dead bytes in closed files when the last compaction pass ended.
    dead_after_pass: u64,
}

pub struct Namespace {
    name: String,
    dir: PathBuf,
    max_file: u64,
    /// Shared with the background compaction thread.
    state: Arc<Mutex<State>>,
    synced: Notify,
    compaction: Arc<compact::Control>,
}

fn data_name(id: usize) -> String {
    format!("data-{id:08}.log")
}

impl Namespace {
    /// Creates a new namespace directory under `root`.
    pub fn create(root: &Path, name: &str, opts: &NamespaceOptions, max_file: u64) -> Result<Self> {
        let dir = root.join(name);
        sys::create_dir(&dir)?;
        let settings = Settings {
            mode: opts.mode.unwrap_or(Mode::User),
            max_size: opts.max_size,
            password_hash: opts.password.as_deref().map(password_hash),
            public: opts.public,
        };
        write_settings(&dir, name, &settings)?;
        let path = dir.join(data_name(0));
        let file = sys::open_rw(&path)?;
        sys::sync_dir(&dir)?;
        sys::sync_dir(root)?;
        Ok(Self::from_state(
            name,
            dir,
            max_file,
            State::new(
                settings,
                vec![DataFile::new(path, Arc::new(file), 0)],
                max_file,
            ),
        ))
    }

    fn from_state(name: &str, dir: PathBuf, max_file: u64, state: State) -> Self {
        Namespace {
            name: name.to_owned(),
            dir,
            max_file,
            state: Arc::new(Mutex::new(state)),
            synced: Notify::new(),
            compaction: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed in a
        // way later calls would misread (every mutation is a single assignment
        // after the I/O succeeded), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn writable<'a>(&self, st: &'a mut MutexGuard<'_, State>) -> Result<&'a mut State> {
        st.usable(&self.name)?;
        Ok(&mut **st)
    }

    /// Stores `value`; in user mode under `key`, in seq mode under a new key
    /// (`key` must be empty), which is returned. Returns once durable.
    pub async fn set(&self, key: &[u8], value: &[u8], max_value: usize) -> Result<Vec<u8>> {
        let (key, upto) = self.append_set(key, value, max_value)?;
        self.make_durable(upto).await?;
        Ok(key)
    }

    /// [`set`](Self::set) without the wait: appends (blocking file I/O, so a server
    /// calls it off its async threads) and returns the key and the point to pass
    /// to [`make_durable`](Self::make_durable) before acknowledging.
    pub fn append_set(&self, key: &[u8], value: &[u8], max_value: usize) -> Result<(Vec<u8>, u64)> {
        let ns = || self.name.clone();
        if value.len() > max_value.min(record::MAX_VALUE) {
            return Err(NsError::ValueTooLarge {
                ns: ns(),
                len: value.len(),
                max: max_value.min(record::MAX_VALUE),
            });
        }
        if key.len() > record::MAX_KEY {
            return Err(NsError::KeyTooLong {
                ns: ns(),
                len: key.len(),
                max: record::MAX_KEY,
            });
        }
        let (key_out, upto) = {
            let mut guard = self.lock();
            let st = self.writable(&mut guard)?;
            let seq = st.settings.mode == Mode::Seq;
            match (seq, key.is_empty()) {
                (true, false) => return Err(NsError::SeqKeyGiven { ns: ns() }),
                (false, true) => return Err(NsError::EmptyKey { ns: ns() }),
                _ => {}
            }
            let klen = if seq { 8 } else { key.len() };
            let adding = (klen + value.len()) as u64;
            let replaced = match &st.index {
                Index::User(m) => m.get(key).map_or(0, Loc::live_bytes),
                Index::Seq(_) => 0,
            };
            let max = st.settings.max_size;
            if max > 0 && st.live_bytes - replaced + adding > max {
                return Err(NsError::Quota {
                    ns: ns(),
                    used: st.live_bytes,
                    adding,
                    max,
                });
            }
            let total = (HEADER + klen + value.len()) as u64;
            self.rotate_if_needed(st, total)?;
            let file_id = st.files.len() - 1;
            let offset = st.last().len;
            let seqk = seq_key(file_id as u32, offset);
            let key = if seq { &seqk[..] } else { key };
            let mut buf = std::mem::take(&mut st.scratch);
            buf.clear();
            record::encode(Kind::Set, key, value, &mut buf);
            let wrote = {
                let f = st.last();
                sys::write_at(&f.file, &f.path, &buf, offset)
            };
            st.scratch = buf;
            wrote?;
            st.replay(file_id as u32, offset, Kind::Set, key, value, true);
            st.last_mut().len += total;
            st.appended += total;
            (if seq { key.to_vec() } else { Vec::new() }, st.appended)
        };
        Ok((key_out, upto))
    }

    /// Deletes `key`; returns whether it existed. Returns once durable.
    pub async fn del(&self, key: &[u8]) -> Result<bool> {
        match self.append_del(key)? {
            Some(upto) => self.make_durable(upto).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// [`del`](Self::del) without the wait, like [`append_set`](Self::append_set):
    /// `None` when the key does not exist.
    pub fn append_del(&self, key: &[u8]) -> Result<Option<u64>> {
        let upto = {
            let mut guard = self.lock();
            let st = self.writable(&mut guard)?;
            let size = match &st.index {
                Index::User(m) => m.get(key).map(Loc::live_bytes),
                Index::Seq(_) => self.seq_live(st, key)?.map(|l| l.live_bytes()),
            };
            let Some(size) = size else {
                return Ok(None);
            };
            let value = size.to_le_bytes();
            let total = (HEADER + key.len() + value.len()) as u64;
            self.rotate_if_needed(st, total)?;
            let file_id = st.files.len() - 1;
            let offset = st.last().len;
            let mut buf = Vec::with_capacity(total as usize);
            record::encode(Kind::Del, key, &value, &mut buf);
            let f = st.last();
            sys::write_at(&f.file, &f.path, &buf, offset)?;
            st.replay(file_id as u32, offset, Kind::Del, key, &value, true);
            st.last_mut().len += total;
            st.appended += total;
            st.appended
        };
        Ok(Some(upto))
    }

    /// The value under `key`, its checksum verified.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some((file, path, loc)) = self.locate(key)? else {
            return Ok(None);
        };
        let mut body = self.read_record(&file, &path, loc, key)?;
        // The value in place: no second buffer.
        body.drain(..loc.key_len as usize);
        Ok(Some(body))
    }

    /// Verifies the checksum of the record under `key`: `Ok(false)` if absent,
    /// `Err(Corrupt)` if it fails.
    pub fn check(&self, key: &[u8]) -> Result<bool> {
        match self.locate(key)? {
            None => Ok(false),
            Some((file, path, loc)) => self.read_record(&file, &path, loc, key).map(|_| true),
        }
    }

    pub fn exists(&self, key: &[u8]) -> Result<bool> {
        let mut guard = self.lock();
        let st = &mut *guard;
        Ok(match &st.index {
            Index::User(m) => m.contains_key(key),
            Index::Seq(_) => match self.seq_live(st, key) {
                // It was written; its record is damaged (GET and CHECK say so).
                Err(NsError::Corrupt { .. }) => true,
                r => r?.is_some(),
            },
        })
    }

    /// Where the record of `key` is: its file (shared, not copied) and location.
    fn locate(&self, key: &[u8]) -> Result<Option<Located>> {
        let guard = self.lock();
        if guard.deleted {
            return Err(NsError::Deleted {
                ns: self.name.clone(),
            });
        }
        let loc = match &guard.index {
            Index::User(m) => m.get(key).copied(),
            Index::Seq(_) => self.seq_live(&guard, key)?,
        };
        Ok(loc.and_then(|l| {
            let f = guard.files.get(l.file as usize)?;
            Some((f.file.clone(), f.path.clone(), l))
        }))
    }

    /// Reads and verifies a whole record; returns key + value.
    fn read_record(&self, file: &File, path: &Path, loc: Loc, key: &[u8]) -> Result<Vec<u8>> {
        let corrupt = |reason| NsError::Corrupt {
            ns: self.name.clone(),
            path: path.to_path_buf(),
            offset: loc.offset,
            reason,
        };
        let mut raw = [0u8; HEADER];
        sys::read_at(file, path, &mut raw, loc.offset)?;
        let h = record::decode_header(&raw).ok_or_else(|| corrupt("invalid header"))?;
        if h.kind != Kind::Set || h.key_len != loc.key_len || h.val_len != loc.val_len {
            return Err(corrupt("header does not match the index"));
        }
        let mut body = vec![0u8; (h.key_len + h.val_len) as usize];
        sys::read_at(file, path, &mut body, loc.offset + HEADER as u64)?;
        if !record::verify(&raw, &h, &body) {
            return Err(corrupt("checksum mismatch"));
        }
        if body[..h.key_len as usize] != *key {
            return Err(corrupt("the record holds another key"));
        }
        Ok(body)
    }

    /// In seq mode: the location a key names, if a live value is there.
    fn seq_live(&self, st: &State, key: &[u8]) -> Result<Option<Loc>> {
        let Index::Seq(deleted) = &st.index else {
            return Ok(None);
        };
        let bad = || NsError::BadSeqKey {
            ns: self.name.clone(),
            key: String::from_utf8_lossy(key).into_owned(),
        };
        let (file, orig) = seq_loc(key).ok_or_else(bad)?;
        let Some(f) = st.files.get(file as usize) else {
            return Ok(None);
        };
        if deleted.contains(&u64::from_be_bytes(seq_key(file, orig))) {
            return Ok(None);
        }
        if let Some(loc) = st.seq_find(key)? {
            return Ok(Some(loc));
        }
        // Not found: if a damaged stretch may have held it, say so.
        match f.bad.iter().find(|b| b.keys.0 <= orig && orig < b.keys.1) {
            Some(b) => Err(NsError::Corrupt {
                ns: self.name.clone(),
                path: f.path.to_path_buf(),
                offset: b.start,
                reason: "the record is in a damaged stretch",
            }),
            None => Ok(None),
        }
    }

    /// Up to `count` keys after `cursor`; returns (next cursor, keys), the next
    /// cursor being `0` when the scan is complete. User mode: keys in byte order,
    /// the cursor is the hex of the last key returned. Seq mode: keys in write
    /// order, the cursor is the next key (decimal), so redis-cli --scan works and
    /// a compaction between two calls does not disturb it.
    pub fn scan(&self, cursor: &[u8], count: usize) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
        let bad = || NsError::BadSeqKey {
            ns: self.name.clone(),
            key: format!("cursor {}", String::from_utf8_lossy(cursor)),
        };
        let guard = self.lock();
        match &guard.index {
            Index::User(m) => {
                let start = if cursor == b"0" {
                    None
                } else {
                    Some(hex::decode(cursor).map_err(|_| bad())?)
                };
                let iter: Box<dyn Iterator<Item = &Box<[u8]>>> = match &start {
                    None => Box::new(m.keys()),
                    Some(s) => Box::new(
                        m.range::<[u8], _>((
                            std::ops::Bound::Excluded(s.as_slice()),
                            std::ops::Bound::Unbounded,
                        ))
                        .map(|(k, _)| k),
                    ),
                };
                let keys: Vec<Vec<u8>> = iter.take(count + 1).map(|k| k.to_vec()).collect();
                if keys.len() > count {
                    let mut keys = keys;
                    keys.truncate(count);
                    let next = keys.last().map(hex::encode).unwrap_or_default();
                    Ok((next.into_bytes(), keys))
                } else {
                    Ok((b"0".to_vec(), keys))
                }
            }
            Index::Seq(_) => {
                let c: u64 = std::str::from_utf8(cursor)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(bad)?;
                let (mut file, orig) = seq_loc(&c.to_be_bytes()).ok_or_else(bad)?;
                let mut offset = match guard.files.get(file as usize) {
                    Some(f) => f.seq_resume(file, orig),
                    None => 0,
                };
                let mut keys = Vec::new();
                loop {
                    let Some(f) = guard.files.get(file as usize) else {
                        return Ok((b"0".to_vec(), keys));
                    };
                    if offset >= f.len {
                        file += 1;
                        offset = 0;
                        continue;
                    }
                    if let Some(b) = f.bad_at(offset) {
                        // A damaged value whose header names its key is listed:
                        // GET and CHECK report the damage, a repair can find it.
                        if let Some(orig) = b.seq_key(file) {
                            if keys.len() == count {
                                let next = u64::from_be_bytes(seq_key(file, orig));
                                return Ok((next.to_string().into_bytes(), keys));
                            }
                            let key = seq_key(file, orig);
                            if !matches!(self.seq_live(&guard, &key), Ok(None)) {
                                keys.push(key.to_vec());
                            }
                        }
                        offset = b.end;
                        continue;
                    }
                    let mut raw = [0u8; HEADER];
                    sys::read_at(&f.file, &f.path, &mut raw, offset)?;
                    let h = record::decode_header(&raw).ok_or_else(|| NsError::Corrupt {
                        ns: self.name.clone(),
                        path: f.path.to_path_buf(),
                        offset,
                        reason: "invalid header",
                    })?;
                    if h.kind == Kind::Set && h.key_len == 8 {
                        let mut key = [0u8; 8];
                        sys::read_at(&f.file, &f.path, &mut key, offset + HEADER as u64)?;
                        if keys.len() == count {
                            let next = u64::from_be_bytes(key);
                            return Ok((next.to_string().into_bytes(), keys));
                        }
                        if matches!(self.seq_live(&guard, &key), Ok(Some(_))) {
                            keys.push(key.to_vec());
                        }
                    }
                    offset += h.total();
                }
            }
        }
    }

    pub fn info(&self) -> Info {
        let st = self.lock();
        Info {
            name: self.name.clone(),
            mode: st.settings.mode,
            entries: st.entries,
            data_size: st.live_bytes,
            disk_size: st.files.iter().map(|f| f.len).sum(),
            max_size: st.settings.max_size,
            password: st.settings.password_hash.is_some(),
            public: st.settings.public,
            data_files: st.files.len(),
            damaged: st.files.iter().map(|f| f.bad.len() as u64).sum(),
            damaged_bytes: st
                .files
                .iter()
                .flat_map(|f| &f.bad)
                .map(|b| b.end - b.start)
                .sum(),
        }
    }

    /// Marks the namespace deleted and removes its directory.
    pub fn delete(&self) -> Result<()> {
        self.lock().deleted = true;
        self.compaction.stop_and_join();
        sys::remove_dir(&self.dir)?;
        if let Some(root) = self.dir.parent() {
            sys::sync_dir(root)?;
        }
        Ok(())
    }

    /// Closes the last file and starts a new one when `adding` bytes would take
    /// it past the limit. Runs under the lock: rare (once per `max_file` bytes).
    fn rotate_if_needed(&self, st: &mut State, adding: u64) -> Result<()> {
        let cur = st.last();
        if cur.len == 0 || cur.len + adding <= self.max_file {
            return Ok(());
        }
        let id = st.files.len();
        if id as u32 >= MAX_FILES {
            return Err(NsError::TooManyFiles {
                ns: self.name.clone(),
            });
        }
        if let Err(e) = sys::sync_data(&cur.file, &cur.path) {
            return Err(self.poison(st, e));
        }
        let path = self.dir.join(data_name(id));
        let file = sys::open_rw(&path)?;
        sys::sync_dir(&self.dir)?;
        st.files.push(DataFile::new(path, Arc::new(file), 0));
        self.compact_if_due(st);
        Ok(())
    }
}

impl Drop for Namespace {
    /// Stops a background compaction (it leaves the old file in place) so that
    /// nothing writes into the directory once the namespace is gone.
    fn drop(&mut self) {
        self.compaction.stop_and_join();
    }
}

impl Index {
    fn empty(mode: Mode) -> Index {
        match mode {
            Mode::User => Index::User(BTreeMap::new()),
            Mode::Seq => Index::Seq(HashSet::new()),
        }
    }
}

impl State {
    fn new(settings: Settings, files: Vec<DataFile>, max_file: u64) -> State {
        State {
            policy: CompactPolicy::for_file_size(max_file),
            dead_after_pass: 0,
            index: Index::empty(settings.mode),
            settings,
            files,
            entries: 0,
            live_bytes: 0,
            appended: 0,
            synced: 0,
            syncing: false,
            failed: None,
            deleted: false,
            scratch: Vec::new(),
        }
    }

    /// The file being appended to; there is always one.
    fn last(&self) -> &DataFile {
        // `files` starts with one entry and only grows.
        &self.files[self.files.len() - 1]
    }

    fn last_mut(&mut self) -> &mut DataFile {
        let n = self.files.len() - 1;
        &mut self.files[n]
    }

    /// Applies one record to the index and counters (on open and after a write).
    /// `value_present`: for a seq tombstone, whether the value it deletes is
    /// still on disk (compaction may have dropped it and kept the tombstone).
    fn replay(
        &mut self,
        file: u32,
        offset: u64,
        kind: Kind,
        key: &[u8],
        value: &[u8],
        value_present: bool,
    ) {
        let total = (HEADER + key.len() + value.len()) as u64;
        match (&mut self.index, kind) {
            (Index::User(_), Kind::Set) => {
                let loc = Loc {
                    file,
                    offset,
                    key_len: key.len() as u32,
                    val_len: value.len() as u32,
                    bad: false,
                };
                self.set_loc_user(key, loc);
                add_live(&mut self.files, file, total);
            }
            (Index::User(m), Kind::Del) => {
                if let Some(old) = m.remove(key) {
                    self.entries -= 1;
                    self.live_bytes -= old.live_bytes();
                    unref(&mut self.files, &old);
                }
            }
            (Index::Seq(_), Kind::Set) => {
                self.entries += 1;
                self.live_bytes += (key.len() + value.len()) as u64;
                add_live(&mut self.files, file, total);
            }
            (Index::Seq(deleted), Kind::Del) => {
                let Ok(k) = <[u8; 8]>::try_from(key) else {
                    return;
                };
                if deleted.insert(u64::from_be_bytes(k)) && value_present {
                    let size = <[u8; 8]>::try_from(value).map_or(0, u64::from_le_bytes);
                    self.entries = self.entries.saturating_sub(1);
                    self.live_bytes = self.live_bytes.saturating_sub(size);
                    // The deleted value's file; if the value sat in a damaged
                    // stretch this under-counts, which is the safe direction.
                    if let Some((kf, _)) = seq_loc(&k) {
                        if let Some(f) = self.files.get_mut(kf as usize) {
                            f.live = f.live.saturating_sub(HEADER as u64 + size);
                        }
                    }
                }
            }
        }
    }

    /// Seq mode: where the SET record keyed `key` is, if its header and key are
    /// there (deleted or not).
    fn seq_find(&self, key: &[u8]) -> sys::Result<Option<Loc>> {
        let Some((file, orig)) = seq_loc(key) else {
            return Ok(None);
        };
        let Some(f) = self.files.get(file as usize) else {
            return Ok(None);
        };
        let Some(offset) = f.seq_offset(orig).filter(|o| o + HEADER as u64 <= f.len) else {
            return Ok(None);
        };
        let mut raw = [0u8; HEADER];
        sys::read_at(&f.file, &f.path, &mut raw, offset)?;
        match record::decode_header(&raw) {
            Some(h) if h.kind == Kind::Set && h.key_len == 8 && offset + h.total() <= f.len => {
                let mut k = [0u8; 8];
                sys::read_at(&f.file, &f.path, &mut k, offset + HEADER as u64)?;
                Ok((k == key).then_some(Loc {
                    file,
                    offset,
                    key_len: 8,
                    val_len: h.val_len,
                    bad: false,
                }))
            }
            _ => Ok(None),
        }
    }

    /// User mode: points `key` at `loc`, keeping the counters right.
    fn set_loc_user(&mut self, key: &[u8], loc: Loc) {
        let Index::User(m) = &mut self.index else {
            return;
        };
        match m.insert(key.into(), loc) {
            Some(old) => {
                self.live_bytes -= old.live_bytes();
                unref(&mut self.files, &old);
            }
            None => self.entries += 1,
        }
        self.live_bytes += loc.live_bytes();
    }

    /// Bytes of dead records in closed files, and the closed files' size.
    fn dead_closed(&self) -> (u64, u64) {
        let closed = &self.files[..self.files.len() - 1];
        let total: u64 = closed.iter().map(|f| f.len).sum();
        let live: u64 = closed.iter().map(|f| f.live.min(f.len)).sum();
        (total - live, total)
    }
}

fn add_live(files: &mut [DataFile], file: u32, bytes: u64) {
    if let Some(f) = files.get_mut(file as usize) {
        f.live += bytes;
    }
}

/// The record at `old` is no longer referred to by the index.
fn unref(files: &mut [DataFile], old: &Loc) {
    if old.bad {
        // Part of a damaged stretch, which stays live.
        return;
    }
    if let Some(f) = files.get_mut(old.file as usize) {
        f.live = f.live.saturating_sub(old.total());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MAXV: usize = 1 << 20;

    fn user() -> NamespaceOptions {
        NamespaceOptions::default()
    }

    #[tokio::test]
    async fn set_get_del_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Namespace::create(dir.path(), "a", &user(), 1 << 20).unwrap();
        ns.set(b"k1", b"v1", MAXV).await.unwrap();
        ns.set(b"k2", b"v2", MAXV).await.unwrap();
        ns.set(b"k1", b"v1b", MAXV).await.unwrap();
        assert!(ns.del(b"k2").await.unwrap());
        assert!(!ns.del(b"k2").await.unwrap());
        assert_eq!(ns.get(b"k1").unwrap().unwrap(), b"v1b");
        assert!(ns.check(b"k1").unwrap());
        let info = ns.info();
        drop(ns);
        let (ns, cuts) = Namespace::open(dir.path(), "a", 1 << 20).unwrap();
        assert!(cuts.is_empty());
        assert_eq!(ns.get(b"k1").unwrap().unwrap(), b"v1b");
        assert_eq!(ns.get(b"k2").unwrap(), None);
        assert_eq!(ns.info(), info);
        assert_eq!(info.entries, 1);
        assert_eq!(info.data_size, 5);
    }

    #[tokio::test]
    async fn rotates_files_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Namespace::create(dir.path(), "r", &user(), 1000).unwrap();
        for i in 0..100u32 {
            ns.set(format!("key{i}").as_bytes(), &[i as u8; 100], MAXV)
                .await
                .unwrap();
        }
        assert!(ns.info().data_files > 10);
        drop(ns);
        let (ns, _) = Namespace::open(dir.path(), "r", 1000).unwrap();
        for i in 0..100u32 {
            assert_eq!(
                ns.get(format!("key{i}").as_bytes()).unwrap().unwrap(),
                vec![i as u8; 100]
            );
        }
    }

    #[tokio::test]
    async fn quota_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let opts = NamespaceOptions {
            max_size: 100,
            ..user()
        };
        let ns = Namespace::create(dir.path(), "q", &opts, 1 << 20).unwrap();
        ns.set(b"a", &[0; 60], MAXV).await.unwrap();
        let e = ns.set(b"b", &[0; 60], MAXV).await.unwrap_err();
        assert!(matches!(e, NsError::Quota { .. }), "{e}");
        // Overwriting counts only the difference.
        ns.set(b"a", &[1; 90], MAXV).await.unwrap();
        assert!(matches!(
            ns.set(b"a", &[0; 10], 5).await,
            Err(NsError::ValueTooLarge { .. })
        ));
        assert!(matches!(
            ns.set(b"", b"x", MAXV).await,
            Err(NsError::EmptyKey { .. })
        ));
        assert!(matches!(
            ns.set(&[b'k'; 2000], b"x", MAXV).await,
            Err(NsError::KeyTooLong { .. })
        ));
    }

    #[tokio::test]
    async fn seq_mode_keys_are_locations() {
        let dir = tempfile::tempdir().unwrap();
        let opts = NamespaceOptions {
            mode: Some(Mode::Seq),
            ..user()
        };
        let ns = Namespace::create(dir.path(), "s", &opts, 200).unwrap();
        let mut keys = Vec::new();
        for i in 0..20u8 {
            keys.push(ns.set(b"", &[i; 50], MAXV).await.unwrap());
        }
        assert!(matches!(
            ns.set(b"x", b"v", MAXV).await,
            Err(NsError::SeqKeyGiven { .. })
        ));
        assert!(ns.del(&keys[3]).await.unwrap());
        assert_eq!(ns.get(&keys[3]).unwrap(), None);
        assert_eq!(ns.get(&keys[4]).unwrap().unwrap(), vec![4; 50]);
        // A key that points into the middle of a record finds nothing.
        let mut bogus = keys[4].clone();
        bogus[7] += 1;
        assert_eq!(ns.get(&bogus).unwrap(), None);
        let (mut cursor, mut seen) = (b"0".to_vec(), Vec::new());
        loop {
            let (next, ks) = ns.scan(&cursor, 3).unwrap();
            seen.extend(ks);
            if next == b"0" {
                break;
            }
            cursor = next;
        }
        let mut want = keys.clone();
        want.remove(3);
        assert_eq!(seen, want);
        drop(ns);
        let (ns, _) = Namespace::open(dir.path(), "s", 200).unwrap();
        assert_eq!(ns.info().entries, 19);
        assert_eq!(ns.get(&keys[3]).unwrap(), None);
        assert_eq!(ns.get(&keys[19]).unwrap().unwrap(), vec![19; 50]);
    }

    #[tokio::test]
    async fn user_scan_pages_through_all_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Namespace::create(dir.path(), "u", &user(), 1 << 20).unwrap();
        for i in 0..25u32 {
            ns.set(format!("k{i:02}").as_bytes(), b"v", MAXV)
                .await
                .unwrap();
        }
        let (mut cursor, mut seen) = (b"0".to_vec(), Vec::new());
        loop {
            let (next, ks) = ns.scan(&cursor, 7).unwrap();
            seen.extend(ks);
            if next == b"0" {
                break;
            }
            cursor = next;
        }
        let want: Vec<Vec<u8>> = (0..25).map(|i| format!("k{i:02}").into_bytes()).collect();
        assert_eq!(seen, want);
    }

    /// Garbage appended to, or bytes cut from, the data file: every complete
    /// record before the damage survives, the rest is cut and reported.
    #[tokio::test]
    async fn recovery_keeps_every_complete_record() {
        for damage in ["append-garbage", "cut-tail", "flip-last"] {
            let dir = tempfile::tempdir().unwrap();
            let ns = Namespace::create(dir.path(), "g", &user(), 1 << 20).unwrap();
            for i in 0..50u32 {
                ns.set(
                    format!("k{i}").as_bytes(),
                    format!("value{i}").as_bytes(),
                    MAXV,
                )
                .await
                .unwrap();
            }
            drop(ns);
            let path = dir.path().join("g").join(data_name(0));
            let len = std::fs::metadata(&path).unwrap().len();
            match damage {
                "append-garbage" => {
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .unwrap();
                    f.write_all(&[0xce, 0x11, 1, 0, 3, 0, 0, 0, 200, 0, 0, 0, 9, 9, 9, 9, 1, 2])
                        .unwrap();
                }
                "cut-tail" => {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .unwrap()
                        .set_len(len - 3)
                        .unwrap();
                }
                _ => {
                    let mut data = std::fs::read(&path).unwrap();
                    let n = data.len();
                    data[n - 1] ^= 0xff;
                    std::fs::write(&path, data).unwrap();
                }
            }
            let (ns, cuts) = Namespace::open(dir.path(), "g", 1 << 20).unwrap();
            assert_eq!(cuts.len(), 1, "{damage}");
            let keep = if damage == "append-garbage" { 50 } else { 49 };
            for i in 0..keep {
                assert_eq!(
                    ns.get(format!("k{i}").as_bytes()).unwrap().unwrap(),
                    format!("value{i}").as_bytes(),
                    "{damage}"
                );
            }
            assert_eq!(ns.info().entries, keep as u64, "{damage}");
            if damage == "append-garbage" {
                assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
            }
            // The namespace keeps working after the cut.
            ns.set(b"after", b"ok", MAXV).await.unwrap();
            drop(ns);
            let (ns, cuts) = Namespace::open(dir.path(), "g", 1 << 20).unwrap();
            assert!(cuts.is_empty());
            assert_eq!(ns.get(b"after").unwrap().unwrap(), b"ok");
        }
    }

    #[tokio::test]
    async fn check_finds_bit_rot() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Namespace::create(dir.path(), "c", &user(), 1 << 20).unwrap();
        ns.set(b"k", b"hello world", MAXV).await.unwrap();
        let path = dir.path().join("c").join(data_name(0));
        let mut data = std::fs::read(&path).unwrap();
        let n = data.len();
        data[n - 2] ^= 1;
        std::fs::write(&path, data).unwrap();
        assert!(matches!(ns.check(b"k"), Err(NsError::Corrupt { .. })));
        assert!(matches!(ns.get(b"k"), Err(NsError::Corrupt { .. })));
    }

    #[tokio::test]
    async fn concurrent_writers_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Arc::new(Namespace::create(dir.path(), "p", &user(), 1 << 20).unwrap());
        let mut tasks = Vec::new();
        for t in 0..16u32 {
            let ns = ns.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20u32 {
                    ns.set(format!("{t}-{i}").as_bytes(), b"v", MAXV)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(ns.info().entries, 320);
    }

    #[test]
    fn passwords_and_settings() {
        let dir = tempfile::tempdir().unwrap();
        let opts = NamespaceOptions {
            password: Some("secret".into()),
            ..user()
        };
        let ns = Namespace::create(dir.path(), "pw", &opts, 1 << 20).unwrap();
        assert!(ns.password_ok(Some("secret")));
        assert!(!ns.password_ok(Some("nope")));
        assert!(!ns.password_ok(None));
        ns.set_property("password", "*").unwrap();
        assert!(ns.password_ok(None));
        ns.set_property("mode", "seq").unwrap();
        ns.set_property("maxsize", "1000").unwrap();
        assert!(ns.set_property("color", "red").is_err());
        drop(ns);
        let (ns, _) = Namespace::open(dir.path(), "pw", 1 << 20).unwrap();
        assert_eq!(ns.mode(), Mode::Seq);
        assert_eq!(ns.info().max_size, 1000);
    }
}
