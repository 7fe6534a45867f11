//! Tenant networks end to end: three QEMU nodes on one shared Ethernet segment (each
//! node's second NIC, `cellos.net.peer=eth1:...`), a WireGuard mesh planned with
//! `cellos network plan` and sent with `cellos deploy`, exactly as a user does.
//!
//! Checked from inside the nodes (the debug shell, `nsenter` into the tenant's
//! namespace) and on the wire (the segment's capture): gateways answer through
//! WireGuard and only WireGuard's UDP crosses the segment; two tenants with the same
//! range stay apart and never reach the node's API; an update changes peers on the live
//! device; cancel removes everything; a rebooted node brings its network back; bad
//! networks are refused with a reason and leave nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cellos_ledger::deployment::Deployment;
use cellos_ledger::keys;
use cellos_ledger::*;
use cellos_qemu::{Disk, HostFwd, Protocol, Segment, Vm};
use cellos_tests::*;

const GIB: u64 = 1 << 30;
const RANGE: &str = "10.20.0.0/16";
const SHELL: Duration = Duration::from_secs(60);

struct TestNode {
    vm: Vm,
    id: NodeId,
    /// Its address on the segment.
    ip: String,
}

impl TestNode {
    /// Runs a shell command on the node; (status, output).
    fn sh(&mut self, cmd: &str) -> (i32, String) {
        self.vm
            .shell(cmd, SHELL)
            .unwrap_or_else(|e| panic!("node {}: {cmd}: {e}", self.id))
    }

    /// Runs `cmd` inside the network namespace `ns`.
    fn in_ns(&mut self, ns: &str, cmd: &str) -> (i32, String) {
        self.sh(&format!("nsenter --net=/run/netns/{ns} {cmd}"))
    }

    /// Whether `addr` answers a ping from inside `ns` (a few tries: a fresh tunnel
    /// needs a handshake first).
    fn pings(&mut self, ns: &str, addr: &str, tries: u32) -> bool {
        (0..tries).any(|_| self.in_ns(ns, &format!("ping -c 1 -W 2 {addr}")).0 == 0)
    }

    fn namespaces(&mut self) -> Vec<String> {
        let (_, out) = self.sh("ls /run/netns 2>/dev/null");
        out.split_whitespace().map(str::to_string).collect()
    }

    /// The ifindex of the link called `name` inside `ns`.
    fn ifindex(&mut self, ns: &str, name: &str) -> Option<u32> {
        let (_, out) = self.in_ns(ns, "ip -o link");
        out.lines().find_map(|l| {
            let (index, rest) = l.split_once(": ")?;
            let link = rest.split([':', '@']).next()?;
            (link == name).then(|| index.trim().parse().ok())?
        })
    }
}

/// The ledger, the farm the nodes join and the wire between them.
struct Grid {
    ledger: Ledger,
    farm: FarmId,
    enroll: ed25519_dalek::SigningKey,
    segment: Segment,
}

impl Grid {
    /// Boots a node whose eth1 is on the segment at `ip` and whose API is forwarded
    /// to `api_port` on the host.
    fn boot(&self, ip: &str, disks: Vec<Disk>, work: &Path, api_port: u16) -> Vm {
        let mut params = boot_params(self.farm, &self.ledger.guest_url(), &self.enroll);
        params
            .extra
            .push_str(&format!(" cellos.debug cellos.net.peer=eth1:{ip}/24"));
        let mut cfg = vm_config(image().direct(&params), disks);
        cfg.segment = Some(self.segment.port().expect("segment port"));
        cfg.work_dir = Some(work.to_path_buf());
        cfg.hostfwd = vec![HostFwd {
            protocol: Protocol::Tcp,
            host_port: api_port,
            guest_port: NODE_API_PORT,
        }];
        start(cfg)
    }
}

fn wait_registered(vm: &mut Vm) -> NodeId {
    let line = vm
        .wait_for(&Regex::new(REGISTERED).expect("regex"), BOOT_TIMEOUT)
        .expect("registers");
    registered(&line).0
}

/// A user of the CLI with a funded account.
struct User {
    key: PathBuf,
    url: String,
    dir: tempfile::TempDir,
}

impl User {
    fn new(ledger: &Ledger) -> User {
        let dir = tempfile::tempdir().expect("tempdir");
        let u = User {
            key: dir.path().join("user.key"),
            url: format!("http://{}", ledger.addr),
            dir,
        };
        u.cli(&["key", "new"]);
        u.cli(&["account", "create"]);
        u.cli(&["account", "fund", "10000000"]);
        u
    }

    fn cli(&self, args: &[&str]) -> String {
        let (ok, out, err) = cellos_cli(args, &self.url, &self.key);
        assert!(ok, "cellos {args:?} failed:\n{out}\n{err}");
        out
    }

    /// `cellos network plan` for `nodes` into a directory of its own; the files.
    fn plan(&self, name: &str, nodes: &[NodeId], port: u16) -> Vec<PathBuf> {
        let out = self.dir.path().join(name);
        let list = nodes
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let port = port.to_string();
        self.cli(&[
            "network",
            "plan",
            "--name",
            name,
            "--nodes",
            &list,
            "--range",
            RANGE,
            "--port",
            &port,
            "--interface",
            "eth1",
            "--out",
            out.to_str().expect("path"),
        ]);
        nodes
            .iter()
            .map(|n| out.join(format!("{name}-node{n}.toml")))
            .collect()
    }

    /// Deploys `file` on `node`; (contract, the network workload's data).
    fn deploy(&self, file: &Path, node: NodeId) -> (ContractId, BTreeMap<String, String>) {
        let out = self.cli(&[
            "--json",
            "deploy",
            file.to_str().expect("path"),
            "--node",
            &node.to_string(),
        ]);
        outcome(&out)
    }
}

/// The contract id and the first workload's data from `--json deploy|update` output.
fn outcome(out: &str) -> (ContractId, BTreeMap<String, String>) {
    let v: serde_json::Value = serde_json::from_str(out).expect("deploy --json");
    let id = v["contract"]["id"].as_u64().expect("contract id");
    let data =
        serde_json::from_value(v["result"]["workloads"][0]["data"].clone()).expect("workload data");
    (id, data)
}

/// The segment carries the tenants' traffic only inside WireGuard: every IPv4 frame is
/// UDP to or from one of `ports` (or the ICMP error a node answers to such a datagram
/// that arrives before its device listens), there is at least one, and no frame has a
/// tenant address (`10.20.0.0/16`) in the clear.
fn only_wireguard_on_the_wire(segment: &Segment, ports: &[u16]) {
    let mut wireguard = 0;
    for f in segment.frames() {
        let d = &f.data;
        if d.len() < 34 || d[12..14] != [0x08, 0x00] {
            continue; // ARP, IPv6 neighbour discovery: not the tenants' traffic
        }
        let head = &d[14..];
        let ihl = usize::from(head[0] & 0x0f) * 4;
        let tenant = |at: usize| head[at] == 10 && head[at + 1] == 20;
        assert!(
            !tenant(12) && !tenant(16),
            "a tenant address in the clear on the segment: {:02x?}",
            &d[..48.min(d.len())]
        );
        let udp_ports = |ip: &[u8]| -> Option<(u16, u16)> {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            (ip.get(9) == Some(&17)).then_some(())?;
            let p = ip.get(ihl..ihl + 4)?;
            Some((
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            ))
        };
        let wg = |(src, dst): (u16, u16)| ports.contains(&src) || ports.contains(&dst);
        match head[9] {
            17 => {
                let p = udp_ports(head).expect("a UDP header");
                assert!(
                    wg(p),
                    "UDP {} -> {} on the segment is not WireGuard",
                    p.0,
                    p.1
                );
                wireguard += 1;
            }
            // ICMP destination unreachable, about a WireGuard datagram.
            1 if head.get(ihl) == Some(&3) => {
                let quoted = head.get(ihl + 8..).unwrap_or_default();
                assert!(
                    udp_ports(quoted).is_some_and(wg),
                    "an ICMP error about something else than WireGuard: {:02x?}",
                    &d[..64.min(d.len())]
                );
            }
            proto => panic!(
                "IPv4 protocol {proto} on the segment: {:02x?}",
                &d[..48.min(d.len())]
            ),
        }
    }
    assert!(wireguard > 0, "no WireGuard traffic on the segment");
}

#[test]
fn vm_network_mesh_isolation_update_cancel_reboot() {
    let ledger = Ledger::start(0);
    let enroll = keys::generate();
    let farm = ledger.farm(&enroll);
    let grid = Grid {
        ledger,
        farm,
        enroll,
        segment: Segment::start().expect("segment"),
    };
    let (ledger, segment) = (&grid.ledger, &grid.segment);
    let work = tempfile::tempdir().expect("tempdir");
    let ips = ["192.168.77.11", "192.168.77.12", "192.168.77.13"];
    let api_ports: Vec<u16> = ips.iter().map(|_| free_port()).collect();
    let mut vms: Vec<(Vm, &str)> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let dir = work.path().join(format!("node{i}"));
            let disks = vec![Disk::new(8 * GIB, DiskKind::Ssd)];
            (grid.boot(ip, disks, &dir, api_ports[i]), *ip)
        })
        .collect();
    let mut nodes: Vec<TestNode> = vms
        .drain(..)
        .map(|(mut vm, ip)| {
            let id = wait_registered(&mut vm);
            TestNode {
                vm,
                id,
                ip: ip.to_string(),
            }
        })
        .collect();
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();

    // 1. A mesh across three nodes: plan, deploy, gateways answer through WireGuard.
    let started = Instant::now();
    let alice = User::new(ledger);
    let files = alice.plan("net", &ids, 51820);
    let mut mesh = Vec::new();
    for (file, &node) in files.iter().zip(&ids) {
        mesh.push(alice.deploy(file, node));
    }
    let ns: Vec<String> = mesh
        .iter()
        .map(|(_, data)| {
            data.get("namespace")
                .expect("namespace in the results")
                .clone()
        })
        .collect();
    let gateways = ["10.20.1.1", "10.20.2.1", "10.20.3.1"];
    assert!(
        nodes[0].pings(&ns[0], gateways[1], 20),
        "A reaches B's gateway"
    );
    assert!(
        nodes[0].pings(&ns[0], gateways[2], 20),
        "A reaches C's gateway"
    );
    println!(
        "figures: contract to a working 3-node tunnel: {:.1?}",
        started.elapsed()
    );
    only_wireguard_on_the_wire(segment, &[51820]);
    // `cellos node show` lists alice's network on A from A's API: both peers with a
    // handshake and bytes both ways.
    let api_a = format!("http://127.0.0.1:{}", api_ports[0]);
    let show_a = |u: &User| -> serde_json::Value {
        let out = u.cli(&[
            "--json",
            "node",
            "show",
            &ids[0].to_string(),
            "--api",
            &api_a,
        ]);
        serde_json::from_str(&out).expect("node show json")
    };
    let shown = show_a(&alice);
    let nets = shown["networks"].as_array().expect("networks listed");
    assert_eq!(nets.len(), 1, "{shown}");
    assert_eq!(nets[0]["contract"], mesh[0].0, "{shown}");
    assert_eq!(nets[0]["subnet"], "10.20.1.0/24", "{shown}");
    let peers = nets[0]["live"]["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 2, "{shown}");
    for p in peers {
        assert!(p["last_handshake"].is_u64(), "no handshake: {shown}");
        for dir in ["rx_bytes", "tx_bytes"] {
            assert!(p[dir].as_u64() > Some(0), "no {dir}: {shown}");
        }
    }
    let text = alice.cli(&["node", "show", &ids[0].to_string(), "--api", &api_a]);
    assert!(text.contains("s ago") && !text.contains("never"), "{text}");

    // 2. A second tenant with the same range on A and B: each reaches its own peers
    // only, and nobody reaches the node's API on the uplink.
    let bob = User::new(ledger);
    let bob_files = bob.plan("net", &ids[..2], 51821);
    let bob_ns: Vec<String> = bob_files
        .iter()
        .zip(&ids)
        .map(|(f, &n)| bob.deploy(f, n).1["namespace"].clone())
        .collect();
    assert_ne!(bob_ns[0], ns[0]);
    let shown = show_a(&bob);
    let nets = shown["networks"].as_array().expect("networks listed");
    assert_eq!(nets.len(), 1, "bob sees only his own network on A: {shown}");
    assert_ne!(nets[0]["contract"], mesh[0].0, "bob sees alice's: {shown}");
    assert!(
        nodes[0].pings(&bob_ns[0], gateways[1], 20),
        "bob's A reaches bob's B"
    );
    assert!(
        !nodes[0].pings(&bob_ns[0], gateways[2], 2),
        "bob reaches alice's C"
    );
    // The node answers the same request from its own namespace: the check can fail.
    let (_, out) = nodes[0].sh(&http_get("", "10.0.2.15", NODE_API_PORT, "/v1/status"));
    assert!(
        out.contains("HTTP/"),
        "the node API does not answer the node: {out}"
    );
    for (n, ns) in [(0, &ns[0]), (0, &bob_ns[0])] {
        for target in ["10.0.2.15", nodes[n].ip.clone().as_str(), "10.0.2.2"] {
            let prefix = format!("nsenter --net=/run/netns/{ns}");
            let (_, out) = nodes[n].sh(&http_get(&prefix, target, NODE_API_PORT, "/v1/status"));
            assert!(
                !out.contains("HTTP/"),
                "{ns} reached {target}'s node API: {out}"
            );
        }
    }
    only_wireguard_on_the_wire(segment, &[51820, 51821]);

    // 3. Update: A and B drop C; A no longer reaches C, on the same device.
    let wg_a = mesh[0]
        .1
        .get("wireguard")
        .expect("wireguard device")
        .clone();
    let index_before = nodes[0].ifindex(&ns[0], &wg_a).expect("wg device on A");
    for (i, file) in files.iter().enumerate().take(2) {
        let text = std::fs::read_to_string(file).expect("plan file");
        let mut value: toml::Value = toml::from_str(&text).expect("toml");
        let peers = value["workloads"][0]["spec"]["network"]["peers"]
            .as_array_mut()
            .expect("peers");
        peers.retain(|p| p["allowed_subnets"][0].as_str() != Some("10.20.3.0/24"));
        assert_eq!(peers.len(), 1);
        std::fs::write(file, toml::to_string(&value).expect("toml")).expect("write");
        alice.cli(&[
            "--json",
            "deployment",
            "update",
            &mesh[i].0.to_string(),
            file.to_str().expect("path"),
        ]);
    }
    assert!(!nodes[0].pings(&ns[0], gateways[2], 2), "A still reaches C");
    assert!(nodes[0].pings(&ns[0], gateways[1], 10), "A lost B");
    assert_eq!(
        nodes[0].ifindex(&ns[0], &wg_a),
        Some(index_before),
        "the device was recreated"
    );
    // Cancel on C removes its namespace and device.
    alice.cli(&["deployment", "cancel", &mesh[2].0.to_string()]);
    let t = Instant::now();
    while nodes[2].namespaces().contains(&ns[2]) {
        assert!(t.elapsed() < Duration::from_secs(120), "C keeps {}", ns[2]);
        std::thread::sleep(Duration::from_secs(2));
    }
    let (_, links) = nodes[2].sh("ip -o link");
    assert!(
        !links.contains(&mesh[2].1["wireguard"]),
        "C keeps its device: {links}"
    );

    // 4. Reboot B: its network comes back from its state disk, A reaches it again.
    let b = nodes.remove(1);
    let disks = b.vm.disks().to_vec();
    let dir = b.vm.work_dir().to_path_buf();
    let mut old = b.vm;
    old.quit().expect("quit B");
    drop(old);
    let disks = disks
        .into_iter()
        .map(|p| Disk::existing(p, DiskKind::Ssd))
        .collect();
    let vm = grid.boot(ips[1], disks, &dir.join("again"), free_port());
    let mut b = TestNode {
        vm,
        id: ids[1],
        ip: ips[1].into(),
    };
    wait_registered(&mut b.vm);
    let t = Instant::now();
    while !b.namespaces().contains(&ns[1]) {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "B did not rebuild {}",
            ns[1]
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        nodes[0].pings(&ns[0], gateways[1], 30),
        "A reaches B after its reboot"
    );
    nodes.insert(1, b);

    // 5. Bad networks are refused with a reason on the ledger; nothing is left.
    bad_networks_are_refused(ledger, &mut nodes[0]);
}

fn bad_networks_are_refused(ledger: &Ledger, node: &mut TestNode) {
    let before = node.namespaces();
    let c = &ledger.client;
    let mut user = ledger.user();
    let to = ledger.node(node.id).encryption_key;
    let (owner, owner_key) = (user.public_key(), user.key().clone());
    let network = Resources {
        mru: cellos_ledger::network::NETWORK_MRU,
        ..Default::default()
    };
    let mut order = |body: &[u8], hash: Hash| -> ContractId {
        ledger.order(&mut user, node.id, &to, body, hash, network)
    };
    // A subnet outside its range: a well-formed, signed deployment.
    let (private, public) = (
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
    );
    let spec = |subnet: &str, peer_key: &str| {
        serde_json::json!({
            "owner": owner,
            "version": 1,
            "workloads": [{ "name": "net", "spec": { "network": {
                "ip_range": RANGE, "subnet": subnet, "private_key": private,
                "listen_port": 51830,
                "peers": [{ "public_key": peer_key, "allowed_subnets": ["10.20.9.0/24"] }]
            }}}]
        })
    };
    let mut outside: Deployment =
        serde_json::from_value(spec("10.30.1.0/24", public)).expect("typed");
    outside.sign(&owner_key);
    let outside_id = order(&serde_json::to_vec(&outside).expect("json"), outside.hash());
    // A peer key of 3 bytes: no typed deployment can hold it; the node gets the JSON.
    let short = serde_json::to_vec(&spec("10.20.1.0/24", "AgIC")).expect("json");
    let short_id = order(&short, Hash([7; 32]));
    for (id, want) in [(outside_id, "outside"), (short_id, "32 bytes")] {
        let t = Instant::now();
        let reason = loop {
            if let Ok(k) = ledger.block_on(c.contract(id)) {
                if let ContractState::Closed(CloseCause::Rejected(r)) = k.state {
                    break r;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "contract {id} not refused\n{}",
                node.vm.console()
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        assert!(
            reason.contains(want),
            "contract {id}: {reason:?} should say {want:?}"
        );
    }
    assert_eq!(
        node.namespaces(),
        before,
        "a refused network left something"
    );
}
