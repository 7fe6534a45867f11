//! `store.toml`: where an owner's objects go and how they are coded.
//!
//! ```toml
//! k = 4                     # data shards: any k backends return the object
//! m = 2                     # parity shards: m backends may be lost
//! key_file = "store.key"    # 64 hex digits (or `key = "..."` inline); relative to this file
//! # segment_size = 4194304  # bytes coded at a time
//! # cipher = "xchacha20-poly1305"     # or "aes-256-gcm"
//! # erasure = "reed-solomon-erasure"  # or "reed-solomon-simd"
//! # compression_level = 3   # zstd level
//! # distinct = "backend"    # place shards on distinct backends, "node"s or "farm"s
//!
//! [[backend]]
//! address = "10.1.0.5:9900"
//! namespace = "mine"
//! password = "secret"
//! node = "12"               # optional labels for `distinct`
//! farm = "3"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cipher::CipherKind;
use crate::ec::RsCrate;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Which shards must not share a failure domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distinct {
    #[default]
    Backend,
    Node,
    Farm,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub address: SocketAddr,
    #[serde(default = "default_ns")]
    pub namespace: String,
    pub password: Option<String>,
    pub node: Option<String>,
    pub farm: Option<String>,
}

fn default_ns() -> String {
    "default".into()
}

impl BackendSpec {
    /// How metadata names the backend: address and namespace.
    pub fn id(&self) -> String {
        format!("{}/{}", self.address, self.namespace)
    }

    /// The label `distinct` compares.
    pub fn domain(&self, d: Distinct) -> String {
        match d {
            Distinct::Backend => self.id(),
            Distinct::Node => self
                .node
                .clone()
                .unwrap_or_else(|| self.address.ip().to_string()),
            Distinct::Farm => self.farm.clone().unwrap_or_else(|| self.id()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    k: usize,
    m: usize,
    key: Option<String>,
    key_file: Option<PathBuf>,
    segment_size: Option<usize>,
    cipher: Option<CipherKind>,
    erasure: Option<RsCrate>,
    compression_level: Option<i32>,
    #[serde(default)]
    distinct: Distinct,
    #[serde(rename = "backend", default)]
    backends: Vec<BackendSpec>,
}

/// A validated store configuration, with its key loaded.
#[derive(Clone)]
pub struct StoreConfig {
    pub k: usize,
    pub m: usize,
    pub key: [u8; 32],
    pub segment_size: usize,
    pub cipher: CipherKind,
    pub erasure: RsCrate,
    pub compression_level: i32,
    pub distinct: Distinct,
    pub backends: Vec<BackendSpec>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("k", &self.k)
            .field("m", &self.m)
            .field("key", &"<secret>")
            .field("backends", &self.backends.len())
            .finish()
    }
}

pub const DEFAULT_SEGMENT: usize = 4 << 20;
/// Largest segment: a shard must fit in a shard server's value limit.
pub const MAX_SEGMENT: usize = 64 << 20;

/// A new random store key.
pub fn generate_key() -> [u8; 32] {
    rand::random()
}

/// Parses a 32-byte key written as 64 hex digits (whitespace around is ignored).
pub fn parse_key(text: &str) -> Option<[u8; 32]> {
    hex::decode(text.trim()).ok()?.try_into().ok()
}

impl StoreConfig {
    /// A configuration with the defaults for everything but the essentials.
    pub fn new(k: usize, m: usize, key: [u8; 32], backends: Vec<BackendSpec>) -> StoreConfig {
        StoreConfig {
            k,
            m,
            key,
            segment_size: DEFAULT_SEGMENT,
            cipher: CipherKind::Xchacha20Poly1305,
            erasure: RsCrate::ReedSolomonErasure,
            compression_level: 3,
            distinct: Distinct::Backend,
            backends,
        }
    }

    pub fn load(path: &Path) -> Result<StoreConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let raw: Raw = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.into(),
            message,
        };
        let key = match (&raw.key, &raw.key_file) {
            (Some(k), None) => {
                parse_key(k).ok_or_else(|| invalid("key: expected 64 hex digits".into()))?
            }
            (None, Some(f)) => {
                let f = path.parent().unwrap_or(Path::new(".")).join(f);
                let text = std::fs::read_to_string(&f).map_err(|source| ConfigError::Read {
                    path: f.clone(),
                    source,
                })?;
                parse_key(&text).ok_or_else(|| {
                    invalid(format!("key file {}: expected 64 hex digits", f.display()))
                })?
            }
            _ => return Err(invalid("set exactly one of key and key_file".into())),
        };
        let mut c = StoreConfig::new(raw.k, raw.m, key, raw.backends);
        if let Some(s) = raw.segment_size {
            c.segment_size = s;
        }
        if let Some(x) = raw.cipher {
            c.cipher = x;
        }
        if let Some(x) = raw.erasure {
            c.erasure = x;
        }
        if let Some(x) = raw.compression_level {
            c.compression_level = x;
        }
        c.distinct = raw.distinct;
        c.validate().map_err(invalid)?;
        Ok(c)
    }

    /// Checks the numbers make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.k == 0 || self.m == 0 || self.k + self.m > 256 {
            return Err(format!(
                "k={} m={}: need k >= 1, m >= 1, k + m <= 256",
                self.k, self.m
            ));
        }
        if self.segment_size == 0 || self.segment_size > MAX_SEGMENT {
            return Err(format!(
                "segment_size {} not in 1..={MAX_SEGMENT}",
                self.segment_size
            ));
        }
        let mut ids: Vec<String> = self.backends.iter().map(BackendSpec::id).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != self.backends.len() {
            return Err("a backend (address + namespace) is listed twice".into());
        }
        if self.backends.len() < self.k + self.m {
            return Err(format!(
                "{} backends listed, k + m = {} needed (one shard per backend)",
                self.backends.len(),
                self.k + self.m
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_with_key_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), format!("{}\n", "ab".repeat(32))).unwrap();
        let mut toml = String::from("k = 2\nm = 1\nkey_file = \"k\"\ndistinct = \"farm\"\n");
        for p in 0..3 {
            toml += &format!(
                "[[backend]]\naddress = \"127.0.0.1:{}\"\nfarm = \"f{p}\"\n",
                9900 + p
            );
        }
        let path = dir.path().join("store.toml");
        std::fs::write(&path, &toml).unwrap();
        let c = StoreConfig::load(&path).unwrap();
        assert_eq!((c.k, c.m, c.key), (2, 1, [0xab; 32]));
        assert_eq!(c.backends[1].domain(Distinct::Farm), "f1");
        std::fs::write(&path, toml.replace("k = 2", "k = 3")).unwrap();
        assert!(StoreConfig::load(&path).is_err());
    }
}
