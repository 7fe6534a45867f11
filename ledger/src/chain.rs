//! The block producer and the verifier.
//!
//! `Chain` owns the live state and turns batches of verified transactions into
//! blocks (group commit: one fsync for the whole batch). A transaction the state
//! machine rejects is left out of the block and reported to its sender. A block is
//! durable before any of its transactions is acknowledged; if the store fails, the
//! in-memory state is rebuilt from the store so it never runs ahead of disk.
//!
//! Readers never wait for a commit. The chain keeps two copies of its state: the
//! published [`Snapshot`] (durable, what a [`View`] hands out) and the committer's
//! working copy. A commit applies the batch to the working copy, writes and fsyncs
//! the block with no lock held, and only then publishes the working copy (a pointer
//! swap under a lock held for nanoseconds). The copy that was published before is
//! one block behind; the next commit replays that block on it and makes it the
//! working copy. So the state is applied twice but never cloned (unless a reader
//! still holds the old snapshot when the next commit starts), and readers see only
//! durable blocks.
//!
//! [`replay`] rebuilds a state from blocks; with `check_signatures` it is also the
//! verifier: every hash link, every ledger and transaction signature, every
//! transaction's success and every recorded event are checked again.

use std::sync::{Arc, RwLock};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::block::{Block, BlockError, BlockEvents, Genesis};
use crate::state::{Event, State, TxError};
use crate::store::{Store, StoreError};
use crate::tx::{SignatureError, VerifiedTx};
use crate::types::*;

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("block {height}, transaction {index} ({hash}) is not signed right")]
    TxSignature {
        height: u64,
        index: usize,
        hash: Hash,
        #[source]
        source: SignatureError,
    },
    #[error("block {height}, transaction {index} ({hash}) does not apply")]
    TxRejected {
        height: u64,
        index: usize,
        hash: Hash,
        #[source]
        source: Box<TxError>,
    },
    #[error("block {height}: recorded events differ from the replayed ones")]
    Events { height: u64 },
    #[error("the store has no genesis record: it holds no chain")]
    NoGenesis,
    #[error("the store's chain is signed by {store}, but this ledger's key is {key}")]
    WrongKey { store: PublicKey, key: PublicKey },
    #[error("the store's chain id is {store:?}, but {wanted:?} was asked for")]
    WrongChainId { store: String, wanted: String },
}

/// What a sender learns about its accepted transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub hash: Hash,
    pub height: u64,
    pub events: Vec<Event>,
}

/// The head of a replayed chain.
pub struct Replayed {
    pub genesis: Genesis,
    pub state: State,
    pub head: Hash,
    pub blocks: u64,
    pub txs: u64,
}

/// Rebuilds the state from the store's blocks. With `check_signatures` it verifies
/// every signature too (`cellos ledger verify`); without, it trusts blocks this
/// ledger wrote itself (start-up).
pub fn replay(
    store: &dyn Store,
    check_signatures: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Replayed, ChainError> {
    let genesis = store.genesis()?.ok_or(ChainError::NoGenesis)?;
    let target = store.height()?;
    let mut state = State::new(genesis.params.clone(), genesis.time);
    let mut head = genesis.hash();
    let mut next = 1u64;
    let mut txs = 0u64;
    const PAGE: usize = 512;
    loop {
        let blocks = store.blocks(next, PAGE)?;
        if blocks.is_empty() {
            break;
        }
        let recorded = store.events(next, PAGE)?;
        for (i, block) in blocks.into_iter().enumerate() {
            let height = block.header.height;
            block.check(next, head, state.time(), &genesis.ledger_key)?;
            let mut events = state.begin_block(height, block.header.time);
            for (index, stx) in block.txs.iter().enumerate() {
                let hash = stx.hash();
                let vtx = if check_signatures {
                    stx.clone()
                        .into_verified()
                        .map_err(|source| ChainError::TxSignature {
                            height,
                            index,
                            hash,
                            source,
                        })?
                } else {
                    VerifiedTx::trusted(stx.clone())
                };
                let ev = state.apply(&vtx).map_err(|source| ChainError::TxRejected {
                    height,
                    index,
                    hash,
                    source: Box::new(source),
                })?;
                events.extend(ev);
            }
            if check_signatures && recorded.get(i).map(|r| &r.events) != Some(&events) {
                return Err(ChainError::Events { height });
            }
            txs += block.txs.len() as u64;
            head = block.hash();
            next += 1;
            progress(height, target);
        }
    }
    Ok(Replayed {
        genesis,
        state,
        head,
        blocks: next - 1,
        txs,
    })
}

/// The state after a durable block, with the chain's genesis and that block's hash:
/// what queries answer from.
#[derive(Clone)]
pub struct Snapshot {
    genesis: Arc<Genesis>,
    state: State,
    head: Hash,
}

impl Snapshot {
    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    pub fn head(&self) -> Hash {
        self.head
    }

    /// Applies a block this chain committed (its transactions all applied then).
    fn replay_block(&mut self, block: &Block) -> Result<(), TxError> {
        self.state
            .begin_block(block.header.height, block.header.time);
        for stx in &block.txs {
            self.state.apply(&VerifiedTx::trusted(stx.clone()))?;
        }
        self.head = block.hash();
        Ok(())
    }
}

/// The latest published [`Snapshot`], for readers on any thread. Loading one takes a
/// lock held only to copy a pointer; it never waits for a block to be written.
#[derive(Clone)]
pub struct View(Arc<RwLock<Arc<Snapshot>>>);

impl View {
    fn new(s: Arc<Snapshot>) -> Self {
        View(Arc::new(RwLock::new(s)))
    }

    /// The state after the last durable block.
    pub fn load(&self) -> Arc<Snapshot> {
        // Only a pointer is ever written under this lock; a poisoned one holds a
        // complete snapshot all the same.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn publish(&self, s: Arc<Snapshot>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = s;
    }
}

/// The working copy `spare`, brought up to `current` by replaying the block it lacks.
fn working<'a>(
    spare: &'a mut Arc<Snapshot>,
    lag: &mut Option<Block>,
    current: &Snapshot,
) -> &'a mut Snapshot {
    // Clones only when a reader still holds the snapshot published before.
    let work = Arc::make_mut(spare);
    if let Some(block) = lag.take() {
        if work.replay_block(&block).is_err() {
            // Cannot happen: the block applied to the same state before. Fall back
            // to a copy rather than commit on a state that differs.
            *work = current.clone();
        }
    }
    work
}

pub struct Chain {
    store: Arc<dyn Store>,
    key: SigningKey,
    /// Durable and published: what [`Chain::state`] and the view answer from.
    current: Arc<Snapshot>,
    /// The committer's working copy: `current` itself, or the copy published
    /// before it, which lacks the block in `lag`.
    spare: Arc<Snapshot>,
    lag: Option<Block>,
    view: View,
}

impl Chain {
    /// Opens the chain in `store`, creating its genesis with `params` if the store is
    /// empty. An existing chain must be signed by `key` and carry the same chain id.
    pub fn open(
        store: Arc<dyn Store>,
        key: SigningKey,
        params: ChainParams,
        now: u64,
    ) -> Result<Chain, ChainError> {
        let pk = PublicKey(key.verifying_key().to_bytes());
        match store.genesis()? {
            None => {
                let genesis = Genesis {
                    params,
                    ledger_key: pk,
                    time: now,
                };
                store.init(&genesis)?;
            }
            Some(g) => {
                if g.ledger_key != pk {
                    return Err(ChainError::WrongKey {
                        store: g.ledger_key,
                        key: pk,
                    });
                }
                if g.params.chain_id != params.chain_id {
                    return Err(ChainError::WrongChainId {
                        store: g.params.chain_id,
                        wanted: params.chain_id,
                    });
                }
            }
        }
        let r = replay(store.as_ref(), false, &mut |_, _| {})?;
        let current = Arc::new(Snapshot {
            genesis: Arc::new(r.genesis),
            state: r.state,
            head: r.head,
        });
        Ok(Chain {
            store,
            key,
            spare: current.clone(),
            view: View::new(current.clone()),
            current,
            lag: None,
        })
    }

    pub fn state(&self) -> &State {
        &self.current.state
    }

    pub fn genesis(&self) -> &Genesis {
        &self.current.genesis
    }

    pub fn head(&self) -> Hash {
        self.current.head
    }

    /// A handle on the published state for readers (see the module docs).
    pub fn view(&self) -> View {
        self.view.clone()
    }

    /// Resets both copies to what the store holds, after a failed append.
    fn reload(&mut self) -> Result<(), ChainError> {
        self.spare = self.current.clone();
        self.lag = None;
        let r = replay(self.store.as_ref(), false, &mut |_, _| {})?;
        self.current = Arc::new(Snapshot {
            genesis: self.current.genesis.clone(),
            state: r.state,
            head: r.head,
        });
        self.spare = self.current.clone();
        self.view.publish(self.current.clone());
        Ok(())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Applies a batch at ledger time `now` and commits the accepted transactions
    /// as one block. Returns one result per transaction, in order. A store failure
    /// fails the whole batch (nothing was acknowledged) and resets the state to
    /// what is on disk.
    pub fn commit(
        &mut self,
        batch: Vec<VerifiedTx>,
        now: u64,
    ) -> Result<Vec<Result<Receipt, TxError>>, ChainError> {
        let work = working(&mut self.spare, &mut self.lag, &self.current);
        let (prev_height, prev_time) = (work.state.height(), work.state.time());
        let height = prev_height + 1;
        let mut events = work.state.begin_block(height, now);
        let time = work.state.time();
        let mut results = Vec::with_capacity(batch.len());
        let mut included = Vec::with_capacity(batch.len());
        for vtx in batch {
            match work.state.apply(&vtx) {
                Ok(ev) => {
                    events.extend(ev.iter().cloned());
                    results.push(Ok(Receipt {
                        hash: vtx.get().hash(),
                        height,
                        events: ev,
                    }));
                    included.push(vtx.into_inner());
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if included.is_empty() && events.is_empty() {
            // Nothing happened: no block.
            work.state.abandon_block(prev_height, prev_time);
            return Ok(results);
        }
        let block = Block::seal(height, work.head, time, included, &self.key);
        work.head = block.hash();
        let record = BlockEvents {
            height,
            time,
            events,
        };
        // Readers keep answering from `current` while this fsyncs.
        if let Err(e) = self.store.append(&block, &record) {
            // The working copy ran ahead of the disk: rebuild from what is durable.
            self.reload()?;
            return Err(e.into());
        }
        std::mem::swap(&mut self.current, &mut self.spare);
        self.view.publish(self.current.clone());
        self.lag = Some(block);
        Ok(results)
    }

    /// Commits an empty block when time alone changes the state (a grace period
    /// ran out). Returns whether a block was written.
    pub fn tick(&mut self, now: u64) -> Result<bool, ChainError> {
        let before = self.state().height();
        self.commit(Vec::new(), now)?;
        Ok(self.state().height() != before)
    }
}
