//! Reed-Solomon erasure coding of one buffer into k data + m parity shards.
//!
//! Two implementations sit behind one type so they can be measured side by side
//! (`cellos bench ec`) and an object records which one coded it (their parity is
//! not interchangeable):
//! - `reed-solomon-erasure` with its `simd-accel` feature: the classic
//!   Vandermonde-matrix code over GF(2^8) with a C SIMD kernel. The default: on
//!   this machine (AMD EPYC, AVX-512) it encoded as fast or faster at 4+2, 10+4
//!   and 16+4 (12.6-13.8 / 7.2-7.7 / 6.7-7.9 GB/s per core against 0.7-1.3 /
//!   5.2-7.2 / 7.4-8.2) and reconstructed 3-4x faster (7-10 / 5.4-6.9 /
//!   4.7-6.2 GB/s against 1.6-2.2), and reconstruct is what a degraded get and
//!   every repair pay. Its limit of 256 shards is far above what we place.
//! - `reed-solomon-simd`: FFT-based coding over GF(2^16) (O(n log n), for very
//!   many shards). Its coders are pooled and `reset`, which the crate allows; its
//!   4+2 encode still suffers from per-call 1 MiB allocations in glibc (a bare
//!   loop over a reused encoder reaches 11-17 GB/s), but its decoder stays slower.
//!
//! Shards are the data split into k equal pieces (zero-padded to an even length,
//! which reed-solomon-simd needs) followed by m parity pieces.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Which Reed-Solomon implementation codes an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RsCrate {
    ReedSolomonSimd,
    ReedSolomonErasure,
}

impl RsCrate {
    pub const ALL: [RsCrate; 2] = [RsCrate::ReedSolomonSimd, RsCrate::ReedSolomonErasure];

    pub fn name(self) -> &'static str {
        match self {
            RsCrate::ReedSolomonSimd => "reed-solomon-simd",
            RsCrate::ReedSolomonErasure => "reed-solomon-erasure",
        }
    }

    pub(crate) fn to_byte(self) -> u8 {
        match self {
            RsCrate::ReedSolomonSimd => 1,
            RsCrate::ReedSolomonErasure => 2,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<RsCrate> {
        match b {
            1 => Some(RsCrate::ReedSolomonSimd),
            2 => Some(RsCrate::ReedSolomonErasure),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EcError {
    #[error("invalid code {k}+{m}: need k >= 1, m >= 1, k + m <= 256")]
    Params { k: usize, m: usize },
    #[error("{have} of {k} shards needed are intact")]
    TooFewShards { have: usize, k: usize },
    #[error("shard {index} is {got} bytes, expected {want}")]
    ShardSize {
        index: usize,
        got: usize,
        want: usize,
    },
    #[error("{engine}: {message}")]
    Engine {
        engine: &'static str,
        message: String,
    },
}

enum Engine {
    /// Encoders and decoders are kept for reuse (`reset`): allocating their work
    /// buffers per call cost up to 15x in throughput with glibc's allocator.
    Simd {
        encoders: Mutex<Vec<reed_solomon_simd::ReedSolomonEncoder>>,
        decoders: Mutex<Vec<reed_solomon_simd::ReedSolomonDecoder>>,
    },
    Erasure(Box<reed_solomon_erasure::galois_8::ReedSolomon>),
}

/// A k+m code with a chosen implementation.
pub struct Ec {
    k: usize,
    m: usize,
    engine: Engine,
}

fn simd_err(e: reed_solomon_simd::Error) -> EcError {
    EcError::Engine {
        engine: "reed-solomon-simd",
        message: e.to_string(),
    }
}

fn erasure_err(e: reed_solomon_erasure::Error) -> EcError {
    EcError::Engine {
        engine: "reed-solomon-erasure",
        message: format!("{e:?}"),
    }
}

impl Ec {
    pub fn new(which: RsCrate, k: usize, m: usize) -> Result<Ec, EcError> {
        if k == 0 || m == 0 || k + m > 256 {
            return Err(EcError::Params { k, m });
        }
        let engine = match which {
            RsCrate::ReedSolomonSimd => Engine::Simd {
                encoders: Mutex::new(Vec::new()),
                decoders: Mutex::new(Vec::new()),
            },
            RsCrate::ReedSolomonErasure => Engine::Erasure(Box::new(
                reed_solomon_erasure::galois_8::ReedSolomon::new(k, m).map_err(erasure_err)?,
            )),
        };
        Ok(Ec { k, m, engine })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn m(&self) -> usize {
        self.m
    }

    /// Bytes per shard for `len` bytes of data.
    pub fn shard_len(&self, len: usize) -> usize {
        let per = len.div_ceil(self.k).max(2);
        per + (per & 1)
    }

    /// Splits `data` into k data shards and computes m parity shards.
    pub fn encode(&self, data: &[u8]) -> Result<Vec<Vec<u8>>, EcError> {
        let n = self.shard_len(data.len());
        let mut shards: Vec<Vec<u8>> = (0..self.k)
            .map(|i| {
                let start = (i * n).min(data.len());
                let end = ((i + 1) * n).min(data.len());
                let mut s = Vec::with_capacity(n);
                s.extend_from_slice(&data[start..end]);
                s.resize(n, 0);
                s
            })
            .collect();
        self.add_parity(&mut shards)?;
        Ok(shards)
    }

    /// Appends the m parity shards to k data shards.
    fn add_parity(&self, shards: &mut Vec<Vec<u8>>) -> Result<(), EcError> {
        let n = shards.first().map_or(2, Vec::len);
        match &self.engine {
            Engine::Simd { encoders, .. } => {
                let mut enc = match pop(encoders) {
                    Some(mut e) => {
                        e.reset(self.k, self.m, n).map_err(simd_err)?;
                        e
                    }
                    None => reed_solomon_simd::ReedSolomonEncoder::new(self.k, self.m, n)
                        .map_err(simd_err)?,
                };
                let parity: Vec<Vec<u8>> = {
                    for s in shards.iter() {
                        enc.add_original_shard(s).map_err(simd_err)?;
                    }
                    let res = enc.encode().map_err(simd_err)?;
                    res.recovery_iter().map(<[u8]>::to_vec).collect()
                };
                push(encoders, enc);
                shards.extend(parity);
            }
            Engine::Erasure(rs) => {
                shards.extend((0..self.m).map(|_| vec![0u8; n]));
                rs.encode(shards).map_err(erasure_err)?;
            }
        }
        Ok(())
    }

    /// Fills in every missing shard (data and parity) from any k present ones.
    pub fn reconstruct(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), EcError> {
        self.reconstruct_data(shards)?;
        if shards[self.k..].iter().any(Option::is_none) {
            let mut all: Vec<Vec<u8>> = shards[..self.k]
                .iter()
                .map(|s| s.clone().unwrap_or_default())
                .collect();
            self.add_parity(&mut all)?;
            for (slot, s) in shards.iter_mut().zip(all).skip(self.k) {
                if slot.is_none() {
                    *slot = Some(s);
                }
            }
        }
        Ok(())
    }

    /// Fills in the missing data shards from any k present ones.
    pub fn reconstruct_data(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), EcError> {
        let (k, m) = (self.k, self.m);
        if shards.len() != k + m {
            return Err(EcError::Params { k, m });
        }
        let have = shards.iter().filter(|s| s.is_some()).count();
        if have < k {
            return Err(EcError::TooFewShards { have, k });
        }
        let n = shards.iter().flatten().map(Vec::len).next().unwrap_or(0);
        for (index, s) in shards.iter().enumerate() {
            if let Some(s) = s {
                if s.len() != n {
                    return Err(EcError::ShardSize {
                        index,
                        got: s.len(),
                        want: n,
                    });
                }
            }
        }
        if shards[..k].iter().all(Option::is_some) {
            return Ok(());
        }
        match &self.engine {
            Engine::Simd { decoders, .. } => {
                let mut dec = match pop(decoders) {
                    Some(mut d) => {
                        d.reset(k, m, n).map_err(simd_err)?;
                        d
                    }
                    None => {
                        reed_solomon_simd::ReedSolomonDecoder::new(k, m, n).map_err(simd_err)?
                    }
                };
                let restored: Vec<(usize, Vec<u8>)> = {
                    for (i, s) in shards.iter().enumerate() {
                        if let Some(s) = s {
                            if i < k {
                                dec.add_original_shard(i, s).map_err(simd_err)?;
                            } else {
                                dec.add_recovery_shard(i - k, s).map_err(simd_err)?;
                            }
                        }
                    }
                    let res = dec.decode().map_err(simd_err)?;
                    res.restored_original_iter()
                        .map(|(i, s)| (i, s.to_vec()))
                        .collect()
                };
                push(decoders, dec);
                for (i, s) in restored {
                    if let Some(slot) = shards.get_mut(i) {
                        *slot = Some(s);
                    }
                }
            }
            Engine::Erasure(rs) => rs.reconstruct_data(shards).map_err(erasure_err)?,
        }
        Ok(())
    }

    /// Reassembles the first `len` bytes of data from (possibly incomplete) shards.
    pub fn decode(&self, mut shards: Vec<Option<Vec<u8>>>, len: usize) -> Result<Vec<u8>, EcError> {
        self.reconstruct_data(&mut shards)?;
        let mut out = Vec::with_capacity(len);
        for s in shards.into_iter().take(self.k).flatten() {
            let take = (len - out.len()).min(s.len());
            out.extend_from_slice(&s[..take]);
        }
        Ok(out)
    }
}

fn pop<T>(pool: &Mutex<Vec<T>>) -> Option<T> {
    // A pool is a plain Vec: a poisoned lock still holds usable coders.
    pool.lock().unwrap_or_else(|e| e.into_inner()).pop()
}

fn push<T>(pool: &Mutex<Vec<T>>, item: T) {
    let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
    if p.len() < 8 {
        p.push(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_crates_round_trip_with_m_losses() {
        let data: Vec<u8> = (0..10_001u32).map(|i| (i * 7 % 251) as u8).collect();
        for which in RsCrate::ALL {
            for (k, m) in [(1, 1), (4, 2), (10, 4), (16, 16)] {
                let ec = Ec::new(which, k, m).unwrap();
                let shards = ec.encode(&data).unwrap();
                let mut opt: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
                for s in opt.iter_mut().take(m) {
                    *s = None;
                }
                assert_eq!(ec.decode(opt.clone(), data.len()).unwrap(), data);
                ec.reconstruct(&mut opt).unwrap();
                let back: Vec<Vec<u8>> = opt.into_iter().map(Option::unwrap).collect();
                assert_eq!(back, shards, "{} {k}+{m}", which.name());
                let mut fewer: Vec<Option<Vec<u8>>> = shards.into_iter().map(Some).collect();
                for s in fewer.iter_mut().take(m + 1) {
                    *s = None;
                }
                assert!(matches!(
                    ec.decode(fewer, data.len()),
                    Err(EcError::TooFewShards { .. })
                ));
            }
        }
    }
}
