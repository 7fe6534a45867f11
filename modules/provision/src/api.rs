//! The node's local HTTP API: read-only views of what the node is and runs.
//!
//! `GET /v1/status`, `/v1/deployments`, `/v1/deployments/<contract>` and `/metrics`
//! (Prometheus text). Everything that changes anything goes through the ledger, so
//! there is nothing to authenticate here: the data is what the ledger and the owner's
//! sealed results already say, read from the state disk.

use std::fmt::Write as _;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cellos_ledger::{FarmId, NodeId, PublicKey, Resources};
use serde::Serialize;

use crate::store::{Phase, Record, Store};

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
}

impl ApiState {
    pub fn new(store: Store) -> Arc<ApiState> {
        Arc::new(ApiState {
            store,
            info: RwLock::new(None),
            started: Instant::now(),
        })
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

#[derive(Serialize)]
struct Summary {
    contract: u64,
    deployment_hash: String,
    accepted: bool,
    rejected: Option<String>,
    workloads: Vec<WorkloadSummary>,
}

#[derive(Serialize)]
struct WorkloadSummary {
    name: String,
    kind: &'static str,
    phase: Option<Phase>,
}

fn summary(r: &Record) -> Summary {
    Summary {
        contract: r.contract,
        deployment_hash: r.deployment_hash.to_hex(),
        accepted: r.accepted,
        rejected: r.rejected.clone(),
        workloads: r
            .deployment
            .workloads
            .iter()
            .map(|w| WorkloadSummary {
                name: w.name.clone(),
                kind: w.spec.kind(),
                phase: r.phases.get(&w.name).copied(),
            })
            .collect(),
    }
}

async fn deployments(State(s): State<Arc<ApiState>>) -> Response {
    match s.store.all() {
        Ok(all) => Json(
            all.iter()
                .filter_map(|r| r.as_ref().ok())
                .map(summary)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn deployment(State(s): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("bad contract id {id:?}: expected a number"),
        );
    };
    match s.store.get(id) {
        Ok(Some(r)) => Json(r).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no deployment for contract {id} on this node"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
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
