//! The on-disk record: what one SET or DEL appends to a data file.
//!
//! ```text
//! 0      2     3      4        8        12       16
//! | magic | kind | 0 | key_len | val_len | crc32c | key | value |
//! ```
//! All integers little-endian. The CRC-32C (hardware-accelerated on x86 and arm)
//! covers bytes 0..12 of the header, the key and the value, so a torn write, a
//! garbage tail or a flipped bit all fail the check. The magic lets recovery
//! reject garbage without reading a bogus length's worth of bytes. A tombstone
//! (kind DEL) carries, as its 8-byte value, the size of the record it deletes so
//! usage can be recounted from the files alone.

use std::fs::File;
use std::path::Path;

/// Header bytes before the key.
pub const HEADER: usize = 16;
const MAGIC: [u8; 2] = [0xce, 0x11];
/// Longest key the format accepts.
pub const MAX_KEY: usize = 1024;
/// Largest value the format accepts (the server's limit may be lower).
pub const MAX_VALUE: usize = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Set = 1,
    Del = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub key_len: u32,
    pub val_len: u32,
    crc: u32,
}

impl Header {
    /// Bytes the whole record takes.
    pub fn total(&self) -> u64 {
        HEADER as u64 + u64::from(self.key_len) + u64::from(self.val_len)
    }
}

/// Appends the record for (kind, key, value) to `out`.
pub fn encode(kind: Kind, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(kind as u8);
    out.push(0);
    // Lengths were checked against MAX_KEY/MAX_VALUE by the callers.
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 12]), key);
    let crc = crc32c::crc32c_append(crc, value);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Parses a header; `None` if it cannot start a valid record.
pub fn decode_header(h: &[u8; HEADER]) -> Option<Header> {
    if h[0..2] != MAGIC || h[3] != 0 {
        return None;
    }
    let kind = match h[2] {
        1 => Kind::Set,
        2 => Kind::Del,
        _ => return None,
    };
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let (key_len, val_len, crc) = (word(4), word(8), word(12));
    if key_len as usize > MAX_KEY || val_len as usize > MAX_VALUE {
        return None;
    }
    Some(Header {
        kind,
        key_len,
        val_len,
        crc,
    })
}

/// True when `body` (key then value) matches the header's checksum.
pub fn verify(raw_header: &[u8; HEADER], h: &Header, body: &[u8]) -> bool {
    crc32c::crc32c_append(crc32c::crc32c(&raw_header[0..12]), body) == h.crc
}

/// A stretch of a data file that holds no valid record (bit rot, a torn write, garbage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    pub start: u64,
    /// Where the next valid record (or the file) starts.
    pub end: u64,
    pub reason: &'static str,
    /// When the stretch is exactly one record whose header decodes (its length
    /// ends where the next valid record or the file does) but whose checksum
    /// fails: that header and its key bytes. Unverified: the flipped bit may be
    /// in the key.
    pub record: Option<(Header, Vec<u8>)>,
}

/// What [`scan`] finds, in file order; together the items tile the file.
#[derive(Debug)]
pub enum Item<'a> {
    Record {
        offset: u64,
        kind: Kind,
        key: &'a [u8],
        value: &'a [u8],
    },
    /// A bad stretch with a valid record after it.
    Bad(&'a Bad),
}

/// How a scan of a data file ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    pub file_len: u64,
    /// A bad stretch that runs to the end of the file: nothing valid follows it.
    /// On the file being appended to this is a torn tail.
    pub tail: Option<Bad>,
}

/// Bytes read per refill while scanning.
const CHUNK: usize = 1 << 20;

/// Reads every record of a data file in order, calling `f` with each valid
/// record and each bad stretch that a valid record follows.
///
/// A bad stretch ends at the next valid record: the damaged record's own end
/// when its header is intact and a valid record (or the end of the file)
/// starts there, which keeps a bit flip in a value from being searched
/// through; otherwise the first later offset where a whole record's checksum
/// verifies, found byte by byte. A bad stretch with nothing valid after it is
/// returned as [`ScanEnd::tail`], not passed to `f`: only the caller knows
/// whether it may be cut.
pub fn scan(file: &File, path: &Path, mut f: impl FnMut(Item<'_>)) -> crate::sys::Result<ScanEnd> {
    let file_len = crate::sys::len(file, path)?;
    let mut w = Window {
        file,
        path,
        len: file_len,
        start: 0,
        buf: Vec::new(),
    };
    let mut off = 0u64;
    while off < file_len {
        let (reason, header) = match w.record_at(off)? {
            At::Valid(h) => {
                let body = w.get(off + HEADER as u64, (h.key_len + h.val_len) as usize)?;
                let (key, value) = body.split_at(h.key_len as usize);
                f(Item::Record {
                    offset: off,
                    kind: h.kind,
                    key,
                    value,
                });
                off += h.total();
                continue;
            }
            At::Torn => ("torn record", None),
            At::BadHeader => ("invalid record header", None),
            At::BadSum(h) => ("checksum mismatch", Some(h)),
        };
        // The damaged record's own extent, when its header says where it ends
        // and a valid record (or the end of the file) starts there.
        let extent = match header {
            Some(h) if off + h.total() == file_len => Some((h, None)),
            Some(h) if matches!(w.record_at(off + h.total())?, At::Valid(_)) => {
                Some((h, Some(off + h.total())))
            }
            _ => None,
        };
        let (next, record) = match extent {
            Some((h, next)) => {
                let key = w.get(off + HEADER as u64, h.key_len as usize)?.to_vec();
                (next, Some((h, key)))
            }
            None => (w.resync(off + 1)?, None),
        };
        let bad = Bad {
            start: off,
            end: next.unwrap_or(file_len),
            reason,
            record,
        };
        match next {
            Some(n) => {
                f(Item::Bad(&bad));
                off = n;
            }
            None => {
                return Ok(ScanEnd {
                    file_len,
                    tail: Some(bad),
                })
            }
        }
    }
    Ok(ScanEnd {
        file_len,
        tail: None,
    })
}

/// What starts at an offset.
enum At {
    /// A whole record whose checksum verifies.
    Valid(Header),
    /// Fewer bytes left than the header (or the record it announces) needs.
    Torn,
    BadHeader,
    /// A whole record whose checksum fails.
    BadSum(Header),
}

/// Positional reads through a buffer, so scanning reads each byte from the
/// file about once even while searching byte by byte.
struct Window<'a> {
    file: &'a File,
    path: &'a Path,
    len: u64,
    /// File offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
}

impl Window<'_> {
    /// Bytes `off..off + n`; the caller checked they are inside the file.
    fn get(&mut self, off: u64, n: usize) -> crate::sys::Result<&[u8]> {
        let end = off + n as u64;
        if off < self.start || end > self.start + self.buf.len() as u64 {
            let want = (n.max(CHUNK) as u64).min(self.len - off) as usize;
            self.buf.resize(want, 0);
            crate::sys::read_at(self.file, self.path, &mut self.buf, off)?;
            self.start = off;
        }
        let i = (off - self.start) as usize;
        Ok(&self.buf[i..i + n])
    }

    fn record_at(&mut self, off: u64) -> crate::sys::Result<At> {
        if self.len - off < HEADER as u64 {
            return Ok(At::Torn);
        }
        let raw: [u8; HEADER] = match self.get(off, HEADER)?.try_into() {
            Ok(raw) => raw,
            Err(_) => return Ok(At::Torn),
        };
        let Some(h) = decode_header(&raw) else {
            return Ok(At::BadHeader);
        };
        if self.len - off < h.total() {
            return Ok(At::Torn);
        }
        let body = self.get(off + HEADER as u64, (h.key_len + h.val_len) as usize)?;
        Ok(if verify(&raw, &h, body) {
            At::Valid(h)
        } else {
            At::BadSum(h)
        })
    }

    /// The first offset at or after `from` where a valid record starts.
    fn resync(&mut self, from: u64) -> crate::sys::Result<Option<u64>> {
        let mut p = from;
        while self.len.saturating_sub(p) >= HEADER as u64 {
            let avail = ((self.len - p) as usize).min(CHUNK);
            let found = self.get(p, avail)?.windows(2).position(|m| m == MAGIC);
            match found {
                Some(i) => {
                    let q = p + i as u64;
                    if matches!(self.record_at(q)?, At::Valid(_)) {
                        return Ok(Some(q));
                    }
                    p = q + 1;
                }
                // The last byte may be the first half of a magic.
                None => p += avail as u64 - 1,
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode() {
        let mut out = Vec::new();
        encode(Kind::Set, b"key", b"value", &mut out);
        assert_eq!(out.len(), HEADER + 8);
        let raw: [u8; HEADER] = out[..HEADER].try_into().unwrap();
        let h = decode_header(&raw).unwrap();
        assert_eq!((h.kind, h.key_len, h.val_len), (Kind::Set, 3, 5));
        assert!(verify(&raw, &h, &out[HEADER..]));
        out[HEADER + 4] ^= 1;
        assert!(!verify(&raw, &h, &out[HEADER..]));
    }

    /// (start, end, the key of a valid record or None for a bad stretch).
    type Found = (u64, u64, Option<Vec<u8>>);

    /// What a scan of `bytes` reports, and the tail.
    fn scan_bytes(bytes: &[u8]) -> (Vec<Found>, Option<Bad>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        let mut items = Vec::new();
        let end = scan(&file, &path, |item| match item {
            Item::Record {
                offset, key, value, ..
            } => items.push((
                offset,
                offset + (HEADER + key.len() + value.len()) as u64,
                Some(key.to_vec()),
            )),
            Item::Bad(b) => items.push((b.start, b.end, None)),
        })
        .unwrap();
        assert_eq!(end.file_len, bytes.len() as u64);
        (items, end.tail)
    }

    fn records(keys: &[Vec<u8>], values: &[Vec<u8>]) -> (Vec<u8>, Vec<u64>) {
        let (mut out, mut offsets) = (Vec::new(), Vec::new());
        for (k, v) in keys.iter().zip(values) {
            offsets.push(out.len() as u64);
            encode(Kind::Set, k, v, &mut out);
        }
        (out, offsets)
    }

    #[test]
    fn a_flipped_bit_costs_one_record() {
        let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("key{i}").into_bytes()).collect();
        let values: Vec<Vec<u8>> = (0..10).map(|i| vec![i as u8; 100]).collect();
        let (clean, offsets) = records(&keys, &values);
        // In a value: the record's own length locates the next one.
        let mut data = clean.clone();
        data[offsets[4] as usize + 40] ^= 4;
        let (items, tail) = scan_bytes(&data);
        assert_eq!(tail, None);
        assert_eq!(items.len(), 10);
        assert_eq!(items[4], (offsets[4], offsets[5], None));
        // In a header: found again by searching byte by byte.
        let mut data = clean.clone();
        data[offsets[4] as usize] ^= 0x80;
        let (items, _) = scan_bytes(&data);
        assert_eq!(items.len(), 10);
        assert_eq!(items[4], (offsets[4], offsets[5], None));
        assert_eq!(items[5], (offsets[5], offsets[6], Some(keys[5].clone())));
        // In the last record: a tail, with its header's key.
        let mut data = clean;
        let n = data.len();
        data[n - 1] ^= 1;
        let (items, tail) = scan_bytes(&data);
        assert_eq!(items.len(), 9);
        let tail = tail.unwrap();
        assert_eq!((tail.start, tail.end), (offsets[9], n as u64));
        assert_eq!(tail.record.map(|(_, k)| k), Some(keys[9].clone()));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Any bytes: no panic, and records and bad stretches tile the file.
            #[test]
            fn scan_tiles_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000),
                                    magic_at in proptest::collection::vec(0usize..2000, 0..8)) {
                let mut bytes = bytes;
                for at in magic_at {
                    if at + 2 <= bytes.len() {
                        bytes[at..at + 2].copy_from_slice(&MAGIC);
                    }
                }
                let (items, tail) = scan_bytes(&bytes);
                let mut at = 0;
                for (start, end, _) in &items {
                    prop_assert_eq!(*start, at);
                    prop_assert!(end > start);
                    at = *end;
                }
                match tail {
                    Some(t) => {
                        prop_assert_eq!(t.start, at);
                        prop_assert_eq!(t.end, bytes.len() as u64);
                    }
                    None => prop_assert_eq!(at, bytes.len() as u64),
                }
            }

            /// Records with one byte damaged: every record the damage does not
            /// touch is found where it was written.
            #[test]
            fn damage_costs_only_what_it_touches(
                values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..30),
                at in any::<proptest::sample::Index>(),
                flip in 1u8..=255,
            ) {
                let keys: Vec<Vec<u8>> = (0..values.len()).map(|i| format!("k{i}").into_bytes()).collect();
                let (mut data, offsets) = records(&keys, &values);
                let pos = at.index(data.len());
                data[pos] ^= flip;
                let hit = offsets.iter().rposition(|&o| o as usize <= pos).unwrap();
                let (items, tail) = scan_bytes(&data);
                let found: Vec<(u64, Vec<u8>)> = items
                    .iter()
                    .filter_map(|(o, _, k)| k.clone().map(|k| (*o, k)))
                    .collect();
                let want: Vec<(u64, Vec<u8>)> = offsets
                    .iter()
                    .zip(&keys)
                    .enumerate()
                    .filter(|(i, _)| *i != hit)
                    .map(|(_, (o, k))| (*o, k.clone()))
                    .collect();
                prop_assert_eq!(found, want);
                let bad_start = items
                    .iter()
                    .find(|(_, _, k)| k.is_none())
                    .map(|(s, _, _)| *s)
                    .or(tail.map(|t| t.start));
                prop_assert_eq!(bad_start, Some(offsets[hit]));
            }
        }
    }
}
