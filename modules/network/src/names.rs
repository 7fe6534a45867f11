//! Kernel names for one network on one node, and for one workload attached to it.
//!
//! Linux interface names hold 15 bytes, and a workload's node name
//! (`c<contract>-<name>`) can be 80; so every kernel name is a prefix and the first
//! 10 hex digits (40 bits) of the BLAKE3 hash of the workload's node name. The same
//! workload always gets the same names (a restart finds what it made), and two
//! workloads collide only by chance (one in 2^40 per pair). The prefixes differ
//! between a network's names and an attachment's, so the two never clash.

/// The namespace, bridge and WireGuard device of one network on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The namespace, bind-mounted at `/run/netns/<netns>`: `n-<hash>`.
    pub netns: String,
    /// The bridge for local workloads, inside the namespace: `b-<hash>`.
    pub bridge: String,
    /// The WireGuard device, inside the namespace: `w-<hash>`.
    pub wireguard: String,
}

/// Hex digits of the hash in each name.
const HASH_DIGITS: usize = 10;

/// The first [`HASH_DIGITS`] hex digits of the BLAKE3 hash of `key`.
fn short_hash(key: &str) -> String {
    blake3::hash(key.as_bytes()).to_hex()[..HASH_DIGITS].to_string()
}

impl Names {
    /// The names for the workload whose node-unique name is `key`.
    pub fn for_key(key: &str) -> Names {
        let short = short_hash(key);
        Names {
            netns: format!("n-{short}"),
            bridge: format!("b-{short}"),
            wireguard: format!("w-{short}"),
        }
    }
}

/// The namespace and bridge port of one workload (a container) on a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadNames {
    /// The workload's own namespace, bind-mounted at `/run/netns/<netns>`:
    /// `c-<hash>`.
    pub netns: String,
    /// The workload's veth end inside the network's namespace, a port of its
    /// bridge: `v-<hash>`.
    pub port: String,
    /// A VM's tap device, inside the network's namespace, a port of its bridge:
    /// `t-<hash>`.
    pub tap: String,
}

impl WorkloadNames {
    /// The names for the workload whose node-unique name is `key`.
    pub fn for_key(key: &str) -> WorkloadNames {
        let short = short_hash(key);
        WorkloadNames {
            netns: format!("c-{short}"),
            port: format!("v-{short}"),
            tap: format!("t-{short}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_are_stable_and_distinct() {
        let long = format!("c{}-{}", u64::MAX, "a".repeat(63));
        let n = Names::for_key(&long);
        for name in [&n.netns, &n.bridge, &n.wireguard] {
            assert!(name.len() <= 15, "{name} is too long for an interface");
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        }
        assert_eq!(n, Names::for_key(&long));
        assert_ne!(n, Names::for_key("c1-net"));
        assert_ne!(Names::for_key("c1-net"), Names::for_key("c2-net"));
        // Pinned: a change of scheme would orphan the networks of a running node.
        assert_eq!(
            Names::for_key("c1-net").netns,
            "n-".to_string() + &blake3::hash(b"c1-net").to_hex()[..10]
        );
        assert_eq!(&n.bridge[2..], &n.netns[2..]);
        assert_eq!(&n.wireguard[2..], &n.netns[2..]);
    }

    #[test]
    fn workload_names_fit_and_never_clash_with_a_network_of_the_same_key() {
        let long = format!("c{}-{}", u64::MAX, "a".repeat(63));
        let w = WorkloadNames::for_key(&long);
        for name in [&w.netns, &w.port] {
            assert!(name.len() <= 15, "{name} is too long for an interface");
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        }
        assert_eq!(w, WorkloadNames::for_key(&long));
        assert_ne!(w, WorkloadNames::for_key("c1-web"));
        // Pinned like the network's names, with the same hash.
        assert_eq!(
            WorkloadNames::for_key("c1-web").netns,
            "c-".to_string() + &blake3::hash(b"c1-web").to_hex()[..10]
        );
        assert_eq!(&w.port[2..], &w.netns[2..]);
        let n = Names::for_key(&long);
        for name in [&w.netns, &w.port] {
            assert!(![&n.netns, &n.bridge, &n.wireguard].contains(&name));
        }
    }
}
