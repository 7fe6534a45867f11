//! Host tests: real namespaces, bridges, veths and nftables on this machine's kernel
//! (root). WireGuard is tried where the kernel has it and skipped, saying so, where
//! it does not; the QEMU end-to-end test covers it on the node's kernel.
//!
//! Each test uses its own workload key (so its own names) and cleans up on drop.
//! `ip` and `nft` are used here only to look at what the crate made and to play a
//! workload; the crate itself never runs `ip`.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cellos_ledger::network::{NetworkPeer, NetworkSpec, WgKey, WgSecret};
use cellos_network::{wireguard_available, Attachment, Linux, Names, Networks, WorkloadNames};
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
    /// Workload keys attached by this test.
    workloads: Vec<String>,
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
            workloads: vec![],
            extra: vec![],
        })
    }

    /// [`Net::new`] with the local part of a network on `subnet` made.
    fn local(test: &str, subnet: &str) -> Option<(Net, NetworkSpec)> {
        let net = Net::new(test)?;
        let s = spec(subnet);
        net.networks.ensure_local(&net.key, &s).expect("network");
        Some((net, s))
    }

    /// Attaches workload `tag` of this test to the network at `ip`; detached on
    /// drop. Returns the workload's namespace.
    fn attach(&mut self, tag: &str, ip: &str, spec: &NetworkSpec) -> Attachment {
        let workload = self.workload_key(tag);
        let a = self
            .networks
            .attach(&self.key, spec, &workload, ip.parse().expect("ip"))
            .unwrap_or_else(|e| panic!("attach {workload}: {}", chain(&e)));
        if !self.workloads.contains(&workload) {
            self.workloads.push(workload);
        }
        a
    }

    fn workload_key(&self, tag: &str) -> String {
        format!("{}-w{tag}", self.key)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for w in &self.workloads {
            if let Err(e) = self.networks.detach(w) {
                eprintln!("cleanup of {w}: {e}");
            }
        }
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

/// The error and its causes, one after the other.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text += &format!(": {c}");
        cause = c.source();
    }
    text
}

/// Whether `addr` answers ping from namespace `ns`.
fn pings(ns: &str, addr: &str) -> bool {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-c", "3", "-i", "0.2",
        ])
        .args(["-W", "2", addr])
        .output()
        .unwrap_or_else(|e| panic!("ip netns exec {ns} ping: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("exec of"),
        "no ping here (iputils-ping): {stderr}"
    );
    out.status.success()
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
    let addr = ipv4_addrs(ns, &names.bridge);
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
    let addrs = ipv4_addrs(ns, &net.names.bridge);
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
    let addrs = ipv4_addrs(ns, &net.names.bridge);
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
    let a1 = a.attach("1", "10.20.7.2", &s).names.netns;
    let a2 = a.attach("2", "10.20.7.4", &s).names.netns;
    let b1 = b.attach("1", "10.20.7.3", &s).names.netns;
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
    let addrs = ipv4_addrs(ns, &names.wireguard);
    assert_eq!(addrs.lines().count(), 1, "{addrs}");
    assert!(addrs.contains("10.21.8.1/32"), "{addrs}");
    let routes = sh(&["ip", "-n", ns, "-4", "route", "show"]);
    assert!(!routes.contains("10.20."), "{routes}");
    assert!(
        routes.contains(&format!("10.21.0.0/16 dev {}", names.wireguard)),
        "{routes}"
    );
}

/// Lines of `ip -o` output in `ns` (`-n` omitted for the host's namespace).
/// The IPv4 addresses on `dev` in `ns`, one line each.
fn ipv4_addrs(ns: &str, dev: &str) -> String {
    ip(Some(ns), &["-o", "-4", "addr", "show", "dev", dev])
}

fn ip(ns: Option<&str>, args: &[&str]) -> String {
    let mut all = vec!["ip"];
    if let Some(ns) = ns {
        all.extend(["-n", ns]);
    }
    all.extend(args);
    sh(&all)
}

#[test]
fn attached_workloads_ping_each_other_and_the_gateway() {
    let Some((mut net, s)) = Net::local("ping", "10.20.12.0/24") else {
        return;
    };
    let one = net.attach("1", "10.20.12.2", &s);
    let two = net.attach("2", "10.20.12.3", &s);
    let (w1, w2) = (&one.names.netns, &two.names.netns);
    assert_eq!(one.netns_path, Path::new("/run/netns").join(w1));
    assert!(one.netns_path.exists());
    assert_eq!(
        (one.address.to_string(), one.gateway.to_string()),
        ("10.20.12.2/24".into(), "10.20.12.1".into())
    );
    // In the workload's namespace: lo and eth0 only, its address, the route.
    let links = ip(Some(w1), &["-o", "link", "show"]);
    assert_eq!(links.lines().count(), 2, "{links}");
    assert!(
        links.contains(": lo:") && links.contains(": eth0@"),
        "{links}"
    );
    assert!(links.lines().all(|l| l.contains(",UP")), "{links}");
    let addrs = ip(Some(w1), &["-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains("inet 10.20.12.2/24"), "{addrs}");
    let routes = ip(Some(w1), &["-4", "route", "show", "default"]);
    assert!(
        routes.contains("default via 10.20.12.1 dev eth0"),
        "{routes}"
    );
    // The other end is a port of the bridge inside the network's namespace, and
    // nothing of the workload's is in the host namespace.
    let port = ip(
        Some(&net.names.netns),
        &["-o", "link", "show", "dev", &one.names.port],
    );
    assert!(
        port.contains(&format!("master {}", net.names.bridge)) && port.contains(",UP"),
        "{port}"
    );
    let host_links = ip(None, &["-o", "link", "show"]);
    assert!(!host_links.contains(&one.names.port), "{host_links}");

    assert!(
        pings(w1, "10.20.12.1"),
        "workload 1 does not reach the gateway"
    );
    assert!(
        pings(w2, "10.20.12.1"),
        "workload 2 does not reach the gateway"
    );
    assert!(
        pings(w1, "10.20.12.3"),
        "workload 1 does not reach workload 2"
    );
    assert!(
        pings(w2, "10.20.12.2"),
        "workload 2 does not reach workload 1"
    );
}

#[test]
fn attach_twice_keeps_the_interface_and_a_new_ip_replaces_the_address() {
    let Some((mut net, s)) = Net::local("reattach", "10.20.13.0/24") else {
        return;
    };
    let first = net.attach("1", "10.20.13.5", &s);
    let ns = first.names.netns.clone();
    let port = link_index(&net.names.netns, &first.names.port);
    assert_eq!(link_index(&ns, "eth0"), first.index.to_string());

    let again = net.attach("1", "10.20.13.5", &s);
    assert_eq!(again, first, "a repeat changed the attachment");
    assert_eq!(link_index(&ns, "eth0"), first.index.to_string());
    assert_eq!(link_index(&net.names.netns, &first.names.port), port);

    let moved = net.attach("1", "10.20.13.6", &s);
    assert_eq!(moved.index, first.index, "a new address recreated the veth");
    assert_eq!(link_index(&net.names.netns, &first.names.port), port);
    let addrs = ip(Some(&ns), &["-o", "-4", "addr", "show", "dev", "eth0"]);
    assert_eq!(addrs.lines().count(), 1, "{addrs}");
    assert!(addrs.contains("inet 10.20.13.6/24"), "{addrs}");
    let routes = ip(Some(&ns), &["-4", "route", "show", "default"]);
    assert!(
        routes.contains("default via 10.20.13.1 dev eth0"),
        "{routes}"
    );
    assert!(pings(&ns, "10.20.13.1"), "the new address does not work");
}

#[test]
fn a_workload_attached_to_another_network_leaves_the_first() {
    let Some((mut a, sa)) = Net::local("from", "10.20.14.0/24") else {
        return;
    };
    let Some((b, sb)) = Net::local("to", "10.20.15.0/24") else {
        return;
    };
    let first = a.attach("1", "10.20.14.2", &sa);
    // The same workload (a's Net detaches it on drop), now on b's network.
    let moved = b
        .networks
        .attach(
            &b.key,
            &sb,
            &a.workload_key("1"),
            "10.20.15.2".parse().expect("ip"),
        )
        .expect("attach to b");
    assert_eq!(moved.names, first.names);
    let in_a = ip(Some(&a.names.netns), &["-o", "link", "show"]);
    assert!(!in_a.contains(&first.names.port), "{in_a}");
    let in_b = ip(
        Some(&b.names.netns),
        &["-o", "link", "show", "dev", &first.names.port],
    );
    assert!(
        in_b.contains(&format!("master {}", b.names.bridge)),
        "{in_b}"
    );
    assert!(pings(&moved.names.netns, "10.20.15.1"));
    assert!(!pings(&moved.names.netns, "10.20.14.1"));
}

#[test]
fn attached_workloads_cannot_reach_the_host_or_the_gateway_s_services() {
    let Some((mut net, s)) = Net::local("host", "10.20.16.0/24") else {
        return;
    };
    let w = net.attach("1", "10.20.16.2", &s).names.netns;
    // A service of the node: a listener on every address of the host namespace.
    let host = TcpListener::bind("0.0.0.0:0").expect("listen on the host");
    let port = host.local_addr().expect("port").port();
    let host_addrs: Vec<String> = ip(None, &["-o", "-4", "addr", "show"])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next())
        .map(|a| format!("{a}:{port}"))
        .collect();
    assert!(!host_addrs.is_empty());
    for addr in &host_addrs {
        assert!(
            TcpStream::connect(addr.as_str()).is_ok(),
            "the host itself does not reach {addr}"
        );
        assert!(
            !reaches(&w, addr),
            "the workload reached the host at {addr}"
        );
    }
    // Nor a service of the network's namespace itself, though its gateway
    // answers ping.
    let _gateway = listen(&net.names.netns, "10.20.16.1:7000");
    assert!(pings(&w, "10.20.16.1"));
    assert!(
        !reaches(&w, "10.20.16.1:7000"),
        "the workload reached a service on its gateway"
    );
    let routes = ip(Some(&net.names.netns), &["-4", "route", "show"]);
    assert!(!routes.contains("default"), "{routes}");
}

#[test]
fn detach_removes_namespace_and_veth_and_succeeds_twice() {
    let Some((mut net, s)) = Net::local("detach", "10.20.17.0/24") else {
        return;
    };
    let a = net.attach("1", "10.20.17.2", &s);
    // A process still in the namespace (here: an open handle) keeps it alive after
    // the unmount; the veth must go all the same.
    let held = File::open(&a.netns_path).expect("hold the namespace");
    net.networks.detach(&net.workload_key("1")).expect("detach");
    assert!(!a.netns_path.exists());
    assert!(!sh(&["ip", "netns", "list"]).contains(a.names.netns.as_str()));
    let in_network = ip(Some(&net.names.netns), &["-o", "link", "show"]);
    assert!(!in_network.contains(&a.names.port), "{in_network}");
    drop(held);
    net.networks
        .detach(&net.workload_key("1"))
        .expect("detach again");
    assert_eq!(WorkloadNames::for_key(&net.workload_key("1")), a.names);
}

#[test]
fn a_vm_tap_is_a_persistent_port_of_the_bridge_and_goes_with_detach() {
    let Some((net, s)) = Net::local("tap", "10.20.17.0/24") else {
        return;
    };
    let vm = net.workload_key("vm");
    let a = net
        .networks
        .attach_tap(&net.key, &s, &vm, "10.20.17.9".parse().expect("ip"))
        .unwrap_or_else(|e| panic!("attach_tap: {}", chain(&e)));
    let ns = &net.names.netns;
    assert_eq!(a.tap, WorkloadNames::for_key(&vm).tap);
    assert_eq!(a.address.to_string(), "10.20.17.9/24");
    assert_eq!(a.gateway.to_string(), "10.20.17.1");
    assert!(a.netns_path.ends_with(ns));
    let link = ip(Some(ns), &["-d", "link", "show", "dev", &a.tap]);
    assert!(
        link.contains(&format!("master {}", net.names.bridge)),
        "{link}"
    );
    assert!(
        link.contains("tun type tap") && link.contains("persist"),
        "{link}"
    );
    assert!(link.contains(",UP"), "the tap is set up: {link}");
    let index = link_index(ns, &a.tap);

    // A repeat (a later cellosd) finds the same device.
    let again = net
        .networks
        .attach_tap(&net.key, &s, &vm, "10.20.17.9".parse().expect("ip"))
        .expect("again");
    assert_eq!(again, a);
    assert_eq!(link_index(ns, &a.tap), index);
    // Nothing of it is in the host namespace.
    let host = ip(None, &["-o", "link", "show"]);
    assert!(!host.contains(&a.tap), "{host}");

    net.networks.detach_tap(&net.key, &vm).expect("detach");
    let links = ip(Some(ns), &["-o", "link", "show"]);
    assert!(!links.contains(&a.tap), "{links}");
    net.networks
        .detach_tap(&net.key, &vm)
        .expect("a second detach succeeds");
}
