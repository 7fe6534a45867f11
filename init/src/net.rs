//! Bringing up the node's uplink: pick the interface, get a lease (or apply the static
//! config), set address, route and resolv.conf, and keep the lease renewed.
//!
//! Interfaces are read from `/sys/class/net` (name, index, MAC, carrier) rather than a
//! netlink dump: it is simpler and the tests point it at a fixture directory. Changes go
//! through netlink in `sys`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::backoff::{human, Backoff, BackoffPolicy};
use crate::console::{chain, say};
use crate::netlink::same_subnet;
use crate::sys::{Netlink, UdpTransport};
use cellos_boot::cmdline::{NetConfig, PeerNet, StaticNet};
use cellos_dhcp::{self as dhcp, Lease};

/// A network interface seen in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    /// Kernel name, e.g. `eth0`.
    pub name: String,
    /// ifindex.
    pub index: u32,
    /// Hardware address.
    pub mac: [u8; 6],
    /// Whether a cable / peer is present (only meaningful once the link is up).
    pub carrier: bool,
}

/// The configured uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// Interface name.
    pub iface: String,
    /// Address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Ethernet interfaces (ARPHRD_ETHER, not loopback) under `dir`, by ifindex.
pub fn list_ifaces(dir: &Path) -> Vec<Iface> {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if read(&p.join("type")).trim() != "1" || name == "lo" {
            continue;
        }
        let (Ok(index), Some(mac)) = (
            read(&p.join("ifindex")).trim().parse(),
            parse_mac(&read(&p.join("address"))),
        ) else {
            continue;
        };
        let carrier = read(&p.join("carrier")).trim() == "1";
        out.push(Iface {
            name,
            index,
            mac,
            carrier,
        });
    }
    out.sort_by_key(|i| i.index);
    out
}

/// `cellos-` and the last three bytes of the MAC: stable per machine, unique enough on a LAN.
pub fn hostname_for(mac: [u8; 6]) -> String {
    format!("cellos-{:02x}{:02x}{:02x}", mac[3], mac[4], mac[5])
}

/// The interface to configure: the named one, else the first with carrier, else the
/// first, never `peer` (the segment interface of `cellos.net.peer`).
pub fn pick_uplink<'a>(
    ifaces: &'a [Iface],
    wanted: Option<&str>,
    peer: Option<&str>,
) -> Option<&'a Iface> {
    let mut usable = ifaces.iter().filter(|i| Some(i.name.as_str()) != peer);
    match wanted {
        Some(name) => usable.find(|i| i.name == name),
        None => {
            let first = usable.clone().next();
            usable.find(|i| i.carrier).or(first)
        }
    }
}

const SYS_NET: &str = "/sys/class/net";
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Set `lo` up (the kernel adds 127.0.0.1/8 itself).
pub fn loopback_up(nl: &mut Netlink) -> std::io::Result<()> {
    let index = std::fs::read_to_string(Path::new(SYS_NET).join("lo/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1);
    nl.link_up(index)
}

fn write_resolv(dns: &[Ipv4Addr], domain: Option<&str>) {
    if dns.is_empty() {
        return;
    }
    let _ = std::fs::create_dir_all("/etc");
    if let Err(e) = std::fs::write(RESOLV_CONF, dhcp::resolv_conf(dns, domain)) {
        say(&format!("cannot write {RESOLV_CONF}: {e}"));
    }
}

fn apply(
    nl: &mut Netlink,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
    gw: Option<Ipv4Addr>,
) -> std::io::Result<()> {
    nl.add_addr(index, addr, prefix)?;
    if let Some(gw) = gw {
        nl.default_route(index, gw, !same_subnet(addr, prefix, gw))?;
    }
    Ok(())
}

/// Wait until one of the interfaces that should be used has carrier (up to `wait`).
fn choose(
    wanted: Option<&str>,
    peer: Option<&str>,
    wait: Duration,
    nl: &mut Netlink,
) -> Option<Iface> {
    let start = Instant::now();
    let mut raised = Vec::new();
    loop {
        let ifaces = list_ifaces(Path::new(SYS_NET));
        for i in &ifaces {
            if (wanted.is_none() || wanted == Some(i.name.as_str())) && !raised.contains(&i.index) {
                if let Err(e) = nl.link_up(i.index) {
                    say(&format!("cannot set {} up: {e}", i.name));
                }
                raised.push(i.index);
            }
        }
        let picked = pick_uplink(&ifaces, wanted, peer).cloned();
        match picked {
            Some(i) if i.carrier || start.elapsed() >= wait => return Some(i),
            None if start.elapsed() >= wait => return None,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Gives the `cellos.net.peer` interface its address (no route: only the segment is
/// behind it), waiting a while for the interface to appear. Failing here costs the
/// node its tenant networks' endpoint, not its uplink: say so and go on.
fn peer_up(nl: &mut Netlink, p: &PeerNet) {
    let result = choose(Some(&p.iface), None, Duration::from_secs(10), nl)
        .ok_or_else(|| format!("no interface {}", p.iface))
        .and_then(|i| apply(nl, i.index, p.addr, p.prefix, None).map_err(|e| e.to_string()));
    match result {
        Ok(()) => say(&format!(
            "peer network on {} {}/{}",
            p.iface, p.addr, p.prefix
        )),
        Err(e) => say(&format!("peer network on {}: {e}", p.iface)),
    }
}

/// Bring up the uplink per `cfg`, retrying with backoff until it works, then call `up` once
/// and (for DHCP) keep the lease renewed forever. The `peer` interface is configured
/// first and never taken as the uplink. Runs on its own thread.
pub fn run(cfg: NetConfig, peer: Option<PeerNet>, hostname: String, up: impl FnOnce(Uplink)) {
    let mut retry = Backoff::new(BackoffPolicy::default());
    let mut nl = loop {
        match Netlink::open() {
            Ok(nl) => break nl,
            Err(e) => {
                let d = retry.on_exit(Duration::ZERO);
                say(&format!(
                    "cannot open netlink: {e}, retrying in {}",
                    human(d)
                ));
                std::thread::sleep(d);
            }
        }
    };
    if let Err(e) = loopback_up(&mut nl) {
        say(&format!("cannot set lo up: {e}"));
    }
    if let Some(p) = &peer {
        peer_up(&mut nl, p);
    }
    let peer = peer.as_ref().map(|p| p.iface.as_str());
    match cfg {
        NetConfig::Static(s) => run_static(&mut nl, &s, up),
        NetConfig::Dhcp => run_dhcp(&mut nl, None, peer, &hostname, up),
        NetConfig::DhcpOn(name) => run_dhcp(&mut nl, Some(&name), peer, &hostname, up),
    }
}

fn run_static(nl: &mut Netlink, s: &StaticNet, up: impl FnOnce(Uplink)) {
    let mut retry = Backoff::new(BackoffPolicy::default());
    loop {
        let result = choose(Some(&s.iface), None, Duration::from_secs(5), nl)
            .ok_or_else(|| format!("no interface {}", s.iface))
            .and_then(|i| {
                apply(nl, i.index, s.addr, s.prefix, Some(s.gateway)).map_err(|e| e.to_string())
            });
        match result {
            Ok(()) => {
                if let Some(dns) = s.dns {
                    write_resolv(&[dns], None);
                }
                up(Uplink {
                    iface: s.iface.clone(),
                    addr: s.addr,
                    prefix: s.prefix,
                    gateway: Some(s.gateway),
                });
                return;
            }
            Err(e) => {
                let d = retry.on_exit(Duration::ZERO);
                say(&format!(
                    "static network on {}: {e}, retrying in {}",
                    s.iface,
                    human(d)
                ));
                std::thread::sleep(d);
            }
        }
    }
}

fn xid_seed(mac: [u8; 6]) -> u32 {
    let m = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]);
    (crate::sys::boottime_ms() as u32).wrapping_mul(2_654_435_761) ^ m ^ (crate::sys::pid() as u32)
}

fn run_dhcp(
    nl: &mut Netlink,
    wanted: Option<&str>,
    peer: Option<&str>,
    hostname: &str,
    up: impl FnOnce(Uplink),
) {
    let mut retry = Backoff::new(BackoffPolicy::default());
    let mut up = Some(up);
    loop {
        let Some(iface) = choose(wanted, peer, Duration::from_secs(5), nl) else {
            let d = retry.on_exit(Duration::ZERO);
            let what = wanted.map_or("no ethernet interface".to_string(), |w| {
                format!("no interface {w}")
            });
            say(&format!("{what} found, retrying in {}", human(d)));
            std::thread::sleep(d);
            continue;
        };
        let mut transport = match UdpTransport::bind(&iface.name) {
            Ok(t) => t,
            Err(e) => {
                let d = retry.on_exit(Duration::ZERO);
                say(&format!(
                    "cannot open the DHCP socket on {}: {e}, retrying in {}",
                    iface.name,
                    human(d)
                ));
                std::thread::sleep(d);
                continue;
            }
        };
        let mut xid = xid_seed(iface.mac);
        let lease = match dhcp::acquire(&mut transport, iface.mac, xid, hostname) {
            Ok(l) => l,
            Err(e) => {
                let d = retry.on_exit(Duration::ZERO);
                say(&format!(
                    "DHCP on {}: {}, retrying in {}",
                    iface.name,
                    chain(&e),
                    human(d)
                ));
                std::thread::sleep(d);
                continue;
            }
        };
        if let Err(e) = apply(nl, iface.index, lease.addr, lease.prefix, lease.router) {
            let d = retry.on_exit(Duration::ZERO);
            say(&format!(
                "cannot configure {} with {}/{}: {e}, retrying in {}",
                iface.name,
                lease.addr,
                lease.prefix,
                human(d)
            ));
            std::thread::sleep(d);
            continue;
        }
        write_resolv(&lease.dns, lease.domain.as_deref());
        retry = Backoff::new(BackoffPolicy::default());
        if let Some(up) = up.take() {
            up(Uplink {
                iface: iface.name.clone(),
                addr: lease.addr,
                prefix: lease.prefix,
                gateway: lease.router,
            });
        } else {
            say(&format!(
                "network up again on {} {}/{}",
                iface.name, lease.addr, lease.prefix
            ));
        }
        // Keep the lease until it cannot be kept; then start over with DISCOVER.
        let mut lease = lease;
        loop {
            xid = xid.wrapping_add(1);
            match keep(&mut transport, &iface, xid, hostname, &lease) {
                Some(new) => {
                    if new.addr != lease.addr || new.prefix != lease.prefix {
                        let _ = nl.del_addr(iface.index, lease.addr, lease.prefix);
                    }
                    if let Err(e) = apply(nl, iface.index, new.addr, new.prefix, new.router) {
                        say(&format!(
                            "cannot apply the renewed lease on {}: {e}",
                            iface.name
                        ));
                    }
                    write_resolv(&new.dns, new.domain.as_deref());
                    lease = new;
                }
                None => {
                    say(&format!(
                        "DHCP lease {}/{} on {} expired",
                        lease.addr, lease.prefix, iface.name
                    ));
                    let _ = nl.del_addr(iface.index, lease.addr, lease.prefix);
                    break;
                }
            }
        }
    }
}

/// Sleep to T1, then renew (unicast) until T2, then rebind (broadcast) until expiry.
/// Returns the extended lease, or `None` once it expired.
fn keep(
    t: &mut UdpTransport,
    iface: &Iface,
    xid: u32,
    hostname: &str,
    lease: &Lease,
) -> Option<Lease> {
    let got = Instant::now();
    std::thread::sleep(lease.t1);
    loop {
        let elapsed = got.elapsed();
        if elapsed >= lease.lease_time {
            return None;
        }
        let rebinding = elapsed >= lease.t2;
        match dhcp::renew(t, iface.mac, xid, hostname, lease, rebinding) {
            Ok(new) => return Some(new),
            Err(e) => {
                let until = if rebinding {
                    lease.lease_time
                } else {
                    lease.t2
                };
                let wait = (until.saturating_sub(got.elapsed()) / 2).max(Duration::from_secs(5));
                let what = if rebinding { "rebind" } else { "renew" };
                say(&format!(
                    "DHCP {what} on {} failed: {}, retrying in {}",
                    iface.name,
                    chain(&e),
                    human(wait)
                ));
                std::thread::sleep(wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_iface(dir: &Path, name: &str, index: u32, kind: u32, mac: &str, carrier: &str) {
        let p = dir.join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::write(p.join("ifindex"), format!("{index}\n")).expect("write");
        std::fs::write(p.join("type"), format!("{kind}\n")).expect("write");
        std::fs::write(p.join("address"), format!("{mac}\n")).expect("write");
        std::fs::write(p.join("carrier"), format!("{carrier}\n")).expect("write");
    }

    #[test]
    fn lists_ethernet_and_picks_uplink() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_iface(dir.path(), "lo", 1, 772, "00:00:00:00:00:00", "1");
        fake_iface(dir.path(), "eth1", 3, 1, "52:54:00:00:00:02", "1");
        fake_iface(dir.path(), "eth0", 2, 1, "52:54:00:12:34:56", "0");
        fake_iface(dir.path(), "wg0", 4, 65534, "", "1");
        let ifaces = list_ifaces(dir.path());
        let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["eth0", "eth1"]);
        assert_eq!(ifaces[0].mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(
            pick_uplink(&ifaces, None, None).map(|i| i.name.as_str()),
            Some("eth1")
        );
        assert_eq!(
            pick_uplink(&ifaces, Some("eth0"), None).map(|i| i.name.as_str()),
            Some("eth0")
        );
        assert_eq!(pick_uplink(&ifaces, Some("eth9"), None), None);
        // The peer segment's interface is never the uplink, carrier or not.
        assert_eq!(
            pick_uplink(&ifaces, None, Some("eth1")).map(|i| i.name.as_str()),
            Some("eth0")
        );
        assert_eq!(pick_uplink(&ifaces, Some("eth1"), Some("eth1")), None);
        let no_carrier: Vec<Iface> = ifaces
            .iter()
            .cloned()
            .map(|i| Iface {
                carrier: false,
                ..i
            })
            .collect();
        assert_eq!(
            pick_uplink(&no_carrier, None, None).map(|i| i.name.as_str()),
            Some("eth0")
        );
        assert_eq!(hostname_for(ifaces[0].mac), "cellos-123456");
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("aa:bb:cc:dd:ee:ff\n"),
            Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
        );
        assert_eq!(parse_mac("aa:bb:cc:dd:ee"), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:ff:00"), None);
        assert_eq!(parse_mac("zz:bb:cc:dd:ee:ff"), None);
    }
}
