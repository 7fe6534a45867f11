//! The `network` workload (DESIGN §4): one node's share of a tenant's private network.
//!
//! A tenant network is an IPv4 /16 (`ip_range`) split into one /24 per node
//! (`subnet`); the nodes join their subnets with WireGuard. Each node's deployment
//! carries its own WireGuard private key and listen port and the full list of its
//! peers (their public keys, where to reach them, and which subnets live behind
//! them), so a node never needs to ask anyone for configuration. `cellos network
//! plan` writes these for every node of a network.
//!
//! The types hold their invariants once: a key is 32 bytes (base64 in TOML and JSON,
//! raw in the signed encoding), a network is a CIDR with no host bits. The private
//! key is a secret: [`WgSecret`] never prints its bytes.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use ipnet::Ipv4Net;

/// Memory a network workload reserves on its node (16 MiB): the kernel's share of a
/// namespace, a bridge, a WireGuard device with up to [`MAX_PEERS`] peers, and
/// connection tracking.
pub const NETWORK_MRU: u64 = 16 << 20;
/// At most this many peers per network and node: a /16 holds 256 /24s.
pub const MAX_PEERS: usize = 256;
/// At most this many allowed subnets per peer.
pub const MAX_PEER_SUBNETS: usize = 16;

/// A WireGuard public key: 32 bytes, written as base64 (what `wg pubkey` prints).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WgKey(pub [u8; 32]);

impl WgKey {
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({self})")
    }
}

/// Why a WireGuard key does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a WireGuard key is base64; this is not base64")]
    NotBase64,
    #[error("a WireGuard key is 32 bytes of base64; this is {0} bytes")]
    Length(usize),
}

impl FromStr for WgKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| KeyError::NotBase64)?;
        let len = bytes.len();
        bytes
            .try_into()
            .map(WgKey)
            .map_err(|_| KeyError::Length(len))
    }
}

impl Serialize for WgKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_base64())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for WgKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(d).map(WgKey)
        }
    }
}

/// A WireGuard private key. It travels inside the sealed deployment and is given to
/// the kernel; it is never printed: `Debug` shows only that it is there.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WgSecret(pub WgKey);

impl WgSecret {
    /// The raw key, for the WireGuard device.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0 .0
    }
}

impl fmt::Debug for WgSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WgSecret(<redacted>)")
    }
}

/// One node's part of a tenant network. In TOML:
/// ```toml
/// [[workloads]]
/// name = "net"
/// spec.network.ip_range = "10.20.0.0/16"
/// spec.network.subnet = "10.20.3.0/24"
/// spec.network.private_key = "<base64>"
/// spec.network.listen_port = 51820
/// [[workloads.spec.network.peers]]
/// public_key = "<base64>"
/// endpoint = "192.168.77.12:51820"
/// allowed_subnets = ["10.20.5.0/24"]
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// The tenant's whole network, a /16.
    pub ip_range: Ipv4Net,
    /// This node's /24 inside `ip_range`; its `.1` is the local workloads' gateway.
    pub subnet: Ipv4Net,
    /// This node's WireGuard private key for this network.
    pub private_key: WgSecret,
    /// The UDP port WireGuard listens on, on the node's uplink.
    pub listen_port: u16,
    #[serde(default)]
    pub peers: Vec<NetworkPeer>,
}

/// Another node of the same network, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPeer {
    pub public_key: WgKey,
    /// Where the peer listens (`ip:port`); without one, this node waits for the
    /// peer to reach it first.
    #[serde(default)]
    pub endpoint: Option<SocketAddr>,
    /// The subnets that live behind the peer (its /24, usually).
    pub allowed_subnets: Vec<Ipv4Net>,
}

impl NetworkSpec {
    /// The gateway of the node's subnet: its first address (`.1`).
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(u32::from(self.subnet.network()).saturating_add(1))
    }

    /// Checks what the types cannot: prefix lengths, containment, ports, duplicate
    /// and overlapping peers, list sizes. The error names the field.
    pub fn check(&self) -> Result<(), String> {
        let canonical = |field: &str, n: &Ipv4Net| {
            if n.trunc() != *n {
                Err(format!(
                    "{field} {n} has host bits set (did you mean {}?)",
                    n.trunc()
                ))
            } else {
                Ok(())
            }
        };
        canonical("ip_range", &self.ip_range)?;
        canonical("subnet", &self.subnet)?;
        if self.ip_range.prefix_len() != 16 {
            return Err(format!("ip_range {} must be a /16", self.ip_range));
        }
        if self.subnet.prefix_len() != 24 {
            return Err(format!("subnet {} must be a /24", self.subnet));
        }
        if !self.ip_range.contains(&self.subnet) {
            return Err(format!(
                "subnet {} is outside ip_range {}",
                self.subnet, self.ip_range
            ));
        }
        if self.listen_port == 0 {
            return Err("listen_port must not be 0".into());
        }
        if self.private_key.0 .0 == [0; 32] {
            return Err("private_key must not be all zeros".into());
        }
        if self.peers.len() > MAX_PEERS {
            return Err(format!(
                "{} peers; at most {MAX_PEERS} are allowed",
                self.peers.len()
            ));
        }
        let mut keys = BTreeSet::new();
        // Every subnet is routed to exactly one place: this node or one peer.
        let mut taken = vec![self.subnet];
        for (i, p) in self.peers.iter().enumerate() {
            let at = format!("peers[{i}]");
            if !keys.insert(p.public_key) {
                return Err(format!("{at}: public_key {} is listed twice", p.public_key));
            }
            if p.public_key.0 == [0; 32] {
                return Err(format!("{at}: public_key must not be all zeros"));
            }
            if let Some(e) = p.endpoint {
                if e.port() == 0 || e.ip().is_unspecified() {
                    return Err(format!("{at}: endpoint {e} needs an address and a port"));
                }
            }
            if p.allowed_subnets.is_empty() || p.allowed_subnets.len() > MAX_PEER_SUBNETS {
                return Err(format!(
                    "{at}: allowed_subnets must list 1 to {MAX_PEER_SUBNETS} subnets"
                ));
            }
            for n in &p.allowed_subnets {
                canonical(&format!("{at}: allowed subnet"), n)?;
                if !self.ip_range.contains(n) {
                    return Err(format!(
                        "{at}: allowed subnet {n} is outside ip_range {}",
                        self.ip_range
                    ));
                }
                if let Some(t) = taken.iter().find(|t| t.contains(n) || n.contains(*t)) {
                    return Err(format!(
                        "{at}: allowed subnet {n} overlaps {t}, which is routed elsewhere"
                    ));
                }
                taken.push(*n);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> WgKey {
        WgKey([b; 32])
    }

    fn spec() -> NetworkSpec {
        NetworkSpec {
            ip_range: "10.20.0.0/16".parse().expect("net"),
            subnet: "10.20.3.0/24".parse().expect("net"),
            private_key: WgSecret(key(1)),
            listen_port: 51820,
            peers: vec![NetworkPeer {
                public_key: key(2),
                endpoint: Some("192.168.77.12:51820".parse().expect("addr")),
                allowed_subnets: vec!["10.20.5.0/24".parse().expect("net")],
            }],
        }
    }

    #[test]
    fn keys_are_32_bytes_of_base64() {
        let k = key(7);
        assert_eq!(k.to_base64().parse::<WgKey>(), Ok(k));
        assert_eq!("not base64!".parse::<WgKey>(), Err(KeyError::NotBase64));
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 31]);
        assert_eq!(short.parse::<WgKey>(), Err(KeyError::Length(31)));
        // The signed encoding carries the raw bytes; JSON the base64 text.
        let json = serde_json::to_string(&k).expect("json");
        assert_eq!(json, format!("\"{k}\""));
        let bin = postcard::to_stdvec(&k).expect("postcard");
        assert_eq!(bin.len(), 32);
        assert_eq!(postcard::from_bytes::<WgKey>(&bin).expect("back"), k);
    }

    #[test]
    fn the_private_key_never_prints() {
        let s = spec();
        let secret = s.private_key.0.to_base64();
        let shown = format!("{s:?} {:#?}", s);
        assert!(!shown.contains(&secret), "{shown}");
        assert!(!shown.contains("[1, 1, 1"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn check_names_the_field() {
        assert_eq!(spec().check(), Ok(()));
        assert_eq!(spec().gateway().to_string(), "10.20.3.1");
        type Change = fn(&mut NetworkSpec);
        let cases: Vec<(Change, &str)> = vec![
            (
                |s| s.subnet = "10.21.3.0/24".parse().expect("n"),
                "outside ip_range",
            ),
            (
                |s| s.subnet = "10.20.3.0/25".parse().expect("n"),
                "must be a /24",
            ),
            (
                |s| s.ip_range = "10.20.0.0/15".parse().expect("n"),
                "must be a /16",
            ),
            (
                |s| s.ip_range = "10.20.1.0/16".parse().expect("n"),
                "host bits",
            ),
            (|s| s.listen_port = 0, "listen_port"),
            (|s| s.private_key = WgSecret(key(0)), "private_key"),
            (|s| s.peers.push(s.peers[0].clone()), "peers[1]: public_key"),
            (|s| s.peers[0].public_key = key(0), "peers[0]: public_key"),
            (
                |s| s.peers[0].endpoint = Some("1.2.3.4:0".parse().expect("a")),
                "peers[0]: endpoint",
            ),
            (
                |s| s.peers[0].allowed_subnets.clear(),
                "peers[0]: allowed_subnets",
            ),
            (
                |s| s.peers[0].allowed_subnets = vec!["10.30.5.0/24".parse().expect("n")],
                "peers[0]: allowed subnet 10.30.5.0/24 is outside",
            ),
            (
                |s| s.peers[0].allowed_subnets = vec!["10.20.0.0/22".parse().expect("n")],
                "overlaps 10.20.3.0/24",
            ),
            (
                |s| {
                    let mut p = s.peers[0].clone();
                    p.public_key = key(3);
                    s.peers.push(p)
                },
                "peers[1]: allowed subnet 10.20.5.0/24 overlaps",
            ),
            (
                |s| s.peers = vec![s.peers[0].clone(); MAX_PEERS + 1],
                "at most",
            ),
        ];
        for (change, want) in cases {
            let mut s = spec();
            change(&mut s);
            let err = s.check().expect_err(want);
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
    }
}
