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
//! Its stdout and stderr are appended to a log file on the pool, kept to
//! [`LOG_KEEP`] bytes ([`cellos_provision::logfile`]), which only the owner's signed
//! request through the node API reads.
//!
//! A watcher thread applies the restart policy: when crun reports a container
//! stopped, how it ended comes from init's record of the orphans it reaped (the
//! container's init is one, see `cellos_boot::run::EXITS_DIR`) and from its cgroup's
//! `memory.events` (an OOM kill); `always` restarts it, `on-failure` restarts it
//! unless it exited with status 0, with a backoff from 1 s doubling to a minute. The
//! end and the restart are written into the container's log, where its owner reads
//! them.

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
use cellos_ledger::container::{ContainerSpec, Restart};
use cellos_ledger::deployment::WorkloadSpec;
use cellos_ledger::network::NetworkSpec;
use cellos_provision::workload::WorkloadUsage;
use cellos_provision::{LogChunk, Provisioner, WorkloadError, WorkloadId};
use cellos_storage::sys::System;
use cellos_storage::{VolumeName, Volumes};

use crate::cgroup::{Cgroups, CONTAINER_CGROUPS};

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

    pub fn get(&self, key: &str) -> Option<NetworkSpec> {
        self.lock().get(key).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, NetworkSpec>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How long a container has to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The newest output of a container kept on the node.
pub const LOG_KEEP: u64 = 1 << 20;
/// How often the watcher looks at the containers.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// Restart backoff: from the first to the longest delay; a container that ran this
/// long since its last start begins again from the first.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What the watcher knows of one container.
#[derive(Debug, Clone)]
struct Watched {
    restart: Restart,
    /// The pid of the run being watched.
    pid: i32,
    started: Instant,
    backoff: Duration,
    /// Set once the run that `pid` names has ended and was dealt with: when to start
    /// the next one (`None`: never, per policy).
    next_start: Option<Option<Instant>>,
    restarts: u32,
    oom_kills: u64,
    last_exit: Option<String>,
}

impl Watched {
    fn new(restart: Restart, pid: i32) -> Watched {
        Watched {
            restart,
            pid,
            started: Instant::now(),
            backoff: BACKOFF_FIRST,
            next_start: None,
            restarts: 0,
            oom_kills: 0,
            last_exit: None,
        }
    }
}

/// Whether a run that ended as `exit` (`exit <code>`, `signal <n>`, or unknown)
/// starts again under `policy`. An OOM kill is a failure.
fn restarts(policy: Restart, exit: Option<&str>, oom: bool) -> bool {
    match policy {
        Restart::Always => true,
        Restart::Never => false,
        Restart::OnFailure => oom || exit != Some("exit 0"),
    }
}

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
    /// The containers this cellosd runs, for the watcher.
    watched: Mutex<BTreeMap<String, Watched>>,
    /// Held by whoever starts, stops or restarts a container.
    ops: Mutex<()>,
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
            watched: Mutex::new(BTreeMap::new()),
            ops: Mutex::new(()),
        })
    }

    fn watched(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Watched>> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn op(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the watcher thread (for the life of the process).
    pub fn watch(self: &Arc<Self>) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("containers".into())
            .spawn(move || loop {
                std::thread::sleep(WATCH_EVERY);
                let names: Vec<String> = me.watched().keys().cloned().collect();
                for name in names {
                    me.tend(&name);
                }
            })
            .map(drop)
    }

    /// One look at container `name`: cap its log; if its run ended, note how, and
    /// start it again when the policy and the backoff say so.
    fn tend(&self, name: &str) {
        let log = self.log_path(name);
        if let Err(e) = cellos_provision::logfile::cap(&log, LOG_KEEP) {
            println!("cellos: container {name}: {e}");
        }
        let _op = self.op();
        let Some(w) = self.watched().get(name).cloned() else {
            return;
        };
        let running = matches!(self.crun.state(name), Ok(Some(s)) if s.running());
        if running {
            if w.started.elapsed() >= BACKOFF_MAX {
                if let Some(w) = self.watched().get_mut(name) {
                    w.backoff = BACKOFF_FIRST;
                }
            }
            return;
        }
        match w.next_start {
            None => self.ended(name, &w),
            Some(Some(at)) if Instant::now() >= at => self.start_again(name),
            Some(_) => {}
        }
    }

    /// The run `w.pid` ended: how, and what comes next, in the log and the record.
    fn ended(&self, name: &str, w: &Watched) {
        let exits = Path::new(cellos_boot::run::EXITS_DIR).join(w.pid.to_string());
        let exit = std::fs::read_to_string(&exits)
            .ok()
            .map(|s| s.trim().to_string());
        let _ = std::fs::remove_file(&exits);
        let oom_kills = oom_kills(name);
        let oom = oom_kills > w.oom_kills;
        let how = format!(
            "{}{}",
            exit.as_deref().unwrap_or("ended"),
            if oom {
                ", killed for lack of memory"
            } else {
                ""
            }
        );
        let again = restarts(w.restart, exit.as_deref(), oom);
        let next = again.then(|| Instant::now() + w.backoff);
        let note = if again {
            format!("restarting in {} s", w.backoff.as_secs())
        } else {
            "not restarted (restart policy)".to_string()
        };
        append(
            &self.log_path(name),
            &format!("cellos: container {name} {how}; {note}\n"),
        );
        println!("cellos: container {name} {how}; {note}");
        if let Some(w) = self.watched().get_mut(name) {
            w.next_start = Some(next);
            w.oom_kills = oom_kills;
            w.last_exit = Some(how);
            w.backoff = (w.backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn start_again(&self, name: &str) {
        let bundle = self.bundles.join(name);
        let started = self
            .crun
            .delete(name)
            .and_then(|()| self.crun.run(name, &bundle, &self.log_path(name)))
            .and_then(|()| self.crun.state(name));
        match started {
            Ok(Some(s)) => {
                if let Some(w) = self.watched().get_mut(name) {
                    w.pid = s.pid;
                    w.started = Instant::now();
                    w.next_start = None;
                    w.restarts += 1;
                }
            }
            Ok(None) => println!("cellos: container {name} did not start again"),
            Err(e) => println!("cellos: container {name} did not start again: {e:#}"),
        }
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
        let _op = self.op();
        let bundle = self.bundles.join(&name);
        let config_path = bundle.join("config.json");
        let state = self.crun.state(&name).map_err(err)?;
        let same = std::fs::read_to_string(&config_path).is_ok_and(|old| old == config);
        // One crun knows with this config is left as it is, running or not: the
        // watcher, not a reconcile, decides whether a stopped one starts again.
        if !(state.is_some() && same) {
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
        {
            let mut watched = self.watched();
            let w = watched
                .entry(name.clone())
                .or_insert_with(|| Watched::new(c.restart, pid));
            w.restart = c.restart;
            if w.pid != pid {
                *w = Watched::new(c.restart, pid);
            }
        }
        Ok(BTreeMap::from([
            ("image".to_string(), c.image.clone()),
            ("digest".to_string(), digest),
            ("ip".to_string(), c.ip.to_string()),
            ("pid".to_string(), pid.to_string()),
        ]))
    }

    fn remove(&self, id: &WorkloadId, _: &WorkloadSpec) -> Result<(), WorkloadError> {
        let name = id.node_name();
        let _op = self.op();
        self.watched().remove(&name);
        self.stop(&name)?;
        self.networks.detach(&name).map_err(err)?;
        self.layers.remove_root(&name).map_err(err)?;
        remove_all(&self.bundles.join(&name))?;
        match std::fs::remove_file(self.log_path(&name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(e)),
            _ => Ok(()),
        }
    }

    /// CPU time and memory from the container's cgroup (`None` while it has none).
    fn usage(&self, id: &WorkloadId, _: &WorkloadSpec) -> Option<WorkloadUsage> {
        Cgroups::new(CONTAINER_CGROUPS).usage(&id.node_name()).ok()
    }

    /// What crun says now (running or stopped, the pid on the node) and what the
    /// watcher saw: restarts, OOM kills, how the last run ended.
    fn live(&self, id: &WorkloadId, _: &WorkloadSpec) -> Option<serde_json::Value> {
        let name = id.node_name();
        let s = self.crun.state(&name).ok()??;
        let w = self.watched().get(&name).cloned();
        Some(serde_json::json!({
            "status": s.status,
            "pid": s.pid,
            "restarts": w.as_ref().map_or(0, |w| w.restarts),
            "oom_kills": w.as_ref().map_or(0, |w| w.oom_kills),
            "last_exit": w.and_then(|w| w.last_exit),
        }))
    }

    fn logs(
        &self,
        id: &WorkloadId,
        _: &WorkloadSpec,
        from: u64,
        max: u64,
    ) -> Option<Result<LogChunk, WorkloadError>> {
        Some(
            cellos_provision::logfile::read(&self.log_path(&id.node_name()), from, max, LOG_KEEP)
                .map_err(err),
        )
    }
}

/// OOM kills in container `name`'s cgroup so far (0 if it cannot be read).
fn oom_kills(name: &str) -> u64 {
    let events = format!("{CONTAINER_CGROUPS}/{name}/memory.events");
    std::fs::read_to_string(events)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Appends a line of the node's own to a workload's log (a container's output, a
/// VM's console).
pub fn append(log: &Path, line: &str) {
    use std::io::Write as _;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
        let _ = f.write_all(line.as_bytes());
    }
}

/// What a node without an SSD pool answers for a workload that needs one (a
/// container's images and roots, a VM's disks): `.0` names what it would keep there.
pub struct NoPool(pub &'static str);

impl Provisioner for NoPool {
    fn ensure(
        &self,
        _: &WorkloadId,
        _: &WorkloadSpec,
    ) -> Result<BTreeMap<String, String>, WorkloadError> {
        Err(WorkloadError(format!(
            "this node has no SSD pool to keep {} on",
            self.0
        )))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies() {
        use Restart::*;
        assert!(restarts(Always, Some("exit 0"), false));
        assert!(!restarts(Never, Some("exit 1"), true));
        assert!(!restarts(OnFailure, Some("exit 0"), false));
        assert!(
            restarts(OnFailure, Some("exit 0"), true),
            "an OOM kill is a failure"
        );
        assert!(restarts(OnFailure, Some("exit 3"), false));
        assert!(restarts(OnFailure, Some("signal 9"), false));
        assert!(
            restarts(OnFailure, None, false),
            "an unknown end is not a success"
        );
    }
}
