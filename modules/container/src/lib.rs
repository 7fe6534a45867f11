//! cellos-container, image side: OCI images pulled from a registry into a
//! content-addressed cache, and their layers unpacked into root filesystems.
//!
//! Inputs are an image reference from a tenant's deployment and a registry that may
//! be hostile; outputs are a verified [`Image`] (its config: entrypoint, cmd, env,
//! working dir, user) and a directory tree per layer chain that a container's root
//! is snapshotted from. The run side (runtime spec, cgroups) builds on these.
//!
//! What it must never do: trust a byte it did not hash (every blob is checked
//! against its digest before it enters the cache, layers again against the
//! config's diff ids while they are unpacked); hold a layer in memory or let a
//! registry fill the disk (every fetch has a size cap and layers stream to disk);
//! write outside a root while unpacking (every path is resolved under the root's
//! fd by the kernel, see [`sys`]); create a device node or keep a setuid bit.
//!
//! The parts: [`reference`] parses image references, [`cache`] is the blob store,
//! [`pull`] fetches images with `oci-client`, [`unpack`] applies one layer,
//! [`layers`] composes layers into snapshots through the [`sys::Snapshots`] trait
//! (btrfs subvolumes on a node, directory copies in host tests), and [`spec`]
//! builds the OCI runtime spec a container runs under, which [`crun`] runs. With the
//! `testing` feature, `testing` starts a registry on the host and pushes images
//! built from bytes (the tests' and `cellos bench container`'s).

pub mod cache;
pub mod crun;
pub mod layers;
pub mod pull;
pub mod reference;
pub mod spec;
pub mod sys;
#[cfg(feature = "testing")]
pub mod testing;
pub mod unpack;

use std::path::PathBuf;

pub use cache::BlobCache;
pub use layers::LayerStore;
pub use pull::{
    Compression, Credentials, Image, ImageConfig, Layer, Limits, PullOptions, PullPolicy, Puller,
};
pub use reference::{Digest, ImageRef};
pub use unpack::UnpackLimits;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("digest {digest:?}: {reason}")]
    BadDigest { digest: String, reason: String },
    #[error("registry: {op} {reference}")]
    Registry {
        op: &'static str,
        reference: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("registry: {op} {url}")]
    Http {
        op: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what} {digest}: content hashes to {actual}")]
    DigestMismatch {
        what: &'static str,
        digest: Digest,
        actual: Digest,
    },
    #[error("{what} {digest}: larger than the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        digest: String,
        limit: u64,
    },
    #[error("{what} {digest}: {reason}")]
    BadImage {
        what: &'static str,
        digest: String,
        reason: String,
    },
    #[error("{reference}: the image index has no linux/amd64 manifest")]
    NoPlatform { reference: String },
    #[error("{reference} is not in the cache and the pull policy forbids the registry")]
    NotCached { reference: String },
    #[error("layer {layer}, entry {entry:?}: {reason}")]
    Refused {
        layer: Digest,
        entry: String,
        reason: String,
    },
    #[error("layer {layer}, entry {entry:?}: {op}")]
    Unpack {
        layer: Digest,
        entry: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("runtime spec: {0}")]
    Spec(String),
    #[error("cannot {op} container {id}: {reason}")]
    Runtime {
        op: &'static str,
        id: String,
        reason: String,
    },
    #[error("{op} {path}")]
    Snapshot {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: cellos_storage::StorageError,
    },
}

/// A `map_err` closure for an I/O error on `path`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> ContainerError {
    let path = path.into();
    move |source| ContainerError::Io { op, path, source }
}
