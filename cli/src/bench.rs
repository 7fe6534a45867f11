//! `cellos bench ledger`: end-to-end throughput of a real ledger on this machine.
//!
//! A ledger server runs in this process on a fresh data directory and listens on
//! loopback; clients send signed transactions over HTTP, each acknowledged only
//! after its block is fsynced. Transactions are signed before the clock starts, so
//! the figures are the ledger's (parse, verify, apply, commit), not the signers'.
//! Clients and server share the machine's cores, as they would on one box.
//!
//! Beside the embedded store it runs the same transactions through the etcd mode
//! (a three-member etcd cluster on loopback, from Debian's `etcd-server`) with one
//! and with three ledger servers, and it times start-up on chains of 10k and 1M
//! blocks: start-up begins from the latest state snapshot, so it must not grow with
//! the chain. Those chains are made by the ledger's own [`Chain`] (every block
//! sealed and signed, every transaction signed and verified, snapshots saved as the
//! server saves them), with the blocks written to redb thousands per transaction
//! rather than one fsync each, so that a million of them take a minute, not hours.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use cellos_ledger::block::BlockEvents;
use cellos_ledger::chain::save_snapshot;
use cellos_ledger::client::Client;
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::server::{Config, Server};
use cellos_ledger::store::local_etcd::{LocalEtcd, ETCD};
use cellos_ledger::store::{EtcdStore, RedbStore, Store, StoreError};
use cellos_ledger::tx::VerifiedTx;
use cellos_ledger::*;
use ed25519_dalek::SigningKey;

struct Run {
    ok: usize,
    failed: usize,
    first_error: Option<String>,
    elapsed: Duration,
    node_ids: Vec<Option<NodeId>>,
}

/// Sends every transaction with `conc` concurrent senders, spread over `clients`,
/// `batch` per request (`POST /v1/txs`; one: `POST /v1/tx`); returns what happened.
async fn blast(clients: &[Client], txs: Vec<SignedTx>, conc: usize, batch: usize) -> Run {
    let batch = batch.max(1);
    let txs = Arc::new(txs);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..conc.max(1) {
        // Each sender talks to one server; senders spread over the servers.
        let c = clients[t % clients.len()].clone();
        let (txs, next) = (txs.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(batch, Ordering::Relaxed);
                let Some(part) = txs.get(i..(i + batch).min(txs.len())) else {
                    break;
                };
                if part.is_empty() {
                    break;
                }
                if let [tx] = part {
                    out.push((i, c.submit(tx).await.map_err(|e| e.to_string())));
                    continue;
                }
                match c.submit_batch(part).await {
                    Ok(rs) => {
                        out.extend((i..).zip(rs.into_iter().map(|r| r.map_err(|e| e.to_string()))))
                    }
                    Err(e) => {
                        let e = e.to_string();
                        out.extend((i..i + part.len()).map(|k| (k, Err(e.clone()))));
                    }
                }
            }
            out
        }));
    }
    let mut run = Run {
        ok: 0,
        failed: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        node_ids: vec![None; txs.len()],
    };
    for t in tasks {
        let Ok(results) = t.await else {
            run.failed += 1;
            continue;
        };
        for (i, r) in results {
            match r {
                Ok(rcpt) => {
                    run.ok += 1;
                    run.node_ids[i] = rcpt.events.iter().find_map(|e| match e {
                        Event::NodeRegistered { node, .. } => Some(*node),
                        _ => None,
                    });
                }
                Err(e) => {
                    run.failed += 1;
                    run.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
    run.elapsed = start.elapsed();
    run
}

fn registrations(
    chain: &str,
    farm: FarmId,
    token: &EnrollToken,
    n: usize,
) -> (Vec<Signer>, Vec<SignedTx>) {
    let cap = Resources {
        cru: 32,
        mru: 256 * GIB,
        sru: 4096 * GIB,
        hru: 16384 * GIB,
    };
    (0..n)
        .map(|i| {
            let mut s = Signer::new(keys::generate(), chain);
            let tx = s.sign(TxBody::RegisterNode {
                farm,
                capacity: cap,
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    mac: format!(
                        "52:54:00:{:02x}:{:02x}:{:02x}",
                        (i >> 16) & 0xff,
                        (i >> 8) & 0xff,
                        i & 0xff
                    ),
                    ips: vec![],
                }],
                gpus: vec![],
                accel: cellos_ledger::Accel::Tcg,
                encryption_key: keys::encryption_key(s.key()),
                location: None,
                enrollment: Some(token.clone()),
                persistent: true,
            });
            (s, tx)
        })
        .unzip()
}

fn report(what: &str, run: &Run) {
    let rate = run.ok as f64 / run.elapsed.as_secs_f64().max(1e-9);
    println!(
        "{what:<34} {:>8} ok {:>6} failed in {:>7.2} s  = {:>8.0} tx/s",
        run.ok,
        run.failed,
        run.elapsed.as_secs_f64(),
        rate
    );
    if let Some(e) = &run.first_error {
        println!("  first error: {e}");
    }
}

/// What `cellos bench ledger` runs.
pub struct LedgerBench {
    /// Nodes registered (and reporting uptime) in the throughput runs.
    pub txs: usize,
    /// Nodes registered in the timed bulk registration (embedded store only).
    pub nodes: usize,
    pub concurrency: usize,
    /// Transactions per request (`POST /v1/txs`); 1 sends each alone (`POST /v1/tx`).
    pub batch: usize,
    /// Chain lengths whose start-up is timed.
    pub startup_blocks: Vec<usize>,
    /// Transactions per run in etcd mode (0 skips it).
    pub etcd_txs: usize,
}

pub async fn ledger(b: LedgerBench) -> Result<()> {
    println!(
        "cellos bench ledger: servers and {} HTTP clients sending {} transaction(s) per request on this machine ({} cores), fsync per block; figures are noisy when other work shares the cores",
        b.concurrency,
        b.batch,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let dir = tempfile::tempdir().context("cannot make a temporary data directory")?;
    println!("== embedded store (redb), data on {}", dir.path().display());
    let chain = "bench";
    let srv = Server::bind(Config {
        data: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse()?,
        params: ChainParams::new(chain, true),
        blob_limit: 1 << 20,
        ..Default::default()
    })
    .await?;
    let servers = Servers::run(vec![srv])?;
    throughput(&servers.clients, chain, b.txs, Some(b.nodes), &b).await?;
    servers.stop().await?;

    for &n in &b.startup_blocks {
        startup(n).await?;
    }

    if b.etcd_txs > 0 {
        etcd(&b).await?;
    }
    Ok(())
}

/// Ledger servers running in this process, and a client for each.
struct Servers {
    clients: Vec<Client>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), cellos_ledger::server::ServerError>>>,
}

impl Servers {
    fn run(bound: Vec<Server>) -> Result<Servers> {
        let mut s = Servers {
            clients: Vec::new(),
            stop: Vec::new(),
            tasks: Vec::new(),
        };
        for srv in bound {
            s.clients.push(Client::new(&srv.url()?)?);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            s.stop.push(stop);
            s.tasks.push(tokio::spawn(srv.run(async {
                let _ = stopped.await;
            })));
        }
        Ok(s)
    }

    async fn stop(self) -> Result<()> {
        for s in self.stop {
            let _ = s.send(());
        }
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }
}

/// RegisterNode and ReportUptime runs (and the bulk registration of `nodes`, if
/// given) against `clients`, each transaction to the next server in turn.
async fn throughput(
    clients: &[Client],
    chain: &str,
    n_txs: usize,
    nodes: Option<usize>,
    b: &LedgerBench,
) -> Result<()> {
    let c = clients.first().context("no ledger server")?;
    let mut farmer = Signer::new(keys::generate(), chain);
    c.submit(&farmer.sign(TxBody::Faucet {
        amount: EXISTENTIAL_DEPOSIT,
    }))
    .await?;
    let ek = keys::generate();
    let r = c
        .submit(&farmer.sign(TxBody::CreateFarm {
            name: "bench".into(),
            prices: Prices::default(),
            enrollment_key: Some(keys::public_key(&ek)),
        }))
        .await?;
    let farm = r
        .events
        .iter()
        .find_map(Event::farm_created)
        .context("CreateFarm returned no farm id")?;
    let token = EnrollToken::issue(&ek, chain, farm, u64::MAX);

    // 1. RegisterNode from many fresh keys.
    let t = Instant::now();
    let (signers, txs) = registrations(chain, farm, &token, n_txs);
    println!(
        "signed {n_txs} RegisterNode in {:.2} s (not counted)",
        t.elapsed().as_secs_f64()
    );
    let run = blast(clients, txs, b.concurrency, b.batch).await;
    report("RegisterNode", &run);
    if run.ok == 0 {
        bail!("no transaction was accepted");
    }

    // 2. ReportUptime from each of those nodes.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let uptimes: Vec<SignedTx> = signers
        .into_iter()
        .zip(&run.node_ids)
        .filter_map(|(mut s, id)| {
            id.map(|node| {
                s.sign(TxBody::ReportUptime {
                    node,
                    timestamp: now,
                    uptime_secs: 60,
                })
            })
        })
        .collect();
    let run = blast(clients, uptimes, b.concurrency, b.batch).await;
    report("ReportUptime", &run);

    // 3. A farm-sized registration: the time to put n_nodes on the ledger.
    if let Some(n_nodes) = nodes {
        let t = Instant::now();
        let (_, txs) = registrations(chain, farm, &token, n_nodes);
        println!(
            "signed {n_nodes} RegisterNode in {:.2} s (not counted)",
            t.elapsed().as_secs_f64()
        );
        let run = blast(clients, txs, b.concurrency, b.batch).await;
        report(&format!("register {n_nodes} nodes"), &run);
        println!(
            "time to register {n_nodes} nodes: {:.2} s",
            run.elapsed.as_secs_f64()
        );
    }
    let st = c.status().await?;
    println!("chain height {} after the runs", st.height);
    Ok(())
}

/// The throughput runs in etcd mode: one and three ledger servers on a
/// three-member etcd cluster, all in this process, sharing one ledger key.
async fn etcd(b: &LedgerBench) -> Result<()> {
    if !LocalEtcd::available() {
        println!("== etcd mode: SKIPPED, {ETCD} is missing (install Debian's etcd-server)");
        return Ok(());
    }
    let dir = tempfile::tempdir().context("cannot make a temporary data directory")?;
    let cluster = LocalEtcd::start(dir.path(), 3)?;
    let key = keys::generate();
    for n in [1, 3] {
        let chain = format!("bench-etcd-{n}");
        println!("== etcd mode, {n} ledger server(s) on 3 etcd members");
        let mut bound = Vec::new();
        for i in 0..n {
            let data = dir.path().join(format!("{chain}-{i}"));
            std::fs::create_dir_all(&data)?;
            keys::save(&data.join("ledger.key"), &key)?;
            let store = EtcdStore::connect(&cluster.endpoints(i), &format!("{chain}/"))?;
            let cfg = Config {
                data,
                listen: "127.0.0.1:0".parse()?,
                params: ChainParams::new(chain.as_str(), true),
                blob_limit: 1 << 20,
                ..Default::default()
            };
            bound.push(Server::bind_with_store(cfg, Arc::new(store)).await?);
        }
        let servers = Servers::run(bound)?;
        throughput(&servers.clients, &chain, b.etcd_txs, None, b).await?;
        servers.stop().await?;
    }
    Ok(())
}

/// How often the start-up chains carry a state snapshot (the server's default).
const SNAPSHOT_EVERY: u64 = 10_000;
/// Accounts whose Faucet transactions fill the start-up chains, one per block.
const ACCOUNTS: usize = 256;
/// Blocks kept in memory before they go to redb in one write transaction.
const FLUSH: usize = 8192;

/// Makes a chain of `n` blocks and times the server's start-up on it.
async fn startup(n: usize) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot make a temporary data directory")?;
    let chain = format!("bench-start-{n}");
    let params = ChainParams::new(chain.as_str(), true);
    let key = keys::generate();
    keys::save(&dir.path().join("ledger.key"), &key)?;
    let t = Instant::now();
    let store = Arc::new(Bulk {
        inner: RedbStore::open(&dir.path().join("ledger.redb"))?,
        pending: Default::default(),
    });
    let made = {
        let (store, params) = (store.clone(), params.clone());
        tokio::task::spawn_blocking(move || make_chain(store, key, params, n)).await??
    };
    store.flush()?;
    drop(store);
    println!(
        "== start-up: made a chain of {n} blocks ({} transactions, {} accounts, snapshot every {SNAPSHOT_EVERY} blocks) in {:.1} s (not counted)",
        made, ACCOUNTS, t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let srv = Server::bind(Config {
        data: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse()?,
        params,
        ..Default::default()
    })
    .await?;
    let took = t.elapsed();
    let servers = Servers::run(vec![srv])?;
    let height = servers.clients[0].status().await?.height;
    servers.stop().await?;
    if height != n as u64 {
        bail!("the server started at block {height}, not at the chain's {n}");
    }
    println!(
        "start-up with {n} blocks: {:.3} s (open the store, load the snapshot, apply the blocks after it)",
        took.as_secs_f64()
    );
    Ok(())
}

/// Commits `n` blocks of one Faucet each (from [`ACCOUNTS`] accounts in turn) at a
/// second per block, saving a snapshot every [`SNAPSHOT_EVERY`]. Transactions are
/// signed and verified on every core, a chunk at a time. Returns the transactions
/// committed.
fn make_chain(store: Arc<Bulk>, key: SigningKey, params: ChainParams, n: usize) -> Result<u64> {
    let t0 = 1_700_000_000u64;
    let chain_id = params.chain_id.clone();
    let mut chain = Chain::open(store.clone(), key, params, t0)?;
    let accounts: Vec<SigningKey> = (0..ACCOUNTS).map(|_| keys::generate()).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut made = 0u64;
    let mut height = 0usize;
    let mut since_snapshot = 0u64;
    while height < n {
        let chunk = (n - height).min(FLUSH);
        let txs: Vec<Tx> = (height..height + chunk)
            .map(|h| {
                let round = (h / ACCOUNTS) as u64;
                Tx {
                    chain_id: chain_id.clone(),
                    signer: keys::public_key(&accounts[h % ACCOUNTS]),
                    nonce: round + 1,
                    body: TxBody::Faucet {
                        amount: if round == 0 { EXISTENTIAL_DEPOSIT } else { 1 },
                    },
                }
            })
            .collect();
        let per = chunk.div_ceil(threads);
        let verified: Vec<VerifiedTx> = std::thread::scope(|s| {
            let parts: Vec<_> = txs
                .chunks(per)
                .enumerate()
                .map(|(p, part)| {
                    let accounts = &accounts;
                    s.spawn(move || {
                        part.iter()
                            .enumerate()
                            .map(|(i, tx)| {
                                let k = &accounts[(height + p * per + i) % ACCOUNTS];
                                tx.clone().sign(k).into_verified()
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a signing thread panicked"))
                })
                .collect::<Result<Vec<_>>>()
        })?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
        for vtx in verified {
            height += 1;
            for r in chain.commit(vec![vtx], t0 + height as u64)? {
                r?;
                made += 1;
            }
            since_snapshot += 1;
            if since_snapshot == SNAPSHOT_EVERY {
                save_snapshot(store.as_ref(), &chain.view().load())?;
                since_snapshot = 0;
            }
        }
    }
    Ok(made)
}

/// A redb store that takes appends in memory and writes them [`FLUSH`] at a time in
/// one transaction ([`RedbStore::append_all`]); everything else flushes first.
struct Bulk {
    inner: RedbStore,
    pending: std::sync::Mutex<Vec<(Block, BlockEvents)>>,
}

impl Bulk {
    fn flush(&self) -> Result<(), StoreError> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let items: Vec<(&Block, &BlockEvents)> = p.iter().map(|(b, e)| (b, e)).collect();
        self.inner.append_all(&items)?;
        p.clear();
        Ok(())
    }
}

impl Store for Bulk {
    fn genesis(&self) -> Result<Option<Genesis>, StoreError> {
        self.inner.genesis()
    }
    fn init(&self, genesis: &Genesis) -> Result<(), StoreError> {
        self.inner.init(genesis)
    }
    fn append(&self, block: &Block, events: &BlockEvents) -> Result<(), StoreError> {
        let full = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.push((block.clone(), events.clone()));
            p.len() >= FLUSH
        };
        if full {
            self.flush()?;
        }
        Ok(())
    }
    fn height(&self) -> Result<u64, StoreError> {
        self.flush()?;
        self.inner.height()
    }
    fn blocks(&self, from: u64, limit: usize) -> Result<Vec<Block>, StoreError> {
        self.flush()?;
        self.inner.blocks(from, limit)
    }
    fn events(&self, from: u64, limit: usize) -> Result<Vec<BlockEvents>, StoreError> {
        self.flush()?;
        self.inner.events(from, limit)
    }
    fn put_blob(&self, hash: &Hash, data: &[u8]) -> Result<(), StoreError> {
        self.inner.put_blob(hash, data)
    }
    fn get_blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_blob(hash)
    }
    fn put_snapshot(&self, record: &[u8]) -> Result<(), StoreError> {
        self.flush()?;
        self.inner.put_snapshot(record)
    }
    fn snapshot(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.snapshot()
    }
}
