//! `shardd`: serve shard namespaces over RESP (see `cellos_shard::server`).
//!
//! Prints `shardd: listening on ADDR` on stdout once it accepts connections (tests
//! and scripts wait for that line), and stops on SIGTERM or SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use cellos_shard::server::{Config, Server};
use clap::Parser;

#[derive(Parser)]
#[command(name = "shardd", version, about = "cellos storage shard server (RESP)")]
struct Args {
    /// Directory of the namespaces.
    #[arg(long, default_value = "./shard-data")]
    dir: PathBuf,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:9900")]
    listen: SocketAddr,
    /// Password needed (AUTH) to create, change or delete namespaces.
    #[arg(long, env = "SHARDD_ADMIN_PASSWORD")]
    admin_password: Option<String>,
    /// Largest value, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    max_value: usize,
    /// Size at which a data file is closed and the next one started, in bytes.
    #[arg(long, default_value_t = 256 << 20)]
    max_file: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    rt.block_on(async move {
        let mut config = Config::new(args.dir.clone(), args.listen);
        config.admin_password = args.admin_password;
        config.max_value = args.max_value;
        config.max_file = args.max_file;
        let server = Server::start(config)
            .await
            .with_context(|| format!("start shardd on {}", args.dir.display()))?;
        for t in server.recovered() {
            println!(
                "shardd: recovered {}: {} at offset {}, cut {} bytes",
                t.path.display(),
                t.reason,
                t.kept,
                t.cut
            );
        }
        println!("shardd: listening on {}", server.local_addr());
        std::io::stdout().flush().context("write to stdout")?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("install the SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r.context("wait for SIGINT")?,
        }
        server.shutdown().await;
        Ok(())
    })
}
