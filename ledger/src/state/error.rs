//! Why a transaction was rejected.

use crate::types::*;

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
    #[error("{cpu_usec} us of CPU time is more than node {node}'s CPUs have in the usage window and the allowed clock skew ({max} us)")]
    CpuTimeBeyondNode {
        node: NodeId,
        cpu_usec: u64,
        max: u64,
    },
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
