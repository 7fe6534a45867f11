//! cellos-image: builds what a node boots from `os/manifest.toml`.
//!
//! Inputs: the manifest (kernel package, module sets, Debian packages whose
//! files the node needs, services), our binaries from the workspace, extra
//! host files, and the per-farm boot parameters. Outputs in one directory: `vmlinuz`, `initramfs.cpio.zst` and
//! `boot.ipxe`, ready to serve over TFTP/HTTP or boot directly in QEMU.
//!
//! The kernel and modules are Debian's `linux-image-amd64`, and tools such
//! as `mkfs.btrfs` come from the Debian packages the manifest's `[packages]`
//! names, all fetched with `apt-get download` into a cache and reused; their
//! shared libraries are resolved from the unpacked packages, then the host. Builds are reproducible (two builds from the
//! same inputs give the same bytes) and need no root, no loop devices and no
//! mounts: the initramfs is written as a cpio stream from Rust, the USB
//! image's partition table from Rust and its FAT filesystem with mtools. The build
//! never touches the host outside its cache and output directories.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod boot;
mod deb;
mod elf;
mod error;
pub mod flash;
mod gpt;
mod initramfs;
mod kernel;
mod manifest;
mod modules;
mod sys;
mod usb;

use std::fs;
use std::path::{Path, PathBuf};

use cellos_boot::modules::ModuleIndex;

pub use boot::{ipxe_script, kernel_cmdline, syslinux_cfg, usb_config, BootParams};
pub use cellos_boot::stick::{CONFIG_FILE as USB_CONFIG, USB_MARKER};
pub use error::{Error, Result};
pub use usb::{write as write_usb_image, UsbImage, UsbInputs, ESP_OFFSET, USB_IMAGE};

/// File names in the output directory (boot.ipxe refers to them by name).
pub const VMLINUZ: &str = "vmlinuz";
pub const INITRAMFS: &str = "initramfs.cpio.zst";
pub const BOOT_IPXE: &str = "boot.ipxe";

/// The workspace's binaries every node image carries, by name (as cargo builds them)
/// and path in the image; `os/manifest.toml`'s services start them.
pub const NODE_BINARIES: &[(&str, &str)] = &[
    ("init", "/init"),
    ("cellosd", "/usr/bin/cellosd"),
    ("shardd", "/usr/bin/shardd"),
    ("cellos-dashboard", "/usr/bin/cellos-dashboard"),
];

/// Directories every image has, whatever init mounts on them.
const DIRS: [&str; 7] = [
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/tmp",
    "/etc/cellos",
    "/mnt",
];

/// A host file and where it goes in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub host: PathBuf,
    pub image: String,
}

impl Install {
    pub fn new(host: impl Into<PathBuf>, image: impl Into<String>) -> Install {
        Install {
            host: host.into(),
            image: image.into(),
        }
    }
}

/// Everything one build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Path of `os/manifest.toml`.
    pub manifest: PathBuf,
    /// Output directory (created if missing).
    pub out: PathBuf,
    /// Download/unpack cache; `None` means [`default_cache_dir`].
    pub cache: Option<PathBuf>,
    /// Our ELF binaries (e.g. init -> `/init`, cellosd -> `/usr/bin/cellosd`);
    /// their shared libraries come along.
    pub binaries: Vec<Install>,
    /// Other files copied as they are (shared libraries of ELF files too),
    /// e.g. `/bin/busybox`.
    pub files: Vec<Install>,
    pub boot: BootParams,
    /// mtime of every archive entry; `None` means `SOURCE_DATE_EPOCH` or 0.
    pub mtime: Option<u32>,
    /// zstd level of the initramfs (1..=22).
    pub zstd_level: i32,
    /// Also write `cellos-usb.img`.
    pub usb: bool,
}

impl BuildOptions {
    /// Options with defaults: no binaries or extra files, default cache,
    /// fixed mtime from the environment, zstd level 19, USB image written.
    pub fn new(manifest: impl Into<PathBuf>, out: impl Into<PathBuf>, boot: BootParams) -> Self {
        BuildOptions {
            manifest: manifest.into(),
            out: out.into(),
            cache: None,
            binaries: Vec::new(),
            files: Vec::new(),
            boot,
            mtime: None,
            zstd_level: 19,
            usb: true,
        }
    }
}

/// What a build wrote.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    pub boot_ipxe: PathBuf,
    /// The concrete Debian package and version, e.g. `linux-image-6.1.0-56-amd64=6.1.192-2`.
    pub kernel_package: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub kernel_release: String,
    pub cmdline: String,
    pub vmlinuz_size: u64,
    pub initramfs_size: u64,
    /// Size of the cpio archive before compression.
    pub initramfs_uncompressed_size: u64,
    /// Number of kernel modules in the image.
    pub module_count: usize,
    /// The manifest's `[packages]` as taken, e.g. `btrfs-progs=6.2-1+deb12u2`.
    pub packages: Vec<String>,
    /// `cellos-usb.img`, when asked for.
    pub usb: Option<UsbImage>,
}

/// `$XDG_CACHE_HOME/cellos`, else `~/.cache/cellos`.
pub fn default_cache_dir() -> Result<PathBuf> {
    let non_empty = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    non_empty("XDG_CACHE_HOME")
        .or_else(|| non_empty("HOME").map(|h| h.join(".cache")))
        .map(|c| c.join("cellos"))
        .ok_or(Error::NoCacheDir)
}

/// The mtime given, else `SOURCE_DATE_EPOCH`, else 0.
fn archive_mtime(given: Option<u32>) -> u32 {
    given
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok())
        .unwrap_or(0)
}

/// Builds `vmlinuz`, `initramfs.cpio.zst`, `boot.ipxe` and (if `opts.usb`)
/// `cellos-usb.img` into `opts.out`.
/// `progress` gets one line per long step.
pub fn build(opts: &BuildOptions, progress: &dyn Fn(&str)) -> Result<Artifacts> {
    let (manifest, manifest_text) = manifest::Manifest::load(&opts.manifest)?;
    let cmdline = kernel_cmdline(&manifest.kernel.cmdline, &opts.boot)?;
    let cache = match &opts.cache {
        Some(c) => c.clone(),
        None => default_cache_dir()?,
    };
    fs::create_dir_all(&cache).map_err(error::io("cannot create cache", &cache))?;
    fs::create_dir_all(&opts.out).map_err(error::io("cannot create output", &opts.out))?;

    progress(&format!("resolving {}", manifest.kernel.package));
    let package = kernel::resolve(&manifest.kernel.package)?;
    progress(&format!(
        "kernel package {}={}",
        package.name, package.version
    ));
    let kernel = kernel::fetch(&package, &cache, progress)?;
    if !kernel.config()?.lines().any(|l| l == "CONFIG_RD_ZSTD=y") {
        return Err(Error::KernelTree {
            path: kernel.root.clone(),
            reason: "kernel is built without CONFIG_RD_ZSTD, cannot unpack a zstd initramfs".into(),
        });
    }

    let index = ModuleIndex::load(&kernel.modules_dir())?;
    let selection = modules::select(&index, &manifest, &kernel.release)?;
    progress(&format!(
        "depmod {} ({} modules selected)",
        kernel.release,
        selection.paths.len()
    ));
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&cache)
        .map_err(error::io("cannot create a staging directory in", &cache))?;
    let staged = modules::stage(
        &kernel.modules_dir(),
        &selection,
        staging.path(),
        &kernel.release,
    )?;

    let mut tree = initramfs::Tree::default();
    for dir in DIRS {
        tree.dir(dir)?;
    }
    tree.copy_dir(&format!("/lib/modules/{}", kernel.release), &staged)?;
    tree.data("/etc/cellos/manifest.toml", manifest_text, false)?;
    let load: String = manifest
        .load
        .always
        .iter()
        .map(|m| format!("{m}\n"))
        .collect();
    tree.data("/etc/cellos/modules.load", load, false)?;
    tree.symlink("/sbin/modprobe", "/init")?;
    for bin in &opts.binaries {
        if !elf::is_elf(&bin.host)? {
            return Err(Error::Elf {
                path: bin.host.clone(),
                reason: format!("not an ELF file (wanted at {} in the image)", bin.image),
            });
        }
    }
    let mut installs: Vec<Install> = opts.binaries.iter().chain(&opts.files).cloned().collect();
    let mut roots = Vec::new();
    let mut packages = Vec::new();
    for (name, files) in &manifest.packages {
        let package = deb::candidate(name)?;
        let root = deb::unpacked(&package, &cache, progress)?;
        for path in files {
            installs.push(Install::new(deb::resolve(&root, path)?, path.clone()));
        }
        progress(&format!("package {package}: {}", files.join(" ")));
        packages.push(package.to_string());
        roots.push(root);
    }
    for install in &installs {
        tree.file(&install.image, &install.host)?;
    }
    let hosts: Vec<&Path> = installs.iter().map(|i| i.host.as_path()).collect();
    let search: Vec<&Path> = roots
        .iter()
        .map(PathBuf::as_path)
        .chain([Path::new("/")])
        .collect();
    for (image, source) in elf::closure(&hosts, &search)? {
        tree.file(&image, &source)?;
    }

    let vmlinuz = opts.out.join(VMLINUZ);
    fs::copy(kernel.vmlinuz(), &vmlinuz).map_err(error::io("cannot copy kernel to", &vmlinuz))?;
    let initramfs = opts.out.join(INITRAMFS);
    progress(&format!(
        "writing {} ({} entries, zstd -{})",
        initramfs.display(),
        tree.len(),
        opts.zstd_level
    ));
    let (raw, compressed) = initramfs::write_zstd(
        &tree,
        &initramfs,
        archive_mtime(opts.mtime),
        opts.zstd_level,
    )?;
    progress(&format!(
        "initramfs {} MB -> {} MB compressed",
        raw >> 20,
        compressed >> 20
    ));
    let boot_ipxe = opts.out.join(BOOT_IPXE);
    let script = ipxe_script(VMLINUZ, INITRAMFS, &cmdline, &kernel.release);
    fs::write(&boot_ipxe, script).map_err(error::io("cannot write", &boot_ipxe))?;

    let usb = if opts.usb {
        let inputs = UsbInputs {
            kernel: &vmlinuz,
            initrd: &initramfs,
            cmdline: &cmdline,
            boot: &opts.boot,
            cache: &cache,
            mtime: archive_mtime(opts.mtime),
        };
        Some(write_usb_image(
            &inputs,
            &opts.out.join(USB_IMAGE),
            progress,
        )?)
    } else {
        None
    };

    let vmlinuz_size = fs::metadata(&vmlinuz)
        .map_err(error::io("cannot stat", &vmlinuz))?
        .len();
    Ok(Artifacts {
        vmlinuz,
        initramfs,
        boot_ipxe,
        kernel_package: format!("{}={}", package.name, package.version),
        kernel_release: kernel.release,
        cmdline,
        vmlinuz_size,
        initramfs_size: compressed,
        initramfs_uncompressed_size: raw,
        module_count: selection.paths.len(),
        packages,
        usb,
    })
}
