//! The USB image end to end: `cellos-usb.img` attached to QEMU as a removable USB stick
//! (qemu-xhci + usb-storage) boots under OVMF (UEFI) and under SeaBIOS (BIOS) and the node
//! registers on a real ledger; editing `cellos.cfg` on the stick's FAT partition, as a
//! farmer would on another computer (here with mtools), changes the farm it joins.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cellos_image::{BootParams, UsbInputs, ESP_OFFSET, USB_CONFIG, USB_IMAGE};
use cellos_ledger::keys;
use cellos_qemu::{Boot, Firmware};
use cellos_tests::*;

/// Writes a USB image with `params` baked in (cmdline and cellos.cfg) into `dir`.
fn usb_image(params: &BootParams, dir: &Path) -> PathBuf {
    let img = image();
    let cmdline = img.cmdline(params);
    let cache = cellos_image::default_cache_dir().expect("cache dir");
    let inputs = UsbInputs {
        kernel: &img.artifacts.vmlinuz,
        initrd: &img.artifacts.initramfs,
        cmdline: &cmdline,
        boot: params,
        cache: &cache,
        mtime: 0,
    };
    let usb =
        cellos_image::write_usb_image(&inputs, &dir.join(USB_IMAGE), &|l| eprintln!("usb: {l}"))
            .expect("USB image");
    usb.path
}

/// Replaces cellos.cfg on the image's FAT partition, the way a farmer's computer would.
fn write_config(image: &Path, text: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join(USB_CONFIG);
    std::fs::write(&cfg, text).expect("write cfg");
    let out = Command::new("mcopy")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@{ESP_OFFSET}", image.display()))
        .arg(&cfg)
        .arg(format!("::{USB_CONFIG}"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .expect("run mcopy (apt-get install mtools)");
    assert!(
        out.status.success(),
        "mcopy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Boots `image` from USB under `firmware`, waits for registration; returns the node's
/// (id, farm) and the console.
fn boot_and_register(
    image: &Path,
    firmware: Firmware,
    ledger: &Ledger,
) -> (cellos_ledger::NodeId, cellos_ledger::FarmId, String) {
    let mut config = vm_config(
        Boot::Usb {
            image: image.to_path_buf(),
        },
        vec![],
    );
    config.firmware = firmware;
    let t = Instant::now();
    let mut vm = start(config);
    vm.wait_for("cellos-init: started", BOOT_TIMEOUT)
        .expect("init starts");
    let to_init = t.elapsed();
    let line = vm
        .wait_for(&Regex::new(REGISTERED).expect("regex"), BOOT_TIMEOUT)
        .expect("node registers");
    let (id, farm, ms) = registered(&line);
    let console = vm.console();
    assert!(
        console.contains("cellos-init: boot disk sda (partition sda1) found"),
        "init finds the stick:\n{console}"
    );
    let node = ledger.node(id);
    assert_eq!(node.farm, farm);
    assert!(node.approved, "the enrollment token approves the node");
    println!(
        "figures (USB, {firmware:?}): QEMU start to init {:.1} s, init to registered {ms} ms (node's own figure), QEMU start to registered {:.1} s",
        to_init.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    (id, farm, console)
}

fn boots_from_usb_and_registers(firmware: Firmware) {
    let ledger = Ledger::start(0);
    let enroll = keys::generate();
    let farm = ledger.farm(&enroll);
    let dir = tempfile::tempdir().expect("tempdir");
    let image = usb_image(&boot_params(farm, &ledger.guest_url(), &enroll), dir.path());
    let (_, on_farm, console) = boot_and_register(&image, firmware, &ledger);
    assert_eq!(on_farm, farm);
    assert!(
        console.contains("cellos-init: cellos.cfg on sda1: applied"),
        "the built-in cellos.cfg is read:\n{console}"
    );
}

#[test]
fn vm_usb_uefi_boots_and_registers() {
    boots_from_usb_and_registers(Firmware::Uefi);
}

#[test]
fn vm_usb_bios_boots_and_registers() {
    boots_from_usb_and_registers(Firmware::Bios);
}

/// Two farms; the image is built for farm A; its cellos.cfg is then edited to say farm B
/// with B's token, and the node registers on B.
#[test]
fn vm_usb_edited_config_changes_the_farm() {
    let ledger = Ledger::start(0);
    let (enroll_a, enroll_b) = (keys::generate(), keys::generate());
    let farm_a = ledger.farm_named(&enroll_a, "farm-a");
    let farm_b = ledger.farm_named(&enroll_b, "farm-b");
    assert_ne!(farm_a, farm_b);
    let dir = tempfile::tempdir().expect("tempdir");
    let baked = boot_params(farm_a, &ledger.guest_url(), &enroll_a);
    let image = usb_image(&baked, dir.path());
    let b = boot_params(farm_b, &ledger.guest_url(), &enroll_b);
    let token = b.enroll.expect("token for farm B");
    write_config(
        &image,
        &format!("# edited on the farmer's laptop\r\nfarm = {farm_b}\r\nenroll = \"{token}\"\r\n"),
    );
    let (_, on_farm, console) = boot_and_register(&image, Firmware::Bios, &ledger);
    assert_eq!(on_farm, farm_b, "cellos.cfg wins over the cmdline");
    assert!(
        console.contains(&format!("cellos-init: farm={farm_b} ")),
        "{console}"
    );
}

/// A malformed cellos.cfg is reported on the console and the image's own values are used.
#[test]
fn vm_usb_malformed_config_keeps_the_image_settings() {
    let ledger = Ledger::start(0);
    let enroll = keys::generate();
    let farm = ledger.farm(&enroll);
    let dir = tempfile::tempdir().expect("tempdir");
    let image = usb_image(&boot_params(farm, &ledger.guest_url(), &enroll), dir.path());
    write_config(&image, "farm = 2\nledger = http://no-quotes\n");
    let (_, on_farm, console) = boot_and_register(&image, Firmware::Bios, &ledger);
    assert_eq!(on_farm, farm);
    assert!(
        console.contains("cellos-init: cellos.cfg on sda1 is not used: line 2: "),
        "{console}"
    );
}
