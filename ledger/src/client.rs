//! The async HTTP client of the ledger, used by the node agent and the CLI.
//!
//! Every call maps the server's `{"error": ...}` body into [`ClientError::Api`] so
//! the caller can show the ledger's own words; transport failures stay distinct
//! ([`ClientError::Unreachable`]) so a node can retry those and not the others.
//!
//! `https://` ledgers are spoken to with rustls (no OpenSSL), trusting the Mozilla
//! roots built in (a node has no system store) plus any CA given to
//! [`Client::with_ca`]. A certificate that does not verify is a
//! [`ClientError::Tls`] that says why, never a silent fallback.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::blob;
use crate::block::{Block, Genesis};
use crate::chain::Receipt;
use crate::keys::Signer;
use crate::tx::SignedTx;
use crate::types::*;

pub use crate::wire::{Digest, EventPage, EventRecord, Status, TxOutcome};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ledger at {url} is unreachable")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("ledger answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("ledger answer to {url} does not decode: {reason}")]
    Decode { url: String, reason: String },
    #[error("bad ledger URL {0:?}: expected http://host:port or https://host:port")]
    BadUrl(String),
    #[error("TLS with the ledger at {url} failed: {reason}")]
    Tls { url: String, reason: String },
    #[error("the CA certificate for the ledger is not usable: {0}")]
    BadCa(String),
}

impl ClientError {
    /// True for failures worth retrying as they are (network, overload).
    pub fn is_transient(&self) -> bool {
        match self {
            // A node retries a ledger whose certificate is wrong: its operator may
            // fix the certificate; the node says why on every try.
            ClientError::Unreachable { .. } | ClientError::Tls { .. } => true,
            ClientError::Api { status, .. } => *status == 503,
            _ => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

/// Filters for [`Client::nodes`].
#[derive(Debug, Default, Clone, Serialize)]
pub struct NodeFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub farm: Option<FarmId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pubkey: Option<PublicKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<NodeId>,
}

/// Filters for [`Client::contracts`].
#[derive(Debug, Default, Clone, Serialize)]
pub struct ContractFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<PublicKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<ContractId>,
}

/// A transport failure, as [`ClientError::Tls`] when TLS is what failed.
fn transport(url: &str, source: reqwest::Error) -> ClientError {
    match tls_failure(&source) {
        Some(reason) => ClientError::Tls {
            url: url.to_string(),
            reason,
        },
        None => ClientError::Unreachable {
            url: url.to_string(),
            source,
        },
    }
}

/// The rustls error somewhere in `e`'s causes, said plainly.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::{CertificateError, Error as TlsError};
    let t = find_tls(e)?;
    let why = match t {
        TlsError::InvalidCertificate(CertificateError::UnknownIssuer) => {
            " (its certificate is not signed by a CA this client trusts)"
        }
        TlsError::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => " (its certificate is not issued for this host name)",
        TlsError::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => " (its certificate has expired)",
        _ => "",
    };
    Some(format!("{t}{why}"))
}

/// An `io::Error` hides the error it wraps from `source()` (it skips to that
/// error's own source), so each one is opened with `get_ref` too.
fn find_tls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    let wrapped = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| find_tls(inner));
    wrapped.or_else(|| e.source().and_then(find_tls))
}

impl Client {
    /// A client for the ledger at `url` (`http://` or `https://`).
    pub fn new(url: &str) -> Result<Self, ClientError> {
        Self::build(url, Vec::new())
    }

    /// A client that also trusts the CA certificates in `ca_pem` (PEM, one or more),
    /// for a ledger whose certificate a private CA signed.
    pub fn with_ca(url: &str, ca_pem: &[u8]) -> Result<Self, ClientError> {
        let roots = reqwest::Certificate::from_pem_bundle(ca_pem)
            .map_err(|e| ClientError::BadCa(e.to_string()))?;
        if roots.is_empty() {
            return Err(ClientError::BadCa("no PEM certificate in it".into()));
        }
        Self::build(url, roots)
    }

    fn build(url: &str, roots: Vec<reqwest::Certificate>) -> Result<Self, ClientError> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::BadUrl(url.to_string()));
        }
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(90))
            // Below the servers' idle timeout (60 s), so a pooled connection is
            // never one the server is closing.
            .pool_idle_timeout(Duration::from_secs(30));
        for r in roots {
            b = b.add_root_certificate(r);
        }
        let http = b.build().map_err(|source| transport(&base, source))?;
        Ok(Client { base, http })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    async fn finish<T: DeserializeOwned>(
        &self,
        url: &str,
        r: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, ClientError> {
        let bytes = self.finish_bytes(url, r).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }

    async fn finish_bytes(
        &self,
        url: &str,
        r: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<Vec<u8>, ClientError> {
        let resp = r.map_err(|e| transport(url, e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| transport(url, e))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        Ok(bytes.to_vec())
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let r = self.http.get(&url).send().await;
        self.finish(&url, r).await
    }

    async fn get_query<T: DeserializeOwned, Q: Serialize>(
        &self,
        path: &str,
        q: &Q,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let r = self.http.get(&url).query(q).send().await;
        self.finish(&url, r).await
    }

    /// Submits a transaction; returns once it is in a durable block.
    pub async fn submit(&self, tx: &SignedTx) -> Result<Receipt, ClientError> {
        let url = format!("{}/v1/tx", self.base);
        let r = self.http.post(&url).json(tx).send().await;
        self.finish(&url, r).await
    }

    /// Submits transactions in one request (`POST /v1/txs`, at most the server's
    /// limit, 1024); returns once they are in durable blocks, with each one's
    /// receipt or refusal, in order.
    pub async fn submit_batch(
        &self,
        txs: &[SignedTx],
    ) -> Result<Vec<Result<Receipt, ClientError>>, ClientError> {
        let url = format!("{}/v1/txs", self.base);
        let r = self.http.post(&url).json(txs).send().await;
        let outcomes: Vec<TxOutcome> = self.finish(&url, r).await?;
        if outcomes.len() != txs.len() {
            return Err(ClientError::Decode {
                url,
                reason: format!("{} answers to {} transactions", outcomes.len(), txs.len()),
            });
        }
        Ok(outcomes
            .into_iter()
            .map(|o| match o {
                TxOutcome::Accepted(r) => Ok(r),
                TxOutcome::Refused { status, error } => Err(ClientError::Api {
                    status,
                    message: error,
                }),
            })
            .collect())
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get("/v1/status").await
    }
    pub async fn genesis(&self) -> Result<Genesis, ClientError> {
        self.get("/v1/genesis").await
    }
    pub async fn digest(&self) -> Result<Digest, ClientError> {
        self.get("/v1/state/digest").await
    }
    pub async fn account(&self, k: &PublicKey) -> Result<Account, ClientError> {
        self.get(&format!("/v1/accounts/{k}")).await
    }
    pub async fn farms(&self) -> Result<Vec<Farm>, ClientError> {
        self.get("/v1/farms").await
    }
    pub async fn farm(&self, id: FarmId) -> Result<Farm, ClientError> {
        self.get(&format!("/v1/farms/{id}")).await
    }
    pub async fn nodes(&self, f: &NodeFilter) -> Result<Vec<Node>, ClientError> {
        self.get_query("/v1/nodes", f).await
    }
    /// Every node matching `f`, all pages of it.
    pub async fn all_nodes(&self, f: &NodeFilter) -> Result<Vec<Node>, ClientError> {
        let mut f = f.clone();
        let mut all = Vec::new();
        loop {
            let page = self.nodes(&f).await?;
            let Some(last) = page.last() else { break };
            f.after = Some(last.id);
            all.extend(page);
        }
        Ok(all)
    }
    pub async fn node(&self, id: NodeId) -> Result<Node, ClientError> {
        self.get(&format!("/v1/nodes/{id}")).await
    }
    pub async fn node_by_key(&self, k: &PublicKey) -> Result<Option<Node>, ClientError> {
        let f = NodeFilter {
            pubkey: Some(*k),
            ..Default::default()
        };
        Ok(self.nodes(&f).await?.into_iter().next())
    }
    pub async fn contracts(&self, f: &ContractFilter) -> Result<Vec<Contract>, ClientError> {
        self.get_query("/v1/contracts", f).await
    }
    /// Every contract matching `f`, all pages of it.
    pub async fn all_contracts(&self, f: &ContractFilter) -> Result<Vec<Contract>, ClientError> {
        let mut f = f.clone();
        let mut all = Vec::new();
        loop {
            let page = self.contracts(&f).await?;
            let Some(last) = page.last() else { break };
            f.after = Some(last.id);
            all.extend(page);
        }
        Ok(all)
    }
    pub async fn contract(&self, id: ContractId) -> Result<Contract, ClientError> {
        self.get(&format!("/v1/contracts/{id}")).await
    }
    pub async fn blocks(&self, from: u64, limit: usize) -> Result<Vec<Block>, ClientError> {
        self.get_query("/v1/blocks", &[("from", from), ("limit", limit as u64)])
            .await
    }

    /// Events of up to `blocks` blocks from block `from` on, for one node if given;
    /// waits up to `wait` for a new block when there is none yet.
    pub async fn events(
        &self,
        from: u64,
        blocks: usize,
        node: Option<NodeId>,
        wait: Duration,
    ) -> Result<EventPage, ClientError> {
        let mut q = vec![
            ("from", from.to_string()),
            ("limit", blocks.to_string()),
            ("wait", wait.as_secs().to_string()),
        ];
        if let Some(n) = node {
            q.push(("node", n.to_string()));
        }
        self.get_query("/v1/events", &q).await
    }

    /// Stores a blob in the mailbox, as an upload signed by `signer` (an account or
    /// a node the ledger knows); returns its hash. The upload is signed at the
    /// ledger's time, so this works with a wrong local clock.
    pub async fn put_blob(&self, signer: &Signer, data: Vec<u8>) -> Result<Hash, ClientError> {
        let h = Hash::of(&data);
        let now = self.status().await?.time;
        let auth = blob::sign(signer.key(), signer.chain_id(), &h, now);
        let url = format!("{}/v1/blobs/{h}", self.base);
        let mut req = self.http.put(&url).body(data);
        for (name, value) in auth.headers() {
            req = req.header(name, value);
        }
        let r = req.send().await;
        self.finish_bytes(&url, r).await?;
        Ok(h)
    }

    /// Fetches a blob and checks it hashes to `h`.
    pub async fn get_blob(&self, h: &Hash) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}/v1/blobs/{h}", self.base);
        let r = self.http.get(&url).send().await;
        let data = self.finish_bytes(&url, r).await?;
        if Hash::of(&data) != *h {
            return Err(ClientError::Decode {
                url,
                reason: "blob does not match its hash".into(),
            });
        }
        Ok(data)
    }
}
