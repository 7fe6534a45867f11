//! The QEMU command line for a `Config`. Kept pure (paths in, strings out)
//! so a unit test pins exactly what QEMU gets.
//!
//! Choices: q35 with `-nodefaults` so the guest has only what we add;
//! `-no-reboot` so a kernel panic (`panic=1`) ends QEMU instead of looping;
//! no display, serial console to a file, QMP on a unix socket for ACPI
//! power-off; disks on virtio-scsi because scsi-hd carries rotation_rate,
//! which is how the guest tells SSD from HDD.

use std::path::{Path, PathBuf};

use crate::config::{Accel, Boot, Config, DiskKind, Firmware, Protocol};
use crate::error::{Error, Result};

/// A disk as attached: its image file and format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttachedDisk {
    pub path: PathBuf,
    pub format: &'static str,
    pub kind: DiskKind,
}

/// Checks a QEMU memory size: digits with an optional K/M/G/T suffix.
fn check_memory(memory: &str) -> Result<()> {
    let digits = memory.trim_end_matches(['K', 'M', 'G', 'T']);
    let suffixes = memory.len() - digits.len();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || suffixes > 1 {
        return Err(Error::Config(format!(
            "memory {memory:?} is not a size like 2G or 512M"
        )));
    }
    Ok(())
}

/// QEMU splits `-netdev`/`-drive` values on commas; a path holding one
/// would be misparsed, so refuse it.
fn check_option_value(what: &str, value: &str) -> Result<()> {
    if value.contains(',') {
        return Err(Error::Config(format!("{what} {value:?} contains a comma")));
    }
    Ok(())
}

/// Where a [`Boot::Usb`] image is copied in the work dir; QEMU writes there.
pub(crate) const USB_COPY: &str = "usb.img";

/// Debian's OVMF (package ovmf), as QEMU's data dir names it.
const OVMF: &str = "/usr/share/qemu/OVMF.fd";

pub(crate) fn argv(
    config: &Config,
    accel: Accel,
    work: &Path,
    disks: &[AttachedDisk],
) -> Result<Vec<String>> {
    check_memory(&config.memory)?;
    if config.cpus == 0 {
        return Err(Error::Config("cpus must be at least 1".into()));
    }
    let path = |p: &Path| p.display().to_string();
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let (accel_name, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        // Auto is resolved before we get here; treat it as the safe choice.
        Accel::Tcg | Accel::Auto => ("tcg", "max"),
    };
    push(&["-name", "cellos"]);
    push(&["-machine", &format!("q35,accel={accel_name}")]);
    push(&["-cpu", cpu]);
    push(&["-m", &config.memory]);
    push(&["-smp", &config.cpus.to_string()]);
    push(&["-nodefaults", "-display", "none", "-no-reboot"]);
    if config.vga {
        push(&["-device", "VGA"]);
    }
    if config.firmware == Firmware::Uefi {
        // OVMF.fd is code and variables in one read-only image: no NVRAM
        // survives, which suits a stateless node.
        push(&["-bios", OVMF]);
    }
    push(&[
        "-serial",
        &format!("file:{}", path(&work.join("console.log"))),
    ]);
    // The second serial port (ttyS1): a node booted with cellos.debug runs a shell
    // on it, which tests drive through this socket (`Vm::shell`).
    push(&[
        "-chardev",
        &format!(
            "socket,id=shell,path={},server=on,wait=off",
            path(&work.join("shell.sock"))
        ),
        "-serial",
        "chardev:shell",
    ]);
    let qmp = work.join("qmp.sock");
    push(&["-qmp", &format!("unix:{},server=on,wait=off", path(&qmp))]);

    let mut netdev = "user,id=n0".to_string();
    match &config.boot {
        Boot::Direct {
            kernel,
            initrd,
            cmdline,
        } => {
            push(&["-kernel", &path(kernel), "-initrd", &path(initrd)]);
            push(&["-append", cmdline]);
        }
        Boot::Pxe { tftp_dir, bootfile } => {
            check_option_value("TFTP dir", &path(tftp_dir))?;
            check_option_value("bootfile", bootfile)?;
            netdev.push_str(&format!(",tftp={},bootfile={bootfile}", path(tftp_dir)));
            push(&["-boot", "n"]);
        }
        Boot::Usb { .. } => {
            let copy = path(&work.join(USB_COPY));
            check_option_value("USB image", &copy)?;
            push(&["-device", "qemu-xhci,id=xhci"]);
            push(&[
                "-drive",
                &format!("file={copy},format=raw,if=none,id=usb0,cache=unsafe"),
            ]);
            // bootindex puts the stick before the NIC's PXE ROM, under
            // SeaBIOS and OVMF alike; removable=on is what a real stick says.
            push(&[
                "-device",
                "usb-storage,bus=xhci.0,drive=usb0,removable=on,bootindex=0",
            ]);
        }
    }
    for fwd in &config.hostfwd {
        let proto = match fwd.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        netdev.push_str(&format!(
            ",hostfwd={proto}::{}-:{}",
            fwd.host_port, fwd.guest_port
        ));
    }
    push(&["-netdev", &netdev]);
    // virtio-net's option ROM is iPXE (ipxe-qemu), which PXE boot relies on.
    push(&["-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"]);
    if let Some(port) = &config.segment {
        // The guest's second NIC (eth1): one UDP datagram per frame to the hub.
        push(&[
            "-netdev",
            &format!("socket,id=n1,udp={},localaddr={}", port.hub, port.local),
        ]);
        // No option ROM: only the first NIC may PXE boot.
        push(&[
            "-device",
            &format!("virtio-net-pci,netdev=n1,mac={},romfile=", port.mac),
        ]);
    }

    if !disks.is_empty() {
        push(&["-device", "virtio-scsi-pci,id=scsi0"]);
    }
    for (i, disk) in disks.iter().enumerate() {
        check_option_value("disk path", &path(&disk.path))?;
        let rotation = match disk.kind {
            DiskKind::Ssd => 1,
            DiskKind::Hdd => 7200,
        };
        push(&[
            "-drive",
            &format!(
                "file={},format={},if=none,id=disk{i},cache=unsafe",
                path(&disk.path),
                disk.format
            ),
        ]);
        push(&[
            "-device",
            &format!(
                "scsi-hd,bus=scsi0.0,drive=disk{i},serial=cellos-disk{i},rotation_rate={rotation}"
            ),
        ]);
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Disk, HostFwd};
    use crate::segment::SegmentPort;

    fn golden(name: &str, args: &[String]) {
        let actual = args.join("\n") + "\n";
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &actual).unwrap();
            return;
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
    fn direct_boot_with_disks_and_forwards() {
        let mut config = Config::new(Boot::Direct {
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initramfs.cpio.zst".into(),
            cmdline: "console=ttyS0,115200 panic=1 cellos.farm=1".into(),
        });
        config.disks = vec![
            Disk::new(1 << 30, DiskKind::Ssd),
            Disk::new(2 << 30, DiskKind::Hdd),
        ];
        config.hostfwd = vec![HostFwd {
            protocol: Protocol::Tcp,
            host_port: 2222,
            guest_port: 22,
        }];
        config.segment = Some(SegmentPort {
            hub: "127.0.0.1:4000".parse().unwrap(),
            local: "127.0.0.1:4001".parse().unwrap(),
            mac: "52:54:00:77:00:01".into(),
        });
        config.vga = true;
        let disks = [
            AttachedDisk {
                path: "/w/disk0.qcow2".into(),
                format: "qcow2",
                kind: DiskKind::Ssd,
            },
            AttachedDisk {
                path: "/w/disk1.qcow2".into(),
                format: "qcow2",
                kind: DiskKind::Hdd,
            },
        ];
        let args = argv(&config, Accel::Tcg, Path::new("/w"), &disks).unwrap();
        golden("argv-direct.txt", &args);
        let joined = args.join(" ");
        assert!(joined.contains("-machine q35,accel=tcg"));
        assert!(joined.contains("-no-reboot"));
        assert!(joined.contains("-display none -no-reboot -device VGA"));
        assert!(joined.contains("-append console=ttyS0,115200 panic=1 cellos.farm=1"));
        assert!(joined.contains("rotation_rate=1 ") && joined.contains("rotation_rate=7200"));
        assert!(joined.contains("hostfwd=tcp::2222-:22"));
        assert!(joined.contains("-netdev socket,id=n1,udp=127.0.0.1:4000,localaddr=127.0.0.1:4001"));
        assert!(joined.contains("virtio-net-pci,netdev=n1,mac=52:54:00:77:00:01"));
    }

    #[test]
    fn pxe_boot_uses_slirp_tftp() {
        let config = Config::new(Boot::Pxe {
            tftp_dir: "/srv/tftp".into(),
            bootfile: "boot.ipxe".into(),
        });
        let args = argv(&config, Accel::Kvm, Path::new("/w"), &[]).unwrap();
        golden("argv-pxe.txt", &args);
        assert!(!args.contains(&"-bios".to_string()));
        let uefi = Config {
            firmware: Firmware::Uefi,
            ..config
        };
        let uefi = argv(&uefi, Accel::Kvm, Path::new("/w"), &[])
            .unwrap()
            .join(" ");
        assert!(uefi.contains("-bios /usr/share/qemu/OVMF.fd"));
        let joined = args.join(" ");
        assert!(joined.contains("-netdev user,id=n0,tftp=/srv/tftp,bootfile=boot.ipxe"));
        assert!(joined.contains("-boot n"));
        assert!(joined.contains("-cpu host"));
        assert!(!joined.contains("-kernel") && !joined.contains("scsi"));
    }

    #[test]
    fn usb_boot_attaches_a_removable_stick() {
        let mut config = Config::new(Boot::Usb {
            image: "/img/cellos-usb.img".into(),
        });
        config.firmware = Firmware::Uefi;
        let args = argv(&config, Accel::Tcg, Path::new("/w"), &[]).unwrap();
        golden("argv-usb-uefi.txt", &args);
        let joined = args.join(" ");
        assert!(joined.contains("-bios /usr/share/qemu/OVMF.fd"));
        assert!(joined.contains("file=/w/usb.img,format=raw"), "a copy");
        assert!(!joined.contains("/img/cellos-usb.img"));
        assert!(!joined.contains("-kernel") && !joined.contains("-boot n"));
        assert!(argv(&config, Accel::Tcg, Path::new("/a,b"), &[]).is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        let mut config = Config::new(Boot::Pxe {
            tftp_dir: "/a,b".into(),
            bootfile: "boot.ipxe".into(),
        });
        assert!(argv(&config, Accel::Tcg, Path::new("/w"), &[]).is_err());
        config.boot = Boot::Pxe {
            tftp_dir: "/a".into(),
            bootfile: "x".into(),
        };
        for bad in ["", "2GG", "G", "1.5G", "-1"] {
            config.memory = bad.into();
            assert!(
                argv(&config, Accel::Tcg, Path::new("/w"), &[]).is_err(),
                "{bad}"
            );
        }
        config.memory = "512M".into();
        config.cpus = 0;
        assert!(argv(&config, Accel::Tcg, Path::new("/w"), &[]).is_err());
    }
}
