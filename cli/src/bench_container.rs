//! `cellos bench container`: what a container costs a node, measured on a real one.
//!
//! One node boots in QEMU and registers on a ledger embedded in this process; Debian's
//! registry runs on this machine with a busybox image the bench builds and pushes
//! (`cellos_container::testing`, as the end-to-end tests do). Four figures:
//! - contract to running, cold: a deployment of a network and one container, from
//!   the contract to the node's result with the container running, when the node has
//!   never seen the image (pull, unpack, snapshot, crun);
//! - the same with the image cached: a second deployment of the same image (its blobs
//!   and unpacked layers are on the node; only a snapshot and crun remain);
//! - the start alone: `crun run --detach` of a bundle the node already prepared, as
//!   cellosd runs it, from the call until crun returns with the container's process
//!   started (what cellosd waits for before it reports). Timed on the node from
//!   `/proc/uptime` (10 ms ticks) over several starts in a row, so the serial console
//!   adds nothing;
//! - the runtime's size: the bench builds its node image twice, with and without
//!   crun in `[packages]`, and compares the two initramfs file lists (what crun
//!   brings that nothing else in the image already carries) and compressed sizes.
//!
//! Contract-to-running includes the ledger's round trips and the client's polling
//! (every 500 ms), as a user sees it; both deployments pay the same for their network.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cellos_container::testing::{self, Registry};
use cellos_ledger::deployment::WorkloadState;
use cellos_ledger::keys::Signer;
use cellos_ledger::*;
use cellos_qemu::{Accel, Vm};

use crate::bench_network::{boot_node, funded_user, sh, BenchLedger, BenchNode, BenchVm};
use crate::{deploy, qemu};

pub struct ContainerBenchOptions {
    pub accel: Accel,
    /// vCPUs of the node.
    pub cpus: u32,
    pub memory: String,
    pub boot_timeout: u64,
    /// `crun run`s timed back to back for the start latency.
    pub starts: u32,
}

/// The container each deployment runs: it only has to stay up.
const APPLETS: [&str; 2] = ["sh", "sleep"];
/// How long a deployment may take (a cold pull over TCG included).
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);
const SHELL: Duration = Duration::from_secs(120);
/// Where the image build copies the manifest.
const MANIFEST_IN_IMAGE: &str = "etc/cellos/manifest.toml";
/// Where cellosd keeps the bundles and crun's state (`ContainerDirs::run`).
const RUN_DIR: &str = "/run/cellos/containers";

/// The built-in manifest as the bench builds it, with crun or without.
fn manifest(with_crun: bool) -> Result<String> {
    let mut m: toml::Table = qemu::MANIFEST.parse().context("the built-in manifest")?;
    let packages = m
        .get_mut("packages")
        .and_then(toml::Value::as_table_mut)
        .context("the built-in manifest has no [packages] table")?;
    if packages.remove("crun").is_none() {
        bail!("the built-in manifest does not carry crun");
    }
    if with_crun {
        packages.insert(
            "crun".into(),
            toml::Value::Array(vec!["/usr/bin/crun".into()]),
        );
    }
    Ok(toml::to_string(&m)?)
}

/// The regular files of a `newc` cpio archive: path and size.
fn cpio_files(mut a: &[u8]) -> Result<BTreeMap<String, u64>> {
    const HEADER: usize = 110;
    let field = |h: &[u8], i: usize| -> Result<u64> {
        let hex = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i])?;
        Ok(u64::from_str_radix(hex, 16)?)
    };
    let pad = |n: usize| (n + 3) & !3;
    let mut files = BTreeMap::new();
    loop {
        if a.len() < HEADER || &a[..6] != b"070701" {
            bail!("not a newc cpio archive (or cut short)");
        }
        let (mode, size) = (field(a, 1)?, field(a, 6)?);
        let name_len = usize::try_from(field(a, 11)?)?;
        let data_at = pad(HEADER + name_len);
        let end = usize::try_from(size)?
            .checked_add(data_at)
            .filter(|&e| e <= a.len() && HEADER + name_len <= a.len() && name_len > 0)
            .context("a cpio entry runs past the archive")?;
        let name = String::from_utf8_lossy(&a[HEADER..HEADER + name_len - 1]).into_owned();
        if name == "TRAILER!!!" {
            return Ok(files);
        }
        if mode & 0o170000 == 0o100000 {
            files.insert(name, size);
        }
        a = &a[pad(end).min(a.len())..];
    }
}

/// The files of the initramfs in `image` (a `cellos image build` output directory).
fn image_files(image: &Path) -> Result<BTreeMap<String, u64>> {
    let path = image.join(cellos_image::INITRAMFS);
    let file = std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
    let cpio =
        zstd::stream::decode_all(file).with_context(|| format!("unpack {}", path.display()))?;
    cpio_files(&cpio)
}

/// A deployment of a network (subnet `10.40.k.0/24`) and a container of `image`
/// that sleeps.
fn deployment_file(dir: &Path, k: u8, image: &str) -> Result<std::path::PathBuf> {
    let file = dir.join(format!("box{k}.toml"));
    let port = 51820 + u16::from(k);
    std::fs::write(
        &file,
        format!(
            r#"version = 1
[[workloads]]
name = "net"
spec.network.ip_range = "10.40.0.0/16"
spec.network.subnet = "10.40.{k}.0/24"
spec.network.private_key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
spec.network.listen_port = {port}
spec.network.peers = []

[[workloads]]
name = "box"
[workloads.spec.container]
image = "{image}"
cmd = ["/bin/sleep", "3600"]
cpu = 1
memory = "64M"
network = "net"
ip = "10.40.{k}.5"
"#
        ),
    )?;
    Ok(file)
}

/// Deploys `file` on `node`; the time to the node's result with the container
/// running, and the contract.
async fn timed_deploy(
    c: &cellos_ledger::client::Client,
    user: &mut Signer,
    file: &Path,
    node: NodeId,
) -> Result<(Duration, ContractId)> {
    let t = Instant::now();
    let o = deploy::deploy(c, user, file, node, None, DEPLOY_TIMEOUT).await?;
    let took = t.elapsed();
    let r = o.result.context("the node reported no result")?;
    let w = r
        .workloads
        .iter()
        .find(|w| w.name == "box")
        .context("the node reported nothing for the container")?;
    if w.state != WorkloadState::Ok || !matches!(w.data.get("pid"), Some(p) if p != "0") {
        bail!("the container did not start: {:?} {}", w.state, w.message);
    }
    Ok((took, o.contract.id))
}

/// Seconds since the node booted, from one `/proc/uptime` line's first field.
fn uptime(field: Option<&str>) -> Result<f64> {
    field
        .context("no uptime in the node's answer")?
        .parse()
        .context("the node's uptime is not a number")
}

/// Mean time of `n` `crun run --detach` in a row, each of a copy of the bundle
/// cellosd prepared for `name` (its own cgroup, the same root and namespace), timed
/// on the node; the containers are removed afterwards.
fn start_latency(vm: &mut Vm, name: &str, n: u32) -> Result<Duration> {
    let bench = "/run/cellos-bench";
    let crun = format!("crun --root {bench}/crun");
    sh(
        vm,
        0,
        &format!(
            "i=0; while [ $i -lt {n} ]; do mkdir -p {bench}/b$i && sed 's#\"/cellos/{name}\"#\"/cellos/bench-'$i'\"#' {RUN_DIR}/bundles/{name}/config.json > {bench}/b$i/config.json || exit 1; i=$((i+1)); done"
        ),
        SHELL,
    )?;
    let out = sh(
        vm,
        0,
        &format!(
            "read t0 _ < /proc/uptime; i=0; while [ $i -lt {n} ]; do {crun} run --detach --no-pivot --bundle {bench}/b$i bench$i </dev/null >/dev/null 2>&1 || echo failed; i=$((i+1)); done; read t1 _ < /proc/uptime; echo \"$t0 $t1\""
        ),
        SHELL,
    )?;
    let running = sh(vm, 0, &format!("{crun} list"), SHELL)?;
    sh(
        vm,
        0,
        &format!("i=0; while [ $i -lt {n} ]; do {crun} delete --force bench$i; i=$((i+1)); done; rm -rf {bench}"),
        SHELL,
    )?;
    if out.contains("failed") {
        bail!("crun run failed on the node: {out}");
    }
    let up = running.lines().filter(|l| l.contains("running")).count();
    if up != n as usize {
        bail!("{up} of {n} bench containers were running: {running}");
    }
    let mut times = out.lines().last().unwrap_or_default().split_whitespace();
    let (t0, t1) = (uptime(times.next())?, uptime(times.next())?);
    Ok(Duration::from_secs_f64((t1 - t0).max(0.0) / f64::from(n)))
}

pub async fn container(o: ContainerBenchOptions) -> Result<()> {
    if o.starts == 0 {
        bail!("--starts must be at least 1");
    }
    let data = tempfile::tempdir().context("cannot make a temporary directory")?;
    let data = data.path();
    let ledger = BenchLedger::start(data).await?;
    let reg = Registry::start().context("cannot start the registry")?;
    let image = testing::busybox_image(&APPLETS)?;
    let image_bytes: u64 = image.layers.iter().map(|(_, l)| l.size).sum();
    testing::push_image(&reg, "bench/box", Some("1"), &image).await?;
    let reg_port = reg.addr.rsplit(':').next().unwrap_or_default().to_string();
    let guest_ref = format!("10.0.2.2:{reg_port}/bench/box:1");

    let mut built = Vec::new();
    for with_crun in [true, false] {
        let dir = data.join(if with_crun { "image" } else { "image-no-crun" });
        let manifest = data.join(format!("manifest-{with_crun}.toml"));
        std::fs::write(&manifest, self::manifest(with_crun)?)?;
        let req = qemu::ImageRequest {
            boot: ledger.boot_params(&format!(
                "cellos.debug cellos.registry.insecure=10.0.2.2:{reg_port}"
            )),
            out: dir.clone(),
            manifest: Some(manifest),
            cache: None,
            bin_dir: qemu::default_bin_dir()?,
        };
        let artifacts = tokio::task::spawn_blocking(move || qemu::build_image(&req)).await??;
        built.push((dir, artifacts.initramfs_size));
    }

    eprintln!("bench: booting the node");
    let vm = BenchVm {
        accel: o.accel,
        cpus: o.cpus,
        memory: &o.memory,
        boot_timeout: o.boot_timeout,
    };
    let BenchNode { mut vm, id: node } =
        tokio::task::block_in_place(|| boot_node(&built[0].0, data, 0, &vm, String::new(), None))?;
    let result = measure(&ledger, &mut vm, node, data, &guest_ref, &o).await;
    let _ = vm.kill();
    ledger.stop().await?;
    let (cold, cached, start) = result?;

    let with = image_files(&built[0].0)?;
    let without = image_files(&built[1].0)?;
    let added: Vec<(&String, u64)> = with
        .iter()
        // The manifest copied into the image differs by its crun line alone.
        .filter(|(path, size)| without.get(*path) != Some(size) && *path != MANIFEST_IN_IMAGE)
        .map(|(path, size)| (path, *size))
        .collect();
    let added_bytes: u64 = added.iter().map(|(_, s)| s).sum();
    let compressed = built[0].1.saturating_sub(built[1].1);
    let kib = |b: u64| b as f64 / 1024.0;

    println!(
        "container bench: one node ({}, {} vCPU, {}), a busybox image ({:.0} KiB gzip) from a registry on this machine",
        format!("{:?}", o.accel).to_lowercase(),
        o.cpus,
        o.memory,
        kib(image_bytes)
    );
    println!(
        "  contract to running, cold cache    {:>8.2} s   (a network and a container; pull, unpack, snapshot, crun)",
        cold.as_secs_f64()
    );
    println!(
        "  contract to running, image cached  {:>8.2} s   (a second deployment of the same image)",
        cached.as_secs_f64()
    );
    println!(
        "  container start alone              {:>8.0} ms  (crun run --detach of a prepared bundle until it returns with the process started; mean of {}, timed on the node)",
        start.as_secs_f64() * 1000.0,
        o.starts
    );
    println!(
        "  image size added by the runtime    {:>8.0} KiB uncompressed, {:.0} KiB in the compressed initramfs:",
        kib(added_bytes),
        kib(compressed)
    );
    for (path, size) in added {
        println!("      {path} {:.0} KiB", kib(size));
    }
    Ok(())
}

/// Cold and cached contract-to-running, and the start alone.
async fn measure(
    ledger: &BenchLedger,
    vm: &mut Vm,
    node: NodeId,
    data: &Path,
    image: &str,
    o: &ContainerBenchOptions,
) -> Result<(Duration, Duration, Duration)> {
    let c = &ledger.client;
    let mut user = funded_user(c).await?;
    eprintln!("bench: first deployment (cold cache)");
    let (cold, _) = timed_deploy(c, &mut user, &deployment_file(data, 1, image)?, node).await?;
    eprintln!("bench: second deployment of the same image (cached)");
    let (cached, contract) =
        timed_deploy(c, &mut user, &deployment_file(data, 2, image)?, node).await?;
    eprintln!("bench: {} container starts with crun on the node", o.starts);
    let name = format!("c{contract}-box");
    let start = tokio::task::block_in_place(|| start_latency(vm, &name, o.starts))?;
    Ok((cold, cached, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_manifests_differ_by_crun_alone() {
        let with: toml::Table = manifest(true).expect("manifest").parse().expect("toml");
        let mut without: toml::Table = manifest(false).expect("manifest").parse().expect("toml");
        assert_eq!(
            with["packages"]["crun"].as_array().expect("paths")[0].as_str(),
            Some("/usr/bin/crun")
        );
        assert!(without["packages"].get("crun").is_none());
        without["packages"]
            .as_table_mut()
            .expect("packages")
            .insert("crun".into(), with["packages"]["crun"].clone());
        assert_eq!(with, without);
    }

    /// A newc entry as the image builder writes one.
    fn entry(name: &str, mode: u32, data: &[u8]) -> Vec<u8> {
        let mut e = format!(
            "070701{:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            1,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        )
        .into_bytes();
        e.extend_from_slice(name.as_bytes());
        e.push(0);
        while e.len() % 4 != 0 {
            e.push(0);
        }
        e.extend_from_slice(data);
        while e.len() % 4 != 0 {
            e.push(0);
        }
        e
    }

    #[test]
    fn cpio_lists_regular_files_with_sizes() {
        let mut a = entry("usr", 0o040755, b"");
        a.extend(entry("usr/bin/crun", 0o100755, b"12345"));
        a.extend(entry("lib/x.so", 0o120777, b"y.so"));
        a.extend(entry("lib/y.so", 0o100644, b"1234567"));
        a.extend(entry("TRAILER!!!", 0, b""));
        let files = cpio_files(&a).expect("archive");
        assert_eq!(
            files,
            BTreeMap::from([("usr/bin/crun".into(), 5), ("lib/y.so".into(), 7)])
        );
        assert!(cpio_files(&a[..a.len() - 20]).is_err(), "cut short");
        assert!(cpio_files(b"not an archive").is_err());
    }
}
