//! SIGKILL the ledger while clients submit: every acknowledged transaction survives
//! and the chain still verifies.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellos_ledger::client::Client;
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::*;
use common::{cellos, chain_txs, LedgerProc};

#[test]
fn acknowledged_transactions_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut ledger = LedgerProc::start(&data, &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let acked: Arc<Mutex<HashSet<Hash>>> = Arc::default();
    let url = ledger.url.clone();

    rt.block_on(async {
        let c = Client::new(&url).expect("client");
        let chain = c.status().await.expect("status").chain_id;
        let mut workers = Vec::new();
        for _ in 0..8 {
            let (c, chain, acked) = (c.clone(), chain.clone(), acked.clone());
            workers.push(tokio::spawn(async move {
                let mut s = Signer::new(keys::generate(), chain);
                if c.submit(&s.sign(TxBody::Faucet {
                    amount: EXISTENTIAL_DEPOSIT,
                }))
                .await
                .is_err()
                {
                    return;
                }
                // Submit until the server dies under us.
                loop {
                    let tx = s.sign(TxBody::Faucet { amount: 1 });
                    match c.submit(&tx).await {
                        Ok(r) => {
                            assert_eq!(r.hash, tx.hash());
                            acked.lock().expect("lock").insert(r.hash);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        // Let the clients get well going, then pull the plug.
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if acked.lock().expect("lock").len() >= 300 {
                break;
            }
        }
        ledger.kill9();
        for w in workers {
            w.await.expect("worker");
        }
    });
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 300);

    // Restart on the same data: every acknowledged transaction is in a block.
    let mut ledger = LedgerProc::start(&data, &[]);
    let in_chain: HashSet<Hash> = rt.block_on(async {
        let c = Client::new(&ledger.url).expect("client");
        let seen = chain_txs(&c).await;
        // And the ledger keeps working after the crash.
        let mut s = Signer::new(keys::generate(), c.status().await.expect("status").chain_id);
        c.submit(&s.sign(TxBody::Faucet {
            amount: EXISTENTIAL_DEPOSIT,
        }))
        .await
        .expect("submit after restart");
        seen
    });
    let lost: Vec<_> = acked.difference(&in_chain).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged transactions were lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );

    let key = dir.path().join("unused.key");
    let (ok, out, err) = cellos(&["ledger", "verify"], &ledger.url, &key);
    assert!(ok, "verify over HTTP failed: {out}{err}");
    assert!(
        ledger.stop().success(),
        "ledger did not exit cleanly on SIGTERM"
    );
    let (ok, out, err) = cellos(
        &["ledger", "verify", "--data", data.to_str().expect("path")],
        "http://unused",
        &key,
    );
    assert!(ok, "verify --data failed: {out}{err}");
    assert!(out.contains("verified"), "{out}");
}
