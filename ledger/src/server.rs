//! The ledger's HTTP server (`cellos ledger serve`).
//!
//! Handlers parse and signature-check transactions on the tokio workers (in
//! parallel; a batch from `POST /v1/txs` on a blocking thread, so a thousand
//! signature checks never stall the workers), then hand them to one committer thread that owns the write side of the
//! chain. The committer takes everything queued, applies it and writes one block with
//! one fsync (group commit), and only then answers each sender. Queries read the
//! last published snapshot ([`crate::chain::View`]), which a commit and its fsync
//! never hold up; blocks and events come from the store, blobs
//! from the mailbox ([`crate::mailbox`]: signed uploads, per-account quota, removal
//! after retention by a background sweep).
//!
//! Every malformed request gets a 4xx with a JSON `{"error": ...}` that says what is
//! wrong; nothing a client sends can panic the server. Connections are served by
//! `cellos_http::serve` under [`Config::limits`]: a connection cap below the fd
//! limit, and header, body and idle timeouts (DESIGN §9, bounded everything), with
//! TLS when [`Config::tls`] is given. All its time comes from [`Config::clock`]
//! (a [`Clock`]), which only a test replaces.

mod clock;
mod explorer;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cellos_http::{Limits, Tls};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::blob;
use crate::block::{Block, BlockEvents, Genesis};
use crate::chain::{Chain, ChainError, Receipt, Snapshot, View};
use crate::keys;
use crate::mailbox::{Mailbox, Policy, QuotaError};
use crate::request::RequestAuth;
use crate::store::{RedbStore, Store};
use crate::tx::{SignedTx, TxBody, VerifiedTx};
use crate::types::*;
use crate::wire::{Digest, EventPage, EventRecord, Status, TxOutcome};

pub use clock::{Clock, ManualClock, SystemClock};

/// Largest batch one block takes.
const MAX_BATCH: usize = 8192;
/// Transactions waiting for the committer before senders get 503.
const QUEUE: usize = 65536;
const MAX_TX_BYTES: usize = 64 * 1024;
/// Most transactions one `POST /v1/txs` carries.
pub const MAX_BATCH_TXS: usize = 1024;
/// Largest `POST /v1/txs` body: room for [`MAX_BATCH_TXS`] ordinary transactions,
/// far less than that many of the largest.
const MAX_BATCH_BYTES: usize = 4 << 20;
const MAX_PAGE: usize = 1000;
const MAX_WAIT_SECS: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub params: ChainParams,
    /// Largest blob the mailbox takes, in bytes.
    pub blob_limit: usize,
    /// Connection cap and timeouts for every client.
    pub limits: Limits,
    /// Who may keep what in the blob mailbox, and for how long.
    pub mailbox: Policy,
    /// Serve HTTPS with this certificate instead of plain HTTP.
    pub tls: Option<Tls>,
    /// Block times, the status time and the mailbox's windows: [`SystemClock`]
    /// except in tests.
    pub clock: Arc<dyn Clock>,
    /// Save the state every this many blocks, so that start-up replays only the
    /// blocks since ([`crate::chain::StateSnapshot`]); 0 never does.
    pub snapshot_every: u64,
}

impl Default for Config {
    /// What `cellos ledger serve` uses when given no flags.
    fn default() -> Self {
        Config {
            data: PathBuf::from("./ledger-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8645)),
            params: ChainParams::new("cellos-local", false),
            blob_limit: 4 << 20,
            limits: Limits::for_fd_limit(cellos_http::fd_limit().unwrap_or(1024)),
            mailbox: Policy::default(),
            tls: None,
            clock: Arc::new(SystemClock),
            snapshot_every: 10_000,
        }
    }
}

fn create_data_dir(data: &std::path::Path) -> Result<(), ServerError> {
    std::fs::create_dir_all(data).map_err(|source| ServerError::DataDir {
        path: data.to_path_buf(),
        source,
    })
}

struct Pending {
    tx: VerifiedTx,
    /// Its JSON body's length (for a store that caps the size of a block).
    size: usize,
    reply: oneshot::Sender<Result<Receipt, ApiError>>,
}

/// What the committer is handed.
// Transactions go by value, as before there were wake-ups: boxing them would
// allocate once per transaction to save the size of a rare wake-up.
#[allow(clippy::large_enum_variant)]
enum Work {
    Tx(Pending),
    /// Another ledger server may have appended to the (replicated) store.
    Follow,
}

/// How often a transaction is tried again in a later block when other ledger
/// servers keep taking the height first, before its sender is told to retry.
const RACE_RETRIES: usize = 8;

struct Shared {
    /// The published state; the committer thread owns the chain itself.
    view: View,
    store: Arc<dyn Store>,
    queue: std_mpsc::SyncSender<Work>,
    /// Other ledger servers append to the store too (see [`committer`]).
    replicated: bool,
    snapshot_every: u64,
    height: watch::Receiver<u64>,
    blob_limit: usize,
    mailbox: Arc<Mailbox>,
    chain_id: String,
    clock: Arc<dyn Clock>,
}

impl Shared {
    /// The state after the last durable block. Never waits for a commit.
    fn chain(&self) -> Arc<Snapshot> {
        self.view.load()
    }
}

/// A ledger opened on its data directory, ready to serve.
pub struct Server {
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    limits: Limits,
    tls: Option<Tls>,
}

impl Server {
    /// Opens (or creates) the chain under `cfg.data` and binds the listener. The
    /// ledger's key is `ledger.key` in the data directory, created on first start.
    pub async fn bind(cfg: Config) -> Result<Server, ServerError> {
        create_data_dir(&cfg.data)?;
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&cfg.data.join("ledger.redb"))?);
        Self::bind_with_store(cfg, store).await
    }

    /// [`Server::bind`] on a store of the caller's: a replicated one, or a test's.
    /// The ledger's key and its other files stay in `cfg.data`.
    pub async fn bind_with_store(
        cfg: Config,
        store: Arc<dyn Store>,
    ) -> Result<Server, ServerError> {
        create_data_dir(&cfg.data)?;
        let (key, _) = keys::load_or_create(&cfg.data.join("ledger.key"))?;
        let chain = Chain::open(store.clone(), key, cfg.params.clone(), cfg.clock.now())?;
        tracing::info!(
            "chain at block {}: started from {}",
            chain.state().height(),
            match chain.resumed_from() {
                0 => "the genesis".to_string(),
                h => format!("the state snapshot at block {h}"),
            }
        );
        let mailbox = Arc::new(Mailbox::open(
            &cfg.data.join("mailbox"),
            cfg.mailbox.clone(),
        )?);
        let chain_id = chain.state().params.chain_id.clone();
        let (htx, hrx) = watch::channel(chain.state().height());
        let (qtx, qrx) = std_mpsc::sync_channel(QUEUE);
        let wake = qtx.clone();
        let replicated = store.watch(Arc::new(move || {
            // A full queue wakes the committer anyway.
            let _ = wake.try_send(Work::Follow);
        }));
        let shared = Arc::new(Shared {
            view: chain.view(),
            store,
            queue: qtx,
            replicated,
            snapshot_every: cfg.snapshot_every,
            height: hrx,
            blob_limit: cfg.blob_limit,
            mailbox,
            chain_id,
            clock: cfg.clock.clone(),
        });
        let s2 = shared.clone();
        std::thread::Builder::new()
            .name("ledger-commit".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| committer(s2, chain, qrx, htx));
                if std::panic::catch_unwind(run).is_err() {
                    // Crash-only: a committer that panicked commits nothing more,
                    // so stop; the next start rebuilds the state from the store.
                    std::process::abort();
                }
            })
            .map_err(|source| ServerError::DataDir {
                path: cfg.data.clone(),
                source,
            })?;
        let listener = cellos_http::bind(cfg.listen).map_err(|source| ServerError::Listen {
            addr: cfg.listen,
            source,
        })?;
        Ok(Server {
            shared,
            listener,
            limits: cfg.limits,
            tls: cfg.tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The base URL clients use: `https://` when it serves TLS.
    pub fn url(&self) -> std::io::Result<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.local_addr()?))
    }

    pub fn chain_id(&self) -> String {
        self.shared.chain_id.clone()
    }

    /// Serves until `shutdown` resolves, then lets requests in flight finish for
    /// up to the drain timeout.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let sweeper = tokio::spawn(sweep_mailbox(self.shared.clone()));
        let app = router(self.shared);
        cellos_http::serve(self.listener, app, self.limits, self.tls, shutdown).await;
        sweeper.abort();
        Ok(())
    }
}

/// Removes the mailbox's blobs whose time is over, a few times per retention period.
async fn sweep_mailbox(shared: Arc<Shared>) {
    let p = shared.mailbox.policy();
    let every =
        (p.retention.min(p.pending_ttl) / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let live = live_blobs(&shared.chain());
        let mb = shared.mailbox.clone();
        let now = shared.clock.now();
        match tokio::task::spawn_blocking(move || mb.sweep(&live, now)).await {
            Ok(Ok(sw)) if sw.released + sw.expired > 0 => tracing::info!(
                "mailbox: removed {} blobs of closed or updated contracts and {} that no contract named in time",
                sw.released,
                sw.expired
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("mailbox sweep failed (retrying): {}", causes(&e)),
            Err(e) => tracing::error!("mailbox sweep failed (retrying): {e}"),
        }
    }
}

/// The blobs open contracts name: their deployments and their results.
fn live_blobs(chain: &Snapshot) -> HashSet<Hash> {
    chain
        .state()
        .contracts()
        .filter(|c| c.is_open())
        .flat_map(|c| c.blob.into_iter().chain(c.result))
        .collect()
}

/// The mailbox blobs a transaction names (if it is applied).
fn blob_refs(tx: &VerifiedTx) -> Vec<Hash> {
    match &tx.get().tx.body {
        TxBody::CreateContract { blob, .. } | TxBody::UpdateContract { blob, .. } => {
            blob.iter().copied().collect()
        }
        TxBody::AcceptContract { result, .. } => result.iter().copied().collect(),
        _ => Vec::new(),
    }
}

/// Owns the chain: applies each batch, writes its block (the fsync runs here, with
/// no lock held), publishes the new state and only then answers the senders.
///
/// On a replicated store it also follows the log: before every batch (so that a
/// transaction is validated against every block acknowledged before it arrived,
/// whichever server wrote it), when the store's watch wakes it, and once a second.
/// A block another server took in between is applied, and the batch tried again on
/// top of it (each transaction validated again) up to [`RACE_RETRIES`] times; then
/// its senders get 503, which clients retry.
fn committer(
    shared: Arc<Shared>,
    mut chain: Chain,
    rx: std_mpsc::Receiver<Work>,
    height: watch::Sender<u64>,
) {
    let saver = Saver::default();
    let mut saved_at = chain.state().height();
    loop {
        let h = chain.state().height();
        let due = shared.snapshot_every > 0 && h >= saved_at.saturating_add(shared.snapshot_every);
        if due && saver.save(shared.store.clone(), chain.view().load()) {
            saved_at = h;
        }
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(w) => Some(w),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch: Vec<Pending> = Vec::new();
        let mut next = first;
        while let Some(w) = next {
            if let Work::Tx(p) = w {
                batch.push(p);
            }
            next = if batch.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if shared.replicated {
            if let Err(e) = chain.follow() {
                tracing::error!("cannot follow the store (retrying): {}", causes(&e));
            }
            height.send_replace(chain.state().height());
        }
        if batch.is_empty() {
            // A tick: a block only if time alone changes the state.
            commit(&shared, &mut chain, Vec::new(), &height);
        }
        for part in split(batch, shared.store.max_block_bytes()) {
            commit(&shared, &mut chain, part, &height);
        }
    }
}

/// Writes state snapshots on a thread of its own, one at a time, so the committer
/// never waits for one (it only hands over the published state, a pointer).
#[derive(Default)]
struct Saver {
    busy: Arc<std::sync::atomic::AtomicBool>,
}

impl Saver {
    /// Starts saving `state`, unless a save is still running; says whether it started.
    fn save(&self, store: Arc<dyn Store>, state: Arc<Snapshot>) -> bool {
        use std::sync::atomic::Ordering;
        if self.busy.swap(true, Ordering::AcqRel) {
            return false;
        }
        let busy = self.busy.clone();
        let spawned = std::thread::Builder::new()
            .name("ledger-snapshot".into())
            .spawn(move || {
                let height = state.state().height();
                match crate::chain::save_snapshot(store.as_ref(), &state) {
                    Ok(()) => tracing::info!("state snapshot saved at block {height}"),
                    Err(e) => tracing::error!(
                        "state snapshot at block {height} not saved (the next is tried later): {}",
                        causes(&e)
                    ),
                }
                busy.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the snapshot thread: {e}");
            self.busy.store(false, Ordering::Release);
            return false;
        }
        true
    }
}

/// `batch` in parts whose transactions' sizes add up to at most `max` each.
fn split(batch: Vec<Pending>, max: Option<usize>) -> Vec<Vec<Pending>> {
    let Some(max) = max else {
        return vec![batch];
    };
    let mut parts: Vec<Vec<Pending>> = Vec::new();
    let mut bytes = 0usize;
    for p in batch {
        match parts.last_mut() {
            Some(part) if bytes + p.size <= max => {
                bytes += p.size;
                part.push(p);
            }
            _ => {
                bytes = p.size;
                parts.push(vec![p]);
            }
        }
    }
    parts
}

/// Commits one batch as one block and answers its senders.
fn commit(shared: &Shared, chain: &mut Chain, batch: Vec<Pending>, height: &watch::Sender<u64>) {
    let (mut txs, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.tx, p.reply)).unzip();
    let refs: Vec<Vec<Hash>> = txs.iter().map(blob_refs).collect();
    let mut tries = 0;
    let outcome = loop {
        let again = (shared.replicated && tries < RACE_RETRIES).then(|| txs.clone());
        match (chain.commit(txs, shared.clock.now()), again) {
            // The chain has applied the winner's block: try on top of it.
            (Err(e), Some(again)) if e.is_conflict() => {
                tries += 1;
                txs = again;
            }
            (r, _) => break r,
        }
    };
    height.send_replace(chain.state().height());
    match outcome {
        Ok(results) => {
            // Named by a committed transaction: out of the uploaders' quotas.
            shared.mailbox.mark_referenced(
                refs.into_iter()
                    .zip(&results)
                    .filter(|(_, r)| r.is_ok())
                    .flat_map(|(hs, _)| hs),
            );
            for (reply, r) in replies.into_iter().zip(results) {
                let _ =
                    reply.send(r.map_err(|e| {
                        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
                    }));
            }
        }
        Err(e) => {
            let e = causes(&e);
            tracing::error!("commit failed, nothing in this batch was acknowledged: {e}");
            for reply in replies {
                let _ = reply.send(Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the ledger could not store the block (retry): {e}"),
                )));
            }
        }
    }
}

// ---- errors ---------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    fn internal(e: impl std::error::Error) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, causes(&e))
    }
}

/// An error and each of its causes, `: `-separated: errors keep their cause as
/// `source()` only, and a log line or an answer must not lose it.
pub(crate) fn causes(e: &dyn std::error::Error) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// One page of a list: a plain JSON array, with the number of all matches in the
/// `X-Total-Count` header (what a table needs for "page 3 of 200").
struct Page<T> {
    total: usize,
    items: Vec<T>,
}

impl<T: Clone> Page<T> {
    /// Up to `limit` of `matches` after the first `offset`; counts them all.
    fn of<'a>(matches: impl Iterator<Item = &'a T>, offset: usize, limit: usize) -> Self
    where
        T: 'a,
    {
        let mut items = Vec::new();
        let mut total = 0;
        for m in matches {
            if total >= offset && items.len() < limit {
                items.push(m.clone());
            }
            total += 1;
        }
        Page { total, items }
    }
}

impl<T: Serialize> IntoResponse for Page<T> {
    fn into_response(self) -> Response {
        ([(TOTAL_COUNT, self.total.to_string())], Json(self.items)).into_response()
    }
}

const TOTAL_COUNT: header::HeaderName = header::HeaderName::from_static("x-total-count");

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e| ApiError::bad(format!("bad {what} {s:?}: {e}")))
}

/// Query strings with unknown keys are rejected like unknown JSON fields.
fn query<T: serde::de::DeserializeOwned>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad(e.body_text()))
}

// ---- routes -----------------------------------------------------------------------

fn router(shared: Arc<Shared>) -> Router {
    let blob_limit = shared.blob_limit;
    Router::new()
        .route(
            "/v1/tx",
            post(submit).layer(DefaultBodyLimit::max(MAX_TX_BYTES)),
        )
        .route(
            "/v1/txs",
            post(submit_batch).layer(DefaultBodyLimit::max(MAX_BATCH_BYTES)),
        )
        .route("/v1/status", get(status))
        .route("/v1/genesis", get(genesis))
        .route("/v1/state/digest", get(digest))
        .route("/v1/accounts/{key}", get(account))
        .route("/v1/farms", get(farms))
        .route("/v1/farms/{id}", get(farm))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{id}", get(node))
        .route("/v1/contracts", get(contracts))
        .route("/v1/contracts/{id}", get(contract))
        .route("/v1/blocks", get(blocks))
        .route("/v1/blocks/{height}", get(block))
        .route("/v1/events", get(events))
        .route(
            "/v1/blobs/{hash}",
            get(get_blob)
                .put(put_blob)
                .layer(DefaultBodyLimit::max(blob_limit)),
        )
        .merge(explorer::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(shared)
}

/// The body, or a JSON error saying why it could not be read (too large, too
/// slow, cut off).
fn body(b: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        body_error(&e, limit).unwrap_or_else(|| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    e.status(),
                    format!("body is larger than the limit of {limit} bytes"),
                )
            } else {
                ApiError::new(e.status(), e.body_text())
            }
        })
    })
}

/// A body that came too slowly (408) or was too large (413), from the error's causes.
fn body_error(e: &(dyn std::error::Error + 'static), limit: usize) -> Option<ApiError> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(t) = c.downcast_ref::<cellos_http::BodyTimeout>() {
            return Some(ApiError::new(StatusCode::REQUEST_TIMEOUT, t.to_string()));
        }
        if c.is::<http_body_util::LengthLimitError>() {
            return Some(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is larger than the limit of {limit} bytes"),
            ));
        }
        cause = c.source();
    }
    None
}

async fn submit(
    AxState(s): AxState<Arc<Shared>>,
    body_bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Receipt> {
    let body = body(body_bytes, MAX_TX_BYTES)?;
    let stx: SignedTx = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("malformed transaction: {e}")))?;
    let vtx = stx
        .into_verified()
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let rx = enqueue(&s, vtx, body.len())?;
    Ok(Json(answer(rx).await?))
}

/// Hands a checked transaction to the committer; the receiver gets its answer.
fn enqueue(
    s: &Shared,
    tx: VerifiedTx,
    size: usize,
) -> Result<oneshot::Receiver<Result<Receipt, ApiError>>, ApiError> {
    let (reply, rx) = oneshot::channel();
    s.queue
        .try_send(Work::Tx(Pending { tx, size, reply }))
        .map_err(|e| match e {
            std_mpsc::TrySendError::Full(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the ledger is busy; retry")
            }
            std_mpsc::TrySendError::Disconnected(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the ledger is shutting down",
            ),
        })?;
    Ok(rx)
}

/// The committer's answer to one transaction.
async fn answer(rx: oneshot::Receiver<Result<Receipt, ApiError>>) -> Result<Receipt, ApiError> {
    rx.await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the ledger is shutting down",
        )
    })?
}

/// Counts the bytes of a transaction's JSON without keeping them.
#[derive(Default)]
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A transaction of a batch with its signature checked, and its JSON size; or why not.
type Checked = Result<(VerifiedTx, usize), ApiError>;

/// A batch's transactions, each checked (its JSON size and signature) or why not.
fn check_batch(body: &[u8]) -> Result<Vec<Checked>, ApiError> {
    let txs: Vec<SignedTx> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("malformed transaction batch: {e}")))?;
    if txs.len() > MAX_BATCH_TXS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} transactions in one batch; at most {MAX_BATCH_TXS}",
                txs.len()
            ),
        ));
    }
    Ok(txs
        .into_iter()
        .map(|stx| {
            let mut size = Counter::default();
            serde_json::to_writer(&mut size, &stx).map_err(ApiError::internal)?;
            if size.0 > MAX_TX_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("transaction is larger than the limit of {MAX_TX_BYTES} bytes"),
                ));
            }
            let vtx = stx
                .into_verified()
                .map_err(|e| ApiError::bad(e.to_string()))?;
            Ok((vtx, size.0))
        })
        .collect())
}

/// `POST /v1/txs`: up to [`MAX_BATCH_TXS`] transactions (a JSON array) in one
/// request, answered with one [`TxOutcome`] each, in order, once the blocks that
/// hold them are durable. Each is checked as `POST /v1/tx` checks one (its JSON
/// size, its signature, then the state machine); one refused does not refuse the
/// others. Signatures are checked off the async workers, the batch in one go.
async fn submit_batch(
    AxState(s): AxState<Arc<Shared>>,
    body_bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Vec<TxOutcome>> {
    let body = body(body_bytes, MAX_BATCH_BYTES)?;
    let checked = tokio::task::spawn_blocking(move || check_batch(&body))
        .await
        .map_err(ApiError::internal)??;
    let waiting: Vec<_> = checked
        .into_iter()
        .map(|c| c.and_then(|(vtx, size)| enqueue(&s, vtx, size)))
        .collect();
    let mut out = Vec::with_capacity(waiting.len());
    for w in waiting {
        let r = match w {
            Ok(rx) => answer(rx).await,
            Err(e) => Err(e),
        };
        out.push(match r {
            Ok(receipt) => TxOutcome::Accepted(receipt),
            Err(e) => TxOutcome::Refused {
                status: e.status.as_u16(),
                error: e.message,
            },
        });
    }
    Ok(Json(out))
}

async fn status(AxState(s): AxState<Arc<Shared>>) -> ApiResult<Status> {
    let c = s.chain();
    let st = c.state();
    Ok(Json(Status {
        chain_id: st.params.chain_id.clone(),
        dev_mode: st.params.dev_mode,
        ledger_key: c.genesis().ledger_key,
        genesis_hash: c.genesis().hash(),
        height: st.height(),
        head: c.head(),
        time: st.time().max(s.clock.now()),
    }))
}

async fn genesis(AxState(s): AxState<Arc<Shared>>) -> ApiResult<Genesis> {
    Ok(Json(s.chain().genesis().clone()))
}

async fn digest(AxState(s): AxState<Arc<Shared>>) -> ApiResult<Digest> {
    let c = s.chain();
    Ok(Json(Digest {
        height: c.state().height(),
        digest: c.state().digest(),
    }))
}

async fn account(AxState(s): AxState<Arc<Shared>>, Path(key): Path<String>) -> ApiResult<Account> {
    let k: PublicKey = parse("account key", &key)?;
    s.chain()
        .state()
        .account(&k)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("account {k} does not exist")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FarmQuery {
    offset: Option<usize>,
    /// Without one, every farm (what clients before paging expect).
    limit: Option<usize>,
}

async fn farms(
    AxState(s): AxState<Arc<Shared>>,
    q: Result<Query<FarmQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Page<Farm>, ApiError> {
    let q = query(q)?;
    let limit = q.limit.map_or(usize::MAX, |l| l.min(MAX_PAGE));
    Ok(Page::of(
        s.chain().state().farms(),
        q.offset.unwrap_or(0),
        limit,
    ))
}

async fn farm(AxState(s): AxState<Arc<Shared>>, Path(id): Path<String>) -> ApiResult<Farm> {
    let id: FarmId = parse("farm id", &id)?;
    s.chain()
        .state()
        .farm(id)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("farm {id} does not exist")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeQuery {
    farm: Option<FarmId>,
    status: Option<NodeStatus>,
    pubkey: Option<PublicKey>,
    /// Return nodes with ids above this (paging).
    after: Option<NodeId>,
    /// Skip this many matches (paging by page number).
    offset: Option<usize>,
    limit: Option<usize>,
}

async fn nodes(
    AxState(s): AxState<Arc<Shared>>,
    q: Result<Query<NodeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Page<Node>, ApiError> {
    let q = query(q)?;
    let c = s.chain();
    if let Some(k) = q.pubkey {
        return Ok(Page::of(c.state().node_by_key(&k).into_iter(), 0, 1));
    }
    let limit = q.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let after = q.after.unwrap_or(0);
    Ok(Page::of(
        c.state()
            .nodes()
            .filter(|n| n.id > after)
            .filter(|n| q.farm.is_none_or(|f| n.farm == f))
            .filter(|n| q.status.is_none_or(|st| n.status == st)),
        q.offset.unwrap_or(0),
        limit,
    ))
}

async fn node(AxState(s): AxState<Arc<Shared>>, Path(id): Path<String>) -> ApiResult<Node> {
    let id: NodeId = parse("node id", &id)?;
    s.chain()
        .state()
        .node(id)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("node {id} does not exist")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContractQuery {
    owner: Option<PublicKey>,
    node: Option<NodeId>,
    /// Only contracts that are not closed.
    open: Option<bool>,
    after: Option<ContractId>,
    /// Skip this many matches (paging by page number).
    offset: Option<usize>,
    limit: Option<usize>,
}

async fn contracts(
    AxState(s): AxState<Arc<Shared>>,
    q: Result<Query<ContractQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Page<Contract>, ApiError> {
    let q = query(q)?;
    let c = s.chain();
    let limit = q.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let after = q.after.unwrap_or(0);
    let keep = |k: &&Contract| {
        k.id > after
            && q.owner.is_none_or(|o| k.owner == o)
            && q.node.is_none_or(|n| k.node == n)
            && (q.open != Some(true) || k.is_open())
    };
    let offset = q.offset.unwrap_or(0);
    Ok(match (q.node, q.open) {
        (Some(n), Some(true)) => {
            Page::of(c.state().open_contracts_on(n).filter(keep), offset, limit)
        }
        _ => Page::of(c.state().contracts().filter(keep), offset, limit),
    })
}

async fn contract(AxState(s): AxState<Arc<Shared>>, Path(id): Path<String>) -> ApiResult<Contract> {
    let id: ContractId = parse("contract id", &id)?;
    s.chain()
        .state()
        .contract(id)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("contract {id} does not exist")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

async fn blocks(
    AxState(s): AxState<Arc<Shared>>,
    q: Result<Query<BlockQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Vec<Block>> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100).min(MAX_PAGE);
    let store = s.store.clone();
    let from = q.from.unwrap_or(1).max(1);
    tokio::task::spawn_blocking(move || store.blocks(from, limit))
        .await
        .map_err(ApiError::internal)?
        .map(Json)
        .map_err(ApiError::internal)
}

async fn block(AxState(s): AxState<Arc<Shared>>, Path(h): Path<String>) -> ApiResult<Block> {
    let h: u64 = parse("block height", &h)?;
    let store = s.store.clone();
    let found = tokio::task::spawn_blocking(move || store.blocks(h, 1))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    found
        .into_iter()
        .find(|b| b.header.height == h)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("block {h} does not exist")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    /// First block height to return events of.
    from: Option<u64>,
    node: Option<NodeId>,
    contract: Option<ContractId>,
    /// Seconds to wait for a block at `from` when there is none yet (long-poll).
    wait: Option<u64>,
    limit: Option<usize>,
}

async fn events(
    AxState(s): AxState<Arc<Shared>>,
    q: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<EventPage> {
    let q = query(q)?;
    let from = q.from.unwrap_or(1).max(1);
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let mut h = s.height.clone();
    // Long-poll: wait until a block at `from` exists, or the wait is over.
    let _ = tokio::time::timeout(wait, h.wait_for(|&height| height >= from)).await;
    let store = s.store.clone();
    let records: Vec<BlockEvents> = tokio::task::spawn_blocking(move || store.events(from, limit))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let next = records.last().map_or(from, |r| r.height + 1);
    let events = records
        .into_iter()
        .flat_map(|r| {
            r.events.into_iter().map(move |event| EventRecord {
                height: r.height,
                time: r.time,
                event,
            })
        })
        .filter(|r| q.node.is_none_or(|n| r.event.node() == Some(n)))
        .filter(|r| q.contract.is_none_or(|c| r.event.contract() == Some(c)))
        .collect();
    Ok(Json(EventPage { events, next }))
}

/// A mailbox upload: signed by a key the ledger knows, within its quota (see
/// [`crate::mailbox`]). Everything is checked before the body is read; a refused
/// body is read and thrown away (up to the blob limit), so the client sees the answer.
async fn put_blob(
    AxState(s): AxState<Arc<Shared>>,
    Path(hash): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<StatusCode, ApiError> {
    let admitted = admit_blob(&s, &hash, &headers);
    let (want, reservation) = match admitted {
        Ok(Admit::Upload(h, r)) => (h, r),
        Ok(Admit::Stored) => {
            discard(body, s.blob_limit).await;
            return Ok(StatusCode::OK);
        }
        Err(e) => {
            discard(body, s.blob_limit).await;
            return Err(e);
        }
    };
    let body = read_body(body, s.blob_limit).await?;
    let got = Hash::of(&body);
    if got != want {
        return Err(ApiError::bad(format!(
            "blob content hashes to {got}, not to {want} named in the URL"
        )));
    }
    let mb = s.mailbox.clone();
    let now = s.clock.now();
    tokio::task::spawn_blocking(move || mb.put(reservation, &want, &body, now))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(StatusCode::CREATED)
}

enum Admit {
    /// Store it, within this reservation.
    Upload(Hash, crate::mailbox::Reservation),
    /// The mailbox holds it already.
    Stored,
}

fn admit_blob(s: &Arc<Shared>, hash: &str, headers: &HeaderMap) -> Result<Admit, ApiError> {
    let want: Hash = parse("blob hash", hash)?;
    let unauthorized = |m: String| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let auth = RequestAuth::from_headers(|n| headers.get(n).and_then(|v| v.to_str().ok()))
        .map_err(|e| unauthorized(e.to_string()))?;
    let known = {
        let c = s.chain();
        let st = c.state();
        let now = st.time().max(s.clock.now());
        blob::verify(&auth, &s.chain_id, &want, now).map_err(|e| unauthorized(e.to_string()))?;
        st.account(&auth.key).is_some() || st.node_by_key(&auth.key).is_some()
    };
    if !known {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "key {} has no account on this ledger: only accounts and nodes may upload blobs",
                auth.key
            ),
        ));
    }
    if s.mailbox.contains(&want) {
        return Ok(Admit::Stored);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = s.blob_limit as u64;
    let size = match declared {
        Some(n) if n > limit => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is larger than the limit of {limit} bytes"),
            ))
        }
        Some(n) => n,
        None => limit,
    };
    let r = s.mailbox.reserve(auth.key, size).map_err(|e| match e {
        QuotaError::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        _ => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
    })?;
    Ok(Admit::Upload(want, r))
}

/// The whole body, up to `limit` bytes, or why not (too large, too slow, cut off).
async fn read_body(b: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(b, limit).await.map_err(|e| {
        body_error(&e, limit).unwrap_or_else(|| ApiError::bad(format!("cannot read the body: {e}")))
    })
}

/// Reads and drops up to `limit` bytes of a body we refuse, so the client (still
/// sending) reads our answer instead of a reset connection.
async fn discard(b: axum::body::Body, limit: usize) {
    use http_body_util::BodyExt;
    let mut b = b;
    let mut seen = 0usize;
    while seen <= limit {
        match b.frame().await {
            Some(Ok(f)) => seen += f.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

async fn get_blob(
    AxState(s): AxState<Arc<Shared>>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let h: Hash = parse("blob hash", &hash)?;
    let mb = s.mailbox.clone();
    let data = tokio::task::spawn_blocking(move || mb.get(&h))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("blob {h} does not exist")))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}
