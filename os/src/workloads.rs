//! The node's workloads: the provision engine wired to the modules that run them, and
//! the node's local HTTP API.
//!
//! Each workload type is a [`Provisioner`] over a module: volumes over the storage
//! module's btrfs subvolumes. The engine follows the ledger for contracts on this node
//! and records its progress in the state directory, so this runs the same after a
//! crash or a reboot: it converges.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cellos_ledger::client::Client;
use cellos_ledger::deployment::WorkloadSpec;
use cellos_ledger::keys::Signer;
use cellos_ledger::NodeId;
use cellos_provision::api::{self, ApiState, NodeInfo};
use cellos_provision::{
    Config, Engine, LedgerClient, Provisioner, Provisioners, Store, WorkloadError, WorkloadId,
};
use cellos_storage::{VolumeName, Volumes};
use ed25519_dalek::SigningKey;

/// Where the node API listens.
pub const API_ADDR: ([u8; 4], u16) = ([0, 0, 0, 0], 8646);

/// `volume` workloads as btrfs subvolumes with a quota.
pub struct VolumeProvisioner<V: Volumes> {
    pub volumes: V,
}

fn err(e: impl std::fmt::Display) -> WorkloadError {
    WorkloadError(e.to_string())
}

impl<V: Volumes> Provisioner for VolumeProvisioner<V> {
    fn ensure(
        &self,
        id: &WorkloadId,
        spec: &WorkloadSpec,
    ) -> Result<BTreeMap<String, String>, WorkloadError> {
        let WorkloadSpec::Volume { size } = spec;
        let name = VolumeName::new(&id.node_name()).map_err(err)?;
        let v = self.volumes.create(&name, size.0).map_err(err)?;
        Ok(BTreeMap::from([
            ("path".to_string(), v.path.display().to_string()),
            ("pool".to_string(), v.pool.to_string()),
            ("size".to_string(), v.size.to_string()),
            ("used".to_string(), v.used.to_string()),
        ]))
    }

    fn remove(&self, id: &WorkloadId, _: &WorkloadSpec) -> Result<(), WorkloadError> {
        let name = VolumeName::new(&id.node_name()).map_err(err)?;
        self.volumes.delete(&name).map_err(err)
    }
}

/// Serves the node API in the background; failures are printed, never fatal.
pub fn serve_api(state: Arc<ApiState>) {
    tokio::spawn(async move {
        let addr = SocketAddr::from(API_ADDR);
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                println!("cellosd: node API on http://{addr}");
                if let Err(e) = axum::serve(l, api::router(state)).await {
                    println!("cellosd: node API stopped: {e}");
                }
            }
            Err(e) => println!("cellosd: node API cannot listen on {addr}: {e}"),
        }
    });
}

pub struct Wiring<V: Volumes + 'static> {
    pub client: Client,
    pub key: SigningKey,
    pub node: NodeId,
    pub state_dir: std::path::PathBuf,
    pub volumes: V,
    /// Test mode reports usage every few seconds instead of every ten minutes.
    pub test_mode: bool,
}

/// Opens the provision store under the state directory.
pub fn store(state_dir: &Path) -> Result<Store> {
    Store::open(state_dir)
        .with_context(|| format!("cannot open the provision state in {}", state_dir.display()))
}

/// Runs the provision engine for ever; returns only if its state cannot be opened.
pub async fn run<V: Volumes + 'static>(w: Wiring<V>) -> Result<std::convert::Infallible> {
    // The registrar just talked to the ledger; the chain id is one request away.
    let mut wait = Duration::from_secs(1);
    let chain_id = loop {
        match w.client.status().await {
            Ok(s) => break s.chain_id,
            Err(e) => {
                println!(
                    "cellos: provision: ledger status: {e}; retrying in {}s",
                    wait.as_secs()
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    };
    let ledger = LedgerClient {
        client: w.client,
        signer: tokio::sync::Mutex::new(Signer::new(w.key.clone(), chain_id)),
    };
    let config = Config {
        usage_every: if w.test_mode {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(600)
        },
        event_wait: Duration::from_secs(if w.test_mode { 2 } else { 30 }),
    };
    let mut engine = Engine::new(
        ledger,
        store(&w.state_dir)?,
        Provisioners {
            volume: Box::new(VolumeProvisioner { volumes: w.volumes }),
        },
        w.node,
        w.key,
        config,
        Box::new(|line| println!("{line}")),
    );
    Ok(engine.run().await)
}

/// The node API's view of the registration.
pub fn info(
    node: NodeId,
    farm: u32,
    pubkey: cellos_ledger::PublicKey,
    capacity: cellos_ledger::Resources,
    persistent: bool,
) -> NodeInfo {
    NodeInfo {
        node,
        farm,
        pubkey,
        capacity,
        persistent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellos_ledger::deployment::Size;
    use cellos_storage::fake::MemVolumes;

    #[test]
    fn volumes_are_named_after_contract_and_workload() {
        let p = VolumeProvisioner {
            volumes: MemVolumes::new(10 << 30),
        };
        let id = WorkloadId {
            contract: 4,
            name: "data".into(),
        };
        let spec = WorkloadSpec::Volume {
            size: Size(1 << 30),
        };
        let data = p.ensure(&id, &spec).expect("ensure");
        assert_eq!(data["size"], (1u64 << 30).to_string());
        assert!(data["path"].contains("c4-data"), "{data:?}");
        // Idempotent both ways.
        p.ensure(&id, &spec).expect("again");
        p.remove(&id, &spec).expect("remove");
        p.remove(&id, &spec).expect("remove again");
        assert!(p.volumes.list().expect("list").is_empty());
    }
}
