//! Opening a namespace: the index is rebuilt from the data files, a torn tail of
//! the last file is cut, and any other bad stretch is kept and reported.
//!
//! A crash can tear only the end of the last file (records are appended there
//! alone, and a file is fsynced before the next one is created), and nothing in
//! a torn tail was acknowledged: its fsync had not returned. Everything else that
//! fails its checks is damage (bit rot): kept on disk, skipped by resynchronising
//! on the next valid record, and the key its header names answers with an error
//! instead of an older value. README.md has the analysis.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::settings::{Mode, Settings};
use super::{
    add_live, compact, data_name, seq_loc, DataFile, Index, Loc, Namespace, NsError, Result, State,
    Stretch,
};
use crate::record::{self, Item, Kind, HEADER};
use crate::sys;

/// A torn or garbage tail cut off a data file on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub path: PathBuf,
    /// Bytes of valid records kept.
    pub kept: u64,
    /// Bytes cut off.
    pub cut: u64,
    pub reason: &'static str,
}

/// A damaged stretch of a data file found on open (or by compaction): kept on
/// disk, skipped, reported. Every valid record after it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub path: PathBuf,
    pub start: u64,
    pub end: u64,
    pub reason: &'static str,
    /// The key of the damaged record, when its header was intact (unverified).
    pub key: Option<Vec<u8>>,
}

/// Data file id of a `data-NNNNNNNN.log` name.
fn data_id(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("data-")?.strip_suffix(".log")?;
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

impl Namespace {
    /// Opens an existing namespace: rebuilds the index from the data files,
    /// cuts a torn tail off the last file (returning what was cut), and keeps
    /// and reports (see [`Namespace::damage`]) any other damage.
    pub fn open(root: &Path, name: &str, max_file: u64) -> Result<(Self, Vec<Truncation>)> {
        let dir = root.join(name);
        let spath = dir.join("namespace.json");
        let settings: Settings =
            serde_json::from_slice(&sys::read_file(&spath)?).map_err(|e| NsError::Settings {
                ns: name.into(),
                path: spath.clone(),
                error: e.to_string(),
            })?;
        let entries = sys::list_dir(&dir)?;
        compact::remove_leftovers(name, &dir, &entries)?;
        let mut names: Vec<&String> = entries.iter().filter(|n| data_id(n).is_some()).collect();
        let first = data_name(0);
        if names.is_empty() {
            names.push(&first);
        }
        let seq = settings.mode == Mode::Seq;
        let mut st = State::new(settings, Vec::new(), max_file);
        let mut cuts = Vec::new();
        let last = names.len() - 1;
        for (id, fname) in names.into_iter().enumerate() {
            if data_id(fname) != Some(id) {
                return Err(NsError::Settings {
                    ns: name.into(),
                    path: dir.join(fname),
                    error: format!(
                        "data files are not numbered 0..: expected {}",
                        data_name(id)
                    ),
                });
            }
            let path = dir.join(fname);
            let file = Arc::new(sys::open_rw(&path)?);
            st.files.push(DataFile::new(path.clone(), file.clone(), 0));
            let fid = id as u32;
            // Seq mode: damaged stretches take the key offsets between their
            // valid neighbours; `lo` is just past the last valid record's key.
            let (mut lo, mut open_from) = (0u64, 0usize);
            let mut fault = None;
            let end = record::scan(&file, &path, |item| match item {
                Item::Record {
                    offset,
                    kind,
                    key,
                    value,
                } => {
                    let present = match (seq, kind) {
                        (true, Kind::Del) => st
                            .seq_find(key)
                            .unwrap_or_else(|e| {
                                fault.get_or_insert(e);
                                None
                            })
                            .is_some(),
                        _ => true,
                    };
                    st.replay(fid, offset, kind, key, value, present);
                    st.files[id].len = offset + (HEADER + key.len() + value.len()) as u64;
                    if let (true, Kind::Set, Some((kf, orig))) = (seq, kind, seq_loc(key)) {
                        let f = &mut st.files[id];
                        if kf == fid {
                            if orig != offset || !f.moved.is_empty() {
                                f.moved.push((orig, offset));
                            }
                            for b in &mut f.bad[open_from..] {
                                b.keys.1 = orig;
                            }
                            open_from = f.bad.len();
                            lo = orig + 1;
                        }
                    }
                }
                Item::Bad(b) => {
                    st.replay_bad(fid, b, lo);
                    st.files[id].len = b.end;
                }
            })?;
            if let Some(e) = fault {
                return Err(e.into());
            }
            let mut len = end.file_len;
            if let Some(tail) = end.tail {
                if id == last {
                    sys::truncate(&file, &path, tail.start)?;
                    len = tail.start;
                    let cut = Truncation {
                        path: path.clone(),
                        kept: tail.start,
                        cut: tail.end - tail.start,
                        reason: tail.reason,
                    };
                    tracing::warn!(
                        "namespace {name}: {}: {} at offset {} with nothing valid after it: a torn tail, cut {} bytes",
                        path.display(),
                        cut.reason,
                        cut.kept,
                        cut.cut
                    );
                    cuts.push(cut);
                } else {
                    st.replay_bad(fid, &tail, lo);
                }
            }
            let f = &mut st.files[id];
            f.len = len;
            for b in &f.bad {
                tracing::warn!(
                    "namespace {name}: {}: damaged bytes {}..{} ({}{}): skipped and kept, every record after them is kept",
                    path.display(),
                    b.start,
                    b.end,
                    b.reason,
                    b.key
                        .as_ref()
                        .map(|k| format!(", key {:?}", String::from_utf8_lossy(k)))
                        .unwrap_or_default()
                );
            }
        }
        let ns = Self::from_state(name, dir, max_file, st);
        ns.compact_if_due(&mut ns.lock());
        Ok((ns, cuts))
    }

    /// Damaged stretches in the data files: where, why, and the key when known.
    pub fn damage(&self) -> Vec<Damage> {
        let st = self.lock();
        st.files
            .iter()
            .flat_map(|f| {
                f.bad.iter().map(|b| Damage {
                    path: f.path.to_path_buf(),
                    start: b.start,
                    end: b.end,
                    reason: b.reason,
                    key: b.key.as_ref().map(|k| k.to_vec()),
                })
            })
            .collect()
    }
}

impl State {
    /// Applies a damaged stretch found on open: it is kept (counted live) and
    /// reported; a key its header names now answers with the damage, not with
    /// whatever older record it had. `lo`: in seq mode, the first key offset it
    /// may have held (the end of the range is set by the next valid record).
    fn replay_bad(&mut self, file: u32, bad: &record::Bad, lo: u64) {
        add_live(&mut self.files, file, bad.end - bad.start);
        match (&self.index, &bad.record) {
            (Index::User(_), Some((h, key))) => {
                let loc = Loc {
                    file,
                    offset: bad.start,
                    key_len: h.key_len,
                    val_len: h.val_len,
                    bad: true,
                };
                self.set_loc_user(key, loc);
            }
            (Index::Seq(_), Some((h, _))) if h.kind == Kind::Set && h.key_len == 8 => {
                self.entries += 1;
                self.live_bytes += 8 + u64::from(h.val_len);
            }
            _ => {}
        }
        if let Some(f) = self.files.get_mut(file as usize) {
            f.bad.push(Stretch {
                start: bad.start,
                end: bad.end,
                reason: bad.reason,
                key: bad
                    .record
                    .as_ref()
                    .map(|(_, k)| k.clone().into_boxed_slice()),
                keys: (lo, u64::MAX),
            });
        }
    }
}
