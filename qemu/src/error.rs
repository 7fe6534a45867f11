//! The crate's error type. Failures while a guest runs carry the tail of
//! its serial console, so a failed test shows what the guest was doing.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("invalid VM config: {0}")]
    Config(String),
    #[error(transparent)]
    Qmp(#[from] cellos_vm::qmp::QmpError),
    #[error("guest shell ({socket}): {reason} (is the node booted with cellos.debug?)")]
    Shell { socket: PathBuf, reason: String },
    #[error("timed out after {timeout:?} waiting for {pattern} on the console; last console lines:\n{tail}")]
    Timeout {
        pattern: String,
        timeout: Duration,
        tail: String,
    },
    #[error("QEMU exited ({status}) while waiting for {pattern}; QEMU said: {qemu_log}\nlast console lines:\n{tail}")]
    Exited {
        status: ExitStatus,
        pattern: String,
        qemu_log: String,
        tail: String,
    },
    #[error("QEMU still running after {timeout:?}; last console lines:\n{tail}")]
    StillRunning { timeout: Duration, tail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for mapping an I/O error onto a path: `.map_err(io("read", path))`.
pub(crate) fn io<'a>(
    what: &'static str,
    path: impl Into<PathBuf> + 'a,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.into(),
        source,
    }
}
