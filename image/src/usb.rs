//! `cellos-usb.img`: one disk image that boots on UEFI and on legacy BIOS,
//! carrying the same kernel and initramfs as the PXE bundle.
//!
//! Layout: a GPT disk with one partition, the EFI system partition (FAT32,
//! named `cellos-boot`, marked legacy-BIOS-bootable), starting at 1 MiB:
//! - UEFI: the firmware runs `/EFI/BOOT/BOOTX64.EFI`, a unified kernel image
//!   (systemd's EFI stub from Debian's systemd-boot-efi with the kernel,
//!   initramfs and cmdline added as PE sections by objcopy). No boot loader
//!   and no loader config: one file that boots, ~9 s to init under TCG
//!   (DESIGN §8).
//! - BIOS: syslinux's gptmbr.bin in the protective MBR boots the partition
//!   marked legacy-BIOS-bootable; its boot sector (written by the syslinux
//!   installer) loads `/syslinux/ldlinux.sys`, which reads
//!   `/syslinux/syslinux.cfg` and boots `/vmlinuz` with `/initramfs.cpio.zst`.
//! - `/cellos.cfg`: farm, ledger, token and extra settings, which a farmer
//!   edits on any computer; init reads it at boot and its values win over
//!   the cmdline's. The cmdline carries [`USB_MARKER`] so init knows to look
//!   for it. Names and parser are the contract in [`cellos_boot::stick`].
//!
//! Built without root or loop devices: the FAT filesystem is made in a file
//! with mtools, the syslinux installer works on that file, and the GPT is
//! written from Rust ([`crate::gpt`]). Reproducible: mtools stamps every
//! file with the build's mtime, the FAT serial number and the GPT GUIDs are
//! derived from the content, and the stub comes from a pinned .deb.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cellos_boot::stick::{CONFIG_FILE, PARTITION_NAME, USB_MARKER};

use crate::boot::{syslinux_cfg, usb_config, BootParams};
use crate::deb;
use crate::error::{io, Error, Result};
use crate::gpt::{self, Disk, Guid, Partition, SECTOR};
use crate::sys;

/// File name of the USB image in the output directory.
pub const USB_IMAGE: &str = "cellos-usb.img";
/// Where the boot partition starts, in bytes: for mtools, `-i IMG@@1M`.
pub const ESP_OFFSET: u64 = 1 << 20;

/// Debian package and path of the UKI stub.
const STUB_PACKAGE: &str = "systemd-boot-efi";
const STUB_PATH: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// syslinux's GPT-aware MBR boot code (package syslinux-common, which the
/// syslinux installer on the host depends on, so the two always match).
const GPTMBR: &str = "/usr/lib/syslinux/mbr/gptmbr.bin";
/// The file the UEFI firmware boots from removable media.
const EFI_BOOT: &str = "/EFI/BOOT/BOOTX64.EFI";
const VOLUME_LABEL: &str = "CELLOS";
/// FAT timestamps start in 1980; an earlier build mtime is clamped.
const FAT_EPOCH: u32 = 315_532_800;

/// What goes on the stick.
#[derive(Debug, Clone)]
pub struct UsbInputs<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The full kernel cmdline (base + cellos.* parameters), without the
    /// USB marker, which is added here.
    pub cmdline: &'a str,
    /// The values written to cellos.cfg (the same ones the cmdline has).
    pub boot: &'a BootParams,
    /// Download cache for the stub package.
    pub cache: &'a Path,
    /// Timestamp of every file on the FAT filesystem.
    pub mtime: u32,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct UsbImage {
    pub path: PathBuf,
    pub size: u64,
    /// The partition table, as [`Disk::describe`] prints it.
    pub layout: String,
    /// The stub package used, e.g. `systemd-boot-efi=252.39-1~deb12u2`.
    pub stub_package: String,
}

fn align(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

fn hash_file(h: &mut blake3::Hasher, path: &Path) -> Result<()> {
    let file = fs::File::open(path).map_err(io("cannot open", path))?;
    h.update_reader(file).map_err(io("cannot read", path))?;
    Ok(())
}

fn size_of(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path).map_err(io("cannot stat", path))?.len())
}

/// `SizeOfImage` of a PE file: where the sections objcopy adds can start.
fn pe_size_of_image(stub: &[u8], path: &Path) -> Result<u64> {
    // COFF header (20 bytes) after the signature, then the optional header,
    // whose SizeOfImage sits at offset 56 in PE32 and PE32+ alike.
    let o = pe_header(stub, path)? + 4 + 20 + 56;
    Ok(u64::from(u32::from_le_bytes([
        stub[o],
        stub[o + 1],
        stub[o + 2],
        stub[o + 3],
    ])))
}

/// The PE header offset of `pe`, checked.
fn pe_header(pe: &[u8], path: &Path) -> Result<usize> {
    let bad = |reason: &str| Error::Usb {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if pe.get(..2) != Some(b"MZ") {
        return Err(bad("not a PE file (no MZ)"));
    }
    let at = pe
        .get(0x3c..0x40)
        .ok_or_else(|| bad("truncated DOS header"))?;
    let at = u32::from_le_bytes([at[0], at[1], at[2], at[3]]) as usize;
    if pe.get(at..at + 4) != Some(b"PE\0\0") || pe.len() < at + 24 + 96 {
        return Err(bad("no PE signature and optional header"));
    }
    Ok(at)
}

/// objcopy stamps a PE file with the current time (SOURCE_DATE_EPOCH does
/// not reach it): set the COFF TimeDateStamp to `mtime` and recompute the
/// optional header's CheckSum, so the UKI is a function of its inputs.
fn set_pe_timestamp(pe: &mut [u8], mtime: u32, path: &Path) -> Result<()> {
    let at = pe_header(pe, path)?;
    pe[at + 8..at + 12].copy_from_slice(&mtime.to_le_bytes());
    let checksum_at = at + 24 + 64;
    pe[checksum_at..checksum_at + 4].fill(0);
    // The PE checksum: 16-bit one's-complement-style sum of the file (with
    // the checksum field zero), folded, plus the file length.
    let mut sum: u64 = 0;
    for chunk in pe.chunks(2) {
        let word = u16::from_le_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum += u64::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let sum = ((sum & 0xffff) + (sum >> 16)) as u32 & 0xffff;
    let total = sum.wrapping_add(pe.len() as u32);
    pe[checksum_at..checksum_at + 4].copy_from_slice(&total.to_le_bytes());
    Ok(())
}

/// Builds the UKI at `out` from the stub and the sections.
fn build_uki(
    stub: &Path,
    inputs: &UsbInputs,
    cmdline: &str,
    work: &Path,
    out: &Path,
) -> Result<()> {
    let bytes = fs::read(stub).map_err(io("cannot read", stub))?;
    let osrel = work.join("osrel");
    fs::write(&osrel, "ID=cellos\nNAME=cellos\nPRETTY_NAME=cellos node\n")
        .map_err(io("cannot write", &osrel))?;
    let cmdline_file = work.join("cmdline");
    fs::write(&cmdline_file, cmdline).map_err(io("cannot write", &cmdline_file))?;
    // Sections follow the stub in memory, each on a 64 KiB boundary and the
    // kernel on a 2 MiB one (its preferred alignment, so the kernel's own
    // EFI stub need not move it).
    let mut at = align(pe_size_of_image(&bytes, stub)?, 0x1_0000);
    let mut sections = Vec::new();
    for (name, file, alignment) in [
        (".osrel", osrel.as_path(), 0x1_0000),
        (".cmdline", cmdline_file.as_path(), 0x1_0000),
        (".linux", inputs.kernel, 0x20_0000),
        (".initrd", inputs.initrd, 0x1_0000),
    ] {
        at = align(at, alignment);
        sections.push((name, file, at));
        at += size_of(file)?;
    }
    sys::objcopy_add_sections(stub, &sections, out)?;
    let mut uki = fs::read(out).map_err(io("cannot read", out))?;
    set_pe_timestamp(&mut uki, inputs.mtime, out)?;
    fs::write(out, uki).map_err(io("cannot write", out))
}

/// Writes the USB image to `out`. `progress` gets one line per long step.
pub fn write(inputs: &UsbInputs, out: &Path, progress: &dyn Fn(&str)) -> Result<UsbImage> {
    let cmdline = format!("{} {USB_MARKER}", inputs.cmdline);
    let gptmbr = Path::new(GPTMBR);
    let boot_code = fs::read(gptmbr).map_err(io(
        "cannot read syslinux's GPT MBR (install syslinux-common: scripts/setup-debian.sh)",
        gptmbr,
    ))?;
    if boot_code.len() != gpt::BOOT_CODE {
        return Err(Error::Usb {
            path: gptmbr.to_path_buf(),
            reason: format!(
                "expected {} bytes of MBR code, found {}",
                gpt::BOOT_CODE,
                boot_code.len()
            ),
        });
    }
    let package = deb::candidate(STUB_PACKAGE)?;
    let root = deb::unpacked(&package, inputs.cache, progress)?;
    let stub = deb::resolve(&root, STUB_PATH)?;

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let work = tempfile::Builder::new()
        .prefix(".usb-")
        .tempdir_in(parent)
        .map_err(io("cannot create a temporary directory in", parent))?;
    let uki = work.path().join("BOOTX64.EFI");
    progress(&format!("UKI from {package}"));
    build_uki(&stub, inputs, &cmdline, work.path(), &uki)?;
    let config = work.path().join(CONFIG_FILE);
    fs::write(&config, usb_config(inputs.boot)).map_err(io("cannot write", &config))?;
    let kernel_name = crate::VMLINUZ;
    let initrd_name = crate::INITRAMFS;
    let syslinux = work.path().join("syslinux.cfg");
    fs::write(&syslinux, syslinux_cfg(kernel_name, initrd_name, &cmdline))
        .map_err(io("cannot write", &syslinux))?;

    // The ESP: its content plus an eighth and 4 MiB for FAT tables and
    // slack, at least 40 MiB (FAT32 wants 65525 clusters of 512 bytes).
    let content = size_of(&uki)? + size_of(inputs.kernel)? + size_of(inputs.initrd)? + (1 << 20);
    let esp_size = align((content + content / 8 + (4 << 20)).max(40 << 20), 1 << 20);
    let esp = work.path().join("esp.img");
    let file = fs::File::create(&esp).map_err(io("cannot create", &esp))?;
    file.set_len(esp_size).map_err(io("cannot size", &esp))?;
    drop(file);
    let epoch = inputs.mtime.max(FAT_EPOCH);
    let serial = {
        let mut h = blake3::Hasher::new();
        h.update(cmdline.as_bytes());
        h.update(usb_config(inputs.boot).as_bytes());
        for f in [inputs.kernel, inputs.initrd, stub.as_path()] {
            hash_file(&mut h, f)?;
        }
        let b = h.finalize();
        u32::from_le_bytes([
            b.as_bytes()[0],
            b.as_bytes()[1],
            b.as_bytes()[2],
            b.as_bytes()[3],
        ])
    };
    progress(&format!("FAT32 boot partition, {} MiB", esp_size >> 20));
    sys::mformat_fat32(&esp, ESP_OFFSET / SECTOR, serial, VOLUME_LABEL, epoch)?;
    sys::mmd(&esp, &["/EFI", "/EFI/BOOT", "/syslinux"], epoch)?;
    for (from, to) in [
        (uki.as_path(), EFI_BOOT.to_string()),
        (inputs.kernel, format!("/{kernel_name}")),
        (inputs.initrd, format!("/{initrd_name}")),
        (syslinux.as_path(), "/syslinux/syslinux.cfg".to_string()),
        (config.as_path(), format!("/{CONFIG_FILE}")),
    ] {
        sys::mcopy(&esp, from, &to, epoch)?;
    }
    sys::syslinux_install(&esp, "/syslinux", epoch)?;

    let mut esp_hash = blake3::Hasher::new();
    hash_file(&mut esp_hash, &esp)?;
    let esp_hash = esp_hash.finalize();
    let h = esp_hash.as_bytes();
    let guid = |from: usize| {
        let mut b = [0u8; 16];
        b.copy_from_slice(&h[from..from + 16]);
        Guid::from_hash(b)
    };
    let first = ESP_OFFSET / SECTOR;
    let disk_size = ESP_OFFSET + esp_size + (1 << 20);
    let disk = Disk {
        sectors: disk_size / SECTOR,
        guid: guid(0),
        partitions: vec![Partition {
            type_guid: gpt::ESP_TYPE,
            guid: guid(16),
            first_lba: first,
            last_lba: first + esp_size / SECTOR - 1,
            attributes: gpt::LEGACY_BIOS_BOOTABLE,
            name: PARTITION_NAME.into(),
        }],
    };
    disk.check().map_err(|reason| Error::Usb {
        path: out.to_path_buf(),
        reason,
    })?;

    progress(&format!(
        "writing {} ({} MiB)",
        out.display(),
        disk_size >> 20
    ));
    let tmp = work.path().join("disk.img");
    let mut f = fs::File::create(&tmp).map_err(io("cannot create", &tmp))?;
    f.set_len(disk_size).map_err(io("cannot size", &tmp))?;
    f.write_all(&disk.primary(&boot_code))
        .map_err(io("cannot write", &tmp))?;
    f.seek(SeekFrom::Start(ESP_OFFSET))
        .map_err(io("cannot seek in", &tmp))?;
    let mut part = fs::File::open(&esp).map_err(io("cannot open", &esp))?;
    std::io::copy(&mut part, &mut f).map_err(io("cannot copy the boot partition into", &tmp))?;
    f.seek(SeekFrom::Start(disk.backup_offset()))
        .map_err(io("cannot seek in", &tmp))?;
    f.write_all(&disk.backup())
        .map_err(io("cannot write", &tmp))?;
    f.sync_all().map_err(io("cannot sync", &tmp))?;
    drop(f);
    fs::rename(&tmp, out).map_err(io("cannot move the USB image to", out))?;
    Ok(UsbImage {
        path: out.to_path_buf(),
        size: disk_size,
        layout: disk.describe(),
        stub_package: package.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pe_size_of_image_is_read_from_the_optional_header() {
        let mut pe = vec![0u8; 0x200];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x80 + 24 + 56..0x80 + 24 + 60].copy_from_slice(&0x19300u32.to_le_bytes());
        let p = Path::new("stub");
        assert_eq!(pe_size_of_image(&pe, p).unwrap(), 0x19300);
        assert!(pe_size_of_image(&pe[..0x90], p).is_err());
        assert!(pe_size_of_image(b"ELF", p).is_err());
    }

    #[test]
    fn pe_timestamp_and_checksum_are_set() {
        let mut pe = vec![0u8; 0x201];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x88..0x8c].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        pe[0x200] = 0x7f;
        set_pe_timestamp(&mut pe, 1234, Path::new("x.efi")).unwrap();
        assert_eq!(pe[0x88..0x8c], 1234u32.to_le_bytes());
        // Words: MZ 0x5a4d, 0x80, PE 0x4550, 1234 (0x04d2), 0x7f; plus length.
        let sum = 0x5a4du32 + 0x80 + 0x4550 + 0x04d2 + 0x7f;
        let sum = (sum & 0xffff) + (sum >> 16);
        assert_eq!(pe[0xd8..0xdc], (sum + 0x201).to_le_bytes());
    }

    #[test]
    fn alignment() {
        assert_eq!(align(0x19300, 0x1_0000), 0x20000);
        assert_eq!(align(0x20000, 0x1_0000), 0x20000);
        assert_eq!(align(1, 1 << 20), 1 << 20);
    }
}
