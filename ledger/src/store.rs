//! Where blocks, their events and mailbox blobs live.
//!
//! The block log is the source of truth; the state is rebuilt from it. The store is a
//! trait so that a replicated backend (etcd) can stand beside the embedded one: what
//! it must guarantee is that `append` is durable when it returns, and that blocks
//! come back in order, complete, exactly as written.

use crate::block::{Block, BlockEvents, Genesis};
use crate::types::Hash;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("store I/O: {0}")]
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
}

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
}

#[cfg(feature = "server")]
pub use self::redb_store::RedbStore;

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
}

#[cfg(feature = "server")]
mod redb_store {
    use std::path::Path;

    use redb::{Database, Durability, ReadableTable, TableDefinition};

    use super::*;

    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
    const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
    const BLOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blobs");

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
    /// fsync before returning and survive a crash at any point.
    pub struct RedbStore {
        db: Database,
    }

    impl RedbStore {
        pub fn open(path: &Path) -> Result<Self, StoreError> {
            let db = Database::create(path).map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                source: Box::new(e),
            })?;
            // Make sure every table exists so readers never see "table not found".
            let mut w = db.begin_write().map_err(io)?;
            w.set_durability(Durability::Immediate);
            {
                w.open_table(META).map_err(io)?;
                w.open_table(BLOCKS).map_err(io)?;
                w.open_table(EVENTS).map_err(io)?;
                w.open_table(BLOBS).map_err(io)?;
            }
            w.commit().map_err(io)?;
            Ok(RedbStore { db })
        }
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
            let b = encode(block)?;
            let e = encode(events)?;
            let mut w = self.db.begin_write().map_err(io)?;
            w.set_durability(Durability::Immediate);
            {
                let mut blocks = w.open_table(BLOCKS).map_err(io)?;
                let height = blocks.last().map_err(io)?.map_or(0, |(k, _)| k.value());
                if block.header.height != height + 1 {
                    return Err(StoreError::OutOfOrder {
                        got: block.header.height,
                        height,
                    });
                }
                blocks
                    .insert(block.header.height, b.as_slice())
                    .map_err(io)?;
                let mut ev = w.open_table(EVENTS).map_err(io)?;
                ev.insert(block.header.height, e.as_slice()).map_err(io)?;
            }
            w.commit().map_err(io)
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
    }
}
