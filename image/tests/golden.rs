//! Golden files for generated text. Regenerate with `UPDATE_GOLDEN=1 cargo test`.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use cellos_boot::stick::parse_file;
use cellos_image::{
    ipxe_script, kernel_cmdline, syslinux_cfg, usb_config, BootParams, BOOT_IPXE, INITRAMFS,
    USB_CONFIG, USB_MARKER, VMLINUZ,
};

fn check_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs; run with UPDATE_GOLDEN=1",
        path.display()
    );
}

#[test]
fn boot_ipxe_matches_golden() {
    let params = BootParams {
        farm: 1,
        ledger: "http://10.0.2.2:8080".into(),
        enroll: Some("ENROLLTOKEN".into()),
        extra: "cellos.mode=test".into(),
    };
    let cmdline = kernel_cmdline("console=ttyS0,115200 panic=1 quiet loglevel=4", &params).unwrap();
    let script = ipxe_script(VMLINUZ, INITRAMFS, &cmdline, "6.1.0-56-amd64");
    check_golden(BOOT_IPXE, &script);
}

#[test]
fn usb_config_matches_golden() {
    let params = BootParams {
        farm: 3,
        ledger: "http://10.0.2.2:8080".into(),
        enroll: Some("3.18446744073709551615.ENROLLTOKEN".into()),
        extra: "quiet cellos.mode=test  cellos.debug".into(),
    };
    check_golden(USB_CONFIG, &usb_config(&params));
    let without_token = BootParams {
        enroll: None,
        extra: String::new(),
        ..params
    };
    check_golden("cellos-no-token.cfg", &usb_config(&without_token));
}

#[test]
fn syslinux_cfg_matches_golden() {
    let params = BootParams {
        farm: 1,
        ledger: "http://10.0.2.2:8080".into(),
        enroll: None,
        extra: String::new(),
    };
    let cmdline = kernel_cmdline("console=ttyS0,115200 panic=1 quiet loglevel=4", &params).unwrap();
    check_golden(
        "syslinux.cfg",
        &syslinux_cfg(VMLINUZ, INITRAMFS, &format!("{cmdline} {USB_MARKER}")),
    );
}

#[test]
fn the_usb_config_the_build_writes_is_what_init_reads() {
    // The golden files above, read with the parser init uses at boot.
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let text = std::fs::read_to_string(golden.join(USB_CONFIG)).unwrap();
    assert_eq!(
        parse_file(&text).unwrap(),
        "cellos.farm=3 cellos.ledger=http://10.0.2.2:8080 \
         cellos.enroll=3.18446744073709551615.ENROLLTOKEN cellos.mode=test cellos.debug"
    );
    let text = std::fs::read_to_string(golden.join("cellos-no-token.cfg")).unwrap();
    assert_eq!(
        parse_file(&text).unwrap(),
        "cellos.farm=3 cellos.ledger=http://10.0.2.2:8080"
    );
}
