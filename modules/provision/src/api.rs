//! The node's local HTTP API: views of what the node is and runs.
//!
//! Everything that changes anything goes through the ledger; this API only reads.
//! It is on a hostile network (DESIGN §9), so:
//! - `GET /v1/status` and `/metrics` (Prometheus text) are public and carry nothing a
//!   tenant would mind: counts, capacity, the node's public key.
//! - `GET /v1/deployments` (the signer's own deployments) and
//!   `/v1/deployments/<contract>` are for the deployment's owner only: the request is
//!   signed with the owner's key for this node's key, within a time window
//!   ([`cellos_ledger::request`]). Anyone else gets 401 or 403, and no hint of what
//!   the node runs for others. `/v1/deployments/<contract>/logs/<workload>?from=N`
//!   (a container's output, at most [`MAX_LOG_CHUNK`] bytes per request) is for the
//!   owner alike.
//! - No response ever carries a secret, not even to the owner: the views are built
//!   from workload names, kinds, phases and the results the provisioners report
//!   (addresses, paths, ports), never from the deployment's specs, which hold
//!   passwords and keys. Secrets reach the owner only sealed, through the ledger's
//!   mailbox. The live part of a view (a network's peers, handshakes and bytes) comes
//!   from the provisioners' [`Provisioner::live`](crate::Provisioner::live), which
//!   reads the running workload and never returns a key.

use std::fmt::Write as _;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cellos_ledger::deployment::WorkloadResult;
use cellos_ledger::request::{RequestAuth, RequestError};
use cellos_ledger::{FarmId, NodeId, PublicKey, Resources};
use serde::Serialize;

use crate::store::{Phase, Record, Store};
use crate::workload::{Provisioners, WorkloadId};

/// What the node knows about itself once registered.
#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    pub node: NodeId,
    pub farm: FarmId,
    pub pubkey: PublicKey,
    pub capacity: Resources,
    /// False when the state lives in RAM (no SSD): such a node takes no contracts.
    pub persistent: bool,
}

pub struct ApiState {
    pub store: Store,
    pub info: RwLock<Option<NodeInfo>>,
    pub started: Instant,
    /// The node's key: signed requests name it as their audience.
    node_key: PublicKey,
    /// Unix seconds (injectable for tests of the time window).
    clock: fn() -> u64,
    /// Records the node's shard server found damaged on its disks (kept, skipped,
    /// reported); `None` until cellosd has asked it.
    shard_damage: RwLock<Option<u64>>,
    /// The node's provisioners, for the live part of the owner's views; `None` until
    /// cellosd hands them over (and in tests that need no live data).
    provisioners: RwLock<Option<Provisioners>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ApiState {
    pub fn new(store: Store, node_key: PublicKey) -> Arc<ApiState> {
        Self::with_clock(store, node_key, unix_now)
    }

    pub fn with_clock(store: Store, node_key: PublicKey, clock: fn() -> u64) -> Arc<ApiState> {
        Arc::new(ApiState {
            store,
            info: RwLock::new(None),
            started: Instant::now(),
            node_key,
            clock,
            shard_damage: RwLock::new(None),
            provisioners: RwLock::new(None),
        })
    }

    /// What the shard server last said of damaged records (`damaged_records`).
    pub fn set_shard_damage(&self, records: u64) {
        if let Ok(mut g) = self.shard_damage.write() {
            *g = Some(records);
        }
    }

    /// The provisioners the owner's views ask for live status.
    pub fn set_provisioners(&self, p: Provisioners) {
        if let Ok(mut g) = self.provisioners.write() {
            *g = Some(p);
        }
    }

    pub fn set_info(&self, info: NodeInfo) {
        if let Ok(mut g) = self.info.write() {
            *g = Some(info);
        }
    }

    fn info(&self) -> Option<NodeInfo> {
        self.info.read().ok().and_then(|g| g.clone())
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/deployments", get(deployments))
        .route("/v1/deployments/{contract}", get(deployment))
        .route("/v1/deployments/{contract}/logs/{workload}", get(logs))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    uptime_secs: u64,
    registered: Option<NodeInfo>,
    deployments: usize,
}

async fn status(State(s): State<Arc<ApiState>>) -> Response {
    let deployments = s.store.list().map(|l| l.len()).unwrap_or(0);
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: s.started.elapsed().as_secs(),
        registered: s.info(),
        deployments,
    })
    .into_response()
}

/// Checks that the request is signed for this node within the window; returns the
/// signer, or the status and reason to refuse it with.
fn signer(
    s: &ApiState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<PublicKey, (StatusCode, String)> {
    let auth = RequestAuth::from_headers(|name| headers.get(name).and_then(|v| v.to_str().ok()))
        .map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))?;
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    auth.verify(&s.node_key, method.as_str(), path, (s.clock)())
        .map_err(|e| {
            let status = match e {
                RequestError::OutOfWindow { .. } | RequestError::BadSignature(_) => {
                    StatusCode::UNAUTHORIZED
                }
                _ => StatusCode::BAD_REQUEST,
            };
            (status, e.to_string())
        })?;
    Ok(auth.key)
}

/// What the owner sees of a deployment: no spec, so no secret.
#[derive(Serialize)]
struct View {
    contract: u64,
    deployment_hash: String,
    owner: PublicKey,
    accepted: bool,
    rejected: Option<String>,
    workloads: Vec<WorkloadView>,
}

#[derive(Serialize)]
struct WorkloadView {
    name: String,
    kind: &'static str,
    phase: Option<Phase>,
    /// What the provisioner reported: addresses, paths, ports.
    result: Option<WorkloadResult>,
    /// What the running workload is doing now (a network's peers and bytes), when
    /// it is ready and its provisioner can tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    live: Option<serde_json::Value>,
}

async fn view(s: &ApiState, r: &Record) -> View {
    let provisioners = s.provisioners.read().ok().and_then(|g| g.clone());
    let mut v = View {
        contract: r.contract,
        deployment_hash: r.deployment_hash.to_hex(),
        owner: r.deployment.owner,
        accepted: r.accepted,
        rejected: r.rejected.clone(),
        workloads: r
            .deployment
            .workloads
            .iter()
            .map(|w| WorkloadView {
                name: w.name.clone(),
                kind: w.spec.kind(),
                phase: r.phases.get(&w.name).copied(),
                result: r.results.iter().find(|x| x.name == w.name).cloned(),
                live: None,
            })
            .collect(),
    };
    let Some(p) = provisioners else { return v };
    for (view, w) in v.workloads.iter_mut().zip(&r.deployment.workloads) {
        if view.phase == Some(Phase::Ready) {
            let id = WorkloadId {
                contract: r.contract,
                name: w.name.clone(),
            };
            view.live = p.live(&id, &w.spec).await;
        }
    }
    v
}

async fn deployments(
    State(s): State<Arc<ApiState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let owner = match signer(&s, &method, &uri, &headers) {
        Ok(k) => k,
        Err((status, why)) => return error(status, why),
    };
    match s.store.all() {
        Ok(all) => {
            let mut views = Vec::new();
            for r in all.iter().filter_map(|r| r.as_ref().ok()) {
                if r.deployment.owner == owner {
                    views.push(view(&s, r).await);
                }
            }
            Json(views).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The signer's deployment of contract `id`, or the status and reason to refuse
/// the request with: someone else's deployment and none at all look the same.
fn owned_record(
    s: &ApiState,
    id: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Record, (StatusCode, String)> {
    let owner = signer(s, method, uri, headers)?;
    let Ok(id) = id.parse::<u64>() else {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("bad contract id {id:?}: expected a number"),
        ));
    };
    match s.store.get(id) {
        Ok(Some(r)) if r.deployment.owner == owner => Ok(r),
        Ok(_) => Err((
            StatusCode::NOT_FOUND,
            format!("no deployment of {owner} for contract {id} on this node"),
        )),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn deployment(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    match owned_record(&s, &id, &method, &uri, &headers) {
        Ok(r) => Json(view(&s, &r).await).into_response(),
        Err((status, why)) => error(status, why),
    }
}

/// The most log bytes one request gets (a follower asks again from `next`).
pub const MAX_LOG_CHUNK: u64 = 64 << 10;

#[derive(serde::Deserialize)]
struct LogQuery {
    #[serde(default)]
    from: u64,
}

async fn logs(
    State(s): State<Arc<ApiState>>,
    Path((id, name)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let r = match owned_record(&s, &id, &method, &uri, &headers) {
        Ok(r) => r,
        Err((status, why)) => return error(status, why),
    };
    let Some(w) = r.deployment.workloads.iter().find(|w| w.name == name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("contract {} has no workload {name:?}", r.contract),
        );
    };
    let provisioners = s.provisioners.read().ok().and_then(|g| g.clone());
    let wid = WorkloadId {
        contract: r.contract,
        name: name.clone(),
    };
    let chunk = match provisioners {
        Some(p) => p.logs(&wid, &w.spec, q.from, MAX_LOG_CHUNK).await,
        None => None,
    };
    match chunk {
        Some(Ok(c)) => Json(c).into_response(),
        Some(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        None => error(
            StatusCode::NOT_FOUND,
            format!("workload {name:?} ({}) keeps no log", w.spec.kind()),
        ),
    }
}

async fn metrics(State(s): State<Arc<ApiState>>) -> Response {
    let mut m = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in samples {
            let _ = writeln!(m, "{name}{labels} {v}");
        }
    };
    gauge(
        "cellos_uptime_seconds",
        "Seconds since the node agent started.",
        &[(String::new(), s.started.elapsed().as_secs())],
    );
    if let Some(i) = s.info() {
        let l = format!("{{node=\"{}\",farm=\"{}\"}}", i.node, i.farm);
        gauge(
            "cellos_node_info",
            "The node's registration (value is always 1).",
            &[(l, 1)],
        );
        gauge(
            "cellos_capacity",
            "Capacity registered on the ledger (cru in cores, the rest in bytes).",
            &[
                ("{resource=\"cru\"}".into(), i.capacity.cru),
                ("{resource=\"mru\"}".into(), i.capacity.mru),
                ("{resource=\"sru\"}".into(), i.capacity.sru),
                ("{resource=\"hru\"}".into(), i.capacity.hru),
            ],
        );
        gauge(
            "cellos_persistent_state",
            "1 when the state directory is on disk.",
            &[(String::new(), u64::from(i.persistent))],
        );
    }
    if let Some(n) = s.shard_damage.read().ok().and_then(|g| *g) {
        gauge(
            "cellos_shard_damaged_records",
            "Records the shard server found damaged on its disks: kept, skipped and reported, never cut.",
            &[(String::new(), n)],
        );
    }
    let records: Vec<Record> = s
        .store
        .all()
        .unwrap_or_default()
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    let accepted = records.iter().filter(|r| r.accepted).count() as u64;
    gauge(
        "cellos_deployments",
        "Deployments recorded on this node, by whether the ledger accepted them.",
        &[
            ("{accepted=\"true\"}".into(), accepted),
            (
                "{accepted=\"false\"}".into(),
                records.len() as u64 - accepted,
            ),
        ],
    );
    let mut phases = std::collections::BTreeMap::<&str, u64>::new();
    for r in &records {
        for p in r.phases.values() {
            let name = match p {
                Phase::Provisioning => "provisioning",
                Phase::Ready => "ready",
                Phase::Failed => "failed",
                Phase::Removing => "removing",
            };
            *phases.entry(name).or_default() += 1;
        }
    }
    let samples: Vec<(String, u64)> = phases
        .into_iter()
        .map(|(p, n)| (format!("{{phase=\"{p}\"}}"), n))
        .collect();
    gauge(
        "cellos_workloads",
        "Workloads on this node by phase.",
        &samples,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m).into_response()
}
