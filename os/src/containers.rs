//! `container` workloads: an OCI image pulled into the node's blob cache, its layers
//! as btrfs snapshots on the first SSD pool, run by crun in a namespace of its own
//! attached to the tenant's network ([`cellos_container`], [`cellos_network`]).
//!
//! A container is not a child of cellosd: crun starts it detached and the node's
//! init inherits it, so a crash or an upgrade of cellosd leaves it running. When the
//! engine ensures the workload again (every reconcile, and first thing after cellosd
//! starts), a container crun reports running with the same config is left alone: that
//! is the re-attachment. After a reboot crun's state (on /run) is gone; the image
//! comes from the cache, the root snapshot from the pool, and the container starts
//! again.
//!
//! Its stdout and stderr are appended to a log file on the pool, which only the
//! owner's signed request through the node API reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cellos_container::crun::Crun;
use cellos_container::spec::{runtime_spec, RunConfig};
use cellos_container::sys::BtrfsSnapshots;
use cellos_container::{
    BlobCache, ImageRef, LayerStore, PullOptions, PullPolicy, Puller, UnpackLimits,
};
use cellos_ledger::container::ContainerSpec;
use cellos_ledger::deployment::WorkloadSpec;
use cellos_ledger::network::NetworkSpec;
use cellos_provision::{Provisioner, WorkloadError, WorkloadId};
use cellos_storage::sys::System;
use cellos_storage::{VolumeName, Volumes};

/// The networks this cellosd has ensured, by network key: a container names its
/// network, and attaching needs the network's subnet and gateway. Networks are
/// ensured before containers (their rank), after a restart too.
#[derive(Clone, Default)]
pub struct NetworkBook(Arc<Mutex<BTreeMap<String, NetworkSpec>>>);

impl NetworkBook {
    pub fn put(&self, key: &str, spec: &NetworkSpec) {
        self.lock().insert(key.to_string(), spec.clone());
    }

    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    fn get(&self, key: &str) -> Option<NetworkSpec> {
        self.lock().get(key).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, NetworkSpec>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How long a container has to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct ContainerProvisioner {
    rt: tokio::runtime::Handle,
    puller: Puller,
    layers: LayerStore<BtrfsSnapshots<System>>,
    crun: Crun,
    networks: cellos_network::Networks,
    book: NetworkBook,
    volumes: Box<dyn Volumes>,
    /// Bundles (config.json per container), on /run.
    bundles: PathBuf,
    /// Logs, on the pool.
    logs: PathBuf,
}

/// Where a container's things are.
#[derive(Debug, Clone)]
pub struct ContainerDirs {
    /// On the first SSD pool: blob cache, layers and roots, logs.
    pub pool: PathBuf,
    /// The blob cache's size limit.
    pub cache_limit: u64,
    /// On /run: crun's state and the bundles.
    pub run: PathBuf,
}

fn err(e: impl std::error::Error + Send + Sync + 'static) -> WorkloadError {
    WorkloadError(format!("{:#}", anyhow::Error::new(e)))
}

impl ContainerProvisioner {
    pub fn open(
        dirs: &ContainerDirs,
        insecure_registries: Vec<String>,
        volumes: Box<dyn Volumes>,
        book: NetworkBook,
    ) -> anyhow::Result<ContainerProvisioner> {
        let cache = Arc::new(BlobCache::open(dirs.pool.join("images"), dirs.cache_limit)?);
        let layers = LayerStore::open(
            dirs.pool.join("layers"),
            BtrfsSnapshots::new(System),
            UnpackLimits::default(),
        )?;
        let logs = dirs.pool.join("logs");
        let bundles = dirs.run.join("bundles");
        for d in [&logs, &bundles] {
            std::fs::create_dir_all(d)?;
        }
        Ok(ContainerProvisioner {
            rt: tokio::runtime::Handle::current(),
            puller: Puller::new(
                cache,
                PullOptions {
                    insecure_registries,
                    ..PullOptions::default()
                },
            ),
            layers,
            crun: Crun::new("/usr/bin/crun", dirs.run.join("crun")),
            networks: cellos_network::Networks::new(cellos_network::Linux::default()),
            book,
            volumes,
            bundles,
            logs,
        })
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// The runtime config for `c`, once its image, root, network and volumes are
    /// there.
    fn prepare(
        &self,
        id: &WorkloadId,
        c: &ContainerSpec,
    ) -> Result<(String, String), WorkloadError> {
        let name = id.node_name();
        let reference = ImageRef::parse(&c.image).map_err(err)?;
        let image = self
            .rt
            .block_on(self.puller.pull(&reference, PullPolicy::IfNotPresent))
            .map_err(err)?;
        let top = self
            .layers
            .prepare(&image, self.puller.cache())
            .map_err(err)?;
        let rootfs = self.layers.create_root(&name, &top).map_err(err)?;
        let net_key = WorkloadId {
            contract: id.contract,
            name: c.network.clone(),
        }
        .node_name();
        let net = self.book.get(&net_key).ok_or_else(|| {
            WorkloadError(format!(
                "network {:?} is not up on this node yet",
                c.network
            ))
        })?;
        let attached = self
            .networks
            .attach(&net_key, &net, &name, c.ip)
            .map_err(err)?;
        let mut mounts = Vec::new();
        for m in &c.mounts {
            let volume = VolumeName::new(
                &WorkloadId {
                    contract: id.contract,
                    name: m.volume.clone(),
                }
                .node_name(),
            )
            .map_err(err)?;
            let info = self.volumes.usage(&volume).map_err(err)?;
            mounts.push((info.path, m.path.clone()));
        }
        let run = RunConfig {
            id: name,
            rootfs,
            cmd: c.cmd.clone(),
            env: c.env.clone().into_iter().collect(),
            cpu: c.cpu,
            memory: c.memory.0,
            netns: attached.netns_path,
            mounts,
            read_only: c.read_only,
        };
        let spec = runtime_spec(&run, &image.config).map_err(err)?;
        let json = serde_json::to_string_pretty(&spec).map_err(err)?;
        Ok((json, image.manifest.to_string()))
    }

    /// SIGTERM, a grace period, SIGKILL; then crun forgets it.
    fn stop(&self, name: &str) -> Result<(), WorkloadError> {
        if let Some(s) = self.crun.state(name).map_err(err)? {
            if s.running() {
                // A container that exits between the state and the signal is fine.
                let _ = self.crun.kill(name, "TERM");
                let t = Instant::now();
                while t.elapsed() < STOP_GRACE {
                    match self.crun.state(name).map_err(err)? {
                        Some(s) if s.running() => std::thread::sleep(Duration::from_millis(200)),
                        _ => break,
                    }
                }
            }
        }
        self.crun.delete(name).map_err(err)
    }
}

impl Provisioner for ContainerProvisioner {
    fn ensure(
        &self,
        id: &WorkloadId,
        spec: &WorkloadSpec,
    ) -> Result<BTreeMap<String, String>, WorkloadError> {
        let WorkloadSpec::Container(c) = spec else {
            return Err(WorkloadError(format!("{} is not a container", spec.kind())));
        };
        let name = id.node_name();
        let (config, digest) = self.prepare(id, c)?;
        let bundle = self.bundles.join(&name);
        let config_path = bundle.join("config.json");
        let state = self.crun.state(&name).map_err(err)?;
        let same = std::fs::read_to_string(&config_path).is_ok_and(|old| old == config);
        let running = state.as_ref().is_some_and(|s| s.running());
        if !(running && same) {
            if state.is_some() {
                self.stop(&name)?;
            }
            std::fs::create_dir_all(&bundle).map_err(err)?;
            std::fs::write(&config_path, &config).map_err(err)?;
            self.crun
                .run(&name, &bundle, &self.log_path(&name))
                .map_err(err)?;
        }
        let pid = self
            .crun
            .state(&name)
            .map_err(err)?
            .map(|s| s.pid)
            .unwrap_or_default();
        Ok(BTreeMap::from([
            ("image".to_string(), c.image.clone()),
            ("digest".to_string(), digest),
            ("ip".to_string(), c.ip.to_string()),
            ("pid".to_string(), pid.to_string()),
        ]))
    }

    fn remove(&self, id: &WorkloadId, _: &WorkloadSpec) -> Result<(), WorkloadError> {
        let name = id.node_name();
        self.stop(&name)?;
        self.networks.detach(&name).map_err(err)?;
        self.layers.remove_root(&name).map_err(err)?;
        remove_all(&self.bundles.join(&name))?;
        match std::fs::remove_file(self.log_path(&name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(e)),
            _ => Ok(()),
        }
    }

    /// What crun says now: running or stopped, and the container's pid on the node.
    fn live(&self, id: &WorkloadId, _: &WorkloadSpec) -> Option<serde_json::Value> {
        let s = self.crun.state(&id.node_name()).ok()??;
        Some(serde_json::json!({ "status": s.status, "pid": s.pid }))
    }
}

/// What a node without an SSD pool answers: it has nowhere to keep images.
pub struct NoContainers;

impl Provisioner for NoContainers {
    fn ensure(
        &self,
        _: &WorkloadId,
        _: &WorkloadSpec,
    ) -> Result<BTreeMap<String, String>, WorkloadError> {
        Err(WorkloadError(
            "this node has no SSD pool to keep container images and roots on".into(),
        ))
    }

    fn remove(&self, _: &WorkloadId, _: &WorkloadSpec) -> Result<(), WorkloadError> {
        Ok(())
    }
}

fn remove_all(p: &Path) -> Result<(), WorkloadError> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(e)),
        _ => Ok(()),
    }
}
