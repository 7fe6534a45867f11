//! The ledger's data model (DESIGN §3): accounts, farms, nodes, contracts and the
//! value types they are made of.
//!
//! Every type here is part of both encodings the ledger uses: JSON on the wire (keys
//! and hashes as lowercase hex, unknown fields rejected) and postcard for signing,
//! hashing and storage. Only ordered collections are used so the binary encoding of a
//! value is always the same bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Units of the ledger's currency are plain integers; there are no fractions.
pub type Amount = u64;

/// The least an account holds (README, "Accounts"). An account exists once a
/// transfer (or, on a dev ledger, a faucet) of at least this much reaches its key,
/// and its own spending never takes it below this: every account on the ledger has
/// cost someone this much, for good. Node accounts, which `RegisterNode` opens, are
/// the exception; they start empty.
pub const EXISTENTIAL_DEPOSIT: Amount = 1_000;
pub type FarmId = u32;
pub type NodeId = u32;
pub type ContractId = u64;

/// Declares a fixed-size byte string that is hex in JSON and raw bytes in postcard.
macro_rules! bytes_type {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = ParseBytesError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s.trim(), &mut out).map_err(|e| ParseBytesError {
                    what: stringify!($name),
                    len: $len,
                    reason: e.to_string(),
                })?;
                Ok(Self(out))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    struct V;
                    impl<'de> serde::de::Visitor<'de> for V {
                        type Value = $name;
                        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                            write!(f, "{} bytes", $len)
                        }
                        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<$name, E> {
                            let arr: [u8; $len] = v
                                .try_into()
                                .map_err(|_| E::invalid_length(v.len(), &self))?;
                            Ok($name(arr))
                        }
                    }
                    d.deserialize_bytes(V)
                }
            }
        }
    };
}

bytes_type!(
    /// An ed25519 public key: the id of an account, the identity of a node.
    PublicKey,
    32
);
bytes_type!(
    /// A BLAKE3 hash (transactions, blocks, deployments, blobs).
    Hash,
    32
);
bytes_type!(
    /// An X25519 public key that sealed boxes (deployments, results) are sealed to.
    EncryptionKey,
    32
);
bytes_type!(
    /// An ed25519 signature.
    Signature,
    64
);

#[derive(Debug, thiserror::Error)]
#[error("bad {what}: expected {len} bytes as hex: {reason}")]
pub struct ParseBytesError {
    what: &'static str,
    len: usize,
    reason: String,
}

impl Hash {
    /// BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Hash(*blake3::hash(data).as_bytes())
    }
}

/// Capacity of a node, or what a contract reserves. CPU in logical cores, the rest in
/// bytes. Arithmetic is checked: a `Resources` never underflows or wraps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub cru: u64,
    #[serde(default)]
    pub mru: u64,
    #[serde(default)]
    pub sru: u64,
    #[serde(default)]
    pub hru: u64,
}

impl Resources {
    pub fn checked_add(&self, o: &Resources) -> Option<Resources> {
        Some(Resources {
            cru: self.cru.checked_add(o.cru)?,
            mru: self.mru.checked_add(o.mru)?,
            sru: self.sru.checked_add(o.sru)?,
            hru: self.hru.checked_add(o.hru)?,
        })
    }

    /// `self - o`, saturating at zero per component (used for "free" capacity, which
    /// may be negative when a node reports less capacity than it has reserved).
    pub fn saturating_sub(&self, o: &Resources) -> Resources {
        Resources {
            cru: self.cru.saturating_sub(o.cru),
            mru: self.mru.saturating_sub(o.mru),
            sru: self.sru.saturating_sub(o.sru),
            hru: self.hru.saturating_sub(o.hru),
        }
    }

    /// True when every component of `self` is at most the one of `o`.
    pub fn fits_in(&self, o: &Resources) -> bool {
        self.cru <= o.cru && self.mru <= o.mru && self.sru <= o.sru && self.hru <= o.hru
    }

    pub fn is_zero(&self) -> bool {
        *self == Resources::default()
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cru={} mru={} sru={} hru={}",
            self.cru,
            human_bytes(self.mru),
            human_bytes(self.sru),
            human_bytes(self.hru)
        )
    }
}

/// Formats a byte count with a binary unit, one decimal (`2.0GiB`): the text of
/// [`Resources`] and of [`crate::deployment::Size`], whose `Display` is how other
/// crates print a byte count (`Size(n)`), so there is one formatter.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// Prices a farm asks, per hour, per unit (see [`Resources::units`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Per compute unit (one core with up to 4 GiB of memory) per hour.
    pub cu: Amount,
    /// Per storage unit (100 GiB of SSD or 1 TiB of HDD) per hour.
    pub su: Amount,
    /// Per GiB of network traffic reported by the node.
    pub nu: Amount,
    /// Per public IPv4 address per hour.
    pub ipu: Amount,
}

pub const GIB: u64 = 1 << 30;

/// Billing units of a reservation, in thousandths so small reservations are not free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Units {
    pub cu_milli: u64,
    pub su_milli: u64,
}

impl Resources {
    /// CU = max(cores, memory / 4 GiB); SU = SSD / 100 GiB + HDD / 1 TiB; both rounded
    /// up to a thousandth of a unit. `None` when the units do not fit in a `u64`
    /// (a reservation that large has no price).
    pub fn units(&self) -> Option<Units> {
        // The divisors are at least 4 GiB, so `x * 1000 / divisor` always fits in a
        // u64; `try_from` keeps that an argument, not an assumption.
        let div_up =
            |a: u64, b: u64| u64::try_from((u128::from(a) * 1000).div_ceil(u128::from(b))).ok();
        let cu_mem = div_up(self.mru, 4 * GIB)?;
        let cu_milli = self.cru.checked_mul(1000)?.max(cu_mem);
        let su_milli = div_up(self.sru, 100 * GIB)?.checked_add(div_up(self.hru, 1024 * GIB)?)?;
        Some(Units { cu_milli, su_milli })
    }
}

impl Prices {
    /// What a reservation of `r` with `ips` public addresses costs per hour, rounded
    /// up. `None` when the price does not fit in an [`Amount`]: such a reservation
    /// cannot be priced, and the ledger refuses it rather than charge a wrapped or
    /// capped number.
    pub fn per_hour(&self, r: &Resources, ips: u32) -> Option<Amount> {
        let u = r.units()?;
        // Each product of two u64 fits in a u128; only the sums can overflow.
        let milli = (u128::from(u.cu_milli) * u128::from(self.cu))
            .checked_add(u128::from(u.su_milli) * u128::from(self.su))?;
        let total = milli
            .div_ceil(1000)
            .checked_add(u128::from(ips) * u128::from(self.ipu))?;
        Amount::try_from(total).ok()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub pubkey: PublicKey,
    /// The highest nonce this account has used; the next transaction must be higher.
    pub nonce: u64,
    pub balance: Amount,
    pub encryption_key: Option<EncryptionKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicIp {
    /// Address with prefix, e.g. `185.69.166.10/24`.
    pub ip: String,
    pub gateway: String,
    /// The contract that holds this address, if any.
    pub leased_by: Option<ContractId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Farm {
    pub id: FarmId,
    pub owner: PublicKey,
    pub name: String,
    pub prices: Prices,
    pub public_ips: Vec<PublicIp>,
    /// Key whose enrollment tokens let a node join already approved.
    pub enrollment_key: Option<PublicKey>,
}

impl Farm {
    pub fn free_ips(&self) -> usize {
        self.public_ips
            .iter()
            .filter(|i| i.leased_by.is_none())
            .count()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    #[serde(default)]
    pub ips: Vec<String>,
}

/// A PCI display controller (VGA, 3D or other display class) of a node: what a
/// passthrough workload would reserve. Devices of one IOMMU group can only be given
/// to a guest together, so the group is part of the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// PCI address as the kernel names it, e.g. `0000:00:02.0`.
    pub address: String,
    /// PCI vendor id, e.g. 0x10de for NVIDIA.
    pub vendor: u16,
    /// PCI device id.
    pub device: u16,
    /// `None` when the node has no IOMMU (or it is off): no passthrough then.
    pub iommu_group: Option<u32>,
}

/// How the node runs virtual machines: in hardware (KVM) or emulated (TCG, slow but
/// correct).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    Kvm,
    /// Also what a record without the field means: nothing promised.
    #[default]
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Up,
    Standby,
    Decommissioned,
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeStatus::Up => "up",
            NodeStatus::Standby => "standby",
            NodeStatus::Decommissioned => "decommissioned",
        })
    }
}

impl FromStr for NodeStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "up" => Ok(NodeStatus::Up),
            "standby" => Ok(NodeStatus::Standby),
            "decommissioned" => Ok(NodeStatus::Decommissioned),
            other => Err(format!(
                "unknown node status {other:?}: expected up, standby or decommissioned"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub id: NodeId,
    pub pubkey: PublicKey,
    pub farm: FarmId,
    pub approved: bool,
    pub capacity: Resources,
    pub reserved: Resources,
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    #[serde(default)]
    pub accel: Accel,
    pub location: Option<String>,
    pub encryption_key: EncryptionKey,
    /// False when the node keeps its state in RAM: it takes no contracts.
    pub persistent: bool,
    pub status: NodeStatus,
    /// Ledger time of the node's last uptime report.
    pub last_uptime: u64,
    /// Seconds the node said it had been up at that report.
    pub uptime_secs: u64,
    pub registered_at: u64,
}

impl Node {
    pub fn free(&self) -> Resources {
        self.capacity.saturating_sub(&self.reserved)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContractState {
    /// Created, capacity reserved; waiting for the node to accept. Not billed.
    Pending,
    /// The node provisioned the deployment. Billed through usage reports.
    Active,
    /// Escrow could not pay the next period. Not billed; closes after the grace period.
    Suspended,
    Closed(CloseCause),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseCause {
    CanceledByOwner,
    CanceledByNode,
    Rejected(String),
    GraceExpired,
    NodeRemoved,
}

impl fmt::Display for ContractState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContractState::Pending => f.write_str("pending"),
            ContractState::Active => f.write_str("active"),
            ContractState::Suspended => f.write_str("suspended"),
            ContractState::Closed(c) => match c {
                CloseCause::CanceledByOwner => f.write_str("closed (canceled by owner)"),
                CloseCause::CanceledByNode => f.write_str("closed (canceled by node)"),
                CloseCause::Rejected(r) => write!(f, "closed (rejected: {r})"),
                CloseCause::GraceExpired => f.write_str("closed (grace period expired)"),
                CloseCause::NodeRemoved => f.write_str("closed (node removed)"),
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    pub id: ContractId,
    pub owner: PublicKey,
    pub node: NodeId,
    pub farm: FarmId,
    /// Hash of the deployment the node must provision.
    pub deployment_hash: Hash,
    /// The last hash the node accepted (differs from `deployment_hash` between an
    /// update and the node's acceptance of it).
    pub accepted_hash: Option<Hash>,
    /// Mailbox blob with the deployment sealed to the node.
    pub blob: Option<Hash>,
    /// Mailbox blob with the node's results sealed to the owner.
    pub result: Option<Hash>,
    pub resources: Resources,
    /// Public IPs leased from the farm.
    pub public_ips: Vec<String>,
    /// Price per hour, fixed when the contract is created (or updated).
    pub price_per_hour: Amount,
    /// Price per GiB of traffic, fixed at creation.
    pub price_per_gib: Amount,
    pub escrow: Amount,
    pub state: ContractState,
    /// Usage is settled up to this ledger time; the next window starts at or after it.
    pub billed_until: u64,
    /// Ledger time the contract was suspended at, while it is suspended.
    pub suspended_at: Option<u64>,
    pub created_at: u64,
    /// Total paid to the farm so far.
    pub paid: Amount,
    /// CPU time the node measured its workloads using, in microseconds, summed over
    /// its usage reports.
    #[serde(default)]
    pub cpu_usec: u64,
    /// Memory its workloads held at the last usage report, in bytes.
    #[serde(default)]
    pub memory_bytes: u64,
}

impl Contract {
    pub fn is_open(&self) -> bool {
        !matches!(self.state, ContractState::Closed(_))
    }
}

/// Parameters fixed in the genesis block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainParams {
    pub chain_id: String,
    /// Dev mode allows the faucet.
    pub dev_mode: bool,
    /// How long a suspended contract waits for a top-up before it closes.
    pub grace_secs: u64,
    /// How far an uptime report's timestamp may be from ledger time.
    pub uptime_skew_secs: u64,
    /// Largest amount one faucet transaction may mint.
    pub faucet_max: Amount,
}

impl ChainParams {
    pub fn new(chain_id: impl Into<String>, dev_mode: bool) -> Self {
        ChainParams {
            chain_id: chain_id.into(),
            dev_mode,
            grace_secs: 7 * 24 * 3600,
            uptime_skew_secs: 60,
            faucet_max: 1_000_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let h = Hash::of(b"x");
        let s = serde_json::to_string(&h).expect("serialize");
        assert_eq!(s, format!("\"{}\"", h.to_hex()));
        let back: Hash = serde_json::from_str(&s).expect("parse");
        assert_eq!(back, h);
        let err = serde_json::from_str::<Hash>("\"abcd\"").unwrap_err();
        assert!(err.to_string().contains("expected 32 bytes"), "{err}");
        let bin = postcard::to_stdvec(&h).expect("postcard");
        assert_eq!(bin.len(), 33);
        assert_eq!(postcard::from_bytes::<Hash>(&bin).expect("decode"), h);
        let sig = Signature([7; 64]);
        let bin = postcard::to_stdvec(&sig).expect("postcard");
        assert_eq!(
            postcard::from_bytes::<Signature>(&bin).expect("decode"),
            sig
        );
    }

    #[test]
    fn units_and_prices() {
        let r = Resources {
            cru: 2,
            mru: 4 * GIB,
            sru: 100 * GIB,
            hru: 0,
        };
        assert_eq!(
            r.units(),
            Some(Units {
                cu_milli: 2000,
                su_milli: 1000
            })
        );
        let mem_heavy = Resources {
            cru: 1,
            mru: 16 * GIB,
            ..Default::default()
        };
        assert_eq!(mem_heavy.units().map(|u| u.cu_milli), Some(4000));
        let p = Prices {
            cu: 10,
            su: 5,
            nu: 1,
            ipu: 3,
        };
        // 2 CU * 10 + 1 SU * 5 + 2 IPs * 3
        assert_eq!(p.per_hour(&r, 2), Some(31));
        // A tiny reservation still costs something: rounded up.
        let tiny = Resources {
            sru: GIB,
            ..Default::default()
        };
        assert_eq!(p.per_hour(&tiny, 0), Some(1));
    }

    #[test]
    fn prices_that_do_not_fit_are_none_never_wrapped() {
        let max = Prices {
            cu: u64::MAX,
            su: u64::MAX,
            nu: u64::MAX,
            ipu: u64::MAX,
        };
        let huge = Resources {
            cru: u64::MAX / 1000,
            mru: u64::MAX,
            sru: u64::MAX,
            hru: u64::MAX,
        };
        // The report of issue 11: this wrapped to 1 (the u128 sum overflowed).
        assert_eq!(max.per_hour(&huge, 0), None);
        assert_eq!(max.per_hour(&Resources::default(), 2), None);
        let too_many_cores = Resources {
            cru: u64::MAX,
            ..Default::default()
        };
        assert_eq!(too_many_cores.units(), None);
        assert_eq!(Prices::default().per_hour(&too_many_cores, 0), None);
        // The largest price that fits is still exact.
        let one_ip = Prices {
            ipu: u64::MAX,
            ..Default::default()
        };
        assert_eq!(one_ip.per_hour(&Resources::default(), 1), Some(u64::MAX));
    }

    #[test]
    fn resources_checked() {
        let a = Resources {
            cru: 1,
            mru: 2,
            sru: 3,
            hru: 4,
        };
        let b = Resources {
            cru: u64::MAX,
            ..Default::default()
        };
        assert!(a.checked_add(&b).is_none());
        assert!(a.fits_in(&a));
        assert!(!b.fits_in(&a));
        assert_eq!(a.saturating_sub(&b).cru, 0);
    }
}
