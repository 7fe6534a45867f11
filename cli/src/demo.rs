//! `cellos demo`: the whole story on one machine, each step printed.
//!
//! An embedded ledger serves on loopback; a farmer creates an account and a farm with
//! an enrollment key and issues the token an image carries; the image is built with
//! that token and the ledger's address as the guest sees it (10.0.2.2 under QEMU user
//! networking), booted in QEMU, and the node's registration is read back from the
//! ledger.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cellos_ledger::client::{Client, NodeFilter};
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::server::{Config, Server};
use cellos_ledger::*;
use cellos_qemu::Regex;

use crate::qemu;

pub struct DemoOptions {
    pub listen: SocketAddr,
    pub data: Option<PathBuf>,
    pub vm: qemu::VmArgs,
    pub once: bool,
}

/// The farm the demo set up on the ledger.
pub struct DemoFarm {
    pub farm: FarmId,
    pub token: EnrollToken,
}

fn step(msg: &str) {
    println!("==> {msg}");
}

/// Creates the farmer's account and a farm with an enrollment key.
pub async fn setup_farm(c: &Client) -> Result<DemoFarm> {
    let chain = c.status().await?.chain_id;
    let mut farmer = Signer::new(keys::generate(), chain.clone());
    step(&format!(
        "farmer {} creates an account",
        farmer.public_key()
    ));
    // An account is opened by money: the dev faucet brings the existential deposit.
    c.submit(&farmer.sign(TxBody::Faucet {
        amount: EXISTENTIAL_DEPOSIT,
    }))
    .await?;
    c.submit(&farmer.sign(TxBody::CreateAccount {
        encryption_key: Some(keys::encryption_key(farmer.key())),
    }))
    .await?;
    let enroll = keys::generate();
    let r = c
        .submit(&farmer.sign(TxBody::CreateFarm {
            name: format!("demo-farm-{}", &farmer.public_key().to_hex()[..8]),
            prices: Prices {
                cu: 10,
                su: 5,
                nu: 1,
                ipu: 2,
            },
            enrollment_key: Some(keys::public_key(&enroll)),
        }))
        .await?;
    let farm = r
        .events
        .iter()
        .find_map(Event::farm_created)
        .context("CreateFarm returned no farm id")?;
    step(&format!(
        "farm {farm} created in block {}, with an enrollment key",
        r.height
    ));
    let st = c.status().await?;
    let token = EnrollToken::issue(&enroll, &chain, farm, st.time + 30 * 24 * 3600);
    step(&format!(
        "enrollment token for images of farm {farm}: cellos.enroll={}",
        token.to_text()
    ));
    Ok(DemoFarm { farm, token })
}

pub async fn run(opts: DemoOptions) -> Result<()> {
    let tmp;
    let data = match opts.data {
        Some(d) => d,
        None => {
            tmp = tempfile::tempdir().context("cannot make a temporary data directory")?;
            tmp.path().to_path_buf()
        }
    };
    let srv = Server::bind(Config {
        data: data.join("ledger"),
        listen: opts.listen,
        params: ChainParams::new("cellos-demo", true),
        blob_limit: 4 << 20,
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot start the ledger on {}", opts.listen))?;
    let addr = srv.local_addr()?;
    let url = format!("http://{addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(srv.run(async {
        let _ = stopped.await;
    }));
    step(&format!(
        "ledger serving on {url} (data {})",
        data.display()
    ));
    step(&format!(
        "explorer: open {url}/ in a browser (farms, nodes, contracts, blocks; live)"
    ));
    let c = Client::new(&url)?;
    let demo = setup_farm(&c).await?;

    let guest_url = format!("http://10.0.2.2:{}", addr.port());
    step(&format!(
        "building the node image for farm {} with ledger {guest_url}",
        demo.farm
    ));
    let req = qemu::ImageRequest {
        boot: cellos_image::BootParams {
            farm: demo.farm,
            ledger: guest_url,
            enroll: Some(demo.token.to_text()),
            extra: String::new(),
        },
        out: data.join("image"),
        manifest: None,
        cache: None,
        bin_dir: qemu::default_bin_dir()?,
    };
    let image = req.out.clone();
    tokio::task::spawn_blocking(move || qemu::build_image(&req)).await??;

    step(&format!(
        "booting the node in QEMU ({})",
        if opts.vm.pxe {
            "PXE"
        } else {
            "direct kernel boot"
        }
    ));
    let run = qemu::RunRequest {
        image,
        vm: opts.vm,
        work_dir: Some(data.join("vm")),
        cmdline_extra: String::new(),
        segment: None,
    };
    let started = Instant::now();
    let (mut vm, line) = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut vm = qemu::boot(&run)?;
        let registered = Regex::new(r"cellos: node \d+ registered on farm \d+").context("regex")?;
        let line = vm
            .wait_for(&registered, Duration::from_secs(300))
            .context("the node did not register")?;
        Ok((vm, line))
    })
    .await??;
    step(&format!(
        "after {:.1} s the console says: {}",
        started.elapsed().as_secs_f64(),
        line.trim()
    ));
    let nodes = c
        .nodes(&NodeFilter {
            farm: Some(demo.farm),
            ..Default::default()
        })
        .await?;
    for n in &nodes {
        step("the ledger knows the node:");
        println!("{}", crate::output::node(n));
    }
    let Some(node_id) = nodes.first().map(|n| n.id) else {
        anyhow::bail!(
            "the console says the node registered but the ledger lists no node on farm {}",
            demo.farm
        );
    };

    // A user deploys a workload on it, as `cellos deploy` does.
    let mut user = Signer::new(keys::generate(), c.status().await?.chain_id);
    step(&format!(
        "user {} creates an account and deploys a 1 GiB volume on node {node_id}",
        user.public_key()
    ));
    c.submit(&user.sign(TxBody::Faucet { amount: 1_000_000 }))
        .await?;
    c.submit(&user.sign(TxBody::CreateAccount {
        encryption_key: Some(keys::encryption_key(user.key())),
    }))
    .await?;
    let file = data.join("volume.toml");
    std::fs::write(
        &file,
        "version = 1\n[[workloads]]\nname = \"data\"\nspec.volume.size = \"1G\"\n",
    )?;
    let outcome = crate::deploy::deploy(
        &c,
        &mut user,
        &file,
        node_id,
        None,
        Duration::from_secs(300),
    )
    .await;
    match outcome {
        Ok(o) => {
            step("the node serves the workload:");
            println!("{}", crate::deploy::text(&o));
        }
        Err(e) => {
            let _ = tokio::task::spawn_blocking(move || qemu::power_off(&mut vm)).await;
            return Err(e.context("the node did not provision the demo volume"));
        }
    }

    let result = if opts.once {
        tokio::task::spawn_blocking(move || qemu::power_off(&mut vm)).await?
    } else {
        println!(
            "\nThe node and the ledger stay up: watch them in the explorer at {url}/, or try `cellos --url {url} node list` or `cellos --url {url} ledger verify`.\nCtrl-C powers the node off and stops the ledger. Node console:"
        );
        crate::signal::run_with_ctrl_c(move |stop| qemu::follow(&mut vm, stop)).await
    };
    let _ = stop.send(());
    server.await??;
    result
}
