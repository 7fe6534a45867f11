//! `cellos deploy` and `cellos deployment ...`: what a user does to run something on a
//! node (DESIGN §4).
//!
//! The deployment is signed with --key, its hash goes into a contract that reserves
//! what its workloads need, and the body goes sealed to the node's X25519 key into the
//! ledger's mailbox. The node pulls it, checks it and answers on the ledger; its
//! results come back sealed to our key.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cellos_ledger::client::Client;
use cellos_ledger::deployment::{self, Deployment, DeploymentResult};
use cellos_ledger::keys::Signer;
use cellos_ledger::*;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

/// Reads a deployment from TOML (`.toml`) or JSON; `owner` defaults to `key`'s.
pub fn load(path: &Path, key: &SigningKey) -> Result<Deployment> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut value: serde_json::Value = if path.extension().is_some_and(|e| e == "toml") {
        let t: toml::Value = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        serde_json::to_value(t)?
    } else {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?
    };
    let owner = keys_public(key);
    if let Some(obj) = value.as_object_mut() {
        obj.entry("owner")
            .or_insert_with(|| serde_json::Value::String(owner.to_hex()));
    }
    let mut d: Deployment = serde_json::from_value(value)
        .with_context(|| format!("{} is not a deployment", path.display()))?;
    if d.owner != owner {
        bail!(
            "{} names owner {}, but --key is {owner}",
            path.display(),
            d.owner
        );
    }
    d.validate()
        .with_context(|| format!("{} is not a valid deployment", path.display()))?;
    d.sign(key);
    Ok(d)
}

fn keys_public(k: &SigningKey) -> PublicKey {
    cellos_ledger::keys::public_key(k)
}

/// Seals `d` to `node`'s key and puts it in the mailbox.
async fn post(c: &Client, signer: &Signer, d: &Deployment, node: &Node) -> Result<Hash> {
    let plain = serde_json::to_vec(d)?;
    let sealed = deployment::seal(&plain, &node.encryption_key)?;
    c.put_blob(signer, sealed)
        .await
        .context("cannot put the sealed deployment in the mailbox")
}

#[derive(Serialize)]
pub struct Outcome {
    pub contract: Contract,
    pub result: Option<DeploymentResult>,
}

/// Waits until the contract is settled: `done` says when; prints progress on stderr.
async fn wait(
    c: &Client,
    id: ContractId,
    timeout: Duration,
    done: impl Fn(&Contract) -> bool,
) -> Result<Contract> {
    let t = Instant::now();
    let mut last_print = 0;
    loop {
        let k = c.contract(id).await?;
        if done(&k) || matches!(k.state, ContractState::Closed(_)) {
            return Ok(k);
        }
        let secs = t.elapsed().as_secs();
        if secs >= timeout.as_secs() {
            bail!(
                "contract {id} is still {} after {secs} s: is node {} up?",
                k.state,
                k.node
            );
        }
        if secs >= last_print + 5 || last_print == 0 {
            eprintln!(
                "waiting for node {} to provision contract {id} ({}, {secs} s)",
                k.node, k.state
            );
            last_print = secs.max(1);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The node's results, opened with our key.
pub async fn result(
    c: &Client,
    k: &Contract,
    key: &SigningKey,
) -> Result<Option<DeploymentResult>> {
    let Some(h) = k.result else { return Ok(None) };
    let sealed = c.get_blob(&h).await?;
    let plain = deployment::open(&sealed, key).context("the results are not sealed to --key")?;
    Ok(Some(
        serde_json::from_slice(&plain).context("the node's results do not decode")?,
    ))
}

pub async fn deploy(
    c: &Client,
    signer: &mut Signer,
    file: &Path,
    node: NodeId,
    deposit: Option<u64>,
    timeout: Duration,
) -> Result<Outcome> {
    let d = load(file, signer.key())?;
    let n = c.node(node).await?;
    let resources = d.resources();
    let farm = c.farm(n.farm).await?;
    let per_hour = farm
        .prices
        .per_hour(&resources, 0)
        .with_context(|| {
            format!(
                "{resources} at farm {}'s prices costs more per hour than an amount can hold",
                farm.id
            )
        })?
        .max(1);
    let deposit = match deposit {
        Some(d) => d,
        None => per_hour.checked_mul(24).with_context(|| {
            format!("a day at {per_hour} per hour overflows an amount; give --deposit")
        })?,
    };
    let blob = post(c, signer, &d, &n).await?;
    let hash = d.hash();
    eprintln!(
        "deployment {hash}: {} workloads, needs {resources}",
        d.workloads.len()
    );
    let r = c
        .submit(&signer.sign(TxBody::CreateContract {
            node,
            deployment_hash: hash,
            resources,
            public_ips: 0,
            deposit,
            blob: Some(blob),
        }))
        .await
        .context("the ledger refused the contract")?;
    let id = r
        .events
        .iter()
        .find_map(|e| e.contract())
        .context("CreateContract returned no contract id")?;
    eprintln!("contract {id} created on node {node} (deposit {deposit}, {per_hour} per hour)");
    let k = wait(c, id, timeout, |k| k.state == ContractState::Active).await?;
    if let ContractState::Closed(cause) = &k.state {
        bail!(
            "contract {id} was not provisioned: {}",
            ContractState::Closed(cause.clone())
        );
    }
    let result = result(c, &k, signer.key()).await?;
    Ok(Outcome {
        contract: k,
        result,
    })
}

pub async fn update(
    c: &Client,
    signer: &mut Signer,
    id: ContractId,
    file: &Path,
    timeout: Duration,
) -> Result<Outcome> {
    let d = load(file, signer.key())?;
    let k = c.contract(id).await?;
    let n = c.node(k.node).await?;
    let blob = post(c, signer, &d, &n).await?;
    let hash = d.hash();
    c.submit(&signer.sign(TxBody::UpdateContract {
        contract: id,
        deployment_hash: hash,
        resources: d.resources(),
        blob: Some(blob),
    }))
    .await
    .context("the ledger refused the update")?;
    eprintln!("contract {id} updated to deployment {hash}");
    let k = wait(c, id, timeout, |k| k.accepted_hash == Some(hash)).await?;
    let result = result(c, &k, signer.key()).await?;
    Ok(Outcome {
        contract: k,
        result,
    })
}

pub fn text(o: &Outcome) -> String {
    let mut s = crate::output::contract(&o.contract);
    match &o.result {
        None => s.push_str("\n  results         (none yet)"),
        Some(r) => {
            for w in &r.workloads {
                let data: Vec<String> = w.data.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push_str(&format!(
                    "\n  workload        {} ({}): {:?}{}{}",
                    w.name,
                    w.kind,
                    w.state,
                    if w.message.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", w.message)
                    },
                    if data.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", data.join(" "))
                    }
                ));
            }
        }
    }
    s
}

/// Port of the node API (DESIGN §9: public status, owner-signed deployment views).
pub const NODE_API_PORT: u16 = 8646;

/// The node's own, secret-free view of a deployment, from its API: a request signed
/// with `key` for the node's key. `api` overrides the address (the node's first
/// public IPv4 on the ledger, port 8646).
pub async fn node_view(
    c: &Client,
    contract: ContractId,
    key: &SigningKey,
    api: Option<&str>,
) -> Result<serde_json::Value> {
    let k = c.contract(contract).await?;
    let node = c.node(k.node).await?;
    node_api(&node, key, api, &format!("/v1/deployments/{contract}")).await
}

/// One of the caller's networks on a node, as `cellos node show` lists it: from the
/// node API's views of the caller's deployments (results and live status, never a
/// key but public ones).
#[derive(Serialize)]
pub struct NodeNetwork {
    pub contract: ContractId,
    pub name: String,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    /// `None` when the node could not read the network's device (not up yet).
    pub live: Option<NetworkLive>,
}

/// A network's WireGuard device now, as the node API reports it.
#[derive(Serialize, Deserialize)]
pub struct NetworkLive {
    pub peers: Vec<PeerLive>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Serialize, Deserialize)]
pub struct PeerLive {
    pub public_key: String,
    pub endpoint: Option<String>,
    /// Unix seconds; `None` before the first handshake.
    pub last_handshake: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The parts of a node API deployment view that name a network.
#[derive(Deserialize)]
struct ViewIn {
    contract: ContractId,
    workloads: Vec<WorkloadIn>,
}

#[derive(Deserialize)]
struct WorkloadIn {
    name: String,
    kind: String,
    result: Option<deployment::WorkloadResult>,
    live: Option<NetworkLive>,
}

/// The networks of `key`'s deployments on `node`, from its API (`api` as in
/// [`node_view`]).
pub async fn node_networks(
    node: &Node,
    key: &SigningKey,
    api: Option<&str>,
) -> Result<Vec<NodeNetwork>> {
    let v = node_api(node, key, api, "/v1/deployments").await?;
    let views: Vec<ViewIn> =
        serde_json::from_value(v).context("the node API's deployment views are not as expected")?;
    Ok(views
        .into_iter()
        .flat_map(|v| {
            let contract = v.contract;
            v.workloads
                .into_iter()
                .filter(|w| w.kind == "network")
                .map(move |w| {
                    let data = |k: &str| w.result.as_ref().and_then(|r| r.data.get(k).cloned());
                    NodeNetwork {
                        contract,
                        subnet: data("subnet"),
                        gateway: data("gateway"),
                        name: w.name,
                        live: w.live,
                    }
                })
        })
        .collect())
}

/// Prints container `workload`'s log from its node: what is kept, then, with
/// `follow`, what comes, asking again from where the last answer ended.
pub async fn logs(
    c: &Client,
    contract: ContractId,
    workload: &str,
    key: &SigningKey,
    api: Option<&str>,
    follow: bool,
) -> Result<()> {
    use std::io::Write as _;
    let k = c.contract(contract).await?;
    let node = c.node(k.node).await?;
    let mut from = 0u64;
    loop {
        let path = format!("/v1/deployments/{contract}/logs/{workload}?from={from}");
        let v = node_api(&node, key, api, &path).await?;
        let text = v["text"].as_str().unwrap_or_default();
        let next = v["next"]
            .as_u64()
            .context("the node's answer has no next offset")?;
        if v["from"].as_u64().is_some_and(|f| f > from) && from > 0 {
            eprintln!("(older output was dropped on the node)");
        }
        let mut out = std::io::stdout();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        // Something came: there may be more at once (an answer is capped).
        let more = next > from;
        from = next;
        if more {
            continue;
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A GET of `path` on `node`'s API, signed with `key` for the node's key; `api`
/// overrides the address (the node's first public IPv4 on the ledger, port 8646).
async fn node_api(
    node: &Node,
    key: &SigningKey,
    api: Option<&str>,
    path: &str,
) -> Result<serde_json::Value> {
    let base = match api {
        Some(a) => a.trim_end_matches('/').to_string(),
        None => {
            let ip = node
                .interfaces
                .iter()
                .flat_map(|i| &i.ips)
                .filter_map(|cidr| cidr.split('/').next())
                .find(|ip| !ip.starts_with("127."))
                .with_context(|| {
                    format!(
                        "node {} lists no address on the ledger: pass --api",
                        node.id
                    )
                })?;
            format!("http://{ip}:{NODE_API_PORT}")
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let auth = request::RequestAuth::sign(key, &node.pubkey, "GET", path, now);
    let mut req = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .timeout(Duration::from_secs(30));
    for (name, value) in auth.headers() {
        req = req.header(name, value);
    }
    let r = req
        .send()
        .await
        .with_context(|| format!("cannot reach the node API at {base}"))?;
    let status = r.status();
    let body: serde_json::Value = r
        .json()
        .await
        .with_context(|| format!("the node API at {base} did not answer JSON"))?;
    if !status.is_success() {
        bail!(
            "the node API at {base} answered {status}: {}",
            body["error"].as_str().unwrap_or_default()
        );
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_is_a_valid_deployment() {
        let key = cellos_ledger::keys::generate();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut kinds = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&dir).expect("examples/") {
            let path = entry.expect("entry").path();
            let d = load(&path, &key).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            kinds.extend(d.workloads.iter().map(|w| w.spec.kind()));
        }
        for kind in ["volume", "network", "container"] {
            assert!(kinds.contains(kind), "no example of a {kind}: {kinds:?}");
        }
    }
}
