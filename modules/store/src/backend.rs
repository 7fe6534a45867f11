//! Where shards are stored: the [`Backend`] trait the object store codes
//! against, a namespace on a shard server spoken to over RESP ([`RespBackend`],
//! what `cellos store` uses), and shards kept in memory ([`MemBackend`]).
//!
//! A backend only stores opaque keys and values: it never sees plaintext, object
//! names or sizes. It tells "did not answer" (the store then tries other
//! backends and moves shards off it on repair) from "answered with an error".

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cellos_shard::client::{Client, ClientError};

use crate::config::BackendSpec;
use crate::object::PIPELINE;

/// A failure talking to one backend.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    pub message: String,
    /// The backend did not answer (vs. answered with an error).
    pub unreachable: bool,
}

/// Where shards are stored: a shard server namespace, or a fake in tests.
pub trait Backend: Send + Sync + 'static {
    fn set(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    fn get(&self, key: &[u8])
        -> impl Future<Output = Result<Option<Vec<u8>>, BackendError>> + Send;
    fn del(&self, key: &[u8]) -> impl Future<Output = Result<(), BackendError>> + Send;
    fn ping(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
}

/// A shared backend, so a caller can keep a handle on what it gave the store.
impl<B: Backend> Backend for Arc<B> {
    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        (**self).set(key, value).await
    }
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        (**self).get(key).await
    }
    async fn del(&self, key: &[u8]) -> Result<(), BackendError> {
        (**self).del(key).await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        (**self).ping().await
    }
}

/// A namespace on a shard server, over a small pool of RESP connections.
pub struct RespBackend {
    spec: BackendSpec,
    idle: Mutex<Vec<Client>>,
    timeout: Duration,
}

impl RespBackend {
    pub fn new(spec: BackendSpec) -> RespBackend {
        RespBackend {
            spec,
            idle: Mutex::new(Vec::new()),
            timeout: Duration::from_secs(10),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Client>> {
        // The pool is a plain Vec: a poisoned lock still holds valid clients.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn conn(&self) -> Result<Client, BackendError> {
        if let Some(c) = self.idle().pop() {
            return Ok(c);
        }
        let mut c = Client::connect(self.spec.address, self.timeout)
            .await
            .map_err(|e| self.err(e))?;
        c.select(&self.spec.namespace, self.spec.password.as_deref())
            .await
            .map_err(|e| self.err(e))?;
        Ok(c)
    }

    fn release(&self, c: Client) {
        let mut idle = self.idle();
        if idle.len() < 2 * PIPELINE {
            idle.push(c);
        }
    }

    fn err(&self, e: ClientError) -> BackendError {
        let unreachable = !matches!(
            e,
            ClientError::Server { .. } | ClientError::Unexpected { .. }
        );
        BackendError {
            message: format!(
                "{} namespace {}: {}",
                self.spec.address,
                self.spec.namespace,
                cellos_shard::error_chain(&e)
            ),
            unreachable,
        }
    }
}

impl Backend for RespBackend {
    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        let mut c = self.conn().await?;
        c.set(key, value).await.map_err(|e| self.err(e))?;
        self.release(c);
        Ok(())
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        let mut c = self.conn().await?;
        let v = c.get(key).await.map_err(|e| self.err(e))?;
        self.release(c);
        Ok(v)
    }

    async fn del(&self, key: &[u8]) -> Result<(), BackendError> {
        let mut c = self.conn().await?;
        c.del(key).await.map_err(|e| self.err(e))?;
        self.release(c);
        Ok(())
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let mut c = self.conn().await?;
        c.ping().await.map_err(|e| self.err(e))?;
        self.release(c);
        Ok(())
    }
}

/// Shards kept in memory: the coding pipeline's own cost without network or
/// disks (`cellos bench ec`), and a backend that tests and fuzz targets fill,
/// inspect and take down.
#[derive(Default)]
pub struct MemBackend {
    data: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    down: AtomicBool,
}

impl MemBackend {
    /// What it holds, to read or change directly.
    pub fn entries(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Vec<u8>>> {
        // A plain map: a poisoned lock still holds valid entries.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// While down, every call fails as a server that does not answer does.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    fn up(&self) -> Result<(), BackendError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(BackendError {
                message: "down".into(),
                unreachable: true,
            });
        }
        Ok(())
    }
}

impl Backend for MemBackend {
    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        self.up()?;
        self.entries().insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.up()?;
        Ok(self.entries().get(key).cloned())
    }
    async fn del(&self, key: &[u8]) -> Result<(), BackendError> {
        self.up()?;
        self.entries().remove(key);
        Ok(())
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.up()
    }
}
