//! `cellos ledger serve` and `cellos ledger verify`: running a ledger, and replaying
//! a chain (the one stored in a data directory, or the one a ledger serves) to check
//! every block.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cellos_ledger::chain::replay;
use cellos_ledger::mailbox::Policy;
use cellos_ledger::server::{self, Server};
use cellos_ledger::store::{EtcdStore, MemStore, RedbStore, Store, StoreError};
use cellos_ledger::*;
use serde::Serialize;

use crate::args::{Global, LedgerCmd, LimitArgs};
use crate::output::show;
use crate::signal::shutdown_signal;
use crate::tx::client;

pub async fn run(g: &Global, c: LedgerCmd) -> Result<()> {
    match c {
        LedgerCmd::Serve {
            data,
            etcd,
            etcd_prefix,
            snapshot_every,
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
                clock: std::sync::Arc::new(server::SystemClock),
                snapshot_every,
            };
            if accept_rollback {
                accept_rollback_in(&data)?;
            }
            let (srv, chain_in) = if etcd.is_empty() {
                let srv = Server::bind(cfg).await;
                (srv, data.join("ledger.redb").display().to_string())
            } else {
                let store = EtcdStore::connect(&etcd, &etcd_prefix)
                    .context("cannot use the etcd cluster")?;
                let srv = Server::bind_with_store(cfg, Arc::new(store)).await;
                (
                    srv,
                    format!("etcd {} under {etcd_prefix:?}", etcd.join(",")),
                )
            };
            let srv = srv.context("cannot start the ledger")?;
            let url = srv.url()?;
            tracing::info!(
                "ledger {:?} serving on {url} (chain in {chain_in}, data {}, dev mode {})",
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
fn serve_limits(a: &LimitArgs) -> Result<cellos_http::Limits> {
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
