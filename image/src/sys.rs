//! Every external command the build runs (apt-cache, apt-get, dpkg-deb, depmod)
//! lives here, so the rest of the crate is plain logic over files and strings.
//! None of them needs root: `apt-get download` fetches into the current
//! directory, `dpkg-deb -x` unpacks without maintainer scripts and `depmod -b`
//! works on any tree.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

/// Runs `cmd`, returns its stdout, or an error carrying its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| Error::Spawn {
        command: command.clone(),
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
