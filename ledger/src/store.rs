//! Where blocks, their events and mailbox blobs live.
//!
//! The block log is the source of truth; the state is rebuilt from it. The store is a
//! trait so that a replicated backend ([`EtcdStore`], several ledger servers on one
//! etcd cluster) can stand beside the embedded one: what it must guarantee is that
//! `append` is durable when it returns, that it never takes two blocks at one height
//! ([`StoreError::Conflict`] for the second), and that blocks come back in order,
//! complete, exactly as written.
//!
//! The embedded store also keeps a head record outside the database (`ledger.head`
//! beside `ledger.redb`): the height and hash of the last block it acknowledged. When
//! the pages of redb's latest commit are damaged, redb opens the commit before it and
//! the chain would silently lose acknowledged blocks; the head record turns that into
//! an error at open that names the lost blocks, until an operator accepts the loss
//! (README, "Rollback").

use crate::block::{Block, BlockEvents, Genesis};
use crate::types::Hash;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("store I/O")]
    Io(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("store holds a record that does not decode ({what} at {key}): {reason}")]
    Corrupt {
        what: &'static str,
        key: String,
        reason: String,
    },
    #[error("append of block {got} out of order: the store is at height {height}")]
    OutOfOrder { got: u64, height: u64 },
    #[error("the store already holds a chain")]
    AlreadyInitialized,
    #[error(
        "{path}: the store went back from block {recorded} to block {store}: {} acknowledged but gone (damaged pages in the latest commit make redb open an older one). Refusing to serve a shorter chain: restore ledger.redb from a copy, or accept the loss with `cellos ledger serve --accept-rollback`",
        lost(*store, *recorded)
    )]
    RolledBack {
        path: String,
        recorded: u64,
        store: u64,
    },
    #[error(
        "{path}: block {height} is {found}, but the head record says the ledger acknowledged {recorded} at that height: this is not the chain it served. Restore ledger.redb, or accept this chain with `cellos ledger serve --accept-rollback`"
    )]
    HeadMismatch {
        path: String,
        height: u64,
        recorded: Hash,
        found: Hash,
    },
    #[error("head record {path}: {reason}")]
    HeadRecord { path: String, reason: String },
    #[error("another ledger server appended block {height} first")]
    Conflict { height: u64 },
    #[error("block {height} is {bytes} bytes with its events; the store takes at most {limit}")]
    TooLarge {
        height: u64,
        bytes: usize,
        limit: usize,
    },
}

/// "block 7 was" or "blocks 5 to 7 were".
fn lost(store: u64, recorded: u64) -> String {
    let first = store.saturating_add(1);
    if first >= recorded {
        format!("block {recorded} was")
    } else {
        format!("blocks {first} to {recorded} were")
    }
}

/// Called by a replicated store whenever its log may have grown.
pub type Wake = std::sync::Arc<dyn Fn() + Send + Sync>;

pub trait Store: Send + Sync {
    fn genesis(&self) -> Result<Option<Genesis>, StoreError>;
    /// Writes the genesis record of an empty store.
    fn init(&self, genesis: &Genesis) -> Result<(), StoreError>;
    /// Appends the next block with its events; durable (fsynced) when it returns.
    fn append(&self, block: &Block, events: &BlockEvents) -> Result<(), StoreError>;
    /// Height of the last block (0 when there is none).
    fn height(&self) -> Result<u64, StoreError>;
    /// Up to `limit` blocks starting at height `from`.
    fn blocks(&self, from: u64, limit: usize) -> Result<Vec<Block>, StoreError>;
    /// Up to `limit` event records starting at height `from`.
    fn events(&self, from: u64, limit: usize) -> Result<Vec<BlockEvents>, StoreError>;
    fn put_blob(&self, hash: &Hash, data: &[u8]) -> Result<(), StoreError>;
    fn get_blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError>;
    /// For a store that other ledger servers append to as well: calls `wake` (from a
    /// task of the store's own) whenever another writer may have appended, and
    /// returns true; the server then follows the log. A store only this process
    /// writes returns false.
    fn watch(&self, _wake: Wake) -> bool {
        false
    }
    /// Keeps `record` (an encoded [`crate::chain::StateSnapshot`]) as the latest
    /// snapshot, in place of the one before. A store
    /// that keeps none ignores it (the etcd store: a state outgrows etcd's request
    /// limit), and start-up replays its whole chain.
    fn put_snapshot(&self, _record: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    /// The latest snapshot record [`Store::put_snapshot`] kept.
    fn snapshot(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    /// The most bytes of transactions (as JSON) one block may hold, for a store that
    /// limits the size of a record.
    fn max_block_bytes(&self) -> Option<usize> {
        None
    }
}

#[cfg(feature = "server")]
mod etcd;
#[cfg(feature = "server")]
pub mod local_etcd;

#[cfg(feature = "server")]
pub use self::etcd::{EtcdStore, MAX_BLOCK_TX_BYTES, MAX_RECORD};
#[cfg(feature = "server")]
pub use self::redb_store::{RedbStore, Rollback};

/// A store in memory: for chains fetched over HTTP to be verified, and for tests.
#[derive(Default)]
pub struct MemStore {
    inner: std::sync::Mutex<MemInner>,
}

#[derive(Default)]
struct MemInner {
    genesis: Option<Genesis>,
    blocks: Vec<Block>,
    events: Vec<BlockEvents>,
    blobs: std::collections::BTreeMap<Hash, Vec<u8>>,
    snapshot: Option<Vec<u8>>,
}

impl MemStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        // The data is plain values; a panic elsewhere cannot leave it half-written.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemStore {
    fn genesis(&self) -> Result<Option<Genesis>, StoreError> {
        Ok(self.lock().genesis.clone())
    }
    fn init(&self, genesis: &Genesis) -> Result<(), StoreError> {
        let mut i = self.lock();
        if i.genesis.is_some() {
            return Err(StoreError::AlreadyInitialized);
        }
        i.genesis = Some(genesis.clone());
        Ok(())
    }
    fn append(&self, block: &Block, events: &BlockEvents) -> Result<(), StoreError> {
        let mut i = self.lock();
        let height = i.blocks.len() as u64;
        if block.header.height != height + 1 {
            return Err(StoreError::OutOfOrder {
                got: block.header.height,
                height,
            });
        }
        i.blocks.push(block.clone());
        i.events.push(events.clone());
        Ok(())
    }
    fn height(&self) -> Result<u64, StoreError> {
        Ok(self.lock().blocks.len() as u64)
    }
    fn blocks(&self, from: u64, limit: usize) -> Result<Vec<Block>, StoreError> {
        let i = self.lock();
        let start = (from.max(1) - 1) as usize;
        Ok(i.blocks.iter().skip(start).take(limit).cloned().collect())
    }
    fn events(&self, from: u64, limit: usize) -> Result<Vec<BlockEvents>, StoreError> {
        let i = self.lock();
        let start = (from.max(1) - 1) as usize;
        Ok(i.events.iter().skip(start).take(limit).cloned().collect())
    }
    fn put_blob(&self, hash: &Hash, data: &[u8]) -> Result<(), StoreError> {
        self.lock().blobs.insert(*hash, data.to_vec());
        Ok(())
    }
    fn get_blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().blobs.get(hash).cloned())
    }
    fn put_snapshot(&self, record: &[u8]) -> Result<(), StoreError> {
        self.lock().snapshot = Some(record.to_vec());
        Ok(())
    }
    fn snapshot(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().snapshot.clone())
    }
}

#[cfg(feature = "server")]
mod redb_store {
    use std::fs::{self, File, OpenOptions};
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use redb::{Database, Durability, ReadableTable, TableDefinition};

    use super::*;

    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
    const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
    const BLOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blobs");
    /// The latest state snapshot, under [`SNAPSHOT_KEY`].
    const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
    const SNAPSHOT_KEY: &str = "latest";

    fn io<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
        StoreError::Io(Box::new(e))
    }

    fn decode<T: serde::de::DeserializeOwned>(
        what: &'static str,
        key: String,
        b: &[u8],
    ) -> Result<T, StoreError> {
        postcard::from_bytes(b).map_err(|e| StoreError::Corrupt {
            what,
            key,
            reason: e.to_string(),
        })
    }

    fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
        postcard::to_stdvec(v).map_err(io)
    }

    /// The embedded store: one redb file. redb commits with `Durability::Immediate`
    /// fsync before returning and survive a crash at any point. Beside it, the head
    /// record says how far the chain went (see the module docs).
    pub struct RedbStore {
        db: Database,
        head: Mutex<HeadFile>,
    }

    /// A rollback an operator accepted: the head record said `recorded`, the store
    /// ends at `store`.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Rollback {
        pub recorded: u64,
        pub store: u64,
    }

    impl std::fmt::Display for Rollback {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            if self.recorded > self.store {
                write!(
                    f,
                    "the chain goes back from block {} to block {}: {} lost",
                    self.recorded,
                    self.store,
                    lost(self.store, self.recorded)
                )
            } else {
                write!(
                    f,
                    "block {} is not the one the ledger acknowledged; the store's chain is kept",
                    self.recorded
                )
            }
        }
    }

    impl RedbStore {
        /// Opens (or creates) the store at `path`. Fails when the store's head is
        /// behind the head record (a rollback) or is another block at the recorded
        /// height.
        pub fn open(path: &Path) -> Result<Self, StoreError> {
            let (store, _) = Self::open_checked(path, false)?;
            Ok(store)
        }

        /// Opens the store like [`RedbStore::open`], but accepts a store whose head
        /// went back or changed: the head record is reset to the store's head, and
        /// what was lost is returned. An operator's decision
        /// (`cellos ledger serve --accept-rollback`), never a default.
        pub fn open_accepting_rollback(
            path: &Path,
        ) -> Result<(Self, Option<Rollback>), StoreError> {
            Self::open_checked(path, true)
        }

        fn open_checked(path: &Path, accept: bool) -> Result<(Self, Option<Rollback>), StoreError> {
            // redb asserts on some damage (a file cut shorter than its header says)
            // instead of returning an error: a damaged file is input, so its panic
            // becomes the error it should have been.
            let created = std::panic::catch_unwind(|| Database::create(path));
            let db = match created {
                Ok(db) => db.map_err(|e| StoreError::Open {
                    path: path.display().to_string(),
                    source: Box::new(e),
                })?,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    return Err(StoreError::Open {
                        path: path.display().to_string(),
                        source: format!("the file is damaged or truncated (redb: {what})").into(),
                    });
                }
            };
            // Make sure every table exists so readers never see "table not found".
            let mut w = db.begin_write().map_err(io)?;
            w.set_durability(Durability::Immediate);
            {
                w.open_table(META).map_err(io)?;
                w.open_table(BLOCKS).map_err(io)?;
                w.open_table(EVENTS).map_err(io)?;
                w.open_table(BLOBS).map_err(io)?;
                w.open_table(SNAPSHOT).map_err(io)?;
            }
            w.commit().map_err(io)?;
            let head_path = path.with_extension("head");
            let head = HeadFile::open(&head_path)?;
            let store = RedbStore {
                db,
                head: Mutex::new(head),
            };
            let accepted = store.check_head(path, accept)?;
            Ok((store, accepted))
        }

        /// Appends consecutive blocks with their events in one write transaction
        /// (one fsync, one head record update): [`Store::append`] for many blocks,
        /// as a bulk load writes them.
        pub fn append_all(&self, items: &[(&Block, &BlockEvents)]) -> Result<(), StoreError> {
            let Some((last, _)) = items.last() else {
                return Ok(());
            };
            let mut w = self.db.begin_write().map_err(io)?;
            w.set_durability(Durability::Immediate);
            {
                let mut blocks = w.open_table(BLOCKS).map_err(io)?;
                let mut ev = w.open_table(EVENTS).map_err(io)?;
                let mut height = blocks.last().map_err(io)?.map_or(0, |(k, _)| k.value());
                for (block, events) in items {
                    if block.header.height != height + 1 {
                        return Err(StoreError::OutOfOrder {
                            got: block.header.height,
                            height,
                        });
                    }
                    height = block.header.height;
                    blocks
                        .insert(height, encode(block)?.as_slice())
                        .map_err(io)?;
                    ev.insert(height, encode(events)?.as_slice()).map_err(io)?;
                }
            }
            w.commit().map_err(io)?;
            // Only now are the blocks acknowledged; record the last outside the database.
            self.head().write(last.header.height, last.hash())
        }

        fn head(&self) -> std::sync::MutexGuard<'_, HeadFile> {
            // Plain values; a panic elsewhere cannot leave them half-written.
            self.head.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// The hash of the block at `height` (the zero hash for height 0).
        fn block_hash(&self, height: u64) -> Result<Hash, StoreError> {
            if height == 0 {
                return Ok(Hash([0; 32]));
            }
            let found = self.blocks(height, 1)?;
            match found.first() {
                Some(b) if b.header.height == height => Ok(b.hash()),
                _ => Err(StoreError::Corrupt {
                    what: "block",
                    key: height.to_string(),
                    reason: "missing below the store's head".into(),
                }),
            }
        }

        /// Compares the store's head with the head record (see the module docs).
        fn check_head(&self, path: &Path, accept: bool) -> Result<Option<Rollback>, StoreError> {
            let height = self.height()?;
            let recorded = self.head().latest;
            let Some((rec_height, rec_hash)) = recorded else {
                // A new store, or one from before head records: start one now.
                let hash = self.block_hash(height)?;
                self.head().write(height, hash)?;
                return Ok(None);
            };
            let path = path.display().to_string();
            let problem = if height < rec_height {
                Some(StoreError::RolledBack {
                    path,
                    recorded: rec_height,
                    store: height,
                })
            } else {
                let found = self.block_hash(rec_height)?;
                (found != rec_hash).then_some(StoreError::HeadMismatch {
                    path,
                    height: rec_height,
                    recorded: rec_hash,
                    found,
                })
            };
            match problem {
                Some(e) if !accept => Err(e),
                Some(_) => {
                    let hash = self.block_hash(height)?;
                    self.head().write(height, hash)?;
                    Ok(Some(Rollback {
                        recorded: rec_height,
                        store: height,
                    }))
                }
                None => {
                    if height > rec_height {
                        // The last append committed but its head record was not
                        // written (a crash in between): catch up.
                        let hash = self.block_hash(height)?;
                        self.head().write(height, hash)?;
                    }
                    Ok(None)
                }
            }
        }
    }

    /// The head record: two 72-byte slots, 4 KiB apart, each {magic, sequence
    /// number, height, block hash, checksum}. An update overwrites the older slot in
    /// place and fdatasyncs, so a torn write damages at most that slot, and the other
    /// still holds the previous head. The valid slot with the higher sequence number
    /// is the record (heights may go down, when an operator accepts a rollback).
    struct HeadFile {
        path: PathBuf,
        file: File,
        latest: Option<(u64, Hash)>,
        /// The slot the latest record is in (the next write goes to the other).
        slot: usize,
        seq: u64,
    }

    const HEAD_MAGIC: &[u8; 16] = b"cellos-head-v1\0\0";
    const HEAD_SLOT: usize = 72;
    const HEAD_SLOT_STRIDE: u64 = 4096;
    const HEAD_FILE_LEN: u64 = 2 * HEAD_SLOT_STRIDE;

    /// A valid slot: (sequence number, height, block hash).
    type Slot = (u64, u64, Hash);

    fn encode_slot(seq: u64, height: u64, hash: &Hash) -> [u8; HEAD_SLOT] {
        let mut b = [0u8; HEAD_SLOT];
        b[..16].copy_from_slice(HEAD_MAGIC);
        b[16..24].copy_from_slice(&seq.to_le_bytes());
        b[24..32].copy_from_slice(&height.to_le_bytes());
        b[32..64].copy_from_slice(&hash.0);
        let check = blake3::hash(&b[..64]);
        b[64..].copy_from_slice(&check.as_bytes()[..8]);
        b
    }

    fn decode_slot(b: &[u8]) -> Option<Slot> {
        let b: &[u8; HEAD_SLOT] = b.get(..HEAD_SLOT)?.try_into().ok()?;
        let check = blake3::hash(&b[..64]);
        if &b[..16] != HEAD_MAGIC || b[64..] != check.as_bytes()[..8] {
            return None;
        }
        let seq = u64::from_le_bytes(b[16..24].try_into().ok()?);
        let height = u64::from_le_bytes(b[24..32].try_into().ok()?);
        let hash = Hash(b[32..64].try_into().ok()?);
        Some((seq, height, hash))
    }

    impl HeadFile {
        /// Opens the head record at `path`, creating an empty one (atomically: a
        /// temporary file, fsync, rename, fsync of the directory) if there is none.
        fn open(path: &Path) -> Result<Self, StoreError> {
            let err = |what: &str, e: std::io::Error| StoreError::HeadRecord {
                path: path.display().to_string(),
                reason: format!("{what}: {e}"),
            };
            if !path.exists() {
                let tmp = path.with_extension("head.tmp");
                let f = File::create(&tmp).map_err(|e| err("creating", e))?;
                f.set_len(HEAD_FILE_LEN)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| err("writing", e))?;
                fs::rename(&tmp, path).map_err(|e| err("renaming into place", e))?;
                sync_dir(path).map_err(|e| err("syncing its directory", e))?;
            }
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| err("opening", e))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|e| err("reading", e))?;
            let slots = [0usize, 1].map(|i| {
                let off = i * HEAD_SLOT_STRIDE as usize;
                bytes.get(off..).and_then(decode_slot)
            });
            let empty = |i: usize| {
                let off = i * HEAD_SLOT_STRIDE as usize;
                bytes
                    .get(off..off + HEAD_SLOT)
                    .is_none_or(|b| b.iter().all(|&x| x == 0))
            };
            if slots.iter().all(Option::is_none) && !(empty(0) && empty(1)) {
                return Err(StoreError::HeadRecord {
                    path: path.display().to_string(),
                    reason: "both slots are damaged, so the last acknowledged block is unknown; check ledger.redb with `cellos ledger verify --data`, then remove this file to start a new record".into(),
                });
            }
            let (slot, latest) = match slots {
                [Some(a), Some(b)] if b.0 > a.0 => (1, Some(b)),
                [Some(a), _] => (0, Some(a)),
                [None, Some(b)] => (1, Some(b)),
                [None, None] => (1, None),
            };
            Ok(HeadFile {
                path: path.to_path_buf(),
                file,
                latest: latest.map(|(_, height, hash)| (height, hash)),
                slot,
                seq: latest.map_or(0, |(seq, _, _)| seq),
            })
        }

        /// Records `height` and `hash` as the head, durably, in the other slot.
        fn write(&mut self, height: u64, hash: Hash) -> Result<(), StoreError> {
            let slot = self.slot ^ 1;
            let seq = self
                .seq
                .checked_add(1)
                .ok_or_else(|| StoreError::HeadRecord {
                    path: self.path.display().to_string(),
                    reason: "sequence number exhausted".into(),
                })?;
            self.file
                .write_all_at(
                    &encode_slot(seq, height, &hash),
                    slot as u64 * HEAD_SLOT_STRIDE,
                )
                .and_then(|()| self.file.sync_data())
                .map_err(|e| StoreError::HeadRecord {
                    path: self.path.display().to_string(),
                    reason: format!("writing block {height}: {e}"),
                })?;
            self.slot = slot;
            self.seq = seq;
            self.latest = Some((height, hash));
            Ok(())
        }
    }

    fn sync_dir(path: &Path) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }

    impl Store for RedbStore {
        fn genesis(&self) -> Result<Option<Genesis>, StoreError> {
            let r = self.db.begin_read().map_err(io)?;
            let t = r.open_table(META).map_err(io)?;
            match t.get("genesis").map_err(io)? {
                None => Ok(None),
                Some(v) => Ok(Some(decode("genesis", "genesis".into(), v.value())?)),
            }
        }

        fn init(&self, genesis: &Genesis) -> Result<(), StoreError> {
            let bytes = encode(genesis)?;
            let mut w = self.db.begin_write().map_err(io)?;
            w.set_durability(Durability::Immediate);
            {
                let mut t = w.open_table(META).map_err(io)?;
                if t.get("genesis").map_err(io)?.is_some() {
                    return Err(StoreError::AlreadyInitialized);
                }
                t.insert("genesis", bytes.as_slice()).map_err(io)?;
            }
            w.commit().map_err(io)
        }

        fn append(&self, block: &Block, events: &BlockEvents) -> Result<(), StoreError> {
            self.append_all(&[(block, events)])
        }

        fn height(&self) -> Result<u64, StoreError> {
            let r = self.db.begin_read().map_err(io)?;
            let t = r.open_table(BLOCKS).map_err(io)?;
            let last = t.last().map_err(io)?.map_or(0, |(k, _)| k.value());
            Ok(last)
        }

        fn blocks(&self, from: u64, limit: usize) -> Result<Vec<Block>, StoreError> {
            let r = self.db.begin_read().map_err(io)?;
            let t = r.open_table(BLOCKS).map_err(io)?;
            let mut out = Vec::new();
            for item in t.range(from..).map_err(io)?.take(limit) {
                let (k, v) = item.map_err(io)?;
                out.push(decode("block", k.value().to_string(), v.value())?);
            }
            Ok(out)
        }

        fn events(&self, from: u64, limit: usize) -> Result<Vec<BlockEvents>, StoreError> {
            let r = self.db.begin_read().map_err(io)?;
            let t = r.open_table(EVENTS).map_err(io)?;
            let mut out = Vec::new();
            for item in t.range(from..).map_err(io)?.take(limit) {
                let (k, v) = item.map_err(io)?;
                out.push(decode("events", k.value().to_string(), v.value())?);
            }
            Ok(out)
        }

        fn put_blob(&self, hash: &Hash, data: &[u8]) -> Result<(), StoreError> {
            let mut w = self.db.begin_write().map_err(io)?;
            w.set_durability(Durability::Immediate);
            {
                let mut t = w.open_table(BLOBS).map_err(io)?;
                t.insert(&hash.0, data).map_err(io)?;
            }
            w.commit().map_err(io)
        }

        fn get_blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
            let r = self.db.begin_read().map_err(io)?;
            let t = r.open_table(BLOBS).map_err(io)?;
            Ok(t.get(&hash.0).map_err(io)?.map(|v| v.value().to_vec()))
        }

        fn put_snapshot(&self, record: &[u8]) -> Result<(), StoreError> {
            let mut w = self.db.begin_write().map_err(io)?;
            w.set_durability(Durability::Immediate);
            {
                let mut t = w.open_table(SNAPSHOT).map_err(io)?;
                t.insert(SNAPSHOT_KEY, record).map_err(io)?;
            }
            w.commit().map_err(io)
        }

        fn snapshot(&self) -> Result<Option<Vec<u8>>, StoreError> {
            let r = self.db.begin_read().map_err(io)?;
            let t = r.open_table(SNAPSHOT).map_err(io)?;
            Ok(t.get(SNAPSHOT_KEY).map_err(io)?.map(|v| v.value().to_vec()))
        }
    }
}
