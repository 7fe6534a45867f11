//! Text for people. JSON output is serde's; this is the other half of `--json`.

use anyhow::Result;
use cellos_ledger::deployment::Size;
use cellos_ledger::{Account, Contract, Farm, Node};
use serde::Serialize;

use crate::args::Global;

pub fn account(a: &Account) -> String {
    let enc = a.encryption_key.map_or("-".to_string(), |k| k.to_hex());
    format!(
        "account {}\n  balance         {}\n  nonce           {}\n  encryption key  {}",
        a.pubkey, a.balance, a.nonce, enc
    )
}

pub fn farm(f: &Farm) -> String {
    let mut s = format!(
        "farm {} {:?}\n  owner           {}\n  prices per hour cu={} su={} ipu={} (nu={} per GiB)\n  enrollment key  {}\n  public IPs      {} ({} free)",
        f.id,
        f.name,
        f.owner,
        f.prices.cu,
        f.prices.su,
        f.prices.ipu,
        f.prices.nu,
        f.enrollment_key.map_or("-".to_string(), |k| k.to_hex()),
        f.public_ips.len(),
        f.free_ips()
    );
    for ip in &f.public_ips {
        let lease = ip
            .leased_by
            .map_or("free".to_string(), |c| format!("contract {c}"));
        s.push_str(&format!("\n    {} via {}  {}", ip.ip, ip.gateway, lease));
    }
    s
}

pub fn farm_row(f: &Farm) -> String {
    format!(
        "{:>5}  {:<24} {:>4} IPs  owner {}",
        f.id,
        f.name,
        f.public_ips.len(),
        f.owner
    )
}

pub fn node(n: &Node) -> String {
    let mut s = format!(
        "node {} on farm {} ({}, {}{})\n  key             {}\n  capacity        {}\n  reserved        {}\n  last uptime     {} (up {} s)",
        n.id,
        n.farm,
        n.status,
        if n.approved { "approved" } else { "waiting for approval" },
        if n.persistent { "" } else { ", no persistent state: takes no contracts" },
        n.pubkey,
        n.capacity,
        n.reserved,
        n.last_uptime,
        n.uptime_secs
    );
    for i in &n.interfaces {
        s.push_str(&format!(
            "\n  interface       {} {} {}",
            i.name,
            i.mac,
            i.ips.join(" ")
        ));
    }
    s
}

pub fn node_row(n: &Node) -> String {
    format!(
        "{:>6}  farm {:<5} {:<14} {:<8} cru={:<3} mru={:<9} sru={:<9} hru={}",
        n.id,
        n.farm,
        n.status.to_string(),
        if n.approved { "approved" } else { "pending" },
        n.capacity.cru,
        Size(n.capacity.mru),
        Size(n.capacity.sru),
        Size(n.capacity.hru)
    )
}

pub fn contract(c: &Contract) -> String {
    format!(
        "contract {} on node {} (farm {}): {}\n  owner           {}\n  deployment      {}\n  resources       {}\n  public IPs      {}\n  price           {} per hour\n  escrow          {} (paid {}, billed until {})",
        c.id,
        c.node,
        c.farm,
        c.state,
        c.owner,
        c.deployment_hash,
        c.resources,
        if c.public_ips.is_empty() { "-".to_string() } else { c.public_ips.join(", ") },
        c.price_per_hour,
        c.escrow,
        c.paid,
        c.billed_until
    )
}

pub fn contract_row(c: &Contract) -> String {
    format!(
        "{:>6}  node {:<6} {:<28} escrow {:<10} {}",
        c.id,
        c.node,
        c.state.to_string(),
        c.escrow,
        c.resources
    )
}

/// Prints `value` as JSON with `--json`, else the text `human` makes of it.
pub fn show<T: Serialize>(g: &Global, value: &T, human: impl FnOnce(&T) -> String) -> Result<()> {
    if g.json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", human(value));
    }
    Ok(())
}

/// One line per item, or `none` when there is nothing.
pub fn rows<T>(items: &[T], none: &str, row: impl Fn(&T) -> String) -> String {
    if items.is_empty() {
        return none.to_string();
    }
    items.iter().map(row).collect::<Vec<_>>().join("\n")
}
