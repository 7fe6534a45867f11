//! What a container uses, read from its cgroup v2 files: CPU time from `cpu.stat`
//! (`usage_usec`) and memory from `memory.peak` (the peak since the cgroup was made;
//! Linux 5.19 and later) or, without it, `memory.current`. The usage report carries
//! both (`ReportUsage`'s `cpu_usec` and `memory_bytes`).
//!
//! The files are read under a root given to [`Cgroups::new`] (`/sys/fs/cgroup/cellos`
//! on a node, where crun makes each container's cgroup), so tests point it at a
//! directory of fixture files.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use cellos_provision::workload::WorkloadUsage;

/// Where the containers' cgroups are on a node (crun's `cgroupsPath` `/cellos/<name>`).
pub const CONTAINER_CGROUPS: &str = "/sys/fs/cgroup/cellos";

/// The cgroups of the containers, under one root.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cgroups { root: root.into() }
    }

    /// CPU time and memory of the cgroup named `name`.
    pub fn usage(&self, name: &str) -> Result<WorkloadUsage> {
        let dir = self.root.join(name);
        let stat = dir.join("cpu.stat");
        let cpu_usec = read(&stat)?
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| anyhow!("{}: no `usage_usec <n>` line", stat.display()))?;
        let peak = dir.join("memory.peak");
        let memory = if peak.exists() {
            peak
        } else {
            dir.join("memory.current")
        };
        let text = read(&memory)?;
        let memory_bytes = text.trim().parse().map_err(|_| {
            anyhow!(
                "{}: expected a number of bytes, found {:?}",
                memory.display(),
                text.trim()
            )
        })?;
        Ok(WorkloadUsage {
            cpu_usec,
            memory_bytes,
        })
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_STAT: &str = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n\
        nr_periods 10\nnr_throttled 2\nthrottled_usec 5000\n";

    fn cgroup(root: &Path, name: &str, files: &[(&str, &str)]) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (f, text) in files {
            std::fs::write(dir.join(f), text).expect("write fixture");
        }
    }

    #[test]
    fn cpu_time_and_peak_memory_else_current() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = dir.path();
        cgroup(
            r,
            "c1-web",
            &[
                ("cpu.stat", CPU_STAT),
                ("memory.peak", "52428800\n"),
                ("memory.current", "8388608\n"),
            ],
        );
        // A kernel before 5.19 has no memory.peak.
        cgroup(
            r,
            "c1-old",
            &[("cpu.stat", CPU_STAT), ("memory.current", "8388608\n")],
        );
        let cg = Cgroups::new(r);
        assert_eq!(
            cg.usage("c1-web").expect("usage"),
            WorkloadUsage {
                cpu_usec: 1_234_567,
                memory_bytes: 50 << 20
            }
        );
        assert_eq!(cg.usage("c1-old").expect("usage").memory_bytes, 8 << 20);
    }

    #[test]
    fn a_missing_or_odd_file_says_which() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = dir.path();
        let cg = Cgroups::new(r);
        let e = cg.usage("gone").expect_err("no cgroup");
        assert!(e.to_string().ends_with("gone/cpu.stat"), "{e}");
        cgroup(r, "a", &[("cpu.stat", "user_usec 1\n")]);
        let e = cg.usage("a").expect_err("no usage_usec");
        assert!(
            e.to_string()
                .ends_with("a/cpu.stat: no `usage_usec <n>` line"),
            "{e}"
        );
        cgroup(
            r,
            "b",
            &[("cpu.stat", CPU_STAT), ("memory.current", "max\n")],
        );
        let e = cg.usage("b").expect_err("not a number");
        assert!(
            e.to_string()
                .ends_with("b/memory.current: expected a number of bytes, found \"max\""),
            "{e}"
        );
    }
}
