//! `cellos network plan`: the deployment files of one tenant network, one per node,
//! so a user never computes WireGuard configurations by hand.
//!
//! Every node gets its own /24 of the network's /16 (in the order the nodes are
//! named), a fresh WireGuard key pair, and the full mesh of peers: each other node's
//! public key, its /24, and where it listens (an address from its record on the
//! ledger). The files hold private keys: they are written 0600 and never overwritten
//! unless asked, since a new plan means new keys for every node.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cellos_ledger::deployment::{Workload, WorkloadSpec};
use cellos_ledger::network::{Ipv4Net, NetworkPeer, NetworkSpec, WgKey, WgSecret};
use cellos_ledger::{Node, NodeId, NodeStatus};
use serde::Serialize;

use crate::args::Global;

/// One node of a plan, as the ledger knows it.
#[derive(Debug, Clone)]
pub struct Member {
    pub node: NodeId,
    /// Where its WireGuard listens; `None`: it reaches out to the others.
    pub endpoint: Option<Ipv4Addr>,
}

/// A node's share of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Share {
    pub node: NodeId,
    pub subnet: Ipv4Net,
    pub endpoint: Option<SocketAddr>,
    pub public_key: WgKey,
    #[serde(skip)]
    pub workload: Workload,
}

/// A WireGuard key pair from the OS's random source: (private, public).
pub fn wg_keypair() -> (WgSecret, WgKey) {
    let secret = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    let public = x25519_dalek::PublicKey::from(&secret);
    (WgSecret(WgKey(secret.to_bytes())), WgKey(public.to_bytes()))
}

/// The `i`th /24 of `range` (a /16), counting from 1 so no node's subnet holds the
/// range's own network address.
fn subnet(range: Ipv4Net, i: usize) -> Result<Ipv4Net> {
    if range.prefix_len() != 16 || range.trunc() != range {
        bail!("--range {range} must be a /16 network, like 10.20.0.0/16");
    }
    let third = u32::try_from(i + 1)
        .ok()
        .filter(|n| *n < 256)
        .context("a /16 holds at most 255 nodes' /24s")?;
    let base = u32::from(range.network()) | (third << 8);
    Ok(Ipv4Net::new(Ipv4Addr::from(base), 24)?)
}

/// The plan: each member's workload named `name`, with the others as peers.
pub fn plan(
    name: &str,
    range: Ipv4Net,
    port: u16,
    members: &[Member],
    mut keypair: impl FnMut() -> (WgSecret, WgKey),
) -> Result<Vec<Share>> {
    if members.is_empty() {
        bail!("a network needs at least one node");
    }
    for (i, m) in members.iter().enumerate() {
        if members[..i].iter().any(|o| o.node == m.node) {
            bail!("node {} is named twice", m.node);
        }
    }
    let keys: Vec<(WgSecret, WgKey)> = members.iter().map(|_| keypair()).collect();
    let subnets = (0..members.len())
        .map(|i| subnet(range, i))
        .collect::<Result<Vec<_>>>()?;
    let endpoint = |m: &Member| m.endpoint.map(|ip| SocketAddr::from((ip, port)));
    let mut shares = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let peers = members
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, o)| NetworkPeer {
                public_key: keys[j].1,
                endpoint: endpoint(o),
                allowed_subnets: vec![subnets[j]],
            })
            .collect();
        let spec = NetworkSpec {
            ip_range: range,
            subnet: subnets[i],
            private_key: keys[i].0.clone(),
            listen_port: port,
            peers,
        };
        spec.check()
            .map_err(|e| anyhow::anyhow!("the plan for node {}: {e}", m.node))?;
        shares.push(Share {
            node: m.node,
            subnet: subnets[i],
            endpoint: endpoint(m),
            public_key: keys[i].1,
            workload: Workload {
                name: name.to_string(),
                spec: WorkloadSpec::Network(spec),
            },
        });
    }
    Ok(shares)
}

/// The address a node's WireGuard is reached at: the first IPv4 address on
/// `interface` (or on any interface, in the node's order), never loopback.
pub fn endpoint_of(node: &Node, interface: Option<&str>) -> Option<Ipv4Addr> {
    node.interfaces
        .iter()
        .filter(|i| match interface {
            Some(want) => i.name == want,
            None => true,
        })
        .flat_map(|i| &i.ips)
        .filter_map(|cidr| cidr.split('/').next()?.parse::<Ipv4Addr>().ok())
        .find(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// The deployment file of one share (no owner: `cellos deploy` fills in its --key).
fn file_text(share: &Share, name: &str) -> Result<String> {
    #[derive(Serialize)]
    struct File<'a> {
        version: u32,
        metadata: std::collections::BTreeMap<&'a str, String>,
        workloads: [&'a Workload; 1],
    }
    let metadata = [
        ("network", name.to_string()),
        ("node", share.node.to_string()),
    ]
    .into_iter()
    .collect();
    let body = toml::to_string(&File {
        version: 1,
        metadata,
        workloads: [&share.workload],
    })?;
    Ok(format!(
        "# Node {}'s part of network {name:?} (written by `cellos network plan`).\n\
         # It holds this node's WireGuard private key: keep it private.\n\
         #   cellos deploy {} --node {}\n{body}",
        share.node,
        plan_file_name(name, share.node),
        share.node
    ))
}

fn plan_file_name(name: &str, node: NodeId) -> String {
    format!("{name}-node{node}.toml")
}

/// Writes one file per share into `out` (0600); refuses to replace a file unless
/// `force`. Returns the paths.
pub fn write(out: &Path, name: &str, shares: &[Share], force: bool) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    // Check every file first, so a refusal writes nothing.
    let paths: Vec<PathBuf> = shares
        .iter()
        .map(|s| out.join(plan_file_name(name, s.node)))
        .collect();
    if !force {
        if let Some(p) = paths.iter().find(|p| p.exists()) {
            bail!(
                "{} exists: a new plan has new keys for every node; pass --force to replace it",
                p.display()
            );
        }
    }
    for (share, path) in shares.iter().zip(&paths) {
        let text = file_text(share, name)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        // `mode` applies only to a new file; a replaced one may have been readable.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(paths)
}

/// What `cellos network plan` was asked.
pub struct PlanRequest {
    pub name: String,
    pub nodes: Vec<NodeId>,
    pub range: Ipv4Net,
    pub port: u16,
    pub interface: Option<String>,
    pub out: PathBuf,
    pub force: bool,
}

pub async fn run_plan(g: &Global, req: PlanRequest) -> Result<()> {
    let c = crate::tx::client(g)?;
    let mut members = Vec::new();
    for &id in &req.nodes {
        let node = c
            .node(id)
            .await
            .with_context(|| format!("node {id} on the ledger"))?;
        if node.status != NodeStatus::Up {
            eprintln!("warning: node {id} is {:?}", node.status);
        }
        let endpoint = endpoint_of(&node, req.interface.as_deref());
        if endpoint.is_none() {
            match &req.interface {
                Some(i) => bail!("node {id} has no IPv4 address on {i} in its ledger record"),
                None => eprintln!(
                    "warning: node {id} lists no IPv4 address: the others cannot reach it first"
                ),
            }
        }
        members.push(Member { node: id, endpoint });
    }
    let shares = plan(&req.name, req.range, req.port, &members, wg_keypair)?;
    let paths = write(&req.out, &req.name, &shares, req.force)?;
    crate::output::show(g, &shares, |shares| {
        let mut t = format!(
            "network {:?} ({}), one file per node in {}:\n",
            req.name,
            req.range,
            req.out.display()
        );
        for (s, p) in shares.iter().zip(&paths) {
            let endpoint = s
                .endpoint
                .map_or_else(|| "(no endpoint)".to_string(), |e| e.to_string());
            t.push_str(&format!(
                "  node {:<5} {:<15} {:<21} {}  {}\n",
                s.node,
                s.subnet.to_string(),
                endpoint,
                s.public_key,
                p.display()
            ));
        }
        t.push_str("deploy each with: cellos deploy FILE --node N");
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellos_ledger::deployment::Deployment;

    fn members() -> Vec<Member> {
        [
            (3, Some([192, 168, 77, 11])),
            (5, None),
            (8, Some([192, 168, 77, 13])),
        ]
        .into_iter()
        .map(|(node, ip)| Member {
            node,
            endpoint: ip.map(Ipv4Addr::from),
        })
        .collect()
    }

    #[test]
    fn every_node_gets_a_subnet_a_key_and_the_others_as_peers() {
        let range: Ipv4Net = "10.20.0.0/16".parse().unwrap();
        let shares = plan("net", range, 51820, &members(), wg_keypair).unwrap();
        assert_eq!(shares.len(), 3);
        let subnets: Vec<String> = shares.iter().map(|s| s.subnet.to_string()).collect();
        assert_eq!(subnets, ["10.20.1.0/24", "10.20.2.0/24", "10.20.3.0/24"]);
        for (i, s) in shares.iter().enumerate() {
            let WorkloadSpec::Network(spec) = &s.workload.spec else {
                panic!("not a network");
            };
            // The private key in the file matches the public key the others get.
            let secret = x25519_dalek::StaticSecret::from(*spec.private_key.bytes());
            assert_eq!(
                x25519_dalek::PublicKey::from(&secret).to_bytes(),
                s.public_key.0
            );
            assert_eq!(spec.peers.len(), 2);
            for p in &spec.peers {
                let j = shares
                    .iter()
                    .position(|o| o.public_key == p.public_key)
                    .unwrap();
                assert_ne!(i, j, "a node is not its own peer");
                assert_eq!(p.allowed_subnets, vec![shares[j].subnet]);
                assert_eq!(p.endpoint, shares[j].endpoint);
            }
        }
        assert_eq!(
            shares[0].endpoint,
            Some("192.168.77.11:51820".parse().unwrap())
        );
        assert_eq!(shares[1].endpoint, None);
    }

    #[test]
    fn files_are_private_deployments_and_never_silently_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let range: Ipv4Net = "10.20.0.0/16".parse().unwrap();
        let shares = plan("net", range, 51820, &members(), wg_keypair).unwrap();
        let paths = write(dir.path(), "net", &shares, false).unwrap();
        for (s, p) in shares.iter().zip(&paths) {
            let mode = std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
            // The file reads back (with an owner, as `cellos deploy` adds) as a valid
            // deployment holding exactly the planned workload.
            let text = std::fs::read_to_string(p).unwrap();
            let mut value: toml::Value = toml::from_str(&text).unwrap();
            value
                .as_table_mut()
                .unwrap()
                .insert("owner".into(), toml::Value::String("00".repeat(32)));
            let d: Deployment = value.try_into().unwrap();
            d.validate().unwrap();
            assert_eq!(d.workloads, vec![s.workload.clone()]);
        }
        let before = std::fs::read(&paths[0]).unwrap();
        let again = plan("net", range, 51820, &members(), wg_keypair).unwrap();
        let err = write(dir.path(), "net", &again, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(
            std::fs::read(&paths[0]).unwrap(),
            before,
            "nothing replaced"
        );
        // A replaced file is private even if it was not.
        std::fs::set_permissions(&paths[0], std::fs::Permissions::from_mode(0o644)).unwrap();
        write(dir.path(), "net", &again, true).unwrap();
        assert_ne!(std::fs::read(&paths[0]).unwrap(), before);
        let mode = std::fs::metadata(&paths[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_plans_are_refused() {
        let range: Ipv4Net = "10.20.0.0/16".parse().unwrap();
        let m = members();
        assert!(plan(
            "net",
            "10.20.0.0/24".parse().unwrap(),
            51820,
            &m,
            wg_keypair
        )
        .is_err());
        assert!(plan("net", range, 51820, &[], wg_keypair).is_err());
        let twice = vec![m[0].clone(), m[0].clone()];
        assert!(plan("net", range, 51820, &twice, wg_keypair).is_err());
        assert!(plan("net", range, 0, &m, wg_keypair).is_err());
        let many: Vec<Member> = (0..256)
            .map(|node| Member {
                node,
                endpoint: None,
            })
            .collect();
        assert!(plan("net", range, 51820, &many, wg_keypair).is_err());
    }

    #[test]
    fn endpoints_come_from_the_named_interface() {
        let mut node: Node = serde_json::from_value(serde_json::json!({
            "id": 1, "pubkey": "00".repeat(32), "farm": 1, "approved": true,
            "capacity": {"cru":1,"mru":1,"sru":1,"hru":0}, "reserved": {"cru":0,"mru":0,"sru":0,"hru":0},
            "interfaces": [], "location": null, "encryption_key": "00".repeat(32),
            "persistent": true, "status": "up", "last_uptime": 0, "uptime_secs": 0, "registered_at": 0
        }))
        .unwrap();
        node.interfaces = vec![
            cellos_ledger::Interface {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                ips: vec!["10.0.2.15/24".into()],
            },
            cellos_ledger::Interface {
                name: "eth1".into(),
                mac: "52:54:00:77:00:00".into(),
                ips: vec!["192.168.77.11/24".into()],
            },
        ];
        assert_eq!(endpoint_of(&node, None), Some(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!(
            endpoint_of(&node, Some("eth1")),
            Some(Ipv4Addr::new(192, 168, 77, 11))
        );
        assert_eq!(endpoint_of(&node, Some("eth2")), None);
    }
}
