//! One segment of an object: compressed (zstd, kept raw when that does not
//! help), sealed with the object's key (the nonce is the segment number, the
//! associated data the object id and segment number), Reed-Solomon coded into
//! k+m shards, and back; and fetching its shards, each checked against the hash
//! the metadata holds, so a wrong byte never reaches the decoder unnoticed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;

use super::metadata::Meta;
use super::{task_err, Result, Store, StoreError, HASH_LEN};
use crate::backend::Backend;
use crate::cipher::Cipher;
use crate::ec::Ec;

/// Per-object crypto and coding, shared by the segment tasks.
pub(super) struct Obj {
    pub(super) id: [u8; 16],
    pub(super) cipher: Cipher,
    pub(super) ec: Ec,
}

pub(super) fn object_key(master: &[u8; 32], id: &[u8; 16]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("cellos-store object key v1");
    h.update(master).update(id);
    *h.finalize().as_bytes()
}

pub(super) fn shard_key(obj: &str, seg: usize, idx: usize) -> Vec<u8> {
    format!("s:{obj}:{seg}:{idx}").into_bytes()
}

pub(super) fn hash(data: &[u8]) -> String {
    hex::encode(&blake3::hash(data).as_bytes()[..HASH_LEN])
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A set of backend indices: a poisoned lock still holds a valid set.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B: Backend> Store<B> {
    /// Fetches the shards of one segment, verified; stops once `want` are intact
    /// (reading data shards first, which need no decoding).
    pub(super) async fn fetch(
        &self,
        meta: &Meta,
        places: &[Option<usize>],
        seg: usize,
        want: usize,
        down: &Mutex<HashSet<usize>>,
    ) -> Vec<Slot> {
        let total = meta.k + meta.m;
        let mut slots: Vec<Slot> = vec![Slot::Missing; total];
        let mut next = 0;
        while next < total {
            let intact = slots.iter().filter(|s| matches!(s, Slot::Ok(_))).count();
            if intact >= want {
                break;
            }
            let batch: Vec<usize> = (next..total).take(want - intact).collect();
            next += batch.len();
            let mut set = JoinSet::new();
            for i in batch {
                let Some(b) = places[i] else {
                    slots[i] = Slot::Unreachable;
                    continue;
                };
                if lock(down).contains(&b) {
                    slots[i] = Slot::Unreachable;
                    continue;
                }
                let inner = self.inner.clone();
                let key = shard_key(&meta.object, seg, i);
                set.spawn(async move { (i, b, inner.backends[b].get(&key).await) });
            }
            while let Some(r) = set.join_next().await {
                let Ok((i, b, r)) = r else { continue };
                slots[i] = match r {
                    Ok(Some(v)) => {
                        if meta.segments[seg].hashes.get(i).map(String::as_str) == Some(&hash(&v)) {
                            Slot::Ok(v)
                        } else {
                            Slot::Corrupt
                        }
                    }
                    Ok(None) => Slot::Missing,
                    Err(e) if e.unreachable => {
                        lock(down).insert(b);
                        Slot::Unreachable
                    }
                    Err(_) => Slot::Corrupt,
                };
            }
        }
        slots
    }
}

/// One shard of a segment as fetched.
#[derive(Debug, Clone)]
pub(super) enum Slot {
    Ok(Vec<u8>),
    Missing,
    Corrupt,
    Unreachable,
}

impl Slot {
    pub(super) fn into_ok(self) -> Option<Vec<u8>> {
        match self {
            Slot::Ok(v) => Some(v),
            _ => None,
        }
    }
}

/// Compresses, seals and codes one segment: (sealed length, k+m shards).
pub(super) fn seal_segment(
    obj: &Obj,
    seg: usize,
    data: &[u8],
    level: i32,
) -> std::result::Result<(usize, Vec<Vec<u8>>), String> {
    let mut buf = Vec::with_capacity(data.len() + 64);
    match zstd::bulk::compress(data, level) {
        Ok(z) if z.len() < data.len() => {
            buf.push(1);
            buf.extend_from_slice(&z);
        }
        _ => {
            buf.push(0);
            buf.extend_from_slice(data);
        }
    }
    obj.cipher
        .seal(seg as u64, &aad(&obj.id, seg), &mut buf)
        .map_err(|e| e.to_string())?;
    let shards = obj.ec.encode(&buf).map_err(|e| e.to_string())?;
    Ok((buf.len(), shards))
}

fn aad(id: &[u8; 16], seg: usize) -> Vec<u8> {
    let mut a = id.to_vec();
    a.extend_from_slice(&(seg as u64).to_le_bytes());
    a
}

/// Decodes, opens and decompresses one segment from its fetched shards.
pub(super) async fn open_segment(
    meta: &Arc<Meta>,
    obj: &Arc<Obj>,
    seg: usize,
    slots: Vec<Slot>,
) -> Result<Vec<u8>> {
    let have = slots.iter().filter(|s| matches!(s, Slot::Ok(_))).count();
    if have < meta.k {
        return Err(StoreError::SegmentLost {
            name: meta.name.clone(),
            segment: seg,
            have,
            need: meta.k,
        });
    }
    let (meta2, obj) = (meta.clone(), obj.clone());
    tokio::task::spawn_blocking(move || {
        let meta = meta2;
        let corrupt = |reason: String| StoreError::Corrupt {
            name: meta.name.clone(),
            segment: seg,
            reason,
        };
        let want = meta
            .segment_size
            .min((meta.size - (seg * meta.segment_size) as u64) as usize);
        let opt = slots.into_iter().map(Slot::into_ok).collect();
        let mut buf = obj
            .ec
            .decode(opt, meta.segments[seg].len)
            .map_err(|e| corrupt(e.to_string()))?;
        obj.cipher
            .open(seg as u64, &aad(&obj.id, seg), &mut buf)
            .map_err(|e| corrupt(e.to_string()))?;
        let data = match buf.split_first() {
            Some((0, raw)) => raw.to_vec(),
            Some((1, z)) => {
                zstd::bulk::decompress(z, want).map_err(|e| corrupt(format!("zstd: {e}")))?
            }
            _ => return Err(corrupt("unknown segment encoding".into())),
        };
        if data.len() != want {
            return Err(corrupt(format!("{} bytes, expected {want}", data.len())));
        }
        Ok(data)
    })
    .await
    .map_err(task_err)?
}
