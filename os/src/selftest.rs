//! Self-tests cellosd runs in test mode (`cellos.mode=test cellos.selftest=<name>`),
//! so the end-to-end suite can check, on the real image in a VM, code paths that no
//! ledger transaction reaches yet. Each prints its steps and ends with a line
//! `cellos: selftest <name> passed` or `cellos: selftest <name> FAILED: <why>`.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use cellos_ledger::deployment::Size;
use cellos_storage::{VolumeName, Volumes};

const MIB: u64 = 1 << 20;

/// Runs the named self-test; the result line is printed, never returned.
pub fn run(name: &str, volumes: &dyn Volumes, pool: Option<&Path>) {
    let r = match (name, pool) {
        ("volume-quota", Some(pool)) => volume_quota(volumes, pool),
        ("volume-quota", None) => Err(anyhow::anyhow!("the node has no SSD pool")),
        _ => Err(anyhow::anyhow!("no such self-test (known: volume-quota)")),
    };
    match r {
        Ok(()) => println!("cellos: selftest {name} passed"),
        Err(e) => println!("cellos: selftest {name} FAILED: {e:#}"),
    }
}

/// Writing past a volume's size fails inside the volume, and the same pool still
/// takes writes outside it: the real BtrfsVolumes, mkfs'd and mounted in the guest.
fn volume_quota(volumes: &dyn Volumes, pool: &Path) -> Result<()> {
    let name = VolumeName::new("selftest-quota")?;
    let size = 16 * MIB;
    let v = volumes.create(&name, size)?;
    println!(
        "cellos: selftest volume-quota: volume {} on pool {} at {} ({})",
        v.name,
        v.pool,
        v.path.display(),
        Size(v.size)
    );
    let inside = fill(&v.path.join("fill"), 4 * size);
    let outside_path = pool.join("selftest-outside");
    let outside = fill(&outside_path, 2 * size);
    let usage = volumes.usage(&name);
    // Clean up before judging, so a failed run leaves nothing behind.
    let _ = std::fs::remove_file(&outside_path);
    volumes.delete(&name)?;
    let usage = usage?;
    match inside {
        (written, Some(e)) if e.raw_os_error() == Some(nix::libc::EDQUOT) && written <= size => {
            println!(
                "cellos: selftest volume-quota: wrote {} into it, then: {e}",
                Size(written)
            )
        }
        (written, Some(e)) => bail!(
            "expected EDQUOT by {}, got {e} after {}",
            Size(size),
            Size(written)
        ),
        (written, None) => bail!(
            "wrote {} into a {} volume without an error",
            Size(written),
            Size(size)
        ),
    }
    println!(
        "cellos: selftest volume-quota: the volume used {} of {}",
        Size(usage.used),
        Size(usage.size)
    );
    match outside {
        (written, None) => println!(
            "cellos: selftest volume-quota: wrote {} outside it on the same pool",
            Size(written)
        ),
        (written, Some(e)) => {
            return Err(e).with_context(|| {
                format!("writing outside the volume failed after {}", Size(written))
            })
        }
    }
    let gone = volumes.list()?.iter().all(|v| v.name != name);
    if !gone {
        bail!("volume {name} is still listed after delete");
    }
    Ok(())
}

/// Writes `total` bytes in 1 MiB chunks, each synced so the quota is checked as it
/// goes; the bytes written and the error that stopped it, if any.
fn fill(path: &Path, total: u64) -> (u64, Option<std::io::Error>) {
    let mut f = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return (0, Some(e)),
    };
    let chunk = vec![0x5au8; MIB as usize];
    let mut written = 0;
    while written < total {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_data()) {
            return (written, Some(e));
        }
        written += MIB;
    }
    (written, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellos_storage::fake::MemVolumes;

    #[test]
    fn anything_but_edquot_fails_the_test() {
        // The in-memory volumes have no directory to write into: the test must fail.
        let dir = tempfile::tempdir().expect("tempdir");
        let vols = MemVolumes::new(1 << 30);
        let e = volume_quota(&vols, dir.path()).expect_err("no quota");
        assert!(e.to_string().contains("expected EDQUOT by 16.0MiB"), "{e}");
        assert!(vols.list().expect("list").is_empty(), "cleaned up");
    }
}
