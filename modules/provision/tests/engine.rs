//! The engine against a real ledger server over HTTP, with a fake volume provisioner
//! (directories in a temp dir) at the workload seam.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellos_ledger::client::Client;
use cellos_ledger::deployment::{
    self, Deployment, DeploymentResult, Size, Workload, WorkloadSpec, WorkloadState,
};
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::server::{Config as ServerConfig, ManualClock, Server};
use cellos_ledger::*;
use cellos_provision::*;
use ed25519_dalek::SigningKey;

const CHAIN: &str = "provision-test";

/// Volumes as directories; records every call.
#[derive(Clone, Default)]
struct FakeVolumes {
    dir: PathBuf,
    calls: Arc<Mutex<Vec<String>>>,
    fail: Arc<Mutex<BTreeSet<String>>>,
    /// When set, `ensure` blocks its thread this long (like `btrfs` on a busy disk)
    /// and records when it ran.
    slow: Arc<Mutex<Option<Slow>>>,
    /// What network workloads report as their traffic counter.
    traffic: Arc<Mutex<Option<u64>>>,
    /// What every workload reports as its CPU time and memory.
    usage: Arc<Mutex<Option<workload::WorkloadUsage>>>,
}

/// How long a slow `ensure` blocks, and when each one started and ended.
type Slow = (Duration, Vec<(Instant, Instant)>);

impl FakeVolumes {
    fn exists(&self, c: ContractId, name: &str) -> bool {
        self.dir.join(format!("c{c}-{name}")).exists()
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }
}

impl Provisioner for FakeVolumes {
    fn usage(&self, _: &WorkloadId, _: &WorkloadSpec) -> Option<workload::WorkloadUsage> {
        *self.usage.lock().expect("lock")
    }

    fn traffic(&self, _: &WorkloadId, spec: &WorkloadSpec) -> Option<u64> {
        match spec {
            WorkloadSpec::Network(_) => *self.traffic.lock().expect("lock"),
            _ => None,
        }
    }

    fn ensure(
        &self,
        id: &WorkloadId,
        spec: &WorkloadSpec,
    ) -> Result<BTreeMap<String, String>, WorkloadError> {
        self.calls
            .lock()
            .expect("lock")
            .push(format!("ensure {}", id.node_name()));
        if self.fail.lock().expect("lock").contains(&id.name) {
            return Err(WorkloadError("disk on fire".into()));
        }
        let slow = self.slow.lock().expect("lock").as_ref().map(|(d, _)| *d);
        if let Some(d) = slow {
            let start = Instant::now();
            std::thread::sleep(d);
            if let Some((_, runs)) = self.slow.lock().expect("lock").as_mut() {
                runs.push((start, Instant::now()));
            }
        }
        let size = match spec {
            WorkloadSpec::Volume { size } | WorkloadSpec::Shard { size, .. } => *size,
            WorkloadSpec::Network(_) | WorkloadSpec::Container(_) | WorkloadSpec::Vm(_) => Size(0),
        };
        let p = self.dir.join(id.node_name());
        std::fs::create_dir_all(&p).map_err(|e| WorkloadError(e.to_string()))?;
        Ok(BTreeMap::from([
            ("path".to_string(), p.display().to_string()),
            ("size".to_string(), size.0.to_string()),
        ]))
    }
    fn remove(&self, id: &WorkloadId, _: &WorkloadSpec) -> Result<(), WorkloadError> {
        self.calls
            .lock()
            .expect("lock")
            .push(format!("remove {}", id.node_name()));
        let p = self.dir.join(id.node_name());
        match std::fs::remove_dir_all(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(WorkloadError(e.to_string())),
        }
    }
}

struct World {
    _dirs: tempfile::TempDir,
    client: Client,
    farmer: Signer,
    user: Signer,
    node_key: SigningKey,
    node: NodeId,
    state: PathBuf,
    volumes: FakeVolumes,
    lines: Arc<Mutex<Vec<String>>>,
    /// The ledger's clock: it moves only when a test advances it.
    clock: ManualClock,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn world() -> World {
    let dirs = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at_system_time();
    let srv = Server::bind(ServerConfig {
        data: dirs.path().join("ledger"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        params: ChainParams::new(CHAIN, true),
        blob_limit: 1 << 20,
        clock: Arc::new(clock.clone()),
        ..Default::default()
    })
    .await
    .expect("server");
    let url = format!("http://{}", srv.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(srv.run(async {
        let _ = stopped.await;
    }));
    let client = Client::new(&url).expect("client");
    let mut farmer = Signer::new(keys::generate(), CHAIN);
    let mut user = Signer::new(keys::generate(), CHAIN);
    // Accounts are opened by money (the dev faucet), then record their key.
    for (s, funds) in [(&mut farmer, EXISTENTIAL_DEPOSIT), (&mut user, 1_000_000)] {
        client
            .submit(&s.sign(TxBody::Faucet { amount: funds }))
            .await
            .expect("faucet");
        let ek = keys::encryption_key(s.key());
        client
            .submit(&s.sign(TxBody::CreateAccount {
                encryption_key: Some(ek),
            }))
            .await
            .expect("account");
    }
    client
        .submit(&farmer.sign(TxBody::CreateFarm {
            name: "f".into(),
            prices: Prices {
                cu: 0,
                su: 3600,
                // One unit per GiB of traffic.
                nu: 1,
                ipu: 0,
            },
            enrollment_key: None,
        }))
        .await
        .expect("farm");
    let node_key = keys::generate();
    let mut ns = Signer::new(node_key.clone(), CHAIN);
    client
        .submit(&ns.sign(TxBody::RegisterNode {
            farm: 1,
            capacity: Resources {
                cru: 4,
                mru: 8 << 30,
                sru: 100 << 30,
                hru: 100 << 30,
            },
            interfaces: vec![],
            gpus: vec![],
            accel: cellos_ledger::Accel::Tcg,
            encryption_key: keys::encryption_key(&node_key),
            location: None,
            enrollment: None,
            persistent: true,
        }))
        .await
        .expect("register");
    client
        .submit(&farmer.sign(TxBody::ApproveNode { node: 1 }))
        .await
        .expect("approve");
    let volumes = FakeVolumes {
        dir: dirs.path().join("volumes"),
        ..Default::default()
    };
    std::fs::create_dir_all(&volumes.dir).expect("volumes dir");
    let state = dirs.path().join("state");
    World {
        _dirs: dirs,
        client,
        farmer,
        user,
        node_key,
        node: 1,
        state,
        volumes,
        lines: Arc::default(),
        clock,
        _stop: stop,
    }
}

impl World {
    fn engine(&self) -> Engine<LedgerClient> {
        let ledger = LedgerClient {
            client: self.client.clone(),
            signer: cellos_identity::NodeSigner::new(Signer::new(self.node_key.clone(), CHAIN)),
        };
        let lines = self.lines.clone();
        Engine::new(
            ledger,
            Store::open(&self.state).expect("store"),
            Provisioners {
                volume: std::sync::Arc::new(self.volumes.clone()),
                shard: std::sync::Arc::new(self.volumes.clone()),
                network: std::sync::Arc::new(self.volumes.clone()),
                container: std::sync::Arc::new(self.volumes.clone()),
                vm: std::sync::Arc::new(self.volumes.clone()),
            },
            self.node,
            self.node_key.clone(),
            Config {
                usage_every: Duration::from_secs(3600),
                event_wait: Duration::from_millis(10),
            },
            Box::new(move |l| lines.lock().expect("lock").push(l.to_string())),
        )
    }

    fn deployment(&self, volumes: &[(&str, u64)]) -> Deployment {
        let mut d = Deployment {
            owner: self.user.public_key(),
            version: 1,
            metadata: BTreeMap::new(),
            workloads: volumes
                .iter()
                .map(|(n, s)| Workload {
                    name: n.to_string(),
                    spec: WorkloadSpec::Volume { size: Size(*s) },
                })
                .collect(),
            signature: None,
        };
        d.sign(self.user.key());
        d
    }

    /// What `cellos deploy` does, with knobs to get it wrong.
    async fn order(
        &mut self,
        d: &Deployment,
        hash: Hash,
        reserve: Resources,
        seal_to: EncryptionKey,
    ) -> ContractId {
        let sealed =
            deployment::seal(&serde_json::to_vec(d).expect("json"), &seal_to).expect("seal");
        let blob = self
            .client
            .put_blob(&self.user, sealed)
            .await
            .expect("blob");
        let r = self
            .client
            .submit(&self.user.sign(TxBody::CreateContract {
                node: self.node,
                deployment_hash: hash,
                resources: reserve,
                public_ips: 0,
                deposit: 100_000,
                blob: Some(blob),
            }))
            .await
            .expect("contract");
        r.events
            .iter()
            .find_map(|e| e.contract())
            .expect("contract id")
    }

    async fn deploy(&mut self, d: &Deployment) -> ContractId {
        let ek = keys::encryption_key(&self.node_key);
        self.order(d, d.hash(), d.resources(), ek).await
    }

    async fn contract(&self, id: ContractId) -> Contract {
        self.client.contract(id).await.expect("contract")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_then_cancel_a_volume() {
    let mut w = world().await;
    let d = w.deployment(&[("data", 2 << 30)]);
    let c = w.deploy(&d).await;
    let mut e = w.engine();
    e.reconcile().await.expect("pass");
    let k = w.contract(c).await;
    assert_eq!(k.state, ContractState::Active);
    assert_eq!(k.accepted_hash, Some(d.hash()));
    assert!(w.volumes.exists(c, "data"));
    // The result reaches the user, sealed to the user's key only.
    let sealed = w
        .client
        .get_blob(&k.result.expect("result blob"))
        .await
        .expect("blob");
    assert!(deployment::open(&sealed, &w.node_key).is_err());
    let r: DeploymentResult =
        serde_json::from_slice(&deployment::open(&sealed, w.user.key()).expect("open"))
            .expect("json");
    assert_eq!(r.workloads.len(), 1);
    assert_eq!(r.workloads[0].state, WorkloadState::Ok);
    assert_eq!(r.workloads[0].data["size"], (2u64 << 30).to_string());
    // A second pass changes nothing.
    e.reconcile().await.expect("pass");
    assert_eq!(w.volumes.calls(), vec![format!("ensure c{c}-data")]);

    let before = w.client.node(w.node).await.expect("node").reserved;
    assert_eq!(before.sru, 2 << 30);
    w.client
        .submit(&w.user.sign(TxBody::CancelContract { contract: c }))
        .await
        .expect("cancel");
    e.reconcile().await.expect("pass");
    assert!(!w.volumes.exists(c, "data"), "cancel deletes the volume");
    assert!(Store::open(&w.state)
        .expect("store")
        .get(c)
        .expect("get")
        .is_none());
    assert!(w
        .client
        .node(w.node)
        .await
        .expect("node")
        .reserved
        .is_zero());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_why() {
    let mut w = world().await;
    let d = w.deployment(&[("data", 1 << 30)]);
    let node_ek = keys::encryption_key(&w.node_key);
    let other = w.deployment(&[("data", 3 << 30)]);
    let wrong_hash = w.order(&d, other.hash(), other.resources(), node_ek).await;
    let mut forged = d.clone();
    forged.sign(&keys::generate());
    forged.owner = w.user.public_key();
    let bad_sig = w
        .order(&forged, forged.hash(), forged.resources(), node_ek)
        .await;
    let too_big = w
        .order(
            &d,
            d.hash(),
            Resources {
                sru: 1 << 20,
                ..Default::default()
            },
            node_ek,
        )
        .await;
    let other_node = keys::encryption_key(&keys::generate());
    let wrong_seal = w.order(&d, d.hash(), d.resources(), other_node).await;

    w.engine().reconcile().await.expect("pass");
    for (c, want) in [
        (wrong_hash, "but the contract names"),
        (bad_sig, "signature does not verify"),
        (too_big, "but the contract reserves"),
        (wrong_seal, "not sealed to this node's key"),
    ] {
        match w.contract(c).await.state {
            ContractState::Closed(CloseCause::Rejected(reason)) => {
                assert!(
                    reason.contains(want),
                    "contract {c}: {reason:?} lacks {want:?}"
                )
            }
            other => panic!("contract {c} is {other:?}, not rejected"),
        }
        assert!(
            !w.volumes.exists(c, "data"),
            "nothing provisioned for a refused deployment"
        );
    }
    // The refused contracts were closed and refunded; the records are gone next pass.
    w.engine().reconcile().await.expect("pass");
    assert!(Store::open(&w.state)
        .expect("store")
        .list()
        .expect("list")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_workload_is_undone_and_refused() {
    let mut w = world().await;
    w.volumes.fail.lock().expect("lock").insert("second".into());
    let d = w.deployment(&[("first", 1 << 30), ("second", 1 << 30)]);
    let c = w.deploy(&d).await;
    w.engine().reconcile().await.expect("pass");
    match w.contract(c).await.state {
        ContractState::Closed(CloseCause::Rejected(reason)) => {
            assert!(
                reason.contains("workload second failed: disk on fire"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !w.volumes.exists(c, "first"),
        "the half-applied deployment was undone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_and_cleans_up_what_was_cancelled_meanwhile() {
    let mut w = world().await;
    let keep = w.deploy(&w.deployment(&[("keep", 1 << 30)])).await;
    let gone = w.deploy(&w.deployment(&[("gone", 1 << 30)])).await;
    w.engine().reconcile().await.expect("pass");
    assert!(w.volumes.exists(keep, "keep") && w.volumes.exists(gone, "gone"));

    // The node is off: the owner cancels one contract, and a crash had left a
    // half-provisioned record for the other.
    w.client
        .submit(&w.user.sign(TxBody::CancelContract { contract: gone }))
        .await
        .expect("cancel");
    let store = Store::open(&w.state).expect("store");
    let mut rec = store.get(keep).expect("get").expect("record");
    rec.phases.insert("keep".into(), Phase::Provisioning);
    store.put(&rec).expect("put");
    std::fs::remove_dir_all(w.volumes.dir.join(format!("c{keep}-keep"))).expect("lose the volume");

    w.engine().reconcile().await.expect("pass after restart");
    assert!(
        w.volumes.exists(keep, "keep"),
        "what is still contracted comes back"
    );
    assert!(
        !w.volumes.exists(gone, "gone"),
        "what was cancelled while off is removed"
    );
    assert_eq!(w.contract(keep).await.state, ContractState::Active);
    let rec = store.get(keep).expect("get").expect("record");
    assert_eq!(rec.phases["keep"], Phase::Ready);
    assert!(store.get(gone).expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_applies_only_the_difference() {
    let mut w = world().await;
    let d1 = w.deployment(&[("a", 1 << 30), ("b", 1 << 30)]);
    let c = w.deploy(&d1).await;
    let mut e = w.engine();
    e.reconcile().await.expect("pass");
    let d2 = w.deployment(&[("a", 1 << 30), ("c", 2 << 30)]);
    let sealed = deployment::seal(
        &serde_json::to_vec(&d2).expect("json"),
        &keys::encryption_key(&w.node_key),
    )
    .expect("seal");
    let blob = w.client.put_blob(&w.user, sealed).await.expect("blob");
    w.client
        .submit(&w.user.sign(TxBody::UpdateContract {
            contract: c,
            deployment_hash: d2.hash(),
            resources: d2.resources(),
            blob: Some(blob),
        }))
        .await
        .expect("update");
    e.reconcile().await.expect("pass");
    assert!(w.volumes.exists(c, "a") && w.volumes.exists(c, "c"));
    assert!(!w.volumes.exists(c, "b"), "the dropped workload is removed");
    assert_eq!(w.contract(c).await.accepted_hash, Some(d2.hash()));
    let calls = w.volumes.calls();
    assert!(calls.contains(&format!("remove c{c}-b")), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_moves_escrow_and_downtime_is_free() {
    let mut w = world().await;
    let c = w.deploy(&w.deployment(&[("data", 100 << 30)])).await;
    let mut e = w.engine();
    e.reconcile().await.expect("pass");
    // 100 GiB = 1 SU at 3600/h: one unit per second of ledger time.
    w.clock.advance(2);
    e.report_usage().await.expect("usage");
    let k = w.contract(c).await;
    assert_eq!(k.paid, 2, "two seconds of use");
    let farmer = w
        .client
        .account(&w.farmer.public_key())
        .await
        .expect("farmer");
    assert_eq!(
        farmer.balance,
        EXISTENTIAL_DEPOSIT + k.paid,
        "usage goes to the farm owner"
    );

    // The node is off for 3 s; a new engine bills only from its own start.
    drop(e);
    w.clock.advance(3);
    let mut e = w.engine();
    e.reconcile().await.expect("pass");
    let paid_before = w.contract(c).await.paid;
    w.clock.advance(1);
    e.report_usage().await.expect("usage");
    let paid_after = w.contract(c).await.paid;
    assert_eq!(
        paid_after - paid_before,
        1,
        "only the second since the restart is billed, not the downtime: {paid_before} -> {paid_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_traffic_is_billed_as_nu_bytes() {
    use cellos_ledger::network::{NetworkSpec, WgKey, WgSecret};
    const GIB: u64 = 1 << 30;
    let mut w = world().await;
    let mut d = w.deployment(&[("data", 100 << 30)]);
    d.workloads.push(Workload {
        name: "net".into(),
        spec: WorkloadSpec::Network(NetworkSpec {
            ip_range: "10.20.0.0/16".parse().expect("net"),
            subnet: "10.20.1.0/24".parse().expect("net"),
            private_key: WgSecret(WgKey([1; 32])),
            listen_port: 51820,
            peers: vec![],
        }),
    });
    d.sign(w.user.key());
    let c = w.deploy(&d).await;
    let mut e = w.engine();
    e.reconcile().await.expect("pass");
    let paid = |k: &Contract| k.paid;
    *w.volumes.traffic.lock().expect("lock") = Some(3 * GIB);
    w.clock.advance(2);
    e.report_usage().await.expect("usage");
    let first = paid(&w.contract(c).await);
    assert_eq!(first, 2 + 3, "2 s of storage and 3 GiB of traffic");

    // Only what the counter grew by since the last report is billed.
    *w.volumes.traffic.lock().expect("lock") = Some(4 * GIB);
    w.clock.advance(1);
    e.report_usage().await.expect("usage");
    let second = paid(&w.contract(c).await);
    assert_eq!(second - first, 1 + 1, "1 s and 1 GiB more");

    // A reboot starts the counter again: all of it is new traffic.
    *w.volumes.traffic.lock().expect("lock") = Some(2 * GIB);
    w.clock.advance(1);
    e.report_usage().await.expect("usage");
    let third = paid(&w.contract(c).await);
    assert_eq!(third - second, 1 + 2, "1 s and 2 GiB since the reboot");

    // cellosd restarts, the network keeps running: the new engine measures the
    // counter at its first report and bills only what it grows by after.
    drop(e);
    let mut e = w.engine();
    e.reconcile().await.expect("pass");
    *w.volumes.traffic.lock().expect("lock") = Some(5 * GIB);
    w.clock.advance(1);
    e.report_usage().await.expect("usage");
    let fourth = paid(&w.contract(c).await);
    assert_eq!(fourth - third, 1, "no traffic billed twice after a restart");
    *w.volumes.traffic.lock().expect("lock") = Some(6 * GIB);
    w.clock.advance(1);
    e.report_usage().await.expect("usage");
    assert_eq!(paid(&w.contract(c).await) - fourth, 1 + 1);
}

/// CPU time goes to the ledger as what the counters grew by since the last report
/// (all of it after a restart of the workload, nothing twice after a restart of
/// cellosd), summed over the workloads; memory as the workloads' sum at the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_cpu_time_and_memory_are_reported() {
    let mut w = world().await;
    let c = w
        .deploy(&w.deployment(&[("a", 1 << 30), ("b", 1 << 30)]))
        .await;
    let mut e = w.engine();
    e.reconcile().await.expect("pass");
    let set = |cpu_usec: u64, memory_bytes: u64| {
        *w.volumes.usage.lock().expect("lock") = Some(workload::WorkloadUsage {
            cpu_usec,
            memory_bytes,
        });
    };
    let seen = |k: &Contract| (k.cpu_usec, k.memory_bytes);
    set(1_000_000, 10 << 20);
    w.clock.advance(2);
    e.report_usage().await.expect("usage");
    // Two workloads, each 1 s of CPU and 10 MiB.
    assert_eq!(seen(&w.contract(c).await), (2_000_000, 20 << 20));

    set(1_500_000, 8 << 20);
    w.clock.advance(1);
    e.report_usage().await.expect("usage");
    assert_eq!(seen(&w.contract(c).await), (3_000_000, 16 << 20));

    // The workloads started again: their whole count is new.
    set(250_000, 4 << 20);
    w.clock.advance(1);
    e.report_usage().await.expect("usage");
    assert_eq!(seen(&w.contract(c).await), (3_500_000, 8 << 20));

    // cellosd restarts, the workloads keep running: the new engine measures them at
    // its first report and sends only what they use after.
    drop(e);
    let mut e = w.engine();
    e.reconcile().await.expect("pass");
    set(400_000, 4 << 20);
    w.clock.advance(1);
    e.report_usage().await.expect("usage");
    assert_eq!(seen(&w.contract(c).await), (3_500_000, 8 << 20));
    set(500_000, 2 << 20);
    w.clock.advance(1);
    e.report_usage().await.expect("usage");
    assert_eq!(seen(&w.contract(c).await), (3_700_000, 4 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_go_up_in_dependency_order_and_down_in_reverse() {
    let mut w = world().await;
    let mut d = w.deployment(&[("vol", 1 << 30)]);
    // Listed first, but a shard comes after the volumes it may depend on.
    d.workloads.insert(
        0,
        Workload {
            name: "store".into(),
            spec: WorkloadSpec::Shard {
                size: Size(1 << 30),
                mode: Default::default(),
                password: Some("pw".into()),
            },
        },
    );
    d.sign(w.user.key());
    let c = w.deploy(&d).await;
    let mut e = w.engine();
    e.reconcile().await.expect("pass");
    assert_eq!(w.contract(c).await.state, ContractState::Active);
    w.client
        .submit(&w.user.sign(TxBody::CancelContract { contract: c }))
        .await
        .expect("cancel");
    e.reconcile().await.expect("pass");
    assert_eq!(
        w.volumes.calls(),
        vec![
            format!("ensure c{c}-vol"),
            format!("ensure c{c}-store"),
            format!("remove c{c}-store"),
            format!("remove c{c}-vol"),
        ]
    );
}

/// cellosd runs the engine and the node API on one current-thread runtime: a
/// provisioner that blocks (btrfs on a busy disk) must not stall the API.
#[tokio::test]
async fn a_slow_provisioner_does_not_stall_the_node_api() {
    let mut w = world().await;
    *w.volumes.slow.lock().expect("lock") = Some((Duration::from_secs(2), Vec::new()));
    let d = w.deployment(&[("data", 1 << 30)]);
    let c = w.deploy(&d).await;
    let api = api::ApiState::new(
        Store::open(&w.state).expect("store"),
        keys::public_key(&w.node_key),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1/status", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, api::router(api)).await });
    let mut e = w.engine();
    let slow = w.volumes.slow.clone();
    let probe = async {
        // Ask the API over and over while the pass runs; keep when each answer came.
        let http = reqwest::Client::new();
        let mut answered = Vec::new();
        for _ in 0..60 {
            let r = http.get(&url).send().await.expect("the node API answers");
            assert_eq!(r.status().as_u16(), 200);
            answered.push(Instant::now());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answered
    };
    let (pass, answered) = tokio::join!(e.reconcile(), probe);
    pass.expect("pass");
    assert_eq!(w.contract(c).await.state, ContractState::Active);
    let runs = slow.lock().expect("lock").take().expect("slow").1;
    let (start, end) = runs.first().copied().expect("the provisioner ran");
    assert!(
        answered.iter().any(|t| *t > start && *t < end),
        "the node API did not answer while the provisioner ran"
    );
}
