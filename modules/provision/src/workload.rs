//! The seam between the engine and the modules that run workloads.
//!
//! Each workload type is one [`Provisioner`]; `ensure` and `remove` must be idempotent
//! (the engine repeats them after a crash and on every reconcile), and `remove` deletes
//! the workload's data. Unit tests put fakes here; the node puts the storage module's
//! volumes (and later containers, VMs, networks, shards).

use std::collections::BTreeMap;

use cellos_ledger::deployment::WorkloadSpec;
use cellos_ledger::ContractId;

/// A workload's identity on the node: unique across contracts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadId {
    pub contract: ContractId,
    pub name: String,
}

impl WorkloadId {
    /// A name usable for volumes, interfaces, namespaces: `c<contract>-<name>`.
    pub fn node_name(&self) -> String {
        format!("c{}-{}", self.contract, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WorkloadError(pub String);

pub trait Provisioner: Send + Sync {
    /// Creates the workload, or changes it to match `spec`; returns what the owner is
    /// told (paths, addresses).
    fn ensure(
        &self,
        id: &WorkloadId,
        spec: &WorkloadSpec,
    ) -> Result<BTreeMap<String, String>, WorkloadError>;
    /// Removes the workload and its data; succeeds if it is already gone.
    fn remove(&self, id: &WorkloadId, spec: &WorkloadSpec) -> Result<(), WorkloadError>;
}

/// One provisioner per workload type.
pub struct Provisioners {
    pub volume: Box<dyn Provisioner>,
    pub shard: Box<dyn Provisioner>,
}

impl Provisioners {
    pub fn for_spec(&self, spec: &WorkloadSpec) -> &dyn Provisioner {
        match spec {
            WorkloadSpec::Volume { .. } => self.volume.as_ref(),
            WorkloadSpec::Shard { .. } => self.shard.as_ref(),
        }
    }
}

/// Provisioning order: what others depend on comes first (volumes, networks, shards,
/// then containers and VMs); teardown runs in reverse.
pub fn rank(spec: &WorkloadSpec) -> u8 {
    match spec {
        WorkloadSpec::Volume { .. } => 0,
        WorkloadSpec::Shard { .. } => 2,
    }
}
