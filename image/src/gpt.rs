//! The USB image's partition table: a protective MBR carrying BIOS boot
//! code, and a GPT (primary at the start, backup at the end of the disk).
//!
//! Written from Rust rather than with sgdisk or a loop device so the build
//! needs no root and no extra tools, and so every byte is a function of the
//! inputs: GUIDs are given by the caller (derived from content), nothing
//! comes from a clock or a random source.

use std::fmt::Write as _;

/// Bytes per logical sector: what USB sticks and QEMU present.
pub const SECTOR: u64 = 512;
/// Entries in each partition array (the UEFI minimum, 16 KiB).
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors the entry array takes.
const ARRAY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;
/// The MBR boot code area (what syslinux's gptmbr.bin fills).
pub const BOOT_CODE: usize = 440;

/// GPT partition attribute bit 2: legacy BIOS bootable. gptmbr.bin boots
/// the partition that carries it.
pub const LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;

/// `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`, the EFI system partition.
pub const ESP_TYPE: Guid = Guid::from_fields(
    0xC12A_7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);

/// A GUID as GPT stores it (first three fields little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guid([u8; 16]);

impl Guid {
    pub const fn from_fields(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
        let a = a.to_le_bytes();
        let b = b.to_le_bytes();
        let c = c.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ])
    }

    /// A version-4-shaped GUID from 16 bytes of a content hash, so two
    /// builds of the same content get the same GUID and different content
    /// a different one.
    pub fn from_hash(bytes: [u8; 16]) -> Guid {
        let mut g = bytes;
        g[7] = (g[7] & 0x0f) | 0x40; // version 4 (high nibble of field c, stored LE)
        g[8] = (g[8] & 0x3f) | 0x80; // RFC 4122 variant
        Guid(g)
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-",
            u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]]),
            g[8],
            g[9]
        )?;
        g[10..].iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub type_guid: Guid,
    pub guid: Guid,
    pub first_lba: u64,
    /// Inclusive, as GPT counts.
    pub last_lba: u64,
    pub attributes: u64,
    /// At most 36 UTF-16 code units; Linux shows it as PARTNAME in uevent.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Size of the whole disk in sectors.
    pub sectors: u64,
    pub guid: Guid,
    pub partitions: Vec<Partition>,
}

impl Disk {
    /// The first sector a partition may use (after MBR, header, entries).
    pub const FIRST_USABLE: u64 = 2 + ARRAY_SECTORS;

    /// The last sector a partition may use (before the backup entries).
    pub fn last_usable(&self) -> u64 {
        self.sectors.saturating_sub(2 + ARRAY_SECTORS)
    }

    /// Checks the partitions fit, do not overlap and have short names.
    pub fn check(&self) -> Result<(), String> {
        if self.partitions.len() as u64 > ENTRIES {
            return Err(format!(
                "{} partitions, at most {ENTRIES}",
                self.partitions.len()
            ));
        }
        let mut sorted: Vec<&Partition> = self.partitions.iter().collect();
        sorted.sort_by_key(|p| p.first_lba);
        let mut next_free = Self::FIRST_USABLE;
        for p in sorted {
            if p.first_lba < next_free
                || p.last_lba < p.first_lba
                || p.last_lba > self.last_usable()
            {
                return Err(format!(
                    "partition {:?} at sectors {}..={} does not fit in {}..={} after the ones before it",
                    p.name,
                    p.first_lba,
                    p.last_lba,
                    next_free,
                    self.last_usable()
                ));
            }
            if p.name.encode_utf16().count() > 36 {
                return Err(format!(
                    "partition name {:?} is over 36 UTF-16 units",
                    p.name
                ));
            }
            next_free = p.last_lba + 1;
        }
        Ok(())
    }

    fn entries(&self) -> Vec<u8> {
        let mut out = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
        for (i, p) in self.partitions.iter().enumerate() {
            let e = &mut out[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
            e[0..16].copy_from_slice(&p.type_guid.0);
            e[16..32].copy_from_slice(&p.guid.0);
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            for (j, unit) in p.name.encode_utf16().take(36).enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
            }
        }
        out
    }

    fn header(&self, my_lba: u64, alternate: u64, entries_lba: u64, entries_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[40..48].copy_from_slice(&Self::FIRST_USABLE.to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable().to_le_bytes());
        h[56..72].copy_from_slice(&self.guid.0);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Sectors 0..FIRST_USABLE: protective MBR with `boot_code`, primary
    /// header, primary entries.
    pub fn primary(&self, boot_code: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; SECTOR as usize];
        let code = &boot_code[..boot_code.len().min(BOOT_CODE)];
        out[..code.len()].copy_from_slice(code);
        // One partition of type 0xEE over the whole disk (capped at 2 TiB).
        // Marked active: some legacy BIOSes boot only a disk with an active
        // partition, and UEFI must ignore the flag (UEFI spec 5.2.3).
        let pe = &mut out[446..462];
        pe[0] = 0x80;
        pe[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        pe[4] = 0xEE;
        pe[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        pe[8..12].copy_from_slice(&1u32.to_le_bytes());
        let size = u32::try_from(self.sectors - 1).unwrap_or(u32::MAX);
        pe[12..16].copy_from_slice(&size.to_le_bytes());
        out[510] = 0x55;
        out[511] = 0xAA;
        let entries = self.entries();
        let last = self.sectors - 1;
        out.extend(self.header(1, last, 2, crc32(&entries)));
        out.extend(entries);
        out
    }

    /// The last `ARRAY_SECTORS + 1` sectors: backup entries, backup header.
    pub fn backup(&self) -> Vec<u8> {
        let entries = self.entries();
        let last = self.sectors - 1;
        let mut out = entries.clone();
        out.extend(self.header(last, 1, last - ARRAY_SECTORS, crc32(&entries)));
        out
    }

    /// Where [`Disk::backup`] goes, in bytes from the start of the disk.
    pub fn backup_offset(&self) -> u64 {
        (self.sectors - 1 - ARRAY_SECTORS) * SECTOR
    }

    /// A readable listing of the layout (for golden files and `--verbose`).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "disk: {} sectors of {SECTOR} bytes ({} MiB), GUID {}",
            self.sectors,
            (self.sectors * SECTOR) >> 20,
            self.guid
        );
        let _ = writeln!(
            s,
            "usable sectors {}..={}, {ENTRIES} entries at LBA 2 and {}",
            Self::FIRST_USABLE,
            self.last_usable(),
            self.sectors - 1 - ARRAY_SECTORS
        );
        for (i, p) in self.partitions.iter().enumerate() {
            let _ = writeln!(
                s,
                "{}: {:?} sectors {}..={} ({} MiB) type {} GUID {} attributes {:#x}",
                i + 1,
                p.name,
                p.first_lba,
                p.last_lba,
                ((p.last_lba - p.first_lba + 1) * SECTOR) >> 20,
                p.type_guid,
                p.guid,
                p.attributes
            );
        }
        s
    }
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses for headers and entries.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Disk {
        Disk {
            sectors: 2048 * 10,
            guid: Guid::from_hash([0x11; 16]),
            partitions: vec![Partition {
                type_guid: ESP_TYPE,
                guid: Guid::from_hash([0x22; 16]),
                first_lba: 2048,
                last_lba: 2048 * 9 - 1,
                attributes: LEGACY_BIOS_BOOTABLE,
                name: "cellos-boot".into(),
            }],
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn guids_print_the_way_tools_show_them() {
        assert_eq!(ESP_TYPE.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(
            ESP_TYPE.0[..4],
            [0x28, 0x73, 0x2A, 0xC1],
            "first field little-endian on disk"
        );
        let g = Guid::from_hash([0xff; 16]).to_string();
        assert_eq!(&g[14..15], "4", "version 4: {g}");
        assert!(matches!(&g[19..20], "8" | "9" | "A" | "B"), "variant: {g}");
    }

    #[test]
    fn headers_and_entries_check_out() {
        let disk = sample();
        disk.check().unwrap();
        let primary = disk.primary(&[0xAB; 440]);
        assert_eq!(primary.len() as u64, Disk::FIRST_USABLE * SECTOR);
        assert_eq!(&primary[..440], &[0xAB; 440][..]);
        assert_eq!(&primary[510..512], &[0x55, 0xAA]);
        assert_eq!(primary[446 + 4], 0xEE);
        let backup = disk.backup();
        assert_eq!(
            disk.backup_offset() + backup.len() as u64,
            disk.sectors * SECTOR
        );
        for (header, entries) in [
            (&primary[512..1024], &primary[1024..]),
            (&backup[backup.len() - 512..], &backup[..backup.len() - 512]),
        ] {
            assert_eq!(&header[..8], b"EFI PART");
            let mut zeroed = header[..92].to_vec();
            zeroed[16..20].fill(0);
            assert_eq!(header[16..20], crc32(&zeroed).to_le_bytes());
            assert_eq!(header[88..92], crc32(entries).to_le_bytes());
            assert_eq!(&entries[..16], &ESP_TYPE.0);
            let name: Vec<u16> = entries[56..56 + 22]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            assert_eq!(String::from_utf16(&name).unwrap(), "cellos-boot");
        }
        // The primary points at the backup and back.
        let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        assert_eq!(u64_at(&primary[512..], 32), disk.sectors - 1);
        assert_eq!(u64_at(&backup[backup.len() - 512..], 32), 1);
    }

    #[test]
    fn layout_matches_golden() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/gpt-layout.txt");
        let actual = sample().describe();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            actual,
            expected,
            "{}; regenerate with UPDATE_GOLDEN=1",
            path.display()
        );
    }

    #[test]
    fn overlapping_or_oversized_partitions_are_refused() {
        let mut disk = sample();
        disk.partitions[0].last_lba = disk.sectors;
        assert!(disk.check().is_err());
        let mut disk = sample();
        disk.partitions[0].first_lba = 1;
        assert!(disk.check().is_err());
        let mut disk = sample();
        disk.partitions[0].name = "x".repeat(37);
        assert!(disk.check().is_err());
    }
}
