//! Storage pools and a node identity that survives reboots, end to end: the real
//! image in QEMU (TCG) with virtio-scsi disks that QEMU presents as SSD
//! (rotation_rate=1) or HDD (7200), against a real ledger on the host.
//!
//! One node's life in four boots, sharing one ledger so "no second node" can be
//! checked (each boot under TCG costs 30-60 s, so scenarios share boots):
//! 1. fresh SSD + HDD + a disk holding ext4: pools on the first two, the ext4 disk is
//!    left alone; SRU/HRU on the ledger are the pools' sizes; the volume quota
//!    self-test runs the real btrfs volume code in the guest.
//! 2. the same disks again: the same node (same id, same key), still one node.
//! 3. the same disks, one more HDD, and `cellos.disks=wipe`: capacity grows, the ext4
//!    disk becomes a pool, still the same node.
//! 4. fresh disks: a new identity, a second node.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cellos_ledger::{keys, Node, NodeId};
use cellos_qemu::{Disk, Vm};
use cellos_tests::*;

const GIB: u64 = 1 << 30;
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// A raw disk image holding an ext4 filesystem, made on the host.
fn ext4_image(path: &Path, size: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(size))
        .expect("ext4 image");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "farmer-data"])
        .arg(path)
        .output()
        .expect("mkfs.ext4 (e2fsprogs) on the host");
    assert!(out.status.success(), "mkfs.ext4: {out:?}");
}

/// The ext4 superblock (1 KiB at 1024), whose magic sits at 1080.
fn ext4_superblock(path: &Path) -> Vec<u8> {
    let mut f = std::fs::File::open(path).expect("open image");
    f.seek(SeekFrom::Start(1024)).expect("seek");
    let mut sb = vec![0u8; 1024];
    f.read_exact(&mut sb).expect("read superblock");
    sb
}

/// Boots, waits for the registration line, checks the self-test if asked; returns
/// the VM and the node's record.
fn boot(
    ledger: &Ledger,
    params: &cellos_image::BootParams,
    disks: Vec<Disk>,
    work: &Path,
) -> (Vm, Node) {
    let mut config = vm_config(image().direct(params), disks);
    config.work_dir = Some(work.to_path_buf());
    let mut vm = start(config);
    let re = Regex::new(REGISTERED).expect("regex");
    let line = vm.wait_for(&re, BOOT_TIMEOUT).expect("node registers");
    let (id, _, _) = registered(&line);
    (vm, ledger.node(id))
}

/// Powers the VM off through init (which syncs), so the disks hold everything.
fn power_off(mut vm: Vm) -> String {
    vm.powerdown().expect("power button");
    let status = vm.wait_exit(STOP_TIMEOUT).expect("QEMU exits by itself");
    assert!(status.success(), "QEMU exit status {status}");
    let console = vm.console();
    // What the node said about its disks and key, for whoever reads the test log.
    for line in console.lines().filter(|l| {
        [
            "cellos: pool",
            "cellos: disk",
            "cellos: state",
            "cellos: node key",
            "cellos: selftest",
            "cellos: formatting",
        ]
        .iter()
        .any(|p| l.contains(p))
    }) {
        println!("guest: {}", line.trim_end());
    }
    console
}

fn assert_about(what: &str, got: u64, want: u64) {
    let diff = got.abs_diff(want);
    assert!(
        diff * 100 <= want * 3,
        "{what} is {got}, not within 3% of {want}"
    );
}

fn has(console: &str, pattern: &str) -> bool {
    Regex::new(pattern).expect("regex").is_match(console)
}

#[test]
fn vm_pools_capacity_and_identity_across_reboots() {
    let ledger = Ledger::start(0);
    let enroll = keys::generate();
    let farm = ledger.farm(&enroll);
    let mut params = boot_params(farm, &ledger.guest_url(), &enroll);
    let base_extra = params.extra.clone();
    let work = tempfile::tempdir().expect("tempdir");
    let ext4: PathBuf = work.path().join("farmer-ext4.raw");
    ext4_image(&ext4, GIB);
    let ext4_before = ext4_superblock(&ext4);
    assert_eq!(&ext4_before[56..58], b"\x53\xef", "ext4 magic");

    // 1. First boot.
    params.extra = format!("{base_extra} cellos.selftest=volume-quota");
    let disks = vec![
        Disk::new(4 * GIB, DiskKind::Ssd),
        Disk::new(8 * GIB, DiskKind::Hdd),
        Disk::existing(&ext4, DiskKind::Ssd),
    ];
    let (vm, node) = boot(&ledger, &params, disks, work.path());
    let qcow: Vec<PathBuf> = vm.disks()[..2].to_vec();
    let first: NodeId = node.id;
    let key = node.pubkey;
    let console = power_off(vm);
    assert_about("sru", node.capacity.sru, 4 * GIB);
    assert_about("hru", node.capacity.hru, 8 * GIB);
    for line in [
        r"cellos: pool ssd0 on sd[a-z] \(4\.0GiB, ssd\) mounted at /mnt/ssd0",
        r"cellos: pool hdd0 on sd[a-z] \(8\.0GiB, hdd\) mounted at /mnt/hdd0",
        r"cellos: state on /mnt/ssd0/state",
        r"cellos: disk sd[a-z] holds an ext2/3/4 filesystem; left alone \(boot with cellos.disks=wipe",
        r"cellos: node key [0-9a-f]{64} created in /mnt/ssd0/state/identity",
        r"cellos: selftest volume-quota: wrote \d+\.\dMiB into it, then: Disk quota exceeded",
        r"cellos: selftest volume-quota: wrote 32\.0MiB outside it on the same pool",
        r"cellos: selftest volume-quota passed",
    ] {
        assert!(has(&console, line), "no line {line:?} in:\n{console}");
    }
    assert_eq!(
        ext4_superblock(&ext4),
        ext4_before,
        "the ext4 superblock is untouched"
    );

    // 2. The same disks: the same node.
    params.extra = base_extra.clone();
    let same = |extra: Vec<Disk>| {
        let mut d = vec![
            Disk::existing(&qcow[0], DiskKind::Ssd),
            Disk::existing(&qcow[1], DiskKind::Hdd),
            Disk::existing(&ext4, DiskKind::Ssd),
        ];
        d.extend(extra);
        d
    };
    let (vm, node) = boot(&ledger, &params, same(vec![]), work.path());
    let console = power_off(vm);
    assert_eq!((node.id, node.pubkey), (first, key), "the same node");
    assert_eq!(ledger.nodes().len(), 1, "no second node");
    assert!(
        has(
            &console,
            r"cellos: node key [0-9a-f]{64} loaded from /mnt/ssd0/state/identity"
        ),
        "{console}"
    );
    assert!(!has(&console, "cellos: formatting"), "{console}");
    assert_about("sru", node.capacity.sru, 4 * GIB);
    assert_eq!(ext4_superblock(&ext4), ext4_before);

    // 3. One more HDD, and the farmer opts in to wiping: capacity grows.
    params.extra = format!("{base_extra} cellos.disks=wipe");
    let more = vec![Disk::new(4 * GIB, DiskKind::Hdd)];
    let (vm, node) = boot(&ledger, &params, same(more), work.path());
    let console = power_off(vm);
    assert_eq!((node.id, node.pubkey), (first, key), "still the same node");
    assert_eq!(ledger.nodes().len(), 1);
    assert_about("sru", node.capacity.sru, 5 * GIB);
    assert_about("hru", node.capacity.hru, 12 * GIB);
    for line in [
        r"cellos: disk sd[a-z] holds an ext2/3/4 filesystem; wiping it \(cellos.disks=wipe\)",
        r"cellos: formatting sd[a-z] as btrfs pool ssd1",
        r"cellos: formatting sd[a-z] as btrfs pool hdd1",
        r"cellos: state on /mnt/ssd0/state",
        r"cellos: node [0-9]+ capacity updated",
    ] {
        assert!(has(&console, line), "no line {line:?} in:\n{console}");
    }
    assert_ne!(ext4_superblock(&ext4), ext4_before, "wiped and taken");

    // 4. Fresh disks: a new node.
    params.extra = base_extra;
    let fresh = tempfile::tempdir().expect("tempdir");
    let disks = vec![Disk::new(4 * GIB, DiskKind::Ssd)];
    let (vm, node) = boot(&ledger, &params, disks, fresh.path());
    let console = power_off(vm);
    assert_ne!(node.pubkey, key, "a new identity");
    assert_ne!(node.id, first);
    assert_eq!(ledger.nodes().len(), 2);
    assert!(
        has(&console, r"cellos: node key [0-9a-f]{64} created in"),
        "{console}"
    );
}
