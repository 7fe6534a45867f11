//! The crate's boundary with the container runtime: Debian's crun, carried in the
//! node image, run as a program.
//!
//! Why crun and not youki's libcontainer as a library: a container must not be a
//! child of cellosd (killing or upgrading cellosd leaves it running), and crun gives
//! that by construction: `crun run --detach` forks the container's init and exits,
//! the init is reparented to the node's PID 1 (which reaps every orphan), and crun's
//! state directory lets a new cellosd find it again. As a library, libcontainer would
//! fork from inside cellosd's multi-threaded runtime and add its whole dependency
//! tree to cellosd; crun adds about 0.5 MB plus libraries to the image and starts a
//! container in milliseconds. The node's root is an initramfs, where pivot_root
//! fails, so containers start with `--no-pivot` (DESIGN §8).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::ContainerError;

/// What crun says about a container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct State {
    pub id: String,
    /// The container's init on the node (0 once it stopped).
    #[serde(default)]
    pub pid: i32,
    /// `created`, `running` or `stopped`.
    pub status: String,
}

impl State {
    pub fn running(&self) -> bool {
        self.status == "running"
    }
}

/// crun with its state directory.
#[derive(Debug, Clone)]
pub struct Crun {
    bin: PathBuf,
    root: PathBuf,
}

fn failed(op: &'static str, id: &str, reason: String) -> ContainerError {
    ContainerError::Runtime {
        op,
        id: id.to_string(),
        reason,
    }
}

impl Crun {
    /// `bin`: the crun program; `root`: its state directory (on a tmpfs: states
    /// describe running processes and mean nothing after a reboot).
    pub fn new(bin: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Crun {
        Crun {
            bin: bin.into(),
            root: root.into(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root).stdin(Stdio::null());
        c
    }

    /// Runs `cmd`; its stdout, or an error with what crun said.
    fn output(
        &self,
        op: &'static str,
        id: &str,
        mut cmd: Command,
    ) -> Result<String, ContainerError> {
        let out = cmd
            .output()
            .map_err(|e| failed(op, id, format!("cannot run {}: {e}", self.bin.display())))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(failed(
                op,
                id,
                format!(
                    "crun {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ))
        }
    }

    /// Starts the container `id` from `bundle` (config.json and its root) in the
    /// background; its stdout and stderr are appended to `log`. crun's own errors
    /// go to `bundle/crun.log` and come back in the error.
    pub fn run(&self, id: &str, bundle: &Path, log: &Path) -> Result<(), ContainerError> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log)
            .map_err(|e| failed("start", id, format!("cannot open {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| failed("start", id, e.to_string()))?;
        let crun_log = bundle.join("crun.log");
        let mut cmd = self.command();
        cmd.arg(format!("--log=file:{}", crun_log.display()))
            .args(["run", "--detach", "--no-pivot", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdout(out)
            .stderr(err);
        let status = cmd.status().map_err(|e| {
            failed(
                "start",
                id,
                format!("cannot run {}: {e}", self.bin.display()),
            )
        })?;
        if status.success() {
            return Ok(());
        }
        let said = std::fs::read_to_string(&crun_log).unwrap_or_default();
        let last: Vec<&str> = said.lines().rev().take(5).collect();
        Err(failed(
            "start",
            id,
            format!(
                "crun {status}: {}",
                last.into_iter().rev().collect::<Vec<_>>().join("; ")
            ),
        ))
    }

    /// The container's state; `None` if crun knows no container `id`.
    pub fn state(&self, id: &str) -> Result<Option<State>, ContainerError> {
        let mut cmd = self.command();
        cmd.args(["state", id]);
        match self.output("read the state of", id, cmd) {
            Ok(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| failed("read the state of", id, format!("crun said {json:?}: {e}"))),
            Err(ContainerError::Runtime { reason, .. })
                if reason.contains("does not exist") || reason.contains("No such file") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `signal` (e.g. `TERM`, `KILL`) to every process of the container.
    pub fn kill(&self, id: &str, signal: &str) -> Result<(), ContainerError> {
        let mut cmd = self.command();
        cmd.args(["kill", "--all", id, signal]);
        self.output("signal", id, cmd).map(drop)
    }

    /// Removes the container (killing what still runs) and its cgroup; succeeds if
    /// crun knows no container `id`.
    pub fn delete(&self, id: &str) -> Result<(), ContainerError> {
        if self.state(id)?.is_none() {
            return Ok(());
        }
        let mut cmd = self.command();
        cmd.args(["delete", "--force", id]);
        self.output("delete", id, cmd).map(drop)
    }
}
