//! Layer composition: one tree per layer *chain*, each a snapshot of its parent's
//! with the layer applied, and a container's root a writable snapshot of the top.
//!
//! A layer's tree depends on every layer under it, so trees are named by chain id
//! (as containerd does): the chain id of the bottom layer is its diff id, and of
//! each layer above `sha256(parent chain id + " " + diff id)`. Two images sharing
//! their bottom layers share those trees.
//!
//! Layout under the store's directory (on a node, on the SSD pool next to the
//! blob cache, so btrfs can snapshot between them):
//! - `layers/<chain hex>`: a finished layer tree; never written after it is made.
//! - `tmp/<n>`: a tree being made, renamed into `layers/` or `roots/` when done;
//!   what a crash leaves here is removed when the store is opened.
//! - `roots/<name>`: a container's root.
//!
//! Every step is idempotent: a tree that exists is reused, so a crash at any point
//! converges on the next call.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::BlobCache;
use crate::pull::Image;
use crate::reference::Digest;
use crate::sys::Snapshots;
use crate::unpack::{apply_layer, UnpackLimits};
use crate::{io_err, ContainerError};

const LAYERS: &str = "layers";
const ROOTS: &str = "roots";
const SCRATCH: &str = "tmp";

/// Numbers scratch trees, so that concurrent builds never share one.
static SCRATCH_SEQ: AtomicU64 = AtomicU64::new(0);

/// Layer trees and container roots in one directory.
pub struct LayerStore<S> {
    dir: PathBuf,
    snapshots: S,
    limits: UnpackLimits,
}

/// The chain ids of an image's layers, bottom first.
pub fn chain_ids(image: &Image) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        let id = match out.last() {
            None => layer.diff_id.clone(),
            Some(parent) => Digest::of(format!("{parent} {}", layer.diff_id).as_bytes()),
        };
        out.push(id);
    }
    out
}

impl<S: Snapshots> LayerStore<S> {
    pub fn open(
        dir: impl Into<PathBuf>,
        snapshots: S,
        limits: UnpackLimits,
    ) -> Result<Self, ContainerError> {
        let dir = dir.into();
        for sub in [LAYERS, ROOTS, SCRATCH] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        let store = LayerStore {
            dir,
            snapshots,
            limits,
        };
        let scratch = store.dir.join(SCRATCH);
        for entry in fs::read_dir(&scratch).map_err(io_err("listing", &scratch))? {
            let entry = entry.map_err(io_err("listing", &scratch))?;
            store.snapshots.delete(&entry.path())?;
        }
        Ok(store)
    }

    fn layer_path(&self, chain: &Digest) -> PathBuf {
        self.dir.join(LAYERS).join(chain.hex())
    }

    /// Makes (or finds) the tree of every layer of `image`, whose blobs are in
    /// `cache`; returns the top one (an empty tree for an image without layers).
    pub fn prepare(&self, image: &Image, cache: &BlobCache) -> Result<PathBuf, ContainerError> {
        let mut parent: Option<PathBuf> = None;
        let chains = chain_ids(image);
        if chains.is_empty() {
            let empty = self.layer_path(&Digest::of(b""));
            if !empty.exists() {
                self.build(&empty, None, |_| Ok(()))?;
            }
            return Ok(empty);
        }
        for (layer, chain) in image.layers.iter().zip(&chains) {
            let path = self.layer_path(chain);
            if !path.exists() {
                self.build(&path, parent.as_deref(), |tree| {
                    let blob = cache.open_blob(&layer.digest)?;
                    apply_layer(tree, layer, std::io::BufReader::new(blob), &self.limits)
                        .map(|_| ())
                })?;
            }
            parent = Some(path);
        }
        Ok(parent.unwrap_or_default())
    }

    /// Makes `path` as a snapshot of `parent` (or empty) changed by `apply`, in a
    /// scratch tree renamed into place only when `apply` succeeded.
    fn build(
        &self,
        path: &Path,
        parent: Option<&Path>,
        apply: impl FnOnce(&Path) -> Result<(), ContainerError>,
    ) -> Result<(), ContainerError> {
        let seq = SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed);
        let scratch = self
            .dir
            .join(SCRATCH)
            .join(format!("{}-{seq}", std::process::id()));
        self.snapshots.delete(&scratch)?;
        match parent {
            Some(p) => self.snapshots.snapshot(p, &scratch)?,
            None => self.snapshots.create(&scratch)?,
        }
        let done = apply(&scratch)
            .and_then(|()| fs::rename(&scratch, path).map_err(io_err("renaming into place", path)));
        match done {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(cleanup) = self.snapshots.delete(&scratch) {
                    tracing::warn!(tree = %scratch.display(), error = %cleanup, "could not remove a scratch tree");
                }
                // A concurrent build of the same tree finished first: use it.
                if path.exists() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Where the root named `name` is.
    pub fn root_path(&self, name: &str) -> Result<PathBuf, ContainerError> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !name.starts_with('.');
        if !ok {
            return Err(ContainerError::Io {
                op: "naming a container root",
                path: PathBuf::from(name),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "1 to 128 of A-Z a-z 0-9 - _ . not starting with '.'",
                ),
            });
        }
        Ok(self.dir.join(ROOTS).join(name))
    }

    /// A writable root named `name` from the top layer tree `top` (from
    /// [`LayerStore::prepare`]); one that exists is returned as it is.
    pub fn create_root(&self, name: &str, top: &Path) -> Result<PathBuf, ContainerError> {
        let root = self.root_path(name)?;
        if !root.exists() {
            self.build(&root, Some(top), |_| Ok(()))?;
        }
        Ok(root)
    }

    /// Removes a container's root; one that is not there is already removed.
    pub fn remove_root(&self, name: &str) -> Result<(), ContainerError> {
        self.snapshots.delete(&self.root_path(name)?)
    }

    /// Removes layer trees that none of `keep` (images still wanted) needs.
    pub fn prune(&self, keep: &[&Image]) -> Result<usize, ContainerError> {
        let wanted: std::collections::HashSet<String> = keep
            .iter()
            .flat_map(|i| chain_ids(i))
            .map(|c| c.hex().to_string())
            .collect();
        let dir = self.dir.join(LAYERS);
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !wanted.contains(&name) {
                self.snapshots.delete(&entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::DirCopySnapshots;

    #[test]
    fn opening_removes_scratch_trees_a_crash_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            LayerStore::open(dir.path(), DirCopySnapshots, UnpackLimits::default()).expect("open");
        let top = store.dir.join(LAYERS).join("top");
        store
            .build(&top, None, |t| {
                fs::write(t.join("f"), "x").map_err(io_err("writing", t))
            })
            .expect("build");
        fs::create_dir_all(dir.path().join("tmp/123-4/half")).expect("leftover");
        let root = store.create_root("c1", &top).expect("root");
        let store = LayerStore::open(dir.path(), DirCopySnapshots, UnpackLimits::default())
            .expect("reopen");
        assert_eq!(
            fs::read_dir(store.dir.join(SCRATCH)).expect("tmp").count(),
            0
        );
        assert_eq!(fs::read_to_string(root.join("f")).expect("root kept"), "x");
        assert!(store.root_path("../x").is_err() && store.root_path(".x").is_err());
    }
}
