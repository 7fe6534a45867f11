//! A real `cellos ledger serve` process for tests.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CELLOS: &str = env!("CARGO_BIN_EXE_cellos");

pub struct LedgerProc {
    pub child: Child,
    pub url: String,
}

impl LedgerProc {
    /// Starts a dev-mode ledger on a free port and waits until it serves.
    pub fn start(data: &Path, extra: &[&str]) -> LedgerProc {
        let mut child = Command::new(CELLOS)
            .args([
                "ledger",
                "serve",
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cellos ledger serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("serving on http") {
                    let url: String = line[i + "serving on ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(url);
                }
                eprintln!("[ledger] {line}");
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("ledger did not start within 30 s");
        LedgerProc { child, url }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "ledger did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LedgerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `cellos` CLI; returns (success, stdout, stderr).
pub fn cellos(args: &[&str], url: &str, key: &Path) -> (bool, String, String) {
    let out = Command::new(CELLOS)
        .args(args)
        .env("CELLOS_LEDGER", url)
        .env("CELLOS_KEY", key)
        .output()
        .expect("run cellos");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every transaction hash in the chain the ledger behind `c` serves.
pub async fn chain_txs(c: &cellos_ledger::client::Client) -> HashSet<cellos_ledger::Hash> {
    let mut seen = HashSet::new();
    let mut from = 1;
    loop {
        let blocks = c.blocks(from, 1000).await.expect("blocks");
        let Some(last) = blocks.last() else { break };
        from = last.header.height + 1;
        for b in &blocks {
            seen.extend(b.txs.iter().map(|t| t.hash()));
        }
    }
    seen
}
