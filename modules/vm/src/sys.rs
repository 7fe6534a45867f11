//! The crate's boundary with the system: starting QEMU inside a network namespace,
//! and looking at and signalling a process that is not our child (a daemonized
//! QEMU belongs to init).

use std::fs::File;
use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Runs `program args` with its network namespace switched to the one bind-mounted
/// at `netns` and its stderr appended to `log`, and waits for it: with
/// `-daemonize`, QEMU's first process exits once the machine runs.
pub fn run_in_netns(
    program: &Path,
    args: &[String],
    netns: &Path,
    log: &Path,
) -> std::io::Result<ExitStatus> {
    let ns = File::open(netns)?;
    let err = File::options().create(true).append(true).open(log)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    // SAFETY: between fork and exec the child only calls setns(2), which is
    // async-signal-safe, on a descriptor opened before the fork; it allocates nothing
    // and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    cmd.status()
}

/// Whether `pid` is a live process (not gone, not a zombie) whose command line
/// contains `marker`: a pid the kernel gave to some other process since is not ours.
pub fn alive(pid: i32, marker: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.trim_start().chars().next());
    if matches!(state, None | Some('Z') | Some('X')) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(marker))
        .unwrap_or(false)
}

/// Sends `signal` to `pid`; a process already gone is fine.
pub fn signal(pid: i32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid), signal);
}
