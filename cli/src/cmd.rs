//! What each subcommand does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cellos_ledger::chain::{replay, Receipt};
use cellos_ledger::client::{Client, ContractFilter, NodeFilter};
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::mailbox::Policy;
use cellos_ledger::server::{self, Server};
use cellos_ledger::store::{MemStore, RedbStore, Store, StoreError};
use cellos_ledger::*;
use serde::Serialize;

use crate::{
    node as vm, output, AccountCmd, BenchCmd, Cli, Cmd, ContractCmd, DeploymentCmd, FarmCmd,
    Global, ImageCmd, KeyCmd, LedgerCmd, NodeCmd, QemuCmd,
};

pub async fn run(cli: Cli) -> Result<()> {
    let g = cli.global;
    match cli.cmd {
        Cmd::Ledger(c) => ledger(&g, c).await,
        Cmd::Key(c) => key(&g, c),
        Cmd::Account(c) => account(&g, c).await,
        Cmd::Farm(c) => farm(&g, c).await,
        Cmd::Node(c) => node(&g, c).await,
        Cmd::Contract(c) => contract(&g, c).await,
        Cmd::Deploy {
            file,
            node,
            deposit,
            timeout,
        } => {
            let c = client(&g)?;
            let mut s = signer(&g, &c).await?;
            let o = crate::deploy::deploy(
                &c,
                &mut s,
                &file,
                node,
                deposit,
                Duration::from_secs(timeout),
            )
            .await?;
            show(&g, &o, crate::deploy::text)
        }
        Cmd::Deployment(d) => deployment(&g, d).await,
        Cmd::Image(ImageCmd::Build {
            farm,
            ledger,
            enroll,
            extra,
            out,
            manifest,
            cache,
            bin_dir,
        }) => {
            let req = vm::ImageRequest {
                boot: cellos_image::BootParams {
                    farm,
                    ledger,
                    enroll,
                    extra,
                },
                out,
                manifest,
                cache,
                bin_dir: match bin_dir {
                    Some(d) => d,
                    None => vm::default_bin_dir()?,
                },
            };
            tokio::task::spawn_blocking(move || vm::build_image(&req)).await??;
            Ok(())
        }
        Cmd::Image(ImageCmd::Flash {
            device,
            image,
            force,
        }) => tokio::task::spawn_blocking(move || vm::flash(&image, &device, force)).await?,
        Cmd::Qemu(QemuCmd::Run {
            image,
            vm,
            work_dir,
        }) => {
            let req = vm::RunRequest {
                image,
                vm,
                work_dir,
            };
            run_with_ctrl_c(move |stop| {
                let mut machine = vm::boot(&req)?;
                vm::follow(&mut machine, stop)
            })
            .await
        }
        Cmd::Demo {
            listen,
            data,
            vm,
            once,
        } => {
            crate::demo::run(crate::demo::DemoOptions {
                listen,
                data,
                vm,
                once,
            })
            .await
        }
        Cmd::Bench(BenchCmd::Ledger {
            txs,
            nodes,
            concurrency,
        }) => crate::bench::ledger(txs, nodes, concurrency).await,
        Cmd::Bench(BenchCmd::Ec {
            seconds,
            size,
            pipeline,
        }) => crate::bench_shard::ec(seconds, size as usize, pipeline as usize).await,
        Cmd::Bench(BenchCmd::Shard {
            requests,
            clients,
            shardd,
        }) => crate::bench_shard::shard(requests, clients, shardd).await,
        Cmd::Store(c) => crate::store::run(c, g.json).await,
    }
}

/// Prints `value` as JSON with `--json`, else the text `human` makes of it.
fn show<T: Serialize>(g: &Global, value: &T, human: impl FnOnce(&T) -> String) -> Result<()> {
    if g.json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", human(value));
    }
    Ok(())
}

/// One line per item, or `none` when there is nothing.
fn rows<T>(items: &[T], none: &str, row: impl Fn(&T) -> String) -> String {
    if items.is_empty() {
        return none.to_string();
    }
    items.iter().map(row).collect::<Vec<_>>().join("\n")
}

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

fn client(g: &Global) -> Result<Client> {
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

async fn ledger(g: &Global, c: LedgerCmd) -> Result<()> {
    match c {
        LedgerCmd::Serve {
            data,
            listen,
            dev,
            chain_id,
            blob_limit,
            grace,
            accept_rollback,
            limits,
            mailbox,
            tls_cert,
            tls_key,
        } => {
            let mut params = ChainParams::new(chain_id, dev);
            params.grace_secs = grace;
            let cfg = server::Config {
                data: data.clone(),
                listen,
                params,
                blob_limit: usize::try_from(blob_limit).context("blob limit too large")?,
                limits: serve_limits(&limits)?,
                mailbox: Policy {
                    max_pending: mailbox.blob_quota,
                    max_pending_bytes: mailbox.blob_quota_bytes,
                    pending_ttl: mailbox.blob_pending_ttl,
                    retention: mailbox.blob_retention,
                    ..Policy::default()
                },
                tls: match (tls_cert, tls_key) {
                    (Some(cert), Some(key)) => Some(
                        cellos_http::Tls::from_pem_files(&cert, &key)
                            .context("cannot load the TLS certificate")?,
                    ),
                    _ => None,
                },
            };
            if accept_rollback {
                accept_rollback_in(&data)?;
            }
            let srv = Server::bind(cfg).await.context("cannot start the ledger")?;
            let url = srv.url()?;
            tracing::info!(
                "ledger {:?} serving on {url} (data {}, dev mode {})",
                srv.chain_id(),
                data.display(),
                if dev { "on: faucet enabled" } else { "off" }
            );
            srv.run(shutdown_signal()).await?;
            tracing::info!("ledger stopped");
            Ok(())
        }
        LedgerCmd::Verify { data } => match data {
            Some(dir) => verify_dir(g, &dir),
            None => verify_url(g).await,
        },
    }
}

/// The limits for a server in this process, after raising its fd limit to the hard
/// limit (so a flood of connections meets the cap, not EMFILE).
fn serve_limits(a: &crate::LimitArgs) -> Result<cellos_http::Limits> {
    let fds = cellos_http::raise_fd_limit().context("cannot raise the fd limit")?;
    let mut l = cellos_http::Limits::for_fd_limit(fds);
    if let Some(n) = a.max_connections {
        l.max_connections = n;
    }
    l.header_timeout = a.header_timeout;
    l.body_timeout = a.body_timeout;
    l.idle_timeout = a.idle_timeout;
    l.check(fds).context("bad connection limits")?;
    tracing::info!(
        "at most {} connections (fd limit {fds}); header {:?}, body {:?}, idle {:?}",
        l.max_connections,
        l.header_timeout,
        l.body_timeout,
        l.idle_timeout
    );
    Ok(l)
}

/// Runs blocking work `f` on its own thread; Ctrl-C or SIGTERM sets the flag it
/// gets, so it can stop cleanly (power a VM off) instead of dying mid-way.
pub async fn run_with_ctrl_c<F>(f: F) -> Result<()>
where
    F: FnOnce(&std::sync::atomic::AtomicBool) -> Result<()> + Send + 'static,
{
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let mut work = tokio::task::spawn_blocking(move || f(&flag));
    tokio::select! {
        r = &mut work => return r?,
        _ = shutdown_signal() => stop.store(true, std::sync::atomic::Ordering::Relaxed),
    }
    work.await?
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

#[derive(Serialize)]
struct VerifyReport {
    chain_id: String,
    blocks: u64,
    transactions: u64,
    head: Hash,
    state_digest: Hash,
}

fn print_verify(g: &Global, r: &chain::Replayed) -> Result<()> {
    let rep = VerifyReport {
        chain_id: r.genesis.params.chain_id.clone(),
        blocks: r.blocks,
        transactions: r.txs,
        head: r.head,
        state_digest: r.state.digest(),
    };
    show(g, &rep, |r| {
        format!(
            "chain {:?} verified: {} blocks, {} transactions; every hash, signature and transition checks out\n  head          {}\n  state digest  {}",
            r.chain_id, r.blocks, r.transactions, r.head, r.state_digest
        )
    })
}

fn progress(done: u64, total: u64) {
    if done.is_multiple_of(10_000) || done == total {
        eprintln!("verify: block {done}/{total}");
    }
}

/// The operator's decision to serve a store whose chain went back (ledger README,
/// "Rollback"): the head record is reset to the store's head.
fn accept_rollback_in(data: &Path) -> Result<()> {
    let path = data.join("ledger.redb");
    if !path.exists() {
        return Ok(());
    }
    let (_store, accepted) = RedbStore::open_accepting_rollback(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match accepted {
        Some(r) => tracing::warn!("--accept-rollback: {r}; serving the store's chain"),
        None => tracing::info!("--accept-rollback: the store's head is the one recorded"),
    }
    Ok(())
}

fn verify_dir(g: &Global, dir: &Path) -> Result<()> {
    let path = dir.join("ledger.redb");
    if !path.exists() {
        bail!("{} holds no ledger (no ledger.redb)", dir.display());
    }
    let store = RedbStore::open(&path).map_err(|e| match e {
        // The store opened fine, and it is the wrong chain: say only that.
        StoreError::RolledBack { .. } | StoreError::HeadMismatch { .. } => {
            anyhow::Error::new(e).context("the chain does not verify")
        }
        e => anyhow::Error::new(e).context(format!(
            "cannot open {} (is the ledger still running?)",
            path.display()
        )),
    })?;
    let r = replay(&store, true, &mut progress).context("the chain does not verify")?;
    print_verify(g, &r)
}

async fn verify_url(g: &Global) -> Result<()> {
    let c = client(g)?;
    let genesis = c.genesis().await?;
    let digest = c.digest().await?;
    let store = MemStore::default();
    store.init(&genesis)?;
    let mut next = 1;
    while next <= digest.height {
        const PAGE: usize = 500;
        let blocks = c.blocks(next, PAGE).await?;
        let page = c.events(next, PAGE, None, Duration::ZERO).await?;
        if blocks.is_empty() {
            bail!(
                "the ledger served no block at height {next} but reports height {}",
                digest.height
            );
        }
        for b in blocks
            .into_iter()
            .take_while(|b| b.header.height <= digest.height)
        {
            let h = b.header.height;
            let events: Vec<Event> = page
                .events
                .iter()
                .filter(|e| e.height == h)
                .map(|e| e.event.clone())
                .collect();
            let rec = block::BlockEvents {
                height: h,
                time: b.header.time,
                events,
            };
            store.append(&b, &rec)?;
            next = h + 1;
        }
    }
    let r = replay(&store, true, &mut progress).context("the chain does not verify")?;
    if r.state.digest() != digest.digest {
        bail!(
            "replayed state {} differs from the ledger's state {} at height {}",
            r.state.digest(),
            digest.digest,
            digest.height
        );
    }
    print_verify(g, &r)
}

fn key(g: &Global, c: KeyCmd) -> Result<()> {
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

async fn account(g: &Global, c: AccountCmd) -> Result<()> {
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

async fn farm(g: &Global, c: FarmCmd) -> Result<()> {
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

async fn node(g: &Global, c: NodeCmd) -> Result<()> {
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
        NodeCmd::Show { id } => show(g, &cl.node(id).await?, output::node),
    }
}

async fn contract(g: &Global, c: ContractCmd) -> Result<()> {
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

async fn deployment(g: &Global, d: DeploymentCmd) -> Result<()> {
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
