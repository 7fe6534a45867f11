//! Full builds against Debian's real kernel package (downloads ~70 MB into
//! the cache on first run). Named `vm_*` as the slow tier.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use cellos_image::{build, BootParams, BuildOptions, Install};

fn options(out: &Path) -> BuildOptions {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut opts = BuildOptions::new(
        root.join("os/manifest.toml"),
        out,
        BootParams {
            farm: 3,
            ledger: "http://10.0.2.2:8080".into(),
            enroll: None,
            extra: String::new(),
        },
    );
    // Any dynamically linked binary exercises the library closure; this
    // test's own executable is one.
    opts.binaries = vec![Install::new(std::env::current_exe().unwrap(), "/init")];
    opts.zstd_level = 3;
    opts
}

fn cpio_listing(initramfs: &Path) -> String {
    let raw = zstd::decode_all(std::fs::File::open(initramfs).unwrap()).unwrap();
    let mut child = std::process::Command::new("cpio")
        .args(["-itv", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &raw));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn vm_build_is_complete_and_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b): (PathBuf, PathBuf) = (dir.path().join("a"), dir.path().join("b"));
    let log = |l: &str| eprintln!("build: {l}");
    let first = build(&options(&a), &log).unwrap_or_else(|e| panic!("{e}"));
    let second = build(&options(&b), &log).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{first:#?}");
    for name in [
        "vmlinuz",
        "initramfs.cpio.zst",
        "boot.ipxe",
        "cellos-usb.img",
    ] {
        let (x, y) = (
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
        );
        // Not assert_eq: a diff of two 100 MB vectors is no help.
        let first_difference = x.iter().zip(&y).position(|(p, q)| p != q);
        assert!(
            x.len() == y.len() && first_difference.is_none(),
            "{name} differs between two builds: sizes {} and {}, first difference at byte {first_difference:?}",
            x.len(),
            y.len()
        );
    }
    assert_eq!(second.kernel_release, first.kernel_release);
    assert_eq!(second.packages, first.packages);
    assert!(
        first.packages.iter().any(|p| p.starts_with("btrfs-progs=")),
        "{:?}",
        first.packages
    );
    assert!(first
        .cmdline
        .ends_with("cellos.farm=3 cellos.ledger=http://10.0.2.2:8080"));

    let listing = cpio_listing(&first.initramfs);
    let release = &first.kernel_release;
    for want in [
        "init".to_string(),
        "bin/busybox".into(),
        "sbin/modprobe -> /init".into(),
        "etc/cellos/manifest.toml".into(),
        "etc/cellos/modules.load".into(),
        "lib64/ld-linux-x86-64.so.2".into(),
        "lib/x86_64-linux-gnu/libc.so.6".into(),
        format!("lib/modules/{release}/modules.dep"),
        format!("lib/modules/{release}/kernel/fs/btrfs/btrfs.ko"),
        // btrfs's softdep on crypto-crc32c
        format!("lib/modules/{release}/kernel/crypto/crc32c_generic.ko"),
        format!("lib/modules/{release}/kernel/drivers/acpi/button.ko"),
        // [packages]: files from the .debs, with their libraries.
        "sbin/mkfs.btrfs".into(),
        "bin/btrfs".into(),
        "lib/x86_64-linux-gnu/liblzo2.so.2".into(),
        "lib/x86_64-linux-gnu/libzstd.so.1".into(),
        "lib/x86_64-linux-gnu/libblkid.so.1".into(),
        "lib/x86_64-linux-gnu/libuuid.so.1".into(),
        "lib/x86_64-linux-gnu/libudev.so.1".into(),
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {want}"))),
            "{want} missing from:\n{listing}"
        );
    }
    for dir in ["dev", "proc", "sys", "run", "tmp", "mnt", "etc/cellos"] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with('d') && l.ends_with(&format!(" {dir}"))),
            "{dir}"
        );
    }
    // Only what the manifest asks for: no sound drivers.
    assert!(!listing.contains("kernel/sound/"));
}
