//! The external commands and host probes of this crate: `qemu-img`,
//! `qemu-system-x86_64` and whether /dev/kvm can be opened. Everything else
//! is argv building and file tailing, testable without QEMU.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::error::{io, Error, Result};

pub(crate) const QEMU: &str = "qemu-system-x86_64";

/// `qemu-img create -f qcow2 PATH SIZE`: a sparse disk that grows on write.
pub(crate) fn create_qcow2(path: &Path, size: u64) -> Result<()> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size.to_string());
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Starts QEMU with `args`; its stdout and stderr go to `log`.
pub(crate) fn spawn_qemu(args: &[String], log: &Path) -> Result<Child> {
    let out = File::create(log).map_err(io("cannot create", log))?;
    let err = out.try_clone().map_err(io("cannot reopen", log))?;
    Command::new(QEMU)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| Error::Spawn {
            command: QEMU.to_string(),
            source,
        })
}

/// Whether KVM can be used: /dev/kvm exists and opens read-write.
pub(crate) fn kvm_usable() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}
