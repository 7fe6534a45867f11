//! Blocks: transactions committed together, hash-chained and signed by the ledger.
//!
//! The genesis record fixes the chain parameters and the ledger's key; block 1
//! points at the genesis hash and every later block at its predecessor. A block
//! header commits to its transactions through `tx_root` (BLAKE3 over the
//! concatenated transaction hashes), and the ledger signs the header's hash, so a
//! verifier needs nothing but the blocks to check the whole history.

use ed25519_dalek::{Signer as _, SigningKey};
use serde::{Deserialize, Serialize};

use crate::tx::{encode, verify_sig, SignedTx};
use crate::types::*;

const GENESIS_DOMAIN: &[u8] = b"cellos-genesis-v1\0";
const BLOCK_DOMAIN: &[u8] = b"cellos-block-v1\0";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    pub params: ChainParams,
    /// The key every block is signed with.
    pub ledger_key: PublicKey,
    pub time: u64,
}

impl Genesis {
    pub fn hash(&self) -> Hash {
        Hash::of(&encode(GENESIS_DOMAIN, self))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockHeader {
    pub height: u64,
    pub prev_hash: Hash,
    /// Ledger time (Unix seconds) the block's transactions are applied at.
    pub time: u64,
    pub tx_count: u32,
    pub tx_root: Hash,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    pub header: BlockHeader,
    pub txs: Vec<SignedTx>,
    pub signature: Signature,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("block {height}: expected height {want}")]
    Height { height: u64, want: u64 },
    #[error("block {height}: previous hash {got} does not match {want}")]
    PrevHash { height: u64, got: Hash, want: Hash },
    #[error("block {height}: transaction root does not match its {count} transactions")]
    TxRoot { height: u64, count: usize },
    #[error("block {height}: the ledger's signature does not verify")]
    Signature { height: u64 },
    #[error("block {height}: time {time} is before the previous block's {prev}")]
    TimeBackwards { height: u64, time: u64, prev: u64 },
}

pub fn tx_root(txs: &[SignedTx]) -> Hash {
    let mut h = blake3::Hasher::new();
    for t in txs {
        h.update(&t.hash().0);
    }
    Hash(*h.finalize().as_bytes())
}

impl BlockHeader {
    pub fn hash(&self) -> Hash {
        Hash::of(&encode(BLOCK_DOMAIN, self))
    }
}

impl Block {
    pub fn seal(
        height: u64,
        prev_hash: Hash,
        time: u64,
        txs: Vec<SignedTx>,
        key: &SigningKey,
    ) -> Block {
        let header = BlockHeader {
            height,
            prev_hash,
            time,
            tx_count: u32::try_from(txs.len()).unwrap_or(u32::MAX),
            tx_root: tx_root(&txs),
        };
        let signature = Signature(key.sign(&header.hash().0).to_bytes());
        Block {
            header,
            txs,
            signature,
        }
    }

    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    /// Checks the link to the previous block, the transaction root and the ledger's
    /// signature. Transaction signatures and state transitions are checked by replay.
    pub fn check(
        &self,
        want_height: u64,
        prev: Hash,
        prev_time: u64,
        ledger: &PublicKey,
    ) -> Result<(), BlockError> {
        let h = &self.header;
        if h.height != want_height {
            return Err(BlockError::Height {
                height: h.height,
                want: want_height,
            });
        }
        if h.prev_hash != prev {
            return Err(BlockError::PrevHash {
                height: h.height,
                got: h.prev_hash,
                want: prev,
            });
        }
        if h.time < prev_time {
            return Err(BlockError::TimeBackwards {
                height: h.height,
                time: h.time,
                prev: prev_time,
            });
        }
        if h.tx_count as usize != self.txs.len() || tx_root(&self.txs) != h.tx_root {
            return Err(BlockError::TxRoot {
                height: h.height,
                count: self.txs.len(),
            });
        }
        verify_sig(ledger, &h.hash().0, &self.signature)
            .map_err(|_| BlockError::Signature { height: h.height })
    }
}

/// A block's transactions' outcomes, kept beside the block for watchers. They are
/// derived data: replay recomputes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEvents {
    pub height: u64,
    pub time: u64,
    /// Events of the block's start (grace-period closes), then of each transaction.
    pub events: Vec<crate::state::Event>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_checks() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let pk = PublicKey(key.verifying_key().to_bytes());
        let g = Genesis {
            params: ChainParams::new("t", true),
            ledger_key: pk,
            time: 10,
        };
        let b1 = Block::seal(1, g.hash(), 11, vec![], &key);
        assert!(b1.check(1, g.hash(), 10, &pk).is_ok());
        assert!(matches!(
            b1.check(2, g.hash(), 10, &pk),
            Err(BlockError::Height { .. })
        ));
        assert!(matches!(
            b1.check(1, Hash([0; 32]), 10, &pk),
            Err(BlockError::PrevHash { .. })
        ));
        assert!(matches!(
            b1.check(1, g.hash(), 12, &pk),
            Err(BlockError::TimeBackwards { .. })
        ));
        let mut forged = b1.clone();
        forged.header.time = 12;
        assert_eq!(
            forged.check(1, g.hash(), 10, &pk),
            Err(BlockError::Signature { height: 1 })
        );
        let other = PublicKey(SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes());
        assert!(b1.check(1, g.hash(), 10, &other).is_err());
    }
}
