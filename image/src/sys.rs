//! Every external command the build runs (apt-cache, apt-get, dpkg-deb, depmod,
//! objcopy, mtools, syslinux) lives here, so the rest of the crate is plain
//! logic over files and strings. None of them needs root or a loop device:
//! `apt-get download` fetches into the current directory, `dpkg-deb -x`
//! unpacks without maintainer scripts, `depmod -b` works on any tree, and
//! mtools and the syslinux installer work on a filesystem image file.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

/// Runs `cmd`, returns its stdout, or an error carrying its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| Error::Spawn {
        command: format!("{command} (install it with scripts/setup-debian.sh)"),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `apt-cache show --no-all-versions PACKAGE`: the candidate version's control record.
/// Answers from apt's lists: no root, no network.
pub(crate) fn apt_show(package: &str) -> Result<String> {
    run(Command::new("apt-cache")
        .args(["show", "--no-all-versions", "--"])
        .arg(package))
}

/// `apt-get download PACKAGE=VERSION` into `dir`.
pub(crate) fn apt_download(package: &str, version: &str, dir: &Path) -> Result<()> {
    run(Command::new("apt-get")
        .args(["download", "-q"])
        .arg(format!("{package}={version}"))
        .current_dir(dir))
    .map(drop)
}

/// `dpkg-deb -x DEB DEST`: unpacks the data part only, runs nothing.
pub(crate) fn deb_extract(deb: &Path, dest: &Path) -> Result<()> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest)).map(drop)
}

/// `depmod -b ROOT VERSION`: writes modules.dep, .alias, .softdep, ... under
/// ROOT/lib/modules/VERSION from the .ko files found there.
pub(crate) fn depmod(root: &Path, version: &str) -> Result<()> {
    run(Command::new("depmod").arg("-b").arg(root).arg(version)).map(drop)
}

/// `objcopy` adding each (section, file, address) to the PE `stub`,
/// writing `out`: how a unified kernel image (UKI) is made.
pub(crate) fn objcopy_add_sections(
    stub: &Path,
    sections: &[(&str, &Path, u64)],
    out: &Path,
) -> Result<()> {
    let mut cmd = Command::new("objcopy");
    for (name, file, vma) in sections {
        let mut add = std::ffi::OsString::from(format!("{name}="));
        add.push(file);
        cmd.arg("--add-section").arg(add);
        cmd.arg("--change-section-vma")
            .arg(format!("{name}={vma:#x}"));
    }
    run(cmd.arg(stub).arg(out)).map(drop)
}

/// Environment for mtools and the syslinux installer (which runs mcopy):
/// every timestamp they write is `SOURCE_DATE_EPOCH`, read as UTC, and no
/// user's ~/.mtoolsrc changes their behaviour.
fn mtools_env(cmd: &mut Command, epoch: u32) -> &mut Command {
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("TZ", "UTC")
        .env("MTOOLSRC", "/dev/null")
        .env("MTOOLS_SKIP_CHECK", "1")
}

/// `mformat`: a FAT32 filesystem over the whole of image file `fs`, with
/// one 512-byte sector per cluster (so even a small ESP has the 65525
/// clusters FAT32 needs), `hidden` sectors before it on the disk (what the
/// syslinux boot sector adds to find itself), and a fixed serial number.
pub(crate) fn mformat_fat32(
    fs: &Path,
    hidden: u64,
    serial: u32,
    label: &str,
    epoch: u32,
) -> Result<()> {
    let mut cmd = Command::new("mformat");
    cmd.arg("-i").arg(fs).args(["-F", "-c", "1"]);
    cmd.arg("-H").arg(hidden.to_string());
    cmd.arg("-N").arg(format!("{serial:08x}"));
    cmd.arg("-v").arg(label).arg("::");
    run(mtools_env(&mut cmd, epoch)).map(drop)
}

/// `mmd`: directories in the FAT image `fs`.
pub(crate) fn mmd(fs: &Path, dirs: &[&str], epoch: u32) -> Result<()> {
    let mut cmd = Command::new("mmd");
    cmd.arg("-i").arg(fs);
    cmd.args(dirs.iter().map(|d| format!("::{d}")));
    run(mtools_env(&mut cmd, epoch)).map(drop)
}

/// `mcopy`: host file `from` to `to` (absolute) in the FAT image `fs`.
pub(crate) fn mcopy(fs: &Path, from: &Path, to: &str, epoch: u32) -> Result<()> {
    let mut cmd = Command::new("mcopy");
    cmd.arg("-i")
        .arg(fs)
        .arg("-o")
        .arg(from)
        .arg(format!("::{to}"));
    run(mtools_env(&mut cmd, epoch)).map(drop)
}

/// `syslinux --install --directory DIR FS`: writes the syslinux boot sector
/// into the FAT image `fs` (keeping its BPB) and ldlinux.sys/.c32 into DIR.
pub(crate) fn syslinux_install(fs: &Path, dir: &str, epoch: u32) -> Result<()> {
    let mut cmd = Command::new("syslinux");
    cmd.args(["--install", "--directory", dir]).arg(fs);
    run(mtools_env(&mut cmd, epoch)).map(drop)
}
