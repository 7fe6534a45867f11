//! cellosd: the node agent (DESIGN §2, step 3).
//!
//! Init starts it with the boot config in `CELLOS_*` variables. It brings up the
//! storage pools (the state directory is on the first SSD pool), loads the node's
//! identity from there (or makes it on the first boot), measures the machine and
//! registers it on the ledger, then keeps the record current for as long as it runs. It is thin on purpose: the logic lives in
//! the modules, this binary reads the config, builds them and prints what they say.
//!
//! Exit status: 2 when the boot config is unusable (init restarts it with backoff,
//! and the console says what to fix), 0 on SIGTERM/SIGINT. A ledger that cannot be
//! reached is never a reason to exit: the registrar retries and says so.

mod cgroup;
mod config;
mod containers;
mod dashboard;
mod host;
mod selftest;
mod sys;
mod vms;
mod workloads;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cellos_capacity::HostPaths;
use cellos_identity::{Identity, Origin};
use cellos_ledger::client::Client;
use cellos_ledger::EnrollToken;
use cellos_registrar::{Config, Registered, Registrar};
use cellos_storage::sys::System;
use cellos_storage::{BtrfsVolumes, DiskKind, StateDir, Storage};
use tokio::signal::unix::{signal, Signal, SignalKind};

use cellos_boot::{env as boot_env, run};
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
    let client = match &env.ca {
        None => Client::new(&env.ledger).map_err(|e| {
            format!(
                "{}: {:#} (cellos.ledger= on the kernel cmdline)",
                boot_env::LEDGER,
                anyhow::Error::new(e)
            )
        }),
        Some(der) => Client::with_ca(&env.ledger, pem(der).as_bytes()).map_err(|e| {
            format!(
                "{} with {}: {:#} (cellos.ledger= and cellos.ca= on the kernel cmdline)",
                boot_env::LEDGER,
                boot_env::CA,
                anyhow::Error::new(e)
            )
        }),
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cellosd: {e}");
            return ExitCode::from(2);
        }
    };
    if env.ca.is_some() {
        println!(
            "cellosd: trusting the CA from cellos.ca= for {}",
            env.ledger
        );
    }
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
    match sys::open_files_limit() {
        Ok(n) => println!("cellosd: up to {n} open files"),
        Err(e) => println!("cellosd: cannot read the open-file limit: {e}"),
    }
    let mut sigterm = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("handling SIGINT")?;

    let boot_device = env.boot_device.clone().or_else(|| {
        std::fs::read_to_string(run::BOOT_DEVICE_FILE)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    });
    let opts = cellos_storage::Options {
        foreign: env.disks,
        boot_device,
    };
    let storage = match &env.state_dir {
        Some(dir) => {
            println!(
                "cellos: state in {} (CELLOS_STATE_DIR); no disks are used",
                dir.display()
            );
            Storage {
                pools: Vec::new(),
                state: StateDir {
                    path: dir.clone(),
                    persistent: true,
                },
            }
        }
        None => cellos_storage::bring_up(
            &cellos_storage::HostPaths::default(),
            &System,
            &opts,
            &mut |e| println!("{e}"),
        )
        .context("bringing up the storage pools")?,
    };

    if let Some(name) = &env.selftest {
        let volumes = BtrfsVolumes::new(&storage.pools, System);
        let pool = storage
            .pools
            .iter()
            .find(|p| p.name.kind() == DiskKind::Ssd)
            .map(|p| p.mount.as_path());
        selftest::run(name, &volumes, pool);
    }

    // Containers' images, layers, roots and logs go on the first SSD pool; crun's
    // state and the bundles on /run (they describe processes, gone at reboot).
    let container_dirs = storage
        .pools
        .iter()
        .find(|p| p.name.kind() == DiskKind::Ssd)
        .map(|p| containers::ContainerDirs {
            pool: p.mount.join("containers"),
            // A quarter of the pool for cached images: the rest is sold as SRU.
            cache_limit: p.size / 4,
            run: env.run_dir.join("containers"),
        });
    // VMs' files (boot files, root disks, config drives, consoles) go there too; their
    // pid files and QMP sockets on /run.
    let vm_dirs = storage
        .pools
        .iter()
        .find(|p| p.name.kind() == DiskKind::Ssd)
        .map(|p| vms::VmDirs {
            pool: p.mount.join("vms"),
            run: env.run_dir.join("vms"),
        });

    // Shards go on the first HDD pool (sold as HRU), else the first SSD pool.
    let shard_dir = storage
        .pools
        .iter()
        .find(|p| p.name.kind() == DiskKind::Hdd)
        .or_else(|| storage.pools.first())
        .map_or_else(
            || storage.state.path.join("shards"),
            |p| p.mount.join("shards"),
        );
    let shards = std::sync::Arc::new(
        workloads::prepare_shards(&shard_dir, &storage.state.path, &env.run_dir)
            .context("preparing the shard server's directory")?,
    );
    println!(
        "cellos: shard server on port {}, data in {}",
        workloads::SHARD_PORT,
        shard_dir.display()
    );

    let identity_dir = storage.state.path.join("identity");
    let identity = tokio::select! {
        id = identity(&identity_dir) => id,
        () = stop(&mut sigterm, &mut sigint) => {
            println!("cellosd: stopping");
            return Ok(());
        }
    };
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
    config.persistent = storage.state.persistent;
    let key = identity.signing_key().clone();
    let pubkey = identity.public_key();
    let api = cellos_provision::api::ApiState::new(workloads::store(&storage.state.path)?, pubkey);
    workloads::serve_api(api.clone(), env.api_addr);
    shards.clone().watch_damage(api.clone());
    let board = dashboard::Dashboard::new(
        api.clone(),
        client.url(),
        env.farm,
        pubkey.to_string(),
        storage.pools.clone(),
    );
    board
        .clone()
        .serve(env.run_dir.join(cellos_dashboard::view::SOCKET_NAME));
    board.clone().watch_ledger(client.clone());
    let machine = Machine::new(HostPaths::default(), &storage);
    let notices = board.clone();
    let mut registrar = Registrar::new(client.clone(), machine, identity, config, move |n| {
        notices.notice(&n);
        println!("{n}")
    });

    let work = async {
        let reg = registrar.register().await;
        let (ms, since) = match (env.init_start_ms, sys::boottime_ms()) {
            (Some(init), Ok(now)) => (now.saturating_sub(init), "init"),
            _ => (started.elapsed().as_millis() as u64, "start"),
        };
        println!("{}", registered_line(&reg, ms, since));
        board.registered(reg.node);
        let persistent = storage.state.persistent;
        api.set_info(workloads::info(
            reg.node,
            reg.farm,
            pubkey,
            reg.capacity,
            persistent,
        ));
        if !persistent {
            println!("cellos: the state is in RAM (no SSD): this node runs no workloads");
            let never = registrar.maintain().await;
            match never {}
        }
        let Some(signer) = registrar.shared_signer() else {
            anyhow::bail!("the registrar registered without a signer");
        };
        let provision = workloads::run(workloads::Wiring {
            client,
            signer,
            key,
            node: reg.node,
            state_dir: storage.state.path.clone(),
            volumes: BtrfsVolumes::new(&storage.pools, System),
            shards,
            test_mode: env.test_mode,
            api: api.clone(),
            containers: container_dirs.clone(),
            container_volumes: Box::new(BtrfsVolumes::new(&storage.pools, System)),
            vms: vm_dirs.clone(),
            vm_volumes: Box::new(BtrfsVolumes::new(&storage.pools, System)),
            insecure_registries: env.insecure_registries.clone(),
        });
        tokio::select! {
            never = registrar.maintain() => match never {},
            failed = provision => failed,
        }
    };
    // `work` only ends when provisioning cannot run at all.
    tokio::select! {
        r = work => {
            let e = match r {
                Err(e) => e,
                Ok(never) => match never {},
            };
            println!("cellos: provisioning stopped: {e:#}");
            board.error(format!("cellos: provisioning stopped: {e:#}"));
            return Err(e);
        }
        () = stop(&mut sigterm, &mut sigint) => {}
    }
    println!("cellosd: stopping");
    Ok(())
}

/// A certificate as PEM from its base64 DER (how `cellos.ca=` carries it).
fn pem(base64_der: &str) -> String {
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in base64_der.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

async fn stop(sigterm: &mut Signal, sigint: &mut Signal) {
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
}

/// How long to wait before looking at a refused identity again.
const IDENTITY_RETRY: Duration = Duration::from_secs(30);

/// The node's key from the state directory. When the directory says the node had a
/// key that is gone or corrupt, it waits (and says so every 30 s) for an operator
/// rather than registering a second node.
async fn identity(dir: &Path) -> Identity {
    loop {
        match Identity::load_or_create(dir) {
            Ok((id, origin)) => {
                let how = match origin {
                    Origin::Loaded => "loaded from",
                    Origin::Created => "created in",
                };
                println!(
                    "cellos: node key {} {how} {}",
                    id.public_key(),
                    dir.display()
                );
                return id;
            }
            Err(e) => {
                println!(
                    "cellos: identity: {:#}; not registering, checking again in {}s",
                    anyhow::Error::new(e),
                    IDENTITY_RETRY.as_secs()
                );
                tokio::time::sleep(IDENTITY_RETRY).await;
            }
        }
    }
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
