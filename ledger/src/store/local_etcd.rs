//! A throwaway etcd cluster on loopback, for the etcd store's tests and
//! `cellos bench ledger`: Debian's `etcd-server` ships only a systemd unit, so the
//! members are started from `/usr/bin/etcd` here, each with its own data directory
//! and free ports, and killed when the cluster is dropped. Never used by a server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `etcd-server` puts the binary.
pub const ETCD: &str = "/usr/bin/etcd";

#[derive(Debug, thiserror::Error)]
pub enum LocalEtcdError {
    #[error("{ETCD} is missing (install Debian's etcd-server)")]
    Missing,
    #[error("cannot start etcd member {name} (log in {log})")]
    Spawn {
        name: String,
        log: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find free loopback ports")]
    Ports(#[source] std::io::Error),
    #[error("etcd at {url} was not healthy within {secs} s")]
    Unhealthy { url: String, secs: u64 },
}

/// A cluster of etcd members on loopback ports.
pub struct LocalEtcd {
    members: Vec<Child>,
    urls: Vec<String>,
}

/// Free loopback ports (bound together, so they differ; released for etcd to take).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let ls = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    ls.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

impl LocalEtcd {
    /// Whether [`ETCD`] is installed.
    pub fn available() -> bool {
        Path::new(ETCD).exists()
    }

    /// Starts `n` members with data and logs (`etcdN.log`) under `dir`, and waits
    /// until each reports itself healthy.
    pub fn start(dir: &Path, n: usize) -> Result<LocalEtcd, LocalEtcdError> {
        if !Self::available() {
            return Err(LocalEtcdError::Missing);
        }
        let ports = free_ports(2 * n).map_err(LocalEtcdError::Ports)?;
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[n + i]);
        let urls: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", ports[i]))
            .collect();
        let initial = (0..n)
            .map(|i| format!("m{i}={}", peer(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = LocalEtcd {
            members: Vec::with_capacity(n),
            urls,
        };
        for i in 0..n {
            let name = format!("m{i}");
            let log = dir.join(format!("etcd{i}.log"));
            let spawn_err = |source| LocalEtcdError::Spawn {
                name: name.clone(),
                log: log.clone(),
                source,
            };
            let log_file = std::fs::File::create(&log).map_err(spawn_err)?;
            let child = Command::new(ETCD)
                .arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(dir.join(format!("etcd{i}")))
                .args(["--listen-client-urls", &c.urls[i]])
                .args(["--advertise-client-urls", &c.urls[i]])
                .args(["--listen-peer-urls", &peer(i)])
                .args(["--initial-advertise-peer-urls", &peer(i)])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "cellos-local"])
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .map_err(spawn_err)?;
            c.members.push(child);
        }
        c.wait_healthy(Duration::from_secs(30))?;
        Ok(c)
    }

    fn wait_healthy(&self, within: Duration) -> Result<(), LocalEtcdError> {
        let deadline = Instant::now() + within;
        for url in &self.urls {
            while !healthy(url) {
                if Instant::now() >= deadline {
                    return Err(LocalEtcdError::Unhealthy {
                        url: url.clone(),
                        secs: within.as_secs(),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Each member's client URL.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The client URLs, member `first`'s first: each ledger server prefers its own.
    pub fn endpoints(&self, first: usize) -> Vec<String> {
        let n = self.urls.len();
        (0..n).map(|i| self.urls[(first + i) % n].clone()).collect()
    }

    /// SIGKILLs member `i` (a crash, for tests).
    pub fn kill9(&mut self, i: usize) {
        if let Some(m) = self.members.get_mut(i) {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

/// Whether etcd's `/health` at `url` (`http://host:port`) says `"health":"true"`.
fn healthy(url: &str) -> bool {
    let Some(addr) = url.strip_prefix("http://") else {
        return false;
    };
    let ask = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "GET /health HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.take(64 * 1024).read_to_string(&mut out)?;
        Ok(out)
    };
    ask().is_ok_and(|r| r.contains("\"true\""))
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}
