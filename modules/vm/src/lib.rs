//! cellos-vm: the node's virtual machines, each a QEMU process of its own.
//!
//! A VM must outlive the cellosd that started it (an upgrade or a crash of cellosd
//! must not reboot a tenant's machine), so QEMU is started with `-daemonize`: its
//! starter returns once the machine is set up, and the running QEMU is an orphan
//! the node's init adopts and, when it ends, reaps. Everything cellosd needs to find
//! it again lives in the VM's run directory: the pid file, the QMP socket it is
//! driven through ([`qmp`], the same client the test harness uses) and the exact
//! argument list it was started with, which a later cellosd compares to decide
//! whether the running machine is the one wanted ([`process`]).
//!
//! [`machine`] turns what to run into QEMU's arguments (a pure function, tested on
//! its own); [`drive`] writes the cloud-init NoCloud config drive every VM gets
//! (hostname, address, ssh keys); [`fetch`] downloads kernels, initrds and disk
//! images into a cache keyed by their SHA-256, trusting no byte before its hash is
//! checked. The tap device the VM's NIC uses is the network crate's
//! (`cellos_network::Networks::attach_tap`).

pub mod drive;
pub mod fetch;
pub mod machine;
pub mod process;
pub mod qmp;
mod sys;

pub use machine::{Accel, Boot, Machine};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config drive {}: {reason}", path.display())]
    Drive {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("fetching {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("QEMU did not start ({status}): {log}")]
    Start { status: String, log: String },
    #[error(transparent)]
    Qmp(#[from] qmp::QmpError),
}

/// `.map_err(io("reading", path))`.
pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a std::path::Path,
) -> impl Fn(std::io::Error) -> VmError + 'a {
    move |source| VmError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}
