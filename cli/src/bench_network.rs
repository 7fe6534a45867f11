//! `cellos bench network`: what a tenant network costs, measured between two real
//! nodes.
//!
//! Two nodes boot in QEMU from one image, each with a second NIC on a shared segment
//! (as in the network end-to-end test), and register on a ledger embedded in this
//! process. A user deploys a two-node network planned exactly as `cellos network plan`
//! plans one, and the bench times the first contract to the first ping answered
//! through the tunnel. Then iperf3 measures TCP throughput between the same two
//! guests twice: over the bare segment (host namespace to host namespace) and through
//! the tunnel (tenant namespace to tenant namespace, WireGuard on both ends), so the
//! ratio is the tunnel's cost on identical hardware.
//!
//! iperf3 is not in the node image (with libcrypto it would add megabytes to every
//! boot): the bench builds its own image from the built-in manifest plus iperf3. The
//! tenant namespace's ruleset answers only ICMP at its gateway, so for the run the
//! bench opens iperf3's port on the receiving namespace's WireGuard device through the
//! node's debug shell; the nodes are thrown away afterwards.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cellos_ledger::client::Client;
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::network::Ipv4Net;
use cellos_ledger::server::{Config, Server};
use cellos_ledger::*;
use cellos_qemu::{Accel, Regex, Segment, Vm};

use crate::{deploy, network, qemu};

pub struct NetworkBenchOptions {
    /// Seconds each iperf3 run sends.
    pub seconds: u32,
    pub accel: Accel,
    /// vCPUs per node.
    pub cpus: u32,
    pub memory: String,
    pub boot_timeout: u64,
}

/// The nodes' addresses on the segment (their eth1).
const SEGMENT_IPS: [&str; 2] = ["10.99.0.1", "10.99.0.2"];
const RANGE: &str = "10.30.0.0/16";
const WG_PORT: u16 = 51820;
const BARE_PORT: u16 = 5201;
const TUNNEL_PORT: u16 = 5202;
/// How long a fresh tunnel may take to answer its first ping.
const TUNNEL_TIMEOUT: Duration = Duration::from_secs(120);

/// The node manifest with iperf3 (and, through the image build, the shared libraries
/// it needs) added to `[packages]`.
fn with_iperf3(manifest: &str) -> Result<String> {
    let mut m: toml::Table = manifest.parse().context("the built-in manifest")?;
    let packages = m
        .entry("packages")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .context("[packages] in the manifest is not a table")?;
    packages.insert(
        "iperf3".into(),
        toml::Value::Array(vec!["/usr/bin/iperf3".into()]),
    );
    Ok(toml::to_string(&m)?)
}

/// Bits per second the receiver counted, from `iperf3 -J` output (which may follow
/// other lines on the console).
fn received_bps(out: &str) -> Result<f64> {
    let start = out.find('{').context("no JSON in iperf3's output")?;
    let v: serde_json::Value = serde_json::from_str(&out[start..])
        .with_context(|| format!("iperf3's output is not JSON: {out}"))?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3's JSON has no end.sum_received.bits_per_second")
}

/// Runs a command in a node's debug shell; its output, or an error with it.
pub(crate) fn sh(vm: &mut Vm, node: usize, cmd: &str, timeout: Duration) -> Result<String> {
    let (status, out) = tokio::task::block_in_place(|| vm.shell(cmd, timeout))
        .with_context(|| format!("node {node}: {cmd}"))?;
    if status != 0 {
        bail!("node {node}: `{cmd}` exited with {status}: {out}");
    }
    Ok(out)
}

/// `iperf3 -c` from `from` (after `prefix`, e.g. an nsenter) to `target`, retried
/// while the server that was just started comes up.
fn iperf(vm: &mut Vm, prefix: &str, target: &str, port: u16, seconds: u32) -> Result<f64> {
    let cmd = format!("{prefix}iperf3 -J -c {target} -p {port} -t {seconds}");
    let timeout = Duration::from_secs(u64::from(seconds) + 60);
    let mut last = None;
    for _ in 0..5 {
        match sh(vm, 0, &cmd, timeout).and_then(|out| received_bps(&out)) {
            Ok(bps) => return Ok(bps),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("iperf3 did not run")))
}

/// One node of the bench: its VM and ledger id.
pub(crate) struct BenchNode {
    pub vm: Vm,
    pub id: NodeId,
}

/// How a bench's nodes run.
pub(crate) struct BenchVm<'a> {
    pub accel: Accel,
    pub cpus: u32,
    pub memory: &'a str,
    pub boot_timeout: u64,
}

/// Boots node `i` of a bench from `image` with one 20 GiB SSD, `cmdline_extra` and,
/// when given, a second NIC on `segment`, and waits until it registers.
pub(crate) fn boot_node(
    image: &Path,
    work: &Path,
    i: usize,
    vm: &BenchVm,
    cmdline_extra: String,
    segment: Option<&Segment>,
) -> Result<BenchNode> {
    let req = qemu::RunRequest {
        image: image.to_path_buf(),
        vm: qemu::VmArgs {
            disks: qemu::parse_disks("1x20G").map_err(anyhow::Error::msg)?,
            memory: vm.memory.to_string(),
            cpus: vm.cpus,
            accel: vm.accel,
            pxe: false,
            boot_timeout: vm.boot_timeout,
        },
        work_dir: Some(work.join(format!("node{i}"))),
        cmdline_extra,
        segment: segment.map(Segment::port).transpose()?,
    };
    let mut vm = qemu::boot(&req)?;
    let id = registered(&mut vm, i)?;
    Ok(BenchNode { vm, id })
}

fn boot(
    image: &Path,
    work: &Path,
    i: usize,
    segment: &Segment,
    o: &NetworkBenchOptions,
) -> Result<BenchNode> {
    let vm = BenchVm {
        accel: o.accel,
        cpus: o.cpus,
        memory: &o.memory,
        boot_timeout: o.boot_timeout,
    };
    let peer = format!("cellos.net.peer=eth1:{}/24", SEGMENT_IPS[i]);
    boot_node(image, work, i, &vm, peer, Some(segment))
}

/// Waits until node `i` of a bench says it registered; its id.
fn registered(vm: &mut Vm, i: usize) -> Result<NodeId> {
    let registered = Regex::new(r"cellos: node (\d+) registered on farm \d+")?;
    let line = vm
        .wait_for(&registered, Duration::from_secs(300))
        .with_context(|| format!("node {i} did not register"))?;
    registered
        .captures(&line)
        .and_then(|c| c[1].parse::<NodeId>().ok())
        .with_context(|| format!("no node id in {line:?}"))
}

/// A new user with an account and funds from the faucet.
pub(crate) async fn funded_user(c: &Client) -> Result<Signer> {
    let mut user = Signer::new(keys::generate(), c.status().await?.chain_id);
    c.submit(&user.sign(TxBody::Faucet { amount: 1_000_000 }))
        .await?;
    c.submit(&user.sign(TxBody::CreateAccount {
        encryption_key: Some(keys::encryption_key(user.key())),
    }))
    .await?;
    Ok(user)
}

/// A ledger embedded in the bench's process, with a farm whose nodes are approved
/// at once; stopped by [`BenchLedger::stop`].
pub(crate) struct BenchLedger {
    pub client: Client,
    pub port: u16,
    pub farm: crate::demo::DemoFarm,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), cellos_ledger::server::ServerError>>,
}

impl BenchLedger {
    /// Serves a fresh ledger with its data under `data` on a loopback port.
    pub async fn start(data: &Path) -> Result<BenchLedger> {
        let srv = Server::bind(Config {
            data: data.join("ledger"),
            listen: "127.0.0.1:0".parse()?,
            params: ChainParams::new("cellos-bench", true),
            blob_limit: 4 << 20,
            ..Default::default()
        })
        .await
        .context("cannot start the ledger")?;
        let port = srv.local_addr()?.port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(srv.run(async {
            let _ = stopped.await;
        }));
        let client = Client::new(&format!("http://127.0.0.1:{port}"))?;
        let farm = crate::demo::setup_farm(&client).await?;
        Ok(BenchLedger {
            client,
            port,
            farm,
            stop,
            server,
        })
    }

    /// The boot parameters of the bench's nodes (reaching the ledger through QEMU's
    /// host address), with `extra` on the kernel command line.
    pub fn boot_params(&self, extra: &str) -> cellos_image::BootParams {
        cellos_image::BootParams {
            farm: self.farm.farm,
            ledger: format!("http://10.0.2.2:{}", self.port),
            enroll: Some(self.farm.token.to_text()),
            extra: extra.into(),
        }
    }

    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.server.await??;
        Ok(())
    }
}

/// What the node reported for the network workload of a deployment.
struct Tenant {
    namespace: String,
    gateway: String,
    wireguard: String,
}

fn tenant(o: &deploy::Outcome) -> Result<Tenant> {
    let w = o
        .result
        .as_ref()
        .and_then(|r| r.workloads.first())
        .context("the node reported no network workload")?;
    let get = |k: &str| {
        w.data
            .get(k)
            .cloned()
            .with_context(|| format!("the network workload's results have no {k}"))
    };
    Ok(Tenant {
        namespace: get("namespace")?,
        gateway: get("gateway")?,
        wireguard: get("wireguard")?,
    })
}

pub async fn network(o: NetworkBenchOptions) -> Result<()> {
    let data = tempfile::tempdir().context("cannot make a temporary directory")?;
    let data = data.path();
    let ledger = BenchLedger::start(data).await?;
    let c = &ledger.client;

    let manifest = data.join("manifest.toml");
    std::fs::write(&manifest, with_iperf3(qemu::MANIFEST)?)?;
    let image = data.join("image");
    let req = qemu::ImageRequest {
        boot: ledger.boot_params("cellos.debug"),
        out: image.clone(),
        manifest: Some(manifest),
        cache: None,
        bin_dir: qemu::default_bin_dir()?,
    };
    tokio::task::spawn_blocking(move || qemu::build_image(&req)).await??;

    let segment = Segment::start()?;
    eprintln!("bench: booting two nodes on one segment");
    let mut nodes = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let boots: Vec<_> = (0..2)
                .map(|i| {
                    s.spawn({
                        let (image, segment, o) = (&image, &segment, &o);
                        move || boot(image, data, i, segment, o)
                    })
                })
                .collect();
            boots
                .into_iter()
                .map(|b| {
                    b.join()
                        .map_err(|_| anyhow::anyhow!("a boot thread panicked"))?
                })
                .collect::<Result<Vec<_>>>()
        })
    })?;
    let result = measure(c, &mut nodes, data, &o).await;
    for n in &mut nodes {
        let _ = n.vm.kill();
    }
    ledger.stop().await?;
    result
}

async fn measure(
    c: &Client,
    nodes: &mut [BenchNode],
    data: &Path,
    o: &NetworkBenchOptions,
) -> Result<()> {
    let mut user = funded_user(c).await?;
    let mut members = Vec::new();
    for n in nodes.iter() {
        let node = c.node(n.id).await?;
        members.push(network::Member {
            node: n.id,
            endpoint: network::endpoint_of(&node, Some("eth1")),
        });
    }
    let range: Ipv4Net = RANGE.parse()?;
    let shares = network::plan("bench", range, WG_PORT, &members, network::wg_keypair)?;
    let files = network::write(&data.join("plan"), "bench", &shares, true)?;

    eprintln!("bench: deploying the network on both nodes");
    let t = Instant::now();
    let mut tenants = Vec::new();
    for (share, file) in shares.iter().zip(&files) {
        let outcome = deploy::deploy(
            c,
            &mut user,
            file,
            share.node,
            None,
            Duration::from_secs(300),
        )
        .await?;
        tenants.push(tenant(&outcome)?);
    }
    let (a, b) = (&tenants[0], &tenants[1]);
    let ping = format!(
        "nsenter --net=/run/netns/{} ping -c 1 -W 1 {}",
        a.namespace, b.gateway
    );
    let vm_a = &mut nodes[0].vm;
    while sh(vm_a, 0, &ping, Duration::from_secs(30)).is_err() {
        if t.elapsed() > TUNNEL_TIMEOUT {
            bail!(
                "no ping through the tunnel {} s after the first contract",
                t.elapsed().as_secs()
            );
        }
    }
    let to_tunnel = t.elapsed();

    // Servers on node 1: one on its segment address, one on its tenant gateway with
    // the port opened on the WireGuard device for this run.
    let in_b = format!("nsenter --net=/run/netns/{} ", b.namespace);
    let short = Duration::from_secs(30);
    let vm_b = &mut nodes[1].vm;
    sh(
        vm_b,
        1,
        &format!("iperf3 -s -D -B {} -p {BARE_PORT}", SEGMENT_IPS[1]),
        short,
    )?;
    sh(
        vm_b,
        1,
        &format!(
            "{in_b}nft insert rule inet cellos input iifname {} tcp dport {TUNNEL_PORT} accept",
            b.wireguard
        ),
        short,
    )?;
    sh(
        vm_b,
        1,
        &format!("{in_b}iperf3 -s -D -B {} -p {TUNNEL_PORT}", b.gateway),
        short,
    )?;

    eprintln!(
        "bench: iperf3 over the bare segment, then through the tunnel ({} s each)",
        o.seconds
    );
    let vm_a = &mut nodes[0].vm;
    let bare = iperf(vm_a, "", SEGMENT_IPS[1], BARE_PORT, o.seconds)?;
    let in_a = format!("nsenter --net=/run/netns/{} ", a.namespace);
    let tunnel = iperf(vm_a, &in_a, &b.gateway, TUNNEL_PORT, o.seconds)?;

    let mbit = |bps: f64| bps / 1e6;
    println!(
        "network bench: two nodes ({}, {} vCPU each), iperf3 TCP for {} s",
        format!("{:?}", o.accel).to_lowercase(),
        o.cpus,
        o.seconds
    );
    println!(
        "  bare segment, eth1 to eth1               {:>9.1} Mbit/s",
        mbit(bare)
    );
    println!(
        "  WireGuard tunnel, namespace to namespace {:>9.1} Mbit/s  ({:.2}x of bare)",
        mbit(tunnel),
        tunnel / bare
    );
    println!(
        "  first contract to a working tunnel       {:>9.1} s (both nodes deployed, first ping answered)",
        to_tunnel.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_image_carries_iperf3_and_keeps_the_rest() {
        let text = with_iperf3(qemu::MANIFEST).expect("manifest");
        let m: toml::Table = text.parse().expect("toml");
        assert_eq!(
            m["packages"]["iperf3"].as_array().expect("paths")[0].as_str(),
            Some("/usr/bin/iperf3")
        );
        let orig: toml::Table = qemu::MANIFEST.parse().expect("toml");
        assert_eq!(m["service"], orig["service"]);
        assert_eq!(m["packages"]["nftables"], orig["packages"]["nftables"]);
        assert_eq!(m["kernel"], orig["kernel"]);
    }

    #[test]
    fn iperf3_json_after_console_noise() {
        let out = "warning: something\n{\"start\":{},\"end\":{\"sum_received\":{\"bits_per_second\":1.5e8}}}";
        assert_eq!(received_bps(out).expect("bps"), 1.5e8);
        let err = received_bps("{\"error\":\"unable to connect to server\"}").expect_err("error");
        assert!(err.to_string().contains("unable to connect"), "{err}");
        assert!(received_bps("connection refused").is_err());
        assert!(received_bps("{\"end\":{}}").is_err());
    }
}
