//! What the console dashboard (`cellos-dashboard` on tty1) sees of the node, served on a
//! unix socket in the run directory (`/run/cellos/dashboard.sock`, mode 0600).
//!
//! Why a unix socket and not the node API: the API listens on the network, where the
//! per-contract list is nobody's business but the owner's (it answers signed requests
//! only). The socket is a file: only root on the node opens it, a tenant's container or
//! VM (own mount and network namespaces) never has it, and no address or firewall rule
//! can expose it. Each connection gets one JSON [`Snapshot`] and is closed; nothing is
//! read from the client.
//!
//! The snapshot is built from names, kinds, phases and numbers only; the deployment's
//! specs (passwords, WireGuard keys) and the provisioners' results never go into it
//! ([`contract_view`] is the one place a record is looked at).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cellos_dashboard::view::{
    CapacityView, ContractView, LedgerView, PoolView, RegState, Registration, Res, Snapshot,
    WorkloadView,
};
use cellos_ledger::client::Client;
use cellos_ledger::Resources;
use cellos_provision::api::ApiState;
use cellos_provision::{Phase, Record};
use cellos_registrar::Notice;
use cellos_storage::Pool;
use tokio::io::AsyncWriteExt;

/// Error lines kept for the screen.
const ERRORS_KEPT: usize = 8;
/// How often the ledger is asked about the node (one small request).
const LEDGER_EVERY: Duration = Duration::from_secs(20);
/// ... and how often before the node record has been read once.
const LEDGER_SOON: Duration = Duration::from_secs(3);
/// A client that does not take its snapshot in this time is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What cellosd learns as it runs, on top of what the API state already holds.
#[derive(Default)]
struct Live {
    reachable: Option<bool>,
    registration: Registration,
    errors: VecDeque<String>,
}

pub struct Dashboard {
    api: Arc<ApiState>,
    ledger_url: String,
    farm: u64,
    node_key: String,
    pools: Vec<Pool>,
    live: Mutex<Live>,
}

impl Dashboard {
    pub fn new(
        api: Arc<ApiState>,
        ledger_url: &str,
        farm: u32,
        node_key: String,
        pools: Vec<Pool>,
    ) -> Arc<Dashboard> {
        Arc::new(Dashboard {
            api,
            ledger_url: ledger_url.to_string(),
            farm: u64::from(farm),
            node_key,
            pools,
            live: Mutex::new(Live::default()),
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes what a registrar notice says about the ledger and the registration; a
    /// failure also becomes an error line.
    pub fn notice(&self, n: &Notice) {
        let mut l = self.live();
        match n {
            Notice::WaitingForApproval { node, .. } => {
                l.reachable = Some(true);
                l.registration.state = RegState::WaitingForApproval;
                l.registration.node = Some(u64::from(*node));
            }
            Notice::CapacityUpdated { .. } => l.reachable = Some(true),
            Notice::Unreachable { .. } => {
                l.reachable = Some(false);
                push_error(&mut l, n.to_string());
            }
            _ => push_error(&mut l, n.to_string()),
        }
    }

    /// An error line of cellosd's own (it is printed on the serial console too).
    pub fn error(&self, line: String) {
        push_error(&mut self.live(), line);
    }

    pub fn registered(&self, node: u32) {
        let mut l = self.live();
        l.reachable = Some(true);
        l.registration.state = RegState::Registered;
        l.registration.node = Some(u64::from(node));
    }

    /// Asks the ledger every [`LEDGER_EVERY`] whether it answers and, once the node has
    /// an id, what its record says (status, last uptime report).
    pub fn watch_ledger(self: Arc<Self>, client: Client) {
        tokio::spawn(async move {
            loop {
                let node = self
                    .live()
                    .registration
                    .node
                    .and_then(|n| u32::try_from(n).ok());
                match node {
                    Some(id) => match client.node(id).await {
                        Ok(n) => {
                            let mut l = self.live();
                            l.reachable = Some(true);
                            l.registration.status = Some(n.status.to_string());
                            l.registration.last_uptime = Some(n.last_uptime);
                        }
                        Err(_) => self.live().reachable = Some(false),
                    },
                    None => {
                        let ok = client.status().await.is_ok();
                        self.live().reachable = Some(ok);
                    }
                }
                // Until the node record has been read once, look again soon: a farmer
                // watching a fresh node should not wait long for its status.
                let known = self.live().registration.status.is_some();
                tokio::time::sleep(if known { LEDGER_EVERY } else { LEDGER_SOON }).await;
            }
        });
    }

    pub fn snapshot(&self) -> Snapshot {
        let records: Vec<Record> = self
            .api
            .store
            .all()
            .unwrap_or_default()
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        let total = self
            .api
            .info
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|i| i.capacity))
            .unwrap_or_default();
        let l = self.live();
        Snapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.api.started.elapsed().as_secs(),
            node_key: self.node_key.clone(),
            farm: self.farm,
            ledger: LedgerView {
                url: self.ledger_url.clone(),
                reachable: l.reachable,
            },
            registration: l.registration.clone(),
            capacity: capacity(total, &records),
            pools: self.pools.iter().map(pool_view).collect(),
            contracts: records.iter().map(contract_view).collect(),
            errors: l.errors.iter().cloned().collect(),
        }
    }

    /// Serves snapshots on `path` (replacing a stale socket from an earlier run).
    pub fn serve(self: Arc<Self>, path: PathBuf) {
        tokio::spawn(async move {
            let listener = match bind(&path) {
                Ok(l) => l,
                Err(e) => {
                    let line = format!("cellosd: dashboard socket {}: {e}", path.display());
                    println!("{line}");
                    self.error(line);
                    return;
                }
            };
            println!("cellosd: dashboard view on {}", path.display());
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let body = serde_json::to_vec(&self.snapshot()).unwrap_or_default();
                // One small write; a client that does not read is dropped after the timeout.
                let _ = tokio::time::timeout(WRITE_TIMEOUT, conn.write_all(&body)).await;
            }
        });
    }
}

fn push_error(l: &mut Live, line: String) {
    if l.errors.len() == ERRORS_KEPT {
        l.errors.pop_front();
    }
    l.errors.push_back(line);
}

fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let l = tokio::net::UnixListener::bind(path)?;
    crate::sys::owner_only(path)?;
    Ok(l)
}

fn pool_view(p: &Pool) -> PoolView {
    PoolView {
        name: p.name.to_string(),
        disk: p.disk.clone(),
        kind: p.name.kind().to_string(),
        size: p.size,
        used: crate::sys::fs_used(&p.mount).unwrap_or(0),
    }
}

fn res(r: Resources) -> Res {
    Res {
        cru: r.cru,
        mru: r.mru,
        sru: r.sru,
        hru: r.hru,
    }
}

/// Total: what the node registered. Reserved: what the deployments the node took ask
/// for. Used: the part of that whose workloads are ready.
fn capacity(total: Resources, records: &[Record]) -> CapacityView {
    let mut reserved = Resources::default();
    let mut used = Resources::default();
    for r in records.iter().filter(|r| r.rejected.is_none()) {
        for w in &r.deployment.workloads {
            let need = w.spec.resources();
            reserved = reserved.checked_add(&need).unwrap_or(reserved);
            if r.phases.get(&w.name) == Some(&Phase::Ready) {
                used = used.checked_add(&need).unwrap_or(used);
            }
        }
    }
    CapacityView {
        total: res(total),
        reserved: res(reserved),
        used: res(used),
    }
}

/// A contract as the console shows it: its id, whether the ledger took it, and each
/// workload's name, kind and phase. Nothing else of the record is read.
fn contract_view(r: &Record) -> ContractView {
    ContractView {
        id: r.contract,
        accepted: r.accepted,
        rejected: r.rejected.clone(),
        workloads: r
            .deployment
            .workloads
            .iter()
            .map(|w| WorkloadView {
                name: w.name.clone(),
                kind: w.spec.kind().to_string(),
                phase: r
                    .phases
                    .get(&w.name)
                    .and_then(|p| serde_json::to_value(p).ok())
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "pending".into()),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellos_ledger::deployment::{Deployment, ShardMode, Size, Workload, WorkloadSpec};
    use cellos_ledger::{Hash, GIB};
    use std::collections::BTreeMap;

    const PASSWORD: &str = "hunter2-very-secret";

    fn record() -> Record {
        let key = cellos_ledger::keys::generate();
        let workloads = vec![
            Workload {
                name: "data".into(),
                spec: WorkloadSpec::Volume {
                    size: Size(10 * GIB),
                },
            },
            Workload {
                name: "objects".into(),
                spec: WorkloadSpec::Shard {
                    size: Size(100 * GIB),
                    mode: ShardMode::User,
                    password: Some(PASSWORD.into()),
                },
            },
        ];
        Record {
            contract: 42,
            deployment_hash: Hash::of(b"d"),
            deployment: Deployment {
                owner: cellos_ledger::keys::public_key(&key),
                version: 1,
                metadata: BTreeMap::from([("note".to_string(), PASSWORD.to_string())]),
                workloads,
                signature: None,
            },
            phases: BTreeMap::from([("data".to_string(), Phase::Ready)]),
            results: vec![],
            accepted: true,
            rejected: None,
            billed_until: 0,
        }
    }

    #[test]
    fn a_contract_shows_names_kinds_and_phases() {
        let v = contract_view(&record());
        assert_eq!(v.id, 42);
        assert!(v.accepted);
        let w: Vec<_> = v
            .workloads
            .iter()
            .map(|w| format!("{} {} {}", w.name, w.kind, w.phase))
            .collect();
        assert_eq!(w, ["data volume ready", "objects shard pending"]);
    }

    #[test]
    fn the_snapshot_never_carries_a_password() {
        let snapshot = Snapshot {
            contracts: vec![contract_view(&record())],
            ..Snapshot::default()
        };
        let json = serde_json::to_string(&snapshot).expect("json");
        assert!(json.contains("objects"), "{json}");
        assert!(!json.contains(PASSWORD), "{json}");
    }

    #[test]
    fn capacity_counts_taken_deployments_and_ready_workloads() {
        let mut refused = record();
        refused.rejected = Some("no room".into());
        let total = Resources {
            cru: 4,
            mru: 8 * GIB,
            sru: 100 * GIB,
            hru: 1000 * GIB,
        };
        let c = capacity(total, &[record(), refused]);
        assert_eq!(c.total.hru, 1000 * GIB);
        assert_eq!(c.reserved.sru, 10 * GIB);
        assert_eq!(c.reserved.hru, 100 * GIB);
        assert_eq!(c.used.sru, 10 * GIB);
        assert_eq!(c.used.hru, 0);
    }

    #[tokio::test]
    async fn the_socket_is_root_only_and_serves_one_snapshot_per_connection() {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().expect("tempdir");
        let store = cellos_provision::Store::open(dir.path()).expect("store");
        store.put(&record()).expect("put");
        let key = cellos_ledger::keys::public_key(&cellos_ledger::keys::generate());
        let api = ApiState::new(store, key);
        let board = Dashboard::new(api, "http://ledger:8080", 3, key.to_string(), vec![]);
        board.registered(7);
        board.error("cellos: something broke".into());
        let path = dir.path().join("dashboard.sock");
        // A stale socket from an earlier run is replaced.
        std::fs::write(&path, b"stale").expect("stale");
        board.clone().serve(path.clone());
        let mut tries = 0;
        while std::fs::metadata(&path).map_or(true, |m| m.len() != 0) {
            tries += 1;
            assert!(tries < 500, "the socket never appeared");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let read = path.clone();
        let body = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&read).expect("connect");
            let mut b = String::new();
            s.read_to_string(&mut b).expect("read");
            b
        })
        .await
        .expect("reader");
        let snap: Snapshot = serde_json::from_str(&body).expect("a snapshot");
        assert_eq!(snap.farm, 3);
        assert_eq!(snap.node_key, key.to_string());
        assert_eq!(snap.registration.node, Some(7));
        assert_eq!(snap.registration.state, RegState::Registered);
        assert_eq!(snap.contracts.len(), 1);
        assert_eq!(snap.errors, ["cellos: something broke"]);
        assert!(!body.contains(PASSWORD));
    }
}
