//! `cellos bench ledger`: end-to-end throughput of a real ledger on this machine.
//!
//! A ledger server runs in this process on a fresh data directory and listens on
//! loopback; clients send signed transactions over HTTP, each acknowledged only
//! after its block is fsynced. Transactions are signed before the clock starts, so
//! the figures are the ledger's (parse, verify, apply, commit), not the signers'.
//! Clients and server share the machine's cores, as they would on one box.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use cellos_ledger::client::Client;
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::server::{Config, Server};
use cellos_ledger::*;

struct Run {
    ok: usize,
    failed: usize,
    first_error: Option<String>,
    elapsed: Duration,
    node_ids: Vec<Option<NodeId>>,
}

/// Sends every transaction with `conc` concurrent clients; returns what happened.
async fn blast(c: &Client, txs: Vec<SignedTx>, conc: usize) -> Run {
    let txs = Arc::new(txs);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc.max(1) {
        let (c, txs, next) = (c.clone(), txs.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(tx) = txs.get(i) else { break };
                out.push((i, c.submit(tx).await));
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

pub async fn ledger(n_txs: usize, n_nodes: usize, conc: usize) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot make a temporary data directory")?;
    let chain = "bench";
    let srv = Server::bind(Config {
        data: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse()?,
        params: ChainParams::new(chain, true),
        blob_limit: 1 << 20,
        ..Default::default()
    })
    .await?;
    let addr = srv.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(srv.run(async {
        let _ = stopped.await;
    }));
    let c = Client::new(&format!("http://{addr}"))?;
    println!(
        "cellos bench ledger: server and {conc} HTTP clients on this machine ({} cores), data on {}, fsync per block",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        dir.path().display()
    );

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
    let run = blast(&c, txs, conc).await;
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
    let run = blast(&c, uptimes, conc).await;
    report("ReportUptime", &run);

    // 3. A farm-sized registration: the time to put n_nodes on the ledger.
    let t = Instant::now();
    let (_, txs) = registrations(chain, farm, &token, n_nodes);
    println!(
        "signed {n_nodes} RegisterNode in {:.2} s (not counted)",
        t.elapsed().as_secs_f64()
    );
    let run = blast(&c, txs, conc).await;
    report(&format!("register {n_nodes} nodes"), &run);
    println!(
        "time to register {n_nodes} nodes: {:.2} s",
        run.elapsed.as_secs_f64()
    );

    let st = c.status().await?;
    println!("chain height {} after the runs", st.height);
    let _ = stop.send(());
    server.await??;
    Ok(())
}
