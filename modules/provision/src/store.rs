//! What the node has provisioned, on its state disk.
//!
//! One JSON record per contract under `<state>/provision/`, written atomically (write a
//! temporary file, fsync, rename, fsync the directory) before and after every step, so a
//! crash at any point leaves either the old or the new record and the engine resumes
//! from it: `ensure` and `remove` are idempotent, so repeating the step in flight is
//! harmless, and nothing is forgotten.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use cellos_ledger::deployment::{Deployment, WorkloadResult};
use cellos_ledger::{ContractId, Hash};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state record {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// Where one workload stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// About to be created or changed; may exist partly.
    Provisioning,
    Ready,
    Failed,
    /// About to be removed; may exist partly.
    Removing,
}

/// The node's record of one contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub contract: ContractId,
    pub deployment_hash: Hash,
    pub deployment: Deployment,
    /// Per workload name.
    pub phases: BTreeMap<String, Phase>,
    pub results: Vec<WorkloadResult>,
    /// The ledger accepted (or was told about) this deployment hash.
    pub accepted: bool,
    /// Why the deployment was refused, if it was.
    pub rejected: Option<String>,
    /// Ledger time usage is settled up to, as far as this node knows.
    pub billed_until: u64,
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let dir = state_dir.join("provision");
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Store { dir })
    }

    fn path(&self, c: ContractId) -> PathBuf {
        self.dir.join(format!("{c}.json"))
    }

    pub fn get(&self, c: ContractId) -> Result<Option<Record>, StoreError> {
        let path = self.path(c);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    pub fn put(&self, r: &Record) -> Result<(), StoreError> {
        let path = self.path(r.contract);
        let tmp = self.dir.join(format!(".{}.tmp", r.contract));
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(r).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

    pub fn delete(&self, c: ContractId) -> Result<(), StoreError> {
        let path = self.path(c);
        match fs::remove_file(&path) {
            Ok(()) => fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| StoreError::Io { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Contract ids with a record, ascending.
    pub fn list(&self) -> Result<Vec<ContractId>, StoreError> {
        let io = |source| StoreError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io)? {
            let name = e.map_err(io)?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".json").and_then(|s| s.parse().ok()) {
                out.push(id);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Every readable record; unreadable ones are returned as errors beside them.
    pub fn all(&self) -> Result<Vec<Result<Record, StoreError>>, StoreError> {
        Ok(self
            .list()?
            .into_iter()
            .filter_map(|c| self.get(c).transpose())
            .collect())
    }
}
