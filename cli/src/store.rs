//! `cellos store`: put, get, check and repair objects erasure-coded across shard
//! servers (`shardd`), as configured in a `store.toml` (see `cellos_store::config`).
//!
//! The library does the work; this file reads files, prints results and turns
//! health into an exit status: `check` fails when an object is unreadable, and
//! says so when it is readable but has lost redundancy.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cellos_store::config::StoreConfig;
use cellos_store::object::Store;
use clap::{Args, Subcommand};

#[derive(Args, Clone)]
pub struct StoreArgs {
    /// Store configuration: backends, k, m and the key.
    #[arg(long, default_value = "store.toml")]
    pub config: PathBuf,
}

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Store a file (or stdin) as an object, replacing any object of that name.
    Put {
        #[command(flatten)]
        args: StoreArgs,
        name: String,
        /// File to store; `-` reads stdin.
        file: PathBuf,
    },
    /// Read an object back.
    Get {
        #[command(flatten)]
        args: StoreArgs,
        name: String,
        /// Where to write it; `-` writes to stdout.
        #[arg(long, short, default_value = "-")]
        out: PathBuf,
    },
    /// Read every shard of an object and report what is intact.
    Check {
        #[command(flatten)]
        args: StoreArgs,
        name: String,
    },
    /// Rebuild lost shards onto their backend or onto a healthy replacement.
    Repair {
        #[command(flatten)]
        args: StoreArgs,
        name: String,
    },
    /// Write a new random key file (64 hex digits, mode 0600) for `key_file`.
    Keygen { path: PathBuf },
}

fn open(args: &StoreArgs) -> Result<Store<cellos_store::backend::RespBackend>> {
    let cfg = StoreConfig::load(&args.config)?;
    Ok(Store::connect(cfg)?)
}

pub async fn run(cmd: StoreCmd, json: bool) -> Result<()> {
    match cmd {
        StoreCmd::Put { args, name, file } => {
            let data = read_input(&file)?;
            let store = open(&args)?;
            let t = std::time::Instant::now();
            let r = store
                .put(&name, &data)
                .await
                .with_context(|| format!("put {name:?}"))?;
            let secs = t.elapsed().as_secs_f64();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"name": name, "size": r.size, "segments": r.segments,
                        "stored_bytes": r.stored_bytes, "placement": r.placement, "seconds": secs})
                );
            } else {
                println!(
                    "stored {name:?}: {} bytes in {} segments, {} bytes on {} backends, {secs:.2} s",
                    r.size,
                    r.segments,
                    r.stored_bytes,
                    r.placement.len()
                );
            }
        }
        StoreCmd::Get { args, name, out } => {
            let store = open(&args)?;
            let data = store
                .get(&name)
                .await
                .with_context(|| format!("get {name:?}"))?;
            write_output(&out, &data)?;
        }
        StoreCmd::Check { args, name } => {
            let store = open(&args)?;
            let h = store
                .check(&name)
                .await
                .with_context(|| format!("check {name:?}"))?;
            if json {
                let shards: Vec<_> = h
                    .shards
                    .iter()
                    .map(|s| {
                        serde_json::json!({"backend": s.backend, "reachable": s.reachable,
                        "ok": s.ok, "missing": s.missing, "corrupt": s.corrupt})
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"name": h.name, "size": h.size, "k": h.k, "m": h.m,
                        "segments": h.segments, "min_intact": h.min_intact,
                        "healthy": h.healthy(), "readable": h.readable(), "shards": shards})
                );
            } else {
                println!(
                    "object {:?}: {} bytes, {} segments, {}+{}",
                    h.name, h.size, h.segments, h.k, h.m
                );
                for (i, s) in h.shards.iter().enumerate() {
                    println!(
                        "  shard {i:>2}  {:<28} {:<11} ok {:>5}  missing {:>5}  corrupt {:>5}",
                        s.backend,
                        if s.reachable { "up" } else { "unreachable" },
                        s.ok,
                        s.missing,
                        s.corrupt
                    );
                }
                let state = if h.healthy() {
                    "healthy".to_string()
                } else if h.readable() {
                    format!(
                        "degraded: {} of {} shards can still be lost; run `cellos store repair`",
                        h.min_intact - h.k,
                        h.m
                    )
                } else {
                    "LOST: fewer than k shards of some segment are intact".to_string()
                };
                println!("  {state}");
            }
            if !h.readable() {
                bail!("object {name:?} cannot be read back");
            }
        }
        StoreCmd::Repair { args, name } => {
            let store = open(&args)?;
            let r = store
                .repair(&name)
                .await
                .with_context(|| format!("repair {name:?}"))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"rebuilt": r.rebuilt, "moved": r.moved, "unplaced": r.unplaced})
                );
            } else {
                println!("repaired {name:?}: {} shards rebuilt", r.rebuilt);
                for (i, from, to) in &r.moved {
                    println!("  shard {i} moved from {from} to {to}");
                }
            }
            if !r.unplaced.is_empty() {
                bail!(
                    "no healthy backend with a distinct failure domain for shard positions {:?}: add backends to the config",
                    r.unplaced
                );
            }
        }
        StoreCmd::Keygen { path } => {
            use std::os::unix::fs::OpenOptionsExt;
            let key = cellos_store::config::generate_key();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("create key file {}", path.display()))?;
            writeln!(f, "{}", hex::encode(key))
                .with_context(|| format!("write {}", path.display()))?;
            println!("wrote a new store key to {}", path.display());
        }
    }
    Ok(())
}

fn read_input(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut v = Vec::new();
        std::io::stdin().read_to_end(&mut v).context("read stdin")?;
        return Ok(v);
    }
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

fn write_output(path: &Path, data: &[u8]) -> Result<()> {
    if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(data).context("write stdout")?;
        return out.flush().context("write stdout");
    }
    std::fs::write(path, data).with_context(|| format!("write {}", path.display()))
}
