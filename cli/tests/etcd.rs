//! The ledger's replicated mode on a real three-member etcd cluster (Debian's
//! `etcd-server`, started from /usr/bin/etcd on loopback ports): several ledger
//! servers, one chain.
//!
//! 1. Three servers over three members: transactions sent round-robin to all of
//!    them end in one chain that `cellos ledger verify --url` accepts on each, with
//!    equal state digests.
//! 2. Under load, SIGKILL one etcd member and one ledger server: clients that retry
//!    against the others lose no acknowledged transaction, the chain goes on, and the
//!    killed server catches up when it is started again.
//! 3. Two ledgers racing for one height: exactly one block wins, the other's
//!    transactions land in a later block (in process, on two members, so the race is
//!    certain rather than likely).
//!
//! Each test prints "SKIPPED: ..." and passes when /usr/bin/etcd is missing.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellos_ledger::client::{Client, ClientError};
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::store::local_etcd::{LocalEtcd, ETCD};
use cellos_ledger::store::EtcdStore;
use cellos_ledger::*;
use common::{cellos, chain_txs, LedgerProc};

fn etcd_missing() -> bool {
    if LocalEtcd::available() {
        return false;
    }
    println!("SKIPPED: {ETCD} is missing (install Debian's etcd-server)");
    true
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A three-member etcd cluster; its processes are killed when it is dropped.
fn cluster(dir: &Path) -> LocalEtcd {
    LocalEtcd::start(dir, 3).expect("etcd cluster")
}

/// Ledger servers in replicated mode, one per member, sharing one ledger key.
struct Ledgers {
    procs: Vec<LedgerProc>,
    data: Vec<PathBuf>,
    etcd: Vec<String>,
}

impl Ledgers {
    fn start(dir: &Path, cluster: &LocalEtcd, n: usize) -> Ledgers {
        let data: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("ledger{i}"))).collect();
        let key = keys::generate();
        for d in &data {
            std::fs::create_dir_all(d).expect("data dir");
            keys::save(&d.join("ledger.key"), &key).expect("ledger key");
        }
        let etcd: Vec<String> = (0..n).map(|i| cluster.endpoints(i).join(",")).collect();
        let procs = (0..n)
            .map(|i| LedgerProc::start(&data[i], &["--etcd", &etcd[i]]))
            .collect();
        Ledgers { procs, data, etcd }
    }

    fn restart(&mut self, i: usize) {
        self.procs[i] = LedgerProc::start(&self.data[i], &["--etcd", &self.etcd[i]]);
    }

    fn urls(&self) -> Vec<String> {
        self.procs.iter().map(|p| p.url.clone()).collect()
    }
}

/// Submits `tx` to the servers from `first` on, going round them while they are
/// unreachable or busy (503). `Some` is an acknowledgement; `None` means a retry
/// found the transaction's nonce used: an earlier try was committed though its
/// answer was lost (not acknowledged, so not counted).
async fn submit(clients: &[Client], first: usize, tx: &SignedTx) -> Option<Receipt> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut retried = false;
    for i in (first..).map(|i| i % clients.len()) {
        match clients[i].submit(tx).await {
            Ok(r) => {
                assert_eq!(r.hash, tx.hash());
                return Some(r);
            }
            Err(ClientError::Api {
                status: 422,
                message,
            }) if retried && message.contains("is not above the signer's last nonce") => {
                return None
            }
            Err(e) if e.is_transient() => {
                assert!(
                    Instant::now() < deadline,
                    "no ledger server took the transaction in 90 s: {e}"
                );
                retried = true;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("transaction refused: {e}"),
        }
    }
    unreachable!("the servers are tried in a loop")
}

/// Waits until every server reports the same height and state digest, and returns it.
async fn converge(urls: &[String]) -> (u64, Hash) {
    let clients: Vec<Client> = urls
        .iter()
        .map(|u| Client::new(u).expect("client"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = Vec::new();
        for c in &clients {
            if let Ok(d) = c.digest().await {
                seen.push((d.height, d.digest));
            }
        }
        if seen.len() == clients.len() && seen.iter().all(|s| *s == seen[0]) {
            return seen[0];
        }
        assert!(
            Instant::now() < deadline,
            "the servers did not reach one state in 60 s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The servers reach one state; each serves a chain that holds every acknowledged
/// transaction and that `cellos ledger verify --url` accepts.
fn assert_one_chain(
    rt: &tokio::runtime::Runtime,
    urls: &[String],
    acked: &HashSet<Hash>,
    dir: &Path,
) {
    let (height, _) = rt.block_on(converge(urls));
    assert!(height > 0);
    let key = dir.join("unused.key");
    for url in urls {
        let txs = rt.block_on(chain_txs(&Client::new(url).expect("client")));
        let lost = acked.difference(&txs).count();
        assert_eq!(
            lost, 0,
            "{url}: {lost} acknowledged transactions are not in its chain"
        );
        let (ok, out, err) = cellos(&["ledger", "verify"], url, &key);
        assert!(ok, "verify of {url} failed: {out}{err}");
        assert!(out.contains("verified"), "{out}");
    }
}

#[test]
fn three_servers_one_chain() {
    if etcd_missing() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = cluster(dir.path());
    let ledgers = Ledgers::start(dir.path(), &cluster, 3);
    let urls = ledgers.urls();
    let rt = runtime();
    let acked: Arc<Mutex<HashSet<Hash>>> = Arc::default();
    rt.block_on(async {
        let clients: Vec<Client> = urls
            .iter()
            .map(|u| Client::new(u).expect("client"))
            .collect();
        let chain = clients[0].status().await.expect("status").chain_id;
        let mut workers = Vec::new();
        for w in 0..6 {
            let (clients, chain, acked) = (clients.clone(), chain.clone(), acked.clone());
            workers.push(tokio::spawn(async move {
                let mut s = Signer::new(keys::generate(), chain);
                for k in 0..41 {
                    let amount = if k == 0 { EXISTENTIAL_DEPOSIT } else { 1 };
                    let tx = s.sign(TxBody::Faucet { amount });
                    // Round-robin: each transaction to the next server.
                    let r = submit(&clients, w + k, &tx).await.expect("acknowledged");
                    acked.lock().expect("lock").insert(r.hash);
                }
            }));
        }
        for w in workers {
            w.await.expect("worker");
        }
    });
    let acked = acked.lock().expect("lock").clone();
    assert_eq!(acked.len(), 6 * 41);
    assert_one_chain(&rt, &urls, &acked, dir.path());
}

#[test]
fn sigkill_an_etcd_member_and_a_ledger_server_under_load() {
    if etcd_missing() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = cluster(dir.path());
    let mut ledgers = Ledgers::start(dir.path(), &cluster, 3);
    let urls = ledgers.urls();
    let rt = runtime();
    let acked: Arc<Mutex<HashSet<Hash>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<Client> = urls
        .iter()
        .map(|u| Client::new(u).expect("client"))
        .collect();
    let chain = rt.block_on(clients[0].status()).expect("status").chain_id;
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (clients, chain, acked, stop) =
                (clients.clone(), chain.clone(), acked.clone(), stop.clone());
            rt.spawn(async move {
                let mut s = Signer::new(keys::generate(), chain);
                let mut k = w;
                let mut amount = EXISTENTIAL_DEPOSIT;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let tx = s.sign(TxBody::Faucet { amount });
                    if let Some(r) = submit(&clients, k, &tx).await {
                        acked.lock().expect("lock").insert(r.hash);
                    }
                    amount = 1;
                    k += 1;
                }
            })
        })
        .collect();
    let wait_acks = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.lock().expect("lock").len() < n {
            assert!(Instant::now() < deadline, "fewer than {n} acks in 120 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_acks(300);
    cluster.kill9(0);
    ledgers.procs[1].kill9();
    let at_kill = acked.lock().expect("lock").len();
    // The chain goes on without them.
    wait_acks(at_kill + 300);
    ledgers.restart(1);
    wait_acks(at_kill + 400);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(async {
        for w in workers {
            w.await.expect("worker");
        }
    });
    let acked = acked.lock().expect("lock").clone();
    // The restarted server caught up with the others.
    assert_one_chain(&rt, &ledgers.urls(), &acked, dir.path());
}

#[test]
fn two_ledgers_racing_for_one_height() {
    if etcd_missing() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = cluster(dir.path());
    let key = keys::generate();
    let params = ChainParams::new("race", true);
    let open = |member: usize| {
        let store = EtcdStore::connect(&[cluster.urls()[member].clone()], "race/").expect("store");
        Chain::open(Arc::new(store), key.clone(), params.clone(), 1_000).expect("chain")
    };
    let (mut a, mut b) = (open(0), open(1));
    assert_eq!(a.genesis(), b.genesis(), "two servers, one genesis");
    let faucet = |s: &mut Signer| {
        s.sign(TxBody::Faucet {
            amount: EXISTENTIAL_DEPOSIT,
        })
        .into_verified()
        .expect("signed")
    };
    let (mut alice, mut bob) = (
        Signer::new(keys::generate(), "race"),
        Signer::new(keys::generate(), "race"),
    );
    let (ta, tb) = (faucet(&mut alice), faucet(&mut bob));

    // Both build block 1; a appends first.
    let ra = a.commit(vec![ta.clone()], 1_001).expect("a commits");
    assert_eq!(ra[0].as_ref().expect("applied").height, 1);
    let lost = b
        .commit(vec![tb.clone()], 1_001)
        .expect_err("b lost the race");
    assert!(lost.is_conflict(), "expected a conflict, got {lost}");
    // b took a's block instead (no replay of the chain), so its retry lands in block 2.
    assert_eq!((b.state().height(), b.head()), (1, a.head()));
    let rb = b.commit(vec![tb.clone()], 1_002).expect("b retries");
    assert_eq!(rb[0].as_ref().expect("applied").height, 2);
    assert_eq!(a.follow().expect("a follows"), 1);
    assert_eq!(a.head(), b.head());
    assert_eq!(a.state().digest(), b.state().digest());
    let blocks = a.store().blocks(1, 10).expect("blocks");
    let heights: Vec<_> = blocks
        .iter()
        .map(|b| {
            (
                b.header.height,
                b.txs.iter().map(|t| t.hash()).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        heights,
        vec![(1, vec![ta.get().hash()]), (2, vec![tb.get().hash()])]
    );

    // Now for real: both commit at once, each retrying what it lost.
    let commit_all = |mut chain: Chain, mut s: Signer| {
        std::thread::spawn(move || {
            let mut hashes = Vec::new();
            let mut conflicts = 0;
            for _ in 0..40 {
                let tx = s
                    .sign(TxBody::Faucet { amount: 1 })
                    .into_verified()
                    .expect("signed");
                loop {
                    match chain.commit(vec![tx.clone()], 1_003) {
                        Ok(r) => {
                            hashes.push(r[0].as_ref().expect("applied").hash);
                            break;
                        }
                        Err(e) if e.is_conflict() => conflicts += 1,
                        Err(e) => panic!("commit: {e}"),
                    }
                }
            }
            (chain, hashes, conflicts)
        })
    };
    let (ja, jb) = (commit_all(a, alice), commit_all(b, bob));
    let (mut a, ha, ca) = ja.join().expect("a");
    let (mut b, hb, cb) = jb.join().expect("b");
    a.follow().expect("a follows");
    b.follow().expect("b follows");
    assert_eq!(a.head(), b.head());
    assert_eq!(a.state().digest(), b.state().digest());
    let store = a.store().clone();
    let mut in_chain = Vec::new();
    for blk in store.blocks(3, 1000).expect("blocks") {
        in_chain.extend(blk.txs.iter().map(|t| t.hash()));
    }
    let mut want: Vec<Hash> = ha.into_iter().chain(hb).collect();
    want.sort_by_key(|h| h.0);
    in_chain.sort_by_key(|h| h.0);
    assert_eq!(in_chain, want, "every transaction once, none lost");
    eprintln!("racing: {} conflicts lost and retried", ca + cb);
}
