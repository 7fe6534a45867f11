//! What is on a disk already, from its first MiB.
//!
//! The rule that keeps farmers' data safe: a disk is only ever formatted when its
//! first [`HEADER_LEN`] bytes are all zero (a new or wiped disk) or when it is a btrfs
//! with our label. Known signatures are named so the console can say what was found;
//! anything else that is not zero is "unrecognised data" and is left alone just the
//! same. The probe reads and never writes.

use crate::pools::PoolName;

/// How much of a disk is read to decide: partition tables, every common
/// filesystem's primary superblock (btrfs at 64 KiB, iso9660 at 32 KiB) and LVM
/// labels sit in it.
pub const HEADER_LEN: usize = 1 << 20;

/// btrfs keeps its primary superblock at 64 KiB.
const BTRFS_SB: usize = 0x1_0000;
const BTRFS_MAGIC: &[u8] = b"_BHRfS_M";
const BTRFS_MAGIC_AT: usize = BTRFS_SB + 0x40;
const BTRFS_LABEL_AT: usize = BTRFS_SB + 0x12b;
const BTRFS_LABEL_LEN: usize = 256;

/// The label prefix of our pools: `cellos-ssd0`, `cellos-hdd1`.
pub const LABEL_PREFIX: &str = "cellos-";

/// What a disk holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Zeroes only: free to take.
    Blank,
    /// One of our pools.
    Pool(PoolName),
    /// Anything else; the string names it for the console.
    Foreign(String),
}

/// Signatures by offset. Order matters: the more specific come first (a FAT boot
/// sector also ends in the MBR's 0x55AA).
const SIGNATURES: &[(usize, &[u8], &str)] = &[
    (0, b"XFSB", "an xfs filesystem"),
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
    (3, b"NTFS    ", "an NTFS filesystem"),
    (512, b"EFI PART", "a GPT partition table"),
    (4096, b"EFI PART", "a GPT partition table"),
    (512, b"LABELONE", "an LVM physical volume"),
    (0, b"\xfc\x4e\x2b\xa9", "a Linux md RAID member"),
    (4096, b"\xfc\x4e\x2b\xa9", "a Linux md RAID member"),
    (1080, b"\x53\xef", "an ext2/3/4 filesystem"),
    (4086, b"SWAPSPACE2", "a swap area"),
    (4086, b"SWAP-SPACE", "a swap area"),
    (32769, b"CD001", "an iso9660 image"),
    (54, b"FAT1", "a FAT filesystem"),
    (82, b"FAT32", "a FAT filesystem"),
    (510, b"\x55\xaa", "an MBR partition table"),
];

/// Identifies a disk from its first bytes (up to [`HEADER_LEN`]; a shorter buffer is
/// a disk that small).
pub fn identify(header: &[u8]) -> Content {
    let at = |offset: usize, magic: &[u8]| header.get(offset..offset + magic.len()) == Some(magic);
    if at(BTRFS_MAGIC_AT, BTRFS_MAGIC) {
        let label = header
            .get(BTRFS_LABEL_AT..BTRFS_LABEL_AT + BTRFS_LABEL_LEN)
            .map(|l| {
                let end = l.iter().position(|b| *b == 0).unwrap_or(l.len());
                String::from_utf8_lossy(&l[..end]).into_owned()
            })
            .unwrap_or_default();
        return match label
            .strip_prefix(LABEL_PREFIX)
            .and_then(|n| n.parse::<PoolName>().ok())
        {
            Some(pool) => Content::Pool(pool),
            None if label.is_empty() => {
                Content::Foreign("a btrfs filesystem without a label".into())
            }
            None => Content::Foreign(format!("a btrfs filesystem labelled {label:?}")),
        };
    }
    if let Some((_, _, what)) = SIGNATURES.iter().find(|(o, m, _)| at(*o, m)) {
        return Content::Foreign((*what).into());
    }
    match header.iter().position(|b| *b != 0) {
        None => Content::Blank,
        Some(i) => Content::Foreign(format!("unrecognised data (first non-zero byte at {i})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskKind;
    use std::path::Path;
    use std::process::Command;

    fn with(offset: usize, bytes: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[offset..offset + bytes.len()].copy_from_slice(bytes);
        h
    }

    fn btrfs(label: &str) -> Vec<u8> {
        let mut h = with(BTRFS_MAGIC_AT, BTRFS_MAGIC);
        h[BTRFS_LABEL_AT..BTRFS_LABEL_AT + label.len()].copy_from_slice(label.as_bytes());
        h
    }

    #[test]
    fn zeroes_are_blank_anything_else_is_not() {
        assert_eq!(identify(&vec![0u8; HEADER_LEN]), Content::Blank);
        assert_eq!(identify(&[]), Content::Blank);
        assert_eq!(
            identify(&with(700_000, b"x")),
            Content::Foreign("unrecognised data (first non-zero byte at 700000)".into())
        );
    }

    #[test]
    fn our_label_is_a_pool_other_btrfs_is_foreign() {
        let pool = |k, i| Content::Pool(PoolName::new(k, i));
        assert_eq!(identify(&btrfs("cellos-ssd0")), pool(DiskKind::Ssd, 0));
        assert_eq!(identify(&btrfs("cellos-hdd12")), pool(DiskKind::Hdd, 12));
        assert_eq!(
            identify(&btrfs("data")),
            Content::Foreign("a btrfs filesystem labelled \"data\"".into())
        );
        assert_eq!(
            identify(&btrfs("cellos-nvme0")),
            Content::Foreign("a btrfs filesystem labelled \"cellos-nvme0\"".into())
        );
        assert!(
            matches!(identify(&btrfs("")), Content::Foreign(s) if s.contains("without a label"))
        );
    }

    #[test]
    fn known_signatures_are_named() {
        let name = |o, m: &[u8]| match identify(&with(o, m)) {
            Content::Foreign(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(name(1080, b"\x53\xef"), "an ext2/3/4 filesystem");
        assert_eq!(name(512, b"EFI PART"), "a GPT partition table");
        assert_eq!(name(510, b"\x55\xaa"), "an MBR partition table");
        assert_eq!(name(0, b"XFSB"), "an xfs filesystem");
        assert_eq!(name(512, b"LABELONE"), "an LVM physical volume");
        assert_eq!(name(4086, b"SWAPSPACE2"), "a swap area");
        let mut fat = with(82, b"FAT32");
        fat[510] = 0x55;
        fat[511] = 0xaa;
        assert_eq!(identify(&fat), Content::Foreign("a FAT filesystem".into()));
    }

    /// Real mkfs output, where the tools are installed (no root needed: they
    /// format plain files).
    fn mkfs(tool: &str, args: &[&str]) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(300 << 20))
            .expect("image");
        let ok = Command::new(tool)
            .args(args)
            .arg(&img)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("{tool} unavailable; skipping");
            return None;
        }
        let mut h = std::fs::read(Path::new(&img)).expect("read");
        h.truncate(HEADER_LEN);
        Some(h)
    }

    #[test]
    fn real_filesystems_from_mkfs() {
        if let Some(h) = mkfs("mkfs.btrfs", &["-q", "-L", "cellos-hdd3"]) {
            assert_eq!(identify(&h), Content::Pool(PoolName::new(DiskKind::Hdd, 3)));
        }
        if let Some(h) = mkfs("mkfs.btrfs", &["-q", "-L", "home"]) {
            assert!(matches!(identify(&h), Content::Foreign(s) if s.contains("\"home\"")));
        }
        if let Some(h) = mkfs("mkfs.ext4", &["-q", "-F"]) {
            assert_eq!(
                identify(&h),
                Content::Foreign("an ext2/3/4 filesystem".into())
            );
        }
        if let Some(h) = mkfs("mkswap", &[]) {
            assert_eq!(identify(&h), Content::Foreign("a swap area".into()));
        }
    }
}
