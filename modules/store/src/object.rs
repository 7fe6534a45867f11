//! Objects erasure-coded across shard backends: put, get, check, repair.
//!
//! put: the object is cut into segments; each segment is compressed (zstd, kept
//! raw when that does not help), sealed with the object's key (a subkey of the
//! owner's key and a random object id; the nonce is the segment number) and
//! Reed-Solomon coded into k+m shards, shard i going to backend `placement[i]`.
//! Backends are distinct (by backend, node or farm, as configured) so losing one
//! loses at most one shard of each segment. The metadata (placement, sizes, a
//! BLAKE3 hash of every shard) is sealed and coded k+m the same way under a key
//! derived from the object's name, with a generation number so that after a
//! repair the newest copy wins.
//!
//! get reads the metadata from any k backends, then each segment's data shards,
//! falling back to parity when a shard is missing or fails its hash; decode,
//! open, decompress. Wrong bytes can never come back: a bad shard fails its hash,
//! and a bad segment fails the AEAD tag.
//!
//! repair finds shards that are missing, corrupt or on a backend that does not
//! answer, rebuilds them from k good ones and writes them to their backend, or to
//! a healthy replacement backend when theirs is down, then writes new metadata.

mod metadata;
mod segment;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;

use self::metadata::{Meta, SegMeta};
use self::segment::{hash, object_key, open_segment, seal_segment, shard_key, Obj, Slot};
use crate::backend::{Backend, RespBackend};
use crate::cipher::Cipher;
use crate::config::{BackendSpec, Distinct, StoreConfig, MAX_SEGMENT};
use crate::ec::Ec;

/// Segments coded or fetched at once.
pub(crate) const PIPELINE: usize = 4;
/// Bytes of BLAKE3 kept to check a shard.
const HASH_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store configuration: {0}")]
    Config(String),
    #[error("{healthy} healthy backends with distinct {what}s, {need} needed (k + m)")]
    NotEnoughBackends {
        need: usize,
        healthy: usize,
        what: &'static str,
    },
    #[error("{op} shard {key} on {backend}: {message}")]
    Backend {
        op: &'static str,
        key: String,
        backend: String,
        message: String,
    },
    #[error("object {0:?} not found on any backend")]
    NotFound(String),
    #[error("object {name:?}: not found on the backends that answered, and {unreachable} did not answer")]
    Unavailable { name: String, unreachable: usize },
    #[error("object {name:?}: metadata lost: {have} of {need} metadata shards readable")]
    MetaLost {
        name: String,
        have: usize,
        need: usize,
    },
    #[error(
        "object {name:?} segment {segment}: {have} of {need} shards intact: too many shards lost"
    )]
    SegmentLost {
        name: String,
        segment: usize,
        have: usize,
        need: usize,
    },
    #[error("object {name:?} segment {segment}: {reason}")]
    Corrupt {
        name: String,
        segment: usize,
        reason: String,
    },
    #[error("object {name:?}: metadata is inconsistent: {reason}")]
    BadMeta { name: String, reason: String },
    #[error("internal task failed: {0}")]
    Task(String),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What `put` did.
#[derive(Debug, Clone)]
pub struct PutReport {
    pub size: u64,
    pub segments: usize,
    pub stored_bytes: u64,
    pub placement: Vec<String>,
}

/// One shard position of an object, across all segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardHealth {
    pub backend: String,
    pub reachable: bool,
    pub ok: usize,
    pub missing: usize,
    pub corrupt: usize,
}

/// What `check` found.
#[derive(Debug, Clone)]
pub struct Health {
    pub name: String,
    pub size: u64,
    pub k: usize,
    pub m: usize,
    pub segments: usize,
    pub shards: Vec<ShardHealth>,
    /// Fewest intact shards of any segment: >= k readable, == k + m full redundancy.
    pub min_intact: usize,
}

impl Health {
    pub fn healthy(&self) -> bool {
        self.min_intact == self.k + self.m
    }

    pub fn readable(&self) -> bool {
        self.min_intact >= self.k
    }
}

/// What `repair` did.
#[derive(Debug, Clone, Default)]
pub struct RepairReport {
    pub rebuilt: usize,
    /// Shard positions moved: (index, from backend, to backend).
    pub moved: Vec<(usize, String, String)>,
    /// Shard positions left without a healthy backend.
    pub unplaced: Vec<usize>,
}

struct Inner<B> {
    cfg: StoreConfig,
    ids: Vec<String>,
    backends: Vec<B>,
}

impl<B: Backend> Inner<B> {
    /// Writes `value` under `key` on backend `b`; `op` names the write in an error.
    async fn write(&self, op: &'static str, b: usize, key: &[u8], value: &[u8]) -> Result<()> {
        self.backends[b]
            .set(key, value)
            .await
            .map_err(|e| StoreError::Backend {
                op,
                key: String::from_utf8_lossy(key).into_owned(),
                backend: self.ids[b].clone(),
                message: e.message,
            })
    }
}

/// The object store over a set of backends. Cheap to clone.
pub struct Store<B: Backend> {
    inner: Arc<Inner<B>>,
}

impl<B: Backend> Clone for Store<B> {
    fn clone(&self) -> Self {
        Store {
            inner: self.inner.clone(),
        }
    }
}

impl Store<RespBackend> {
    /// A store over the shard servers the configuration lists.
    pub fn connect(cfg: StoreConfig) -> Result<Self> {
        let backends = cfg.backends.iter().cloned().map(RespBackend::new).collect();
        Store::new(cfg, backends)
    }
}

fn task_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::Task(e.to_string())
}

impl<B: Backend> Store<B> {
    pub fn new(cfg: StoreConfig, backends: Vec<B>) -> Result<Self> {
        cfg.validate().map_err(StoreError::Config)?;
        if backends.len() != cfg.backends.len() {
            return Err(StoreError::Config(format!(
                "{} backends given for {} configured",
                backends.len(),
                cfg.backends.len()
            )));
        }
        let ids = cfg.backends.iter().map(BackendSpec::id).collect();
        Ok(Store {
            inner: Arc::new(Inner { cfg, ids, backends }),
        })
    }

    /// Indices of the backends that answer a ping.
    async fn healthy(&self) -> Vec<bool> {
        let mut set = JoinSet::new();
        for i in 0..self.inner.backends.len() {
            let inner = self.inner.clone();
            set.spawn(async move { (i, inner.backends[i].ping().await.is_ok()) });
        }
        let mut up = vec![false; self.inner.backends.len()];
        while let Some(r) = set.join_next().await {
            if let Ok((i, ok)) = r {
                up[i] = ok;
            }
        }
        up
    }

    /// k+m healthy backends with distinct failure domains, starting at a place
    /// that depends on the name so objects spread over all backends.
    fn place(&self, name: &str, up: &[bool], n: usize) -> Result<Vec<usize>> {
        let cfg = &self.inner.cfg;
        let count = up.len();
        let start = u64::from_le_bytes(
            blake3::hash(name.as_bytes()).as_bytes()[..8]
                .try_into()
                .unwrap_or_default(),
        ) as usize
            % count.max(1);
        let mut chosen = Vec::new();
        let mut domains = HashSet::new();
        for j in 0..count {
            let i = (start + j) % count;
            if up[i] && domains.insert(cfg.backends[i].domain(cfg.distinct)) {
                chosen.push(i);
            }
            if chosen.len() == n {
                return Ok(chosen);
            }
        }
        Err(StoreError::NotEnoughBackends {
            need: n,
            healthy: chosen.len(),
            what: match cfg.distinct {
                Distinct::Backend => "backend",
                Distinct::Node => "node",
                Distinct::Farm => "farm",
            },
        })
    }

    /// Stores `data` under `name`, replacing any object of that name.
    pub async fn put(&self, name: &str, data: &[u8]) -> Result<PutReport> {
        let cfg = &self.inner.cfg;
        let (k, m) = (cfg.k, cfg.m);
        let old = self.scan_meta(name).await;
        let up = self.healthy().await;
        let placement = Arc::new(self.place(name, &up, k + m)?);
        let id: [u8; 16] = rand::random();
        let obj = Arc::new(Obj {
            id,
            cipher: Cipher::new(cfg.cipher, &object_key(&cfg.key, &id)),
            ec: Ec::new(cfg.erasure, k, m).map_err(|e| StoreError::Config(e.to_string()))?,
        });
        let obj_hex = hex::encode(id);
        let seg_size = cfg.segment_size;
        let nseg = data.len().div_ceil(seg_size).max(1);
        let mut segs: Vec<Option<SegMeta>> = vec![None; nseg];
        let mut set = JoinSet::new();
        for seg in 0..nseg {
            if set.len() >= PIPELINE {
                if let Some(r) = set.join_next().await {
                    let (i, meta) = r.map_err(task_err)??;
                    segs[i] = Some(meta);
                }
            }
            let chunk = data
                [(seg * seg_size).min(data.len())..((seg + 1) * seg_size).min(data.len())]
                .to_vec();
            let (inner, obj, placement, obj_hex) = (
                self.inner.clone(),
                obj.clone(),
                placement.clone(),
                obj_hex.clone(),
            );
            let level = cfg.compression_level;
            let name = name.to_owned();
            set.spawn(async move {
                let (len, shards) =
                    tokio::task::spawn_blocking(move || seal_segment(&obj, seg, &chunk, level))
                        .await
                        .map_err(task_err)?
                        .map_err(|reason| StoreError::Corrupt {
                            name,
                            segment: seg,
                            reason,
                        })?;
                let hashes = shards.iter().map(|s| hash(s)).collect();
                let mut up = JoinSet::new();
                for (i, shard) in shards.into_iter().enumerate() {
                    let inner = inner.clone();
                    let b = placement[i];
                    let key = shard_key(&obj_hex, seg, i);
                    up.spawn(async move { inner.write("write", b, &key, &shard).await });
                }
                while let Some(r) = up.join_next().await {
                    r.map_err(task_err)??;
                }
                Ok::<_, StoreError>((seg, SegMeta { len, hashes }))
            });
        }
        while let Some(r) = set.join_next().await {
            let (i, meta) = r.map_err(task_err)??;
            segs[i] = Some(meta);
        }
        let segments: Vec<SegMeta> = segs.into_iter().flatten().collect();
        let stored_bytes = segments
            .iter()
            .map(|s| (obj.ec.shard_len(s.len) * (k + m)) as u64)
            .sum();
        let meta = Meta {
            name: name.into(),
            object: obj_hex,
            size: data.len() as u64,
            segment_size: seg_size,
            k,
            m,
            erasure: cfg.erasure,
            cipher: cfg.cipher,
            compression: true,
            placement: placement
                .iter()
                .map(|&i| self.inner.ids[i].clone())
                .collect(),
            segments,
        };
        self.write_meta(&meta, old.max_gen + 1).await?;
        if let Some((old_meta, _)) = old.best {
            self.remove_stale(&old_meta, &meta).await;
        }
        Ok(PutReport {
            size: meta.size,
            segments: nseg,
            stored_bytes,
            placement: meta.placement,
        })
    }

    /// Best effort: drops the shards of a replaced object and metadata copies on
    /// backends the new placement does not use.
    async fn remove_stale(&self, old: &Meta, new: &Meta) {
        let idx = |id: &str| self.inner.ids.iter().position(|x| x == id);
        if old.object != new.object {
            for (seg, _) in old.segments.iter().enumerate() {
                for (i, b) in old.placement.iter().enumerate() {
                    if let Some(b) = idx(b) {
                        let _ = self.inner.backends[b]
                            .del(&shard_key(&old.object, seg, i))
                            .await;
                    }
                }
            }
        }
        let key = self.meta_key(&new.name);
        for b in &old.placement {
            if !new.placement.contains(b) {
                if let Some(b) = idx(b) {
                    let _ = self.inner.backends[b].del(&key).await;
                }
            }
        }
    }

    /// Reads the object `name` back.
    pub async fn get(&self, name: &str) -> Result<Vec<u8>> {
        let meta = Arc::new(self.read_meta(name).await?.0);
        let obj = Arc::new(self.obj_for(&meta)?);
        let places = Arc::new(self.map_placement(&meta));
        let down = Arc::new(Mutex::new(HashSet::new()));
        let n = meta.segments.len();
        let mut out: Vec<Option<Vec<u8>>> = vec![None; n];
        let mut set = JoinSet::new();
        for seg in 0..n {
            if set.len() >= PIPELINE {
                if let Some(r) = set.join_next().await {
                    let (i, data) = r.map_err(task_err)??;
                    out[i] = Some(data);
                }
            }
            let (store, meta, obj, places, down) = (
                self.clone(),
                meta.clone(),
                obj.clone(),
                places.clone(),
                down.clone(),
            );
            set.spawn(async move {
                let shards = store.fetch(&meta, &places, seg, meta.k, &down).await;
                let data = open_segment(&meta, &obj, seg, shards).await?;
                Ok::<_, StoreError>((seg, data))
            });
        }
        while let Some(r) = set.join_next().await {
            let (i, data) = r.map_err(task_err)??;
            out[i] = Some(data);
        }
        let mut all = Vec::with_capacity(meta.size as usize);
        for d in out.into_iter().flatten() {
            all.extend_from_slice(&d);
        }
        if all.len() as u64 != meta.size {
            return Err(StoreError::BadMeta {
                name: name.into(),
                reason: format!("decoded {} bytes, metadata says {}", all.len(), meta.size),
            });
        }
        Ok(all)
    }

    fn map_placement(&self, meta: &Meta) -> Vec<Option<usize>> {
        meta.placement
            .iter()
            .map(|id| self.inner.ids.iter().position(|x| x == id))
            .collect()
    }

    fn obj_for(&self, meta: &Meta) -> Result<Obj> {
        let bad = |reason: String| StoreError::BadMeta {
            name: meta.name.clone(),
            reason,
        };
        let id: [u8; 16] = hex::decode(&meta.object)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("object id".into()))?;
        if meta.placement.len() != meta.k + meta.m
            || meta
                .segments
                .iter()
                .any(|s| s.hashes.len() != meta.k + meta.m)
            || meta.segment_size == 0
            || meta.segment_size > MAX_SEGMENT
        {
            return Err(bad("shard counts or segment size".into()));
        }
        Ok(Obj {
            id,
            cipher: Cipher::new(meta.cipher, &object_key(&self.inner.cfg.key, &id)),
            ec: Ec::new(meta.erasure, meta.k, meta.m).map_err(|e| bad(e.to_string()))?,
        })
    }

    /// Reads every shard of every segment and reports what is intact.
    pub async fn check(&self, name: &str) -> Result<Health> {
        let meta = self.read_meta(name).await?.0;
        let places = self.map_placement(&meta);
        let up = self.healthy().await;
        let total = meta.k + meta.m;
        let mut shards: Vec<ShardHealth> = meta
            .placement
            .iter()
            .zip(&places)
            .map(|(id, p)| ShardHealth {
                backend: id.clone(),
                reachable: p.is_some_and(|b| up[b]),
                ok: 0,
                missing: 0,
                corrupt: 0,
            })
            .collect();
        let down = Mutex::new((0..up.len()).filter(|&b| !up[b]).collect::<HashSet<_>>());
        let mut min_intact = total;
        for seg in 0..meta.segments.len() {
            let slots = self.fetch(&meta, &places, seg, total, &down).await;
            let mut intact = 0;
            for (h, s) in shards.iter_mut().zip(&slots) {
                match s {
                    Slot::Ok(_) => {
                        h.ok += 1;
                        intact += 1;
                    }
                    Slot::Corrupt => h.corrupt += 1,
                    Slot::Missing | Slot::Unreachable => h.missing += 1,
                }
            }
            min_intact = min_intact.min(intact);
        }
        Ok(Health {
            name: name.into(),
            size: meta.size,
            k: meta.k,
            m: meta.m,
            segments: meta.segments.len(),
            shards,
            min_intact,
        })
    }

    /// Rebuilds lost shards onto their backend or onto a healthy replacement.
    pub async fn repair(&self, name: &str) -> Result<RepairReport> {
        let (mut meta, gen) = self.read_meta(name).await?;
        let obj = self.obj_for(&meta)?;
        let old_places = self.map_placement(&meta);
        let up = self.healthy().await;
        let cfg = &self.inner.cfg;
        let mut report = RepairReport::default();
        // Move positions whose backend is gone to healthy backends outside the
        // placement, keeping failure domains distinct.
        let mut places = old_places.clone();
        for i in 0..places.len() {
            if places[i].is_some_and(|b| up[b]) {
                continue;
            }
            let used: HashSet<String> = places
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .filter_map(|(_, p)| p.map(|b| cfg.backends[b].domain(cfg.distinct)))
                .collect();
            let pick = (0..up.len()).find(|&b| {
                up[b]
                    && !places.contains(&Some(b))
                    && !used.contains(&cfg.backends[b].domain(cfg.distinct))
            });
            match pick {
                Some(b) => {
                    report
                        .moved
                        .push((i, meta.placement[i].clone(), self.inner.ids[b].clone()));
                    places[i] = Some(b);
                    meta.placement[i] = self.inner.ids[b].clone();
                }
                None => report.unplaced.push(i),
            }
        }
        let total = meta.k + meta.m;
        let down = Mutex::new((0..up.len()).filter(|&b| !up[b]).collect::<HashSet<_>>());
        for seg in 0..meta.segments.len() {
            let slots = self.fetch(&meta, &old_places, seg, total, &down).await;
            let lost: Vec<usize> = (0..total)
                .filter(|&i| !matches!(slots[i], Slot::Ok(_)) || places[i] != old_places[i])
                .filter(|&i| places[i].is_some_and(|b| up[b]))
                .collect();
            if lost.is_empty() {
                continue;
            }
            let mut opt: Vec<Option<Vec<u8>>> = slots.into_iter().map(Slot::into_ok).collect();
            let have = opt.iter().filter(|s| s.is_some()).count();
            if have < meta.k {
                return Err(StoreError::SegmentLost {
                    name: name.into(),
                    segment: seg,
                    have,
                    need: meta.k,
                });
            }
            obj.ec
                .reconstruct(&mut opt)
                .map_err(|e| StoreError::Corrupt {
                    name: name.into(),
                    segment: seg,
                    reason: e.to_string(),
                })?;
            for i in lost {
                let (Some(b), Some(shard)) = (places[i], &opt[i]) else {
                    continue;
                };
                if hash(shard) != meta.segments[seg].hashes[i] {
                    return Err(StoreError::Corrupt {
                        name: name.into(),
                        segment: seg,
                        reason: format!("rebuilt shard {i} does not match its hash"),
                    });
                }
                let key = shard_key(&meta.object, seg, i);
                self.inner.write("write", b, &key, shard).await?;
                report.rebuilt += 1;
            }
        }
        if !report.moved.is_empty() || report.rebuilt > 0 {
            self.write_meta(&meta, gen + 1).await?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;
    use crate::ec::RsCrate;
    use std::future::Future;

    fn mem_store(
        k: usize,
        m: usize,
        n: usize,
        seg: usize,
        erasure: RsCrate,
    ) -> (Store<Arc<MemBackend>>, Vec<Arc<MemBackend>>) {
        let specs = (0..n)
            .map(|i| BackendSpec {
                address: format!("127.0.0.1:{}", 10000 + i).parse().unwrap(),
                namespace: "t".into(),
                password: None,
                node: None,
                farm: Some(format!("farm{}", i / 2)),
            })
            .collect();
        let mut cfg = StoreConfig::new(k, m, [9; 32], specs);
        cfg.segment_size = seg;
        cfg.erasure = erasure;
        let mems: Vec<Arc<MemBackend>> = (0..n).map(|_| Arc::default()).collect();
        (Store::new(cfg, mems.clone()).unwrap(), mems)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 31) ^ (i >> 7)) as u8).collect()
    }

    #[tokio::test]
    async fn put_get_check_repair() {
        let (store, mems) = mem_store(4, 2, 8, 1000, RsCrate::ReedSolomonSimd);
        let d = data(10_500);
        let rep = store.put("obj", &d).await.unwrap();
        assert_eq!(rep.segments, 11);
        assert_eq!(store.get("obj").await.unwrap(), d);
        assert!(store.check("obj").await.unwrap().healthy());
        // Take down two placement backends.
        let ids: Vec<String> = store.inner.ids.clone();
        let down: Vec<usize> = rep.placement[..2]
            .iter()
            .map(|p| ids.iter().position(|x| x == p).unwrap())
            .collect();
        for &b in &down {
            mems[b].set_down(true);
        }
        assert_eq!(store.get("obj").await.unwrap(), d);
        let h = store.check("obj").await.unwrap();
        assert!(h.readable() && !h.healthy());
        assert_eq!(h.min_intact, 4);
        let r = store.repair("obj").await.unwrap();
        assert_eq!(r.moved.len(), 2);
        assert_eq!(r.rebuilt, 22);
        assert!(store.check("obj").await.unwrap().healthy());
        // The old backends come back with stale metadata: the new one wins.
        for &b in &down {
            mems[b].set_down(false);
        }
        assert_eq!(store.get("obj").await.unwrap(), d);
        assert!(store.check("obj").await.unwrap().healthy());
    }

    #[tokio::test]
    async fn overwrite_replaces_and_cleans() {
        let (store, mems) = mem_store(2, 1, 3, 100, RsCrate::ReedSolomonErasure);
        store.put("x", &data(500)).await.unwrap();
        store.put("x", b"short").await.unwrap();
        assert_eq!(store.get("x").await.unwrap(), b"short");
        let keys: usize = mems.iter().map(|m| m.entries().len()).sum();
        assert_eq!(keys, 3 + 3, "one segment of 3 shards + 3 metadata shards");
        assert!(matches!(
            store.get("nope").await,
            Err(StoreError::NotFound(_))
        ));
        store.put("empty", b"").await.unwrap();
        assert_eq!(store.get("empty").await.unwrap(), b"");
    }

    #[tokio::test]
    async fn distinct_farms_limit_placement() {
        let (store, _) = mem_store(2, 1, 4, 100, RsCrate::ReedSolomonSimd);
        let mut cfg = store.inner.cfg.clone();
        cfg.distinct = Distinct::Farm;
        let mems: Vec<Arc<MemBackend>> = (0..4).map(|_| Arc::default()).collect();
        let s = Store::new(cfg, mems).unwrap();
        // 4 backends on 2 farms cannot hold 3 shards on distinct farms.
        assert!(matches!(
            s.put("a", b"data").await,
            Err(StoreError::NotEnoughBackends {
                need: 3,
                healthy: 2,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn corrupt_shards_are_skipped_never_returned() {
        let (store, mems) = mem_store(3, 2, 5, 64, RsCrate::ReedSolomonSimd);
        let d = data(1000);
        store.put("c", &d).await.unwrap();
        // Flip a byte in every shard held by two backends.
        for m in &mems[..2] {
            for (k, v) in m.entries().iter_mut() {
                if k.starts_with(b"s:") {
                    v[0] ^= 0x55;
                }
            }
        }
        assert_eq!(store.get("c").await.unwrap(), d);
        let h = store.check("c").await.unwrap();
        assert_eq!(h.shards.iter().map(|s| s.corrupt).sum::<usize>(), 2 * 16);
        store.repair("c").await.unwrap();
        assert!(store.check("c").await.unwrap().healthy());
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn run<F: Future>(f: F) -> F::Output {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            /// Losing any m shards (whole backends, or shards picked per segment)
            /// returns the exact bytes; losing m + 1 fails with an error.
            #[test]
            fn any_m_losses_recover_m_plus_one_fail(
                k in 1usize..=16,
                m in 1usize..=16,
                payload in proptest::collection::vec(any::<u8>(), 0..3000),
                seg in 100usize..1500,
                simd in any::<bool>(),
                whole_backends in any::<bool>(),
                seed in any::<u64>(),
            ) {
                let which = if simd { RsCrate::ReedSolomonSimd } else { RsCrate::ReedSolomonErasure };
                let n = k + m;
                let (store, mems) = mem_store(k, m, n, seg, which);
                run(async {
                    store.put("p", &payload).await.unwrap();
                    let mut rng = seed;
                    let mut pick = |n: usize, count: usize| {
                        // Fisher-Yates on a tiny xorshift: which `count` of `n` to lose.
                        let mut v: Vec<usize> = (0..n).collect();
                        for i in (1..n).rev() {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            v.swap(i, (rng % (i as u64 + 1)) as usize);
                        }
                        v.truncate(count);
                        v
                    };
                    if whole_backends {
                        let lost = pick(n, m + 1);
                        for &b in &lost[..m] {
                            mems[b].set_down(true);
                        }
                        prop_assert_eq!(&store.get("p").await.unwrap(), &payload);
                        mems[lost[m]].set_down(true);
                        let e = store.get("p").await.unwrap_err();
                        prop_assert!(
                            matches!(e, StoreError::MetaLost { .. } | StoreError::Unavailable { .. }),
                            "{}", e
                        );
                    } else {
                        let meta = store.read_meta("p").await.unwrap().0;
                        let places = store.map_placement(&meta);
                        let nseg = meta.segments.len();
                        for s in 0..nseg {
                            let extra = usize::from(s == nseg - 1);
                            for i in pick(n, m + extra) {
                                let b = places[i].unwrap();
                                mems[b].entries().remove(&shard_key(&meta.object, s, i));
                            }
                            if s + 1 == nseg {
                                break;
                            }
                        }
                        let e = store.get("p").await.unwrap_err();
                        prop_assert!(
                            matches!(e, StoreError::SegmentLost { segment, .. } if segment == nseg - 1),
                            "{}", e
                        );
                        // A fresh put with exactly m shards lost per segment reads back.
                        store.put("p", &payload).await.unwrap();
                        let meta = store.read_meta("p").await.unwrap().0;
                        let places = store.map_placement(&meta);
                        for s in 0..meta.segments.len() {
                            for i in pick(n, m) {
                                let b = places[i].unwrap();
                                mems[b].entries().remove(&shard_key(&meta.object, s, i));
                            }
                        }
                        prop_assert_eq!(&store.get("p").await.unwrap(), &payload);
                    }
                    Ok(())
                })?;
            }
        }
    }
}
