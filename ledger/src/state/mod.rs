//! The deterministic state machine.
//!
//! `State` is a pure function of the genesis parameters and the sequence of blocks:
//! given the same block times and transactions it reaches the same state on every
//! machine, which is what `cellos ledger verify` relies on. There is no clock and no
//! randomness in here; time comes from the block header, and only [`State::begin_block`]
//! moves it.
//!
//! Each transaction handler checks everything first and mutates only when the whole
//! transaction is known to succeed, so a rejected transaction leaves no trace (the
//! block producer drops it, and the signer's nonce does not move). The handlers live
//! with the entity they act on: [`accounts`], [`farms`], [`nodes`], [`contracts`]
//! and [`billing`], each an `impl State` block; this module holds the state itself,
//! its queries and the dispatch.

mod accounts;
mod billing;
mod contracts;
mod error;
mod event;
mod farms;
mod nodes;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::tx::{TxBody, VerifiedTx};
use crate::types::*;

pub use error::TxError;
pub use event::Event;

/// The whole ledger state. Ordered maps only, so its encoding (and [`State::digest`])
/// is deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub params: ChainParams,
    /// Time of the last block applied.
    time: u64,
    /// Height of the last block applied.
    height: u64,
    /// All the money there is: every balance and every escrow together. The faucet
    /// never mints past `Amount::MAX`, so no sum of balances and escrows can
    /// overflow (DESIGN §9, checked arithmetic).
    supply: Amount,
    accounts: BTreeMap<PublicKey, Account>,
    farms: BTreeMap<FarmId, Farm>,
    farm_names: BTreeMap<String, FarmId>,
    nodes: BTreeMap<NodeId, Node>,
    node_keys: BTreeMap<PublicKey, NodeId>,
    contracts: BTreeMap<ContractId, Contract>,
    /// Open contracts per node, for queries and for closing them with the node.
    node_contracts: BTreeMap<NodeId, BTreeSet<ContractId>>,
    suspended: BTreeSet<ContractId>,
    next_farm: FarmId,
    next_node: NodeId,
    next_contract: ContractId,
}

fn add(a: Amount, b: Amount, what: &'static str) -> Result<Amount, TxError> {
    a.checked_add(b).ok_or(TxError::Overflow(what))
}

impl State {
    /// The state at genesis: no block yet, ledger time `time`.
    pub fn new(params: ChainParams, time: u64) -> Self {
        State {
            params,
            time,
            height: 0,
            supply: 0,
            accounts: BTreeMap::new(),
            farms: BTreeMap::new(),
            farm_names: BTreeMap::new(),
            nodes: BTreeMap::new(),
            node_keys: BTreeMap::new(),
            contracts: BTreeMap::new(),
            node_contracts: BTreeMap::new(),
            suspended: BTreeSet::new(),
            next_farm: 1,
            next_node: 1,
            next_contract: 1,
        }
    }

    /// BLAKE3 over the canonical encoding of the whole state.
    pub fn digest(&self) -> Hash {
        match postcard::to_stdvec(self) {
            Ok(bytes) => Hash::of(&bytes),
            Err(e) => unreachable!("postcard cannot encode the state: {e}"),
        }
    }

    /// Ledger time: the time of the last block applied (of the genesis before any).
    pub fn time(&self) -> u64 {
        self.time
    }

    /// Height of the last block applied (0 at genesis).
    pub fn height(&self) -> u64 {
        self.height
    }

    // ---- queries -------------------------------------------------------------

    pub fn account(&self, k: &PublicKey) -> Option<&Account> {
        self.accounts.get(k)
    }
    /// All the money minted so far (every balance and escrow together).
    pub fn supply(&self) -> Amount {
        self.supply
    }
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }
    pub fn farm(&self, id: FarmId) -> Option<&Farm> {
        self.farms.get(&id)
    }
    pub fn farms(&self) -> impl Iterator<Item = &Farm> {
        self.farms.values()
    }
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id)
    }
    pub fn node_by_key(&self, k: &PublicKey) -> Option<&Node> {
        self.node_keys.get(k).and_then(|id| self.nodes.get(id))
    }
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }
    pub fn contract(&self, id: ContractId) -> Option<&Contract> {
        self.contracts.get(&id)
    }
    pub fn contracts(&self) -> impl Iterator<Item = &Contract> {
        self.contracts.values()
    }
    /// Contracts on a node that are not closed.
    pub fn open_contracts_on(&self, node: NodeId) -> impl Iterator<Item = &Contract> {
        self.node_contracts
            .get(&node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.contracts.get(id))
    }

    // ---- blocks ---------------------------------------------------------------

    /// Starts a block at `time`: closes suspended contracts whose grace period ran
    /// out. Block times never go backwards; an earlier time is taken as `self.time`.
    pub fn begin_block(&mut self, height: u64, time: u64) -> Vec<Event> {
        self.height = height;
        self.time = self.time.max(time);
        self.expire_grace()
    }

    /// Takes back a [`State::begin_block`] that closed nothing, for a block that is
    /// not written after all (it would have held nothing): height and time return to
    /// what they were, which is all such a block changed.
    pub(crate) fn abandon_block(&mut self, height: u64, time: u64) {
        self.height = height;
        self.time = time;
    }

    /// Applies one signature-checked transaction at the current block time.
    pub fn apply(&mut self, vtx: &VerifiedTx) -> Result<Vec<Event>, TxError> {
        let tx = &vtx.get().tx;
        if tx.chain_id != self.params.chain_id {
            return Err(TxError::WrongChain {
                got: tx.chain_id.clone(),
                want: self.params.chain_id.clone(),
            });
        }
        let last = self.accounts.get(&tx.signer).map_or(0, |a| a.nonce);
        if tx.nonce <= last {
            return Err(TxError::StaleNonce {
                got: tx.nonce,
                last,
            });
        }
        let signer = tx.signer;
        // Transactions that may come from a key with no account yet: a node's first
        // registration, and on a dev ledger the faucet (which opens the account).
        let may_create = matches!(tx.body, TxBody::Faucet { .. } | TxBody::RegisterNode { .. });
        if !may_create && !self.accounts.contains_key(&signer) {
            return Err(TxError::NoAccount(signer));
        }
        let events = self.dispatch(signer, &tx.body)?;
        // The handler succeeded; the account exists now in every case.
        if let Some(acct) = self.accounts.get_mut(&signer) {
            acct.nonce = tx.nonce;
        }
        Ok(events)
    }

    fn dispatch(&mut self, signer: PublicKey, body: &TxBody) -> Result<Vec<Event>, TxError> {
        match body {
            TxBody::CreateAccount { encryption_key } => {
                self.create_account(signer, *encryption_key)
            }
            TxBody::Faucet { amount } => self.faucet(signer, *amount),
            TxBody::Transfer { to, amount } => self.transfer(signer, *to, *amount),
            TxBody::CreateFarm {
                name,
                prices,
                enrollment_key,
            } => self.create_farm(signer, name, *prices, *enrollment_key),
            TxBody::AddFarmIp { farm, ip, gateway } => self.add_farm_ip(signer, *farm, ip, gateway),
            TxBody::RemoveFarmIp { farm, ip } => self.remove_farm_ip(signer, *farm, ip),
            TxBody::RegisterNode {
                farm,
                capacity,
                interfaces,
                gpus,
                accel,
                encryption_key,
                location,
                enrollment,
                persistent,
            } => self.register_node(
                signer,
                nodes::NewNode {
                    farm: *farm,
                    described: nodes::Described {
                        capacity: *capacity,
                        interfaces,
                        gpus,
                        accel: *accel,
                        encryption_key: *encryption_key,
                        persistent: *persistent,
                    },
                    location: location.as_deref(),
                    enrollment: enrollment.as_ref(),
                },
            ),
            TxBody::ApproveNode { node } => self.approve_node(signer, *node),
            TxBody::RemoveNode { node } => self.remove_node(signer, *node),
            TxBody::UpdateNode {
                node,
                capacity,
                interfaces,
                gpus,
                accel,
                encryption_key,
                persistent,
            } => self.update_node(
                signer,
                *node,
                nodes::Described {
                    capacity: *capacity,
                    interfaces,
                    gpus,
                    accel: *accel,
                    encryption_key: *encryption_key,
                    persistent: *persistent,
                },
            ),
            TxBody::ReportUptime {
                node,
                timestamp,
                uptime_secs,
            } => self.report_uptime(signer, *node, *timestamp, *uptime_secs),
            TxBody::SetNodeStatus { node, status } => self.set_node_status(signer, *node, *status),
            TxBody::CreateContract {
                node,
                deployment_hash,
                resources,
                public_ips,
                deposit,
                blob,
            } => self.create_contract(
                signer,
                contracts::NewContract {
                    node_id: *node,
                    deployment_hash: *deployment_hash,
                    resources: *resources,
                    ips: *public_ips,
                    deposit: *deposit,
                    blob: *blob,
                },
            ),
            TxBody::AcceptContract {
                contract,
                deployment_hash,
                result,
            } => self.accept_contract(signer, *contract, *deployment_hash, *result),
            TxBody::RejectContract { contract, reason } => {
                self.reject_contract(signer, *contract, reason)
            }
            TxBody::UpdateContract {
                contract,
                deployment_hash,
                resources,
                blob,
            } => self.update_contract(signer, *contract, *deployment_hash, *resources, *blob),
            TxBody::TopUp { contract, amount } => self.top_up(signer, *contract, *amount),
            TxBody::ReportUsage {
                contract,
                window_start,
                window_end,
                nu_bytes,
                cpu_usec,
                memory_bytes,
            } => self.report_usage(
                signer,
                *contract,
                billing::Usage {
                    start: *window_start,
                    end: *window_end,
                    nu_bytes: *nu_bytes,
                    cpu_usec: *cpu_usec,
                    memory_bytes: *memory_bytes,
                },
            ),
            TxBody::CancelContract { contract } => self.cancel_contract(signer, *contract),
        }
    }
}
