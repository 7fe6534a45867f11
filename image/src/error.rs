//! The one error type of the crate: every variant names what failed and on what.

use std::path::PathBuf;

/// Everything `cellos image build` can fail on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse manifest {path}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
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
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot resolve kernel package {package}: {reason}")]
    KernelPackage { package: String, reason: String },
    #[error("Debian package {package}: {reason}")]
    Package { package: String, reason: String },
    #[error("{path} in the package unpacked at {root}: {reason}")]
    PackageFile {
        root: PathBuf,
        path: String,
        reason: String,
    },
    #[error("will not write to {device}: it {reason}")]
    Flash { device: PathBuf, reason: String },
    #[error("USB image {path}: {reason}")]
    Usb { path: PathBuf, reason: String },
    #[error("kernel tree {path}: {reason}")]
    KernelTree { path: PathBuf, reason: String },
    #[error(
        "kernel module `{module}` (set `{set}`) is neither a module nor built into kernel {kernel}"
    )]
    UnknownModule {
        module: String,
        set: String,
        kernel: String,
    },
    /// depmod's index of the kernel tree could not be read.
    #[error(transparent)]
    ModuleIndex(#[from] cellos_boot::modules::ReadError),
    #[error("[load] names module `{0}`, which no [modules] set takes into the image")]
    LoadNotInImage(String),
    #[error("cannot parse ELF {path}: {reason}")]
    Elf { path: PathBuf, reason: String },
    #[error("library {library} needed by {needed_by} not found in {searched}")]
    LibraryNotFound {
        library: String,
        needed_by: PathBuf,
        searched: String,
    },
    #[error("image path {path}: {reason}")]
    ImagePath { path: String, reason: String },
    #[error("invalid kernel cmdline: {0}")]
    Cmdline(String),
    #[error("no cache directory: set XDG_CACHE_HOME or HOME, or pass one")]
    NoCacheDir,
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
