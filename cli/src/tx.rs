//! The commands that work on the chain as its client: keys, accounts, farms, nodes,
//! contracts and deployments. What they change goes in as transactions signed with
//! --key; what they show is read from the ledger at --url.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cellos_ledger::chain::Receipt;
use cellos_ledger::client::{Client, ContractFilter, NodeFilter};
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::*;
use serde::Serialize;

use crate::args::{AccountCmd, ContractCmd, DeploymentCmd, FarmCmd, Global, KeyCmd, NodeCmd};
use crate::output::{self, rows, show};

fn key_path(g: &Global) -> Result<PathBuf> {
    if let Some(k) = &g.key {
        return Ok(k.clone());
    }
    let home = std::env::var_os("HOME").context("HOME is not set; pass --key")?;
    Ok(Path::new(&home).join(".config/cellos/key"))
}

fn load_key(g: &Global) -> Result<ed25519_dalek::SigningKey> {
    let p = key_path(g)?;
    keys::load(&p).with_context(|| {
        format!(
            "no usable key (create one with `cellos key new --key {}`)",
            p.display()
        )
    })
}

/// The client of the ledger at --url, trusting --ca besides the built-in roots.
pub fn client(g: &Global) -> Result<Client> {
    match &g.ca {
        None => Ok(Client::new(&g.url)?),
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
            Client::with_ca(&g.url, &pem).with_context(|| format!("--ca {}", path.display()))
        }
    }
}

/// A signer for --key on the chain served at --url.
async fn signer(g: &Global, c: &Client) -> Result<Signer> {
    let key = load_key(g)?;
    let st = c
        .status()
        .await
        .with_context(|| format!("cannot reach the ledger at {}", c.url()))?;
    Ok(Signer::new(key, st.chain_id))
}

async fn submit(g: &Global, body: TxBody) -> Result<Receipt> {
    let c = client(g)?;
    let mut s = signer(g, &c).await?;
    let name = body.name();
    let r = c
        .submit(&s.sign(body))
        .await
        .with_context(|| format!("{name} was refused"))?;
    Ok(r)
}

fn receipt_text(r: &Receipt) -> String {
    let mut s = format!("ok: transaction {} in block {}", r.hash, r.height);
    for e in &r.events {
        s.push_str(&format!(
            "\n  {}",
            serde_json::to_string(e).unwrap_or_default()
        ));
    }
    s
}

/// `cellos logs`.
pub async fn logs(
    g: &Global,
    contract: u64,
    workload: &str,
    follow: bool,
    api: Option<&str>,
) -> Result<()> {
    let c = client(g)?;
    let key = load_key(g)?;
    let run = crate::deploy::logs(&c, contract, workload, &key, api, follow);
    if follow {
        tokio::select! {
            r = run => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    } else {
        run.await
    }
}

/// `cellos deploy`: a contract for `file` on `node`, its sealed body, and the node's
/// results once it applied them.
pub async fn deploy(
    g: &Global,
    file: &Path,
    node: u32,
    deposit: Option<u64>,
    timeout: u64,
) -> Result<()> {
    let c = client(g)?;
    let mut s = signer(g, &c).await?;
    let o = crate::deploy::deploy(
        &c,
        &mut s,
        file,
        node,
        deposit,
        Duration::from_secs(timeout),
    )
    .await?;
    show(g, &o, crate::deploy::text)
}

pub fn key(g: &Global, c: KeyCmd) -> Result<()> {
    let path = key_path(g)?;
    let k = match c {
        KeyCmd::New => {
            let k = keys::generate();
            keys::save(&path, &k)?;
            eprintln!("created {}", path.display());
            k
        }
        KeyCmd::Show => load_key(g)?,
    };
    #[derive(Serialize)]
    struct KeyInfo {
        path: PathBuf,
        public_key: PublicKey,
        encryption_key: EncryptionKey,
    }
    let info = KeyInfo {
        path,
        public_key: keys::public_key(&k),
        encryption_key: keys::encryption_key(&k),
    };
    show(g, &info, |i| {
        format!(
            "public key      {}\nencryption key  {}\nfile            {}",
            i.public_key,
            i.encryption_key,
            i.path.display()
        )
    })
}

pub async fn account(g: &Global, c: AccountCmd) -> Result<()> {
    match c {
        AccountCmd::Create => {
            let c = client(g)?;
            let mut s = signer(g, &c).await?;
            let pk = s.public_key();
            // An account exists once money reached it (ledger README, "Accounts"):
            // on a dev ledger the faucet opens it with the existential deposit;
            // anywhere else someone must transfer at least that to the key first.
            match c.account(&pk).await {
                Ok(_) => {}
                Err(e) if e.status() == Some(404) => {
                    if !c.status().await?.dev_mode {
                        bail!(
                            "account {pk} does not exist yet: an account is opened by a transfer of at least {EXISTENTIAL_DEPOSIT} to its key"
                        );
                    }
                    c.submit(&s.sign(TxBody::Faucet {
                        amount: EXISTENTIAL_DEPOSIT,
                    }))
                    .await
                    .context("the faucet refused to open the account")?;
                }
                Err(e) => return Err(e).context("looking up the account"),
            }
            let encryption_key = Some(keys::encryption_key(s.key()));
            let r = c
                .submit(&s.sign(TxBody::CreateAccount { encryption_key }))
                .await
                .context("CreateAccount was refused")?;
            show(g, &r, receipt_text)
        }
        AccountCmd::Fund { amount } => {
            let r = submit(g, TxBody::Faucet { amount }).await?;
            show(g, &r, receipt_text)
        }
        AccountCmd::Show { pubkey } => {
            let pk = match pubkey {
                Some(p) => p.parse()?,
                None => keys::public_key(&load_key(g)?),
            };
            let a = client(g)?.account(&pk).await?;
            show(g, &a, output::account)
        }
    }
}

pub async fn farm(g: &Global, c: FarmCmd) -> Result<()> {
    match c {
        FarmCmd::Create {
            name,
            cu,
            su,
            nu,
            ipu,
            enrollment_key,
        } => {
            let ek = match enrollment_key {
                Some(p) => {
                    let (k, created) = keys::load_or_create(&p)?;
                    if created {
                        eprintln!("created enrollment key {}", p.display());
                    }
                    Some(keys::public_key(&k))
                }
                None => None,
            };
            let r = submit(
                g,
                TxBody::CreateFarm {
                    name,
                    prices: Prices { cu, su, nu, ipu },
                    enrollment_key: ek,
                },
            )
            .await?;
            show(g, &r, receipt_text)
        }
        FarmCmd::Show { id } => show(g, &client(g)?.farm(id).await?, output::farm),
        FarmCmd::List => show(g, &client(g)?.farms().await?, |fs| {
            fs.iter()
                .map(output::farm_row)
                .collect::<Vec<_>>()
                .join("\n")
        }),
        FarmCmd::ApproveNode { node } => show(
            g,
            &submit(g, TxBody::ApproveNode { node }).await?,
            receipt_text,
        ),
        FarmCmd::AddIp { farm, ip, gateway } => show(
            g,
            &submit(g, TxBody::AddFarmIp { farm, ip, gateway }).await?,
            receipt_text,
        ),
        FarmCmd::EnrollToken {
            farm,
            enrollment_key,
            valid_days,
        } => {
            let k = keys::load(&enrollment_key)?;
            let c = client(g)?;
            let st = c.status().await?;
            let f = c.farm(farm).await?;
            if f.enrollment_key != Some(keys::public_key(&k)) {
                bail!(
                    "{} is not the enrollment key of farm {farm}",
                    enrollment_key.display()
                );
            }
            let expires = st.time + valid_days * 24 * 3600;
            let t = EnrollToken::issue(&k, &st.chain_id, farm, expires);
            if g.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "token": t.to_text(), "expires": expires })
                    )?
                );
            } else {
                println!("{}", t.to_text());
            }
            Ok(())
        }
    }
}

pub async fn node(g: &Global, c: NodeCmd) -> Result<()> {
    let cl = client(g)?;
    match c {
        NodeCmd::List { farm, status } => {
            let status = status
                .map(|s| s.parse::<NodeStatus>())
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let f = NodeFilter {
                farm,
                status,
                ..Default::default()
            };
            let all = cl.all_nodes(&f).await?;
            show(g, &all, |ns| rows(ns, "no nodes", output::node_row))
        }
        NodeCmd::Show { id, api } => {
            let node = cl.node(id).await?;
            // Without a key there is nothing of the caller's to ask the node for.
            let (mut networks, mut networks_not_shown) = (None, None);
            if g.key.is_some() || key_path(g).is_ok_and(|p| p.exists()) {
                let listed = async {
                    crate::deploy::node_networks(&node, &load_key(g)?, api.as_deref()).await
                };
                match listed.await {
                    Ok(n) => networks = Some(n),
                    Err(e) => networks_not_shown = Some(format!("{e:#}")),
                }
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            show(
                g,
                &NodeShow {
                    node,
                    networks,
                    networks_not_shown,
                },
                |s| {
                    let mut t = output::node(&s.node);
                    if let Some(n) = &s.networks {
                        t.push_str(&output::node_networks(n, now));
                    }
                    if let Some(why) = &s.networks_not_shown {
                        t.push_str(&format!("\n  networks        not shown: {why}"));
                    }
                    t
                },
            )
        }
    }
}

/// `cellos node show`: the ledger's record, and the caller's networks on the node
/// from its API, or why they are not shown (the record is shown either way).
#[derive(Serialize)]
struct NodeShow {
    #[serde(flatten)]
    node: Node,
    #[serde(skip_serializing_if = "Option::is_none")]
    networks: Option<Vec<crate::deploy::NodeNetwork>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    networks_not_shown: Option<String>,
}

pub async fn contract(g: &Global, c: ContractCmd) -> Result<()> {
    match c {
        ContractCmd::Create {
            node,
            hash,
            cru,
            mru,
            sru,
            hru,
            ips,
            deposit,
        } => {
            let deployment_hash: Hash = hash.parse()?;
            let resources = Resources { cru, mru, sru, hru };
            let r = submit(
                g,
                TxBody::CreateContract {
                    node,
                    deployment_hash,
                    resources,
                    public_ips: ips,
                    deposit,
                    blob: None,
                },
            )
            .await?;
            show(g, &r, receipt_text)
        }
        ContractCmd::Show { id } => show(g, &client(g)?.contract(id).await?, output::contract),
        ContractCmd::List { node } => {
            let owner = if node.is_none() {
                Some(keys::public_key(&load_key(g)?))
            } else {
                None
            };
            let cl = client(g)?;
            let f = ContractFilter {
                owner,
                node,
                ..Default::default()
            };
            let all = cl.all_contracts(&f).await?;
            show(g, &all, |cs| rows(cs, "no contracts", output::contract_row))
        }
        ContractCmd::Cancel { id } => show(
            g,
            &submit(g, TxBody::CancelContract { contract: id }).await?,
            receipt_text,
        ),
        ContractCmd::TopUp { id, amount } => show(
            g,
            &submit(
                g,
                TxBody::TopUp {
                    contract: id,
                    amount,
                },
            )
            .await?,
            receipt_text,
        ),
    }
}

pub async fn deployment(g: &Global, d: DeploymentCmd) -> Result<()> {
    match d {
        DeploymentCmd::Hash { file } => {
            let dep = crate::deploy::load(&file, &load_key(g)?)?;
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({ "hash": dep.hash(), "resources": dep.resources() })
                );
            } else {
                println!("{}", dep.hash());
            }
            Ok(())
        }
        DeploymentCmd::Show { contract } => {
            let c = client(g)?;
            let k = c.contract(contract).await?;
            let result = crate::deploy::result(&c, &k, &load_key(g)?).await?;
            show(
                g,
                &crate::deploy::Outcome {
                    contract: k,
                    result,
                },
                crate::deploy::text,
            )
        }
        DeploymentCmd::Status { contract, api } => {
            let v = crate::deploy::node_view(&client(g)?, contract, &load_key(g)?, api.as_deref())
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        DeploymentCmd::Update {
            contract,
            file,
            timeout,
        } => {
            let c = client(g)?;
            let mut s = signer(g, &c).await?;
            let o =
                crate::deploy::update(&c, &mut s, contract, &file, Duration::from_secs(timeout))
                    .await?;
            show(g, &o, crate::deploy::text)
        }
        DeploymentCmd::Cancel { contract } => show(
            g,
            &submit(g, TxBody::CancelContract { contract }).await?,
            receipt_text,
        ),
    }
}
