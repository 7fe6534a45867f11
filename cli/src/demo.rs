//! `cellos demo`: the whole story on one machine, each step printed.
//!
//! An embedded ledger serves on loopback; a farmer creates an account and a farm with
//! an enrollment key and issues the token an image carries.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use cellos_ledger::client::Client;
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::server::{Config, Server};
use cellos_ledger::*;

pub struct DemoOptions {
    pub listen: SocketAddr,
    pub data: Option<PathBuf>,
}

/// The farm the demo set up on the ledger.
pub struct DemoFarm {
    pub farm: FarmId,
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
        .find_map(|e| match e {
            Event::FarmCreated { farm, .. } => Some(*farm),
            _ => None,
        })
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
    Ok(DemoFarm { farm })
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
        data: data.clone(),
        listen: opts.listen,
        params: ChainParams::new("cellos-demo", true),
        blob_limit: 4 << 20,
    })
    .await
    .with_context(|| format!("cannot start the ledger on {}", opts.listen))?;
    let url = format!("http://{}", srv.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(srv.run(async {
        let _ = stopped.await;
    }));
    step(&format!(
        "ledger serving on {url} (data {})",
        data.display()
    ));
    let c = Client::new(&url)?;
    let demo = setup_farm(&c).await?;
    println!(
        "\nThe ledger stays up: try `cellos --url {url} farm show {}` or `cellos --url {url} ledger verify`.\nCtrl-C stops it.",
        demo.farm
    );
    crate::cmd::shutdown_signal().await;
    let _ = stop.send(());
    server.await??;
    Ok(())
}
