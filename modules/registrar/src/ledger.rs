//! The registrar's view of the ledger: the four calls it makes, behind a trait so the
//! retry and approval logic is tested against a fake, and the real implementation
//! over [`cellos_ledger::client::Client`].

use std::error::Error;
use std::future::Future;

use cellos_ledger::client::{Client, ClientError, Status};
use cellos_ledger::{Node, NodeId, PublicKey, Receipt, SignedTx};

/// Why a ledger call failed, sorted by what the registrar does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// No answer, or the ledger is overloaded: retried with a growing delay.
    #[error("unreachable: {cause}")]
    Unreachable { cause: String },
    /// The ledger said no (4xx): retried at the slow rate, in case a farmer or an
    /// operator fixes what it objects to.
    #[error("ledger answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// The answer made no sense (does not decode): retried at the slow rate.
    #[error("bad answer: {reason}")]
    BadAnswer { reason: String },
}

/// What the registrar asks of the ledger.
pub trait Ledger: Send + Sync {
    /// Where the ledger is, for console lines.
    fn url(&self) -> &str;
    fn status(&self) -> impl Future<Output = Result<Status, LedgerError>> + Send;
    fn node(&self, id: NodeId) -> impl Future<Output = Result<Node, LedgerError>> + Send;
    fn node_by_key(
        &self,
        key: &PublicKey,
    ) -> impl Future<Output = Result<Option<Node>, LedgerError>> + Send;
    /// The highest nonce the ledger recorded for `key` (0 when it has no account).
    fn nonce(&self, key: &PublicKey) -> impl Future<Output = Result<u64, LedgerError>> + Send;
    /// Submits a transaction; returns once it is in a durable block.
    fn submit(&self, tx: &SignedTx) -> impl Future<Output = Result<Receipt, LedgerError>> + Send;
}

impl Ledger for Client {
    fn url(&self) -> &str {
        Client::url(self)
    }
    async fn status(&self) -> Result<Status, LedgerError> {
        Ok(Client::status(self).await?)
    }
    async fn node(&self, id: NodeId) -> Result<Node, LedgerError> {
        Ok(Client::node(self, id).await?)
    }
    async fn node_by_key(&self, key: &PublicKey) -> Result<Option<Node>, LedgerError> {
        Ok(Client::node_by_key(self, key).await?)
    }
    async fn nonce(&self, key: &PublicKey) -> Result<u64, LedgerError> {
        match Client::account(self, key).await {
            Ok(a) => Ok(a.nonce),
            Err(e) if e.status() == Some(404) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
    async fn submit(&self, tx: &SignedTx) -> Result<Receipt, LedgerError> {
        Ok(Client::submit(self, tx).await?)
    }
}

impl From<ClientError> for LedgerError {
    fn from(e: ClientError) -> Self {
        match e {
            // The URL is in every console line already; the innermost cause
            // ("Connection refused (os error 111)") is the useful part.
            ClientError::Unreachable { source, .. } => LedgerError::Unreachable {
                cause: root_cause(&source),
            },
            e if e.is_transient() => LedgerError::Unreachable {
                cause: e.to_string(),
            },
            ClientError::Api { status, message } => LedgerError::Refused { status, message },
            other => LedgerError::BadAnswer {
                reason: other.to_string(),
            },
        }
    }
}

fn root_cause(e: &(dyn Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_sort_into_retry_classes() {
        let e = LedgerError::from(ClientError::Api {
            status: 503,
            message: "queue full".into(),
        });
        assert!(matches!(e, LedgerError::Unreachable { .. }), "{e:?}");
        let e = LedgerError::from(ClientError::Api {
            status: 422,
            message: "farm 9 does not exist".into(),
        });
        assert_eq!(e.to_string(), "ledger answered 422: farm 9 does not exist");
        let e = LedgerError::from(ClientError::Decode {
            url: "http://x/v1/status".into(),
            reason: "eof".into(),
        });
        assert!(matches!(e, LedgerError::BadAnswer { .. }), "{e:?}");
    }
}
