//! The deterministic state machine.
//!
//! `State` is a pure function of the genesis parameters and the sequence of blocks:
//! given the same block times and transactions it reaches the same state on every
//! machine, which is what `cellos ledger verify` relies on. There is no clock and no
//! randomness in here; time comes from the block header.
//!
//! Each transaction handler checks everything first and mutates only when the whole
//! transaction is known to succeed, so a rejected transaction leaves no trace (the
//! block producer drops it, and the signer's nonce does not move).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::tx::{TxBody, VerifiedTx};
use crate::types::*;

/// Something that happened, for watchers (a node follows the events naming it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    AccountCreated {
        account: PublicKey,
    },
    Transferred {
        from: Option<PublicKey>,
        to: PublicKey,
        amount: Amount,
    },
    FarmCreated {
        farm: FarmId,
        name: String,
    },
    FarmIpAdded {
        farm: FarmId,
        ip: String,
    },
    FarmIpRemoved {
        farm: FarmId,
        ip: String,
    },
    NodeRegistered {
        node: NodeId,
        farm: FarmId,
        approved: bool,
    },
    NodeApproved {
        node: NodeId,
    },
    NodeUpdated {
        node: NodeId,
    },
    NodeUptime {
        node: NodeId,
    },
    NodeStatusChanged {
        node: NodeId,
        status: NodeStatus,
    },
    NodeRemoved {
        node: NodeId,
    },
    ContractCreated {
        contract: ContractId,
        node: NodeId,
    },
    ContractAccepted {
        contract: ContractId,
        node: NodeId,
        deployment_hash: Hash,
    },
    ContractUpdated {
        contract: ContractId,
        node: NodeId,
    },
    ContractToppedUp {
        contract: ContractId,
        node: NodeId,
        amount: Amount,
    },
    ContractBilled {
        contract: ContractId,
        node: NodeId,
        amount: Amount,
        until: u64,
    },
    ContractSuspended {
        contract: ContractId,
        node: NodeId,
    },
    ContractResumed {
        contract: ContractId,
        node: NodeId,
    },
    ContractClosed {
        contract: ContractId,
        node: NodeId,
        state: ContractState,
        refund: Amount,
    },
    /// CreateAccount recorded the account's encryption key.
    AccountKeySet {
        account: PublicKey,
    },
}

impl Event {
    /// The node this event concerns, if any.
    pub fn node(&self) -> Option<NodeId> {
        use Event::*;
        match self {
            NodeRegistered { node, .. }
            | NodeApproved { node }
            | NodeUpdated { node }
            | NodeUptime { node }
            | NodeStatusChanged { node, .. }
            | NodeRemoved { node }
            | ContractCreated { node, .. }
            | ContractAccepted { node, .. }
            | ContractUpdated { node, .. }
            | ContractToppedUp { node, .. }
            | ContractBilled { node, .. }
            | ContractSuspended { node, .. }
            | ContractResumed { node, .. }
            | ContractClosed { node, .. } => Some(*node),
            _ => None,
        }
    }

    /// The contract this event concerns, if any.
    pub fn contract(&self) -> Option<ContractId> {
        use Event::*;
        match self {
            ContractCreated { contract, .. }
            | ContractAccepted { contract, .. }
            | ContractUpdated { contract, .. }
            | ContractToppedUp { contract, .. }
            | ContractBilled { contract, .. }
            | ContractSuspended { contract, .. }
            | ContractResumed { contract, .. }
            | ContractClosed { contract, .. } => Some(*contract),
            _ => None,
        }
    }
}

/// Why a transaction was rejected. Messages name the entity and the numbers involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("transaction is for chain {got:?}, this ledger is {want:?}")]
    WrongChain { got: String, want: String },
    #[error("nonce {got} is not above the signer's last nonce {last} (replayed or out of order)")]
    StaleNonce { got: u64, last: u64 },
    #[error(
        "account {0} does not exist: an account is opened by a transfer of at least {EXISTENTIAL_DEPOSIT} to its key (on a dev ledger, by a faucet of at least that)"
    )]
    NoAccount(PublicKey),
    #[error(
        "{amount} is below the existential deposit of {EXISTENTIAL_DEPOSIT}, so it cannot open account {account}"
    )]
    BelowExistentialDeposit { account: PublicKey, amount: Amount },
    #[error("the faucet is only available in dev mode")]
    FaucetDisabled,
    #[error("faucet amount {got} is above the limit {max}")]
    FaucetTooMuch { got: Amount, max: Amount },
    #[error("amount must be above zero")]
    ZeroAmount,
    #[error(
        "insufficient balance: have {have}, need {need} (the amount plus the existential deposit of {EXISTENTIAL_DEPOSIT} that stays in every account)"
    )]
    InsufficientBalance { have: Amount, need: Amount },
    #[error("farm {0} does not exist")]
    NoFarm(FarmId),
    #[error("farm name {0:?} is already taken")]
    FarmNameTaken(String),
    #[error("bad farm name {0:?}: 1 to 64 characters of a-z, A-Z, 0-9, '-', '_' and '.'")]
    BadFarmName(String),
    #[error("signer is not the owner of farm {0}")]
    NotFarmOwner(FarmId),
    #[error("bad IP {ip:?}: {reason}")]
    BadIp { ip: String, reason: String },
    #[error("IP {ip} is already on farm {farm}")]
    IpExists { farm: FarmId, ip: String },
    #[error("IP {ip} is not on farm {farm}")]
    NoIp { farm: FarmId, ip: String },
    #[error("IP {ip} is leased by contract {contract}")]
    IpLeased { ip: String, contract: ContractId },
    #[error("node key {key} is already registered as node {node}")]
    NodeKeyTaken { key: PublicKey, node: NodeId },
    #[error(
        "node key {key} belonged to node {node}, which is decommissioned; its key never registers again (give the machine a new identity: wipe its state disk)"
    )]
    NodeKeyRetired { key: PublicKey, node: NodeId },
    #[error("node {0} is decommissioned, and decommissioning is final")]
    NodeDecommissioned(NodeId),
    #[error("node {0} does not exist")]
    NoNode(NodeId),
    #[error("signer is not node {0}")]
    NotTheNode(NodeId),
    #[error("signer is neither node {0} nor the owner of its farm")]
    NotNodeOrFarmer(NodeId),
    #[error("node {0} is already approved")]
    AlreadyApproved(NodeId),
    #[error("node {0} is not approved by its farmer")]
    NodeNotApproved(NodeId),
    #[error("node {node} is {status}, not up")]
    NodeNotUp { node: NodeId, status: NodeStatus },
    #[error("node {0} keeps its state in RAM (no SSD) and takes no contracts")]
    NodeNotPersistent(NodeId),
    #[error("enrollment token is for farm {token}, not farm {farm}")]
    EnrollWrongFarm { token: FarmId, farm: FarmId },
    #[error("enrollment token expired at {expires} (ledger time {now})")]
    EnrollExpired { expires: u64, now: u64 },
    #[error("farm {0} has no enrollment key, so it accepts no enrollment token")]
    EnrollNotAccepted(FarmId),
    #[error("enrollment token signature is not valid for farm {0}")]
    EnrollBadSignature(FarmId),
    #[error("uptime timestamp {got} is more than {skew} s from ledger time {now}")]
    UptimeSkew { got: u64, now: u64, skew: u64 },
    #[error("use RemoveNode to decommission a node")]
    UseRemoveNode,
    #[error("contract {0} does not exist")]
    NoContract(ContractId),
    #[error("the reservation is empty: a contract must reserve some capacity or an IP")]
    EmptyReservation,
    #[error("node {node} has not enough free capacity: free {free}, asked {asked}")]
    OverCapacity {
        node: NodeId,
        free: Resources,
        asked: Resources,
    },
    #[error("farm {farm} has {free} free public IPs, the contract asks {asked}")]
    NotEnoughIps {
        farm: FarmId,
        free: usize,
        asked: u32,
    },
    #[error("deposit {deposit} does not cover one hour at {per_hour} per hour")]
    DepositTooSmall { deposit: Amount, per_hour: Amount },
    #[error("signer is not the owner of contract {0}")]
    NotContractOwner(ContractId),
    #[error("signer is neither the owner of contract {0} nor its node")]
    NotOwnerOrNode(ContractId),
    #[error("contract {contract} is {state}; this needs it {want}")]
    WrongContractState {
        contract: ContractId,
        state: ContractState,
        want: &'static str,
    },
    #[error("contract {contract} names deployment {want}, not {got}")]
    HashMismatch {
        contract: ContractId,
        want: Hash,
        got: Hash,
    },
    #[error("usage window [{start}, {end}) is empty or reversed")]
    BadWindow { start: u64, end: u64 },
    #[error(
        "usage window [{start}, {end}) overlaps what is already billed (until {billed_until})"
    )]
    AlreadyBilled {
        start: u64,
        end: u64,
        billed_until: u64,
    },
    #[error("usage window ends at {end}, after ledger time {now}")]
    WindowInFuture { end: u64, now: u64 },
    #[error("reason must be 1 to 1024 characters")]
    BadReason,
    #[error("{what} is too long ({len} > {max})")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} would overflow a 64-bit amount; the transaction is refused")]
    Overflow(&'static str),
    #[error(
        "the price of {resources} with {ips} public IPs at farm {farm}'s prices does not fit in a 64-bit amount; the reservation is refused"
    )]
    PriceOverflow {
        farm: FarmId,
        resources: Resources,
        ips: u32,
    },
}

/// The whole ledger state. Ordered maps only, so its encoding (and [`State::digest`])
/// is deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub params: ChainParams,
    /// Time of the last block applied.
    pub time: u64,
    /// Height of the last block applied.
    pub height: u64,
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

/// The fields of a CreateContract, once the signer is known.
struct NewContract {
    node_id: NodeId,
    deployment_hash: Hash,
    resources: Resources,
    ips: u32,
    deposit: Amount,
    blob: Option<Hash>,
}

const MAX_TEXT: usize = 1024;
const MAX_INTERFACES: usize = 64;
const MAX_FARM_IPS: usize = 4096;

fn check_len(what: &'static str, s: &str, max: usize) -> Result<(), TxError> {
    if s.len() > max {
        return Err(TxError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

fn check_interfaces(ifs: &[Interface]) -> Result<(), TxError> {
    if ifs.len() > MAX_INTERFACES {
        return Err(TxError::TooLong {
            what: "interfaces",
            len: ifs.len(),
            max: MAX_INTERFACES,
        });
    }
    for i in ifs {
        check_len("interface name", &i.name, 64)?;
        check_len("interface mac", &i.mac, 64)?;
        if i.ips.len() > 64 {
            return Err(TxError::TooLong {
                what: "interface ips",
                len: i.ips.len(),
                max: 64,
            });
        }
        for ip in &i.ips {
            check_len("interface ip", ip, 64)?;
        }
    }
    Ok(())
}

/// Accepts `a.b.c.d/len` and IPv6 `x::y/len`.
fn check_cidr(ip: &str) -> Result<(), TxError> {
    let bad = |reason: &str| TxError::BadIp {
        ip: ip.to_string(),
        reason: reason.to_string(),
    };
    let (addr, len) = ip
        .split_once('/')
        .ok_or_else(|| bad("expected address/prefix"))?;
    let addr: std::net::IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
    let len: u8 = len.parse().map_err(|_| bad("prefix is not a number"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad("prefix too long"));
    }
    Ok(())
}

/// Decommissioning is final (README, "Decommissioned nodes"): nothing changes a
/// decommissioned node again, and its key never registers again.
fn live(n: &Node) -> Result<(), TxError> {
    if n.status == NodeStatus::Decommissioned {
        return Err(TxError::NodeDecommissioned(n.id));
    }
    Ok(())
}

fn add(a: Amount, b: Amount, what: &'static str) -> Result<Amount, TxError> {
    a.checked_add(b).ok_or(TxError::Overflow(what))
}

impl State {
    pub fn new(params: ChainParams) -> Self {
        State {
            params,
            time: 0,
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
        let due: Vec<ContractId> = self
            .suspended
            .iter()
            .copied()
            .filter(|id| {
                self.contracts
                    .get(id)
                    .and_then(|c| c.suspended_at)
                    .is_some_and(|at| at.saturating_add(self.params.grace_secs) <= self.time)
            })
            .collect();
        due.into_iter()
            .filter_map(|id| self.close(id, CloseCause::GraceExpired))
            .collect()
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
                // Only a funded account gets here (`apply` checks that it exists):
                // CreateAccount records its encryption key, it opens nothing.
                self.acct_mut(&signer)?.encryption_key = *encryption_key;
                Ok(vec![Event::AccountKeySet { account: signer }])
            }
            TxBody::Faucet { amount } => {
                if !self.params.dev_mode {
                    return Err(TxError::FaucetDisabled);
                }
                if *amount == 0 {
                    return Err(TxError::ZeroAmount);
                }
                if *amount > self.params.faucet_max {
                    return Err(TxError::FaucetTooMuch {
                        got: *amount,
                        max: self.params.faucet_max,
                    });
                }
                let supply = add(self.supply, *amount, "the money supply")?;
                let mut events = self.open_account(signer, *amount)?;
                let balance = self.acct(&signer)?.balance;
                let balance = add(balance, *amount, "balance")?;
                self.supply = supply;
                self.acct_mut(&signer)?.balance = balance;
                events.push(Event::Transferred {
                    from: None,
                    to: signer,
                    amount: *amount,
                });
                Ok(events)
            }
            TxBody::Transfer { to, amount } => {
                if *amount == 0 {
                    return Err(TxError::ZeroAmount);
                }
                let from_bal = self.spend(&signer, *amount)?;
                let to_bal = self.accounts.get(to).map_or(0, |a| a.balance);
                let to_bal = add(to_bal, *amount, "balance")?;
                let mut events = Vec::new();
                if *to != signer {
                    events = self.open_account(*to, *amount)?;
                    self.acct_mut(&signer)?.balance = from_bal;
                    self.acct_mut(to)?.balance = to_bal;
                }
                events.push(Event::Transferred {
                    from: Some(signer),
                    to: *to,
                    amount: *amount,
                });
                Ok(events)
            }
            TxBody::CreateFarm {
                name,
                prices,
                enrollment_key,
            } => {
                let valid = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !valid {
                    return Err(TxError::BadFarmName(name.clone()));
                }
                if self.farm_names.contains_key(name) {
                    return Err(TxError::FarmNameTaken(name.clone()));
                }
                let id = self.next_farm;
                self.next_farm = id.checked_add(1).ok_or(TxError::Overflow("farm id"))?;
                self.farm_names.insert(name.clone(), id);
                self.farms.insert(
                    id,
                    Farm {
                        id,
                        owner: signer,
                        name: name.clone(),
                        prices: *prices,
                        public_ips: Vec::new(),
                        enrollment_key: *enrollment_key,
                    },
                );
                Ok(vec![Event::FarmCreated {
                    farm: id,
                    name: name.clone(),
                }])
            }
            TxBody::AddFarmIp { farm, ip, gateway } => {
                let f = self.owned_farm(&signer, *farm)?;
                check_cidr(ip)?;
                gateway
                    .parse::<std::net::IpAddr>()
                    .map_err(|_| TxError::BadIp {
                        ip: gateway.clone(),
                        reason: "gateway is not an IP address".into(),
                    })?;
                if f.public_ips.iter().any(|p| &p.ip == ip) {
                    return Err(TxError::IpExists {
                        farm: *farm,
                        ip: ip.clone(),
                    });
                }
                if f.public_ips.len() >= MAX_FARM_IPS {
                    return Err(TxError::TooLong {
                        what: "farm IPs",
                        len: f.public_ips.len() + 1,
                        max: MAX_FARM_IPS,
                    });
                }
                self.farm_mut(*farm)?.public_ips.push(PublicIp {
                    ip: ip.clone(),
                    gateway: gateway.clone(),
                    leased_by: None,
                });
                Ok(vec![Event::FarmIpAdded {
                    farm: *farm,
                    ip: ip.clone(),
                }])
            }
            TxBody::RemoveFarmIp { farm, ip } => {
                let f = self.owned_farm(&signer, *farm)?;
                let pos = f
                    .public_ips
                    .iter()
                    .position(|p| &p.ip == ip)
                    .ok_or_else(|| TxError::NoIp {
                        farm: *farm,
                        ip: ip.clone(),
                    })?;
                if let Some(c) = f.public_ips[pos].leased_by {
                    return Err(TxError::IpLeased {
                        ip: ip.clone(),
                        contract: c,
                    });
                }
                self.farm_mut(*farm)?.public_ips.remove(pos);
                Ok(vec![Event::FarmIpRemoved {
                    farm: *farm,
                    ip: ip.clone(),
                }])
            }
            TxBody::RegisterNode {
                farm,
                capacity,
                interfaces,
                encryption_key,
                location,
                enrollment,
                persistent,
            } => {
                let f = self.farms.get(farm).ok_or(TxError::NoFarm(*farm))?;
                if let Some(&node) = self.node_keys.get(&signer) {
                    let retired = self
                        .nodes
                        .get(&node)
                        .is_some_and(|n| n.status == NodeStatus::Decommissioned);
                    return Err(if retired {
                        TxError::NodeKeyRetired { key: signer, node }
                    } else {
                        TxError::NodeKeyTaken { key: signer, node }
                    });
                }
                check_interfaces(interfaces)?;
                if let Some(l) = location {
                    check_len("location", l, 256)?;
                }
                let approved = match enrollment {
                    None => false,
                    Some(tok) => {
                        if tok.farm != *farm {
                            return Err(TxError::EnrollWrongFarm {
                                token: tok.farm,
                                farm: *farm,
                            });
                        }
                        let key = f.enrollment_key.ok_or(TxError::EnrollNotAccepted(*farm))?;
                        tok.verify(&self.params.chain_id, &key)
                            .map_err(|_| TxError::EnrollBadSignature(*farm))?;
                        if tok.expires < self.time {
                            return Err(TxError::EnrollExpired {
                                expires: tok.expires,
                                now: self.time,
                            });
                        }
                        true
                    }
                };
                let id = self.next_node;
                self.next_node = id.checked_add(1).ok_or(TxError::Overflow("node id"))?;
                self.accounts.entry(signer).or_insert(Account {
                    pubkey: signer,
                    nonce: 0,
                    balance: 0,
                    encryption_key: Some(*encryption_key),
                });
                self.node_keys.insert(signer, id);
                self.nodes.insert(
                    id,
                    Node {
                        id,
                        pubkey: signer,
                        farm: *farm,
                        approved,
                        capacity: *capacity,
                        reserved: Resources::default(),
                        interfaces: interfaces.clone(),
                        location: location.clone(),
                        encryption_key: *encryption_key,
                        persistent: *persistent,
                        status: NodeStatus::Up,
                        last_uptime: self.time,
                        uptime_secs: 0,
                        registered_at: self.time,
                    },
                );
                Ok(vec![Event::NodeRegistered {
                    node: id,
                    farm: *farm,
                    approved,
                }])
            }
            TxBody::ApproveNode { node } => {
                let n = self.node_ref(*node)?;
                self.owned_farm(&signer, n.farm)?;
                live(n)?;
                if n.approved {
                    return Err(TxError::AlreadyApproved(*node));
                }
                self.node_mut(*node)?.approved = true;
                Ok(vec![Event::NodeApproved { node: *node }])
            }
            TxBody::RemoveNode { node } => {
                live(self.node_or_farmer(&signer, *node)?)?;
                let open: Vec<ContractId> = self.open_contracts_on(*node).map(|c| c.id).collect();
                let mut events: Vec<Event> = open
                    .into_iter()
                    .filter_map(|c| self.close(c, CloseCause::NodeRemoved))
                    .collect();
                let n = self.node_mut(*node)?;
                n.status = NodeStatus::Decommissioned;
                n.approved = false;
                events.push(Event::NodeRemoved { node: *node });
                Ok(events)
            }
            TxBody::UpdateNode {
                node,
                capacity,
                interfaces,
                encryption_key,
                persistent,
            } => {
                live(self.the_node(&signer, *node)?)?;
                check_interfaces(interfaces)?;
                let n = self.node_mut(*node)?;
                n.capacity = *capacity;
                n.interfaces = interfaces.clone();
                n.encryption_key = *encryption_key;
                n.persistent = *persistent;
                Ok(vec![Event::NodeUpdated { node: *node }])
            }
            TxBody::ReportUptime {
                node,
                timestamp,
                uptime_secs,
            } => {
                live(self.the_node(&signer, *node)?)?;
                let skew = self.params.uptime_skew_secs;
                if timestamp.abs_diff(self.time) > skew {
                    return Err(TxError::UptimeSkew {
                        got: *timestamp,
                        now: self.time,
                        skew,
                    });
                }
                let now = self.time;
                let n = self.node_mut(*node)?;
                n.last_uptime = now;
                n.uptime_secs = *uptime_secs;
                let mut events = vec![Event::NodeUptime { node: *node }];
                if n.status == NodeStatus::Standby {
                    n.status = NodeStatus::Up;
                    events.push(Event::NodeStatusChanged {
                        node: *node,
                        status: NodeStatus::Up,
                    });
                }
                Ok(events)
            }
            TxBody::SetNodeStatus { node, status } => {
                live(self.node_or_farmer(&signer, *node)?)?;
                if *status == NodeStatus::Decommissioned {
                    return Err(TxError::UseRemoveNode);
                }
                self.node_mut(*node)?.status = *status;
                Ok(vec![Event::NodeStatusChanged {
                    node: *node,
                    status: *status,
                }])
            }
            TxBody::CreateContract {
                node,
                deployment_hash,
                resources,
                public_ips,
                deposit,
                blob,
            } => self.create_contract(
                signer,
                NewContract {
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
            } => {
                let c = self.contract_ref(*contract)?;
                self.the_node(&signer, c.node)?;
                if !matches!(c.state, ContractState::Pending | ContractState::Active) {
                    return Err(self.wrong_state(c, "pending or active"));
                }
                if c.deployment_hash != *deployment_hash {
                    return Err(TxError::HashMismatch {
                        contract: *contract,
                        want: c.deployment_hash,
                        got: *deployment_hash,
                    });
                }
                let now = self.time;
                let c = self.contract_mut(*contract)?;
                if c.state == ContractState::Pending {
                    // Billing starts when the workload exists, not when it was ordered.
                    c.billed_until = now;
                }
                c.state = ContractState::Active;
                c.accepted_hash = Some(*deployment_hash);
                c.result = *result;
                Ok(vec![Event::ContractAccepted {
                    contract: *contract,
                    node: c.node,
                    deployment_hash: *deployment_hash,
                }])
            }
            TxBody::RejectContract { contract, reason } => {
                if reason.is_empty() || reason.len() > MAX_TEXT {
                    return Err(TxError::BadReason);
                }
                let c = self.contract_ref(*contract)?;
                self.the_node(&signer, c.node)?;
                if c.state != ContractState::Pending {
                    return Err(self.wrong_state(c, "pending"));
                }
                Ok(self
                    .close(*contract, CloseCause::Rejected(reason.clone()))
                    .into_iter()
                    .collect())
            }
            TxBody::UpdateContract {
                contract,
                deployment_hash,
                resources,
                blob,
            } => {
                let c = self.contract_ref(*contract)?;
                if c.owner != signer {
                    return Err(TxError::NotContractOwner(*contract));
                }
                if !matches!(c.state, ContractState::Pending | ContractState::Active) {
                    return Err(self.wrong_state(c, "pending or active"));
                }
                let n = self.node_ref(c.node)?;
                let others = n.reserved.saturating_sub(&c.resources);
                let needed = others
                    .checked_add(resources)
                    .ok_or(TxError::Overflow("resources"))?;
                if !needed.fits_in(&n.capacity) {
                    return Err(TxError::OverCapacity {
                        node: n.id,
                        free: n.capacity.saturating_sub(&others),
                        asked: *resources,
                    });
                }
                let farm = self.farms.get(&c.farm).ok_or(TxError::NoFarm(c.farm))?;
                let ips = u32::try_from(c.public_ips.len())
                    .map_err(|_| TxError::Overflow("public IPs"))?;
                let per_hour =
                    farm.prices
                        .per_hour(resources, ips)
                        .ok_or(TxError::PriceOverflow {
                            farm: farm.id,
                            resources: *resources,
                            ips,
                        })?;
                let node_id = c.node;
                self.node_mut(node_id)?.reserved = needed;
                let c = self.contract_mut(*contract)?;
                c.resources = *resources;
                c.deployment_hash = *deployment_hash;
                c.blob = *blob;
                c.price_per_hour = per_hour;
                Ok(vec![Event::ContractUpdated {
                    contract: *contract,
                    node: node_id,
                }])
            }
            TxBody::TopUp { contract, amount } => {
                if *amount == 0 {
                    return Err(TxError::ZeroAmount);
                }
                let c = self.contract_ref(*contract)?;
                if !c.is_open() {
                    return Err(self.wrong_state(c, "open"));
                }
                let left = self.spend(&signer, *amount)?;
                let escrow = add(c.escrow, *amount, "escrow")?;
                let resume = c.state == ContractState::Suspended && escrow >= c.price_per_hour;
                let node = c.node;
                self.acct_mut(&signer)?.balance = left;
                let now = self.time;
                let c = self.contract_mut(*contract)?;
                c.escrow = escrow;
                let mut events = vec![Event::ContractToppedUp {
                    contract: *contract,
                    node,
                    amount: *amount,
                }];
                if resume {
                    c.state = ContractState::Active;
                    c.suspended_at = None;
                    // The suspension is not billed.
                    c.billed_until = c.billed_until.max(now);
                    self.suspended.remove(contract);
                    events.push(Event::ContractResumed {
                        contract: *contract,
                        node,
                    });
                }
                Ok(events)
            }
            TxBody::ReportUsage {
                contract,
                window_start,
                window_end,
                nu_bytes,
            } => self.report_usage(signer, *contract, *window_start, *window_end, *nu_bytes),
            TxBody::CancelContract { contract } => {
                let c = self.contract_ref(*contract)?;
                let by_owner = c.owner == signer;
                let by_node = self.nodes.get(&c.node).is_some_and(|n| n.pubkey == signer);
                if !by_owner && !by_node {
                    return Err(TxError::NotOwnerOrNode(*contract));
                }
                if !c.is_open() {
                    return Err(self.wrong_state(c, "open"));
                }
                let cause = if by_owner {
                    CloseCause::CanceledByOwner
                } else {
                    CloseCause::CanceledByNode
                };
                Ok(self.close(*contract, cause).into_iter().collect())
            }
        }
    }

    fn create_contract(
        &mut self,
        owner: PublicKey,
        order: NewContract,
    ) -> Result<Vec<Event>, TxError> {
        let NewContract {
            node_id,
            deployment_hash,
            resources,
            ips,
            deposit,
            blob,
        } = order;
        let n = self.node_ref(node_id)?;
        if !n.approved {
            return Err(TxError::NodeNotApproved(node_id));
        }
        if !n.persistent {
            return Err(TxError::NodeNotPersistent(node_id));
        }
        if n.status != NodeStatus::Up {
            return Err(TxError::NodeNotUp {
                node: node_id,
                status: n.status,
            });
        }
        if resources.is_zero() && ips == 0 {
            return Err(TxError::EmptyReservation);
        }
        let reserved = n
            .reserved
            .checked_add(&resources)
            .ok_or(TxError::Overflow("resources"))?;
        if !reserved.fits_in(&n.capacity) {
            return Err(TxError::OverCapacity {
                node: node_id,
                free: n.free(),
                asked: resources,
            });
        }
        let farm = self.farms.get(&n.farm).ok_or(TxError::NoFarm(n.farm))?;
        let free_ips = farm.free_ips();
        if (ips as usize) > free_ips {
            return Err(TxError::NotEnoughIps {
                farm: farm.id,
                free: free_ips,
                asked: ips,
            });
        }
        let per_hour = farm
            .prices
            .per_hour(&resources, ips)
            .ok_or(TxError::PriceOverflow {
                farm: farm.id,
                resources,
                ips,
            })?;
        if deposit < per_hour.max(1) {
            return Err(TxError::DepositTooSmall { deposit, per_hour });
        }
        let left = self.spend(&owner, deposit)?;
        // All checks passed: mutate.
        let id = self.next_contract;
        self.next_contract = id.checked_add(1).ok_or(TxError::Overflow("contract id"))?;
        let farm_id = farm.id;
        let price_per_gib = farm.prices.nu;
        let mut leased = Vec::new();
        let farm = self.farm_mut(farm_id)?;
        for p in farm
            .public_ips
            .iter_mut()
            .filter(|p| p.leased_by.is_none())
            .take(ips as usize)
        {
            p.leased_by = Some(id);
            leased.push(p.ip.clone());
        }
        self.acct_mut(&owner)?.balance = left;
        self.node_mut(node_id)?.reserved = reserved;
        self.node_contracts.entry(node_id).or_default().insert(id);
        self.contracts.insert(
            id,
            Contract {
                id,
                owner,
                node: node_id,
                farm: farm_id,
                deployment_hash,
                accepted_hash: None,
                blob,
                result: None,
                resources,
                public_ips: leased,
                price_per_hour: per_hour,
                price_per_gib,
                escrow: deposit,
                state: ContractState::Pending,
                billed_until: self.time,
                suspended_at: None,
                created_at: self.time,
                paid: 0,
            },
        );
        Ok(vec![Event::ContractCreated {
            contract: id,
            node: node_id,
        }])
    }

    fn report_usage(
        &mut self,
        signer: PublicKey,
        id: ContractId,
        start: u64,
        end: u64,
        nu_bytes: u64,
    ) -> Result<Vec<Event>, TxError> {
        let c = self.contract_ref(id)?;
        self.the_node(&signer, c.node)?;
        if c.state != ContractState::Active {
            return Err(self.wrong_state(c, "active"));
        }
        if end <= start {
            return Err(TxError::BadWindow { start, end });
        }
        // Windows never overlap: that is what makes a repeated report harmless. A
        // gap between windows (the node was off) is simply never billed.
        if start < c.billed_until {
            return Err(TxError::AlreadyBilled {
                start,
                end,
                billed_until: c.billed_until,
            });
        }
        if end > self.time.saturating_add(self.params.uptime_skew_secs) {
            return Err(TxError::WindowInFuture {
                end,
                now: self.time,
            });
        }
        // Each product of two u64 fits in a u128, and each quotient is at most
        // u128::MAX / 3600, so the sum fits too. A cost above the escrow takes the
        // whole escrow (and suspends the contract), it never wraps.
        let cost = u128::from(c.price_per_hour) * u128::from(end - start) / 3600
            + u128::from(c.price_per_gib) * u128::from(nu_bytes) / u128::from(GIB);
        let paid = u64::try_from(cost).map_or(c.escrow, |cost| cost.min(c.escrow));
        let remaining = c.escrow - paid;
        let total_paid = add(c.paid, paid, "the contract's total paid")?;
        let suspend = remaining < c.price_per_hour.max(1);
        let farm_owner = self
            .farms
            .get(&c.farm)
            .map(|f| f.owner)
            .ok_or(TxError::NoFarm(c.farm))?;
        let farmer_balance = self.accounts.get(&farm_owner).map_or(0, |a| a.balance);
        let farmer_balance = add(farmer_balance, paid, "the farmer's balance")?;
        let node = c.node;
        let now = self.time;

        let farmer = self.accounts.entry(farm_owner).or_insert(Account {
            pubkey: farm_owner,
            nonce: 0,
            balance: 0,
            encryption_key: None,
        });
        farmer.balance = farmer_balance;
        let c = self.contract_mut(id)?;
        c.escrow = remaining;
        c.billed_until = end;
        c.paid = total_paid;
        let mut events = vec![Event::ContractBilled {
            contract: id,
            node,
            amount: paid,
            until: end,
        }];
        if suspend {
            c.state = ContractState::Suspended;
            c.suspended_at = Some(now);
            self.suspended.insert(id);
            events.push(Event::ContractSuspended { contract: id, node });
        }
        Ok(events)
    }

    /// Closes an open contract: releases its capacity and IPs and refunds the escrow
    /// to the owner, all at once. Returns `None` for a contract that is already closed.
    fn close(&mut self, id: ContractId, cause: CloseCause) -> Option<Event> {
        let c = self.contracts.get_mut(&id)?;
        if !c.is_open() {
            return None;
        }
        let refund = std::mem::take(&mut c.escrow);
        c.state = ContractState::Closed(cause);
        c.suspended_at = None;
        let (owner, node, farm, resources, state) =
            (c.owner, c.node, c.farm, c.resources, c.state.clone());
        self.suspended.remove(&id);
        if let Some(set) = self.node_contracts.get_mut(&node) {
            set.remove(&id);
        }
        if let Some(n) = self.nodes.get_mut(&node) {
            n.reserved = n.reserved.saturating_sub(&resources);
        }
        if let Some(f) = self.farms.get_mut(&farm) {
            for p in f.public_ips.iter_mut().filter(|p| p.leased_by == Some(id)) {
                p.leased_by = None;
            }
        }
        if let Some(a) = self.accounts.get_mut(&owner) {
            // Exact: balance + escrow <= supply <= Amount::MAX (see `supply`).
            a.balance = a.balance.saturating_add(refund);
        }
        Some(Event::ContractClosed {
            contract: id,
            node,
            state,
            refund,
        })
    }

    /// Opens the account of `key` with `amount` on its way in, if it has none. The
    /// caller credits `amount` afterwards; nothing is changed when this fails.
    fn open_account(&mut self, key: PublicKey, amount: Amount) -> Result<Vec<Event>, TxError> {
        if self.accounts.contains_key(&key) {
            return Ok(Vec::new());
        }
        if amount < EXISTENTIAL_DEPOSIT {
            return Err(TxError::BelowExistentialDeposit {
                account: key,
                amount,
            });
        }
        self.accounts.insert(
            key,
            Account {
                pubkey: key,
                nonce: 0,
                balance: 0,
                encryption_key: None,
            },
        );
        Ok(vec![Event::AccountCreated { account: key }])
    }

    /// The balance `who` is left with after paying `amount`, which must leave the
    /// existential deposit in the account.
    fn spend(&self, who: &PublicKey, amount: Amount) -> Result<Amount, TxError> {
        let have = self.acct(who)?.balance;
        let need = add(amount, EXISTENTIAL_DEPOSIT, "the amount to pay")?;
        if have < need {
            return Err(TxError::InsufficientBalance { have, need });
        }
        Ok(have - amount)
    }

    // ---- lookups that produce the right error --------------------------------------

    fn acct(&self, k: &PublicKey) -> Result<&Account, TxError> {
        self.accounts.get(k).ok_or(TxError::NoAccount(*k))
    }
    fn acct_mut(&mut self, k: &PublicKey) -> Result<&mut Account, TxError> {
        self.accounts.get_mut(k).ok_or(TxError::NoAccount(*k))
    }
    fn farm_mut(&mut self, id: FarmId) -> Result<&mut Farm, TxError> {
        self.farms.get_mut(&id).ok_or(TxError::NoFarm(id))
    }
    fn owned_farm(&self, signer: &PublicKey, id: FarmId) -> Result<&Farm, TxError> {
        let f = self.farms.get(&id).ok_or(TxError::NoFarm(id))?;
        if &f.owner != signer {
            return Err(TxError::NotFarmOwner(id));
        }
        Ok(f)
    }
    fn node_ref(&self, id: NodeId) -> Result<&Node, TxError> {
        self.nodes.get(&id).ok_or(TxError::NoNode(id))
    }
    fn node_mut(&mut self, id: NodeId) -> Result<&mut Node, TxError> {
        self.nodes.get_mut(&id).ok_or(TxError::NoNode(id))
    }
    /// The signer must be the node itself.
    fn the_node(&self, signer: &PublicKey, id: NodeId) -> Result<&Node, TxError> {
        let n = self.node_ref(id)?;
        if &n.pubkey != signer {
            return Err(TxError::NotTheNode(id));
        }
        Ok(n)
    }
    fn node_or_farmer(&self, signer: &PublicKey, id: NodeId) -> Result<&Node, TxError> {
        let n = self.node_ref(id)?;
        let farmer = self.farms.get(&n.farm).is_some_and(|f| &f.owner == signer);
        if &n.pubkey != signer && !farmer {
            return Err(TxError::NotNodeOrFarmer(id));
        }
        Ok(n)
    }
    fn contract_ref(&self, id: ContractId) -> Result<&Contract, TxError> {
        self.contracts.get(&id).ok_or(TxError::NoContract(id))
    }
    fn contract_mut(&mut self, id: ContractId) -> Result<&mut Contract, TxError> {
        self.contracts.get_mut(&id).ok_or(TxError::NoContract(id))
    }
    fn wrong_state(&self, c: &Contract, want: &'static str) -> TxError {
        TxError::WrongContractState {
            contract: c.id,
            state: c.state.clone(),
            want,
        }
    }
}
