//! The real `shardd` binary for the crate's integration tests.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A running shardd on a free loopback port, SIGKILLed when dropped (also when a
/// test fails).
pub struct Shardd {
    child: Child,
    pub addr: SocketAddr,
    /// What it printed before it listened (recovery reports).
    pub said: Vec<String>,
}

impl Shardd {
    /// Starts shardd on `dir` with `extra` arguments and waits until it listens.
    pub fn start(dir: &Path, extra: &[&str]) -> Shardd {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardd"))
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn shardd");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let mut said = Vec::new();
        let addr = loop {
            let line = lines.next().expect("shardd exited").expect("read stdout");
            if let Some(a) = line.strip_prefix("shardd: listening on ") {
                break a.parse().expect("address");
            }
            said.push(line);
        };
        // Keep draining stdout so shardd never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Shardd { child, addr, said }
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL shardd");
        self.child.wait().expect("wait for shardd");
    }
}

impl Drop for Shardd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `acks` (writes the server acknowledged) reaches `n`, so that a
/// crash test kills the server after a known amount of acknowledged work,
/// whatever the machine's speed. The deadline only keeps a server that stopped
/// acknowledging from hanging the test; it is not a speed target.
pub async fn wait_for_acks(acks: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while acks.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "the server acknowledged {} of {n} writes, then stopped",
            acks.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
