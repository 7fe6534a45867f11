//! The registration, retry and approval logic against a fake ledger and host, in
//! paused tokio time (sleeps advance the clock at once).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use cellos_ledger::client::Status;
use cellos_ledger::{Hash, Node, NodeStatus, PublicKey, SignedTx, GIB};

use super::*;

const URL: &str = "http://10.0.2.2:8645";
/// The fake ledger's clock runs this far ahead of ours.
const LEDGER_AHEAD: u64 = 1000;

#[derive(Default)]
struct LedgerState {
    /// Failures for the next calls of the named method, in order.
    fail: VecDeque<(&'static str, LedgerError)>,
    nodes: Vec<Node>,
    submitted: Vec<TxBody>,
    refuse_enrollment: bool,
    /// Approve a pending node on this poll of its record.
    approve_on_poll: u32,
    polls: u32,
}

#[derive(Clone, Default)]
struct FakeLedger(Arc<Mutex<LedgerState>>);

impl FakeLedger {
    fn state(&self) -> MutexGuard<'_, LedgerState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, method: &'static str) -> Result<(), LedgerError> {
        let mut st = self.state();
        if st.fail.front().is_some_and(|(m, _)| *m == method) {
            if let Some((_, e)) = st.fail.pop_front() {
                return Err(e);
            }
        }
        Ok(())
    }

    fn submitted(&self) -> Vec<TxBody> {
        self.state().submitted.clone()
    }
}

fn refused(message: &str) -> LedgerError {
    LedgerError::Refused {
        status: 422,
        message: message.into(),
    }
}

impl Ledger for FakeLedger {
    fn url(&self) -> &str {
        URL
    }

    async fn status(&self) -> Result<Status, LedgerError> {
        self.check("status")?;
        Ok(Status {
            chain_id: "fake".into(),
            dev_mode: true,
            ledger_key: PublicKey([0; 32]),
            genesis_hash: Hash([0; 32]),
            height: 1,
            head: Hash([0; 32]),
            time: unix_now() + LEDGER_AHEAD,
        })
    }

    async fn node(&self, id: NodeId) -> Result<Node, LedgerError> {
        self.check("node")?;
        let mut st = self.state();
        st.polls += 1;
        let approve = st.polls >= st.approve_on_poll;
        let n = st
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| LedgerError::Refused {
                status: 404,
                message: format!("no node {id}"),
            })?;
        n.approved |= approve;
        Ok(n.clone())
    }

    async fn node_by_key(&self, key: &PublicKey) -> Result<Option<Node>, LedgerError> {
        self.check("node_by_key")?;
        Ok(self
            .state()
            .nodes
            .iter()
            .find(|n| n.pubkey == *key)
            .cloned())
    }

    async fn nonce(&self, _key: &PublicKey) -> Result<u64, LedgerError> {
        Ok(0)
    }

    async fn submit(&self, tx: &SignedTx) -> Result<Receipt, LedgerError> {
        self.check("submit")?;
        assert!(tx.verify().is_ok(), "the registrar signs what it sends");
        assert_eq!(tx.tx.chain_id, "fake");
        let mut st = self.state();
        st.submitted.push(tx.tx.body.clone());
        let mut events = Vec::new();
        match &tx.tx.body {
            TxBody::RegisterNode {
                farm,
                capacity,
                interfaces,
                gpus,
                accel,
                encryption_key,
                enrollment,
                ..
            } => {
                if enrollment.is_some() && st.refuse_enrollment {
                    return Err(refused("enrollment token expired at 5, it is 9"));
                }
                let node = fake_node(tx.tx.signer, *farm, *capacity, *encryption_key);
                let node = Node {
                    approved: enrollment.is_some(),
                    interfaces: interfaces.clone(),
                    gpus: gpus.clone(),
                    accel: *accel,
                    ..node
                };
                events.push(Event::NodeRegistered {
                    node: node.id,
                    farm: node.farm,
                    approved: node.approved,
                });
                st.nodes.push(node);
            }
            TxBody::UpdateNode {
                node,
                capacity,
                interfaces,
                gpus,
                accel,
                encryption_key,
                persistent,
            } => {
                let n = st
                    .nodes
                    .iter_mut()
                    .find(|n| n.id == *node)
                    .ok_or_else(|| refused("no such node"))?;
                n.capacity = *capacity;
                n.interfaces = interfaces.clone();
                n.gpus = gpus.clone();
                n.accel = *accel;
                n.encryption_key = *encryption_key;
                n.persistent = *persistent;
            }
            TxBody::ReportUptime { .. } => {}
            other => panic!("the registrar sent {other:?}"),
        }
        Ok(Receipt {
            hash: tx.hash(),
            height: 2,
            events,
        })
    }
}

fn fake_node(pubkey: PublicKey, farm: FarmId, capacity: Resources, ek: EncryptionKey) -> Node {
    Node {
        id: 7,
        pubkey,
        farm,
        approved: false,
        capacity,
        reserved: Resources::default(),
        interfaces: vec![],
        gpus: vec![],
        accel: Accel::Tcg,
        location: None,
        encryption_key: ek,
        persistent: true,
        status: NodeStatus::Up,
        last_uptime: 0,
        uptime_secs: 0,
        registered_at: 0,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no such file /proc/meminfo")]
struct HostError;

#[derive(Default)]
struct HostState {
    capacity: Option<Capacity>,
    fail_measure: u32,
}

#[derive(Clone, Default)]
struct FakeHost(Arc<Mutex<HostState>>);

impl FakeHost {
    fn new(c: Capacity) -> Self {
        let h = FakeHost::default();
        h.set(c);
        h
    }
    fn set(&self, c: Capacity) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).capacity = Some(c);
    }
    fn fail_next(&self, n: u32) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fail_measure = n;
    }
}

impl Host for FakeHost {
    type Error = HostError;
    fn measure(&mut self) -> Result<Capacity, HostError> {
        let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if st.fail_measure > 0 {
            st.fail_measure -= 1;
            return Err(HostError);
        }
        st.capacity.clone().ok_or(HostError)
    }
    fn uptime(&mut self) -> Result<Duration, HostError> {
        Ok(Duration::from_secs(42))
    }
}

fn capacity(sru_gib: u64) -> Capacity {
    Capacity {
        resources: Resources {
            cru: 2,
            mru: 2 * GIB,
            sru: sru_gib * GIB,
            hru: 0,
        },
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: "52:54:00:12:34:56".into(),
            ips: vec!["10.0.2.15/24".into()],
        }],
        gpus: vec![],
        accel: Accel::Tcg,
    }
}

type Notices = Arc<Mutex<Vec<Notice>>>;

fn registrar(
    ledger: &FakeLedger,
    host: &FakeHost,
    identity: &Identity,
    config: Config,
) -> (Registrar<FakeLedger, FakeHost>, Notices) {
    let notices = Notices::default();
    let sink = notices.clone();
    let r = Registrar::new(
        ledger.clone(),
        host.clone(),
        identity.clone(),
        config,
        move |n| sink.lock().unwrap_or_else(|p| p.into_inner()).push(n),
    );
    (r, notices)
}

fn taken(n: &Notices) -> Vec<Notice> {
    std::mem::take(&mut *n.lock().unwrap_or_else(|p| p.into_inner()))
}

fn unreachable_err() -> LedgerError {
    LedgerError::Unreachable {
        cause: "Connection refused (os error 111)".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn unreachable_ledger_backs_off_then_registers() {
    let ledger = FakeLedger::default();
    ledger.state().fail.extend([
        ("status", unreachable_err()),
        ("status", unreachable_err()),
        ("status", unreachable_err()),
    ]);
    let host = FakeHost::new(capacity(20));
    let id = Identity::generate();
    let (mut r, notices) = registrar(&ledger, &host, &id, Config::new(3));
    let start = Instant::now();
    let reg = r.register().await;
    assert_eq!(
        reg,
        Registered {
            node: 7,
            farm: 3,
            capacity: capacity(20).resources
        }
    );
    // 1 + 2 + 4 s of backoff, then one 5 s approval poll.
    assert_eq!(start.elapsed().as_secs(), 12);
    let lines: Vec<String> = taken(&notices).iter().map(|n| n.to_string()).collect();
    assert_eq!(
        lines,
        [
            "cellos: ledger http://10.0.2.2:8645 unreachable (Connection refused (os error 111)), retrying in 1s",
            "cellos: ledger http://10.0.2.2:8645 unreachable (Connection refused (os error 111)), retrying in 2s",
            "cellos: ledger http://10.0.2.2:8645 unreachable (Connection refused (os error 111)), retrying in 4s",
            "cellos: node 7 registered on farm 3, waiting for the farmer to approve it",
        ]
    );
    let sent = ledger.submitted();
    assert_eq!(sent.len(), 1);
    assert!(matches!(
        &sent[0],
        TxBody::RegisterNode { farm: 3, capacity: c, enrollment: None, encryption_key, .. }
            if *c == capacity(20).resources && *encryption_key == id.encryption_key()
    ));
}

#[tokio::test(start_paused = true)]
async fn backoff_resets_after_a_success() {
    let ledger = FakeLedger::default();
    ledger.state().fail.extend([
        ("status", unreachable_err()),
        ("status", unreachable_err()),
        ("node_by_key", unreachable_err()),
    ]);
    let host = FakeHost::new(capacity(20));
    let (mut r, notices) = registrar(&ledger, &host, &Identity::generate(), Config::new(3));
    r.register().await;
    let delays: Vec<u64> = taken(&notices)
        .iter()
        .filter_map(|n| match n {
            Notice::Unreachable { retry_in, .. } => Some(retry_in.as_secs()),
            _ => None,
        })
        .collect();
    // The status call succeeded before the lookup failed: the delay starts over.
    assert_eq!(delays, [1, 2, 1]);
}

#[tokio::test(start_paused = true)]
async fn refusal_is_retried_at_the_slow_rate_with_the_ledgers_words() {
    let ledger = FakeLedger::default();
    ledger.state().approve_on_poll = 1;
    ledger
        .state()
        .fail
        .push_back(("submit", refused("farm 3 does not exist")));
    let host = FakeHost::new(capacity(20));
    let (mut r, notices) = registrar(&ledger, &host, &Identity::generate(), Config::new(3));
    let start = Instant::now();
    r.register().await;
    assert_eq!(start.elapsed().as_secs(), 30 + 5);
    let n = taken(&notices);
    assert_eq!(
        n[0].to_string(),
        "cellos: ledger http://10.0.2.2:8645 refused RegisterNode (422): farm 3 does not exist, retrying in 30s"
    );
    // The fake records only what it accepts.
    assert_eq!(ledger.submitted().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn waits_for_approval_and_says_so_once() {
    let ledger = FakeLedger::default();
    ledger.state().approve_on_poll = 4;
    ledger.state().fail.push_back(("node", unreachable_err()));
    let host = FakeHost::new(capacity(20));
    let cfg = Config {
        approval_poll: Duration::from_secs(2),
        ..Config::new(3)
    };
    let (mut r, notices) = registrar(&ledger, &host, &Identity::generate(), cfg);
    r.register().await;
    let n = taken(&notices);
    let waiting = n
        .iter()
        .filter(|n| matches!(n, Notice::WaitingForApproval { node: 7, farm: 3 }))
        .count();
    assert_eq!(waiting, 1, "{n:?}");
    assert!(n.iter().any(|n| matches!(n, Notice::Unreachable { .. })));
    assert_eq!(ledger.state().polls, 4);
}

fn token(farm: FarmId) -> EnrollToken {
    let k = cellos_ledger::keys::generate();
    EnrollToken::issue(&k, "fake", farm, u64::MAX)
}

#[tokio::test(start_paused = true)]
async fn enrollment_token_joins_approved_at_once() {
    let ledger = FakeLedger::default();
    let host = FakeHost::new(capacity(20));
    let cfg = Config {
        enrollment: Some(token(3)),
        ..Config::new(3)
    };
    let (mut r, notices) = registrar(&ledger, &host, &Identity::generate(), cfg);
    let start = Instant::now();
    assert_eq!(r.register().await.node, 7);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(taken(&notices).is_empty());
}

#[tokio::test(start_paused = true)]
async fn refused_token_falls_back_to_the_farmers_approval() {
    let ledger = FakeLedger::default();
    ledger.state().refuse_enrollment = true;
    let host = FakeHost::new(capacity(20));
    let cfg = Config {
        enrollment: Some(token(3)),
        ..Config::new(3)
    };
    let (mut r, notices) = registrar(&ledger, &host, &Identity::generate(), cfg);
    r.register().await;
    let lines: Vec<String> = taken(&notices).iter().map(|n| n.to_string()).collect();
    assert_eq!(
        lines,
        [
            "cellos: the ledger refused the enrollment token (ledger answered 422: enrollment token expired at 5, it is 9); registering without it, the farmer must approve the node",
            "cellos: node 7 registered on farm 3, waiting for the farmer to approve it",
        ]
    );
    let sent = ledger.submitted();
    assert!(matches!(
        &sent[..],
        [
            TxBody::RegisterNode {
                enrollment: Some(_),
                ..
            },
            TxBody::RegisterNode {
                enrollment: None,
                ..
            },
        ]
    ));
}

fn preregistered(ledger: &FakeLedger, id: &Identity, farm: FarmId, c: &Capacity) {
    let n = Node {
        approved: true,
        interfaces: c.interfaces.clone(),
        gpus: c.gpus.clone(),
        accel: c.accel,
        ..fake_node(id.public_key(), farm, c.resources, id.encryption_key())
    };
    ledger.state().nodes.push(n);
}

#[tokio::test(start_paused = true)]
async fn a_known_node_with_the_same_record_sends_nothing() {
    let ledger = FakeLedger::default();
    let id = Identity::generate();
    preregistered(&ledger, &id, 3, &capacity(20));
    let host = FakeHost::new(capacity(20));
    let (mut r, notices) = registrar(&ledger, &host, &id, Config::new(3));
    assert_eq!(r.register().await.node, 7);
    assert!(ledger.submitted().is_empty());
    assert!(taken(&notices).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_stale_record_is_updated_and_another_farm_is_reported() {
    let ledger = FakeLedger::default();
    let id = Identity::generate();
    preregistered(&ledger, &id, 5, &capacity(10));
    let host = FakeHost::new(capacity(20));
    let (mut r, notices) = registrar(&ledger, &host, &id, Config::new(3));
    let reg = r.register().await;
    assert_eq!((reg.node, reg.farm), (7, 5));
    assert_eq!(reg.capacity, capacity(20).resources);
    let lines: Vec<String> = taken(&notices).iter().map(|n| n.to_string()).collect();
    assert_eq!(
        lines,
        [
            "cellos: node 7 is registered on farm 5, not on farm 3 as the boot config says; it stays on farm 5",
            "cellos: node 7 capacity updated (cru=2 mru=2.0GiB sru=20.0GiB hru=0B)",
        ]
    );
    assert!(matches!(
        &ledger.submitted()[..],
        [TxBody::UpdateNode { node: 7, .. }]
    ));
}

fn with_gpu(c: Capacity) -> Capacity {
    Capacity {
        gpus: vec![Gpu {
            address: "0000:00:01.0".into(),
            vendor: 0x1234,
            device: 0x1111,
            iommu_group: None,
        }],
        accel: Accel::Kvm,
        ..c
    }
}

#[tokio::test(start_paused = true)]
async fn gpus_and_accel_are_registered_and_kept_current() {
    let ledger = FakeLedger::default();
    ledger.state().approve_on_poll = 1;
    let host = FakeHost::new(with_gpu(capacity(20)));
    let (mut r, _) = registrar(&ledger, &host, &Identity::generate(), Config::new(3));
    r.register().await;
    let want = with_gpu(capacity(20));
    assert!(matches!(
        &ledger.submitted()[..],
        [TxBody::RegisterNode { gpus, accel, .. }] if *gpus == want.gpus && *accel == Accel::Kvm
    ));

    // A known record the GPUs or accelerator changed under is updated, even with the
    // same resources.
    let ledger = FakeLedger::default();
    let id = Identity::generate();
    preregistered(&ledger, &id, 3, &capacity(20));
    let host = FakeHost::new(with_gpu(capacity(20)));
    let (mut r, _) = registrar(&ledger, &host, &id, Config::new(3));
    r.register().await;
    let n = ledger.state().nodes[0].clone();
    assert_eq!((n.gpus, n.accel), (want.gpus, Accel::Kvm));
    assert!(matches!(
        &ledger.submitted()[..],
        [TxBody::UpdateNode { node: 7, .. }]
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failed_measurement_is_retried() {
    let ledger = FakeLedger::default();
    ledger.state().approve_on_poll = 1;
    let host = FakeHost::new(capacity(20));
    host.fail_next(1);
    let (mut r, notices) = registrar(&ledger, &host, &Identity::generate(), Config::new(3));
    r.register().await;
    assert_eq!(
        taken(&notices)[0].to_string(),
        "cellos: measuring the capacity failed: no such file /proc/meminfo, retrying in 30s"
    );
}

#[tokio::test(start_paused = true)]
async fn maintain_reports_uptime_and_capacity_changes() {
    let ledger = FakeLedger::default();
    let id = Identity::generate();
    preregistered(&ledger, &id, 3, &capacity(20));
    let host = FakeHost::new(capacity(20));
    let (mut r, notices) = registrar(&ledger, &host, &id, Config::new(3));
    r.register().await;
    host.set(capacity(30));
    let _ = tokio::time::timeout(Duration::from_secs(301), r.maintain()).await;

    let sent = ledger.submitted();
    let uptimes: Vec<(u64, u64)> = sent
        .iter()
        .filter_map(|b| match b {
            TxBody::ReportUptime {
                node: 7,
                timestamp,
                uptime_secs,
            } => Some((*timestamp, *uptime_secs)),
            _ => None,
        })
        .collect();
    // At 0, 60, ..., 300 s.
    assert_eq!(uptimes.len(), 6, "{sent:?}");
    assert!(uptimes.iter().all(|(_, up)| *up == 42));
    // Timestamps are in the ledger's time, not ours.
    let ahead = uptimes[0].0.abs_diff(unix_now() + LEDGER_AHEAD);
    assert!(ahead <= 2, "timestamp {} is off by {ahead}", uptimes[0].0);
    let updates = sent
        .iter()
        .filter(|b| matches!(b, TxBody::UpdateNode { capacity, .. } if capacity.sru == 30 * GIB))
        .count();
    assert_eq!(updates, 1);
    assert_eq!(
        taken(&notices),
        [Notice::CapacityUpdated {
            node: 7,
            resources: capacity(30).resources
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn maintain_keeps_going_through_failures() {
    let ledger = FakeLedger::default();
    let id = Identity::generate();
    preregistered(&ledger, &id, 3, &capacity(20));
    let host = FakeHost::new(capacity(20));
    let (mut r, notices) = registrar(&ledger, &host, &id, Config::new(3));
    // maintain registers by itself when register was not called.
    ledger.state().fail.extend([("status", unreachable_err())]);
    let _ = tokio::time::timeout(Duration::from_secs(10), r.maintain()).await;
    ledger
        .state()
        .fail
        .push_back(("submit", refused("uptime timestamp 5 is too far from 900")));
    let _ = tokio::time::timeout(Duration::from_secs(61), r.maintain()).await;
    let n = taken(&notices);
    assert!(matches!(n[0], Notice::Unreachable { .. }), "{n:?}");
    assert!(
        n.iter().any(|n| matches!(n, Notice::Failed { action: "ReportUptime", retry_in, .. } if retry_in.as_secs() == 30)),
        "{n:?}"
    );
    let uptimes = ledger
        .submitted()
        .iter()
        .filter(|b| matches!(b, TxBody::ReportUptime { .. }))
        .count();
    // One in the first run (at 1 s, after the retry); in the second, the one at 0 s
    // is refused (the fake records only what it accepts) and the retry at 30 s goes in.
    assert_eq!(uptimes, 2);
}
