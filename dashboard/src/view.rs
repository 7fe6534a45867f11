//! What cellosd tells the dashboard: one JSON document per connection to its local
//! socket ([`SOCKET_NAME`] in the run directory).
//!
//! These types are the whole interface, and they are built so that nothing secret can
//! travel in them: there is no field for a deployment's spec, a password, a key other
//! than the node's public key, or a workload's result data (which may carry addresses a
//! tenant would not show the farmer). Only names, kinds, phases, numbers and the
//! operator's console lines.

use serde::{Deserialize, Serialize};

/// The socket's file name in cellosd's run directory (`/run/cellos` on a node).
pub const SOCKET_NAME: &str = "dashboard.sock";

/// The run directory on a node, where the dashboard looks by default.
pub const DEFAULT_RUN_DIR: &str = "/run/cellos";

/// Everything the dashboard shows that comes from cellosd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// cellosd's version.
    pub version: String,
    /// Seconds since cellosd started.
    pub uptime_secs: u64,
    /// The node's public key (hex), as on the ledger.
    pub node_key: String,
    /// The farm the boot config names.
    pub farm: u64,
    pub ledger: LedgerView,
    pub registration: Registration,
    pub capacity: CapacityView,
    pub pools: Vec<PoolView>,
    pub contracts: Vec<ContractView>,
    /// The operator's last error lines from cellosd, oldest first.
    pub errors: Vec<String>,
}

/// The ledger as the node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerView {
    pub url: String,
    /// `None` until cellosd has asked it once.
    pub reachable: Option<bool>,
}

/// Where the node stands with the ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub state: RegState,
    /// The node id, once the ledger gave one.
    pub node: Option<u64>,
    /// Ledger time (unix seconds) of the last uptime report the ledger recorded.
    pub last_uptime: Option<u64>,
    /// The ledger's status of the node record (`up`, `standby`, ...).
    pub status: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegState {
    /// Not on the ledger yet (or the ledger has not answered).
    #[default]
    Registering,
    /// On the ledger, waiting for the farmer's approval.
    WaitingForApproval,
    Registered,
}

/// CRU in cores, the rest in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Res {
    pub cru: u64,
    pub mru: u64,
    pub sru: u64,
    pub hru: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityView {
    /// What the node registered.
    pub total: Res,
    /// What the contracts on this node reserve.
    pub reserved: Res,
    /// What the workloads that are up use of it (their reservation, once ready).
    pub used: Res,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub name: String,
    /// The disk's kernel name.
    pub disk: String,
    /// `ssd` or `hdd`.
    pub kind: String,
    pub size: u64,
    pub used: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractView {
    pub id: u64,
    pub accepted: bool,
    /// Why the node refused the deployment, if it did.
    pub rejected: Option<String>,
    pub workloads: Vec<WorkloadView>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadView {
    pub name: String,
    pub kind: String,
    /// `provisioning`, `ready`, `failed`, `removing`, or `pending` before the first step.
    pub phase: String,
}
