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
use std::io::{BufReader, Read};
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

/// How a scan of a data file ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    /// End of the last complete, valid record.
    pub good_len: u64,
    /// The file's length; more than `good_len` when the tail is torn or garbage.
    pub file_len: u64,
    /// Why the scan stopped before `file_len`, if it did.
    pub reason: Option<&'static str>,
}

/// Reads every valid record of a data file in order, calling `f(offset, kind,
/// key, value)`, and stops at the first record that is torn or fails its checks.
pub fn scan(
    file: &File,
    path: &Path,
    mut f: impl FnMut(u64, Kind, &[u8], &[u8]),
) -> crate::sys::Result<ScanEnd> {
    let file_len = crate::sys::len(file, path)?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut off = 0u64;
    let mut body = Vec::new();
    let reason = loop {
        if off == file_len {
            break None;
        }
        let mut raw = [0u8; HEADER];
        if file_len - off < HEADER as u64 {
            break Some("torn record header");
        }
        read(&mut r, &mut raw, path)?;
        let Some(h) = decode_header(&raw) else {
            break Some("invalid record header");
        };
        if file_len - off < h.total() {
            break Some("torn record");
        }
        body.resize((h.key_len + h.val_len) as usize, 0);
        read(&mut r, &mut body, path)?;
        if !verify(&raw, &h, &body) {
            break Some("checksum mismatch");
        }
        let (key, value) = body.split_at(h.key_len as usize);
        f(off, h.kind, key, value);
        off += h.total();
    };
    Ok(ScanEnd {
        good_len: off,
        file_len,
        reason,
    })
}

fn read(r: &mut impl Read, buf: &mut [u8], path: &Path) -> crate::sys::Result<()> {
    r.read_exact(buf).map_err(|source| crate::sys::IoError {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
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
}
