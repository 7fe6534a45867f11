//! The registrar against a real ledger: the HTTP server of cellos-ledger on a loopback
//! port, with its redb store in a temporary directory, and the real HTTP client.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellos_identity::Identity;
use cellos_ledger::client::Client;
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::server::{Config as ServerConfig, Server};
use cellos_ledger::{
    Accel, ChainParams, EnrollToken, Event, FarmId, Gpu, Interface, Prices, Resources, TxBody,
    EXISTENTIAL_DEPOSIT, GIB,
};
use cellos_registrar::{Capacity, Config, Host, Notice, Registrar};
use ed25519_dalek::SigningKey;

struct Ledger {
    client: Client,
    chain_id: String,
    _data: tempfile::TempDir,
}

async fn ledger() -> Ledger {
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::bind(ServerConfig {
        data: data.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        params: ChainParams::new("registrar-test", true),
        blob_limit: 1 << 20,
        ..Default::default()
    })
    .await
    .expect("bind the ledger");
    let url = format!("http://{}", server.local_addr().expect("local addr"));
    let chain_id = server.chain_id();
    tokio::spawn(server.run(std::future::pending()));
    Ledger {
        client: Client::new(&url).expect("client"),
        chain_id,
        _data: data,
    }
}

struct Farmer {
    signer: Signer,
    farm: FarmId,
    enroll_key: SigningKey,
}

async fn farm(l: &Ledger, name: &str) -> Farmer {
    let mut signer = Signer::new(keys::generate(), l.chain_id.clone());
    let enroll_key = keys::generate();
    l.client
        .submit(&signer.sign(TxBody::Faucet {
            amount: EXISTENTIAL_DEPOSIT,
        }))
        .await
        .expect("open the farmer's account");
    let r = l
        .client
        .submit(&signer.sign(TxBody::CreateFarm {
            name: name.into(),
            prices: Prices::default(),
            enrollment_key: Some(keys::public_key(&enroll_key)),
        }))
        .await
        .expect("create the farm");
    let farm = r
        .events
        .iter()
        .find_map(Event::farm_created)
        .expect("a FarmCreated event");
    Farmer {
        signer,
        farm,
        enroll_key,
    }
}

#[derive(Clone)]
struct FixedHost(Arc<Mutex<Capacity>>);

impl FixedHost {
    fn new(sru_gib: u64) -> Self {
        FixedHost(Arc::new(Mutex::new(capacity(sru_gib))))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Host for FixedHost {
    type Error = Never;
    fn measure(&mut self) -> Result<Capacity, Never> {
        Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
    fn uptime(&mut self) -> Result<Duration, Never> {
        Ok(Duration::from_secs(123))
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
        gpus: vec![Gpu {
            address: "0000:00:01.0".into(),
            vendor: 0x1234,
            device: 0x1111,
            iommu_group: Some(2),
        }],
        accel: Accel::Tcg,
    }
}

type Notices = Arc<Mutex<Vec<String>>>;

fn registrar(
    l: &Ledger,
    host: &FixedHost,
    id: &Identity,
    config: Config,
) -> (Registrar<Client, FixedHost>, Notices) {
    let notices = Notices::default();
    let sink = notices.clone();
    let r = Registrar::new(
        l.client.clone(),
        host.clone(),
        id.clone(),
        Config {
            approval_poll: Duration::from_millis(50),
            ..config
        },
        move |n: Notice| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(n.to_string())
        },
    );
    (r, notices)
}

fn lines(n: &Notices) -> Vec<String> {
    n.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Runs `work` (which never returns) until `done` says the behaviour under test
/// happened. The 30 s bound only stops a stuck test; nothing here is a speed target.
async fn run_until<W, D>(work: W, done: D)
where
    W: std::future::Future,
    D: std::future::Future<Output = ()>,
{
    let both = async {
        tokio::select! {
            _ = work => panic!("the registrar returned before the awaited behaviour"),
            () = done => {}
        }
    };
    tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .expect("the awaited behaviour within 30 s");
}

/// Until `n` notices have been seen.
async fn notices_reach(n: &Notices, count: usize) {
    while lines(n).len() < count {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn registers_waits_for_approval_updates_and_reports_uptime() {
    let l = ledger().await;
    let mut farmer = farm(&l, "farm-a").await;
    let id = Identity::generate();
    let host = FixedHost::new(20);
    let (mut r, notices) = registrar(&l, &host, &id, Config::new(farmer.farm));

    // The farmer approves the node once it shows up.
    let client = l.client.clone();
    let key = id.public_key();
    let approve = farmer.signer.sign(TxBody::ApproveNode { node: 1 });
    let farmer_task = tokio::spawn(async move {
        loop {
            if let Ok(Some(n)) = client.node_by_key(&key).await {
                assert_eq!(n.id, 1, "the first node of a fresh ledger");
                client.submit(&approve).await.expect("approve");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let reg = tokio::time::timeout(Duration::from_secs(20), r.register())
        .await
        .expect("registered in time");
    farmer_task.await.expect("farmer");
    assert_eq!((reg.node, reg.farm), (1, farmer.farm));
    assert_eq!(reg.capacity, capacity(20).resources);
    assert_eq!(
        lines(&notices),
        [format!(
            "cellos: node 1 registered on farm {}, waiting for the farmer to approve it",
            farmer.farm
        )]
    );
    let n = l.client.node(1).await.expect("node");
    assert!(n.approved);
    assert_eq!(n.encryption_key, id.encryption_key());
    assert_eq!(n.interfaces, capacity(20).interfaces);
    assert_eq!((&n.gpus, n.accel), (&capacity(20).gpus, Accel::Tcg));

    // A reboot with the same key and more disk: same node, record updated, no new
    // registration and no waiting.
    let host = FixedHost::new(40);
    let (mut r, notices) = registrar(&l, &host, &id, Config::new(farmer.farm));
    let reg = tokio::time::timeout(Duration::from_secs(20), r.register())
        .await
        .expect("found in time");
    assert_eq!(reg.node, 1);
    assert_eq!(
        lines(&notices),
        ["cellos: node 1 capacity updated (cru=2 mru=2.0GiB sru=40.0GiB hru=0B)"]
    );
    assert_eq!(l.client.node(1).await.expect("node").capacity.sru, 40 * GIB);

    // The first uptime report goes out at once, and it is the only news.
    let reported = async {
        while l.client.node(1).await.expect("node").uptime_secs != 123 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    run_until(r.maintain(), reported).await;
    assert_eq!(lines(&notices).len(), 1, "{:?}", lines(&notices));
    let nodes = l.client.nodes(&Default::default()).await.expect("nodes");
    assert_eq!(nodes.len(), 1);
}

#[tokio::test]
async fn enrollment_token_registers_approved_and_a_bad_one_falls_back() {
    let l = ledger().await;
    let farmer = farm(&l, "farm-b").await;
    let token = EnrollToken::issue(&farmer.enroll_key, &l.chain_id, farmer.farm, u64::MAX);
    let cfg = Config {
        enrollment: Some(token),
        ..Config::new(farmer.farm)
    };
    let (mut r, notices) = registrar(&l, &FixedHost::new(20), &Identity::generate(), cfg);
    let reg = tokio::time::timeout(Duration::from_secs(20), r.register())
        .await
        .expect("registered in time");
    assert!(l.client.node(reg.node).await.expect("node").approved);
    assert!(lines(&notices).is_empty(), "{:?}", lines(&notices));

    // Expired: the ledger refuses it, the node registers pending instead.
    let expired = EnrollToken::issue(&farmer.enroll_key, &l.chain_id, farmer.farm, 1);
    let cfg = Config {
        enrollment: Some(expired),
        ..Config::new(farmer.farm)
    };
    let (mut r, notices) = registrar(&l, &FixedHost::new(20), &Identity::generate(), cfg);
    run_until(r.register(), notices_reach(&notices, 2)).await;
    let got = lines(&notices);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0]
            .starts_with("cellos: the ledger refused the enrollment token (ledger answered 422: ")
            && got[0].ends_with("registering without it, the farmer must approve the node"),
        "{got:?}"
    );
    assert_eq!(
        got[1],
        format!(
            "cellos: node 2 registered on farm {}, waiting for the farmer to approve it",
            farmer.farm
        )
    );
}

#[tokio::test]
async fn an_unreachable_ledger_is_retried_with_a_clear_line() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let notices = Notices::default();
    let sink = notices.clone();
    let mut r = Registrar::new(
        Client::new(&url).expect("client"),
        FixedHost::new(20),
        Identity::generate(),
        Config::new(1),
        move |n: Notice| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(n.to_string())
        },
    );
    // Two failed tries: the delay doubles.
    run_until(r.register(), notices_reach(&notices, 2)).await;
    let got = lines(&notices);
    assert!(
        got[0].starts_with(&format!("cellos: ledger {url} unreachable ("))
            && got[0].ends_with("), retrying in 1s"),
        "{got:?}"
    );
    assert!(got[0].to_lowercase().contains("refused"), "{got:?}");
    assert!(got[1].ends_with("retrying in 2s"), "{got:?}");
}

/// A node whose clock is behind what it signed with before the reboot (or that had
/// another signer) starts above the ledger's record of its nonce; and the registrar
/// and the provision engine, sharing its one signer, never race each other's nonces.
#[tokio::test]
async fn the_node_signer_starts_above_the_ledgers_nonce_and_is_shared() {
    let l = ledger().await;
    let farmer = farm(&l, "farm-n").await;
    let token = EnrollToken::issue(&farmer.enroll_key, &l.chain_id, farmer.farm, u64::MAX);
    let cfg = || Config {
        enrollment: Some(token.clone()),
        ..Config::new(farmer.farm)
    };
    let id = Identity::generate();
    let (mut r, _) = registrar(&l, &FixedHost::new(20), &id, cfg());
    let reg = tokio::time::timeout(Duration::from_secs(20), r.register())
        .await
        .expect("registered in time");

    // Before the reboot the node signed with a clock an hour ahead.
    let mut ahead = Signer::new(id.signing_key().clone(), l.chain_id.clone());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    ahead.observe(now_ms + 3_600_000);
    l.client
        .submit(&ahead.sign(TxBody::ReportUptime {
            node: reg.node,
            uptime_secs: 1,
            timestamp: l.client.status().await.expect("status").time,
        }))
        .await
        .expect("a report from the clock that was ahead");

    // After the reboot: the registrar's first transaction is accepted.
    let (mut r, notices) = registrar(&l, &FixedHost::new(30), &id, cfg());
    let reg = tokio::time::timeout(Duration::from_secs(20), r.register())
        .await
        .expect("registered in time");
    assert_eq!(
        l.client.node(reg.node).await.expect("node").capacity.sru,
        30 * GIB
    );
    assert!(
        lines(&notices).iter().all(|n| !n.contains("nonce")),
        "{:?}",
        lines(&notices)
    );

    // Its signer, shared: many concurrent submissions, none refused as stale.
    let signer = r.shared_signer().expect("a signer after registering");
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let (signer, client) = (signer.clone(), l.client.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = signer.lock().await;
            let time = client.status().await.expect("status").time;
            let tx = s.sign(TxBody::ReportUptime {
                node: reg.node,
                uptime_secs: 100 + i,
                timestamp: time,
            });
            client.submit(&tx).await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("accepted, not stale");
    }
}
