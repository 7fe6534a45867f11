//! `vm` workloads: QEMU processes on the first SSD pool, each on a tap port of its
//! tenant network's bridge ([`cellos_vm`], [`cellos_network`]).
//!
//! A VM is not a child of cellosd: QEMU daemonizes and the node's init adopts it, so
//! a crash or an upgrade of cellosd leaves the guest running. When the engine
//! ensures the workload again (every reconcile, and first thing after cellosd
//! starts), a QEMU found through the VM's pid file, started with the same arguments,
//! is left alone: that is the re-attachment, and QMP drives it from then on.
//!
//! The VM's files live in `<pool>/vms/<name>/`: the verified kernel and initrd (named
//! by their SHA-256), the root disk made from a verified image, the config drive,
//! and the serial console's log, which QEMU appends to and only the owner reads
//! through the node API (kept to [`LOG_KEEP`] bytes like a container's log). A
//! volume the VM attaches is a raw file inside that volume, the volume's size.
//!
//! A watcher thread restarts a VM whose QEMU ended other than by the guest powering
//! off, at most [`RESTART_BUDGET`] times in [`BUDGET_WINDOW`]; past that it stays
//! down, and says so in its console log and its live view.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cellos_ledger::deployment::WorkloadSpec;
use cellos_ledger::vm::{DiskFormat, VmSpec, MAX_BOOT_FILE};
use cellos_provision::{LogChunk, Provisioner, WorkloadError, WorkloadId};
use cellos_storage::{VolumeName, Volumes};
use cellos_vm::drive::CloudInit;
use cellos_vm::fetch::Fetcher;
use cellos_vm::machine::mac_for;
use cellos_vm::process::{self, Stopped};
use cellos_vm::{Accel, Boot, Machine};

use crate::containers::{append, NetworkBook};

/// Where Debian's QEMU is, on the node as on a Debian host.
const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// The newest console output kept on the node.
pub const LOG_KEEP: u64 = 1 << 20;
/// How long a guest has to power off when asked, then QEMU after SIGTERM.
const POWERDOWN_WAIT: Duration = Duration::from_secs(30);
const TERM_WAIT: Duration = Duration::from_secs(5);
/// How often the watcher looks at the VMs.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// A VM that crashes more than this often in the window stays down.
pub const RESTART_BUDGET: usize = 5;
pub const BUDGET_WINDOW: Duration = Duration::from_secs(600);

/// What the watcher knows of one VM.
struct Watched {
    machine: Machine,
    netns: PathBuf,
    pid: i32,
    /// Restarts inside the budget window.
    restarts: Vec<Instant>,
    total_restarts: u32,
    last_exit: Option<String>,
    /// Down for good (until the next deploy): powered off by its guest, or out of
    /// restarts.
    down: Option<String>,
}

/// Where VMs keep their things.
#[derive(Debug, Clone)]
pub struct VmDirs {
    /// On the first SSD pool.
    pub pool: PathBuf,
    /// On /run: pid files, QMP sockets.
    pub run: PathBuf,
}

pub struct VmProvisioner {
    rt: tokio::runtime::Handle,
    accel: Accel,
    networks: cellos_network::Networks,
    book: NetworkBook,
    volumes: Box<dyn Volumes>,
    dirs: VmDirs,
    watched: Mutex<BTreeMap<String, Watched>>,
    /// Held by whoever starts or stops a VM.
    ops: Mutex<()>,
}

fn err(e: impl std::error::Error + Send + Sync + 'static) -> WorkloadError {
    WorkloadError(format!("{:#}", anyhow::Error::new(e)))
}

fn io_err(what: &str, path: &Path) -> impl Fn(std::io::Error) -> WorkloadError {
    let what = format!("{what} {}", path.display());
    move |e| WorkloadError(format!("{what}: {e}"))
}

/// The virtual size a qcow2 image claims (big-endian at offset 24), or why it is
/// not a qcow2 image.
fn qcow2_size(path: &Path) -> Result<u64, WorkloadError> {
    use std::io::Read as _;
    let mut head = [0u8; 32];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(io_err("reading", path))?;
    if head[..4] != *b"QFI\xfb" {
        return Err(WorkloadError(
            "the disk image is not qcow2 (no QFI magic)".into(),
        ));
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&head[24..32]);
    Ok(u64::from_be_bytes(size))
}

impl VmProvisioner {
    pub fn open(
        dirs: VmDirs,
        accel: Accel,
        volumes: Box<dyn Volumes>,
        book: NetworkBook,
    ) -> anyhow::Result<VmProvisioner> {
        for d in [&dirs.pool, &dirs.run] {
            std::fs::create_dir_all(d)?;
        }
        Ok(VmProvisioner {
            rt: tokio::runtime::Handle::current(),
            accel,
            networks: cellos_network::Networks::new(cellos_network::Linux::default()),
            book,
            volumes,
            dirs,
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

    fn dir(&self, name: &str) -> PathBuf {
        self.dirs.pool.join(name)
    }

    fn console(&self, name: &str) -> PathBuf {
        self.dir(name).join("console.log")
    }

    /// Starts the watcher thread (for the life of the process).
    pub fn watch(self: &Arc<Self>) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("vms".into())
            .spawn(move || loop {
                std::thread::sleep(WATCH_EVERY);
                let names: Vec<String> = me.watched().keys().cloned().collect();
                for name in names {
                    me.tend(&name);
                }
            })
            .map(drop)
    }

    /// One look at VM `name`: cap its console log; if its QEMU ended, note how and
    /// start it again within the budget.
    fn tend(&self, name: &str) {
        if let Err(e) = cellos_provision::logfile::cap(&self.console(name), LOG_KEEP) {
            println!("cellos: vm {name}: {e}");
        }
        let _op = self.op();
        let mut watched = self.watched();
        let Some(w) = watched.get_mut(name) else {
            return;
        };
        if w.down.is_some() || process::running(&w.machine.run_dir).is_some() {
            return;
        }
        let exits = Path::new(cellos_boot::run::EXITS_DIR).join(w.pid.to_string());
        let exit = std::fs::read_to_string(&exits)
            .ok()
            .map(|s| s.trim().to_string());
        let _ = std::fs::remove_file(&exits);
        let how = exit.clone().unwrap_or_else(|| "ended".into());
        w.last_exit = Some(how.clone());
        let now = Instant::now();
        w.restarts
            .retain(|t| now.duration_since(*t) < BUDGET_WINDOW);
        let note = if exit.as_deref() == Some("exit 0") {
            w.down = Some("the guest powered off".into());
            "the guest powered off; not restarted".to_string()
        } else if w.restarts.len() >= RESTART_BUDGET {
            w.down = Some(format!(
                "crashed {} times in {} s",
                RESTART_BUDGET + 1,
                BUDGET_WINDOW.as_secs()
            ));
            "out of restarts; left down until the next deploy".to_string()
        } else {
            match process::start(Path::new(QEMU), &w.machine, &w.netns) {
                Ok(pid) => {
                    w.pid = pid;
                    w.restarts.push(now);
                    w.total_restarts += 1;
                    "restarted".to_string()
                }
                Err(e) => format!("could not restart: {e}"),
            }
        };
        let line = format!("cellos: vm {name}: QEMU {how}; {note}\n");
        append(&self.console(name), &line);
        print!("{line}");
    }

    /// The file behind `artifact`, fetched and checked, in the VM's directory.
    fn fetch(
        &self,
        fetcher: &Fetcher,
        url: &str,
        sha256: &str,
        max: u64,
    ) -> Result<PathBuf, WorkloadError> {
        self.rt
            .block_on(fetcher.fetch(url, sha256, max))
            .map_err(err)
    }

    /// Everything the VM needs on disk and on the network, as the machine to run.
    fn prepare(&self, id: &WorkloadId, v: &VmSpec) -> Result<(Machine, PathBuf), WorkloadError> {
        let name = id.node_name();
        let dir = self.dir(&name);
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let fetcher = Fetcher::new(&dir.join("files")).map_err(err)?;
        let boot = match (&v.kernel, &v.disk) {
            (Some(k), _) => Boot::Kernel {
                kernel: self.fetch(&fetcher, &k.url, &k.sha256, MAX_BOOT_FILE)?,
                initrd: match &v.initrd {
                    Some(i) => Some(self.fetch(&fetcher, &i.url, &i.sha256, MAX_BOOT_FILE)?),
                    None => None,
                },
                cmdline: v.cmdline.clone(),
            },
            (None, Some(d)) => {
                let format = match d.format {
                    DiskFormat::Raw => "raw",
                    DiskFormat::Qcow2 => "qcow2",
                };
                let root = dir.join(format!("root.{format}"));
                if !root.exists() {
                    let image = self.fetch(&fetcher, &d.url, &d.sha256, d.size.0)?;
                    if d.format == DiskFormat::Qcow2 {
                        let virtual_size = qcow2_size(&image)?;
                        if virtual_size > d.size.0 {
                            let _ = std::fs::remove_file(&image);
                            return Err(WorkloadError(format!(
                                "the qcow2 image's virtual size is {virtual_size} bytes, more than the disk's size {}",
                                d.size
                            )));
                        }
                    }
                    std::fs::rename(&image, &root).map_err(io_err("moving", &image))?;
                }
                if d.format == DiskFormat::Raw {
                    let f = std::fs::File::options()
                        .write(true)
                        .open(&root)
                        .map_err(io_err("opening", &root))?;
                    let len = f.metadata().map_err(io_err("reading", &root))?.len();
                    if len < d.size.0 {
                        f.set_len(d.size.0).map_err(io_err("growing", &root))?;
                    }
                }
                Boot::Disk { path: root, format }
            }
            (None, None) => return Err(WorkloadError("the VM boots nothing".into())),
        };
        let mut disks = Vec::new();
        for volume in &v.disks {
            let vname = VolumeName::new(
                &WorkloadId {
                    contract: id.contract,
                    name: volume.clone(),
                }
                .node_name(),
            )
            .map_err(err)?;
            let info = self.volumes.usage(&vname).map_err(err)?;
            let disk = info.path.join("disk.raw");
            if !disk.exists() {
                std::fs::File::create(&disk)
                    .and_then(|f| f.set_len(info.size))
                    .map_err(io_err("creating", &disk))?;
            }
            disks.push(disk);
        }
        let net_key = WorkloadId {
            contract: id.contract,
            name: v.network.clone(),
        }
        .node_name();
        let net = self.book.get(&net_key).ok_or_else(|| {
            WorkloadError(format!(
                "network {:?} is not up on this node yet",
                v.network
            ))
        })?;
        let tap = self
            .networks
            .attach_tap(&net_key, &net, &name, v.ip)
            .map_err(err)?;
        let mac = mac_for(&name);
        let drive = dir.join("config.img");
        CloudInit {
            instance_id: name.clone(),
            hostname: id.name.clone(),
            mac: mac.clone(),
            address: tap.address.to_string(),
            gateway: tap.gateway.to_string(),
            ssh_keys: v.ssh_keys.clone(),
        }
        .write(&drive)
        .map_err(err)?;
        let machine = Machine {
            name: name.clone(),
            accel: self.accel,
            cpus: v.cpu,
            memory_mib: v.memory.0 >> 20,
            boot,
            config_drive: drive,
            disks,
            tap: tap.tap,
            mac,
            console: self.console(&name),
            run_dir: self.dirs.run.join(&name),
        };
        Ok((machine, tap.netns_path))
    }

    /// Stops VM `name`, saying how in its console log and the node's.
    fn stop(&self, name: &str) -> Result<(), WorkloadError> {
        let run_dir = self.dirs.run.join(name);
        let how = process::stop(&run_dir, POWERDOWN_WAIT, TERM_WAIT).map_err(err)?;
        let said = match how {
            Stopped::PoweredOff => "powered off over QMP",
            Stopped::Terminated => "did not power off; QEMU ended on SIGTERM",
            Stopped::Killed => "did not power off; QEMU was killed",
            Stopped::NotRunning => return Ok(()),
        };
        let line = format!("cellos: vm {name} {said}\n");
        append(&self.console(name), &line);
        print!("{line}");
        Ok(())
    }
}

impl Provisioner for VmProvisioner {
    fn ensure(
        &self,
        id: &WorkloadId,
        spec: &WorkloadSpec,
    ) -> Result<BTreeMap<String, String>, WorkloadError> {
        let WorkloadSpec::Vm(v) = spec else {
            return Err(WorkloadError(format!("{} is not a vm", spec.kind())));
        };
        let name = id.node_name();
        let (machine, netns) = self.prepare(id, v)?;
        let _op = self.op();
        let pid = match process::running(&machine.run_dir) {
            Some(pid) if process::same_machine(&machine) => pid,
            running => {
                if running.is_some() {
                    self.stop(&name)?;
                }
                process::start(Path::new(QEMU), &machine, &netns).map_err(err)?
            }
        };
        let info = BTreeMap::from([
            ("ip".to_string(), v.ip.to_string()),
            ("mac".to_string(), machine.mac.clone()),
            ("accel".to_string(), machine.accel.as_str().to_string()),
            ("pid".to_string(), pid.to_string()),
        ]);
        let mut watched = self.watched();
        let same = watched
            .get(&name)
            .is_some_and(|w| w.pid == pid && w.machine == machine);
        if !same {
            watched.insert(
                name,
                Watched {
                    machine,
                    netns,
                    pid,
                    restarts: Vec::new(),
                    total_restarts: 0,
                    last_exit: None,
                    down: None,
                },
            );
        }
        Ok(info)
    }

    fn remove(&self, id: &WorkloadId, spec: &WorkloadSpec) -> Result<(), WorkloadError> {
        let WorkloadSpec::Vm(v) = spec else {
            return Err(WorkloadError(format!("{} is not a vm", spec.kind())));
        };
        let name = id.node_name();
        let _op = self.op();
        self.watched().remove(&name);
        self.stop(&name)?;
        let net_key = WorkloadId {
            contract: id.contract,
            name: v.network.clone(),
        }
        .node_name();
        self.networks.detach_tap(&net_key, &name).map_err(err)?;
        for d in [self.dirs.run.join(&name), self.dir(&name)] {
            match std::fs::remove_dir_all(&d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err("removing", &d)(e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// What QMP says of the guest now, QEMU's pid, and what the watcher saw.
    fn live(&self, id: &WorkloadId, _: &WorkloadSpec) -> Option<serde_json::Value> {
        let name = id.node_name();
        let run_dir = self.dirs.run.join(&name);
        let pid = process::running(&run_dir);
        let status = match pid {
            Some(_) => process::status(&run_dir).unwrap_or_else(|e| e.to_string()),
            None => "stopped".into(),
        };
        let watched = self.watched();
        let w = watched.get(&name);
        Some(serde_json::json!({
            "status": status,
            "pid": pid,
            "accel": self.accel.as_str(),
            "restarts": w.map_or(0, |w| w.total_restarts),
            "last_exit": w.and_then(|w| w.last_exit.clone()),
            "down": w.and_then(|w| w.down.clone()),
        }))
    }

    /// The serial console's output.
    fn logs(
        &self,
        id: &WorkloadId,
        _: &WorkloadSpec,
        from: u64,
        max: u64,
    ) -> Option<Result<LogChunk, WorkloadError>> {
        Some(
            cellos_provision::logfile::read(&self.console(&id.node_name()), from, max, LOG_KEEP)
                .map_err(err),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_sizes_come_from_the_header() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("i");
        let mut head = vec![0u8; 64];
        head[..4].copy_from_slice(b"QFI\xfb");
        head[24..32].copy_from_slice(&(5u64 << 30).to_be_bytes());
        std::fs::write(&path, &head).expect("write");
        assert_eq!(qcow2_size(&path).expect("size"), 5 << 30);
        std::fs::write(&path, vec![0u8; 64]).expect("write");
        let e = qcow2_size(&path).expect_err("not qcow2");
        assert!(e.0.contains("not qcow2"), "{}", e.0);
    }
}
