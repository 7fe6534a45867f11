//! The node's workloads: the provision engine wired to the modules that run them, and
//! the node's local HTTP API.
//!
//! Each workload type is a [`Provisioner`] over a module: volumes over the storage
//! module's btrfs subvolumes, shards over namespaces of the node's shard server,
//! networks over the network module's namespaces and WireGuard devices. The engine follows the ledger for contracts on this node
//! and records its progress in the state directory, so this runs the same after a
//! crash or a reboot: it converges.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cellos_identity::NodeSigner;
use cellos_ledger::client::Client;
use cellos_ledger::deployment::{ShardMode, WorkloadSpec};
use cellos_ledger::NodeId;
use cellos_provision::api::{self, ApiState, NodeInfo};
use cellos_provision::{
    Config, Engine, LedgerClient, Provisioner, Provisioners, Store, WorkloadError, WorkloadId,
};
use cellos_shard::client::{Client as ShardClient, ClientError as ShardClientError};
use cellos_shard::namespace::{Mode, NamespaceOptions};
use cellos_storage::{VolumeName, Volumes};
use ed25519_dalek::SigningKey;

/// Where the node API listens.
pub const API_ADDR: ([u8; 4], u16) = ([0, 0, 0, 0], 8646);

/// `volume` workloads as btrfs subvolumes with a quota.
pub struct VolumeProvisioner<V: Volumes> {
    pub volumes: V,
}

/// A workload error's text: the error and every cause, as the console shows it.
fn err(e: impl std::error::Error + Send + Sync + 'static) -> WorkloadError {
    WorkloadError(format!("{:#}", anyhow::Error::new(e)))
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

/// `network` workloads: per network a namespace with a bridge, a WireGuard device
/// and an nftables ruleset ([`cellos_network`]). They live in the kernel, not in
/// cellosd: a crash of cellosd leaves them up, and the engine's first pass after a
/// reboot builds them again from the recorded deployments.
pub struct NetworkProvisioner {
    pub networks: cellos_network::Networks,
    /// Where containers find the networks they attach to.
    pub book: crate::containers::NetworkBook,
}

impl Provisioner for NetworkProvisioner {
    fn ensure(
        &self,
        id: &WorkloadId,
        spec: &WorkloadSpec,
    ) -> Result<BTreeMap<String, String>, WorkloadError> {
        let WorkloadSpec::Network(n) = spec else {
            return Err(WorkloadError(format!("{} is not a network", spec.kind())));
        };
        let names = self.networks.ensure(&id.node_name(), n).map_err(err)?;
        self.book.put(&id.node_name(), n);
        // Never the private key: only what the owner needs to reach the network.
        Ok(BTreeMap::from([
            ("namespace".to_string(), names.netns),
            ("bridge".to_string(), names.bridge),
            ("wireguard".to_string(), names.wireguard),
            ("subnet".to_string(), n.subnet.to_string()),
            ("gateway".to_string(), n.gateway().to_string()),
            ("listen_port".to_string(), n.listen_port.to_string()),
            (
                "public_key".to_string(),
                cellos_network::public_key(&n.private_key).to_string(),
            ),
        ]))
    }

    fn remove(&self, id: &WorkloadId, _: &WorkloadSpec) -> Result<(), WorkloadError> {
        self.networks.remove(&id.node_name()).map_err(err)?;
        self.book.forget(&id.node_name());
        Ok(())
    }

    /// The WireGuard device's bytes to and from all peers: what crosses the node's
    /// uplink for this network.
    fn traffic(&self, id: &WorkloadId, _: &WorkloadSpec) -> Option<u64> {
        let s = self.networks.status(&id.node_name()).ok()?;
        Some(s.rx_bytes.saturating_add(s.tx_bytes))
    }

    /// The WireGuard device's peers, handshakes and bytes ([`network_live`]).
    fn live(&self, id: &WorkloadId, _: &WorkloadSpec) -> Option<serde_json::Value> {
        self.networks
            .status(&id.node_name())
            .ok()
            .map(|s| network_live(&s))
    }
}

/// What the owner's view shows of a network now: per peer its public key, endpoint,
/// last handshake (unix seconds, `null` before the first) and bytes; the totals.
/// Built from the device's status, which holds no private key.
fn network_live(s: &cellos_network::NetworkStatus) -> serde_json::Value {
    let peers: Vec<_> = s
        .peers
        .iter()
        .map(|p| {
            serde_json::json!({
                "public_key": p.public_key.to_string(),
                "endpoint": p.endpoint.map(|e| e.to_string()),
                "last_handshake": p.last_handshake
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                "rx_bytes": p.rx_bytes,
                "tx_bytes": p.tx_bytes,
            })
        })
        .collect();
    serde_json::json!({ "peers": peers, "rx_bytes": s.rx_bytes, "tx_bytes": s.tx_bytes })
}

/// Where the node's shard server listens.
pub const SHARD_PORT: u16 = 9900;

/// What init's `shardd` service is started on (`os/manifest.toml`): cellosd links the
/// shard directory on the HDD pool and the admin password file here once the pools
/// are up, and `shardd --wait` starts serving when both exist.
pub const SHARD_DIR_LINK: &str = "shards";
pub const SHARD_ADMIN_LINK: &str = "shardd.admin";

/// `shard` workloads as namespaces (with their quota, mode and password) on the
/// node's shard server, `shardd`: a service of its own under init, so that a
/// restart or a crash of cellosd never takes a tenant's shards down. cellosd manages
/// the namespaces over the admin connection (AUTH with a password only it and
/// shardd read, on the state disk).
pub struct ShardProvisioner {
    pub addr: SocketAddr,
    pub admin_password: String,
    /// How long to keep trying a shardd that does not listen ([`SHARD_START`]).
    pub start_wait: Duration,
}

/// How long cellosd waits for one answer of shardd.
const SHARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long cellosd keeps trying to reach a shardd that is not listening (starting,
/// or restarted by init) before a shard workload fails.
const SHARD_START: Duration = Duration::from_secs(30);

fn node_ipv4() -> String {
    use cellos_capacity::Addresses;
    cellos_capacity::sys::SystemAddresses
        .ipv4()
        .ok()
        .and_then(|a| a.into_iter().find(|a| !a.cidr.starts_with("127.")))
        .and_then(|a| a.cidr.split('/').next().map(str::to_string))
        .unwrap_or_default()
}

impl ShardProvisioner {
    /// An admin session on shardd. Provisioners run on blocking threads of the
    /// runtime, so the async client is driven from here.
    fn admin<T>(
        &self,
        f: impl for<'c> FnOnce(
            &'c mut ShardClient,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, ShardClientError>> + Send + 'c>,
        >,
    ) -> Result<T, WorkloadError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|e| {
            WorkloadError(format!("no runtime for the shard admin connection: {e}"))
        })?;
        rt.block_on(async {
            // shardd may be starting (it waits for the pools) or restarting: give it
            // a while before the workload fails.
            let deadline = tokio::time::Instant::now() + self.start_wait;
            let mut c = loop {
                match ShardClient::connect(self.addr, SHARD_TIMEOUT).await {
                    Ok(c) => break c,
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        return Err(WorkloadError(format!(
                            "the shard server is not answering: {}",
                            err(e).0
                        )))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            };
            c.auth(&self.admin_password).await.map_err(err)?;
            f(&mut c).await.map_err(err)
        })
    }
}

/// How often cellosd asks shardd how many damaged records it found.
const SHARD_DAMAGE_EVERY: Duration = Duration::from_secs(30);

impl ShardProvisioner {
    /// `damaged_records` from shardd's admin INFO.
    async fn damaged_records(&self) -> Result<u64, String> {
        let mut c = ShardClient::connect(self.addr, SHARD_TIMEOUT)
            .await
            .map_err(|e| err(e).0)?;
        c.auth(&self.admin_password).await.map_err(|e| err(e).0)?;
        let info = match c.call(&[b"INFO"]).await.map_err(|e| err(e).0)? {
            cellos_shard::resp::Reply::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
            other => return Err(format!("unexpected INFO reply {other:?}")),
        };
        info.lines()
            .find_map(|l| l.trim().strip_prefix("damaged_records:"))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| "INFO has no damaged_records".to_string())
    }

    /// Keeps the node API's `cellos_shard_damaged_records` current, and says on the
    /// console when the count grows.
    pub fn watch_damage(self: Arc<Self>, api: Arc<ApiState>) {
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                let wait = match self.damaged_records().await {
                    Ok(n) => {
                        if n > last {
                            println!("cellos: the shard server found {n} damaged records on its disks (kept and skipped; `cellos store repair` rebuilds the objects)");
                        }
                        last = n;
                        api.set_shard_damage(n);
                        SHARD_DAMAGE_EVERY
                    }
                    // shardd is starting (it waits for the pools): ask again soon.
                    Err(_) => Duration::from_secs(2),
                };
                tokio::time::sleep(wait).await;
            }
        });
    }
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
        let ns = name.clone();
        self.admin(move |c| {
            Box::pin(async move {
                match c.ns_new(&ns, &opts).await {
                    Ok(()) => Ok(()),
                    // This workload from an earlier pass: keep its data, apply the
                    // deployment's settings (an update may have changed them).
                    Err(ShardClientError::Server { message, .. })
                        if message.contains("already exists") =>
                    {
                        c.ns_set(&ns, "maxsize", &opts.max_size.to_string()).await?;
                        c.ns_set(&ns, "password", opts.password.as_deref().unwrap_or("*"))
                            .await
                    }
                    Err(e) => Err(e),
                }
            })
        })?;
        Ok(BTreeMap::from([
            ("address".to_string(), node_ipv4()),
            ("port".to_string(), SHARD_PORT.to_string()),
            ("namespace".to_string(), name),
            ("mode".to_string(), format!("{mode:?}").to_lowercase()),
        ]))
    }

    fn remove(&self, id: &WorkloadId, _: &WorkloadSpec) -> Result<(), WorkloadError> {
        let ns = id.node_name();
        self.admin(move |c| {
            Box::pin(async move {
                match c.ns_del(&ns).await {
                    Err(ShardClientError::Server { message, .. })
                        if message.contains("does not exist") =>
                    {
                        Ok(())
                    }
                    r => r,
                }
            })
        })
    }
}

/// Prepares what init's `shardd` service waits for: the shard directory `dir` (on
/// the HDD pool) and the admin password, kept on the state disk (created once, mode
/// 0600) so a restarted cellosd still manages the namespaces shardd serves, both
/// linked into `run_dir`. Returns the provisioner that manages them.
pub fn prepare_shards(dir: &Path, state_dir: &Path, run_dir: &Path) -> Result<ShardProvisioner> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let secret = state_dir.join("shardd.admin");
    if !secret.exists() {
        let password =
            cellos_ledger::Hash::of(&cellos_ledger::keys::generate().to_bytes()).to_hex();
        let tmp = secret.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        std::io::Write::write_all(&mut f, password.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &secret)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), secret.display()))?;
    }
    let admin_password = std::fs::read_to_string(&secret)
        .with_context(|| format!("cannot read {}", secret.display()))?
        .trim()
        .to_string();
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    for (target, link) in [(dir, SHARD_DIR_LINK), (secret.as_path(), SHARD_ADMIN_LINK)] {
        let link = run_dir.join(link);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), target.display()))?;
    }
    Ok(ShardProvisioner {
        addr: SocketAddr::from(([127, 0, 0, 1], SHARD_PORT)),
        admin_password,
        start_wait: SHARD_START,
    })
}

/// Serves the node API in the background; failures are printed, never fatal. It is
/// on a hostile network: connections are capped below cellosd's open-file limit
/// (which init raises), and slow or idle clients are cut off (`cellos_http`).
pub fn serve_api(state: Arc<ApiState>, addr: Option<SocketAddr>) {
    tokio::spawn(async move {
        let addr = addr.unwrap_or_else(|| SocketAddr::from(API_ADDR));
        // Init raised the limit on a node; a host run raises its soft limit here.
        let fds = cellos_http::raise_fd_limit().unwrap_or(1024);
        let limits = cellos_http::Limits::for_fd_limit(fds);
        match cellos_http::bind(addr) {
            Ok(l) => {
                println!(
                    "cellosd: node API on http://{addr} (up to {} connections)",
                    limits.max_connections
                );
                cellos_http::serve(l, api::router(state), limits, None, std::future::pending())
                    .await;
            }
            Err(e) => println!("cellosd: node API cannot listen on {addr}: {e}"),
        }
    });
}

pub struct Wiring<V: Volumes + 'static> {
    pub client: Client,
    /// The registrar's signer: one per node.
    pub signer: NodeSigner,
    /// Opens the deployments sealed to the node.
    pub key: SigningKey,
    pub node: NodeId,
    pub state_dir: std::path::PathBuf,
    pub volumes: V,
    pub shards: Arc<ShardProvisioner>,
    /// Test mode reports usage every few seconds instead of every ten minutes.
    pub test_mode: bool,
    /// The node API: its owner views show the workloads' live status.
    pub api: Arc<ApiState>,
    /// Where containers keep images, roots and logs; `None` without an SSD pool.
    pub containers: Option<crate::containers::ContainerDirs>,
    /// Volumes again, for the containers that mount them.
    pub container_volumes: Box<dyn Volumes>,
    /// Registries pulled from over plain HTTP (`cellos.registry.insecure`).
    pub insecure_registries: Vec<String>,
    /// Where VMs keep disks and consoles; `None` without an SSD pool.
    pub vms: Option<crate::vms::VmDirs>,
    /// Volumes again, for the VMs that attach them as disks.
    pub vm_volumes: Box<dyn Volumes>,
}

/// Opens the provision store under the state directory.
pub fn store(state_dir: &Path) -> Result<Store> {
    Store::open(state_dir)
        .with_context(|| format!("cannot open the provision state in {}", state_dir.display()))
}

/// Runs the provision engine for ever; returns only if its state cannot be opened.
pub async fn run<V: Volumes + 'static>(w: Wiring<V>) -> Result<std::convert::Infallible> {
    let ledger = LedgerClient {
        client: w.client,
        signer: w.signer,
    };
    let config = Config {
        usage_every: if w.test_mode {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(600)
        },
        event_wait: Duration::from_secs(if w.test_mode { 2 } else { 30 }),
    };
    let book = crate::containers::NetworkBook::default();
    let container: Arc<dyn Provisioner> = match &w.containers {
        Some(dirs) => {
            let p = Arc::new(
                crate::containers::ContainerProvisioner::open(
                    dirs,
                    w.insecure_registries,
                    w.container_volumes,
                    book.clone(),
                )
                .context("preparing the container image cache")?,
            );
            p.watch().context("starting the container watcher")?;
            p
        }
        None => Arc::new(crate::containers::NoPool("container images and roots")),
    };
    let vm: Arc<dyn Provisioner> = match w.vms {
        Some(dirs) => {
            let accel = match cellos_capacity::accel() {
                cellos_ledger::Accel::Kvm => cellos_vm::Accel::Kvm,
                cellos_ledger::Accel::Tcg => cellos_vm::Accel::Tcg,
            };
            let p = Arc::new(
                crate::vms::VmProvisioner::open(dirs, accel, w.vm_volumes, book.clone())
                    .context("preparing the VM directories")?,
            );
            p.watch().context("starting the VM watcher")?;
            p
        }
        None => Arc::new(crate::containers::NoPool("VM disks")),
    };
    let provisioners = Provisioners {
        volume: Arc::new(VolumeProvisioner { volumes: w.volumes }),
        shard: w.shards,
        network: Arc::new(NetworkProvisioner {
            networks: cellos_network::Networks::new(cellos_network::Linux::default()),
            book,
        }),
        container,
        vm,
    };
    w.api.set_provisioners(provisioners.clone());
    let mut engine = Engine::new(
        ledger,
        store(&w.state_dir)?,
        provisioners,
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
    use cellos_shard::server::{Config as ShardConfig, Server};
    use cellos_storage::fake::MemVolumes;

    /// A strict shard server like the node's, and a provisioner with its admin
    /// password, as `prepare_shards` links them.
    async fn shardd(dir: &Path) -> (Server, Arc<ShardProvisioner>) {
        let mut config =
            ShardConfig::new(dir.join("shards"), SocketAddr::from(([127, 0, 0, 1], 0)));
        config.strict = true;
        let run = dir.join("run");
        let mut p = prepare_shards(&dir.join("shards"), dir, &run).expect("prepare");
        assert_eq!(
            std::fs::read_to_string(run.join(SHARD_ADMIN_LINK)).expect("the linked password"),
            p.admin_password
        );
        assert!(run.join(SHARD_DIR_LINK).is_dir());
        config.admin_password = Some(p.admin_password.clone());
        let server = Server::start(config).await.expect("shard server");
        p.addr = server.local_addr();
        (server, Arc::new(p))
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f).await.expect("blocking task")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shards_are_namespaces_with_quota_and_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_server, p) = shardd(dir.path()).await;
        let addr = p.addr;
        let id = WorkloadId {
            contract: 9,
            name: "store".into(),
        };
        let spec = |password: &str, size: u64| WorkloadSpec::Shard {
            size: Size(size),
            mode: ShardMode::User,
            password: Some(password.into()),
        };
        let ensure = |s: WorkloadSpec| {
            let (p, id) = (p.clone(), id.clone());
            blocking(move || p.ensure(&id, &s))
        };
        let data = ensure(spec("pw", 1 << 20)).await.expect("ensure");
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
        ensure(spec("pw", 1 << 20)).await.expect("ensure again");
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
        // An update changes the password and the quota, and keeps the data.
        ensure(spec("pw2", 4 << 20)).await.expect("update");
        let mut again = ShardClient::connect(addr, Duration::from_secs(5))
            .await
            .expect("connect");
        assert!(
            again.select("c9-store", Some("pw")).await.is_err(),
            "the old password"
        );
        again
            .select("c9-store", Some("pw2"))
            .await
            .expect("the new password");
        assert_eq!(again.get(b"k").await.expect("get"), Some(b"v".to_vec()));
        again
            .set(b"big", &vec![0u8; 2 << 20])
            .await
            .expect("the larger quota");
        for _ in 0..2 {
            let (p, id, s) = (p.clone(), id.clone(), spec("pw2", 1));
            blocking(move || p.remove(&id, &s))
                .await
                .expect("remove (twice)");
        }
        let mut after = ShardClient::connect(addr, Duration::from_secs(5))
            .await
            .expect("connect");
        assert!(
            after.select("c9-store", Some("pw2")).await.is_err(),
            "the namespace is gone"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shard_server_that_is_not_running_fails_the_workload_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = prepare_shards(&dir.path().join("s"), dir.path(), &dir.path().join("run"))
            .expect("prepare");
        p.start_wait = Duration::from_secs(1);
        p.addr = SocketAddr::from(([127, 0, 0, 1], {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        }));
        let spec = WorkloadSpec::Shard {
            size: Size(1 << 20),
            mode: ShardMode::Seq,
            password: Some("p".into()),
        };
        let id = WorkloadId {
            contract: 1,
            name: "s".into(),
        };
        let e = blocking(move || p.ensure(&id, &spec))
            .await
            .expect_err("no server");
        assert!(e.0.contains("the shard server is not answering"), "{e}");
    }

    #[test]
    fn the_admin_password_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = prepare_shards(&dir.path().join("s"), dir.path(), &dir.path().join("run"))
            .expect("prepare");
        let again = prepare_shards(&dir.path().join("s"), dir.path(), &dir.path().join("run"))
            .expect("prepare again");
        assert_eq!(first.admin_password, again.admin_password);
        assert_eq!(first.admin_password.len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("shardd.admin"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
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

    #[test]
    fn network_live_lists_peers_handshakes_and_bytes() {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let peer = |n: u8, hs, rx, tx| cellos_network::PeerStatus {
            public_key: cellos_ledger::network::WgKey([n; 32]),
            endpoint: Some(SocketAddr::from(([192, 0, 2, n], 51820))),
            last_handshake: hs,
            rx_bytes: rx,
            tx_bytes: tx,
        };
        let v = network_live(&cellos_network::NetworkStatus {
            names: cellos_network::Names::for_key("c1-net"),
            peers: vec![peer(1, Some(at), 10, 20), peer(2, None, 0, 0)],
            rx_bytes: 10,
            tx_bytes: 20,
        });
        assert_eq!(
            v,
            serde_json::json!({
                "peers": [
                    { "public_key": cellos_ledger::network::WgKey([1; 32]).to_string(),
                      "endpoint": "192.0.2.1:51820", "last_handshake": 1_700_000_000u64,
                      "rx_bytes": 10, "tx_bytes": 20 },
                    { "public_key": cellos_ledger::network::WgKey([2; 32]).to_string(),
                      "endpoint": "192.0.2.2:51820", "last_handshake": null,
                      "rx_bytes": 0, "tx_bytes": 0 },
                ],
                "rx_bytes": 10,
                "tx_bytes": 20,
            })
        );
    }
}
