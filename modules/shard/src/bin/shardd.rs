//! `shardd`: serve shard namespaces over RESP (see `cellos_shard::server`).
//!
//! Prints `shardd: listening on ADDR` on stdout once it accepts connections (tests
//! and scripts wait for that line), and stops on SIGTERM or SIGINT. The admin
//! password is read from a file, never from the command line, where every user of
//! the machine could read it in `ps`. On a node it runs as its own service with
//! `--strict`: no anonymous namespace, writes only where a contract's password and
//! quota are set, namespaces managed by cellosd over the admin connection.
//! A build with the `failpoints` feature (the crate's tests only) also reads
//! `CELLOS_SHARDD_FAILPOINT`, a test hook (see `cellos_shard::failpoint`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
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
    /// File holding the password needed (AUTH) to create, change, list or delete
    /// namespaces; one line, a trailing newline is ignored.
    #[arg(long)]
    admin_password_file: Option<PathBuf>,
    /// Node mode: no open `default` namespace; only namespaces with a password and
    /// a quota take writes; no namespace administration without the admin password.
    #[arg(long, alias = "no-default-namespace")]
    strict: bool,
    /// Largest value, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    max_value: usize,
    /// Size at which a data file is closed and the next one started, in bytes.
    #[arg(long, default_value_t = 256 << 20)]
    max_file: u64,
    /// Connections served at once (lowered to fit the open-file limit).
    #[arg(long, default_value_t = 1024)]
    max_clients: usize,
    /// Connections from one IPv4 address or IPv6 /64.
    #[arg(long, default_value_t = 128)]
    max_clients_per_source: usize,
    /// At the connection cap, a newcomer replaces the connection that has gone
    /// longest without a command, if that is at least this many seconds.
    #[arg(long, default_value_t = 2)]
    evict_after: u64,
    /// Bytes buffered across all connections (commands being received, replies
    /// being sent); past it the connection that asks for more is closed.
    #[arg(long, default_value_t = 256 << 20)]
    max_buffered: usize,
    /// Seconds a connection may stay without a command before it is closed.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Seconds allowed to send one command (and to take one reply).
    #[arg(long, default_value_t = 60)]
    frame_timeout: u64,
    /// Wait (quietly, checking five times a second) until --dir and --admin-password-file
    /// exist before starting: on a node, cellosd makes them once the disks are up.
    #[arg(long)]
    wait: bool,
}

/// Blocks until every path exists; says once what it waits for.
fn wait_for(paths: &[&Path]) {
    let mut said = false;
    while let Some(missing) = paths.iter().find(|p| !p.exists()) {
        if !said {
            println!(
                "shardd: waiting for {} (cellosd makes it once the disks are up)",
                missing.display()
            );
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// File descriptors kept for data files, the listener and the runtime.
const FD_HEADROOM: u64 = 64;

fn read_password(path: &Path) -> Result<String> {
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("read the admin password file {}", path.display()))?;
    let pw = raw.strip_suffix('\n').unwrap_or(&raw);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    if pw.is_empty() || pw.contains('\n') {
        bail!(
            "the admin password file {} must hold one non-empty line",
            path.display()
        );
    }
    Ok(pw.to_string())
}

/// Raises the soft open-file limit to the hard one and returns it.
fn raise_nofile() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass; raising the soft limit up to
        // the hard one is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Ok(lim.rlim_cur)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.wait {
        let mut paths = vec![args.dir.as_path()];
        paths.extend(args.admin_password_file.as_deref());
        wait_for(&paths);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = Config::new(args.dir.clone(), args.listen);
    config.admin_password = args
        .admin_password_file
        .as_deref()
        .map(read_password)
        .transpose()?;
    config.strict = args.strict;
    config.max_value = args.max_value;
    config.max_file = args.max_file;
    config.max_clients_per_source = args.max_clients_per_source;
    config.evict_after = Duration::from_secs(args.evict_after);
    config.max_buffered = args.max_buffered;
    config.idle_timeout = Duration::from_secs(args.idle_timeout);
    config.frame_timeout = Duration::from_secs(args.frame_timeout);
    let nofile = raise_nofile()?;
    let fit = usize::try_from(nofile.saturating_sub(FD_HEADROOM)).unwrap_or(usize::MAX);
    config.max_clients = args.max_clients.min(fit).max(1);
    if config.max_clients < args.max_clients {
        println!(
            "shardd: the open-file limit is {nofile}: serving at most {} clients instead of {}",
            config.max_clients, args.max_clients
        );
    }
    if config.strict && config.admin_password.is_none() {
        println!("shardd: strict mode without --admin-password-file: namespaces cannot be managed over RESP");
    }
    #[cfg(feature = "failpoints")]
    if let Some(step) = cellos_shard::failpoint::arm_from_env()? {
        println!("shardd: failpoint compaction:{step} armed (a test hook)");
    }
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    rt.block_on(async move {
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
