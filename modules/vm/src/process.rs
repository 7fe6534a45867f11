//! A VM's QEMU process: started daemonized, found again by a later cellosd, stopped
//! gracefully.
//!
//! The run directory holds the pid file, the QMP socket, the argument list QEMU was
//! started with and QEMU's own messages (`qemu.log`). A later cellosd finds the VM
//! by its pid file, checks that the process is that QEMU (its command line names
//! the QMP socket of this directory), and compares the argument list with the one it
//! would use now: equal means the running VM is the wanted one and is left alone.
//!
//! Stopping asks first: QMP `system_powerdown` presses the ACPI power button and
//! the guest shuts down cleanly; a guest that ignores it gets SIGTERM (QEMU exits
//! at once, like pulling the plug), and a QEMU that ignores that, SIGKILL.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::machine::{argv, pid_file, qmp_socket, Machine};
use crate::{io, qmp, sys, VmError};

/// How a stop went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The guest powered off when asked.
    PoweredOff,
    /// QEMU ended on SIGTERM.
    Terminated,
    /// QEMU ended on SIGKILL.
    Killed,
    /// It was not running.
    NotRunning,
}

fn argv_file(run_dir: &Path) -> std::path::PathBuf {
    run_dir.join("argv")
}

/// QEMU's messages while it starts.
pub fn log_file(run_dir: &Path) -> std::path::PathBuf {
    run_dir.join("qemu.log")
}

/// The marker a VM's QEMU carries in its command line.
fn marker(run_dir: &Path) -> String {
    qmp_socket(run_dir).display().to_string()
}

/// The pid of the VM whose run directory is `run_dir`, if its QEMU runs.
pub fn running(run_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(run_dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    sys::alive(pid, &marker(run_dir)).then_some(pid)
}

/// Whether the VM in `m.run_dir` was started with exactly `m`'s arguments.
pub fn same_machine(m: &Machine) -> bool {
    std::fs::read_to_string(argv_file(&m.run_dir)).is_ok_and(|a| a == argv(m).join("\n"))
}

/// Starts `m` with the QEMU at `qemu`, inside the network namespace at `netns` (where
/// its tap device is); returns QEMU's pid. The machine must not be running.
pub fn start(qemu: &Path, m: &Machine, netns: &Path) -> Result<i32, VmError> {
    let dir = &m.run_dir;
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    for stale in [pid_file(dir), qmp_socket(dir), log_file(dir)] {
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing", &stale)(e))
            }
            _ => {}
        }
    }
    let args = argv(m);
    let file = argv_file(dir);
    std::fs::write(&file, args.join("\n")).map_err(io("writing", &file))?;
    let log = log_file(dir);
    let status = sys::run_in_netns(qemu, &args, netns, &log).map_err(io("running", qemu))?;
    let said = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    if !status.success() {
        return Err(VmError::Start {
            status: status.to_string(),
            log: said(),
        });
    }
    running(dir).ok_or_else(|| VmError::Start {
        status: "no QEMU runs after it started".into(),
        log: said(),
    })
}

/// Waits up to `limit` for `pid` to be gone.
fn gone_within(pid: i32, marker: &str, limit: Duration) -> bool {
    let t = Instant::now();
    loop {
        if !sys::alive(pid, marker) {
            return true;
        }
        if t.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the VM in `run_dir`: the power button, up to `powerdown` for the guest to
/// power off, then SIGTERM and up to `term`, then SIGKILL.
pub fn stop(run_dir: &Path, powerdown: Duration, term: Duration) -> Result<Stopped, VmError> {
    let Some(pid) = running(run_dir) else {
        return Ok(Stopped::NotRunning);
    };
    let m = marker(run_dir);
    if qmp::execute(&qmp_socket(run_dir), "system_powerdown").is_ok()
        && gone_within(pid, &m, powerdown)
    {
        return Ok(Stopped::PoweredOff);
    }
    sys::signal(pid, Signal::SIGTERM);
    if gone_within(pid, &m, term) {
        return Ok(Stopped::Terminated);
    }
    sys::signal(pid, Signal::SIGKILL);
    if gone_within(pid, &m, Duration::from_secs(10)) {
        return Ok(Stopped::Killed);
    }
    Err(VmError::Start {
        status: format!("QEMU (pid {pid}) is still there after SIGKILL"),
        log: String::new(),
    })
}

/// What QMP says of the guest (`running`, `paused`, `shutdown`...).
pub fn status(run_dir: &Path) -> Result<String, VmError> {
    let v = qmp::execute(&qmp_socket(run_dir), "query-status")?;
    Ok(v.get("status")
        .and_then(|s| s.as_str())
        .unwrap_or("unknown")
        .to_string())
}
