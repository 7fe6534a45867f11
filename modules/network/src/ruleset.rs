//! The nftables ruleset inside a tenant namespace.
//!
//! The namespace has two interfaces besides `lo`: the bridge of the node's local
//! workloads and the WireGuard device to the other nodes of the same network (the
//! workloads' veths are ports of the bridge, so their traffic is the bridge's). It has
//! no link to the host namespace, so the node's services and its uplink network are
//! out of reach by construction; the ruleset says the same thing again, so that a
//! later link into the namespace (a NAT path, a public IP) opens nothing by accident:
//! - forward: only between the local subnet on the bridge and the rest of the
//!   network's range on the WireGuard device, both ways, and across the bridge
//!   itself (where `br_netfilter` is loaded, bridged frames pass this chain too,
//!   with the bridge as both devices);
//! - input: ICMP from the bridge and the tunnel (gateways answer ping), nothing else;
//! - output: the namespace itself talks only to its own network.
//!
//! ICMP is written as protocol 1: a name would make `nft` read `/etc/protocols`
//! through glibc's NSS, which the image does not carry.
//!
//! Everything else is rejected (`admin-prohibited`), so a blocked workload learns it
//! at once instead of timing out. The text replaces the table in one transaction
//! (`nft -f -` applies a file atomically), so re-applying it is safe at any time.

use cellos_ledger::network::NetworkSpec;

use crate::Names;

/// The name of the nftables table this crate owns in each namespace.
pub const TABLE: &str = "cellos";

/// The ruleset for one network, as `nft -f` reads it.
pub fn ruleset(names: &Names, spec: &NetworkSpec) -> String {
    let (br, wg) = (&names.bridge, &names.wireguard);
    let (subnet, range) = (spec.subnet, spec.ip_range);
    format!(
        r#"table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
	chain input {{
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		ct state invalid drop
		iifname "lo" accept
		iifname {{ "{br}", "{wg}" }} ip protocol 1 accept
		reject with icmpx type admin-prohibited
	}}
	chain forward {{
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		ct state invalid drop
		iifname "{br}" oifname "{br}" accept
		iifname "{br}" oifname "{wg}" ip saddr {subnet} ip daddr {range} accept
		iifname "{wg}" oifname "{br}" ip saddr {range} ip daddr {subnet} accept
		reject with icmpx type admin-prohibited
	}}
	chain output {{
		type filter hook output priority filter; policy drop;
		ct state established,related accept
		oifname "lo" accept
		oifname "{br}" ip daddr {subnet} accept
		oifname "{wg}" ip daddr {range} accept
		reject with icmpx type admin-prohibited
	}}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellos_ledger::network::{WgKey, WgSecret};

    #[test]
    fn ruleset_names_this_network_only() {
        let names = Names::for_key("c7-net");
        let spec = NetworkSpec {
            ip_range: "10.20.0.0/16".parse().expect("net"),
            subnet: "10.20.3.0/24".parse().expect("net"),
            private_key: WgSecret(WgKey([1; 32])),
            listen_port: 51820,
            peers: vec![],
        };
        let text = ruleset(&names, &spec);
        let (br, wg) = (&names.bridge, &names.wireguard);
        // The table is replaced whole, so applying it twice leaves one copy.
        assert!(text.starts_with("table inet cellos\ndelete table inet cellos\n"));
        for want in [
            format!(r#"iifname "{br}" oifname "{br}" accept"#),
            format!(
                r#"iifname "{br}" oifname "{wg}" ip saddr 10.20.3.0/24 ip daddr 10.20.0.0/16 accept"#
            ),
            format!(
                r#"iifname "{wg}" oifname "{br}" ip saddr 10.20.0.0/16 ip daddr 10.20.3.0/24 accept"#
            ),
            format!(r#"oifname "{wg}" ip daddr 10.20.0.0/16 accept"#),
        ] {
            assert!(text.contains(&want), "missing {want:?} in\n{text}");
        }
        // Every chain drops by default; the secret never appears.
        assert_eq!(text.matches("policy drop;").count(), 3);
        assert!(!text.contains(&spec.private_key.0.to_base64()));
    }
}
