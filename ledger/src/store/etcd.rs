//! The replicated store: the block log in an etcd cluster (Raft-replicated,
//! linearizable), for operators who outgrow one ledger machine.
//!
//! Several ledger servers share one log. Each keeps its own state machine and
//! follows the log ([`Store::watch`] wakes its committer whenever the head moves);
//! each accepts transactions and commits blocks. What keeps them from forking is
//! etcd, not the servers: a block is appended with one etcd transaction that
//! requires the head record to still name the block it builds on and the block's key
//! to be absent, and writes the block and the new head together. Two servers that
//! build block `n` at once both send such a transaction; etcd applies exactly one,
//! and the other gets [`StoreError::Conflict`] (its server applies the winner's
//! block and retries its own transactions in a later block).
//!
//! Client: etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/watch`, keys
//! and values in base64) over the reqwest the workspace already uses, rather than
//! the `etcd-client` crate: that one brings tonic, prost, a second HTTP/2 stack and
//! a `protoc` step at build time for four calls. The watch is a streamed HTTP
//! response of JSON lines; it only wakes the follower, which then reads the log by
//! range from the height it has. So a watch that drops (a member killed) loses
//! nothing: the follower is woken when it reconnects, and the server also reads the
//! log once a second.
//!
//! Layout under the prefix: `genesis`, `head` (height as 8 big-endian bytes, then the
//! block hash), `block/<height, 20 digits>` (the block and its events, postcard), and
//! `blob/<hex>`. etcd 3.4 refuses requests above 1.5 MiB by default: a record is
//! refused above [`MAX_RECORD`] before it is sent, and the server keeps the
//! transactions of one block under [`MAX_BLOCK_TX_BYTES`] (blobs never go into
//! blocks: transactions carry only their hashes; the bodies are in each server's
//! mailbox).
//!
//! The store's calls are blocking (the [`Store`] trait is); they run on a small
//! runtime of the store's own, so they may be called from any thread.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Store, StoreError, Wake};
use crate::block::{Block, BlockEvents, Genesis};
use crate::types::Hash;

/// Largest record (a block with its events) this store writes: below etcd 3.4's
/// default request limit of 1.5 MiB, with room for the keys and the head record.
pub const MAX_RECORD: usize = 1400 * 1024;
/// Largest total size of one block's transactions (as their JSON bodies, which are
/// larger than their binary encoding), so that a block and its events stay under
/// [`MAX_RECORD`].
pub const MAX_BLOCK_TX_BYTES: usize = 768 * 1024;

/// One request's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call keeps trying other members (an election takes about a second).
const CALL_DEADLINE: Duration = Duration::from_secs(15);

/// The block log in etcd (see the module docs).
pub struct EtcdStore {
    inner: Arc<Inner>,
    /// Only `None` while dropping.
    rt: Option<tokio::runtime::Runtime>,
}

struct Inner {
    http: reqwest::Client,
    /// Client URLs of the members, e.g. `http://10.0.0.1:2379`.
    endpoints: Vec<String>,
    /// The member tried first; moves on when one fails.
    preferred: AtomicUsize,
    prefix: String,
}

/// Why one call to etcd failed.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("etcd member {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("etcd member {url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("etcd answer from {url} does not decode")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the etcd store's runtime is gone")]
    Gone,
}

fn io(e: CallError) -> StoreError {
    StoreError::Io(Box::new(e))
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct KeyValue {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct TxnResponse {
    /// Left out of the answer when false.
    #[serde(default)]
    succeeded: bool,
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

fn unb64(what: &'static str, s: &str) -> Result<Vec<u8>, StoreError> {
    B64.decode(s).map_err(|e| StoreError::Corrupt {
        what,
        key: s.to_string(),
        reason: format!("not base64: {e}"),
    })
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    key: &str,
    b: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|e| StoreError::Corrupt {
        what,
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// The head record: the height, then the hash of the block at that height.
fn head_value(height: u64, hash: &Hash) -> Vec<u8> {
    let mut v = height.to_be_bytes().to_vec();
    v.extend_from_slice(&hash.0);
    v
}

impl EtcdStore {
    /// A store on the etcd cluster whose members answer at `endpoints`, keeping its
    /// keys under `prefix`. Nothing is sent until the first call.
    pub fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdStore, StoreError> {
        let open = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: format!("etcd {}", endpoints.join(",")),
            source,
        };
        if endpoints.is_empty() {
            return Err(open("no etcd endpoint given".into()));
        }
        let mut urls = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let u = reqwest::Url::parse(e).map_err(|err| open(format!("{e:?}: {err}").into()))?;
            if u.scheme() != "http" && u.scheme() != "https" {
                return Err(open(
                    format!("{e:?}: expected http://host:port or https://host:port").into(),
                ));
            }
            urls.push(e.trim_end_matches('/').to_string());
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| open(Box::new(e)))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ledger-etcd")
            .enable_all()
            .build()
            .map_err(|e| open(Box::new(e)))?;
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                http,
                endpoints: urls,
                preferred: AtomicUsize::new(0),
                prefix: prefix.to_string(),
            }),
            rt: Some(rt),
        })
    }

    /// Runs `f` on the store's runtime and waits for it (from any thread, async or
    /// not: the caller's thread only blocks on a channel).
    fn run<T, F>(&self, f: impl FnOnce(Arc<Inner>) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let rt = self.rt.as_ref().ok_or_else(|| io(CallError::Gone))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = f(self.inner.clone());
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| io(CallError::Gone))?
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // A runtime dropped on an async thread panics; this one may be.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Inner {
    fn key(&self, name: &str) -> Vec<u8> {
        format!("{}{name}", self.prefix).into_bytes()
    }

    fn block_key(&self, height: u64) -> Vec<u8> {
        self.key(&format!("block/{height:020}"))
    }

    fn endpoint(&self) -> (usize, &str) {
        let i = self.preferred.load(Ordering::Relaxed) % self.endpoints.len();
        (i, &self.endpoints[i])
    }

    /// Moves on from member `i` (unless another call did already).
    fn skip(&self, i: usize) {
        let _ = self.preferred.compare_exchange(
            i,
            (i + 1) % self.endpoints.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// POSTs `body` to `path` on a member, trying the others while members are
    /// unreachable or unavailable (an election, a member without quorum), until
    /// [`CALL_DEADLINE`]. A request etcd refuses as malformed is not retried.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, CallError> {
        let deadline = Instant::now() + CALL_DEADLINE;
        loop {
            let (i, base) = self.endpoint();
            let url = format!("{base}{path}");
            let err = match self
                .http
                .post(&url)
                .timeout(REQUEST_TIMEOUT)
                .json(body)
                .send()
                .await
            {
                Err(source) => CallError::Unreachable { url, source },
                Ok(r) if r.status().is_success() => {
                    return r
                        .json()
                        .await
                        .map_err(|source| CallError::Decode { url, source })
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    let e = CallError::Refused { url, status, body };
                    if status < 500 {
                        return Err(e);
                    }
                    e
                }
            };
            if Instant::now() >= deadline {
                return Err(err);
            }
            tracing::warn!("{}; trying another member", crate::server::causes(&err));
            self.skip(i);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let r: RangeResponse = self
            .call("/v3/kv/range", &json!({ "key": b64(key) }))
            .await
            .map_err(io)?;
        match r.kvs.first() {
            None => Ok(None),
            Some(kv) => Ok(Some(unb64("value", &kv.value)?)),
        }
    }

    /// Up to `limit` records of blocks from `from` on.
    async fn records(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(Block, BlockEvents)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Every key under `block/` sorts before `block0`.
        let end = self.key("block0");
        let r: RangeResponse = self
            .call(
                "/v3/kv/range",
                &json!({
                    "key": b64(&self.block_key(from)),
                    "range_end": b64(&end),
                    "limit": limit.to_string(),
                }),
            )
            .await
            .map_err(io)?;
        r.kvs
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&unb64("key", &kv.key)?).into_owned();
                decode("block", &key, &unb64("value", &kv.value)?)
            })
            .collect()
    }

    async fn txn(&self, compare: Value, success: Value) -> Result<bool, StoreError> {
        let r: TxnResponse = self
            .call(
                "/v3/kv/txn",
                &json!({ "compare": compare, "success": success }),
            )
            .await
            .map_err(io)?;
        Ok(r.succeeded)
    }

    async fn append(&self, block: Block, events: BlockEvents) -> Result<(), StoreError> {
        let height = block.header.height;
        let record =
            postcard::to_stdvec(&(&block, &events)).map_err(|e| StoreError::Io(e.into()))?;
        if record.len() > MAX_RECORD {
            return Err(StoreError::TooLarge {
                height,
                bytes: record.len(),
                limit: MAX_RECORD,
            });
        }
        let head = self.key("head");
        let prev = if height <= 1 {
            json!({ "target": "CREATE", "key": b64(&head), "create_revision": "0" })
        } else {
            let v = head_value(height - 1, &block.header.prev_hash);
            json!({ "target": "VALUE", "key": b64(&head), "value": b64(&v) })
        };
        let key = self.block_key(height);
        let absent = json!({ "target": "CREATE", "key": b64(&key), "create_revision": "0" });
        let hash = block.hash();
        let puts = json!([
            { "request_put": { "key": b64(&key), "value": b64(&record) } },
            { "request_put": { "key": b64(&head), "value": b64(&head_value(height, &hash)) } },
        ]);
        if self.txn(json!([prev, absent]), puts).await? {
            return Ok(());
        }
        // The compare failed: another server's block is at this height, or ours is
        // (a first try that committed, though its answer was lost).
        match self.records(height, 1).await?.first() {
            Some((b, _)) if b.header.height == height && b.hash() == hash => Ok(()),
            _ => Err(StoreError::Conflict { height }),
        }
    }

    /// Wakes the follower whenever the head record changes, reconnecting (to the
    /// next member) when the stream ends. Runs until the runtime stops.
    async fn watch(self: Arc<Self>, wake: Wake) {
        let body = json!({ "create_request": { "key": b64(&self.key("head")) } });
        loop {
            let (i, base) = self.endpoint();
            let url = format!("{base}/v3/watch");
            match self.http.post(&url).json(&body).send().await {
                Ok(mut r) if r.status().is_success() => {
                    // Caught up after a reconnect: anything missed is read by range.
                    wake();
                    while let Ok(Some(_)) = r.chunk().await {
                        wake();
                    }
                    tracing::warn!("etcd watch on {url} ended; reconnecting");
                }
                Ok(r) => tracing::warn!("etcd watch on {url}: {}", r.status()),
                Err(e) => tracing::warn!(
                    "etcd watch: {}",
                    crate::server::causes(&CallError::Unreachable { url, source: e })
                ),
            }
            self.skip(i);
            wake();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Store for EtcdStore {
    fn genesis(&self) -> Result<Option<Genesis>, StoreError> {
        self.run(|s| async move {
            match s.get(&s.key("genesis")).await? {
                None => Ok(None),
                Some(v) => Ok(Some(decode("genesis", "genesis", &v)?)),
            }
        })
    }

    fn init(&self, genesis: &Genesis) -> Result<(), StoreError> {
        let g = postcard::to_stdvec(genesis).map_err(|e| StoreError::Io(e.into()))?;
        self.run(|s| async move {
            let key = s.key("genesis");
            let absent = json!([{ "target": "CREATE", "key": b64(&key), "create_revision": "0" }]);
            let put = json!([{ "request_put": { "key": b64(&key), "value": b64(&g) } }]);
            if s.txn(absent, put).await? {
                Ok(())
            } else {
                Err(StoreError::AlreadyInitialized)
            }
        })
    }

    fn append(&self, block: &Block, events: &BlockEvents) -> Result<(), StoreError> {
        let (block, events) = (block.clone(), events.clone());
        self.run(|s| async move { s.append(block, events).await })
    }

    fn height(&self) -> Result<u64, StoreError> {
        self.run(|s| async move {
            let Some(v) = s.get(&s.key("head")).await? else {
                return Ok(0);
            };
            let h: [u8; 8] =
                v.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        what: "head",
                        key: "head".into(),
                        reason: format!("{} bytes, expected 40", v.len()),
                    })?;
            Ok(u64::from_be_bytes(h))
        })
    }

    fn blocks(&self, from: u64, limit: usize) -> Result<Vec<Block>, StoreError> {
        let r = self.run(move |s| async move { s.records(from, limit).await })?;
        Ok(r.into_iter().map(|(b, _)| b).collect())
    }

    fn events(&self, from: u64, limit: usize) -> Result<Vec<BlockEvents>, StoreError> {
        let r = self.run(move |s| async move { s.records(from, limit).await })?;
        Ok(r.into_iter().map(|(_, e)| e).collect())
    }

    fn put_blob(&self, hash: &Hash, data: &[u8]) -> Result<(), StoreError> {
        if data.len() > MAX_RECORD {
            return Err(StoreError::Io(
                format!(
                    "blob {hash} is {} bytes; the etcd store takes at most {MAX_RECORD}",
                    data.len()
                )
                .into(),
            ));
        }
        let (key, value) = (format!("blob/{hash}"), b64(data));
        self.run(|s| async move {
            let body = json!({ "key": b64(&s.key(&key)), "value": value });
            s.call::<Value>("/v3/kv/put", &body).await.map_err(io)?;
            Ok(())
        })
    }

    fn get_blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let key = format!("blob/{hash}");
        self.run(|s| async move { s.get(&s.key(&key)).await })
    }

    fn watch(&self, wake: Wake) -> bool {
        match &self.rt {
            Some(rt) => {
                rt.spawn(self.inner.clone().watch(wake));
                true
            }
            None => false,
        }
    }

    fn max_block_bytes(&self) -> Option<usize> {
        Some(MAX_BLOCK_TX_BYTES)
    }
}
