//! The seam between the engine and the modules that run workloads.
//!
//! Each workload type is one [`Provisioner`]; `ensure` and `remove` must be idempotent
//! (the engine repeats them after a crash and on every reconcile), and `remove` deletes
//! the workload's data. Unit tests put fakes here; the node puts the storage module's
//! volumes, shards, networks and containers (and later VMs).

use std::collections::BTreeMap;
use std::sync::Arc;

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

/// What a workload measured of its own use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkloadUsage {
    /// CPU time used since the workload last started, in microseconds: a counter
    /// that only grows until it starts again (a restart, a reboot).
    pub cpu_usec: u64,
    /// Memory in bytes: the peak since it started where the kernel keeps one, else
    /// what it holds now.
    pub memory_bytes: u64,
}

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
    /// Bytes the workload has moved over the network in all (received plus sent),
    /// which the usage report bills as `nu_bytes`: a counter that only grows until
    /// the workload is made again (after a reboot it starts at zero). `None` for
    /// workloads that carry no traffic of their own, or whose counter cannot be read.
    fn traffic(&self, _id: &WorkloadId, _spec: &WorkloadSpec) -> Option<u64> {
        None
    }
    /// CPU time and memory the workload uses, as measured (a container's cgroup),
    /// which the usage report carries. `None` for workloads that run nothing of
    /// their own, or whose use cannot be read.
    fn usage(&self, _id: &WorkloadId, _spec: &WorkloadSpec) -> Option<WorkloadUsage> {
        None
    }
    /// What the workload is doing now, for its owner's view in the node API (a
    /// network's peers, handshakes and bytes). Read from the running workload, never
    /// from the spec, and never a secret. `None` for workloads with nothing live to
    /// tell, or whose state cannot be read.
    fn live(&self, _id: &WorkloadId, _spec: &WorkloadSpec) -> Option<serde_json::Value> {
        None
    }
    /// Up to `max` bytes of what the workload printed, from byte `from` of its log
    /// (offsets only grow, even as old output is dropped). `None` for workloads that
    /// keep no log.
    fn logs(
        &self,
        _id: &WorkloadId,
        _spec: &WorkloadSpec,
        _from: u64,
        _max: u64,
    ) -> Option<Result<LogChunk, WorkloadError>> {
        None
    }
}

/// A piece of a workload's log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogChunk {
    /// The offset of the oldest byte still kept.
    pub start: u64,
    /// The offset `text` begins at (`from`, or `start` if `from` was dropped).
    pub from: u64,
    /// The offset after `text`: where to ask from next time.
    pub next: u64,
    /// The bytes, as UTF-8 (invalid sequences replaced).
    pub text: String,
}

/// One provisioner per workload type. Cloning shares them (the engine and the node
/// API's live views hold the same ones).
#[derive(Clone)]
pub struct Provisioners {
    pub volume: Arc<dyn Provisioner>,
    pub shard: Arc<dyn Provisioner>,
    pub network: Arc<dyn Provisioner>,
    pub container: Arc<dyn Provisioner>,
    pub vm: Arc<dyn Provisioner>,
}

impl Provisioners {
    fn for_spec(&self, spec: &WorkloadSpec) -> Arc<dyn Provisioner> {
        match spec {
            WorkloadSpec::Volume { .. } => self.volume.clone(),
            WorkloadSpec::Shard { .. } => self.shard.clone(),
            WorkloadSpec::Network(_) => self.network.clone(),
            WorkloadSpec::Container(_) => self.container.clone(),
            WorkloadSpec::Vm(_) => self.vm.clone(),
        }
    }

    /// Runs `f` with the spec's provisioner on a blocking thread.
    async fn on_thread<T: Send + 'static>(
        &self,
        id: &WorkloadId,
        spec: &WorkloadSpec,
        f: fn(&dyn Provisioner, &WorkloadId, &WorkloadSpec) -> T,
    ) -> Result<T, tokio::task::JoinError> {
        let (p, id, spec) = (self.for_spec(spec), id.clone(), spec.clone());
        tokio::task::spawn_blocking(move || f(p.as_ref(), &id, &spec)).await
    }

    /// [`Provisioner::ensure`] on a blocking thread: provisioners run `btrfs`, write
    /// files and talk to servers, and the node API and the ledger client share the
    /// runtime that awaits this.
    pub async fn ensure(
        &self,
        id: &WorkloadId,
        spec: &WorkloadSpec,
    ) -> Result<BTreeMap<String, String>, WorkloadError> {
        self.on_thread(id, spec, |p, i, s| p.ensure(i, s))
            .await
            .unwrap_or_else(|e| Err(WorkloadError(format!("the provisioner failed: {e}"))))
    }

    /// [`Provisioner::traffic`] on a blocking thread, like [`Provisioners::ensure`].
    pub async fn traffic(&self, id: &WorkloadId, spec: &WorkloadSpec) -> Option<u64> {
        self.on_thread(id, spec, |p, i, s| p.traffic(i, s))
            .await
            .unwrap_or(None)
    }

    /// [`Provisioner::usage`] on a blocking thread, like [`Provisioners::ensure`].
    pub async fn usage(&self, id: &WorkloadId, spec: &WorkloadSpec) -> Option<WorkloadUsage> {
        self.on_thread(id, spec, |p, i, s| p.usage(i, s))
            .await
            .unwrap_or(None)
    }

    /// [`Provisioner::live`] on a blocking thread, like [`Provisioners::ensure`].
    pub async fn live(&self, id: &WorkloadId, spec: &WorkloadSpec) -> Option<serde_json::Value> {
        self.on_thread(id, spec, |p, i, s| p.live(i, s))
            .await
            .unwrap_or(None)
    }

    /// [`Provisioner::logs`] on a blocking thread, like [`Provisioners::ensure`].
    pub async fn logs(
        &self,
        id: &WorkloadId,
        spec: &WorkloadSpec,
        from: u64,
        max: u64,
    ) -> Option<Result<LogChunk, WorkloadError>> {
        let (p, id, spec) = (self.for_spec(spec), id.clone(), spec.clone());
        tokio::task::spawn_blocking(move || p.logs(&id, &spec, from, max))
            .await
            .unwrap_or(None)
    }

    /// [`Provisioner::remove`] on a blocking thread, like [`Provisioners::ensure`].
    pub async fn remove(&self, id: &WorkloadId, spec: &WorkloadSpec) -> Result<(), WorkloadError> {
        self.on_thread(id, spec, |p, i, s| p.remove(i, s))
            .await
            .unwrap_or_else(|e| Err(WorkloadError(format!("the provisioner failed: {e}"))))
    }
}

/// Provisioning order: what others depend on comes first (volumes, networks, shards,
/// then containers and VMs); teardown runs in reverse.
pub fn rank(spec: &WorkloadSpec) -> u8 {
    match spec {
        WorkloadSpec::Volume { .. } => 0,
        WorkloadSpec::Network(_) => 1,
        WorkloadSpec::Shard { .. } => 2,
        WorkloadSpec::Container(_) | WorkloadSpec::Vm(_) => 3,
    }
}
