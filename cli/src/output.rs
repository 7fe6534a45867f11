//! Text for people. JSON output is serde's; this is the other half of `--json`.

use anyhow::Result;
use cellos_ledger::deployment::Size;
use cellos_ledger::{Account, Contract, Farm, Node};
use serde::Serialize;

use crate::args::Global;
use crate::deploy::NodeNetwork;

pub fn account(a: &Account) -> String {
    let enc = a.encryption_key.map_or("-".to_string(), |k| k.to_hex());
    format!(
        "account {}\n  balance         {}\n  nonce           {}\n  encryption key  {}",
        a.pubkey, a.balance, a.nonce, enc
    )
}

pub fn farm(f: &Farm) -> String {
    let mut s = format!(
        "farm {} {:?}\n  owner           {}\n  prices per hour cu={} su={} ipu={} (nu={} per GiB)\n  enrollment key  {}\n  public IPs      {} ({} free)",
        f.id,
        f.name,
        f.owner,
        f.prices.cu,
        f.prices.su,
        f.prices.ipu,
        f.prices.nu,
        f.enrollment_key.map_or("-".to_string(), |k| k.to_hex()),
        f.public_ips.len(),
        f.free_ips()
    );
    for ip in &f.public_ips {
        let lease = ip
            .leased_by
            .map_or("free".to_string(), |c| format!("contract {c}"));
        s.push_str(&format!("\n    {} via {}  {}", ip.ip, ip.gateway, lease));
    }
    s
}

pub fn farm_row(f: &Farm) -> String {
    format!(
        "{:>5}  {:<24} {:>4} IPs  owner {}",
        f.id,
        f.name,
        f.public_ips.len(),
        f.owner
    )
}

pub fn node(n: &Node) -> String {
    let mut s = format!(
        "node {} on farm {} ({}, {}{})\n  key             {}\n  capacity        {}\n  reserved        {}\n  vm accel        {}\n  last uptime     {} (up {} s)",
        n.id,
        n.farm,
        n.status,
        if n.approved { "approved" } else { "waiting for approval" },
        if n.persistent { "" } else { ", no persistent state: takes no contracts" },
        n.pubkey,
        n.capacity,
        n.reserved,
        n.accel,
        n.last_uptime,
        n.uptime_secs
    );
    for i in &n.interfaces {
        s.push_str(&format!(
            "\n  interface       {} {} {}",
            i.name,
            i.mac,
            i.ips.join(" ")
        ));
    }
    for g in &n.gpus {
        let group = g
            .iommu_group
            .map_or("no iommu group".to_string(), |i| format!("iommu group {i}"));
        s.push_str(&format!(
            "\n  gpu             {} {:04x}:{:04x} {group}",
            g.address, g.vendor, g.device
        ));
    }
    s
}

/// The caller's networks on a node (`cellos node show`): per network its subnet and
/// gateway, per peer its key, endpoint, last handshake (`now` is unix seconds) and
/// bytes.
pub fn node_networks(nets: &[NodeNetwork], now: u64) -> String {
    if nets.is_empty() {
        return "\n  networks        none of yours on this node".into();
    }
    let or_dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let mut s = String::new();
    for n in nets {
        s.push_str(&format!(
            "\n  network         {} (contract {}) subnet {} gateway {}",
            n.name,
            n.contract,
            or_dash(&n.subnet),
            or_dash(&n.gateway)
        ));
        let Some(live) = &n.live else {
            s.push_str("\n    not up on the node yet");
            continue;
        };
        s.push_str(&format!(
            ", rx {} B, tx {} B, {} peers",
            live.rx_bytes,
            live.tx_bytes,
            live.peers.len()
        ));
        for p in &live.peers {
            let handshake = p.last_handshake.map_or("never".into(), |t| {
                format!("{} s ago", now.saturating_sub(t))
            });
            s.push_str(&format!(
                "\n    peer          {} endpoint {} handshake {}, rx {} B, tx {} B",
                p.public_key,
                or_dash(&p.endpoint),
                handshake,
                p.rx_bytes,
                p.tx_bytes
            ));
        }
    }
    s
}

pub fn node_row(n: &Node) -> String {
    format!(
        "{:>6}  farm {:<5} {:<14} {:<8} cru={:<3} mru={:<9} sru={:<9} hru={}",
        n.id,
        n.farm,
        n.status.to_string(),
        if n.approved { "approved" } else { "pending" },
        n.capacity.cru,
        Size(n.capacity.mru),
        Size(n.capacity.sru),
        Size(n.capacity.hru)
    )
}

pub fn contract(c: &Contract) -> String {
    format!(
        "contract {} on node {} (farm {}): {}\n  owner           {}\n  deployment      {}\n  resources       {}\n  public IPs      {}\n  price           {} per hour\n  escrow          {} (paid {}, billed until {})\n  measured use    {:.1} s of CPU in all, {} memory at the last report",
        c.id,
        c.node,
        c.farm,
        c.state,
        c.owner,
        c.deployment_hash,
        c.resources,
        if c.public_ips.is_empty() { "-".to_string() } else { c.public_ips.join(", ") },
        c.price_per_hour,
        c.escrow,
        c.paid,
        c.billed_until,
        c.cpu_usec as f64 / 1e6,
        Size(c.memory_bytes)
    )
}

pub fn contract_row(c: &Contract) -> String {
    format!(
        "{:>6}  node {:<6} {:<28} escrow {:<10} {}",
        c.id,
        c.node,
        c.state.to_string(),
        c.escrow,
        c.resources
    )
}

/// Prints `value` as JSON with `--json`, else the text `human` makes of it.
pub fn show<T: Serialize>(g: &Global, value: &T, human: impl FnOnce(&T) -> String) -> Result<()> {
    if g.json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", human(value));
    }
    Ok(())
}

/// One line per item, or `none` when there is nothing.
pub fn rows<T>(items: &[T], none: &str, row: impl Fn(&T) -> String) -> String {
    if items.is_empty() {
        return none.to_string();
    }
    items.iter().map(row).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::{NetworkLive, PeerLive};

    #[test]
    fn a_contract_shows_its_measured_use() {
        let c: Contract = serde_json::from_value(serde_json::json!({
            "id": 4, "owner": "00".repeat(32), "node": 1, "farm": 1,
            "deployment_hash": "11".repeat(32), "accepted_hash": null, "blob": null, "result": null,
            "resources": {"cru":1,"mru":1,"sru":1,"hru":0}, "public_ips": [],
            "price_per_hour": 10, "price_per_gib": 1, "escrow": 100, "state": "active",
            "billed_until": 7, "suspended_at": null, "created_at": 1, "paid": 3,
            "cpu_usec": 42_500_000, "memory_bytes": 48 << 20
        }))
        .expect("a contract record");
        let text = contract(&c);
        assert!(
            text.ends_with(
                "\n  measured use    42.5 s of CPU in all, 48.0MiB memory at the last report"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_node_shows_its_accelerator_and_gpus() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "id": 1, "pubkey": "00".repeat(32), "farm": 1, "approved": true,
            "capacity": {"cru":1,"mru":1,"sru":1,"hru":0}, "reserved": {"cru":0,"mru":0,"sru":0,"hru":0},
            "interfaces": [], "location": null, "encryption_key": "00".repeat(32),
            "gpus": [
                {"address": "0000:00:01.0", "vendor": 0x1234, "device": 0x1111, "iommu_group": null},
                {"address": "0000:01:00.0", "vendor": 0x10de, "device": 0x20b0, "iommu_group": 12}
            ],
            "accel": "kvm",
            "persistent": true, "status": "up", "last_uptime": 0, "uptime_secs": 0, "registered_at": 0
        }))
        .expect("a node record");
        let text = node(&n);
        assert!(text.contains("\n  vm accel        kvm\n"), "{text}");
        assert!(
            text.ends_with(
                "\n  gpu             0000:00:01.0 1234:1111 no iommu group\n  gpu             0000:01:00.0 10de:20b0 iommu group 12"
            ),
            "{text}"
        );
    }

    #[test]
    fn networks_name_peers_handshakes_and_bytes() {
        let peer = |key: &str, hs| PeerLive {
            public_key: key.into(),
            endpoint: Some("192.0.2.2:51820".into()),
            last_handshake: hs,
            rx_bytes: 300,
            tx_bytes: 400,
        };
        let net = NodeNetwork {
            contract: 5,
            name: "net".into(),
            subnet: Some("10.20.1.0/24".into()),
            gateway: Some("10.20.1.1".into()),
            live: Some(NetworkLive {
                peers: vec![peer("KEYB=", Some(1_000)), peer("KEYC=", None)],
                rx_bytes: 300,
                tx_bytes: 400,
            }),
        };
        let text = node_networks(&[net], 1_012);
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "  network         net (contract 5) subnet 10.20.1.0/24 gateway 10.20.1.1, rx 300 B, tx 400 B, 2 peers",
                "    peer          KEYB= endpoint 192.0.2.2:51820 handshake 12 s ago, rx 300 B, tx 400 B",
                "    peer          KEYC= endpoint 192.0.2.2:51820 handshake never, rx 300 B, tx 400 B",
            ]
        );
        assert!(node_networks(&[], 0).contains("none of yours"));
    }
}
