//! A ledger whose store went back refuses to start and to verify (issue 12, item 3).
//!
//! A real `cellos ledger serve` acknowledges blocks and is killed; the latest commit
//! of its ledger.redb is damaged (one byte of its commit slot), so redb's crash repair
//! opens the commit before it. `serve` and `verify --data` must both fail naming the
//! lost block, until the operator runs `serve --accept-rollback`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cellos_ledger::client::Client;
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::*;
use common::{LedgerProc, CELLOS};

/// Flips a byte in the primary commit slot of a crashed redb file (see
/// `ledger/tests/rollback.rs` for the layout).
fn damage_latest_commit(db: &std::path::Path) {
    let mut b = std::fs::read(db).expect("read redb");
    let primary = usize::from(b[9] & 1);
    assert_ne!(b[9] & 2, 0, "the file should need crash repair");
    b[64 + primary * 128 + 8] ^= 0x40;
    std::fs::write(db, b).expect("write redb");
}

/// Runs `cellos`; returns (success, stdout and stderr). A command still running
/// after 30 s (a ledger that started serving) is killed and counts as a failure of
/// the test.
fn cellos(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(CELLOS)
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cellos");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cellos {args:?} was still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_rolled_back_store_is_refused_until_the_operator_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("ledger");
    let data_arg = data.to_str().expect("path");
    let mut ledger = LedgerProc::start(&data, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let height = rt.block_on(async {
        let c = Client::new(&ledger.url).expect("client");
        let chain = c.status().await.expect("status").chain_id;
        let mut s = Signer::new(keys::generate(), chain);
        let mut height = 0;
        for amount in [EXISTENTIAL_DEPOSIT, 1, 2] {
            height = c
                .submit(&s.sign(TxBody::Faucet { amount }))
                .await
                .expect("faucet")
                .height;
        }
        height
    });
    ledger.kill9();
    damage_latest_commit(&data.join("ledger.redb"));
    let lost = format!("block {height} was acknowledged but gone");

    let (ok, out) = cellos(&[
        "ledger",
        "serve",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data_arg,
    ]);
    assert!(!ok, "serve started on a rolled-back store:\n{out}");
    assert!(out.contains(&lost), "{out}");
    assert!(out.contains("--accept-rollback"), "{out}");

    let (ok, out) = cellos(&["ledger", "verify", "--data", data_arg]);
    assert!(!ok, "verify passed on a rolled-back store:\n{out}");
    assert!(out.contains(&lost), "{out}");

    // The operator accepts the loss: the ledger serves the chain it has, and the
    // stored chain verifies.
    let mut ledger = LedgerProc::start(&data, &["--accept-rollback"]);
    let served = rt.block_on(async {
        let c = Client::new(&ledger.url).expect("client");
        c.status().await.expect("status").height
    });
    assert_eq!(served, height - 1);
    ledger.stop();
    let (ok, out) = cellos(&["ledger", "verify", "--data", data_arg]);
    assert!(ok, "verify after accepting:\n{out}");
}
