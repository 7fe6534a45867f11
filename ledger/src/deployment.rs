//! Deployments (DESIGN §4): what a user asks a node to run, signed by the user.
//!
//! A deployment is {owner, version, metadata, workloads} plus the owner's signature.
//! Its hash, which the contract names, is BLAKE3 over a domain tag and the postcard
//! encoding of everything but the signature, so the node can check that the body it
//! received is exactly the one the owner reserved capacity for, and that the owner
//! signed it. Deployments travel to the node sealed (an X25519 sealed box) to the
//! node's encryption key through the ledger's blob mailbox; results come back sealed
//! to the owner's key the same way.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ed25519_dalek::{Signer as _, SigningKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::container::ContainerSpec;
use crate::network::NetworkSpec;
use crate::tx::{encode, verify_sig};
use crate::types::*;
use crate::vm::VmSpec;

const DEPLOYMENT_DOMAIN: &[u8] = b"cellos-deployment-v1\0";
const MAX_WORKLOADS: usize = 64;
const MAX_VOLUME: u64 = 64 << 40;

/// A size in bytes that people may write as `"10G"` (binary units) in TOML or JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("bad size {s:?}: expected a number with an optional unit (K, M, G, T)")
        })?;
        let shift = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "M" | "MB" | "MIB" => 20,
            "G" | "GB" | "GIB" => 30,
            "T" | "TB" | "TIB" => 40,
            _ => {
                return Err(format!(
                    "bad size {s:?}: unknown unit {unit:?} (use K, M, G or T)"
                ))
            }
        };
        n.checked_mul(1u64 << shift)
            .map(Size)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            #[derive(Deserialize)]
            #[serde(untagged)]
            enum Either {
                N(u64),
                S(String),
            }
            match Either::deserialize(d)? {
                Either::N(n) => Ok(Size(n)),
                Either::S(s) => Size::parse(&s).map_err(serde::de::Error::custom),
            }
        } else {
            u64::deserialize(d).map(Size)
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`: tables align sizes with `{:<9}`.
        f.pad(&human_bytes(self.0))
    }
}

/// One thing to run. Names are unique within a deployment; they are how results and
/// updates refer to workloads. In TOML: `name = "data"` and `spec.volume.size = "2G"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub spec: WorkloadSpec,
}

/// The workload types a node knows. Containers, VMs, networks and shards join here
/// as the node learns to run them. (Externally tagged: the one encoding that both
/// rejects unknown fields in JSON/TOML and has a canonical binary form.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkloadSpec {
    /// A btrfs subvolume with a quota on the node's SSD pool.
    Volume { size: Size },
    /// A namespace on the node's shard server (RESP), on its HDD pool.
    Shard {
        size: Size,
        #[serde(default)]
        mode: ShardMode,
        /// Clients must `SELECT <namespace> <password>`.
        #[serde(default)]
        password: Option<String>,
    },
    /// This node's part of a tenant network (a WireGuard overlay); the workload's
    /// name is the network's name, which containers and VMs of the same deployment
    /// will name to attach to it ([`Deployment::network`]).
    Network(NetworkSpec),
    /// An OCI image run under the node's container runtime, on a network workload
    /// of the same deployment ([`crate::container`]).
    Container(ContainerSpec),
    /// A virtual machine under the node's QEMU, on a network workload of the same
    /// deployment ([`crate::vm`]).
    Vm(VmSpec),
}

/// How a shard namespace names its values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardMode {
    /// Keys are the client's.
    #[default]
    User,
    /// The server assigns sequential keys (what an erasure-coded store wants).
    Seq,
}

impl WorkloadSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            WorkloadSpec::Volume { .. } => "volume",
            WorkloadSpec::Shard { .. } => "shard",
            WorkloadSpec::Network(_) => "network",
            WorkloadSpec::Container(_) => "container",
            WorkloadSpec::Vm(_) => "vm",
        }
    }

    /// The network and address of a workload that sits on a tenant network.
    pub fn address(&self) -> Option<(&str, Ipv4Addr)> {
        match self {
            WorkloadSpec::Container(c) => Some((&c.network, c.ip)),
            WorkloadSpec::Vm(v) => Some((&v.network, v.ip)),
            _ => None,
        }
    }

    /// What the workload needs reserved on the node.
    pub fn resources(&self) -> Resources {
        match self {
            WorkloadSpec::Volume { size } => Resources {
                sru: size.0,
                ..Default::default()
            },
            WorkloadSpec::Shard { size, .. } => Resources {
                hru: size.0,
                ..Default::default()
            },
            // Traffic is billed by use (`nu_bytes`). What is reserved is the
            // memory a network holds in the node's kernel (namespace, bridge,
            // WireGuard device and its peers, conntrack): small, but not nothing,
            // and it keeps a network-only contract from being free to hold.
            WorkloadSpec::Network(_) => Resources {
                mru: crate::network::NETWORK_MRU,
                ..Default::default()
            },
            WorkloadSpec::Container(c) => Resources {
                cru: u64::from(c.cpu),
                mru: c.memory.0,
                ..Default::default()
            },
            // The root disk lives on the SSD pool; volumes it attaches are
            // reserved by their own workloads.
            WorkloadSpec::Vm(v) => Resources {
                cru: u64::from(v.cpu),
                mru: v.memory.0,
                sru: v.disk_size(),
                ..Default::default()
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub owner: PublicKey,
    pub version: u32,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub workloads: Vec<Workload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    #[error("the deployment has no workloads")]
    Empty,
    #[error("the deployment has {0} workloads; at most {MAX_WORKLOADS} are allowed")]
    TooMany(usize),
    #[error("workload name {0:?} is not valid: 1 to 63 characters of a-z, 0-9 and '-', starting with a letter")]
    BadName(String),
    #[error("workload name {0:?} is used twice")]
    Duplicate(String),
    #[error("workload {name:?}: {reason}")]
    BadWorkload { name: String, reason: String },
    #[error("version must be 1 or more")]
    BadVersion,
    #[error("the deployment is not signed")]
    Unsigned,
    #[error("the deployment's signature does not verify for owner {0}")]
    BadSignature(PublicKey),
    #[error("metadata is too large ({0} bytes; at most 4096)")]
    MetadataTooLarge(usize),
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl Deployment {
    /// The hash a contract names: over everything but the signature.
    pub fn hash(&self) -> Hash {
        let unsigned = Deployment {
            signature: None,
            ..self.clone()
        };
        Hash::of(&encode(DEPLOYMENT_DOMAIN, &unsigned))
    }

    /// Checks the deployment's shape: names, sizes, counts.
    pub fn validate(&self) -> Result<(), DeploymentError> {
        if self.version == 0 {
            return Err(DeploymentError::BadVersion);
        }
        if self.workloads.is_empty() {
            return Err(DeploymentError::Empty);
        }
        if self.workloads.len() > MAX_WORKLOADS {
            return Err(DeploymentError::TooMany(self.workloads.len()));
        }
        let meta: usize = self.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if meta > 4096 {
            return Err(DeploymentError::MetadataTooLarge(meta));
        }
        let mut seen = std::collections::BTreeSet::new();
        for w in &self.workloads {
            if !valid_name(&w.name) {
                return Err(DeploymentError::BadName(w.name.clone()));
            }
            if !seen.insert(&w.name) {
                return Err(DeploymentError::Duplicate(w.name.clone()));
            }
            let bad = |reason: String| DeploymentError::BadWorkload {
                name: w.name.clone(),
                reason,
            };
            match &w.spec {
                WorkloadSpec::Volume { size } | WorkloadSpec::Shard { size, .. } => {
                    if size.0 < (1 << 20) || size.0 > MAX_VOLUME {
                        return Err(bad(format!(
                            "{} size {size} is outside 1MiB..64TiB",
                            w.spec.kind()
                        )));
                    }
                }
                WorkloadSpec::Network(n) => n.check().map_err(bad)?,
                WorkloadSpec::Container(c) => {
                    c.check().map_err(bad)?;
                    self.check_address(&c.network, c.ip).map_err(bad)?;
                    for m in &c.mounts {
                        self.check_volume(&m.volume)
                            .map_err(|e| bad(format!("mount {}: {e}", m.path)))?;
                    }
                }
                WorkloadSpec::Vm(v) => {
                    v.check().map_err(bad)?;
                    self.check_address(&v.network, v.ip).map_err(bad)?;
                    for (i, d) in v.disks.iter().enumerate() {
                        self.check_volume(d)
                            .map_err(|e| bad(format!("disks[{i}]: {e}")))?;
                    }
                }
            }
            if let WorkloadSpec::Shard { password, .. } = &w.spec {
                // A node's shard server takes writes only into namespaces with a
                // password and a quota (DESIGN §9): without one the shard is useless.
                let Some(p) = password else {
                    return Err(bad(
                        "a shard needs a password: the node takes writes only into namespaces with one".into(),
                    ));
                };
                // `*` is how shardd spells "no password": never a password.
                if p.is_empty()
                    || p == "*"
                    || p.len() > 128
                    || p.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(bad(
                        "shard password must be 1 to 128 characters without spaces".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A container's or VM's place on a network of this deployment: the network
    /// exists, and `ip` is a host address of its subnet (not the network's own,
    /// gateway or broadcast address) that no other workload has.
    fn check_address(&self, network: &str, ip: Ipv4Addr) -> Result<(), String> {
        let net = self.network(network).ok_or_else(|| {
            format!("network {network:?} is not a network workload of this deployment")
        })?;
        let subnet = net.subnet;
        if !subnet.contains(&ip)
            || ip == subnet.network()
            || ip == subnet.broadcast()
            || ip == net.gateway()
        {
            return Err(format!(
                "ip {ip} must be a host address of subnet {subnet} other than the gateway {}",
                net.gateway()
            ));
        }
        let same_ip = self
            .workloads
            .iter()
            .filter(|w| w.spec.address() == Some((network, ip)))
            .count();
        if same_ip > 1 {
            return Err(format!("ip {ip} is given to {same_ip} workloads"));
        }
        Ok(())
    }

    /// `name` is a volume workload of this deployment.
    fn check_volume(&self, name: &str) -> Result<(), String> {
        let volume = self
            .workloads
            .iter()
            .any(|w| w.name == name && matches!(w.spec, WorkloadSpec::Volume { .. }));
        if volume {
            Ok(())
        } else {
            Err(format!(
                "{name:?} is not a volume workload of this deployment"
            ))
        }
    }

    /// The network workload called `name`, for the workloads that attach to it.
    pub fn network(&self, name: &str) -> Option<&NetworkSpec> {
        self.workloads.iter().find_map(|w| match &w.spec {
            WorkloadSpec::Network(n) if w.name == name => Some(n),
            _ => None,
        })
    }

    /// Everything the workloads need, summed.
    pub fn resources(&self) -> Resources {
        self.workloads.iter().fold(Resources::default(), |acc, w| {
            acc.checked_add(&w.spec.resources()).unwrap_or(Resources {
                cru: u64::MAX,
                mru: u64::MAX,
                sru: u64::MAX,
                hru: u64::MAX,
            })
        })
    }

    /// Sets the owner to `key`'s public key and signs.
    pub fn sign(&mut self, key: &SigningKey) {
        self.owner = PublicKey(key.verifying_key().to_bytes());
        let h = self.hash();
        self.signature = Some(Signature(key.sign(&h.0).to_bytes()));
    }

    /// Checks the owner's signature over the hash.
    pub fn verify(&self) -> Result<(), DeploymentError> {
        let sig = self.signature.as_ref().ok_or(DeploymentError::Unsigned)?;
        verify_sig(&self.owner, &self.hash().0, sig)
            .map_err(|_| DeploymentError::BadSignature(self.owner))
    }
}

/// What the node tells the owner about one workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadResult {
    pub name: String,
    pub kind: String,
    pub state: WorkloadState,
    #[serde(default)]
    pub message: String,
    /// Addresses, paths, ports: whatever the workload type reports.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadState {
    Ok,
    Error,
    Deleted,
}

/// The node's answer for a whole deployment, sealed to the owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentResult {
    pub contract: ContractId,
    pub node: NodeId,
    pub deployment_hash: Hash,
    pub accepted: bool,
    #[serde(default)]
    pub error: Option<String>,
    pub workloads: Vec<WorkloadResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("cannot seal: {0}")]
    Seal(String),
    #[error("the box is not sealed to this key, or it was altered")]
    Open,
}

/// Seals `plain` to an X25519 key (libsodium sealed box): only that key's holder can
/// open it, and nobody can tell who sealed it.
pub fn seal(plain: &[u8], to: &EncryptionKey) -> Result<Vec<u8>, SealError> {
    let pk = crypto_box::PublicKey::from(to.0);
    pk.seal(&mut rand::rngs::OsRng, plain)
        .map_err(|e| SealError::Seal(e.to_string()))
}

/// Opens a sealed box addressed to the X25519 key derived from `key`.
pub fn open(sealed: &[u8], key: &SigningKey) -> Result<Vec<u8>, SealError> {
    let sk = crypto_box::SecretKey::from_bytes(key.to_scalar_bytes());
    sk.unseal(sealed).map_err(|_| SealError::Open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;

    fn sample() -> Deployment {
        let text = r#"
            version = 1
            owner = "0000000000000000000000000000000000000000000000000000000000000000"
            [metadata]
            project = "demo"
            [[workloads]]
            name = "data"
            spec.volume.size = "2G"
        "#;
        toml::from_str(text).expect("toml")
    }

    #[test]
    fn toml_and_json_agree_and_hash_ignores_the_signature() {
        let mut d = sample();
        assert_eq!(
            d.workloads[0].spec,
            WorkloadSpec::Volume {
                size: Size(2 << 30)
            }
        );
        assert_eq!(d.resources().sru, 2 << 30);
        let k = keys::generate();
        d.sign(&k);
        assert!(d.verify().is_ok());
        let json = serde_json::to_string(&d).expect("json");
        let back: Deployment = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, d);
        assert_eq!(back.hash(), d.hash());
        let mut unsigned = d.clone();
        unsigned.signature = None;
        assert_eq!(unsigned.hash(), d.hash());
        assert_eq!(unsigned.verify(), Err(DeploymentError::Unsigned));
    }

    #[test]
    fn any_change_breaks_hash_and_signature() {
        let k = keys::generate();
        let mut d = sample();
        d.sign(&k);
        let h = d.hash();
        let mut bigger = d.clone();
        bigger.workloads[0].spec = WorkloadSpec::Volume {
            size: Size(3 << 30),
        };
        assert_ne!(bigger.hash(), h);
        assert_eq!(bigger.verify(), Err(DeploymentError::BadSignature(d.owner)));
        let mut other_owner = d.clone();
        other_owner.owner = keys::public_key(&keys::generate());
        assert!(other_owner.verify().is_err());
        let mut meta = d;
        meta.metadata.insert("x".into(), "y".into());
        assert_ne!(meta.hash(), h);
    }

    #[test]
    fn validation() {
        let mut d = sample();
        assert!(d.validate().is_ok());
        d.workloads.push(d.workloads[0].clone());
        assert_eq!(d.validate(), Err(DeploymentError::Duplicate("data".into())));
        d.workloads[1].name = "Bad Name".into();
        assert!(matches!(d.validate(), Err(DeploymentError::BadName(_))));
        d.workloads[1] = Workload {
            name: "tiny".into(),
            spec: WorkloadSpec::Volume { size: Size(10) },
        };
        assert!(matches!(
            d.validate(),
            Err(DeploymentError::BadWorkload { .. })
        ));
        d.workloads.clear();
        assert_eq!(d.validate(), Err(DeploymentError::Empty));
        let bad = toml::from_str::<Deployment>("version = 1\nowner = \"00\"\nworkloads = []");
        assert!(bad.is_err());
        let unknown = r#"
            version = 1
            owner = "0000000000000000000000000000000000000000000000000000000000000000"
            [[workloads]]
            name = "web"
            spec.gpu.image = "debian"
        "#;
        let err = toml::from_str::<Deployment>(unknown).expect_err("unknown type");
        assert!(err.to_string().contains("unknown variant `gpu`"), "{err}");
    }

    #[test]
    fn shard_workloads() {
        let text = r#"
            version = 1
            owner = "0000000000000000000000000000000000000000000000000000000000000000"
            [[workloads]]
            name = "backup"
            spec.shard = { size = "4G", mode = "seq", password = "s3cret" }
            [[workloads]]
            name = "plain"
            spec.shard.size = "1G"
        "#;
        let mut d: Deployment = toml::from_str(text).expect("toml");
        assert!(
            matches!(d.validate(), Err(DeploymentError::BadWorkload { .. })),
            "a shard without a password"
        );
        assert_eq!(
            d.workloads[0].spec,
            WorkloadSpec::Shard {
                size: Size(4 << 30),
                mode: ShardMode::Seq,
                password: Some("s3cret".into())
            }
        );
        assert_eq!(
            d.workloads[1].spec,
            WorkloadSpec::Shard {
                size: Size(1 << 30),
                mode: ShardMode::User,
                password: None
            }
        );
        assert_eq!(
            d.resources(),
            Resources {
                hru: 5 << 30,
                ..Default::default()
            }
        );
        d.workloads[1].spec = WorkloadSpec::Shard {
            size: Size(1 << 30),
            mode: ShardMode::User,
            password: Some("p".into()),
        };
        assert!(d.validate().is_ok());
        let mut bad = d.clone();
        for pw in ["has space", "*", ""] {
            bad.workloads[0].spec = WorkloadSpec::Shard {
                size: Size(1 << 30),
                mode: ShardMode::User,
                password: Some(pw.into()),
            };
            assert!(
                matches!(bad.validate(), Err(DeploymentError::BadWorkload { .. })),
                "{pw:?}"
            );
        }
    }

    /// A deployment's head and a network workload `net` (10.20.3.0/24 of 10.20.0.0/16),
    /// for tests to add peers or workloads to.
    const NET_DEPLOYMENT: &str = r#"
            version = 1
            owner = "0000000000000000000000000000000000000000000000000000000000000000"
            [[workloads]]
            name = "net"
            spec.network.ip_range = "10.20.0.0/16"
            spec.network.subnet = "10.20.3.0/24"
            spec.network.private_key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
            spec.network.listen_port = 51820
"#;

    #[test]
    fn network_workloads() {
        let text = &format!(
            "{NET_DEPLOYMENT}{}",
            r#"
            [[workloads.spec.network.peers]]
            public_key = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
            endpoint = "192.168.77.12:51820"
            allowed_subnets = ["10.20.5.0/24"]
        "#
        );
        let mut d: Deployment = toml::from_str(text).expect("toml");
        assert_eq!(d.validate(), Ok(()));
        let n = d.network("net").expect("the network");
        assert_eq!(n.subnet.to_string(), "10.20.3.0/24");
        assert_eq!(n.peers[0].public_key.0, [2; 32]);
        assert_eq!(
            d.resources(),
            Resources {
                mru: crate::network::NETWORK_MRU,
                ..Default::default()
            }
        );
        assert!(d.network("other").is_none());
        let json = serde_json::to_string(&d).expect("json");
        let back: Deployment = serde_json::from_str(&json).expect("parse");
        assert_eq!((back.hash(), &back), (d.hash(), &d));

        // A bad field is rejected with the workload's name and the field.
        if let WorkloadSpec::Network(n) = &mut d.workloads[0].spec {
            n.subnet = "10.21.3.0/24".parse().expect("net");
        }
        let err = d.validate().expect_err("outside").to_string();
        assert!(
            err.contains("\"net\"") && err.contains("subnet 10.21.3.0/24 is outside"),
            "{err}"
        );
        // A key that is not 32 bytes of base64 does not even parse.
        let short = text.replace("AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=", "AgIC");
        let err = toml::from_str::<Deployment>(&short)
            .expect_err("short key")
            .to_string();
        assert!(err.contains("32 bytes of base64; this is 3 bytes"), "{err}");
        let unknown = text.replace("listen_port", "port");
        assert!(toml::from_str::<Deployment>(&unknown).is_err());
    }

    #[test]
    fn container_workloads_name_their_network_address_and_volumes() {
        let text = &format!(
            "{NET_DEPLOYMENT}{}",
            r#"
            [[workloads]]
            name = "data"
            spec.volume.size = "1G"
            [[workloads]]
            name = "web"
            [workloads.spec.container]
            image = "10.0.2.2:5000/web:1"
            cmd = ["/bin/httpd", "-f"]
            cpu = 2
            memory = "256M"
            network = "net"
            ip = "10.20.3.10"
            mounts = [{ volume = "data", path = "/srv" }]
        "#
        );
        let d: Deployment = toml::from_str(text).expect("toml");
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(
            d.resources(),
            Resources {
                cru: 2,
                mru: (256 << 20) + crate::network::NETWORK_MRU,
                sru: 1 << 30,
                ..Default::default()
            }
        );
        let json = serde_json::to_string(&d).expect("json");
        let back: Deployment = serde_json::from_str(&json).expect("parse");
        assert_eq!((back.hash(), &back), (d.hash(), &d));

        let refused = |from: &str, to: &str, why: &str| {
            let bad: Deployment = toml::from_str(&text.replace(from, to)).expect("toml");
            let err = bad.validate().expect_err(why).to_string();
            assert!(err.contains("\"web\"") && err.contains(why), "{to}: {err}");
        };
        refused(
            "network = \"net\"",
            "network = \"nope\"",
            "is not a network workload",
        );
        refused(
            "ip = \"10.20.3.10\"",
            "ip = \"10.20.4.10\"",
            "must be a host address",
        );
        refused(
            "ip = \"10.20.3.10\"",
            "ip = \"10.20.3.1\"",
            "other than the gateway",
        );
        refused(
            "ip = \"10.20.3.10\"",
            "ip = \"10.20.3.255\"",
            "must be a host address",
        );
        refused(
            "volume = \"data\"",
            "volume = \"net\"",
            "is not a volume workload",
        );
        refused("cpu = 2", "cpu = 0", "cpu 0");

        let mut twin = d.clone();
        let mut second = twin.workloads[2].clone();
        second.name = "web2".into();
        twin.workloads.push(second);
        let err = twin.validate().expect_err("same ip").to_string();
        assert!(err.contains("given to 2 workloads"), "{err}");
    }

    #[test]
    fn vm_workloads() {
        let text = &format!(
            "{NET_DEPLOYMENT}{}",
            r#"
            [[workloads]]
            name = "data"
            spec.volume.size = "1G"
            [[workloads]]
            name = "web"
            [workloads.spec.container]
            image = "10.0.2.2:5000/web:1"
            cpu = 1
            memory = "64M"
            network = "net"
            ip = "10.20.3.10"
            [[workloads]]
            name = "box"
            [workloads.spec.vm]
            cpu = 2
            memory = "256M"
            network = "net"
            ip = "10.20.3.11"
            disks = ["data"]
            [workloads.spec.vm.disk]
            url = "https://example.org/root.img"
            sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            size = "4G"
        "#
        );
        let d: Deployment = toml::from_str(text).expect("toml");
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(
            d.resources(),
            Resources {
                cru: 3,
                mru: crate::network::NETWORK_MRU + (64 << 20) + (256 << 20),
                sru: (1 << 30) + (4 << 30),
                hru: 0,
            }
        );
        let refused = |from: &str, to: &str, why: &str| {
            let bad: Deployment = toml::from_str(&text.replace(from, to)).expect("toml");
            let err = bad.validate().expect_err(why).to_string();
            assert!(err.contains(why), "{to}: {err}");
        };
        // The VM may not take the container's address, nor the gateway.
        refused(
            "ip = \"10.20.3.11\"",
            "ip = \"10.20.3.10\"",
            "given to 2 workloads",
        );
        refused(
            "ip = \"10.20.3.11\"",
            "ip = \"10.20.3.1\"",
            "\"box\": ip 10.20.3.1 must be",
        );
        refused(
            "disks = [\"data\"]",
            "disks = [\"web\"]",
            "workload \"box\": disks[0]: \"web\" is not a volume",
        );
        refused(
            "network = \"net\"\n            ip = \"10.20.3.11\"",
            "network = \"web\"\n            ip = \"10.20.3.11\"",
            "is not a network workload",
        );
    }

    #[test]
    fn sealed_boxes_open_only_for_their_key() {
        let node = keys::generate();
        let other = keys::generate();
        let sealed = seal(b"secret deployment", &keys::encryption_key(&node)).expect("seal");
        assert_eq!(open(&sealed, &node).expect("open"), b"secret deployment");
        assert_eq!(open(&sealed, &other), Err(SealError::Open));
        let mut tampered = sealed;
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(open(&tampered, &node), Err(SealError::Open));
        assert_eq!(open(b"short", &node), Err(SealError::Open));
    }
}
