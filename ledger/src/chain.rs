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
//! On a replicated store other ledger servers append too. [`Chain::follow`] applies
//! the blocks they wrote, from this chain's height on (never the whole chain). An
//! append that fails (another server took the height, or the store failed) drops
//! the working copy, goes back to the last published state and follows the store
//! from there, so the state never runs ahead of the log, and never behind it for
//! long.
//!
//! [`replay`] rebuilds a state from blocks; with `check_signatures` it is also the
//! verifier: every hash link, every ledger and transaction signature, every
//! transaction's success and every recorded event are checked again, and the
//! store's state snapshot against the replayed state. Start-up begins from that
//! snapshot when it checks out ([`StateSnapshot`]), so it replays only the blocks
//! written since.

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
    #[error("block {height} in the store does not apply to this server's state")]
    Follow {
        height: u64,
        #[source]
        source: Box<TxError>,
    },
    #[error(
        "the store's state snapshot at block {height} is not the state the chain leads to there"
    )]
    Snapshot { height: u64 },
    #[error("the store has no genesis record: it holds no chain")]
    NoGenesis,
    #[error("the store's chain is signed by {store}, but this ledger's key is {key}")]
    WrongKey { store: PublicKey, key: PublicKey },
    #[error("the store's chain id is {store:?}, but {wanted:?} was asked for")]
    WrongChainId { store: String, wanted: String },
}

impl ChainError {
    /// Another ledger server committed the block this one tried to; the chain has
    /// followed it, and the same transactions may be tried again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ChainError::Store(StoreError::Conflict { .. }))
    }
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

/// A state saved at a block (the server writes one every N blocks), so that start-up
/// replays only the blocks after it. It is never trusted alone: start-up takes it
/// only when its bytes hash to its digest, it belongs to this chain and the store's
/// block at its height is the one it names, and then applies every block after it
/// link by link; `cellos ledger verify` replays the whole chain and requires the
/// state at that height to have the snapshot's digest.
#[derive(Debug, Serialize, Deserialize)]
pub struct StateSnapshot {
    pub height: u64,
    /// Hash of the block at `height`.
    pub head: Hash,
    /// [`State::digest`] of the state: the hash of `state`.
    pub digest: Hash,
    /// The state after block `height`, postcard-encoded.
    pub state: Vec<u8>,
}

/// Saves the state `s` as the store's snapshot (see [`StateSnapshot`]).
pub fn save_snapshot(store: &dyn Store, s: &Snapshot) -> Result<(), ChainError> {
    let encode = |e: postcard::Error| ChainError::Store(StoreError::Io(Box::new(e)));
    let state = postcard::to_stdvec(&s.state).map_err(encode)?;
    let record = StateSnapshot {
        height: s.state.height(),
        head: s.head,
        digest: Hash::of(&state),
        state,
    };
    let bytes = postcard::to_stdvec(&record).map_err(encode)?;
    Ok(store.put_snapshot(&bytes)?)
}

/// The store's snapshot as a state to start from, with the hash of its block, if it
/// checks out (see [`StateSnapshot`]); `None` sends start-up back to the genesis.
fn usable_snapshot(store: &dyn Store, genesis: &Genesis) -> Option<(State, Hash)> {
    let s: StateSnapshot = postcard::from_bytes(&store.snapshot().ok()??).ok()?;
    if s.height == 0 || Hash::of(&s.state) != s.digest {
        return None;
    }
    let state: State = postcard::from_bytes(&s.state).ok()?;
    if state.height() != s.height || state.params != genesis.params {
        return None;
    }
    let block = store.blocks(s.height, 1).ok()?.into_iter().next()?;
    (block.header.height == s.height && block.hash() == s.head).then_some((state, s.head))
}

/// Rebuilds the state from the store's blocks. With `check_signatures` it verifies
/// every signature too (`cellos ledger verify`), and the state snapshot start-up
/// would take against the replayed state (one it would not take is no risk: a
/// damaged one, or one an accepted rollback left beyond the chain); without, it
/// trusts blocks this ledger wrote itself.
pub fn replay(
    store: &dyn Store,
    check_signatures: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Replayed, ChainError> {
    let genesis = store.genesis()?.ok_or(ChainError::NoGenesis)?;
    let saved = if check_signatures {
        usable_snapshot(store, &genesis).map(|(state, _)| (state.height(), state.digest()))
    } else {
        None
    };
    let state = State::new(genesis.params.clone(), genesis.time);
    let head = genesis.hash();
    apply_blocks(
        store,
        genesis,
        state,
        head,
        check_signatures,
        saved,
        progress,
    )
}

/// Start-up: the state from the store's snapshot, if one checks out, and the blocks
/// after it (trusted: this ledger wrote them); from the genesis otherwise. Returns
/// the replay and the height it started from.
fn resume(store: &dyn Store) -> Result<(Replayed, u64), ChainError> {
    let genesis = store.genesis()?.ok_or(ChainError::NoGenesis)?;
    let (state, head) = usable_snapshot(store, &genesis).unwrap_or_else(|| {
        (
            State::new(genesis.params.clone(), genesis.time),
            genesis.hash(),
        )
    });
    let from = state.height();
    let r = apply_blocks(store, genesis, state, head, false, None, &mut |_, _| {})?;
    Ok((r, from))
}

/// Applies the store's blocks after `state` (whose last block is `head`); with
/// `check_signatures`, checks every signature and recorded event, and that the
/// state at `saved`'s height has its digest.
fn apply_blocks(
    store: &dyn Store,
    genesis: Genesis,
    mut state: State,
    mut head: Hash,
    check_signatures: bool,
    saved: Option<(u64, Hash)>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Replayed, ChainError> {
    let target = store.height()?;
    let mut next = state.height() + 1;
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
            match saved {
                Some((at, digest)) if at == height && digest != state.digest() => {
                    return Err(ChainError::Snapshot { height });
                }
                _ => {}
            }
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

    /// Applies a block that applied to this state before (this chain committed it,
    /// or checked it in [`Chain::follow`]).
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

/// The working copy `spare`, brought up to `current` by replaying the blocks it lacks.
fn working<'a>(
    spare: &'a mut Arc<Snapshot>,
    lag: &mut Vec<Block>,
    current: &Snapshot,
) -> &'a mut Snapshot {
    // Clones only when a reader still holds the snapshot published before.
    let work = Arc::make_mut(spare);
    for block in lag.drain(..) {
        // Cannot fail: the block applied to the same state before.
        if work.replay_block(&block).is_err() {
            break;
        }
    }
    if work.head != current.head {
        // Should it have failed: a copy, rather than commit on a state that differs.
        *work = current.clone();
    }
    work
}

pub struct Chain {
    store: Arc<dyn Store>,
    key: SigningKey,
    /// Durable and published: what [`Chain::state`] and the view answer from.
    current: Arc<Snapshot>,
    /// The committer's working copy: `current` itself, or the copy published
    /// before it, which lacks the blocks in `lag`.
    spare: Arc<Snapshot>,
    lag: Vec<Block>,
    view: View,
    resumed_from: u64,
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
        let mut found = store.genesis()?;
        if found.is_none() {
            let genesis = Genesis {
                params: params.clone(),
                ledger_key: pk,
                time: now,
            };
            match store.init(&genesis) {
                Ok(()) => {}
                // Another ledger server on the same replicated store was first: its
                // genesis is the chain's, checked below like any existing one.
                Err(StoreError::AlreadyInitialized) => found = store.genesis()?,
                Err(e) => return Err(e.into()),
            }
        }
        match found {
            None => {}
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
        let (r, resumed_from) = resume(store.as_ref())?;
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
            lag: Vec::new(),
            resumed_from,
        })
    }

    /// The height of the snapshot start-up began from (0: the genesis).
    pub fn resumed_from(&self) -> u64 {
        self.resumed_from
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

    /// Drops the working copy (it ran ahead of the store): the next commit or
    /// follow starts again from a copy of the published state.
    fn rewind(&mut self) {
        self.spare = self.current.clone();
        self.lag.clear();
    }

    /// Applies the blocks the store holds above this chain's height (appended by
    /// other ledger servers on a replicated store, or by an append whose answer was
    /// an error), checking each block's link and signature, and publishes the
    /// state after them. Returns how many blocks it applied.
    pub fn follow(&mut self) -> Result<u64, ChainError> {
        const PAGE: usize = 256;
        let mut applied = 0u64;
        loop {
            let next = self.current.state.height() + 1;
            let blocks = self.store.blocks(next, PAGE)?;
            if blocks.is_empty() {
                return Ok(applied);
            }
            let key = self.current.genesis.ledger_key;
            let work = working(&mut self.spare, &mut self.lag, &self.current);
            let mut failed = None;
            for (i, block) in blocks.iter().enumerate() {
                let height = block.header.height;
                if let Err(e) = block.check(next + i as u64, work.head, work.state.time(), &key) {
                    failed = Some(e.into());
                    break;
                }
                if let Err(e) = work.replay_block(block) {
                    failed = Some(ChainError::Follow {
                        height,
                        source: Box::new(e),
                    });
                    break;
                }
            }
            if let Some(e) = failed {
                // The working copy is partly applied: drop it.
                self.rewind();
                return Err(e);
            }
            let done = blocks;
            applied += done.len() as u64;
            std::mem::swap(&mut self.current, &mut self.spare);
            self.view.publish(self.current.clone());
            self.lag = done;
        }
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
            // The working copy ran ahead of the store: go back to what is durable
            // and take what the store holds beyond it (another server's block, or
            // this one if it was written after all). Should following fail too, the
            // state stays at the last durable block and the next commit follows
            // again (its append fails first, out of order or in conflict).
            self.rewind();
            let _ = self.follow();
            return Err(e.into());
        }
        std::mem::swap(&mut self.current, &mut self.spare);
        self.view.publish(self.current.clone());
        self.lag = vec![block];
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
