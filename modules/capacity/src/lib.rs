//! cellos-capacity: what hardware this node has, measured from /proc and /sys.
//!
//! The ledger sells a node's capacity, so the numbers here are what the farmer is paid
//! for: CRU (logical CPUs), MRU (memory bytes), SRU (SSD bytes), HRU (HDD bytes), plus
//! the node's physical NICs with their MAC and IPv4 addresses. Everything is read from
//! files under a [`HostPaths`] root so tests point it at fixture trees; the one thing
//! that is not a file (interface addresses, from `getifaddrs`) comes through the
//! [`Addresses`] trait, whose real implementation lives in [`sys`].
//!
//! It reads and never changes anything. A device whose attributes cannot be read is
//! skipped and reported in [`Inventory::skipped`] rather than failing the whole
//! measurement: one odd card reader must not keep a node off the ledger.
//!
//! Besides what is sold, the inventory lists the node's GPUs (PCI display
//! controllers, with the IOMMU group a passthrough would have to take whole) and
//! [`accel`] says whether virtual machines run under KVM or emulated (TCG); both go
//! into the node's ledger record.
//!
//! SRU and HRU here are the sizes of non-removable disks by their rotational flag: the
//! raw hardware. What the node sells is less (a disk holding foreign data is left
//! alone, a "SSD" that seeks like a disk is an HDD), so cellosd reports the sizes of
//! the storage module's pools instead and keeps these for the inventory line.

pub mod sys;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cellos_ledger::{Gpu, Interface, Resources};

pub use cellos_ledger::Accel;

#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("listing interface addresses (getifaddrs)")]
    Addresses(#[source] std::io::Error),
}

/// Where the kernel's /proc and /sys are (`/proc` and `/sys` on a node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// One IPv4 address of an interface, as `getifaddrs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    pub interface: String,
    /// `a.b.c.d/prefix`, the form the ledger stores.
    pub cidr: String,
}

/// The IPv4 addresses configured on the host's interfaces.
pub trait Addresses {
    fn ipv4(&self) -> Result<Vec<IfAddr>, CapacityError>;
}

/// A whole block device from /sys/block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. `nvme0n1`, `sda`, `vda`.
    pub name: String,
    pub size: u64,
    pub rotational: bool,
    pub removable: bool,
}

/// What [`measure`] found.
#[derive(Debug)]
pub struct Inventory {
    pub resources: Resources,
    /// Disks counted or considered, sorted by name.
    pub disks: Vec<Disk>,
    /// Physical NICs, sorted by name, with sorted addresses.
    pub interfaces: Vec<Interface>,
    /// PCI display controllers, sorted by address.
    pub gpus: Vec<Gpu>,
    /// Devices that were skipped because their attributes could not be read.
    pub skipped: Vec<CapacityError>,
}

/// Block device name prefixes that are not disks the node can sell: loop and RAM
/// devices, optical drives, floppies, network block devices, device-mapper targets
/// (layered on disks already counted). md arrays are kept.
const NOT_DISKS: [&str; 7] = ["loop", "ram", "zram", "sr", "dm-", "fd", "nbd"];

/// Measures the host.
pub fn measure(paths: &HostPaths, addrs: &dyn Addresses) -> Result<Inventory, CapacityError> {
    let mut skipped = Vec::new();
    let cru = cpus(paths)?;
    let mru = memory(paths)?;
    let disks = disks(paths, &mut skipped)?;
    let interfaces = interfaces(paths, addrs, &mut skipped)?;
    let gpus = gpus(paths, &mut skipped)?;
    let fixed = |rotational: bool| -> u64 {
        disks
            .iter()
            .filter(|d| !d.removable && d.rotational == rotational)
            .fold(0u64, |sum, d| sum.saturating_add(d.size))
    };
    let resources = Resources {
        cru,
        mru,
        sru: fixed(false),
        hru: fixed(true),
    };
    Ok(Inventory {
        resources,
        disks,
        interfaces,
        gpus,
        skipped,
    })
}

/// The KVM API version every kernel since 2.6.22 answers; another answer is not a KVM
/// that QEMU drives.
const KVM_API_VERSION: i32 = 12;

/// The CPUID signature of QEMU's TCG, an emulated CPU.
const TCG_SIGNATURE: &[u8; 12] = b"TCGTCGTCGTCG";

/// How this node runs virtual machines: KVM when `/dev/kvm` opens read-write and
/// answers `KVM_GET_API_VERSION` with 12, TCG otherwise.
///
/// One exception: a node that is itself a guest of QEMU's TCG (every test node
/// here) gets a `/dev/kvm` that answers, because TCG emulates SVM and `kvm_amd`
/// loads on it, yet a KVM guest on top of that does not run (measured, issue 16).
/// Such a node says TCG.
pub fn accel() -> Accel {
    accel_of(Path::new("/dev/kvm"), sys::hypervisor_signature())
}

fn accel_of(dev: &Path, hypervisor: Option<[u8; 12]>) -> Accel {
    if hypervisor.as_ref() == Some(TCG_SIGNATURE) {
        return Accel::Tcg;
    }
    match sys::kvm_api_version(dev) {
        Ok(KVM_API_VERSION) => Accel::Kvm,
        _ => Accel::Tcg,
    }
}

/// Time since boot, from /proc/uptime.
pub fn uptime(paths: &HostPaths) -> Result<Duration, CapacityError> {
    let path = paths.proc.join("uptime");
    let text = read(&path)?;
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| CapacityError::Parse {
            path,
            reason: format!("expected seconds since boot, found {:?}", text.trim()),
        })
}

fn read(path: &Path) -> Result<String, CapacityError> {
    fs::read_to_string(path).map_err(|source| CapacityError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Logical CPUs: the online set from /sys, or the `processor` lines of /proc/cpuinfo
/// when /sys does not say.
fn cpus(paths: &HostPaths) -> Result<u64, CapacityError> {
    let online = paths.sys.join("devices/system/cpu/online");
    if let Some(n) = fs::read_to_string(&online)
        .ok()
        .and_then(|t| count_cpu_list(&t))
    {
        return Ok(n);
    }
    let path = paths.proc.join("cpuinfo");
    let n = read(&path)?
        .lines()
        .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
        .count() as u64;
    if n == 0 {
        return Err(CapacityError::Parse {
            path,
            reason: "no processor lines".into(),
        });
    }
    Ok(n)
}

/// Counts a kernel CPU list such as `0-3,6,8-9`; `None` if it is not one.
fn count_cpu_list(text: &str) -> Option<u64> {
    let mut n = 0u64;
    for part in text.trim().split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse::<u64>().ok()?, hi.parse::<u64>().ok()?),
            None => {
                let one = part.parse::<u64>().ok()?;
                (one, one)
            }
        };
        n = n.checked_add(hi.checked_sub(lo)? + 1)?;
    }
    (n > 0).then_some(n)
}

/// MemTotal from /proc/meminfo, in bytes.
fn memory(paths: &HostPaths) -> Result<u64, CapacityError> {
    let path = paths.proc.join("meminfo");
    let text = read(&path)?;
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .ok_or_else(|| CapacityError::Parse {
            path,
            reason: "no `MemTotal: <n> kB` line".into(),
        })?;
    Ok(kib.saturating_mul(1024))
}

/// Names in a directory, sorted; the directory must exist.
fn entries(dir: &Path) -> Result<Vec<String>, CapacityError> {
    let io = |source| CapacityError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for e in fs::read_dir(dir).map_err(io)? {
        names.push(e.map_err(io)?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn read_u64(path: &Path) -> Result<u64, CapacityError> {
    let text = read(path)?;
    text.trim().parse().map_err(|_| CapacityError::Parse {
        path: path.to_path_buf(),
        reason: format!("expected a number, found {:?}", text.trim()),
    })
}

fn disks(paths: &HostPaths, skipped: &mut Vec<CapacityError>) -> Result<Vec<Disk>, CapacityError> {
    let block = paths.sys.join("block");
    let mut out = Vec::new();
    for name in entries(&block)? {
        if NOT_DISKS.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dir = block.join(&name);
        let disk = (|| {
            Ok::<_, CapacityError>(Disk {
                // The kernel counts `size` in 512-byte sectors whatever the device's
                // logical block size.
                size: read_u64(&dir.join("size"))?.saturating_mul(512),
                rotational: read_u64(&dir.join("queue/rotational"))? != 0,
                removable: read_u64(&dir.join("removable"))? != 0,
                name: name.clone(),
            })
        })();
        match disk {
            // An empty card reader or a drive without media.
            Ok(d) if d.size == 0 => {}
            Ok(d) => out.push(d),
            Err(e) => skipped.push(e),
        }
    }
    Ok(out)
}

fn interfaces(
    paths: &HostPaths,
    addrs: &dyn Addresses,
    skipped: &mut Vec<CapacityError>,
) -> Result<Vec<Interface>, CapacityError> {
    let net = paths.sys.join("class/net");
    let mut ips: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in addrs.ipv4()? {
        ips.entry(a.interface).or_default().push(a.cidr);
    }
    let mut out = Vec::new();
    for name in entries(&net)? {
        let dir = net.join(&name);
        // Bridges, veths, tunnels and WireGuard have no `device`: they are ours, not
        // hardware. Loopback has none either.
        if name == "lo" || !dir.join("device").exists() {
            continue;
        }
        match read(&dir.join("address")) {
            Ok(mac) => {
                let mut ips = ips.remove(&name).unwrap_or_default();
                ips.sort();
                out.push(Interface {
                    name,
                    mac: mac.trim().to_string(),
                    ips,
                });
            }
            Err(e) => skipped.push(e),
        }
    }
    Ok(out)
}

/// The PCI base class of display controllers (VGA 0x0300, XGA 0x0301, 3D 0x0302,
/// other 0x0380): the top byte of the 24-bit class code.
const PCI_CLASS_DISPLAY: u32 = 0x03;

/// PCI display controllers from /sys/bus/pci/devices. A machine without a PCI bus in
/// /sys has none.
fn gpus(paths: &HostPaths, skipped: &mut Vec<CapacityError>) -> Result<Vec<Gpu>, CapacityError> {
    let pci = paths.sys.join("bus/pci/devices");
    if !pci.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for address in entries(&pci)? {
        let dir = pci.join(&address);
        let gpu = (|| {
            if read_hex(&dir.join("class"), 0xff_ffff)? >> 16 != PCI_CLASS_DISPLAY {
                return Ok(None);
            }
            let id = |name: &str| -> Result<u16, CapacityError> {
                // `read_hex` bounds it to 16 bits.
                Ok(read_hex(&dir.join(name), 0xffff)? as u16)
            };
            Ok::<_, CapacityError>(Some(Gpu {
                vendor: id("vendor")?,
                device: id("device")?,
                iommu_group: iommu_group(&dir.join("iommu_group"))?,
                address: address.clone(),
            }))
        })();
        match gpu {
            Ok(Some(g)) => out.push(g),
            Ok(None) => {}
            Err(e) => skipped.push(e),
        }
    }
    Ok(out)
}

/// A `0x`-prefixed hexadecimal number of at most `max`, as PCI attributes are written.
fn read_hex(path: &Path, max: u32) -> Result<u32, CapacityError> {
    let text = read(path)?;
    text.trim()
        .strip_prefix("0x")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .filter(|v| *v <= max)
        .ok_or_else(|| CapacityError::Parse {
            path: path.to_path_buf(),
            reason: format!(
                "expected a hexadecimal id up to {max:#x}, found {:?}",
                text.trim()
            ),
        })
}

/// The number at the end of the `iommu_group` link (`../../kernel/iommu_groups/7`);
/// no link, no IOMMU.
fn iommu_group(link: &Path) -> Result<Option<u32>, CapacityError> {
    let target = match fs::read_link(link) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CapacityError::Read {
                path: link.to_path_buf(),
                source,
            })
        }
    };
    target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .map(Some)
        .ok_or_else(|| CapacityError::Parse {
            path: link.to_path_buf(),
            reason: format!(
                "expected a link to an IOMMU group number, found {}",
                target.display()
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellos_ledger::GIB;

    struct FakeAddrs(Vec<(&'static str, &'static str)>);

    impl Addresses for FakeAddrs {
        fn ipv4(&self) -> Result<Vec<IfAddr>, CapacityError> {
            Ok(self
                .0
                .iter()
                .map(|(i, c)| IfAddr {
                    interface: i.to_string(),
                    cidr: c.to_string(),
                })
                .collect())
        }
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("fixture paths have a parent")).expect("mkdir");
        fs::write(p, text).expect("write fixture");
    }

    fn disk(root: &Path, name: &str, sectors: u64, rotational: u8, removable: u8) {
        write(
            root,
            &format!("sys/block/{name}/size"),
            &format!("{sectors}\n"),
        );
        let rot = format!("{rotational}\n");
        write(root, &format!("sys/block/{name}/queue/rotational"), &rot);
        let rem = format!("{removable}\n");
        write(root, &format!("sys/block/{name}/removable"), &rem);
    }

    fn nic(root: &Path, name: &str, mac: &str, physical: bool) {
        write(
            root,
            &format!("sys/class/net/{name}/address"),
            &format!("{mac}\n"),
        );
        if physical {
            let dev = root.join("sys/devices/pci0000:00/0000:00:03.0");
            fs::create_dir_all(&dev).expect("mkdir");
            let link = root.join(format!("sys/class/net/{name}/device"));
            std::os::unix::fs::symlink(&dev, link).expect("symlink");
        }
    }

    /// A PCI function as /sys/bus/pci/devices shows it; with an IOMMU, its group link.
    fn pci(root: &Path, addr: &str, class: &str, vendor: &str, device: &str, group: Option<u32>) {
        let dir = format!("sys/bus/pci/devices/{addr}");
        write(root, &format!("{dir}/class"), &format!("{class}\n"));
        write(root, &format!("{dir}/vendor"), &format!("{vendor}\n"));
        write(root, &format!("{dir}/device"), &format!("{device}\n"));
        if let Some(g) = group {
            let target = format!("../../../../kernel/iommu_groups/{g}");
            let link = root.join(format!("{dir}/iommu_group"));
            std::os::unix::fs::symlink(target, link).expect("symlink");
        }
    }

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: QEMU Virtual CPU version 2.5+\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n\n";
    const MEMINFO: &str =
        "MemTotal:        2030320 kB\nMemFree:         1811344 kB\nMemAvailable:    1780000 kB\n";

    /// A two-CPU QEMU guest: a virtio SSD, an HDD, a USB stick, and the devices that
    /// must not count.
    fn fixture() -> (tempfile::TempDir, HostPaths) {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = dir.path();
        write(r, "proc/cpuinfo", CPUINFO);
        write(r, "proc/meminfo", MEMINFO);
        write(r, "proc/uptime", "350735.47 234388.90\n");
        disk(r, "vda", 41_943_040, 0, 0); // 20 GiB SSD
        disk(r, "sda", 2_097_152_000, 1, 0); // ~1000 GiB HDD
        disk(r, "sdb", 15_728_640, 0, 1); // 7.5 GiB USB stick
        disk(r, "md0", 2_097_152, 0, 0); // 1 GiB array
        disk(r, "sr0", 2_097_152, 1, 1);
        disk(r, "loop0", 1024, 0, 0);
        disk(r, "zram0", 1024, 0, 0);
        disk(r, "ram0", 1024, 0, 0);
        disk(r, "dm-0", 1024, 0, 0);
        disk(r, "mmcblk0", 0, 0, 1); // card reader without a card
        nic(r, "eth0", "52:54:00:12:34:56", true);
        nic(r, "eth1", "52:54:00:12:34:57", true);
        nic(r, "lo", "00:00:00:00:00:00", false);
        nic(r, "br0", "52:54:00:aa:bb:cc", false);
        pci(r, "0000:00:00.0", "0x060000", "0x8086", "0x29c0", None); // host bridge
        pci(r, "0000:00:01.0", "0x030000", "0x1234", "0x1111", None); // QEMU std VGA
        pci(r, "0000:00:1f.2", "0x010601", "0x8086", "0x2922", None); // SATA
        pci(r, "0000:01:00.0", "0x030200", "0x10de", "0x20b0", Some(12)); // 3D
        pci(r, "0000:02:00.0", "0x038000", "0x1002", "0x744c", Some(13)); // other
        let paths = HostPaths {
            proc: r.join("proc"),
            sys: r.join("sys"),
        };
        (dir, paths)
    }

    fn addrs() -> FakeAddrs {
        FakeAddrs(vec![
            ("lo", "127.0.0.1/8"),
            ("eth0", "10.0.2.15/24"),
            ("br0", "10.1.0.1/16"),
            ("eth0", "10.0.3.1/24"),
        ])
    }

    #[test]
    fn measures_a_fixture_host() {
        let (_dir, paths) = fixture();
        let inv = measure(&paths, &addrs()).expect("measure");
        assert_eq!(inv.resources.cru, 2);
        assert_eq!(inv.resources.mru, 2_030_320 * 1024);
        assert_eq!(inv.resources.sru, 20 * GIB + GIB);
        assert_eq!(inv.resources.hru, 2_097_152_000 * 512);
        let names: Vec<_> = inv.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["md0", "sda", "sdb", "vda"]);
        assert!(inv.disks.iter().any(|d| d.name == "sdb" && d.removable));
        assert!(inv.skipped.is_empty(), "{:?}", inv.skipped);
        assert_eq!(
            inv.interfaces,
            vec![
                Interface {
                    name: "eth0".into(),
                    mac: "52:54:00:12:34:56".into(),
                    ips: vec!["10.0.2.15/24".into(), "10.0.3.1/24".into()],
                },
                Interface {
                    name: "eth1".into(),
                    mac: "52:54:00:12:34:57".into(),
                    ips: vec![],
                },
            ]
        );
    }

    #[test]
    fn display_controllers_are_the_gpus() {
        let (dir, paths) = fixture();
        let inv = measure(&paths, &addrs()).expect("measure");
        let gpu = |address: &str, vendor, device, iommu_group| Gpu {
            address: address.into(),
            vendor,
            device,
            iommu_group,
        };
        assert_eq!(
            inv.gpus,
            vec![
                gpu("0000:00:01.0", 0x1234, 0x1111, None),
                gpu("0000:01:00.0", 0x10de, 0x20b0, Some(12)),
                gpu("0000:02:00.0", 0x1002, 0x744c, Some(13)),
            ]
        );
        // A display controller whose ids cannot be read is skipped and said; one
        // whose group link points nowhere numbered likewise.
        write(
            dir.path(),
            "sys/bus/pci/devices/0000:01:00.0/device",
            "0x1ffff\n",
        );
        let bad = dir
            .path()
            .join("sys/bus/pci/devices/0000:02:00.0/iommu_group");
        fs::remove_file(&bad).expect("rm");
        std::os::unix::fs::symlink("../kernel/iommu_groups/x", &bad).expect("symlink");
        let inv = measure(&paths, &addrs()).expect("measure");
        assert_eq!(inv.gpus, vec![gpu("0000:00:01.0", 0x1234, 0x1111, None)]);
        let msgs: Vec<String> = inv.skipped.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(
            msgs[0].ends_with(
                "0000:01:00.0/device: expected a hexadecimal id up to 0xffff, found \"0x1ffff\""
            ),
            "{}",
            msgs[0]
        );
        assert!(
            msgs[1].contains("0000:02:00.0/iommu_group: expected a link to an IOMMU group number"),
            "{}",
            msgs[1]
        );
        // No PCI bus in /sys: no GPUs, no error.
        fs::remove_dir_all(dir.path().join("sys/bus")).expect("rm");
        assert!(measure(&paths, &addrs()).expect("measure").gpus.is_empty());
    }

    #[test]
    fn kvm_only_when_the_device_answers_its_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            accel_of(&dir.path().join("kvm"), None),
            Accel::Tcg,
            "no device"
        );
        // Opens read-write, but the ioctl is not its: ENOTTY.
        assert_eq!(accel_of(Path::new("/dev/null"), None), Accel::Tcg);
        let e = sys::kvm_api_version(Path::new("/dev/null")).expect_err("not KVM");
        assert_eq!(e.raw_os_error(), Some(nix::libc::ENOTTY), "{e}");
        // Where this runs with a usable /dev/kvm (this machine's host has one), the
        // real ioctl answers 12.
        let usable = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if usable {
            let kvm = Path::new("/dev/kvm");
            assert_eq!(accel_of(kvm, Some(*b"KVMKVMKVM\0\0\0")), Accel::Kvm);
            assert_eq!(accel_of(kvm, None), Accel::Kvm);
            // Under QEMU's TCG a device that answers is still no KVM that works.
            assert_eq!(accel_of(kvm, Some(*TCG_SIGNATURE)), Accel::Tcg);
            println!(
                "this machine's hypervisor: {:?}",
                sys::hypervisor_signature().map(|s| String::from_utf8_lossy(&s).into_owned())
            );
        } else {
            println!("SKIPPED: no usable /dev/kvm here; only the TCG cases ran");
        }
    }

    #[test]
    fn online_cpu_list_wins_over_cpuinfo() {
        let (dir, paths) = fixture();
        write(dir.path(), "sys/devices/system/cpu/online", "0-3,6,8-9\n");
        assert_eq!(measure(&paths, &addrs()).expect("measure").resources.cru, 7);
        assert_eq!(count_cpu_list("0\n"), Some(1));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("a-b"), None);
    }

    #[test]
    fn unreadable_devices_are_skipped_not_fatal() {
        let (dir, paths) = fixture();
        write(dir.path(), "sys/block/nvme0n1/size", "garbage\n");
        fs::remove_file(dir.path().join("sys/class/net/eth1/address")).expect("rm");
        let inv = measure(&paths, &addrs()).expect("measure");
        assert_eq!(inv.skipped.len(), 2, "{:?}", inv.skipped);
        let msgs: Vec<String> = inv.skipped.iter().map(|e| e.to_string()).collect();
        assert!(msgs[0].contains("nvme0n1/size: expected a number, found \"garbage\""));
        assert!(msgs[1].contains("eth1/address"), "{}", msgs[1]);
        assert_eq!(inv.interfaces.len(), 1);
        assert_eq!(inv.resources.sru, 21 * GIB);
    }

    #[test]
    fn missing_or_bad_core_files_fail_clearly() {
        let (dir, paths) = fixture();
        write(dir.path(), "proc/meminfo", "MemFree: 12 kB\n");
        let e = measure(&paths, &addrs()).expect_err("no MemTotal");
        assert!(e.to_string().contains("no `MemTotal: <n> kB` line"), "{e}");
        fs::remove_file(dir.path().join("proc/cpuinfo")).expect("rm");
        let e = measure(&paths, &addrs()).expect_err("no cpuinfo");
        assert!(e.to_string().starts_with("reading "), "{e}");
        assert!(e.to_string().contains("proc/cpuinfo"), "{e}");
    }

    #[test]
    fn uptime_from_proc() {
        let (dir, paths) = fixture();
        assert_eq!(uptime(&paths).expect("uptime").as_secs(), 350_735);
        write(dir.path(), "proc/uptime", "nope\n");
        let e = uptime(&paths).expect_err("bad uptime");
        assert!(e.to_string().contains("expected seconds since boot"), "{e}");
    }

    #[test]
    fn real_host_measures() {
        // Whatever machine runs the tests has CPUs, memory and a loopback interface.
        let inv = measure(&HostPaths::default(), &sys::SystemAddresses).expect("measure");
        assert!(inv.resources.cru > 0 && inv.resources.mru > 0);
        assert!(inv.interfaces.iter().all(|i| i.name != "lo"));
    }
}
