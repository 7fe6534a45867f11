//! What the engine needs from the ledger, as a trait so tests use a fake.

use std::future::Future;
use std::time::Duration;

use cellos_identity::NodeSigner;
use cellos_ledger::client::{Client, ClientError, ContractFilter};
use cellos_ledger::*;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger unreachable: {0}")]
    Unreachable(String),
    #[error("ledger refused: {0}")]
    Refused(String),
}

impl From<ClientError> for LedgerError {
    fn from(e: ClientError) -> Self {
        if e.is_transient() {
            LedgerError::Unreachable(chain(&e))
        } else {
            LedgerError::Refused(chain(&e))
        }
    }
}

/// An error and its causes on one line (`what: why: ...`): errors keep their cause as
/// `source()` only, and the engine's console lines must not lose it.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

pub trait Ledger: Send + Sync {
    /// Ledger time (Unix seconds).
    fn now(&self) -> impl Future<Output = Result<u64, LedgerError>> + Send;
    /// Contracts on `node` that are not closed.
    fn open_contracts(
        &self,
        node: NodeId,
    ) -> impl Future<Output = Result<Vec<Contract>, LedgerError>> + Send;
    fn account(&self, key: &PublicKey)
        -> impl Future<Output = Result<Account, LedgerError>> + Send;
    fn get_blob(&self, h: &Hash) -> impl Future<Output = Result<Vec<u8>, LedgerError>> + Send;
    fn put_blob(&self, data: Vec<u8>) -> impl Future<Output = Result<Hash, LedgerError>> + Send;
    /// Signs `body` as the node and submits it.
    fn submit(&self, body: TxBody) -> impl Future<Output = Result<(), LedgerError>> + Send;
    /// Waits up to `wait` for events naming `node` from block `from`; returns the next
    /// height to ask from and whether anything happened.
    fn wait_events(
        &self,
        from: u64,
        node: NodeId,
        wait: Duration,
    ) -> impl Future<Output = Result<(u64, bool), LedgerError>> + Send;
}

/// The real ledger: the HTTP client and the node's signer.
pub struct LedgerClient {
    pub client: Client,
    /// The node's one signer, shared with the registrar.
    pub signer: NodeSigner,
}

impl Ledger for LedgerClient {
    async fn now(&self) -> Result<u64, LedgerError> {
        Ok(self.client.status().await?.time)
    }
    async fn open_contracts(&self, node: NodeId) -> Result<Vec<Contract>, LedgerError> {
        let f = ContractFilter {
            node: Some(node),
            open: Some(true),
            ..Default::default()
        };
        Ok(self.client.all_contracts(&f).await?)
    }
    async fn account(&self, key: &PublicKey) -> Result<Account, LedgerError> {
        Ok(self.client.account(key).await?)
    }
    async fn get_blob(&self, h: &Hash) -> Result<Vec<u8>, LedgerError> {
        Ok(self.client.get_blob(h).await?)
    }
    async fn put_blob(&self, data: Vec<u8>) -> Result<Hash, LedgerError> {
        let signer = self.signer.lock().await;
        Ok(self.client.put_blob(&signer, data).await?)
    }
    async fn submit(&self, body: TxBody) -> Result<(), LedgerError> {
        let mut s = self.signer.lock().await;
        let tx = s.sign(body);
        match self.client.submit(&tx).await {
            Ok(_) => Ok(()),
            Err(e) => {
                if e.to_string().contains("nonce") {
                    // Someone else signed for this key: start above what the ledger saw.
                    if let Ok(a) = self.client.account(&tx.tx.signer).await {
                        s.observe(a.nonce);
                    }
                }
                Err(e.into())
            }
        }
    }
    async fn wait_events(
        &self,
        from: u64,
        node: NodeId,
        wait: Duration,
    ) -> Result<(u64, bool), LedgerError> {
        let page = self.client.events(from, 100, Some(node), wait).await?;
        Ok((page.next, !page.events.is_empty()))
    }
}
