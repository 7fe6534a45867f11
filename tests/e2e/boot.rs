//! The walking skeleton, end to end: the real image boots in QEMU (direct kernel and
//! PXE), init brings the machine up, cellosd registers its capacity on a real ledger
//! (with QEMU's VGA adapter as its GPU on direct boot, and TCG as its VM accelerator),
//! and (direct boot) the console dashboard shows the node on tty1.

use std::time::{Duration, Instant};

use cellos_ledger::keys;
use cellos_qemu::Disk;
use cellos_tests::*;

const GIB: u64 = 1 << 30;

fn disks() -> Vec<Disk> {
    vec![
        Disk::new(8 * GIB, DiskKind::Ssd),
        Disk::new(16 * GIB, DiskKind::Hdd),
    ]
}

/// Boots with `boot`, waits for registration and checks what the ledger shows
/// against what QEMU was given.
fn boots_and_registers(pxe: bool) {
    let img = image();
    let ledger = Ledger::start(0);
    let enroll = keys::generate();
    let farm = ledger.farm(&enroll);
    let mut params = boot_params(farm, &ledger.guest_url(), &enroll);
    if !pxe {
        // The guest shell, to read the local console's text.
        params.extra.push_str(" cellos.debug");
    }
    let tftp = tempfile::tempdir().expect("tempdir");
    let boot = if pxe {
        img.pxe(&params, tftp.path())
    } else {
        img.direct(&params)
    };
    let t = Instant::now();
    let mut config = vm_config(boot, disks());
    config.vga = !pxe;
    let mut vm = start(config);
    vm.wait_for("cellos-init: started", BOOT_TIMEOUT)
        .expect("init starts");
    let to_init = t.elapsed();
    // Init raises the open-file limit for its services (1,024 makes a connection
    // flood cheap).
    let files = vm
        .wait_for(
            &Regex::new(r"cellosd: up to (\d+) open files").expect("regex"),
            BOOT_TIMEOUT,
        )
        .expect("cellosd says its open-file limit");
    let files: u64 = files
        .rsplit("up to ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a number");
    assert!(files >= 1 << 20, "cellosd may open only {files} files");
    let re = Regex::new(REGISTERED).expect("regex");
    let line = vm.wait_for(&re, BOOT_TIMEOUT).expect("node registers");
    let (id, on_farm, ms) = registered(&line);
    assert_eq!(on_farm, farm);

    let node = ledger.node(id);
    assert_eq!(node.farm, farm);
    assert!(
        node.approved,
        "the enrollment token approves the node at once"
    );
    assert_eq!(node.capacity.cru, 2, "QEMU was given 2 CPUs");
    // 1 GiB of guest RAM, less what firmware and kernel keep for themselves.
    assert!(
        node.capacity.mru > 800 << 20 && node.capacity.mru <= GIB,
        "mru {} is not about 1 GiB",
        node.capacity.mru
    );
    assert_eq!(node.capacity.sru, 8 * GIB, "the SSD QEMU was given");
    assert_eq!(node.capacity.hru, 16 * GIB, "the HDD QEMU was given");
    assert!(!node.interfaces.is_empty(), "the node reports its NIC");
    // QEMU's standard VGA (PCI 1234:1111, class 0x030000) is the node's one GPU; with
    // no vIOMMU it has no IOMMU group. No other display controller is there, and a
    // node without the adapter lists none.
    let gpus: Vec<(u16, u16, Option<u32>)> = node
        .gpus
        .iter()
        .map(|g| (g.vendor, g.device, g.iommu_group))
        .collect();
    let want = if pxe {
        vec![]
    } else {
        vec![(0x1234, 0x1111, None)]
    };
    assert_eq!(gpus, want, "the GPUs QEMU was given: {:?}", node.gpus);
    let pci_address = Regex::new(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$").expect("regex");
    assert!(
        node.gpus.iter().all(|g| pci_address.is_match(&g.address)),
        "{:?}",
        node.gpus
    );
    // Nested KVM does not work in a TCG guest: the node says it emulates.
    assert_eq!(node.accel, cellos_ledger::Accel::Tcg);
    assert_eq!(ledger.nodes().len(), 1);
    if !pxe {
        dashboard_shows(&mut vm, id, &ledger.guest_url());
    }
    println!(
        "figures ({}): QEMU start to init {:.1} s, init to registered {ms} ms (node's own figure), QEMU start to registered {:.1} s",
        if pxe { "PXE" } else { "direct boot" },
        to_init.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}

/// The local console's text (`/dev/vcs1`, no line ends), one line per 80 columns;
/// anything but printable ASCII (bars, box lines, `·`) reads as `?`.
fn console_screen(vm: &mut cellos_qemu::Vm) -> String {
    let (status, out) = vm
        .shell(
            "/bin/busybox tr -c '\\040-\\176' '?' < /dev/vcs1",
            Duration::from_secs(30),
        )
        .expect("guest shell");
    assert_eq!(status, 0, "cannot read /dev/vcs1: {out}");
    let chars: Vec<char> = out.chars().collect();
    chars
        .chunks(80)
        .map(|row| row.iter().collect::<String>().trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The dashboard on tty1 names the registered node, its status on the ledger, the
/// ledger answering, the last uptime report, the capacity and the pools of the disks
/// QEMU was given.
fn dashboard_shows(vm: &mut cellos_qemu::Vm, node: cellos_ledger::NodeId, ledger_url: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let want = [
        format!("cellos node {node} ? farm"),
        // The ledger's record of the node, read by cellosd: its status and the
        // uptime report the registrar sent.
        "registered (up)".to_string(),
        format!("ledger {ledger_url} answers"),
        "s ago".to_string(),
        "CRU ".to_string(),
        "Pools".to_string(),
        "ssd".to_string(),
        "hdd".to_string(),
        "no contracts on this node".to_string(),
    ];
    loop {
        let screen = console_screen(vm);
        let missing: Vec<&String> = want
            .iter()
            .filter(|w| !screen.contains(w.as_str()))
            .collect();
        if missing.is_empty() {
            println!("tty1:\n{screen}");
            // The screen as a person sees it, kept for them (docs/dashboard.png is one).
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e");
            std::fs::create_dir_all(&dir).expect("artifact dir");
            let png = dir.join("dashboard.png");
            vm.screendump(&png).expect("QMP screendump");
            let head = std::fs::read(&png).expect("the screendump");
            assert!(head.starts_with(b"\x89PNG"), "{} is no PNG", png.display());
            println!("tty1 as PNG: {}", png.display());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tty1 lacks {missing:?}; it shows:\n{screen}\n\nconsole:\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

#[test]
fn vm_direct_boot_registers_capacity() {
    boots_and_registers(false);
}

#[test]
fn vm_pxe_boot_registers_capacity() {
    boots_and_registers(true);
}

#[test]
fn vm_power_button_stops_services_and_powers_off() {
    let img = image();
    let ledger = Ledger::start(0);
    let enroll = keys::generate();
    let farm = ledger.farm(&enroll);
    let mut vm = start(vm_config(
        img.direct(&boot_params(farm, &ledger.guest_url(), &enroll)),
        vec![],
    ));
    vm.wait_for(&Regex::new(REGISTERED).expect("regex"), BOOT_TIMEOUT)
        .expect("node registers");
    vm.powerdown().expect("power button");
    vm.wait_for(
        "cellos-init: powering off",
        std::time::Duration::from_secs(60),
    )
    .expect("init powers off");
    let status = vm
        .wait_exit(std::time::Duration::from_secs(60))
        .expect("QEMU exits by itself");
    assert!(status.success(), "QEMU exit status {status}");
    let console = vm.console();
    assert!(
        console.contains("cellosd: stopping"),
        "cellosd was asked to stop:\n{console}"
    );
}

#[test]
fn vm_crashing_service_is_restarted() {
    let img = image();
    let enroll = keys::generate();
    // A ledger URL cellosd refuses: it exits with an error, and init restarts it.
    let mut params = boot_params(1, "http://10.0.2.2:1", &enroll);
    params.ledger = "not-a-url".into();
    let mut vm = start(vm_config(img.direct(&params), vec![]));
    let restart = Regex::new(r"cellos-init: service cellosd exited with status \d+, restarting in")
        .expect("regex");
    vm.wait_for(&restart, BOOT_TIMEOUT).expect("first restart");
    vm.wait_for(&restart, BOOT_TIMEOUT)
        .expect("second restart, after backoff");
}

#[test]
fn vm_registers_once_the_ledger_appears() {
    let img = image();
    let port = free_port();
    let enroll = keys::generate();
    // Fresh ledgers number farms from 1: the token can be made before it runs.
    let params = boot_params(1, &format!("http://10.0.2.2:{port}"), &enroll);
    let mut vm = start(vm_config(img.direct(&params), vec![]));
    let unreachable = Regex::new(r"ledger .* unreachable.*retrying in").expect("regex");
    vm.wait_for(&unreachable, BOOT_TIMEOUT)
        .expect("the node says the ledger is unreachable");
    vm.wait_for(&unreachable, BOOT_TIMEOUT)
        .expect("and keeps retrying");
    let ledger = Ledger::start(port);
    assert_eq!(ledger.farm(&enroll), 1);
    let line = vm
        .wait_for(&Regex::new(REGISTERED).expect("regex"), BOOT_TIMEOUT)
        .expect("node registers");
    let (id, farm, _) = registered(&line);
    assert_eq!(farm, 1);
    assert!(ledger.node(id).approved);
}
