//! The content-addressed blob cache: one directory (on a node, on the first SSD
//! pool) shared by every tenant, so an image pulled once is pulled once per node.
//!
//! Layout under the root:
//! - `blobs/sha256/<hex>`: a blob whose content hashes to its name. A blob gets
//!   there only through [`BlobWriter::finish`]: written to `tmp/`, hashed while it
//!   is written, fsynced, and renamed only if the digest matches.
//! - `images/<hex>`: for a manifest digest, the digests of every blob the image
//!   needs (index, manifest, config, layers), one per line.
//! - `refs/<hex of sha256(reference)>`: the reference and the manifest digest it
//!   resolved to, so a node can start an image again without the registry.
//! - `inuse/<hex>`: the caller marked this image in use; its blobs are never evicted.
//!
//! Blob files' mtimes are their last use, which is what eviction orders by (LRU).
//! [`BlobCache::open`] removes what a crash left: `tmp/`, and any blob whose
//! content no longer matches its name.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest as _, Sha256};

use crate::reference::{Digest, ImageRef};
use crate::{io_err, ContainerError};

const BLOBS: &str = "blobs/sha256";
const TMP: &str = "tmp";
const IMAGES: &str = "images";
const REFS: &str = "refs";
const INUSE: &str = "inuse";

/// The cache. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct BlobCache {
    root: PathBuf,
    limit: u64,
    /// Blobs an unfinished pull has fetched or is about to use: never evicted.
    pins: Arc<Mutex<HashMap<Digest, usize>>>,
}

/// Holds blobs out of eviction while a pull that needs them runs.
#[derive(Debug)]
pub(crate) struct Pin {
    pins: Arc<Mutex<HashMap<Digest, usize>>>,
    held: Vec<Digest>,
}

impl Pin {
    pub(crate) fn add(&mut self, digest: &Digest) {
        let mut pins = self.pins.lock().unwrap_or_else(PoisonError::into_inner);
        *pins.entry(digest.clone()).or_insert(0) += 1;
        self.held.push(digest.clone());
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().unwrap_or_else(PoisonError::into_inner);
        for d in self.held.drain(..) {
            if let Some(n) = pins.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(&d);
                }
            }
        }
    }
}

impl BlobCache {
    /// Opens (creating it if needed) the cache at `root`, holding at most `limit`
    /// bytes of blobs once [`BlobCache::evict`] has run. Removes temp files and every
    /// blob that is not a regular file whose content matches its name.
    pub fn open(root: impl Into<PathBuf>, limit: u64) -> Result<Self, ContainerError> {
        let root = root.into();
        let tmp = root.join(TMP);
        match fs::remove_dir_all(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &tmp)(e)),
        }
        for dir in [BLOBS, TMP, IMAGES, REFS, INUSE] {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        let cache = BlobCache {
            root,
            limit,
            pins: Arc::default(),
        };
        for (name, path, _) in cache.blob_files()? {
            if !cache.blob_is_sound(&name, &path)? {
                tracing::warn!(blob = %path.display(), "removing a damaged blob from the cache");
                fs::remove_file(&path).map_err(io_err("removing", &path))?;
            }
        }
        Ok(cache)
    }

    fn blob_is_sound(&self, name: &str, path: &Path) -> Result<bool, ContainerError> {
        let Ok(digest) = Digest::new(&format!("sha256:{name}")) else {
            return Ok(false);
        };
        let meta = fs::symlink_metadata(path).map_err(io_err("looking at", path))?;
        if !meta.is_file() {
            return Ok(false);
        }
        let mut f = File::open(path).map_err(io_err("opening", path))?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).map_err(io_err("reading", path))?;
        Ok(Digest::from_hasher(h) == digest)
    }

    /// Every file in `blobs/sha256`: its name, path and metadata.
    fn blob_files(&self) -> Result<Vec<(String, PathBuf, fs::Metadata)>, ContainerError> {
        let dir = self.root.join(BLOBS);
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(io_err("looking at", &path))?;
            out.push((entry.file_name().to_string_lossy().into_owned(), path, meta));
        }
        Ok(out)
    }

    /// Where the blob is (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(BLOBS).join(digest.hex())
    }

    /// Whether the blob is cached; if it is, it counts as used now.
    pub fn contains(&self, digest: &Digest) -> bool {
        let path = self.blob_path(digest);
        if !path.is_file() {
            return false;
        }
        touch(&path);
        true
    }

    /// Opens a cached blob for reading (and counts it as used now).
    pub fn open_blob(&self, digest: &Digest) -> Result<File, ContainerError> {
        let path = self.blob_path(digest);
        let f = File::open(&path).map_err(io_err("opening", &path))?;
        touch(&path);
        Ok(f)
    }

    /// Reads a small cached blob (a manifest or config) of at most `max` bytes.
    pub fn read(&self, digest: &Digest, max: u64) -> Result<Vec<u8>, ContainerError> {
        let f = self.open_blob(digest)?;
        let mut buf = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(io_err("reading", self.blob_path(digest)))?;
        if buf.len() as u64 > max {
            return Err(ContainerError::TooLarge {
                what: "cached blob",
                digest: digest.to_string(),
                limit: max,
            });
        }
        Ok(buf)
    }

    /// Starts writing the blob `digest`, refusing more than `max` bytes.
    pub(crate) fn writer(
        &self,
        digest: &Digest,
        what: &'static str,
        max: u64,
    ) -> Result<BlobWriter, ContainerError> {
        let tmp = tempfile::Builder::new()
            .prefix(digest.hex())
            .tempfile_in(self.root.join(TMP))
            .map_err(io_err("creating a temp file in", self.root.join(TMP)))?;
        Ok(BlobWriter {
            dest: self.blob_path(digest),
            digest: digest.clone(),
            what,
            max,
            written: 0,
            hasher: Sha256::new(),
            tmp,
        })
    }

    /// Stores a small blob held in memory (checked against `digest` like any other).
    pub(crate) fn put(
        &self,
        digest: &Digest,
        what: &'static str,
        bytes: &[u8],
    ) -> Result<PathBuf, ContainerError> {
        let mut w = self.writer(digest, what, bytes.len() as u64)?;
        w.write(bytes)?;
        w.finish()
    }

    /// A pin that keeps blobs from eviction until it is dropped.
    pub(crate) fn pin(&self) -> Pin {
        Pin {
            pins: self.pins.clone(),
            held: Vec::new(),
        }
    }

    /// Records which blobs the image with this manifest digest needs.
    pub(crate) fn record_image(
        &self,
        manifest: &Digest,
        blobs: &[Digest],
    ) -> Result<(), ContainerError> {
        let text: String = blobs.iter().map(|d| format!("{d}\n")).collect();
        write_atomic(
            &self.root.join(IMAGES).join(manifest.hex()),
            text.as_bytes(),
        )
    }

    /// The blobs an image recorded with [`BlobCache::record_image`] needs.
    pub(crate) fn image_blobs(
        &self,
        manifest: &Digest,
    ) -> Result<Option<Vec<Digest>>, ContainerError> {
        let path = self.root.join(IMAGES).join(manifest.hex());
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        text.lines()
            .map(Digest::new)
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// Remembers that `reference` resolved to `manifest`.
    pub(crate) fn record_ref(
        &self,
        reference: &ImageRef,
        manifest: &Digest,
    ) -> Result<(), ContainerError> {
        let text = format!("{reference}\n{manifest}\n");
        write_atomic(&self.ref_path(reference), text.as_bytes())
    }

    /// The manifest digest `reference` last resolved to, if the cache knows it.
    pub fn lookup_ref(&self, reference: &ImageRef) -> Result<Option<Digest>, ContainerError> {
        let path = self.ref_path(reference);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        let mut lines = text.lines();
        // The file is named by a hash of the reference: check it is this one.
        if lines.next() != Some(reference.to_string().as_str()) {
            return Ok(None);
        }
        lines.next().map(Digest::new).transpose()
    }

    fn ref_path(&self, reference: &ImageRef) -> PathBuf {
        self.root
            .join(REFS)
            .join(Digest::of(reference.to_string().as_bytes()).hex())
    }

    /// Marks the image with this manifest digest in use (its blobs are kept) or not.
    pub fn set_in_use(&self, manifest: &Digest, in_use: bool) -> Result<(), ContainerError> {
        let path = self.root.join(INUSE).join(manifest.hex());
        if in_use {
            write_atomic(&path, b"")
        } else {
            match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("removing", &path)(e)),
            }
        }
    }

    /// Bytes of blobs in the cache.
    pub fn usage(&self) -> Result<u64, ContainerError> {
        Ok(self.blob_files()?.iter().map(|(_, _, m)| m.len()).sum())
    }

    /// Removes least recently used blobs that no in-use image needs and no pull
    /// holds until the cache is within its limit; returns the bytes freed. What is
    /// still over the limit then is in use.
    pub fn evict(&self) -> Result<u64, ContainerError> {
        let mut files = self.blob_files()?;
        let mut total: u64 = files.iter().map(|(_, _, m)| m.len()).sum();
        if total <= self.limit {
            return Ok(0);
        }
        let mut keep: HashSet<String> = HashSet::new();
        let inuse = self.root.join(INUSE);
        for entry in fs::read_dir(&inuse).map_err(io_err("listing", &inuse))? {
            let entry = entry.map_err(io_err("listing", &inuse))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(manifest) = Digest::new(&format!("sha256:{name}")) else {
                continue;
            };
            keep.insert(name);
            for d in self.image_blobs(&manifest)?.unwrap_or_default() {
                keep.insert(d.hex().to_string());
            }
        }
        {
            let pins = self.pins.lock().unwrap_or_else(PoisonError::into_inner);
            keep.extend(pins.keys().map(|d| d.hex().to_string()));
        }
        files.retain(|(name, _, _)| !keep.contains(name));
        files.sort_by_key(|(_, _, m)| m.modified().ok());
        let mut freed = 0;
        for (_, path, meta) in files {
            if total <= self.limit {
                break;
            }
            fs::remove_file(&path).map_err(io_err("evicting", &path))?;
            tracing::info!(blob = %path.display(), bytes = meta.len(), "evicted from the image cache");
            total -= meta.len();
            freed += meta.len();
        }
        Ok(freed)
    }
}

/// A blob being written; it enters the cache only through [`BlobWriter::finish`].
/// Dropping it removes the temp file.
#[derive(Debug)]
pub(crate) struct BlobWriter {
    dest: PathBuf,
    digest: Digest,
    what: &'static str,
    max: u64,
    written: u64,
    hasher: Sha256,
    tmp: tempfile::NamedTempFile,
}

impl BlobWriter {
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), ContainerError> {
        self.written += bytes.len() as u64;
        if self.written > self.max {
            return Err(ContainerError::TooLarge {
                what: self.what,
                digest: self.digest.to_string(),
                limit: self.max,
            });
        }
        self.hasher.update(bytes);
        self.tmp
            .write_all(bytes)
            .map_err(io_err("writing", self.tmp.path()))
    }

    /// Checks the digest, then fsyncs and renames the blob into place.
    pub(crate) fn finish(self) -> Result<PathBuf, ContainerError> {
        let actual = Digest::from_hasher(self.hasher);
        if actual != self.digest {
            return Err(ContainerError::DigestMismatch {
                what: self.what,
                digest: self.digest,
                actual,
            });
        }
        let tmp_path = self.tmp.path().to_path_buf();
        self.tmp
            .as_file()
            .sync_all()
            .map_err(io_err("syncing", &tmp_path))?;
        self.tmp
            .persist(&self.dest)
            .map_err(|e| io_err("renaming into the cache", &tmp_path)(e.error))?;
        sync_dir(&self.dest)?;
        Ok(self.dest)
    }
}

/// Marks a file as used now (LRU order); a failure only skews eviction order.
fn touch(path: &Path) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let _ = utimensat(
        None,
        path,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::UTIME_NOW,
        UtimensatFlags::NoFollowSymlink,
    );
}

/// Writes a small file by temp file + fsync + rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ContainerError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(io_err("creating a temp file in", dir))?;
    tmp.write_all(bytes)
        .map_err(io_err("writing", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(io_err("syncing", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| io_err("renaming", path)(e.error))?;
    sync_dir(path)
}

/// Fsyncs the directory holding `path`, so a rename into it is durable.
fn sync_dir(path: &Path) -> Result<(), ContainerError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(cache: &BlobCache, bytes: &[u8]) -> Digest {
        let d = Digest::of(bytes);
        cache.put(&d, "blob", bytes).expect("put");
        d
    }

    #[test]
    fn a_blob_enters_only_with_its_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
        let d = blob(&cache, b"hello");
        assert!(cache.contains(&d));
        assert_eq!(cache.read(&d, 5).expect("read"), b"hello");
        assert!(matches!(
            cache.read(&d, 4),
            Err(ContainerError::TooLarge { .. })
        ));

        let wrong = Digest::of(b"other");
        let mut w = cache.writer(&wrong, "blob", 100).expect("writer");
        w.write(b"hello").expect("write");
        let e = w.finish().expect_err("mismatch");
        assert!(matches!(e, ContainerError::DigestMismatch { .. }), "{e}");
        assert!(!cache.contains(&wrong));
        let mut w = cache.writer(&wrong, "blob", 3).expect("writer");
        assert!(matches!(
            w.write(b"hello"),
            Err(ContainerError::TooLarge { .. })
        ));
        drop(w);
        assert_eq!(
            fs::read_dir(dir.path().join(TMP)).expect("tmp").count(),
            0,
            "temp files left"
        );
    }

    #[test]
    fn open_removes_what_a_crash_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
        let good = blob(&cache, b"good");
        let bad = blob(&cache, b"bad");
        fs::write(cache.blob_path(&bad), b"bit rot").expect("corrupt");
        fs::write(dir.path().join(TMP).join("partial"), b"half").expect("partial");
        fs::write(dir.path().join(BLOBS).join("junk"), b"x").expect("junk");
        drop(cache);
        let cache = BlobCache::open(dir.path(), 1 << 20).expect("reopen");
        assert!(cache.contains(&good));
        assert!(!cache.blob_path(&bad).exists());
        assert!(!dir.path().join(BLOBS).join("junk").exists());
        assert_eq!(fs::read_dir(dir.path().join(TMP)).expect("tmp").count(), 0);
    }

    #[test]
    fn eviction_drops_least_recently_used_blobs_not_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(dir.path(), 3100).expect("open");
        let aged = |d: &Digest, secs| {
            let t = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
            File::options()
                .write(true)
                .open(cache.blob_path(d))
                .expect("open")
                .set_modified(t)
                .expect("mtime");
        };
        let pinned = blob(&cache, &[4u8; 1000]);
        let old = blob(&cache, &[1u8; 1000]);
        let used = blob(&cache, &[2u8; 1000]);
        let manifest = blob(&cache, &[3u8; 100]);
        let newer = blob(&cache, &[5u8; 1000]);
        cache
            .record_image(&manifest, &[manifest.clone(), used.clone()])
            .expect("record");
        cache.set_in_use(&manifest, true).expect("in use");
        let mut pin = cache.pin();
        pin.add(&pinned);
        aged(&pinned, 300);
        aged(&used, 200);
        aged(&manifest, 200);
        aged(&old, 100);
        assert_eq!(cache.usage().expect("usage"), 4100);
        assert_eq!(cache.evict().expect("evict"), 1000);
        assert!(
            !cache.blob_path(&old).exists(),
            "the least recently used free blob goes"
        );
        for (d, why) in [
            (&pinned, "pinned"),
            (&used, "in use"),
            (&manifest, "in use"),
            (&newer, "recent"),
        ] {
            assert!(cache.blob_path(d).exists(), "{why} blob evicted");
        }
        assert_eq!(cache.evict().expect("evict"), 0, "within the limit");

        // Pins live with the process; in-use marks on disk.
        drop(pin);
        let cache = BlobCache::open(dir.path(), 1100).expect("reopen");
        assert_eq!(cache.evict().expect("evict"), 2000);
        assert!(cache.blob_path(&used).exists() && cache.blob_path(&manifest).exists());
        cache.set_in_use(&manifest, false).expect("not in use");
        cache.set_in_use(&manifest, false).expect("twice is fine");
        let cache = BlobCache::open(dir.path(), 0).expect("reopen");
        assert_eq!(cache.evict().expect("evict"), 1100);
    }

    #[test]
    fn refs_remember_their_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
        let r = ImageRef::parse("localhost:5000/app:v1").expect("ref");
        assert_eq!(cache.lookup_ref(&r).expect("lookup"), None);
        let d = Digest::of(b"m");
        cache.record_ref(&r, &d).expect("record");
        assert_eq!(cache.lookup_ref(&r).expect("lookup"), Some(d));
    }
}
