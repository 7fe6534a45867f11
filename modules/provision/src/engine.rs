//! The reconcile loop: contracts on the ledger (desired) against records on the state
//! disk (actual), the difference applied idempotently.
//!
//! A pass lists the node's open contracts. A record with no open contract is torn
//! down (the contract was cancelled or closed, maybe while the node was off). A
//! contract with no record, or with a record of another deployment hash, is deployed:
//! the sealed blob is fetched and opened, its hash, owner signature and size checked
//! against the contract, and its workloads provisioned in dependency order; then the
//! node accepts (results sealed to the owner) or rejects with the reason. A record
//! whose workloads are not all ready is resumed. The first pass after start ensures
//! every workload again, which brings back what a reboot lost.
//!
//! Transient ledger failures end the pass; the next one retries. A deployment is only
//! refused for what is wrong with it, never because the ledger was unreachable.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cellos_ledger::deployment::{
    self, Deployment, DeploymentResult, Workload, WorkloadResult, WorkloadState,
};
use cellos_ledger::*;
use ed25519_dalek::SigningKey;

use crate::ledger::{chain, Ledger, LedgerError};
use crate::store::{Phase, Record, Store, StoreError};
use crate::workload::{rank, Provisioners, WorkloadId};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Config {
    /// How often usage of active contracts is reported.
    pub usage_every: Duration,
    /// How long one wait for ledger events lasts.
    pub event_wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            usage_every: Duration::from_secs(600),
            event_wait: Duration::from_secs(30),
        }
    }
}

pub type Notify = Box<dyn Fn(&str) + Send + Sync>;

pub struct Engine<L: Ledger> {
    ledger: L,
    store: Store,
    provisioners: Provisioners,
    node: NodeId,
    key: SigningKey,
    config: Config,
    notify: Notify,
    /// Ledger time this engine started: time before it (the node was off) is never billed.
    started_at: Option<u64>,
    /// Per contract, its workloads' counters (traffic, CPU time; each summed) at
    /// the last usage report the ledger took. Kept in memory: a contract this engine
    /// did not deploy is first measured at its first report, so a restart of
    /// cellosd (the networks and containers and their counters keep running) never
    /// reports anything twice.
    reported: BTreeMap<ContractId, Counters>,
    /// Whether the first pass (which ensures everything again) is done.
    resumed: bool,
}

/// A contract's workloads' counters, summed: they only grow until a workload starts
/// again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    traffic: u64,
    cpu_usec: u64,
}

impl Counters {
    /// What each counter grew by since `before`. A counter below its old value was
    /// started again (a reboot, a restart): all of its count is new.
    fn since(self, before: Counters) -> Counters {
        let grown = |now: u64, then: u64| now.checked_sub(then).unwrap_or(now);
        Counters {
            traffic: grown(self.traffic, before.traffic),
            cpu_usec: grown(self.cpu_usec, before.cpu_usec),
        }
    }
}

/// Why a deployment is refused: said to the owner through the ledger.
struct Refusal(String);

fn ordered(ws: &[Workload]) -> Vec<&Workload> {
    let mut v: Vec<&Workload> = ws.iter().collect();
    v.sort_by_key(|w| rank(&w.spec));
    v
}

impl<L: Ledger> Engine<L> {
    pub fn new(
        ledger: L,
        store: Store,
        provisioners: Provisioners,
        node: NodeId,
        key: SigningKey,
        config: Config,
        notify: Notify,
    ) -> Self {
        Engine {
            ledger,
            store,
            provisioners,
            node,
            key,
            config,
            notify,
            started_at: None,
            reported: BTreeMap::new(),
            resumed: false,
        }
    }

    fn say(&self, line: &str) {
        (self.notify)(line)
    }

    /// Runs forever: a pass whenever the ledger has news for this node (and at least
    /// every event wait), usage reports on their own clock.
    pub async fn run(&mut self) -> std::convert::Infallible {
        let mut from = 1u64;
        let mut next_usage = Instant::now() + self.config.usage_every;
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.reconcile().await {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => {
                    self.say(&format!(
                        "cellos: provision pass failed: {}; retrying in {}s",
                        chain(&e),
                        backoff.as_secs()
                    ));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            }
            if Instant::now() >= next_usage {
                if let Err(e) = self.report_usage().await {
                    self.say(&format!("cellos: usage report failed: {}", chain(&e)));
                }
                next_usage = Instant::now() + self.config.usage_every;
            }
            let wait = self
                .config
                .event_wait
                .min(next_usage.saturating_duration_since(Instant::now()));
            match self.ledger.wait_events(from, self.node, wait).await {
                Ok((next, _)) => from = next,
                Err(e) => {
                    self.say(&format!("cellos: waiting for ledger events failed: {e}"));
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// One pass: tear down what is no longer contracted, deploy what is new or
    /// changed, resume what is half done.
    pub async fn reconcile(&mut self) -> Result<(), EngineError> {
        if self.started_at.is_none() {
            self.started_at = Some(self.ledger.now().await?);
        }
        let contracts = self.ledger.open_contracts(self.node).await?;
        let open: BTreeSet<ContractId> = contracts.iter().map(|c| c.id).collect();
        for id in self.store.list()? {
            if !open.contains(&id) {
                self.teardown(id).await?;
            }
        }
        for c in &contracts {
            match self.store.get(c.id)? {
                Some(r) if r.deployment_hash == c.deployment_hash => {
                    if let Some(reason) = &r.rejected {
                        // The refusal is decided; make sure the ledger heard it.
                        if c.state == ContractState::Pending {
                            self.submit_reject(c.id, reason.clone()).await?;
                        }
                        continue;
                    }
                    let settled = r.phases.values().all(|p| *p == Phase::Ready) && r.accepted;
                    if !settled || !self.resumed {
                        let d = r.deployment.clone();
                        self.apply(c, d, Some(r)).await?;
                    }
                }
                old => {
                    if matches!(c.state, ContractState::Pending | ContractState::Active) {
                        self.deploy(c, old).await?;
                    }
                }
            }
        }
        self.resumed = true;
        Ok(())
    }

    /// Fetches, opens and checks the deployment a contract names.
    async fn fetch(&self, c: &Contract) -> Result<Result<Deployment, Refusal>, EngineError> {
        let refuse = |s: String| Ok(Err(Refusal(s)));
        let Some(blob) = c.blob else {
            return refuse("the contract names no deployment blob".into());
        };
        let sealed = match self.ledger.get_blob(&blob).await {
            Ok(b) => b,
            Err(LedgerError::Refused(e)) => {
                return refuse(format!("deployment blob {blob} cannot be fetched: {e}"))
            }
            Err(e) => return Err(e.into()),
        };
        let Ok(plain) = deployment::open(&sealed, &self.key) else {
            return refuse("the deployment blob is not sealed to this node's key".into());
        };
        let d: Deployment = match serde_json::from_slice(&plain) {
            Ok(d) => d,
            Err(e) => return refuse(format!("the deployment is malformed: {e}")),
        };
        let h = d.hash();
        if h != c.deployment_hash {
            return refuse(format!(
                "the deployment hashes to {h}, but the contract names {}",
                c.deployment_hash
            ));
        }
        if d.owner != c.owner {
            return refuse(format!(
                "the deployment's owner {} is not the contract's owner {}",
                d.owner, c.owner
            ));
        }
        if let Err(e) = d.verify() {
            return refuse(e.to_string());
        }
        if let Err(e) = d.validate() {
            return refuse(e.to_string());
        }
        let need = d.resources();
        if !need.fits_in(&c.resources) {
            return refuse(format!(
                "the workloads need {need} but the contract reserves {}",
                c.resources
            ));
        }
        Ok(Ok(d))
    }

    async fn deploy(&mut self, c: &Contract, old: Option<Record>) -> Result<(), EngineError> {
        match self.fetch(c).await? {
            Ok(d) => self.apply(c, d, old).await,
            Err(Refusal(reason)) => {
                if c.state == ContractState::Pending {
                    // Record the decision first: a crash must not make us provision it later.
                    let rec = Record {
                        contract: c.id,
                        deployment_hash: c.deployment_hash,
                        deployment: Deployment {
                            owner: c.owner,
                            version: 0,
                            metadata: BTreeMap::new(),
                            workloads: Vec::new(),
                            signature: None,
                        },
                        phases: BTreeMap::new(),
                        results: Vec::new(),
                        accepted: false,
                        rejected: Some(reason.clone()),
                        billed_until: 0,
                    };
                    self.store.put(&rec)?;
                    self.submit_reject(c.id, reason).await
                } else {
                    // An update to a running contract that is wrong: keep what runs.
                    self.say(&format!("cellos: contract {}: update refused, the old deployment keeps running: {reason}", c.id));
                    Ok(())
                }
            }
        }
    }

    async fn submit_reject(&self, contract: ContractId, reason: String) -> Result<(), EngineError> {
        self.say(&format!("cellos: contract {contract} rejected: {reason}"));
        match self
            .ledger
            .submit(TxBody::RejectContract { contract, reason })
            .await
        {
            Ok(()) => Ok(()),
            // Already closed (e.g. a retry after a crash): nothing left to say.
            Err(LedgerError::Refused(e)) => {
                self.say(&format!(
                    "cellos: contract {contract}: the ledger refused the rejection: {e}"
                ));
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Provisions `d` for contract `c`, replacing `old` (an earlier deployment of the
    /// same contract, or a half-done run of this one).
    async fn apply(
        &mut self,
        c: &Contract,
        d: Deployment,
        old: Option<Record>,
    ) -> Result<(), EngineError> {
        let started_at = self.started_at.unwrap_or(0);
        let new_names: BTreeMap<&str, &Workload> =
            d.workloads.iter().map(|w| (w.name.as_str(), w)).collect();
        let mut rec = match old {
            Some(r) => r,
            None => {
                // Deployed by this engine: its counters start at zero.
                self.reported.insert(c.id, Counters::default());
                Record {
                    contract: c.id,
                    deployment_hash: d.hash(),
                    deployment: d.clone(),
                    phases: BTreeMap::new(),
                    results: Vec::new(),
                    accepted: false,
                    rejected: None,
                    billed_until: c.billed_until.max(started_at),
                }
            }
        };
        // Workloads of the old deployment that the new one drops or changes in type.
        let gone: Vec<Workload> = rec
            .deployment
            .workloads
            .iter()
            .filter(|w| {
                new_names
                    .get(w.name.as_str())
                    .is_none_or(|n| n.spec.kind() != w.spec.kind())
            })
            .cloned()
            .collect();
        let changing = rec.deployment_hash != d.hash();
        if changing {
            rec.accepted = false;
        }
        for w in ordered(&gone).into_iter().rev() {
            let id = WorkloadId {
                contract: c.id,
                name: w.name.clone(),
            };
            rec.phases.insert(w.name.clone(), Phase::Removing);
            self.store.put(&rec)?;
            if let Err(e) = self.provisioners.remove(&id, &w.spec).await {
                self.say(&format!(
                    "cellos: contract {}: removing {} failed: {e}",
                    c.id, w.name
                ));
            }
            rec.phases.remove(&w.name);
        }
        rec.deployment_hash = d.hash();
        rec.deployment = d.clone();
        self.store.put(&rec)?;

        let mut results = Vec::new();
        let mut failed = None;
        for w in ordered(&d.workloads) {
            let id = WorkloadId {
                contract: c.id,
                name: w.name.clone(),
            };
            rec.phases.insert(w.name.clone(), Phase::Provisioning);
            self.store.put(&rec)?;
            let (phase, result) = match self.provisioners.ensure(&id, &w.spec).await {
                Ok(data) => (
                    Phase::Ready,
                    WorkloadResult {
                        name: w.name.clone(),
                        kind: w.spec.kind().into(),
                        state: WorkloadState::Ok,
                        message: String::new(),
                        data,
                    },
                ),
                Err(e) => {
                    failed.get_or_insert_with(|| format!("workload {} failed: {e}", w.name));
                    (
                        Phase::Failed,
                        WorkloadResult {
                            name: w.name.clone(),
                            kind: w.spec.kind().into(),
                            state: WorkloadState::Error,
                            message: e.0,
                            data: BTreeMap::new(),
                        },
                    )
                }
            };
            rec.phases.insert(w.name.clone(), phase);
            results.push(result);
            rec.results = results.clone();
            self.store.put(&rec)?;
        }

        if let Some(reason) = failed {
            if c.state == ContractState::Pending {
                // Never leave half a deployment: undo it, then refuse with the reason.
                for w in ordered(&d.workloads).into_iter().rev() {
                    let id = WorkloadId {
                        contract: c.id,
                        name: w.name.clone(),
                    };
                    if let Err(e) = self.provisioners.remove(&id, &w.spec).await {
                        self.say(&format!(
                            "cellos: contract {}: undoing {} failed: {e}",
                            c.id, w.name
                        ));
                    }
                }
                rec.phases.clear();
                rec.rejected = Some(reason.clone());
                self.store.put(&rec)?;
                return self.submit_reject(c.id, reason).await;
            }
            self.say(&format!("cellos: contract {}: {reason}", c.id));
        }

        if !rec.accepted || changing {
            let result = DeploymentResult {
                contract: c.id,
                node: self.node,
                deployment_hash: rec.deployment_hash,
                accepted: true,
                error: None,
                workloads: results,
            };
            let blob = self.seal_result(&c.owner, &result).await?;
            self.ledger
                .submit(TxBody::AcceptContract {
                    contract: c.id,
                    deployment_hash: rec.deployment_hash,
                    result: blob,
                })
                .await?;
            rec.accepted = true;
            self.store.put(&rec)?;
            let summary: Vec<String> = d
                .workloads
                .iter()
                .map(|w| format!("{} {}", w.name, w.spec.kind()))
                .collect();
            self.say(&format!(
                "cellos: contract {} active: deployment {} provisioned ({})",
                c.id,
                rec.deployment_hash,
                summary.join(", ")
            ));
        }
        Ok(())
    }

    /// Seals the results to the owner's encryption key and posts them; `None` when the
    /// owner has no encryption key (the results stay on the node API).
    async fn seal_result(
        &self,
        owner: &PublicKey,
        r: &DeploymentResult,
    ) -> Result<Option<Hash>, EngineError> {
        let Some(key) = self.ledger.account(owner).await?.encryption_key else {
            return Ok(None);
        };
        let plain = serde_json::to_vec(r).map_err(|e| LedgerError::Refused(e.to_string()))?;
        let sealed =
            deployment::seal(&plain, &key).map_err(|e| LedgerError::Refused(e.to_string()))?;
        Ok(Some(self.ledger.put_blob(sealed).await?))
    }

    /// Removes every workload of a contract that is no longer open, then its record.
    async fn teardown(&mut self, id: ContractId) -> Result<(), EngineError> {
        let Some(mut rec) = self.store.get(id)? else {
            return Ok(());
        };
        let ws = rec.deployment.workloads.clone();
        for w in ordered(&ws).into_iter().rev() {
            let wid = WorkloadId {
                contract: id,
                name: w.name.clone(),
            };
            rec.phases.insert(w.name.clone(), Phase::Removing);
            self.store.put(&rec)?;
            if let Err(e) = self.provisioners.remove(&wid, &w.spec).await {
                // Keep the record: the next pass tries again.
                self.say(&format!(
                    "cellos: contract {id} closed, but removing {} failed: {e}",
                    w.name
                ));
                return Ok(());
            }
        }
        self.store.delete(id)?;
        self.reported.remove(&id);
        if rec.rejected.is_none() {
            self.say(&format!(
                "cellos: contract {id} closed: removed {} workloads and their data",
                ws.len()
            ));
        }
        Ok(())
    }

    /// A contract's workloads' counters, summed, and the memory they hold now.
    async fn measure(&self, rec: &Record) -> (Counters, u64) {
        let mut total = Counters::default();
        let mut memory = 0u64;
        for w in &rec.deployment.workloads {
            let id = WorkloadId {
                contract: rec.contract,
                name: w.name.clone(),
            };
            if let Some(bytes) = self.provisioners.traffic(&id, &w.spec).await {
                total.traffic = total.traffic.saturating_add(bytes);
            }
            if let Some(u) = self.provisioners.usage(&id, &w.spec).await {
                total.cpu_usec = total.cpu_usec.saturating_add(u.cpu_usec);
                memory = memory.saturating_add(u.memory_bytes);
            }
        }
        (total, memory)
    }

    /// Reports usage of every active contract since it was last settled, but never
    /// for time before this engine started (the node was off then), with the
    /// network traffic of its workloads since the last report as `nu_bytes`, the
    /// CPU time they used since then and the memory they hold.
    pub async fn report_usage(&mut self) -> Result<(), EngineError> {
        let now = self.ledger.now().await?;
        let started_at = self.started_at.unwrap_or(now);
        for c in self.ledger.open_contracts(self.node).await? {
            if c.state != ContractState::Active {
                continue;
            }
            let Some(mut rec) = self.store.get(c.id)? else {
                continue;
            };
            let start = c.billed_until.max(rec.billed_until).max(started_at);
            if now <= start {
                continue;
            }
            let (counters, memory_bytes) = self.measure(&rec).await;
            let before = *self.reported.entry(c.id).or_insert(counters);
            let used = counters.since(before);
            match self
                .ledger
                .submit(TxBody::ReportUsage {
                    contract: c.id,
                    window_start: start,
                    window_end: now,
                    nu_bytes: used.traffic,
                    cpu_usec: used.cpu_usec,
                    memory_bytes,
                })
                .await
            {
                Ok(()) => {
                    rec.billed_until = now;
                    self.reported.insert(c.id, counters);
                    self.store.put(&rec)?;
                    self.say(&format!(
                        "cellos: contract {}: usage reported for {} s",
                        c.id,
                        now - start
                    ));
                }
                Err(LedgerError::Refused(e)) => {
                    self.say(&format!(
                        "cellos: contract {}: usage report refused: {e}",
                        c.id
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
