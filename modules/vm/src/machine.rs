//! What a VM is, as QEMU's command line.
//!
//! The machine is Debian's full `qemu-system-x86_64` with the `pc` board and no
//! default devices: a serial console written to a file (so it survives cellosd and
//! is read like a container's log), a QMP socket, virtio disks (the boot disk or
//! the kernel's initrd, then the config drive, then the volumes in the order the
//! deployment lists them) and one virtio NIC on a tap device that is a port of the
//! tenant network's bridge. KVM when the node has it; otherwise TCG with a bounded
//! translation cache (QEMU's default would take up to a GiB of the node's memory
//! per VM). The NIC carries no option ROM (`romfile=`): nothing boots from the
//! network, and the node need not carry iPXE.
//!
//! QEMU's own sandbox (seccomp) is on: the process that runs a tenant's guest may
//! not spawn programs, raise privileges or use obsolete system calls.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// How guest code runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (`/dev/kvm`).
    Kvm,
    /// QEMU's translator: slow, but needs nothing from the CPU.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the VM boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// A kernel loaded by QEMU, with an initrd and a command line.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// The first virtio disk, through the firmware; `format` is `raw` or `qcow2`.
    Disk { path: PathBuf, format: &'static str },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// The node's name of the workload; also the guest's name for QEMU.
    pub name: String,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u64,
    pub boot: Boot,
    /// The cloud-init NoCloud image ([`crate::drive`]).
    pub config_drive: PathBuf,
    /// Raw files attached as further disks.
    pub disks: Vec<PathBuf>,
    /// The tap device of the NIC (opened by name in the namespace QEMU runs in).
    pub tap: String,
    pub mac: String,
    /// The serial console's file.
    pub console: PathBuf,
    /// Where the pid file and the QMP socket are.
    pub run_dir: PathBuf,
}

/// TCG's translation cache per VM, in MiB.
const TCG_CACHE_MIB: u32 = 128;

/// The guest's MAC address, from its workload key: stable across restarts and
/// reboots (the guest's network config matches on it), locally administered and
/// unicast (first byte `02`).
pub fn mac_for(key: &str) -> String {
    let h = Sha256::digest(key.as_bytes());
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        h[0], h[1], h[2], h[3], h[4]
    )
}

/// The QMP socket of a VM whose run directory is `run_dir`.
pub fn qmp_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("qmp.sock")
}

/// The pid file QEMU writes once it runs.
pub fn pid_file(run_dir: &Path) -> PathBuf {
    run_dir.join("pid")
}

/// A path as one QEMU option value: commas are doubled (QEMU's escape).
fn opt(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// QEMU's arguments (after the program name) for `m`.
pub fn argv(m: &Machine) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["-name", &format!("guest={},debug-threads=on", m.name)]);
    push(&["-machine", "pc"]);
    match m.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", &format!("tcg,tb-size={TCG_CACHE_MIB}")]),
    }
    push(&[
        "-smp",
        &m.cpus.to_string(),
        "-m",
        &format!("{}M", m.memory_mib),
    ]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    push(&[
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    match &m.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            push(&["-kernel", &kernel.display().to_string()]);
            if let Some(i) = initrd {
                push(&["-initrd", &i.display().to_string()]);
            }
            let cmdline = if cmdline.is_empty() {
                "console=ttyS0"
            } else {
                cmdline
            };
            push(&["-append", cmdline]);
        }
        Boot::Disk { path, format } => push(&[
            "-drive",
            &format!("file={},if=virtio,format={format}", opt(path)),
        ]),
    }
    push(&[
        "-drive",
        &format!(
            "file={},if=virtio,format=raw,readonly=on",
            opt(&m.config_drive)
        ),
    ]);
    for d in &m.disks {
        push(&["-drive", &format!("file={},if=virtio,format=raw", opt(d))]);
    }
    let vhost = if m.accel == Accel::Kvm {
        ",vhost=on"
    } else {
        ""
    };
    push(&[
        "-netdev",
        &format!(
            "tap,id=net0,ifname={},script=no,downscript=no{vhost}",
            m.tap
        ),
        "-device",
        &format!("virtio-net-pci,netdev=net0,mac={},romfile=", m.mac),
        "-device",
        "virtio-rng-pci",
    ]);
    push(&[
        "-chardev",
        &format!("file,id=console,path={},append=on", opt(&m.console)),
        "-serial",
        "chardev:console",
    ]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt(&qmp_socket(&m.run_dir))),
        "-pidfile",
        &pid_file(&m.run_dir).display().to_string(),
        "-daemonize",
    ]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            name: "c12-box".into(),
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 256,
            boot: Boot::Kernel {
                kernel: "/pool/vms/c12-box/kernel".into(),
                initrd: Some("/pool/vms/c12-box/initrd".into()),
                cmdline: String::new(),
            },
            config_drive: "/pool/vms/c12-box/config.img".into(),
            disks: vec!["/pool/volumes/c12-data/disk,1.raw".into()],
            tap: "t-abcdef".into(),
            mac: mac_for("c12-box"),
            console: "/pool/vms/c12-box/console.log".into(),
            run_dir: "/run/cellos/vms/c12-box".into(),
        }
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn a_kernel_boot() {
        let a = argv(&machine());
        assert_eq!(after(&a, "-accel"), ["tcg,tb-size=128"]);
        assert_eq!(
            after(&a, "-append"),
            ["console=ttyS0"],
            "the default cmdline"
        );
        assert_eq!(after(&a, "-initrd"), ["/pool/vms/c12-box/initrd"]);
        assert_eq!(
            after(&a, "-drive"),
            [
                "file=/pool/vms/c12-box/config.img,if=virtio,format=raw,readonly=on",
                "file=/pool/volumes/c12-data/disk,,1.raw,if=virtio,format=raw",
            ],
            "the config drive first, then the volumes, commas escaped"
        );
        let mac = mac_for("c12-box");
        assert_eq!(
            after(&a, "-device")[0],
            format!("virtio-net-pci,netdev=net0,mac={mac},romfile=")
        );
        assert_eq!(
            after(&a, "-netdev"),
            ["tap,id=net0,ifname=t-abcdef,script=no,downscript=no"]
        );
        assert_eq!(
            after(&a, "-qmp"),
            ["unix:/run/cellos/vms/c12-box/qmp.sock,server=on,wait=off"]
        );
        assert!(a.contains(&"-daemonize".to_string()));
        assert!(after(&a, "-sandbox")[0].contains("spawn=deny"));
    }

    #[test]
    fn a_disk_boot_under_kvm() {
        let mut m = machine();
        m.accel = Accel::Kvm;
        m.boot = Boot::Disk {
            path: "/pool/vms/c12-box/root.qcow2".into(),
            format: "qcow2",
        };
        let a = argv(&m);
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert_eq!(after(&a, "-cpu"), ["host"]);
        assert!(after(&a, "-kernel").is_empty() && after(&a, "-append").is_empty());
        assert_eq!(
            after(&a, "-drive")[0],
            "file=/pool/vms/c12-box/root.qcow2,if=virtio,format=qcow2",
            "the boot disk comes first"
        );
        assert!(after(&a, "-netdev")[0].ends_with(",vhost=on"));
    }

    #[test]
    fn macs_are_stable_local_and_unicast() {
        let a = mac_for("c1-vm");
        assert_eq!(a, mac_for("c1-vm"));
        assert_ne!(a, mac_for("c2-vm"));
        assert!(a.starts_with("02:") && a.len() == 17, "{a}");
    }
}
