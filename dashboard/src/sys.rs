//! The dashboard's only contact with the OS: cellosd's socket, the NIC addresses and
//! the console tty.

use std::io::Read;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::model::Nic;
use crate::view::Snapshot;

/// How long cellosd may take to write its snapshot.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// A snapshot is a few KiB; more than this is not cellosd.
const MAX_SNAPSHOT: u64 = 1 << 20;

/// Reads one snapshot from cellosd's socket, or says why not in a line for the screen.
pub fn fetch(socket: &Path) -> Result<Snapshot, String> {
    let why = |e: &dyn std::fmt::Display| format!("cellosd's socket {}: {e}", socket.display());
    let s = UnixStream::connect(socket).map_err(|e| why(&e))?;
    s.set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| why(&e))?;
    let mut buf = Vec::new();
    s.take(MAX_SNAPSHOT)
        .read_to_end(&mut buf)
        .map_err(|e| why(&e))?;
    serde_json::from_slice(&buf).map_err(|e| why(&e))
}

/// Every interface but loopback, with its IPv4 and IPv6 addresses and prefix lengths,
/// sorted by name. An interface without an address is listed too (a NIC with no
/// link or lease is what the farmer is looking for).
pub fn nics() -> Vec<Nic> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<Nic> = Vec::new();
    for a in addrs {
        if a.interface_name == "lo" {
            continue;
        }
        let ip_of = |s: &nix::sys::socket::SockaddrStorage| -> Option<IpAddr> {
            if let Some(v4) = s.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        };
        let ip = a.address.as_ref().and_then(ip_of);
        let prefix = a.netmask.as_ref().and_then(ip_of).map(|m| match m {
            IpAddr::V4(m) => u32::from(m).count_ones(),
            IpAddr::V6(m) => u128::from(m).count_ones(),
        });
        let i = match out.iter().position(|n| n.name == a.interface_name) {
            Some(i) => i,
            None => {
                out.push(Nic {
                    name: a.interface_name.clone(),
                    addrs: Vec::new(),
                });
                out.len() - 1
            }
        };
        if let Some(ip) = ip {
            out[i].addrs.push(match prefix {
                Some(p) => format!("{ip}/{p}"),
                None => ip.to_string(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Makes the console `tty` (e.g. `/dev/tty1`) the dashboard's stdin and stdout; stderr
/// stays where init pointed it (the serial log). The tty is deliberately not made the
/// controlling terminal: no key typed on it can send the dashboard a signal.
pub fn attach_tty(tty: &Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(tty)?;
    for target in [0, 1] {
        nix::unistd::dup2(f.as_raw_fd(), target)?;
    }
    Ok(())
}
