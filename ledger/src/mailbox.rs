//! The blob mailbox's store and policy (DESIGN §3 mailbox, §9 who may write).
//!
//! Blobs are sealed deployments (user -> node) and sealed results (node -> user).
//! Who may store what, and for how long:
//!
//! - An upload is signed ([`crate::blob`]) by a key the ledger knows: an account or
//!   a registered node. Anonymous and unknown uploaders are refused.
//! - A blob starts **pending**: nothing on the ledger names it yet. Each account may
//!   hold [`Policy::max_pending`] pending blobs of [`Policy::max_pending_bytes`] in
//!   all (uploads in flight count); a pending blob that no transaction names within
//!   [`Policy::pending_ttl`] is removed.
//! - A blob is **referenced** once an open contract names it (its deployment blob
//!   or its result blob): then the contract pays for it, and it stays, outside the
//!   quota, for as long as the contract names it.
//! - A blob no open contract names any more (the contract closed, or an update
//!   replaced it) is **released**, and removed [`Policy::retention`] later, so an
//!   owner can still fetch the results of a contract that just closed.
//! - Uploads in flight hold at most [`Policy::max_inflight_bytes`] in all; more
//!   waits its turn (503), so parallel uploads cannot exhaust memory.
//!
//! The mailbox is its own directory beside the chain's store, so its writes never
//! wait for, or delay, a block's commit: each blob is a file named by its hash
//! (written to a temporary name, fsynced, renamed), and what the mailbox knows about
//! it (uploader, size, times) is a record in a small redb file, written after the
//! file and removed before it, so a crash leaves at worst a file with no record,
//! which the next open removes. Which blobs are referenced comes from the chain
//! state at every sweep ([`Mailbox::sweep`]); the committer marks new references at
//! once too ([`Mailbox::mark_referenced`]), so a quota frees up as soon as a contract
//! names a blob.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::store::StoreError;
use crate::types::{Hash, PublicKey};

const META: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("meta");

/// How much one account may keep in the mailbox, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Pending blobs (named by no open contract) one account may hold.
    pub max_pending: usize,
    /// Bytes of pending blobs one account may hold.
    pub max_pending_bytes: u64,
    /// A pending blob older than this is removed.
    pub pending_ttl: Duration,
    /// A released blob (its contract closed or moved on) is removed this long after.
    pub retention: Duration,
    /// Bytes of uploads in flight, all accounts together.
    pub max_inflight_bytes: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_pending: 16,
            max_pending_bytes: 64 << 20,
            pending_ttl: Duration::from_secs(3600),
            retention: Duration::from_secs(7 * 24 * 3600),
            max_inflight_bytes: 256 << 20,
        }
    }
}

/// Why an upload was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuotaError {
    #[error(
        "account {account} already has {count} blobs waiting for a contract to name them \
         (at most {max}); create the contract, or wait until they expire"
    )]
    TooManyPending {
        account: PublicKey,
        count: usize,
        max: usize,
    },
    #[error(
        "account {account} already has {bytes} bytes of blobs waiting for a contract to name \
         them; {size} more would pass the quota of {max} bytes"
    )]
    TooManyBytes {
        account: PublicKey,
        bytes: u64,
        size: u64,
        max: u64,
    },
    #[error("the mailbox is busy with other uploads; retry")]
    Busy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    uploader: PublicKey,
    size: u64,
    /// Unix seconds.
    uploaded: u64,
    /// An open contract named it at some point.
    referenced: bool,
    /// When a sweep first found it named by no open contract any more.
    released: Option<u64>,
}

#[derive(Default)]
struct Index {
    blobs: HashMap<Hash, Meta>,
    /// Uploads in flight per account: (count, bytes).
    reserved: HashMap<PublicKey, (usize, u64)>,
    reserved_bytes: u64,
}

impl Index {
    /// Pending blobs of `who` (stored and in flight): (count, bytes).
    fn pending(&self, who: &PublicKey) -> (usize, u64) {
        let (mut n, mut b) = self.reserved.get(who).copied().unwrap_or_default();
        for m in self.blobs.values() {
            if !m.referenced && m.uploader == *who {
                n += 1;
                b += m.size;
            }
        }
        (n, b)
    }
}

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Blobs removed because their retention after release was over.
    pub released: usize,
    /// Blobs removed because no contract named them within the pending time.
    pub expired: usize,
}

pub struct Mailbox {
    db: Database,
    /// One file per blob, named by its hash.
    blobs: PathBuf,
    index: Mutex<Index>,
    policy: Policy,
}

/// Room for one upload in flight; given back when dropped.
pub struct Reservation {
    mailbox: Arc<Mailbox>,
    who: PublicKey,
    size: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut ix = self.mailbox.index();
        if let Some(r) = ix.reserved.get_mut(&self.who) {
            r.0 = r.0.saturating_sub(1);
            r.1 = r.1.saturating_sub(self.size);
            if r.0 == 0 {
                ix.reserved.remove(&self.who);
            }
        }
        ix.reserved_bytes = ix.reserved_bytes.saturating_sub(self.size);
    }
}

fn io<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Io(Box::new(e))
}

fn file_io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()).into())
}

/// Writes `data` at `path` durably: a temporary file (its own, should two uploads
/// of one blob race), fsync, rename, fsync of the directory.
fn write_durably(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension(format!("tmp{:016x}", rand::random::<u64>()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| file_io("create", &tmp, e))?;
    f.write_all(data).map_err(|e| file_io("write", &tmp, e))?;
    f.sync_all().map_err(|e| file_io("fsync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_io("rename", &tmp, e))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| file_io("fsync", dir, e))
}

impl Mailbox {
    /// Opens (or creates) the mailbox in the directory `dir`.
    pub fn open(dir: &Path, policy: Policy) -> Result<Mailbox, StoreError> {
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|e| StoreError::Open {
            path: blobs.display().to_string(),
            source: Box::new(e),
        })?;
        let path = dir.join("mailbox.redb");
        let db = Database::create(&path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            source: Box::new(e),
        })?;
        let mut w = db.begin_write().map_err(io)?;
        w.set_durability(Durability::Immediate);
        {
            w.open_table(META).map_err(io)?;
        }
        w.commit().map_err(io)?;
        let mut index = Index::default();
        {
            let r = db.begin_read().map_err(io)?;
            let t = r.open_table(META).map_err(io)?;
            for item in t.iter().map_err(io)? {
                let (k, v) = item.map_err(io)?;
                let h = Hash(*k.value());
                let m: Meta = postcard::from_bytes(v.value()).map_err(|e| StoreError::Corrupt {
                    what: "mailbox record",
                    key: h.to_hex(),
                    reason: e.to_string(),
                })?;
                index.blobs.insert(h, m);
            }
        }
        // Files with no record: a crash between writing one and its record, or
        // between removing a record and its file.
        let entries = std::fs::read_dir(&blobs).map_err(|e| file_io("list", &blobs, e))?;
        for e in entries {
            let e = e.map_err(|e| file_io("list", &blobs, e))?;
            let known = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Hash>().ok())
                .is_some_and(|h| index.blobs.contains_key(&h));
            if !known {
                std::fs::remove_file(e.path()).map_err(|err| file_io("remove", &e.path(), err))?;
            }
        }
        Ok(Mailbox {
            db,
            blobs,
            index: Mutex::new(index),
            policy,
        })
    }

    fn file(&self, h: &Hash) -> PathBuf {
        self.blobs.join(h.to_hex())
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // Plain values: a panic elsewhere cannot leave them half-written.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn contains(&self, h: &Hash) -> bool {
        self.index().blobs.contains_key(h)
    }

    /// Reserves room for an upload of up to `size` bytes by `who`, within its quota
    /// and the mailbox's bytes in flight.
    pub fn reserve(self: &Arc<Self>, who: PublicKey, size: u64) -> Result<Reservation, QuotaError> {
        let mut ix = self.index();
        let (count, bytes) = ix.pending(&who);
        if count >= self.policy.max_pending {
            return Err(QuotaError::TooManyPending {
                account: who,
                count,
                max: self.policy.max_pending,
            });
        }
        if bytes.saturating_add(size) > self.policy.max_pending_bytes {
            return Err(QuotaError::TooManyBytes {
                account: who,
                bytes,
                size,
                max: self.policy.max_pending_bytes,
            });
        }
        if ix.reserved_bytes.saturating_add(size) > self.policy.max_inflight_bytes {
            return Err(QuotaError::Busy);
        }
        let r = ix.reserved.entry(who).or_default();
        r.0 += 1;
        r.1 += size;
        ix.reserved_bytes += size;
        Ok(Reservation {
            mailbox: self.clone(),
            who,
            size,
        })
    }

    /// Stores `data` (which hashes to `h`) for the upload `r` at `now`; durable when
    /// it returns. A blob that is already stored stays as it is.
    pub fn put(&self, r: Reservation, h: &Hash, data: &[u8], now: u64) -> Result<(), StoreError> {
        if self.contains(h) {
            return Ok(());
        }
        let meta = Meta {
            uploader: r.who,
            size: data.len() as u64,
            uploaded: now,
            referenced: false,
            released: None,
        };
        let m = postcard::to_stdvec(&meta).map_err(io)?;
        write_durably(&self.file(h), data)?;
        let mut w = self.db.begin_write().map_err(io)?;
        w.set_durability(Durability::Immediate);
        {
            w.open_table(META)
                .map_err(io)?
                .insert(&h.0, m.as_slice())
                .map_err(io)?;
        }
        w.commit().map_err(io)?;
        // In the index before the reservation is given back, so the quota never
        // sees the blob twice or not at all.
        self.index().blobs.entry(*h).or_insert(meta);
        drop(r);
        Ok(())
    }

    pub fn get(&self, h: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.contains(h) {
            return Ok(None);
        }
        let path = self.file(h);
        match std::fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            // Removed by a sweep since the check above.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(file_io("read", &path, e)),
        }
    }

    /// Committed transactions named these blobs: they no longer count against their
    /// uploaders' quotas. (The next sweep writes it down.)
    pub fn mark_referenced(&self, hashes: impl IntoIterator<Item = Hash>) {
        let mut ix = self.index();
        for h in hashes {
            if let Some(m) = ix.blobs.get_mut(&h) {
                m.referenced = true;
                m.released = None;
            }
        }
    }

    /// Brings every blob's state up to date with `live`, the blobs open contracts
    /// name now, and removes those whose time is over.
    pub fn sweep(&self, live: &HashSet<Hash>, now: u64) -> Result<Swept, StoreError> {
        let retention = self.policy.retention.as_secs();
        let ttl = self.policy.pending_ttl.as_secs();
        // (hash, as the sweep found it, as it is to be)
        let mut changed: Vec<(Hash, Meta, Meta)> = Vec::new();
        let mut gone: Vec<Hash> = Vec::new();
        let mut swept = Swept::default();
        {
            let ix = self.index();
            for (h, m) in &ix.blobs {
                let mut n = m.clone();
                if live.contains(h) {
                    n.referenced = true;
                    n.released = None;
                } else if n.referenced {
                    let since = *n.released.get_or_insert(now);
                    if now.saturating_sub(since) >= retention {
                        gone.push(*h);
                        swept.released += 1;
                        continue;
                    }
                } else if now.saturating_sub(n.uploaded) >= ttl {
                    gone.push(*h);
                    swept.expired += 1;
                    continue;
                }
                if n != *m {
                    changed.push((*h, m.clone(), n));
                }
            }
        }
        if changed.is_empty() && gone.is_empty() {
            return Ok(swept);
        }
        let mut w = self.db.begin_write().map_err(io)?;
        w.set_durability(Durability::Immediate);
        {
            let mut meta = w.open_table(META).map_err(io)?;
            for h in &gone {
                meta.remove(&h.0).map_err(io)?;
            }
            for (h, _, m) in &changed {
                let b = postcard::to_stdvec(m).map_err(io)?;
                meta.insert(&h.0, b.as_slice()).map_err(io)?;
            }
        }
        w.commit().map_err(io)?;
        let mut ix = self.index();
        for h in &gone {
            ix.blobs.remove(h);
        }
        drop(ix);
        for h in &gone {
            let path = self.file(h);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(file_io("remove", &path, e)),
            }
        }
        let mut ix = self.index();
        for (h, was, m) in changed {
            // A reference the committer marked meanwhile wins; the next sweep writes it.
            if let Some(cur) = ix.blobs.get_mut(&h).filter(|cur| **cur == was) {
                *cur = m;
            }
        }
        Ok(swept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;

    fn open(dir: &Path, policy: Policy) -> Arc<Mailbox> {
        Arc::new(Mailbox::open(dir, policy).expect("open"))
    }

    fn put(mb: &Arc<Mailbox>, who: PublicKey, data: &[u8], now: u64) -> Result<Hash, QuotaError> {
        let h = Hash::of(data);
        let r = mb.reserve(who, data.len() as u64)?;
        mb.put(r, &h, data, now).expect("put");
        Ok(h)
    }

    #[test]
    fn quota_counts_pending_blobs_and_frees_on_reference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mb = open(
            dir.path(),
            Policy {
                max_pending: 2,
                max_pending_bytes: 10,
                ..Policy::default()
            },
        );
        let a = keys::public_key(&keys::generate());
        let b = keys::public_key(&keys::generate());
        let h1 = put(&mb, a, b"1234", 0).expect("first");
        put(&mb, a, b"5678", 0).expect("second");
        assert!(matches!(
            put(&mb, a, b"9", 0),
            Err(QuotaError::TooManyPending { count: 2, .. })
        ));
        // Another account has its own quota; bytes count too.
        assert!(matches!(
            put(&mb, b, b"12345678901", 0),
            Err(QuotaError::TooManyBytes { .. })
        ));
        put(&mb, b, b"abc", 0).expect("b's first");
        // A reservation in flight counts.
        let held = mb.reserve(b, 7).expect("reserve");
        assert!(matches!(
            mb.reserve(b, 1),
            Err(QuotaError::TooManyPending { count: 2, .. })
        ));
        drop(held);
        mb.reserve(b, 1).expect("room again");
        // A contract names a's first blob: a may upload one more.
        mb.mark_referenced([h1]);
        put(&mb, a, b"9", 0).expect("after reference");
        assert_eq!(mb.get(&h1).expect("get").as_deref(), Some(&b"1234"[..]));
    }

    #[test]
    fn sweep_removes_expired_and_released_blobs_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = Policy {
            pending_ttl: Duration::from_secs(100),
            retention: Duration::from_secs(50),
            ..Policy::default()
        };
        let a = keys::public_key(&keys::generate());
        let (pending, live, released) = {
            let mb = open(dir.path(), policy.clone());
            let pending = put(&mb, a, b"pending", 0).expect("put");
            let live = put(&mb, a, b"live", 0).expect("put");
            let released = put(&mb, a, b"released", 0).expect("put");
            let now: HashSet<Hash> = [live, released].into();
            assert_eq!(mb.sweep(&now, 10).expect("sweep"), Swept::default());
            (pending, live, released)
        };
        // Reopened: what the sweep wrote down survived.
        let mb = open(dir.path(), policy);
        let now: HashSet<Hash> = [live].into();
        assert_eq!(mb.sweep(&now, 20).expect("sweep"), Swept::default());
        assert_eq!(mb.sweep(&now, 69).expect("sweep"), Swept::default());
        assert_eq!(
            mb.sweep(&now, 70).expect("sweep"),
            Swept {
                released: 1,
                expired: 0
            }
        );
        assert_eq!(mb.get(&released).expect("get"), None);
        assert_eq!(
            mb.sweep(&now, 100).expect("sweep"),
            Swept {
                released: 0,
                expired: 1
            }
        );
        assert_eq!(mb.get(&pending).expect("get"), None);
        assert!(mb.get(&live).expect("get").is_some(), "a live blob stays");
        assert_eq!(mb.sweep(&now, 1_000_000).expect("sweep"), Swept::default());
        let files = |dir: &Path| std::fs::read_dir(dir.join("blobs")).expect("ls").count();
        assert_eq!(files(dir.path()), 1, "only the live blob's file is left");
    }

    #[test]
    fn files_without_a_record_are_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = keys::public_key(&keys::generate());
        let kept = put(&open(dir.path(), Policy::default()), a, b"kept", 0).expect("put");
        let blobs = dir.path().join("blobs");
        std::fs::write(blobs.join(Hash::of(b"orphan").to_hex()), b"orphan").expect("write");
        std::fs::write(blobs.join("x.tmp0123"), b"half").expect("write");
        let mb = open(dir.path(), Policy::default());
        let left: Vec<_> = std::fs::read_dir(&blobs)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(kept.to_hex())]);
        assert_eq!(mb.get(&kept).expect("get").as_deref(), Some(&b"kept"[..]));
    }
}
