//! `cellos`: the command for farmers, users and developers.
//!
//! A thin binary: it parses arguments, builds the pieces from the libraries
//! (ledger server and client, image builder, QEMU runner) and prints results for
//! people, or as JSON with `--json`. Errors are printed with their whole chain of
//! causes.

mod args;
mod bench;
mod bench_container;
mod bench_network;
mod bench_shard;
mod cmd;
mod demo;
mod deploy;
mod ledger;
mod network;
mod output;
mod qemu;
mod signal;
mod store;
mod tx;
mod units;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(cmd::run(cli)) {
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}
