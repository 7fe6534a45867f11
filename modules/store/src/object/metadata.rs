//! An object's metadata: what `get` needs to find and check every shard
//! (placement, sizes, a BLAKE3 hash of each shard, the code and cipher used).
//!
//! It is sealed under a key derived from the owner's key and a fresh salt, and
//! coded k+m like the data, one shard to each placement backend, under a key
//! derived from the object's name (so a backend learns no names). Each metadata
//! shard carries a small header ([`MetaHeader`]): a generation, so the newest
//! copy wins after a repair; the code (k, m, and which Reed-Solomon crate, by a
//! byte that old metadata keeps meaning) and cipher, so shards of one write can
//! be grouped and decoded before anything is decrypted; and a hash of the shard.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::{task_err, Result, Store, StoreError, HASH_LEN};
use crate::backend::Backend;
use crate::cipher::{Cipher, CipherKind};
use crate::config::MAX_SEGMENT;
use crate::ec::{Ec, RsCrate};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SegMeta {
    /// Sealed bytes coded in this segment.
    pub(super) len: usize,
    /// BLAKE3 (truncated) of each of the k+m shards, hex.
    pub(super) hashes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Meta {
    pub(super) name: String,
    pub(super) object: String,
    pub(super) size: u64,
    pub(super) segment_size: usize,
    pub(super) k: usize,
    pub(super) m: usize,
    pub(super) erasure: RsCrate,
    pub(super) cipher: CipherKind,
    pub(super) compression: bool,
    /// Backend id (address/namespace) holding shard i.
    pub(super) placement: Vec<String>,
    pub(super) segments: Vec<SegMeta>,
}

impl<B: Backend> Store<B> {
    pub(super) fn meta_key(&self, name: &str) -> Vec<u8> {
        let k = blake3::derive_key("cellos-store metadata name v1", &self.inner.cfg.key);
        let h = blake3::keyed_hash(&k, name.as_bytes());
        format!("m:{}", hex::encode(&h.as_bytes()[..16])).into_bytes()
    }

    fn meta_cipher(&self, salt: &[u8; 16], kind: CipherKind) -> Cipher {
        let mut h = blake3::Hasher::new_derive_key("cellos-store metadata key v1");
        h.update(&self.inner.cfg.key).update(salt);
        Cipher::new(kind, h.finalize().as_bytes())
    }

    /// Seals and codes the metadata, one shard to each placement backend.
    pub(super) async fn write_meta(&self, meta: &Meta, gen: u64) -> Result<()> {
        let name = meta.name.clone();
        let mut blob = serde_json::to_vec(meta).map_err(|e| StoreError::BadMeta {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        let salt: [u8; 16] = rand::random();
        let cipher = self.meta_cipher(&salt, meta.cipher);
        cipher
            .seal(0, &gen.to_le_bytes(), &mut blob)
            .map_err(|e| StoreError::Corrupt {
                name: name.clone(),
                segment: 0,
                reason: e.to_string(),
            })?;
        let ec =
            Ec::new(meta.erasure, meta.k, meta.m).map_err(|e| StoreError::Config(e.to_string()))?;
        let shards = ec
            .encode(&blob)
            .map_err(|e| StoreError::Config(e.to_string()))?;
        let key = self.meta_key(&name);
        let mut set = JoinSet::new();
        for (i, shard) in shards.into_iter().enumerate() {
            let Some(b) = self.inner.ids.iter().position(|x| *x == meta.placement[i]) else {
                continue;
            };
            let hdr = MetaHeader {
                gen,
                k: meta.k as u8,
                m: meta.m as u8,
                index: i as u8,
                erasure: meta.erasure,
                cipher: meta.cipher,
                salt,
                len: blob.len() as u64,
            };
            let value = hdr.encode(&shard);
            let (inner, key) = (self.inner.clone(), key.clone());
            set.spawn(async move { inner.write("write metadata", b, &key, &value).await });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(task_err)??;
        }
        Ok(())
    }

    /// Reads the metadata copies from every backend.
    pub(super) async fn scan_meta(&self, name: &str) -> MetaScan {
        let key = self.meta_key(name);
        let mut set = JoinSet::new();
        for b in 0..self.inner.backends.len() {
            let (inner, key) = (self.inner.clone(), key.clone());
            set.spawn(async move { inner.backends[b].get(&key).await });
        }
        // Grouped by (generation, salt): shards of one write.
        let mut groups: BTreeMap<(u64, [u8; 16]), MetaGroup> = BTreeMap::new();
        let mut scan = MetaScan::default();
        while let Some(r) = set.join_next().await {
            let v = match r {
                Ok(Ok(Some(v))) => v,
                Ok(Err(e)) if e.unreachable => {
                    scan.unreachable += 1;
                    continue;
                }
                _ => continue,
            };
            let Some((h, shard)) = MetaHeader::decode(&v) else {
                continue;
            };
            scan.found += 1;
            scan.max_gen = scan.max_gen.max(h.gen);
            let total = h.k as usize + h.m as usize;
            let entry = groups
                .entry((h.gen, h.salt))
                .or_insert_with(|| (h.clone(), vec![None; total]));
            if entry.0.same_code(&h) && (h.index as usize) < total {
                entry.1[h.index as usize] = Some(shard.to_vec());
            }
        }
        for ((gen, _), (h, shards)) in groups.into_iter().rev() {
            let have = shards.iter().filter(|s| s.is_some()).count();
            scan.best_have = scan.best_have.max(have);
            scan.need = h.k as usize;
            let Ok(ec) = Ec::new(h.erasure, h.k as usize, h.m as usize) else {
                continue;
            };
            let Ok(mut blob) = ec.decode(shards, h.len as usize) else {
                continue;
            };
            if self
                .meta_cipher(&h.salt, h.cipher)
                .open(0, &gen.to_le_bytes(), &mut blob)
                .is_err()
            {
                continue;
            }
            match serde_json::from_slice::<Meta>(&blob) {
                Ok(meta) if meta.name == name => {
                    scan.best = Some((meta, gen));
                    break;
                }
                _ => continue,
            }
        }
        scan
    }

    pub(super) async fn read_meta(&self, name: &str) -> Result<(Meta, u64)> {
        let scan = self.scan_meta(name).await;
        match scan.best {
            Some(b) => Ok(b),
            None if scan.found == 0 && scan.unreachable == 0 => {
                Err(StoreError::NotFound(name.into()))
            }
            None if scan.found == 0 => Err(StoreError::Unavailable {
                name: name.into(),
                unreachable: scan.unreachable,
            }),
            None => Err(StoreError::MetaLost {
                name: name.into(),
                have: scan.best_have,
                need: scan.need,
            }),
        }
    }
}

/// The shards of one metadata write found so far.
type MetaGroup = (MetaHeader, Vec<Option<Vec<u8>>>);

#[derive(Default)]
pub(super) struct MetaScan {
    pub(super) best: Option<(Meta, u64)>,
    pub(super) max_gen: u64,
    found: usize,
    unreachable: usize,
    best_have: usize,
    need: usize,
}

/// Header of a metadata shard: enough to group shards of one write and decode
/// them before anything is decrypted.
#[derive(Debug, Clone)]
struct MetaHeader {
    gen: u64,
    k: u8,
    m: u8,
    index: u8,
    erasure: RsCrate,
    cipher: CipherKind,
    salt: [u8; 16],
    len: u64,
}

const META_MAGIC: &[u8; 4] = b"CSM1";
const META_HDR: usize = 4 + 8 + 5 + 16 + 8 + HASH_LEN;

impl MetaHeader {
    fn encode(&self, shard: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(META_HDR + shard.len());
        v.extend_from_slice(META_MAGIC);
        v.extend_from_slice(&self.gen.to_le_bytes());
        v.extend_from_slice(&[
            self.k,
            self.m,
            self.index,
            self.erasure.to_byte(),
            self.cipher.to_byte(),
        ]);
        v.extend_from_slice(&self.salt);
        v.extend_from_slice(&self.len.to_le_bytes());
        v.extend_from_slice(&blake3::hash(shard).as_bytes()[..HASH_LEN]);
        v.extend_from_slice(shard);
        v
    }

    /// Parses and verifies a metadata shard; `None` if it is not one or is damaged.
    fn decode(v: &[u8]) -> Option<(MetaHeader, &[u8])> {
        if v.len() < META_HDR || &v[..4] != META_MAGIC {
            return None;
        }
        let u64_at = |i: usize| {
            v.get(i..i + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let h = MetaHeader {
            gen: u64_at(4)?,
            k: v[12],
            m: v[13],
            index: v[14],
            erasure: RsCrate::from_byte(v[15])?,
            cipher: CipherKind::from_byte(v[16])?,
            salt: v[17..33].try_into().ok()?,
            len: u64_at(33)?,
        };
        let shard = &v[META_HDR..];
        if blake3::hash(shard).as_bytes()[..HASH_LEN] != v[41..META_HDR] || h.k == 0 || h.m == 0 {
            return None;
        }
        if h.len > (MAX_SEGMENT as u64) {
            return None;
        }
        Some((h, shard))
    }

    fn same_code(&self, o: &MetaHeader) -> bool {
        (self.k, self.m, self.erasure, self.cipher, self.len)
            == (o.k, o.m, o.erasure, o.cipher, o.len)
    }
}
