//! The real `shardd` binary for the crate's integration tests.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

/// How long a wait for the server may take before the test gives up. Only
/// keeps a broken server from hanging the test; it is not a speed target.
const HANG: Duration = Duration::from_secs(300);

/// A running shardd on a free loopback port, SIGKILLed when dropped (also when a
/// test fails).
pub struct Shardd {
    child: Child,
    pub addr: SocketAddr,
    /// What it printed before it listened (recovery reports).
    pub said: Vec<String>,
    /// What it prints after that.
    later: Receiver<String>,
}

impl Shardd {
    /// Starts shardd on `dir` with `extra` arguments and waits until it listens.
    pub fn start(dir: &Path, extra: &[&str]) -> Shardd {
        Shardd::start_with_env(dir, extra, &[])
    }

    /// [`Shardd::start`] with environment variables set for shardd.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Shardd {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardd"))
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--dir")
            .arg(dir)
            .envs(env.iter().copied())
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
        let (tx, later) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                // The test may have stopped listening; keep draining.
                let _ = tx.send(line);
            }
        });
        Shardd {
            child,
            addr,
            said,
            later,
        }
    }

    /// Waits until shardd has printed a line that starts with `prefix`, before
    /// it listened (a background pass may start while it opens the
    /// namespaces) or after, and returns the first such line.
    pub async fn wait_for_line(&self, prefix: &str) -> String {
        if let Some(line) = self.said.iter().find(|l| l.starts_with(prefix)) {
            return line.clone();
        }
        let deadline = Instant::now() + HANG;
        loop {
            match self.later.try_recv() {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(TryRecvError::Disconnected) => panic!("shardd exited before {prefix:?}"),
                Err(TryRecvError::Empty) => {
                    assert!(Instant::now() < deadline, "shardd never printed {prefix:?}");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
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
    let deadline = Instant::now() + HANG;
    while acks.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "the server acknowledged {} of {n} writes, then stopped",
            acks.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A command as a RESP array of bulk strings.
pub fn wire(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}
