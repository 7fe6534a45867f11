//! Host tests: real namespaces, bridges, veths and nftables on this machine's kernel
//! (root). WireGuard is tried where the kernel has it and skipped, saying so, where
//! it does not; the QEMU end-to-end test covers it on the node's kernel.
//!
//! Each test uses its own workload key (so its own names) and cleans up on drop.
//! `ip` and `nft` are used here only to look at what the crate made and to play a
//! workload; the crate itself never runs `ip`.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use cellos_ledger::network::{NetworkPeer, NetworkSpec, WgKey, WgSecret};
use cellos_network::{wireguard_available, Linux, Names, Networks};
use nix::sched::{setns, CloneFlags};

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spec(subnet: &str) -> NetworkSpec {
    NetworkSpec {
        ip_range: "10.20.0.0/16".parse().expect("net"),
        subnet: subnet.parse().expect("net"),
        private_key: WgSecret(WgKey([9; 32])),
        listen_port: 51820,
        peers: vec![NetworkPeer {
            public_key: WgKey([2; 32]),
            endpoint: Some("192.0.2.10:51820".parse().expect("addr")),
            allowed_subnets: vec!["10.20.5.0/24".parse().expect("net")],
        }],
    }
}

/// A network this test made, and the extra namespaces it played workloads in;
/// all removed on drop.
struct Net {
    networks: Networks,
    key: String,
    names: Names,
    extra: Vec<String>,
}

impl Net {
    /// A fresh network key for `test`; `None` (the test is skipped, saying why)
    /// without root.
    fn new(test: &str) -> Option<Net> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: the network host tests need root (namespaces, links, nftables)");
            return None;
        }
        let key = format!("c{}-{test}", std::process::id());
        Some(Net {
            networks: Networks::new(Linux::default()),
            names: Names::for_key(&key),
            key,
            extra: vec![],
        })
    }

    /// A namespace for a workload on the network's bridge, at `addr`/24 with the
    /// gateway as its default route, as a container will be attached next.
    fn workload(&mut self, tag: &str, addr: &str, gateway: &str) -> String {
        let ns = format!("{}{tag}", self.names.netns.replacen("n-", "t-", 1));
        let (inner, outer) = (format!("{ns}i"), format!("{ns}o"));
        sh(&["ip", "netns", "add", &ns]);
        self.extra.push(ns.clone());
        sh(&[
            "ip",
            "link",
            "add",
            &inner,
            "netns",
            &ns,
            "type",
            "veth",
            "peer",
            "name",
            &outer,
            "netns",
            &self.names.netns,
        ]);
        sh(&[
            "ip",
            "-n",
            &self.names.netns,
            "link",
            "set",
            &outer,
            "master",
            &self.names.bridge,
            "up",
        ]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inner,
        ]);
        sh(&["ip", "-n", &ns, "link", "set", &inner, "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &ns, "route", "add", "default", "via", gateway]);
        ns
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.extra {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if let Err(e) = self.networks.remove(&self.key) {
            eprintln!("cleanup of {}: {e}", self.key);
        }
    }
}

/// Runs `f` on a thread inside namespace `ns` (sockets made there stay there).
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = File::open(format!("/run/netns/{ns}")).expect("open namespace");
            setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

fn listen(ns: &str, addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().expect("addr");
    in_ns(ns, || TcpListener::bind(addr).expect("listen"))
}

fn reaches(ns: &str, addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("addr");
    in_ns(ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
    })
}

fn link_index(ns: &str, dev: &str) -> String {
    let out = sh(&["ip", "-n", ns, "-o", "link", "show", "dev", dev]);
    out.split(':').next().unwrap_or_default().to_string()
}

#[test]
fn local_network_has_its_names_address_ruleset_and_forwarding() {
    let host_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("sysctl");
    let Some(net) = Net::new("local") else {
        return;
    };
    let names = net
        .networks
        .ensure_local(&net.key, &spec("10.20.3.0/24"))
        .expect("ensure_local");
    assert_eq!(names, net.names);
    let ns = &names.netns;
    assert!(sh(&["ip", "netns", "list"]).contains(ns.as_str()));
    let addr = sh(&[
        "ip",
        "-n",
        ns,
        "-o",
        "-4",
        "addr",
        "show",
        "dev",
        &names.bridge,
    ]);
    assert!(addr.contains("inet 10.20.3.1/24"), "{addr}");
    let link = sh(&["ip", "-n", ns, "-o", "link", "show", "dev", &names.bridge]);
    assert!(link.contains("state UP") || link.contains(",UP"), "{link}");
    let lo = sh(&["ip", "-n", ns, "-o", "link", "show", "dev", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    // The bridge is not in the host namespace.
    let host_links = sh(&["ip", "-o", "link", "show"]);
    assert!(!host_links.contains(&names.bridge), "{host_links}");
    // Forwarding inside the namespace only.
    let fwd = sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "cat",
        "/proc/sys/net/ipv4/ip_forward",
    ]);
    assert_eq!(fwd.trim(), "1");
    let after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("sysctl");
    assert_eq!(after, host_forward, "the host's forwarding changed");
    let rules = sh(&[
        "ip", "netns", "exec", ns, "nft", "list", "table", "inet", "cellos",
    ]);
    assert!(rules.contains("policy drop"), "{rules}");
    assert!(
        rules.contains(&format!(
            "iifname \"{}\" oifname \"{}\" ip saddr 10.20.3.0/24 ip daddr 10.20.0.0/16 accept",
            names.bridge, names.wireguard
        )),
        "{rules}"
    );
}

#[test]
fn ensure_twice_changes_nothing() {
    let Some(net) = Net::new("twice") else {
        return;
    };
    let s = spec("10.20.4.0/24");
    net.networks.ensure_local(&net.key, &s).expect("first");
    let ns = &net.names.netns;
    let ns_inode = |p: &str| {
        std::fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .expect("stat")
    };
    let path = format!("/run/netns/{ns}");
    let (inode, index) = (ns_inode(&path), link_index(ns, &net.names.bridge));
    net.networks.ensure_local(&net.key, &s).expect("second");
    assert_eq!(ns_inode(&path), inode, "the namespace was recreated");
    assert_eq!(
        link_index(ns, &net.names.bridge),
        index,
        "the bridge was recreated"
    );
    let addrs = sh(&[
        "ip",
        "-n",
        ns,
        "-o",
        "-4",
        "addr",
        "show",
        "dev",
        &net.names.bridge,
    ]);
    assert_eq!(addrs.lines().count(), 1, "{addrs}");
    let ruleset = sh(&["ip", "netns", "exec", ns, "nft", "list", "ruleset"]);
    assert_eq!(ruleset.matches("table inet cellos").count(), 1, "{ruleset}");
    assert_eq!(
        ruleset.matches("ip saddr 10.20.4.0/24").count(),
        1,
        "{ruleset}"
    );
}

#[test]
fn an_update_to_another_subnet_leaves_no_old_gateway() {
    let Some(net) = Net::new("moved") else {
        return;
    };
    net.networks
        .ensure_local(&net.key, &spec("10.20.10.0/24"))
        .expect("first");
    net.networks
        .ensure_local(&net.key, &spec("10.20.11.0/24"))
        .expect("moved");
    let ns = &net.names.netns;
    let addrs = sh(&[
        "ip",
        "-n",
        ns,
        "-o",
        "-4",
        "addr",
        "show",
        "dev",
        &net.names.bridge,
    ]);
    assert_eq!(addrs.lines().count(), 1, "{addrs}");
    assert!(addrs.contains("10.20.11.1/24"), "{addrs}");
    let routes = sh(&["ip", "-n", ns, "-4", "route", "show"]);
    assert!(!routes.contains("10.20.10."), "{routes}");
}

#[test]
fn remove_leaves_nothing_and_succeeds_twice() {
    let Some(net) = Net::new("remove") else {
        return;
    };
    net.networks
        .ensure_local(&net.key, &spec("10.20.6.0/24"))
        .expect("ensure");
    net.networks.remove(&net.key).expect("remove");
    let ns = &net.names.netns;
    assert!(!std::path::Path::new(&format!("/run/netns/{ns}")).exists());
    assert!(!sh(&["ip", "netns", "list"]).contains(ns.as_str()));
    let host_links = sh(&["ip", "-o", "link", "show"]);
    assert!(!host_links.contains(&net.names.wireguard) && !host_links.contains(&net.names.bridge));
    net.networks.remove(&net.key).expect("remove again");
}

#[test]
fn tenants_with_the_same_subnet_cannot_reach_each_other_or_the_uplink() {
    let s = spec("10.20.7.0/24");
    let Some(mut a) = Net::new("tenant-a") else {
        return;
    };
    let Some(mut b) = Net::new("tenant-b") else {
        return;
    };
    a.networks.ensure_local(&a.key, &s).expect("a");
    b.networks.ensure_local(&b.key, &s).expect("b");
    let a1 = a.workload("1", "10.20.7.2", "10.20.7.1");
    let a2 = a.workload("2", "10.20.7.4", "10.20.7.1");
    let b1 = b.workload("1", "10.20.7.3", "10.20.7.1");
    let _la = listen(&a2, "10.20.7.4:7000");
    let _lb = listen(&b1, "10.20.7.3:7000");
    // Workloads of one tenant on one node reach each other over the bridge...
    assert!(
        reaches(&a1, "10.20.7.4:7000"),
        "a's own workloads do not reach each other"
    );
    // ...and never another tenant's, though the addresses are alike.
    assert!(!reaches(&a1, "10.20.7.3:7000"), "tenant a reached tenant b");
    assert!(!reaches(&b1, "10.20.7.4:7000"), "tenant b reached tenant a");

    // A link out of the namespace (what a NAT path would add) opens nothing: the
    // ruleset forwards only between the bridge and the WireGuard device.
    let uplink = format!("{}u", a.names.netns.replacen("n-", "t-", 1));
    sh(&["ip", "netns", "add", &uplink]);
    a.extra.push(uplink.clone());
    sh(&[
        "ip",
        "link",
        "add",
        "upa",
        "netns",
        &a.names.netns,
        "type",
        "veth",
        "peer",
        "name",
        "upb",
        "netns",
        &uplink,
    ]);
    sh(&[
        "ip",
        "-n",
        &a.names.netns,
        "addr",
        "add",
        "192.0.2.1/24",
        "dev",
        "upa",
    ]);
    sh(&["ip", "-n", &a.names.netns, "link", "set", "upa", "up"]);
    sh(&[
        "ip",
        "-n",
        &uplink,
        "addr",
        "add",
        "192.0.2.2/24",
        "dev",
        "upb",
    ]);
    sh(&["ip", "-n", &uplink, "link", "set", "upb", "up"]);
    sh(&[
        "ip",
        "-n",
        &uplink,
        "route",
        "add",
        "10.20.7.0/24",
        "via",
        "192.0.2.1",
    ]);
    let _lu = listen(&uplink, "192.0.2.2:7000");
    assert!(
        !reaches(&a1, "192.0.2.2:7000"),
        "a workload reached the uplink"
    );
    // The ruleset is what stops it: without the table the same connection passes,
    // and ensure puts the table back.
    sh(&[
        "ip",
        "netns",
        "exec",
        &a.names.netns,
        "nft",
        "delete",
        "table",
        "inet",
        "cellos",
    ]);
    assert!(
        reaches(&a1, "192.0.2.2:7000"),
        "the test's uplink does not work at all"
    );
    a.networks.ensure_local(&a.key, &s).expect("again");
    assert!(
        !reaches(&a1, "192.0.2.2:7000"),
        "ensure did not restore the ruleset"
    );
}

#[test]
fn wireguard_device_lives_in_the_namespace_and_survives_updates() {
    let Some(net) = Net::new("wg") else {
        return;
    };
    match wireguard_available() {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("skipped: this kernel cannot create WireGuard devices (no `wireguard` module); the QEMU e2e test covers them");
            return;
        }
        Err(e) => panic!("cannot tell whether the kernel has WireGuard: {e}"),
    }
    let mut s = spec("10.20.8.0/24");
    let names = net.networks.ensure(&net.key, &s).expect("ensure");
    let ns = &names.netns;
    let index = link_index(ns, &names.wireguard);
    let host_links = sh(&["ip", "-o", "link", "show"]);
    assert!(!host_links.contains(&names.wireguard), "{host_links}");
    let route = sh(&["ip", "-n", ns, "-4", "route", "show", "10.20.0.0/16"]);
    assert!(
        route.contains(&format!("dev {}", names.wireguard)),
        "{route}"
    );
    let status = net.networks.status(&net.key).expect("status");
    assert_eq!(status.peers.len(), 1);
    assert_eq!(status.peers[0].public_key, WgKey([2; 32]));
    // An update: one more peer, then none; the device stays the same.
    s.peers.push(NetworkPeer {
        public_key: WgKey([3; 32]),
        endpoint: None,
        allowed_subnets: vec!["10.20.9.0/24".parse().expect("net")],
    });
    net.networks.ensure(&net.key, &s).expect("update");
    assert_eq!(
        net.networks.status(&net.key).expect("status").peers.len(),
        2
    );
    s.peers.clear();
    net.networks.ensure(&net.key, &s).expect("update");
    assert!(net
        .networks
        .status(&net.key)
        .expect("status")
        .peers
        .is_empty());
    assert_eq!(
        link_index(ns, &names.wireguard),
        index,
        "the device was recreated"
    );
    // Another subnet and range: the old gateway address and route are gone.
    s.ip_range = "10.21.0.0/16".parse().expect("net");
    s.subnet = "10.21.8.0/24".parse().expect("net");
    net.networks.ensure(&net.key, &s).expect("moved");
    let addrs = sh(&[
        "ip",
        "-n",
        ns,
        "-o",
        "-4",
        "addr",
        "show",
        "dev",
        &names.wireguard,
    ]);
    assert_eq!(addrs.lines().count(), 1, "{addrs}");
    assert!(addrs.contains("10.21.8.1/32"), "{addrs}");
    let routes = sh(&["ip", "-n", ns, "-4", "route", "show"]);
    assert!(!routes.contains("10.20."), "{routes}");
    assert!(
        routes.contains(&format!("10.21.0.0/16 dev {}", names.wireguard)),
        "{routes}"
    );
}
