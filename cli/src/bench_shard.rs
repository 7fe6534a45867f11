//! `cellos bench ec` and `cellos bench shard`: figures for the storage shards.
//!
//! `ec` measures, on one core, what an object costs to code: both Reed-Solomon
//! crates side by side at 4+2, 10+4 and 16+4 (encode, and reconstructing m lost
//! data shards, the worst case), both AEADs, and then the whole put and get
//! pipeline (all cores) against in-memory backends and against six shard servers
//! on loopback that fsync every write.
//!
//! `shard` runs redis-benchmark (SET and GET, 4 KiB values, 512 B values pipelined
//! 16 deep, and 64 KiB values, 50 clients, random keys) against `shardd` and
//! against redis-server started the same way on this machine, once with an fsync-always append-only file (the same
//! promise shardd makes: acknowledged means on disk) and once with its default
//! configuration (no per-write durability), and prints them side by side with
//! shardd's ratio to the fsync-always redis.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cellos_shard::server::{Config, Server};
use cellos_store::backend::{Backend, MemBackend};
use cellos_store::cipher::{Cipher, CipherKind};
use cellos_store::config::{BackendSpec, StoreConfig};
use cellos_store::ec::{Ec, RsCrate};
use cellos_store::object::Store;

/// Runs `f` repeatedly for about `secs`; returns GB/s for `bytes` per call.
fn rate(secs: f64, bytes: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut n = 0u64;
    while n == 0 || start.elapsed().as_secs_f64() < secs {
        f();
        n += 1;
    }
    (bytes as f64 * n as f64) / start.elapsed().as_secs_f64() / 1e9
}

/// Mixed data: random runs between compressible text, like the e2e test's.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        for _ in 0..(32 << 10) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        let text = format!("compressible run at offset {}; ", v.len());
        for _ in 0..(256 << 10) / text.len() {
            v.extend_from_slice(text.as_bytes());
        }
    }
    v.truncate(len);
    v
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn ec_figures(secs: f64, size: usize) -> Result<()> {
    let data = payload(size);
    println!(
        "cellos bench ec: {} MiB buffers, one core, {} ({} cores), about {secs} s per figure",
        size >> 20,
        cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("\nReed-Solomon, GB/s of data (reconstruct: m data shards lost, includes copying the survivors)");
    println!(
        "{:<7} {:>22} {:>22}   {:>22} {:>22}",
        "code", "simd encode", "simd reconstruct", "erasure encode", "erasure reconstruct"
    );
    for (k, m) in [(4, 2), (10, 4), (16, 4)] {
        let mut row = format!("{:<7}", format!("{k}+{m}"));
        for which in RsCrate::ALL {
            let ec = Ec::new(which, k, m)?;
            let enc = rate(secs, size, || {
                let _ = ec.encode(&data);
            });
            let shards = ec.encode(&data)?;
            let mut lost: Vec<Option<Vec<u8>>> = shards.into_iter().map(Some).collect();
            for s in lost.iter_mut().take(m) {
                *s = None;
            }
            let dec = rate(secs, size, || {
                let _ = ec.decode(lost.clone(), size);
            });
            if ec.decode(lost.clone(), size)? != data {
                bail!("{} {k}+{m} decoded wrong bytes", which.name());
            }
            row += &format!(" {enc:>22.2} {dec:>22.2}  ");
        }
        println!("{row}");
    }
    println!("\nAEAD, GB/s (seal = encrypt + tag; open = verify + decrypt)");
    for kind in CipherKind::ALL {
        let c = Cipher::new(kind, &[7; 32]);
        let mut buf = data.clone();
        let seal = rate(secs, size, || {
            buf.truncate(size);
            let _ = c.seal(1, b"", &mut buf);
        });
        let mut sealed = data.clone();
        c.seal(1, b"", &mut sealed)?;
        let open = rate(secs, size, || {
            let mut b = sealed.clone();
            let _ = c.open(1, b"", &mut b);
        });
        println!("{:<20} seal {seal:>6.2}  open {open:>6.2}", kind.name());
    }
    Ok(())
}

fn specs(addrs: &[SocketAddr]) -> Vec<BackendSpec> {
    addrs
        .iter()
        .map(|a| BackendSpec {
            address: *a,
            namespace: "default".into(),
            password: None,
            node: None,
            farm: None,
        })
        .collect()
}

async fn pipeline<B: Backend>(label: &str, store: &Store<B>, data: &[u8]) -> Result<()> {
    let t = Instant::now();
    store.put("bench", data).await?;
    let put = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let back = store.get("bench").await?;
    let get = t.elapsed().as_secs_f64();
    if back != data {
        bail!("{label}: get returned different bytes");
    }
    let gb = data.len() as f64 / 1e9;
    println!(
        "{label:<52} put {:>5.2} GB/s   get {:>5.2} GB/s",
        gb / put,
        gb / get
    );
    Ok(())
}

/// `cellos bench ec`.
pub async fn ec(secs: f64, size: usize, pipeline_size: usize) -> Result<()> {
    tokio::task::spawn_blocking(move || ec_figures(secs, size)).await??;
    let data = payload(pipeline_size);
    println!(
        "\nwhole pipeline at 4+2 (4 MiB segments: zstd -> AEAD -> Reed-Solomon), {} MiB, all cores",
        pipeline_size >> 20
    );
    let addrs: Vec<SocketAddr> = (0..6)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 1 + i)))
        .collect();
    for erasure in RsCrate::ALL {
        for cipher in CipherKind::ALL {
            let mems: Vec<MemBackend> = (0..6).map(|_| MemBackend::default()).collect();
            let mut cfg = StoreConfig::new(4, 2, [5; 32], specs(&addrs));
            cfg.erasure = erasure;
            cfg.cipher = cipher;
            let store = Store::new(cfg, mems)?;
            let label = format!("in memory, {}, {}", erasure.name(), cipher.name());
            pipeline(&label, &store, &data).await?;
        }
    }

    let tmp = tempfile::tempdir().context("temporary directory")?;
    let mut servers = Vec::new();
    for i in 0..6 {
        let cfg = Config::new(
            tmp.path().join(format!("s{i}")),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        );
        servers.push(Server::start(cfg).await?);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(Server::local_addr).collect();
    let store = Store::connect(StoreConfig::new(4, 2, [5; 32], specs(&addrs)))?;
    pipeline("6 shardd, loopback, fsync (defaults)", &store, &data).await?;
    for s in servers {
        s.shutdown().await;
    }
    Ok(())
}

/// A server under test, killed on drop.
struct Proc {
    child: tokio::process::Child,
    port: u16,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(l.local_addr().context("find a free port")?.port())
}

async fn wait_port(port: u16, child: &mut tokio::process::Child, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            bail!("{what} exited before listening: {st}");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on port {port} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_proc(program: &Path, args: &[String], port: u16, what: &str) -> Result<Proc> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", program.display()))?;
    wait_port(port, &mut child, what).await?;
    Ok(Proc { child, port })
}

/// (test, requests per second, p50 latency in ms).
type Figure = (String, f64, f64);

/// Figures per test from redis-benchmark --csv.
async fn redis_benchmark(
    port: u16,
    size: usize,
    pipeline: usize,
    requests: usize,
    clients: usize,
) -> Result<Vec<Figure>> {
    let out = tokio::process::Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "set,get",
            "--csv",
            "-r",
            "100000",
        ])
        .args([
            "-n",
            &requests.to_string(),
            "-c",
            &clients.to_string(),
            "-d",
            &size.to_string(),
            "-P",
            &pipeline.to_string(),
        ])
        .output()
        .await
        .context("run redis-benchmark (apt-get install redis-tools)")?;
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let cols: Vec<&str> = line.split(',').map(|c| c.trim_matches('"')).collect();
        if let [test, rps, _avg, _min, p50, ..] = cols.as_slice() {
            if let (Ok(rps), Ok(p50)) = (rps.parse(), p50.parse()) {
                rows.push((test.to_string(), rps, p50));
            }
        }
    }
    if rows.is_empty() {
        bail!("redis-benchmark printed no figures");
    }
    Ok(rows)
}

/// `shardd` next to this `cellos`, as `cargo build` puts them.
fn default_shardd() -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?.parent()?.join("shardd");
    p.exists().then_some(p)
}

/// `cellos bench shard`.
pub async fn shard(requests: usize, clients: usize, shardd: Option<PathBuf>) -> Result<()> {
    let Some(shardd) = shardd.or_else(default_shardd) else {
        bail!("no shardd next to cellos: build it (cargo build --release -p cellos-shard) or pass --shardd");
    };
    let tmp = tempfile::tempdir().context("temporary directory")?;
    let dir = |n: &str| -> Result<String> {
        let d = tmp.path().join(n);
        std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        Ok(d.display().to_string())
    };
    // (label, value size, pipeline depth, requests): the lines of issue 17's table,
    // and large values.
    let cases = [
        ("4 KiB", 4096usize, 1usize, requests),
        ("512 B -P 16", 512, 16, requests * 4),
        ("64 KiB", 65536, 1, (requests / 4).max(1)),
    ];
    let mut columns: Vec<(String, Vec<Figure>)> = Vec::new();
    let servers: [(&str, &str); 3] = [
        ("shardd (fsync, group commit)", "shardd"),
        ("redis (AOF, fsync always)", "redis-always"),
        ("redis (defaults, no fsync)", "redis-default"),
    ];
    for (label, kind) in servers {
        let mut rows = Vec::new();
        for (case, size, depth, n) in cases {
            let port = free_port()?;
            let p = match kind {
                "shardd" => {
                    let args = vec![
                        "--dir".into(),
                        dir(&format!("shardd-{size}-{depth}"))?,
                        "--listen".into(),
                        format!("127.0.0.1:{port}"),
                    ];
                    start_proc(&shardd, &args, port, "shardd").await?
                }
                _ => {
                    let mut args: Vec<String> = vec![
                        "--port".into(),
                        port.to_string(),
                        "--bind".into(),
                        "127.0.0.1".into(),
                        "--dir".into(),
                        dir(&format!("{kind}-{size}-{depth}"))?,
                        "--save".into(),
                        String::new(),
                        "--daemonize".into(),
                        "no".into(),
                    ];
                    if kind == "redis-always" {
                        args.extend(
                            ["--appendonly", "yes", "--appendfsync", "always"].map(String::from),
                        );
                    }
                    start_proc(Path::new("redis-server"), &args, port, "redis-server")
                        .await
                        .context("apt-get install redis-server")?
                }
            };
            for (test, rps, p50) in redis_benchmark(p.port, size, depth, n, clients).await? {
                rows.push((format!("{test} {case}"), rps, p50));
            }
            drop(p.child);
        }
        columns.push((label.to_string(), rows));
    }
    println!(
        "cellos bench shard: redis-benchmark, {clients} clients, random keys, {requests} requests at 4 KiB, {} at 512 B pipelined 16 deep, {} at 64 KiB, one machine ({}), requests/s (p50 ms); ratio = shardd / redis (AOF, fsync always)",
        requests * 4,
        (requests / 4).max(1),
        cpu_model()
    );
    print!("{:<20}", "test");
    for (label, _) in &columns {
        print!(" {label:>30}");
    }
    println!(" {:>6}", "ratio");
    let tests: Vec<String> = columns
        .first()
        .map(|(_, r)| r.iter().map(|(t, _, _)| t.clone()).collect())
        .unwrap_or_default();
    let rps = |col: usize, t: &str| {
        columns
            .get(col)
            .and_then(|(_, rows)| rows.iter().find(|(x, _, _)| x == t))
            .map(|(_, rps, _)| *rps)
    };
    for t in tests {
        print!("{t:<20}");
        for (_, rows) in &columns {
            match rows.iter().find(|(x, _, _)| *x == t) {
                Some((_, rps, p50)) => print!(" {:>30}", format!("{rps:.0} ({p50:.2})")),
                None => print!(" {:>30}", "-"),
            }
        }
        match (rps(0, &t), rps(1, &t)) {
            (Some(ours), Some(redis)) if redis > 0.0 => println!(" {:>5.2}x", ours / redis),
            _ => println!(" {:>6}", "-"),
        }
    }
    Ok(())
}
