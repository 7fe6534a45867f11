//! The node's workloads: the provision engine wired to the modules that run them, and
//! the node's local HTTP API.
//!
//! Each workload type is a [`Provisioner`] over a module: volumes over the storage
//! module's btrfs subvolumes, shards over namespaces of the node's shard server. The engine follows the ledger for contracts on this node
//! and records its progress in the state directory, so this runs the same after a
//! crash or a reboot: it converges.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cellos_ledger::client::Client;
use cellos_ledger::deployment::{ShardMode, WorkloadSpec};
use cellos_ledger::keys::Signer;
use cellos_ledger::NodeId;
use cellos_provision::api::{self, ApiState, NodeInfo};
use cellos_provision::{
    Config, Engine, LedgerClient, Provisioner, Provisioners, Store, WorkloadError, WorkloadId,
};
use cellos_shard::namespace::{Mode, NamespaceOptions};
use cellos_shard::server::{Config as ShardConfig, Server, ServerError};
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
        let WorkloadSpec::Volume { size } = spec else {
            return Err(WorkloadError(format!("{} is not a volume", spec.kind())));
        };
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

/// Where the node's shard server listens.
pub const SHARD_PORT: u16 = 9900;

/// `shard` workloads as namespaces (with their quota, mode and password) on the
/// node's one shard server. Namespace calls are synchronous and local: no bridge to
/// the server's tasks is needed.
pub struct ShardProvisioner {
    /// `None` when the server could not start; every shard workload then fails with
    /// the reason.
    pub server: Result<Arc<Server>, String>,
}

fn node_ipv4() -> String {
    use cellos_capacity::Addresses;
    cellos_capacity::sys::SystemAddresses
        .ipv4()
        .ok()
        .and_then(|a| a.into_iter().find(|a| !a.cidr.starts_with("127.")))
        .and_then(|a| a.cidr.split('/').next().map(str::to_string))
        .unwrap_or_default()
}

impl Provisioner for ShardProvisioner {
    fn ensure(
        &self,
        id: &WorkloadId,
        spec: &WorkloadSpec,
    ) -> Result<BTreeMap<String, String>, WorkloadError> {
        let WorkloadSpec::Shard {
            size,
            mode,
            password,
        } = spec
        else {
            return Err(WorkloadError(format!("{} is not a shard", spec.kind())));
        };
        let server = self
            .server
            .as_ref()
            .map_err(|e| WorkloadError(format!("the shard server is not running: {e}")))?;
        let name = id.node_name();
        let opts = NamespaceOptions {
            mode: Some(match mode {
                ShardMode::User => Mode::User,
                ShardMode::Seq => Mode::Seq,
            }),
            max_size: size.0,
            password: password.clone(),
            public: false,
        };
        match server.create_namespace(&name, &opts) {
            // An existing namespace is this workload from an earlier pass: keep its data.
            Ok(_) | Err(ServerError::Exists(_)) => {}
            Err(e) => return Err(err(e)),
        }
        Ok(BTreeMap::from([
            ("address".to_string(), node_ipv4()),
            ("port".to_string(), SHARD_PORT.to_string()),
            ("namespace".to_string(), name),
            ("mode".to_string(), format!("{mode:?}").to_lowercase()),
        ]))
    }

    fn remove(&self, id: &WorkloadId, _: &WorkloadSpec) -> Result<(), WorkloadError> {
        let server = self
            .server
            .as_ref()
            .map_err(|e| WorkloadError(format!("the shard server is not running: {e}")))?;
        match server.delete_namespace(&id.node_name()) {
            Ok(()) | Err(ServerError::NoSuchNamespace(_)) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }
}

/// Starts the node's shard server on `dir`, on a thread and runtime of its own: the
/// provision engine blocks cellosd's thread while it runs btrfs, and clients of the
/// shards must not wait for that. Its admin password is random, so only this process
/// (through the library) manages namespaces.
pub fn start_shards(dir: &Path) -> Result<Arc<Server>, String> {
    let mut config = ShardConfig::new(
        dir.to_path_buf(),
        SocketAddr::from(([0, 0, 0, 0], SHARD_PORT)),
    );
    config.admin_password =
        Some(cellos_ledger::Hash::of(&cellos_ledger::keys::generate().to_bytes()).to_hex());
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("shardd".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start its runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                match Server::start(config).await {
                    Ok(s) => {
                        let _ = tx.send(Ok(Arc::new(s)));
                        // Serve for as long as cellosd lives.
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        });
    let started = match spawned {
        Ok(_) => rx
            .recv()
            .unwrap_or_else(|_| Err("its thread ended before it started".into())),
        Err(e) => Err(format!("cannot start its thread: {e}")),
    };
    match &started {
        Ok(s) => {
            for t in s.recovered() {
                println!(
                    "cellos: shard data file {} had a torn tail ({}): kept {} bytes, cut {}",
                    t.path.display(),
                    t.reason,
                    t.kept,
                    t.cut
                );
            }
            println!(
                "cellos: shard server on port {SHARD_PORT}, data in {}",
                dir.display()
            );
        }
        Err(e) => println!(
            "cellos: shard server cannot start in {}: {e}",
            dir.display()
        ),
    }
    started
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
    pub shards: ShardProvisioner,
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
            shard: Box::new(w.shards),
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
    use cellos_shard::client::Client as ShardClient;
    use cellos_storage::fake::MemVolumes;

    #[tokio::test]
    async fn shards_are_namespaces_with_quota_and_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Server::start(ShardConfig::new(
            dir.path().to_path_buf(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        ))
        .await
        .expect("shard server");
        let addr = server.local_addr();
        let p = ShardProvisioner {
            server: Ok(Arc::new(server)),
        };
        let id = WorkloadId {
            contract: 9,
            name: "store".into(),
        };
        let spec = WorkloadSpec::Shard {
            size: Size(1 << 20),
            mode: ShardMode::User,
            password: Some("pw".into()),
        };
        let data = p.ensure(&id, &spec).expect("ensure");
        assert_eq!(data["namespace"], "c9-store");
        assert_eq!(data["port"], SHARD_PORT.to_string());
        let mut c = ShardClient::connect(addr, Duration::from_secs(5))
            .await
            .expect("connect");
        c.select("c9-store", Some("pw"))
            .await
            .expect("select with the password");
        c.set(b"k", b"v").await.expect("set");
        // A second pass keeps the data.
        p.ensure(&id, &spec).expect("ensure again");
        assert_eq!(c.get(b"k").await.expect("get"), Some(b"v".to_vec()));
        let mut other = ShardClient::connect(addr, Duration::from_secs(5))
            .await
            .expect("connect");
        assert!(
            other.select("c9-store", Some("wrong")).await.is_err(),
            "a wrong password is refused"
        );
        // The quota holds.
        assert!(
            c.set(b"big", &vec![0u8; 2 << 20]).await.is_err(),
            "writing past the quota fails"
        );
        p.remove(&id, &spec).expect("remove");
        p.remove(&id, &spec).expect("remove again");
        let mut after = ShardClient::connect(addr, Duration::from_secs(5))
            .await
            .expect("connect");
        assert!(
            after.select("c9-store", Some("pw")).await.is_err(),
            "the namespace is gone"
        );
    }

    #[test]
    fn a_shard_server_that_did_not_start_fails_the_workload_with_the_reason() {
        let p = ShardProvisioner {
            server: Err("port 9900 in use".into()),
        };
        let id = WorkloadId {
            contract: 1,
            name: "s".into(),
        };
        let spec = WorkloadSpec::Shard {
            size: Size(1 << 20),
            mode: ShardMode::Seq,
            password: None,
        };
        let e = p.ensure(&id, &spec).expect_err("no server");
        assert!(e.0.contains("port 9900 in use"), "{e}");
    }

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
