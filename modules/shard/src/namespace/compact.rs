//! Compaction: giving back the disk space of overwritten and deleted records.
//!
//! Appending never frees anything, so the quota (live keys + values) and the disk
//! drift apart as clients overwrite and delete. A pass rewrites each closed data
//! file `data-N.log` that holds dead bytes, in file order: the records the index
//! still points at, the tombstones that may still hide an older value, and every
//! damaged stretch (verbatim, so the damage stays reported) are copied to
//! `data-N.compact`; that file is fsynced, renamed over `data-N.log` and the
//! directory fsynced. Rename is atomic, so after a kill at any point `data-N.log`
//! is either the old file or the whole new one, and [`Namespace::open`] deletes a
//! leftover `.compact`. File ids (and so seq keys and SCAN cursors) never change.
//!
//! Writers are never blocked by a pass: they append to the last file, which a
//! pass does not touch; the pass takes the namespace lock per record to ask the
//! index, and once per file to switch to the new file and move index entries.
//!
//! What makes every mix of old and new files a valid state:
//! - a SET is dropped only when a later record replaced or deleted it, and that
//!   record is fsynced before the rename;
//! - in user mode a tombstone is dropped only when every earlier file was
//!   rewritten in this pass (each rewrite drops every SET that was dead then, and
//!   a SET before a tombstone is dead from the moment the tombstone exists) and
//!   neither they nor this file hold damage, which might be an unknown SET;
//!   otherwise it is kept while its key is absent. In seq mode a value lives in
//!   the file its key names, so its tombstone goes once that file was rewritten
//!   in this pass without damage.

use std::fs::OpenOptions;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;

use super::*;

/// When a namespace starts a background pass by itself (checked each time a data
/// file is closed, and on open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactPolicy {
    /// Dead bytes, as a percentage of the closed files' size, before a pass runs.
    pub min_dead_percent: u8,
    /// Dead bytes needed, and dead bytes that must have accrued since the last
    /// pass (so records a pass had to keep do not start pass after pass).
    pub min_dead_bytes: u64,
}

impl CompactPolicy {
    /// Half the closed files dead, and at least one data file's worth.
    pub(super) fn for_file_size(max_file: u64) -> CompactPolicy {
        CompactPolicy {
            min_dead_percent: 50,
            min_dead_bytes: max_file,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub files_rewritten: usize,
    /// Bytes of data files before and after the pass.
    pub disk_before: u64,
    pub disk_after: u64,
    /// The namespace was closed or deleted during the pass, which stopped early.
    pub stopped: bool,
}

/// One namespace's compaction: one pass at a time, stoppable, on its own thread.
#[derive(Default)]
pub(super) struct Control {
    pass: Mutex<()>,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Control {
    /// Stops a running pass (it leaves the file it was copying untouched) and
    /// waits for its thread; no pass starts after this.
    pub(super) fn stop_and_join(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            // A panic in the pass has been reported by the panic hook already.
            let _ = t.join();
        }
    }
}

/// The named steps of a pass, in order (see `Job::reached`): the pass holds
/// its lock (`start`), then for each file it rewrites: the output file exists
/// but is empty (`created`), holds every kept record (`written`), is fsynced
/// (`synced`), replaced the data file (`renamed`), the directory is fsynced
/// (`dir synced`), the index points into the new file (`file done`).
#[cfg(any(test, feature = "failpoints"))]
pub const STEPS: [&str; 7] = [
    "start",
    "created",
    "written",
    "synced",
    "renamed",
    "dir synced",
    "file done",
];

fn tmp_name(id: usize) -> String {
    format!("data-{id:08}.compact")
}

/// Deletes the output of a pass that did not reach its rename (the data file it
/// would have replaced is intact).
pub(super) fn remove_leftovers(ns: &str, dir: &Path, entries: &[String]) -> Result<()> {
    let mut removed = false;
    for name in entries {
        if name.starts_with("data-") && name.ends_with(".compact") {
            let path = dir.join(name);
            std::fs::remove_file(&path).map_err(|source| IoError {
                op: "remove",
                path: path.clone(),
                source,
            })?;
            tracing::info!(
                "namespace {ns}: removed {}, left by an interrupted compaction",
                path.display()
            );
            removed = true;
        }
    }
    if removed {
        sys::sync_dir(dir)?;
    }
    Ok(())
}

impl Namespace {
    /// Changes when background passes start.
    pub fn set_compact_policy(&self, policy: CompactPolicy) {
        self.lock().policy = policy;
    }

    /// Runs one compaction pass now, on the calling thread (it blocks for as long
    /// as copying the closed files takes; writers are not blocked meanwhile).
    pub fn compact(&self) -> Result<CompactReport> {
        self.job().run()
    }

    /// Starts a background pass if the policy says the closed files hold enough
    /// dead bytes and none is running. Called with the state locked.
    pub(super) fn compact_if_due(&self, st: &mut State) {
        if st.deleted || st.failed.is_some() || st.files.len() < 2 {
            return;
        }
        #[cfg(test)]
        if MANUAL.with(|m| m.get()) {
            return;
        }
        let (dead, total) = st.dead_closed();
        let p = st.policy;
        if dead < st.dead_after_pass.saturating_add(p.min_dead_bytes.max(1))
            || u128::from(dead) * 100 < u128::from(total) * u128::from(p.min_dead_percent)
        {
            return;
        }
        let mut thread = self
            .compaction
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if thread.as_ref().is_some_and(|t| !t.is_finished())
            || self.compaction.stop.load(Ordering::SeqCst)
        {
            return;
        }
        let job = self.job();
        let spawned = std::thread::Builder::new()
            .name(format!("compact {}", self.name))
            .spawn(move || match job.run() {
                Ok(r) => tracing::info!(
                    "namespace {}: compaction rewrote {} files, {} -> {} bytes{}",
                    job.name,
                    r.files_rewritten,
                    r.disk_before,
                    r.disk_after,
                    if r.stopped { " (stopped)" } else { "" }
                ),
                Err(e) => tracing::warn!("namespace {}: compaction: {}", job.name, error_chain(&e)),
            });
        match spawned {
            Ok(t) => *thread = Some(t),
            Err(e) => tracing::warn!("namespace {}: start compaction thread: {e}", self.name),
        }
    }

    fn job(&self) -> Job {
        Job {
            name: self.name.clone(),
            dir: self.dir.clone(),
            state: self.state.clone(),
            control: self.compaction.clone(),
        }
    }
}

/// What a pass needs of its namespace; owned, so it can run on its own thread.
struct Job {
    name: String,
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    control: Arc<Control>,
}

enum Outcome {
    Rewritten,
    Stopped,
    /// Damage the namespace did not know of: the file was left as it is.
    NewDamage,
}

/// The new file being written.
struct Out {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    flushed: u64,
}

const OUT_BUF: usize = 1 << 20;

impl Out {
    fn pos(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    fn flush(&mut self) -> sys::Result<()> {
        sys::write_at(&self.file, &self.path, &self.buf, self.flushed)?;
        self.flushed += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn flush_if_full(&mut self) -> sys::Result<()> {
        if self.buf.len() >= OUT_BUF {
            self.flush()?;
        }
        Ok(())
    }

    /// Copies bytes `start..end` of `from` as they are.
    fn copy(&mut self, from: &File, path: &Path, start: u64, end: u64) -> sys::Result<()> {
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(OUT_BUF);
            let have = self.buf.len();
            self.buf.resize(have + n, 0);
            sys::read_at(from, path, &mut self.buf[have..], at)?;
            at += n as u64;
            self.flush_if_full()?;
        }
        Ok(())
    }
}

/// What a rewrite has produced so far.
struct Copied {
    out: Out,
    /// User mode: (key, old offset, new offset) of what the index may point at.
    moves: Vec<(Box<[u8]>, u64, u64)>,
    /// Seq mode: the new file's `DataFile::moved`.
    moved: Vec<(u64, u64)>,
    bad: Vec<Stretch>,
    /// Seq mode: keys whose tombstone (and value) are gone.
    dropped_tombstones: Vec<u64>,
    /// Damage the namespace did not know of.
    new_damage: Vec<record::Bad>,
}

impl Copied {
    /// Copies a damaged stretch the namespace knows of as it is, so it stays
    /// reported, and notes damage it does not know of.
    fn bad(&mut self, b: &record::Bad, known: &[Stretch], old: &File, path: &Path) -> Result<()> {
        let Some(k) = known.iter().find(|k| k.start == b.start && k.end == b.end) else {
            self.new_damage.push(b.clone());
            return Ok(());
        };
        let at = self.out.pos();
        self.out.copy(old, path, b.start, b.end)?;
        if let Some(key) = &k.key {
            self.moves.push((key.clone(), b.start, at));
        }
        self.bad.push(Stretch {
            start: at,
            end: at + (b.end - b.start),
            ..k.clone()
        });
        Ok(())
    }
}

/// Whether a pass keeps a valid record of file `fid`.
fn keep(
    st: &State,
    fid: u32,
    offset: u64,
    kind: Kind,
    key: &[u8],
    drop_tombstones: bool,
    seq_done: &[bool],
) -> bool {
    match (&st.index, kind) {
        (Index::User(m), Kind::Set) => m
            .get(key)
            .is_some_and(|l| l.file == fid && l.offset == offset && !l.bad),
        (Index::User(m), Kind::Del) => !drop_tombstones && !m.contains_key(key),
        (Index::Seq(deleted), Kind::Set) => match <[u8; 8]>::try_from(key) {
            Ok(k) => !deleted.contains(&u64::from_be_bytes(k)),
            Err(_) => true,
        },
        (Index::Seq(_), Kind::Del) => match seq_loc(key) {
            Some((kf, _)) => !seq_done.get(kf as usize).copied().unwrap_or(false),
            None => true,
        },
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: `(point, n)` makes the pass fail, as a crash would, the n+1-th
    /// time it reaches `point` on this thread (leaving the disk as it is then).
    pub(super) static CRASH_AT: std::cell::Cell<Option<(&'static str, u32)>> =
        const { std::cell::Cell::new(None) };
    /// Tests: no background pass starts from this thread; the test runs them.
    pub(super) static MANUAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, State> {
        // As `Namespace::lock`: every mutation is one assignment after its I/O.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self) -> bool {
        self.control.stop.load(Ordering::Relaxed)
    }

    /// A named step of the pass (one of [`STEPS`]); unit
    /// tests crash the pass here (see `CRASH_AT`), the crash tests stop shardd
    /// here (the `failpoints` feature).
    fn reached(&self, point: &'static str) -> Result<()> {
        #[cfg(test)]
        {
            let crash = CRASH_AT.with(|c| match c.get() {
                Some((p, 0)) if p == point => true,
                Some((p, n)) if p == point => {
                    c.set(Some((p, n - 1)));
                    false
                }
                _ => false,
            });
            if crash {
                return Err(NsError::Failed {
                    ns: self.name.clone(),
                    reason: format!("simulated crash at {point}"),
                });
            }
        }
        #[cfg(feature = "failpoints")]
        crate::failpoint::reached(point);
        #[cfg(not(any(test, feature = "failpoints")))]
        let _ = point;
        Ok(())
    }

    fn run(&self) -> Result<CompactReport> {
        let _pass = self.control.pass.lock().unwrap_or_else(|e| e.into_inner());
        self.reached("start")?;
        let (closed, disk_before) = {
            let st = self.lock();
            st.usable(&self.name)?;
            (st.files.len() - 1, st.files.iter().map(|f| f.len).sum())
        };
        let mut report = CompactReport {
            disk_before,
            ..CompactReport::default()
        };
        // Every file before this one was rewritten (or had nothing dead) in this
        // pass and holds no damage.
        let mut clean = true;
        // Seq mode: files rewritten (or with nothing dead) in this pass, without damage.
        let mut seq_done = vec![false; closed];
        for id in 0..closed {
            if self.stopping() {
                report.stopped = true;
                break;
            }
            let (dead, ok, frozen) = {
                let st = self.lock();
                let f = &st.files[id];
                (f.len - f.live.min(f.len), f.bad.is_empty(), f.frozen)
            };
            seq_done[id] = ok && !frozen;
            if dead > 0 && !frozen {
                match self.rewrite(id, clean && ok, &seq_done)? {
                    Outcome::Rewritten => report.files_rewritten += 1,
                    Outcome::Stopped => {
                        report.stopped = true;
                        break;
                    }
                    Outcome::NewDamage => seq_done[id] = false,
                }
                self.reached("file done")?;
            }
            clean &= seq_done[id];
        }
        let mut st = self.lock();
        report.disk_after = st.files.iter().map(|f| f.len).sum();
        if !report.stopped {
            st.dead_after_pass = st.dead_closed().0;
        }
        Ok(report)
    }

    /// Rewrites closed file `id` without its dead records.
    fn rewrite(&self, id: usize, drop_tombstones: bool, seq_done: &[bool]) -> Result<Outcome> {
        let fid = id as u32;
        let (old, path, known, seq) = {
            let st = self.lock();
            let f = &st.files[id];
            (
                f.file.clone(),
                f.path.clone(),
                f.bad.clone(),
                st.settings.mode == Mode::Seq,
            )
        };
        let tmp = self.dir.join(tmp_name(id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|source| IoError {
                op: "create",
                path: tmp.clone(),
                source,
            })?;
        self.reached("created")?;
        let mut c = Copied {
            out: Out {
                file,
                path: tmp.clone(),
                buf: Vec::with_capacity(OUT_BUF),
                flushed: 0,
            },
            moves: Vec::new(),
            moved: Vec::new(),
            bad: Vec::new(),
            dropped_tombstones: Vec::new(),
            new_damage: Vec::new(),
        };
        // The append clock when the index last decided something: every record
        // that made a dropped one dead was appended before it.
        let mut upto = 0u64;
        let mut fault: Option<NsError> = None;
        let mut stopped = false;
        let end = record::scan(&old, &path, |item| {
            if fault.is_some() || stopped {
                return;
            }
            if self.stopping() {
                stopped = true;
                return;
            }
            let r = match item {
                Item::Record {
                    offset,
                    kind,
                    key,
                    value,
                } => {
                    let kept = {
                        let st = self.lock();
                        upto = upto.max(st.appended);
                        keep(&st, fid, offset, kind, key, drop_tombstones, seq_done)
                    };
                    if !kept {
                        if let (true, Kind::Del, Ok(k)) = (seq, kind, <[u8; 8]>::try_from(key)) {
                            c.dropped_tombstones.push(u64::from_be_bytes(k));
                        }
                        return;
                    }
                    let at = c.out.pos();
                    // The same bytes: a record's encoding is a function of its contents.
                    record::encode(kind, key, value, &mut c.out.buf);
                    match (seq, kind) {
                        (false, Kind::Set) => c.moves.push((key.into(), offset, at)),
                        (true, Kind::Set) => {
                            if let Some((kf, orig)) = seq_loc(key) {
                                if kf == fid && (orig != at || !c.moved.is_empty()) {
                                    c.moved.push((orig, at));
                                }
                            }
                        }
                        _ => {}
                    }
                    c.out.flush_if_full().map_err(NsError::from)
                }
                Item::Bad(b) => c.bad(b, &known, &old, &path),
            };
            if let Err(e) = r {
                fault = Some(e);
            }
        })?;
        if let Some(e) = fault {
            return Err(e);
        }
        if !stopped {
            if let Some(tail) = &end.tail {
                // A closed file is never cut: its bad tail is damage like any other.
                c.bad(tail, &known, &old, &path)?;
            }
        }
        let Copied {
            mut out,
            moves,
            moved,
            bad,
            dropped_tombstones,
            new_damage,
        } = c;
        if stopped || !new_damage.is_empty() {
            drop(out);
            std::fs::remove_file(&tmp).map_err(|source| IoError {
                op: "remove",
                path: tmp.clone(),
                source,
            })?;
            if stopped {
                return Ok(Outcome::Stopped);
            }
            self.freeze(id, &path, new_damage);
            return Ok(Outcome::NewDamage);
        }
        out.flush()?;
        self.reached("written")?;
        sys::sync_data(&out.file, &tmp)?;
        self.reached("synced")?;
        self.sync_upto(upto)?;
        std::fs::rename(&tmp, path.as_path()).map_err(|source| IoError {
            op: "rename",
            path: tmp.clone(),
            source,
        })?;
        self.reached("renamed")?;
        sys::sync_dir(&self.dir)?;
        self.reached("dir synced")?;

        let mut st = self.lock();
        let new_len = out.pos();
        let f = &mut st.files[id];
        f.file = Arc::new(out.file);
        f.len = new_len;
        f.bad = bad;
        f.moved = moved;
        match &mut st.index {
            Index::User(m) => {
                for (key, from, to) in moves {
                    if let Some(l) = m.get_mut(&key) {
                        if l.file == fid && l.offset == from {
                            l.offset = to;
                        }
                    }
                }
            }
            Index::Seq(deleted) => {
                for k in dropped_tombstones {
                    deleted.remove(&k);
                }
            }
        }
        Ok(Outcome::Rewritten)
    }

    /// Makes every byte appended up to `upto` durable (what a group-commit leader
    /// does, without waiting for one).
    fn sync_upto(&self, upto: u64) -> Result<()> {
        let Some((target, file, path)) = self.lock().sync_target(&self.name, upto)? else {
            return Ok(());
        };
        // Earlier files were fsynced when they were closed.
        let res = sys::sync_data(&file, &path);
        self.lock()
            .record_sync(target, res.as_ref().map_err(|e| error_chain(e)).copied());
        Ok(res?)
    }

    /// Damage found by a pass and not on open: the file is left as it is (its
    /// index entries may point into the damage) and reported; the next open
    /// indexes it properly.
    fn freeze(&self, id: usize, path: &Path, found: Vec<record::Bad>) {
        let mut st = self.lock();
        let f = &mut st.files[id];
        f.frozen = true;
        for b in found {
            tracing::warn!(
                "namespace {}: {}: damaged bytes {}..{} ({}) found by compaction: file left as it is",
                self.name,
                path.display(),
                b.start,
                b.end,
                b.reason
            );
            f.bad.push(Stretch {
                start: b.start,
                end: b.end,
                reason: b.reason,
                key: b.record.map(|(_, k)| k.into_boxed_slice()),
                // Unknown neighbours: claim no keys.
                keys: (0, 0),
            });
        }
        f.bad.sort_by_key(|b| b.start);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const MAXV: usize = 1 << 20;
    const MAX_FILE: u64 = 2048;

    /// No background passes: the tests run them.
    fn create(dir: &Path, name: &str, mode: Mode) -> Namespace {
        MANUAL.with(|m| m.set(true));
        let ns = Namespace::create(dir, name, &opts(mode), MAX_FILE).unwrap();
        ns.set_compact_policy(CompactPolicy {
            min_dead_percent: 100,
            min_dead_bytes: u64::MAX,
        });
        ns
    }

    fn opts(mode: Mode) -> NamespaceOptions {
        NamespaceOptions {
            mode: Some(mode),
            ..NamespaceOptions::default()
        }
    }

    fn val(i: u32, round: u32) -> Vec<u8> {
        let n = 60 + ((i * 7 + round * 13) % 90) as usize;
        format!("{i}/{round};")
            .into_bytes()
            .into_iter()
            .cycle()
            .take(n)
            .collect()
    }

    /// What a namespace must hold: key -> value (None = deleted or never set).
    type Model = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

    /// Overwrites, deletes, deletes of values far back in older files, and
    /// re-creations after a delete, spread over many files.
    async fn churn(ns: &Namespace, mode: Mode) -> Model {
        let mut model = Model::new();
        for round in 0..6u32 {
            for i in 0..40u32 {
                match mode {
                    Mode::User => {
                        let k = format!("k{i:02}").into_bytes();
                        let gone = (i + round) % 5 == 0;
                        if gone && model.get(&k).is_some_and(|v| v.is_some()) {
                            assert!(ns.del(&k).await.unwrap());
                            model.insert(k, None);
                        } else if !gone {
                            ns.set(&k, &val(i, round), MAXV).await.unwrap();
                            model.insert(k, Some(val(i, round)));
                        }
                    }
                    Mode::Seq => {
                        let k = ns.set(b"", &val(i, round), MAXV).await.unwrap();
                        model.insert(k, Some(val(i, round)));
                    }
                }
            }
            if mode == Mode::Seq {
                // Delete every other value of the previous rounds, old ones too.
                let live: Vec<Vec<u8>> = model
                    .iter()
                    .filter(|(_, v)| v.is_some())
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in live.iter().step_by(2) {
                    assert!(ns.del(k).await.unwrap());
                    model.insert(k.clone(), None);
                }
            }
        }
        model
    }

    fn verify(ns: &Namespace, model: &Model, what: &str) {
        for (k, v) in model {
            assert_eq!(
                ns.get(k).unwrap().as_ref(),
                v.as_ref(),
                "{what}: key {:?}",
                String::from_utf8_lossy(k)
            );
        }
        let live = model.values().filter(|v| v.is_some()).count() as u64;
        assert_eq!(ns.info().entries, live, "{what}: entries");
        // SCAN lists exactly the live keys, in order.
        let (mut cursor, mut seen) = (b"0".to_vec(), Vec::new());
        loop {
            let (next, keys) = ns.scan(&cursor, 9).unwrap();
            seen.extend(keys);
            if next == b"0" {
                break;
            }
            cursor = next;
        }
        let want: Vec<Vec<u8>> = model
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(seen, want, "{what}: SCAN");
    }

    fn leftovers(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".compact")
            })
            .count()
    }

    #[tokio::test]
    async fn compaction_frees_dead_bytes_and_keeps_every_live_value() {
        for mode in [Mode::User, Mode::Seq] {
            let dir = tempfile::tempdir().unwrap();
            let ns = create(dir.path(), "c", mode);
            let model = churn(&ns, mode).await;
            let before = ns.info();
            let r = ns.compact().unwrap();
            assert!(r.files_rewritten > 3, "{mode}: {r:?}");
            assert!(
                r.disk_after * 2 < r.disk_before,
                "{mode}: disk use must fall: {r:?}"
            );
            let after = ns.info();
            assert_eq!(after.disk_size, r.disk_after);
            assert_eq!(
                (after.entries, after.data_size),
                (before.entries, before.data_size)
            );
            verify(&ns, &model, &format!("{mode} after compaction"));
            // A second pass finds nothing to do.
            assert_eq!(ns.compact().unwrap().files_rewritten, 0, "{mode}");
            drop(ns);
            let (ns, cuts) = Namespace::open(dir.path(), "c", MAX_FILE).unwrap();
            assert!(cuts.is_empty());
            assert_eq!(ns.info().disk_size, r.disk_after, "{mode}");
            verify(&ns, &model, &format!("{mode} reopened"));
        }
    }

    /// A SCAN that started before a compaction goes on where it was.
    #[tokio::test]
    async fn seq_scan_cursor_survives_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let ns = create(dir.path(), "s", Mode::Seq);
        let model = churn(&ns, Mode::Seq).await;
        let (mut cursor, mut seen) = (b"0".to_vec(), Vec::new());
        let mut compacted = false;
        loop {
            let (next, keys) = ns.scan(&cursor, 11).unwrap();
            seen.extend(keys);
            if next == b"0" {
                break;
            }
            if !compacted && seen.len() > 30 {
                assert!(ns.compact().unwrap().files_rewritten > 0);
                compacted = true;
            }
            cursor = next;
        }
        assert!(compacted);
        let want: Vec<Vec<u8>> = model
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(seen, want);
    }

    /// The pass is stopped, as a kill would, at every step of every file it
    /// rewrites; the namespace reopens to exactly the acknowledged state, and a
    /// later full pass gets there too.
    #[tokio::test]
    async fn a_crash_at_any_step_loses_nothing() {
        // Every step a file goes through (a crash at `start` is no pass at all).
        let points = &STEPS[1..];
        for mode in [Mode::User, Mode::Seq] {
            // One history, copied for every crash.
            let template = tempfile::tempdir().unwrap();
            let ns = create(template.path(), "x", mode);
            let model = churn(&ns, mode).await;
            drop(ns);
            for &point in points {
                let mut n = 0;
                loop {
                    let dir = tempfile::tempdir().unwrap();
                    let ns_dir = dir.path().join("x");
                    std::fs::create_dir(&ns_dir).unwrap();
                    for e in std::fs::read_dir(template.path().join("x")).unwrap() {
                        let e = e.unwrap();
                        std::fs::copy(e.path(), ns_dir.join(e.file_name())).unwrap();
                    }
                    let (ns, _) = Namespace::open(dir.path(), "x", MAX_FILE).unwrap();
                    CRASH_AT.with(|c| c.set(Some((point, n))));
                    let crashed = ns.compact().is_err();
                    CRASH_AT.with(|c| c.set(None));
                    let what = format!("{mode}, crash at {point} #{n}");
                    drop(ns);
                    if crashed && matches!(point, "created" | "written") {
                        assert_eq!(leftovers(&ns_dir), 1, "{what}");
                    }
                    let (ns, cuts) = Namespace::open(dir.path(), "x", MAX_FILE).unwrap();
                    assert!(cuts.is_empty(), "{what}");
                    assert_eq!(leftovers(&ns_dir), 0, "{what}");
                    verify(&ns, &model, &what);
                    ns.compact().unwrap();
                    verify(&ns, &model, &format!("{what}, then compacted"));
                    drop(ns);
                    let (ns, _) = Namespace::open(dir.path(), "x", MAX_FILE).unwrap();
                    verify(&ns, &model, &format!("{what}, compacted and reopened"));
                    if !crashed {
                        break;
                    }
                    n += 1;
                }
                assert!(n > 3, "{mode} {point}: crashed only {n} times");
            }
        }
    }

    /// Writers keep writing while a pass runs on another thread; what they
    /// wrote during the pass is there afterwards and after a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_run_during_a_pass() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Arc::new(create(dir.path(), "w", Mode::User));
        let mut model = churn(&ns, Mode::User).await;
        let pass = {
            let ns = ns.clone();
            std::thread::spawn(move || ns.compact().unwrap())
        };
        for i in 0..300u32 {
            let k = format!("k{:02}", i % 60).into_bytes();
            ns.set(&k, &val(i, 99), MAXV).await.unwrap();
            model.insert(k, Some(val(i, 99)));
        }
        let r = pass.join().unwrap();
        assert!(r.files_rewritten > 0, "{r:?}");
        verify(&ns, &model, "after the pass");
        drop(ns);
        let (ns, _) = Namespace::open(dir.path(), "w", MAX_FILE).unwrap();
        verify(&ns, &model, "reopened");
    }

    /// Damaged stretches survive a pass, still reported and still answering
    /// their key with an error; damage a pass finds by itself freezes the file.
    #[tokio::test]
    async fn damage_is_carried_over_and_new_damage_freezes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ns = create(dir.path(), "d", Mode::User);
        let mut model = churn(&ns, Mode::User).await;
        // A key written once, early, and never touched again.
        ns.set(b"zz-victim", &val(1, 1), MAXV).await.unwrap();
        for i in 0..40u32 {
            let k = format!("k{i:02}").into_bytes();
            ns.set(&k, &val(i, 50), MAXV).await.unwrap();
            model.insert(k, Some(val(i, 50)));
        }
        let (file, offset) = {
            let st = ns.lock();
            let Index::User(m) = &st.index else {
                unreachable!()
            };
            let l = m[&b"zz-victim"[..]];
            (
                st.files[l.file as usize].path.to_path_buf(),
                l.offset + l.total() - 2,
            )
        };
        drop(ns);
        let mut data = std::fs::read(&file).unwrap();
        data[offset as usize] ^= 1;
        std::fs::write(&file, data).unwrap();

        let (ns, _) = Namespace::open(dir.path(), "d", MAX_FILE).unwrap();
        assert_eq!(ns.damage().len(), 1);
        assert!(ns.compact().unwrap().files_rewritten > 0);
        assert_eq!(ns.damage().len(), 1);
        assert!(matches!(ns.get(b"zz-victim"), Err(NsError::Corrupt { .. })));
        verify_but(&ns, &model, b"zz-victim");
        drop(ns);
        let (ns, _) = Namespace::open(dir.path(), "d", MAX_FILE).unwrap();
        assert_eq!(ns.damage().len(), 1);
        assert!(matches!(ns.get(b"zz-victim"), Err(NsError::Corrupt { .. })));
        verify_but(&ns, &model, b"zz-victim");

        // New rot in a closed file while the namespace is open.
        let (path, len, key, offset) = {
            let st = ns.lock();
            let Index::User(m) = &st.index else {
                unreachable!()
            };
            let (k, l) = m
                .iter()
                .find(|(k, l)| {
                    l.file as usize + 1 < st.files.len() && !l.bad && &***k != b"zz-victim"
                })
                .unwrap();
            let f = &st.files[l.file as usize];
            (f.path.to_path_buf(), f.len, k.to_vec(), l.offset + 20)
        };
        let mut data = std::fs::read(&path).unwrap();
        data[offset as usize] ^= 1;
        std::fs::write(&path, &data).unwrap();
        // Make the file worth rewriting: overwrite everything else in it.
        for (k, v) in model.iter_mut() {
            if *k != key && v.is_some() {
                ns.set(k, b"new", MAXV).await.unwrap();
                *v = Some(b"new".to_vec());
            }
        }
        ns.compact().unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            len,
            "left as it is"
        );
        assert_eq!(ns.damage().len(), 2);
        assert!(matches!(ns.get(&key), Err(NsError::Corrupt { .. })));
        model.remove(&key);
        verify_but(&ns, &model, b"zz-victim");
    }

    fn verify_but(ns: &Namespace, model: &Model, skip: &[u8]) {
        for (k, v) in model.iter().filter(|(k, _)| k.as_slice() != skip) {
            assert_eq!(ns.get(k).unwrap().as_ref(), v.as_ref(), "{k:?}");
        }
    }

    /// The policy starts a background pass by itself once enough is dead.
    #[tokio::test]
    async fn background_pass_starts_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Namespace::create(dir.path(), "p", &opts(Mode::User), MAX_FILE).unwrap();
        let mut model = Model::new();
        for round in 0..40u32 {
            for i in 0..10u32 {
                let k = format!("k{i}").into_bytes();
                ns.set(&k, &val(i, round), MAXV).await.unwrap();
                model.insert(k, Some(val(i, round)));
            }
        }
        // Let a running pass finish.
        ns.compaction.stop_and_join();
        let info = ns.info();
        assert!(
            info.disk_size < 4 * MAX_FILE,
            "{} bytes on disk for {} live",
            info.disk_size,
            info.data_size
        );
        verify(&ns, &model, "background");
    }
}
