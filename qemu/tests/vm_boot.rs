//! Boots Debian's kernel with an image from cellos-image under TCG. The
//! init is a busybox script standing in for cellos-init: it loads the
//! manifest's always-load modules through modules.dep, prints markers, and
//! powers off when the ACPI power button is pressed. Named `vm_*` as the
//! slow tier; the first run downloads the kernel package into the cache.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cellos_image::{build, Artifacts, BootParams, BuildOptions, Install};
use cellos_qemu::{Accel, Boot, Config, Disk, DiskKind, Firmware, Regex, Segment, Vm};

/// PID 1 for these tests; as /sbin/modprobe (the kernel's module loader,
/// a symlink to /init) it hands over to busybox modprobe.
const INIT: &str = r#"#!/bin/busybox sh
bb=/bin/busybox
if [ $$ -ne 1 ]; then exec $bb modprobe "$@"; fi
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
echo "cellos-test: init started at $($bb cut -d' ' -f1 /proc/uptime)s"
for m in $($bb cat /etc/cellos/modules.load); do
  $bb modprobe $m || echo "cellos-test: modprobe $m failed"
done
# Coldplug as cellos-init does: device modaliases through modules.alias,
# again until the disks the test expects show (cellos.test.disks=N), since
# drivers bring up devices of their own asynchronously
# (virtio_pci -> virtio_scsi -> SCSI disks -> sd_mod).
want=$($bb sed -n 's/.*cellos.test.disks=\([0-9]*\).*/\1/p' /proc/cmdline)
for i in 1 2 3 4 5 6 7 8 9 10; do
  for a in /sys/bus/*/devices/*/modalias; do
    $bb modprobe -q $($bb cat $a) 2>/dev/null
  done
  [ "$($bb ls -d /sys/block/sd* 2>/dev/null | $bb wc -l)" -ge "${want:-0}" ] && break
  $bb sleep 1
done
echo "cellos-test: $($bb wc -l < /proc/modules) modules loaded, kernel $($bb uname -r)"
for b in /sys/block/sd*; do
  [ -e $b ] || continue
  echo "cellos-test: disk ${b##*/} rotational=$($bb cat $b/queue/rotational)"
done
# A second NIC on a shared segment (cellos.test.ip=ADDR/LEN), and a peer on it to
# ping (cellos.test.ping=ADDR) until it answers.
ip=$($bb sed -n 's/.*cellos.test.ip=\([0-9./]*\).*/\1/p' /proc/cmdline)
if [ -n "$ip" ]; then
  for i in $($bb seq 1 20); do
    [ -e /sys/class/net/eth1 ] && break
    for a in /sys/bus/*/devices/*/modalias; do $bb modprobe -q $($bb cat $a) 2>/dev/null; done
    $bb sleep 0.5
  done
  $bb ip link set eth1 up && $bb ip addr add $ip dev eth1
  echo "cellos-test: eth1 $ip mac $($bb cat /sys/class/net/eth1/address)"
  peer=$($bb sed -n 's/.*cellos.test.ping=\([0-9.]*\).*/\1/p' /proc/cmdline)
  for i in $($bb seq 1 60); do
    [ -n "$peer" ] || break
    $bb ping -c 1 -W 1 $peer >/dev/null 2>&1 && { echo "cellos-test: $peer answers"; break; }
  done
fi
btn=
for ev in /sys/class/input/event*; do
  [ "$($bb cat $ev/device/name)" = "Power Button" ] && btn=/dev/input/${ev##*/}
done
echo "cellos-test: up $($bb cut -d' ' -f1 /proc/uptime)s, power button at $btn"
$bb dd if=$btn of=/dev/null bs=24 count=1 2>/dev/null
echo "cellos-test: power button pressed"
$bb sleep 1  # let the UART drain before the power goes
$bb poweroff -f
"#;

/// Unwraps with the error's Display, which carries the console tail.
trait OrFail<T> {
    fn or_fail(self) -> T;
}

impl<T, E: std::fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self) -> T {
        self.unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Built once per test binary, shared by the tests.
fn image() -> &'static Artifacts {
    static IMAGE: OnceLock<Artifacts> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vm-boot-image");
        std::fs::create_dir_all(&dir).unwrap();
        let init = dir.join("init.sh");
        std::fs::write(&init, INIT).unwrap();
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../os/manifest.toml");
        let mut opts = BuildOptions::new(
            manifest,
            dir.join("out"),
            BootParams {
                farm: 1,
                ledger: "http://10.0.2.2:8080".into(),
                enroll: None,
                extra: String::new(),
            },
        );
        // /bin/busybox comes from the manifest's busybox-static package.
        opts.files = vec![Install::new(&init, "/init")];
        opts.zstd_level = 3;
        let artifacts = build(&opts, &|l| eprintln!("build: {l}")).or_fail();
        eprintln!(
            "image: vmlinuz {} bytes, initramfs {} bytes ({} uncompressed), {} modules",
            artifacts.vmlinuz_size,
            artifacts.initramfs_size,
            artifacts.initramfs_uncompressed_size,
            artifacts.module_count
        );
        artifacts
    })
}

/// Two TCG guests at once on a 2-core host only slow each other down.
fn one_vm_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn boot_and_power_off(mut vm: Vm) {
    let up = vm
        .wait_for("power button at /dev/input/event", BOOT_TIMEOUT)
        .or_fail();
    eprintln!("{up} (QEMU started {:.1?} ago)", vm.uptime());
    // The guest prints that line just before `dd` opens the button's device; a press
    // before that is lost (evdev keeps no events for readers not yet there), so press
    // until the guest sees one.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        vm.powerdown().or_fail();
        match vm.wait_for("cellos-test: power button pressed", Duration::from_secs(3)) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => {}
        }
    }
    let status = vm.wait_exit(Duration::from_secs(60)).or_fail();
    assert!(status.success(), "QEMU exited with {status}");
}

#[test]
fn vm_direct_boot_loads_modules_sees_disks_and_powers_off() {
    let image = image();
    let _guard = one_vm_at_a_time();
    let mut config = Config::new(Boot::Direct {
        kernel: image.vmlinuz.clone(),
        initrd: image.initramfs.clone(),
        cmdline: format!("{} cellos.test.disks=2", image.cmdline),
    });
    config.accel = Accel::Tcg;
    config.memory = "1G".into();
    config.disks = vec![
        Disk::new(1 << 30, DiskKind::Ssd),
        Disk::new(1 << 30, DiskKind::Hdd),
    ];
    let started = Instant::now();
    let mut vm = Vm::start(config).or_fail();
    let line = vm
        .wait_for("cellos-test: init started", BOOT_TIMEOUT)
        .or_fail();
    eprintln!("{line}, {:.1?} after QEMU started", started.elapsed());
    let loaded = Regex::new(r"cellos-test: \d+ modules loaded").unwrap();
    let line = vm.wait_for(&loaded, BOOT_TIMEOUT).or_fail();
    eprintln!("{line} after {:.1?}", started.elapsed());
    assert!(!vm.console().contains("failed"), "{}", vm.console());
    vm.wait_for("power button at", BOOT_TIMEOUT).or_fail();
    // Disks probe in parallel, so sda may be either: look at both lines.
    let console = vm.console();
    for rotational in ["0", "1"] {
        let line = Regex::new(&format!("disk sd[ab] rotational={rotational}")).unwrap();
        assert!(
            line.is_match(&console),
            "no disk with rotational={rotational}:\n{console}"
        );
    }
    assert_eq!(vm.disks().len(), 2);
    // The guest prints that line just before `dd` opens the button's device; a press
    // before that is lost (evdev keeps no events for readers not yet there), so press
    // until the guest sees one.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        vm.powerdown().or_fail();
        match vm.wait_for("cellos-test: power button pressed", Duration::from_secs(3)) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => {}
        }
    }
    assert!(vm.wait_exit(Duration::from_secs(60)).or_fail().success());
}

fn pxe_boot(firmware: Firmware) {
    let image = image();
    let _guard = one_vm_at_a_time();
    let tftp_dir = image.boot_ipxe.parent().unwrap().to_path_buf();
    let mut config = Config::new(Boot::Pxe {
        tftp_dir,
        bootfile: "boot.ipxe".into(),
    });
    config.accel = Accel::Tcg;
    config.firmware = firmware;
    config.memory = "1G".into();
    let vm = Vm::start(config).or_fail();
    boot_and_power_off(vm);
}

#[test]
fn vm_pxe_boot_over_tftp_bios() {
    pxe_boot(Firmware::Bios);
}

#[test]
fn vm_pxe_boot_over_tftp_uefi() {
    pxe_boot(Firmware::Uefi);
}

#[test]
fn vm_timeout_reports_the_console_then_qmp_quit_ends_qemu() {
    let image = image();
    let _guard = one_vm_at_a_time();
    let mut config = Config::new(Boot::Direct {
        kernel: image.vmlinuz.clone(),
        initrd: image.initramfs.clone(),
        // No console on ttyS0 except what init prints.
        cmdline: image.cmdline.clone(),
    });
    config.accel = Accel::Tcg;
    config.memory = "1G".into();
    let mut vm = Vm::start(config).or_fail();
    vm.wait_for("power button at", BOOT_TIMEOUT).or_fail();
    let err = vm
        .wait_for("a line that never comes", Duration::from_secs(2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("a line that never comes"), "{err}");
    assert!(err.contains("cellos-test: up"), "{err}");
    // QMP `quit` ends QEMU at once, like pulling the plug.
    vm.quit().or_fail();
    vm.kill().or_fail(); // a no-op once QEMU is gone
    let err = vm.wait_for("anything", Duration::from_secs(5)).unwrap_err();
    assert!(err.to_string().contains("QEMU exited"), "{err}");
}

/// Two guests on one [`Segment`]: the second NIC comes up in each, one pings the
/// other across the hub, and the capture holds the echo request between their MACs.
#[test]
fn vm_two_guests_share_a_segment() {
    let image = image();
    let _guard = one_vm_at_a_time();
    let segment = Segment::start().or_fail();
    let guest = |ip: &str, ping: &str| {
        let port = segment.port().or_fail();
        let mac = port.mac.clone();
        let mut config = Config::new(Boot::Direct {
            kernel: image.vmlinuz.clone(),
            initrd: image.initramfs.clone(),
            cmdline: format!("{} cellos.test.ip={ip} {ping}", image.cmdline),
        });
        config.accel = Accel::Tcg;
        config.memory = "512M".into();
        config.segment = Some(port);
        (Vm::start(config).or_fail(), mac)
    };
    let (mut b, mac_b) = guest("192.168.77.12/24", "");
    b.wait_for(
        "cellos-test: eth1 192.168.77.12/24 mac 52:54:00:77:00:00",
        BOOT_TIMEOUT,
    )
    .or_fail();
    let (mut a, mac_a) = guest("192.168.77.11/24", "cellos.test.ping=192.168.77.12");
    a.wait_for("cellos-test: 192.168.77.12 answers", BOOT_TIMEOUT)
        .or_fail();
    let mac = |text: &str| -> Vec<u8> {
        text.split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect()
    };
    let (mac_a, mac_b) = (mac(&mac_a), mac(&mac_b));
    // Ethernet: dst, src, type 0x0800; IPv4 protocol 1 (ICMP); ICMP type 8 (echo).
    let echo = segment.frames().iter().any(|f| {
        let d = &f.data;
        d.len() > 34
            && d[..6] == mac_b[..]
            && d[6..12] == mac_a[..]
            && d[12..14] == [0x08, 0x00]
            && d[23] == 1
            && d[34] == 8
            && f.from == 1
    });
    assert!(
        echo,
        "no echo request from A to B in {} frames",
        segment.frames().len()
    );
}
