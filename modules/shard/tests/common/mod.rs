//! The real `shardd` binary for the crate's integration tests.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

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
