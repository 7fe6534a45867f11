//! cellosd: the node agent (DESIGN §2, step 3).
//!
//! Init starts it with the boot config in `CELLOS_*` variables. It makes the node's
//! identity, measures the machine and registers it on the ledger, then keeps the
//! record current for as long as it runs. It is thin on purpose: the logic lives in
//! the modules, this binary reads the config, builds them and prints what they say.
//!
//! Exit status: 2 when the boot config is unusable (init restarts it with backoff,
//! and the console says what to fix), 0 on SIGTERM/SIGINT. A ledger that cannot be
//! reached is never a reason to exit: the registrar retries and says so.

mod config;
mod host;
mod sys;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use cellos_capacity::HostPaths;
use cellos_identity::Identity;
use cellos_ledger::client::Client;
use cellos_ledger::EnrollToken;
use cellos_registrar::{Config, Registered, Registrar};
use tokio::signal::unix::{signal, SignalKind};

use config::BootEnv;
use host::Machine;

fn main() -> ExitCode {
    let started = Instant::now();
    let env = match BootEnv::from_env(|k| std::env::var(k).ok()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cellosd: {e}");
            return ExitCode::from(2);
        }
    };
    let client = match Client::new(&env.ledger) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cellosd: CELLOS_LEDGER: {e} (cellos.ledger= on the kernel cmdline)");
            return ExitCode::from(2);
        }
    };
    let run = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(env, client, started)));
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cellosd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(env: BootEnv, client: Client, started: Instant) -> Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("handling SIGINT")?;

    let identity = Identity::generate();
    println!(
        "cellosd: node key {}, farm {}, ledger {}",
        identity.public_key(),
        env.farm,
        client.url()
    );
    let mut config = Config::new(env.farm);
    config.enrollment = env.enroll.as_deref().and_then(|text| {
        EnrollToken::parse(text)
            .inspect_err(|e| {
                println!(
                    "cellos: ignoring the enrollment token from cellos.enroll=: {e}; registering without it, the farmer must approve the node"
                )
            })
            .ok()
    });
    if let Some(every) = env.uptime_every {
        config.uptime_every = every;
    }
    let machine = Machine::new(HostPaths::default());
    let mut registrar = Registrar::new(client, machine, identity, config, |n| println!("{n}"));

    let work = async {
        let reg = registrar.register().await;
        let (ms, since) = match (env.init_start_ms, sys::boottime_ms()) {
            (Some(init), Ok(now)) => (now.saturating_sub(init), "init"),
            _ => (started.elapsed().as_millis() as u64, "start"),
        };
        println!("{}", registered_line(&reg, ms, since));
        registrar.maintain().await
    };
    tokio::select! {
        never = work => match never {},
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    println!("cellosd: stopping");
    Ok(())
}

/// The line end-to-end tests wait for.
fn registered_line(reg: &Registered, ms: u64, since: &str) -> String {
    format!(
        "cellos: node {} registered on farm {} ({}) in {ms} ms since {since}",
        reg.node, reg.farm, reg.capacity
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellos_ledger::{Resources, GIB};

    #[test]
    fn the_registered_line() {
        let reg = Registered {
            node: 7,
            farm: 3,
            capacity: Resources {
                cru: 2,
                mru: 2 * GIB,
                sru: 20 * GIB,
                hru: 0,
            },
        };
        assert_eq!(
            registered_line(&reg, 812, "init"),
            "cellos: node 7 registered on farm 3 (cru=2 mru=2.0GiB sru=20.0GiB hru=0B) in 812 ms since init"
        );
    }
}
