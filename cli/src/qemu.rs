//! `cellos image build` and `cellos qemu run`: turning the workspace into a node.
//!
//! The image takes the node binaries (`init`, `cellosd`) from the directory the
//! `cellos` binary itself lives in (`cargo build --release --workspace` puts them all
//! in `target/release`), so the image always carries the code of this checkout.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cellos_image::{Artifacts, BootParams, BuildOptions, Install};
use cellos_qemu::{Accel, Boot, Config, Disk, DiskKind, SegmentPort, Vm};
use clap::Args;

/// The manifest this `cellos` was built with; `--manifest` overrides it.
pub const MANIFEST: &str = include_str!("../../os/manifest.toml");

/// Where a build finds the node binaries, unless told otherwise.
pub fn default_bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the cellos binary's own path")?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

pub struct ImageRequest {
    pub boot: BootParams,
    pub out: PathBuf,
    pub manifest: Option<PathBuf>,
    pub cache: Option<PathBuf>,
    pub bin_dir: PathBuf,
}

/// Builds vmlinuz, initramfs.cpio.zst, boot.ipxe and cellos-usb.img, plus `cmdline`
/// (what a direct kernel boot passes) into `req.out`, printing progress on stderr.
pub fn build_image(req: &ImageRequest) -> Result<Artifacts> {
    let mut bins = Vec::new();
    for &(name, dest) in cellos_image::NODE_BINARIES {
        let p = req.bin_dir.join(name);
        if !p.is_file() {
            bail!(
                "{} is missing: build the node binaries first with `cargo build --release --workspace` (or pass --bin-dir)",
                p.display()
            );
        }
        bins.push(Install::new(p, dest));
    }
    std::fs::create_dir_all(&req.out)
        .with_context(|| format!("cannot create {}", req.out.display()))?;
    let manifest = match &req.manifest {
        Some(m) => m.clone(),
        None => {
            let p = req.out.join("manifest.toml");
            std::fs::write(&p, MANIFEST)
                .with_context(|| format!("cannot write {}", p.display()))?;
            p
        }
    };
    let mut opts = BuildOptions::new(manifest, &req.out, req.boot.clone());
    opts.cache = req.cache.clone();
    opts.binaries = bins;
    let t = Instant::now();
    let a = cellos_image::build(&opts, &|line| eprintln!("image: {line}"))
        .context("image build failed")?;
    std::fs::write(req.out.join("cmdline"), format!("{}\n", a.cmdline))?;
    if let Some(usb) = &a.usb {
        eprintln!(
            "image: {} ({}, {}): write it to a stick with `cellos image flash --device /dev/sdX`; \
             farm, ledger and token can be changed later in cellos.cfg on its FAT partition",
            usb.path.display(),
            cellos_ledger::deployment::Size(usb.size),
            usb.stub_package
        );
    }
    eprintln!(
        "image: done in {:.1} s: kernel {} ({}), vmlinuz {}, initramfs {} ({} uncompressed, {} modules)",
        t.elapsed().as_secs_f64(),
        a.kernel_release,
        a.kernel_package,
        cellos_ledger::deployment::Size(a.vmlinuz_size),
        cellos_ledger::deployment::Size(a.initramfs_size),
        cellos_ledger::deployment::Size(a.initramfs_uncompressed_size),
        a.module_count
    );
    Ok(a)
}

/// `cellos image flash`: checks the target (cellos_image::flash), writes the image with a
/// progress line on stderr, syncs.
pub fn flash(image: &Path, device: &Path, force: bool) -> Result<()> {
    use cellos_image::flash;
    let size = std::fs::metadata(image)
        .with_context(|| {
            format!(
                "cannot read {} (build it with `cellos image build`)",
                image.display()
            )
        })?
        .len();
    let mounts = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    let target = flash::inspect(device, Path::new("/sys/block"), &mounts)?;
    flash::check(&target, size, force)?;
    eprintln!(
        "flash: writing {} ({}) to {} ({}{})",
        image.display(),
        cellos_ledger::deployment::Size(size),
        target.device.display(),
        cellos_ledger::deployment::Size(target.size),
        if target.removable { ", removable" } else { "" }
    );
    let t = Instant::now();
    let mut shown = Instant::now();
    flash::write(image, &target.device, &mut |done, total| {
        if shown.elapsed() >= Duration::from_secs(1) || done == total {
            shown = Instant::now();
            eprint!(
                "\rflash: {:3}% ({} of {})",
                done * 100 / total.max(1),
                cellos_ledger::deployment::Size(done),
                cellos_ledger::deployment::Size(total)
            );
        }
    })?;
    eprintln!(
        "\nflash: done and synced in {:.1} s; cellos.cfg on the stick's FAT partition holds farm, ledger and token",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The disks of a VM, as given on the command line.
#[derive(Clone, Debug)]
pub struct Disks(pub Vec<Disk>);

/// `2x20G,1x100G:hdd` -> two 20 GiB SSDs and one 100 GiB HDD.
pub fn parse_disks(spec: &str) -> Result<Disks, String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (sizes, kind) = match item.rsplit_once(':') {
            Some((s, "ssd")) => (s, DiskKind::Ssd),
            Some((s, "hdd")) => (s, DiskKind::Hdd),
            Some((_, k)) => return Err(format!("bad disk kind {k:?} in {item:?}: use ssd or hdd")),
            None => (item, DiskKind::Ssd),
        };
        let (count, size) = match sizes.split_once(['x', 'X']) {
            Some((n, s)) => (
                n.parse::<usize>()
                    .map_err(|_| format!("bad disk count in {item:?}"))?,
                s,
            ),
            None => (1, sizes),
        };
        let size = crate::units::parse_size(size)?;
        if size < (1 << 20) {
            return Err(format!("disk size in {item:?} is below 1M"));
        }
        if count == 0 || count > 16 {
            return Err(format!("disk count in {item:?} must be 1 to 16"));
        }
        out.extend((0..count).map(|_| Disk::new(size, kind)));
    }
    Ok(Disks(out))
}

pub fn parse_accel(s: &str) -> Result<Accel, String> {
    match s {
        "auto" => Ok(Accel::Auto),
        "kvm" => Ok(Accel::Kvm),
        "tcg" => Ok(Accel::Tcg),
        _ => Err(format!("bad accelerator {s:?}: use auto, kvm or tcg")),
    }
}

/// The VM a node boots in: the flags of `cellos qemu run` and `cellos demo`.
#[derive(Args, Clone)]
pub struct VmArgs {
    /// Disks: COUNTxSIZE[:ssd|hdd], comma separated, e.g. 2x20G,1x100G:hdd.
    #[arg(long, default_value = "1x20G,1x50G:hdd", value_parser = parse_disks)]
    pub disks: Disks,
    #[arg(long, default_value = "2G")]
    pub memory: String,
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// auto (KVM, falling back to TCG when the guest hangs), kvm or tcg.
    #[arg(long, default_value = "auto", value_parser = parse_accel)]
    pub accel: Accel,
    /// Boot over PXE (QEMU's TFTP server and iPXE) instead of a direct kernel boot.
    #[arg(long)]
    pub pxe: bool,
    /// Seconds the guest may take to reach init.
    #[arg(long, default_value_t = 120)]
    pub boot_timeout: u64,
}

pub struct RunRequest {
    pub image: PathBuf,
    pub vm: VmArgs,
    pub work_dir: Option<PathBuf>,
    /// Appended to the image's kernel command line (direct boot only).
    pub cmdline_extra: String,
    /// A second NIC on a segment shared with other guests.
    pub segment: Option<SegmentPort>,
}

/// The line init prints first; reaching it proves the guest runs.
pub const INIT_STARTED: &str = "cellos-init: started";

fn config(req: &RunRequest, accel: Accel) -> Result<Config> {
    let boot = if req.vm.pxe {
        Boot::Pxe {
            tftp_dir: req.image.clone(),
            bootfile: cellos_image::BOOT_IPXE.into(),
        }
    } else {
        let mut cmdline =
            std::fs::read_to_string(req.image.join("cmdline")).with_context(|| {
                format!(
                    "{} holds no image (run `cellos image build` first)",
                    req.image.display()
                )
            })?;
        cmdline = format!("{} {}", cmdline.trim(), req.cmdline_extra);
        Boot::Direct {
            kernel: req.image.join(cellos_image::VMLINUZ),
            initrd: req.image.join(cellos_image::INITRAMFS),
            cmdline: cmdline.trim().to_string(),
        }
    };
    let mut c = Config::new(boot);
    c.memory = req.vm.memory.clone();
    c.cpus = req.vm.cpus;
    c.accel = accel;
    c.disks = req.vm.disks.0.clone();
    c.work_dir = req.work_dir.clone();
    c.segment = req.segment.clone();
    Ok(c)
}

/// How long a KVM guest may stay silent on its console before `auto` gives up on
/// KVM. A KVM guest prints its first line within a second or two; the slowest path,
/// PXE, prints iPXE's banner within a few seconds. A guest that said nothing by then
/// never started (nested KVM hangs on some hosts).
pub const KVM_SILENCE: Duration = Duration::from_secs(12);

/// What to do with a KVM guest under `auto` that has not reached init yet.
#[derive(Debug, PartialEq, Eq)]
enum KvmVerdict {
    /// Keep waiting for init.
    Wait,
    /// Silent for too long: boot again under TCG.
    FallBack,
}

fn kvm_verdict(console_bytes: usize, elapsed: Duration) -> KvmVerdict {
    if console_bytes == 0 && elapsed >= KVM_SILENCE {
        KvmVerdict::FallBack
    } else {
        KvmVerdict::Wait
    }
}

/// Boots the image and waits for init to start. With `Accel::Auto`, a KVM guest that
/// prints nothing on its console within [`KVM_SILENCE`], or does not reach init within
/// the boot timeout, is stopped and booted again under TCG (on some hosts nested KVM
/// guests hang), and the console says so on one line.
pub fn boot(req: &RunRequest) -> Result<Vm> {
    let timeout = Duration::from_secs(req.vm.boot_timeout);
    let first = match req.vm.accel {
        Accel::Auto if Path::new("/dev/kvm").exists() => Accel::Kvm,
        Accel::Auto => Accel::Tcg,
        a => a,
    };
    let mut vm = Vm::start(config(req, first)?).context("cannot start QEMU")?;
    eprintln!(
        "qemu: booting ({first:?}, console in {})",
        vm.console_path().display()
    );
    let first_wait = if req.vm.accel == Accel::Auto && first == Accel::Kvm {
        // Poll for the first console output before waiting for init.
        let started = Instant::now();
        loop {
            if kvm_verdict(vm.console().len(), started.elapsed()) == KvmVerdict::FallBack {
                break Err(format!(
                    "no console output within {} s",
                    KVM_SILENCE.as_secs()
                ));
            }
            if !vm.console().is_empty() {
                break vm
                    .wait_for(INIT_STARTED, timeout.saturating_sub(started.elapsed()))
                    .map(drop)
                    .map_err(|e| e.to_string());
            }
            if vm.wait_exit(Duration::from_millis(100)).is_ok() {
                break vm
                    .wait_for(INIT_STARTED, Duration::ZERO)
                    .map(drop)
                    .map_err(|e| e.to_string());
            }
        }
    } else {
        vm.wait_for(INIT_STARTED, timeout)
            .map(drop)
            .map_err(|e| format!("{e:#}"))
    };
    match first_wait {
        Ok(()) => Ok(vm),
        Err(why) if req.vm.accel == Accel::Auto && first == Accel::Kvm => {
            let why = why.lines().next().unwrap_or_default();
            eprintln!(
                "qemu: the KVM guest did not start ({why}); booting again with TCG (pass --accel tcg to skip KVM)"
            );
            drop(vm);
            let mut vm = Vm::start(config(req, Accel::Tcg)?).context("cannot start QEMU")?;
            vm.wait_for(INIT_STARTED, timeout)
                .context("the guest did not reach init under TCG either")?;
            Ok(vm)
        }
        Err(why) => Err(anyhow::anyhow!(why)).context("the guest did not reach init"),
    }
}

/// Copies the console to stdout until QEMU exits or `stop` is set; then powers the
/// guest off (ACPI) and waits for it, killing QEMU if it does not stop in time.
pub fn follow(vm: &mut Vm, stop: &std::sync::atomic::AtomicBool) -> Result<()> {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let mut shown = 0;
    let mut out = std::io::stdout();
    loop {
        let console = vm.console();
        if let Some(new) = console.get(shown..) {
            let _ = out.write_all(new.as_bytes());
            let _ = out.flush();
            shown = console.len();
        }
        if vm.wait_exit(Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if stop.load(Ordering::Relaxed) {
            return power_off(vm);
        }
    }
}

/// ACPI power button, then wait up to a minute for the guest to power off.
pub fn power_off(vm: &mut Vm) -> Result<()> {
    eprintln!("qemu: pressing the power button");
    vm.powerdown().context("cannot send the power button")?;
    match vm.wait_exit(Duration::from_secs(60)) {
        Ok(_) => {
            eprintln!("qemu: the node powered off");
            Ok(())
        }
        Err(e) => {
            vm.kill()?;
            Err(e).context("the node did not power off within 60 s; killed QEMU")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellos_qemu::DiskSource;

    #[test]
    fn a_silent_kvm_guest_falls_back_after_the_silence_window_not_the_boot_timeout() {
        use KvmVerdict::*;
        assert_eq!(kvm_verdict(0, Duration::from_secs(1)), Wait);
        assert_eq!(kvm_verdict(0, KVM_SILENCE - Duration::from_millis(1)), Wait);
        assert_eq!(kvm_verdict(0, KVM_SILENCE), FallBack);
        assert!(KVM_SILENCE >= Duration::from_secs(10) && KVM_SILENCE <= Duration::from_secs(15));
        // A guest that printed anything is given the whole boot timeout.
        assert_eq!(kvm_verdict(40, Duration::from_secs(100)), Wait);
    }

    #[test]
    fn disk_specs() {
        let d = parse_disks("2x20G,1x100G:hdd").expect("parse").0;
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].source, DiskSource::New { size: 20 << 30 });
        assert_eq!(d[1].kind, DiskKind::Ssd);
        assert_eq!(d[2].kind, DiskKind::Hdd);
        assert_eq!(d[2].source, DiskSource::New { size: 100 << 30 });
        assert_eq!(parse_disks("5G").expect("parse").0.len(), 1);
        assert!(parse_disks("").expect("empty").0.is_empty());
        assert!(parse_disks("0x5G").is_err());
        assert!(parse_disks("2x5G:nvme").is_err());
        assert!(parse_disks("2x1K").is_err());
        assert!(parse_disks("axG").is_err());
    }
}
