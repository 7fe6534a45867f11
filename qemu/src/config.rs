//! What a test or developer asks for: memory, CPUs, how the guest boots,
//! its disks and port forwards. Plain data; `args` turns it into argv.

use std::path::PathBuf;

use crate::segment::SegmentPort;

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM if /dev/kvm opens, else TCG.
    Auto,
    Kvm,
    /// Pure emulation. Tests use it: nested KVM guests hang on our CI hosts.
    Tcg,
}

/// The guest's firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default; fastest to PXE boot (DESIGN §8: ~10 s).
    Bios,
    /// OVMF (`/usr/share/qemu/OVMF.fd` from Debian's ovmf), for UEFI boots.
    Uefi,
}

/// How the guest gets its kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// QEMU loads kernel and initrd itself (fastest; no firmware boot menu).
    Direct {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
    },
    /// Network boot: the NIC's iPXE option ROM gets `bootfile` from
    /// QEMU's built-in TFTP server, which serves `tftp_dir`.
    Pxe { tftp_dir: PathBuf, bootfile: String },
    /// The firmware boots a raw disk image (`cellos-usb.img`) attached as
    /// a removable USB stick (qemu-xhci + usb-storage), as a farmer's
    /// server boots from its stick. QEMU works on a copy in the VM's work
    /// directory, so `image` stays as it was and a test may edit its own
    /// copy beforehand.
    Usb { image: PathBuf },
}

/// Whether the guest sees a disk as solid state or spinning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// rotation_rate=1: Linux reports /sys/block/X/queue/rotational = 0.
    Ssd,
    /// rotation_rate=7200: rotational = 1.
    Hdd,
}

/// Where a disk's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A new empty qcow2 of this many bytes in the VM's work directory.
    New { size: u64 },
    /// An existing image (qcow2 or raw), e.g. from an earlier boot, so a
    /// test can reboot a node onto the same disks.
    Existing(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub source: DiskSource,
    pub kind: DiskKind,
}

impl Disk {
    pub fn new(size: u64, kind: DiskKind) -> Disk {
        Disk {
            source: DiskSource::New { size },
            kind,
        }
    }

    pub fn existing(path: impl Into<PathBuf>, kind: DiskKind) -> Disk {
        Disk {
            source: DiskSource::Existing(path.into()),
            kind,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A port on the host forwarded to a port in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFwd {
    pub protocol: Protocol,
    pub host_port: u16,
    pub guest_port: u16,
}

/// One VM.
#[derive(Debug, Clone)]
pub struct Config {
    /// QEMU memory size, e.g. `2G` or `512M`.
    pub memory: String,
    pub cpus: u32,
    pub accel: Accel,
    pub firmware: Firmware,
    pub boot: Boot,
    pub disks: Vec<Disk>,
    /// Forwards on the user-mode network (the guest reaches the host at 10.0.2.2).
    pub hostfwd: Vec<HostFwd>,
    /// A second NIC on a shared segment with other guests ([`crate::Segment`]).
    pub segment: Option<SegmentPort>,
    /// A standard VGA adapter: the guest gets the local console (tty1) a server with a
    /// screen has, which the node's dashboard draws on. The display stays `none`; the
    /// guest's `/dev/vcs1` holds the screen's text.
    pub vga: bool,
    /// Where console.log, qmp.sock and new disks go. `None`: a temporary
    /// directory removed with the `Vm`; give one to keep disks for a reboot.
    pub work_dir: Option<PathBuf>,
}

impl Config {
    /// 2 GiB, 2 CPUs, accelerator chosen automatically, BIOS, no disks, no VGA.
    pub fn new(boot: Boot) -> Config {
        Config {
            memory: "2G".into(),
            cpus: 2,
            accel: Accel::Auto,
            firmware: Firmware::Bios,
            boot,
            disks: Vec::new(),
            hostfwd: Vec::new(),
            segment: None,
            vga: false,
            work_dir: None,
        }
    }
}
