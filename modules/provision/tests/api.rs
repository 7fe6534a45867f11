//! The node API over HTTP, on records written the way the engine writes them: public
//! views for anyone, deployment views for their owner's signed requests only, and no
//! secret in any response; the live part of a view for the owner only.

use std::collections::BTreeMap;
use std::sync::Arc;

use cellos_ledger::deployment::{
    Deployment, ShardMode, Size, Workload, WorkloadResult, WorkloadSpec, WorkloadState,
};
use cellos_ledger::request::{RequestAuth, WINDOW_SECS};
use cellos_ledger::{keys, Resources};
use cellos_provision::api::{router, ApiState, NodeInfo};
use cellos_provision::{
    LogChunk, Phase, Provisioner, Provisioners, Record, Store, WorkloadError, WorkloadId,
};

const SECRET: &str = "tenant-shard-password-5f1c";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Reports live data for every workload (what a network reports: peers and bytes),
/// named after the workload so the test sees which one it belongs to.
struct Live;

impl Provisioner for Live {
    fn ensure(
        &self,
        _: &WorkloadId,
        _: &WorkloadSpec,
    ) -> Result<BTreeMap<String, String>, WorkloadError> {
        Ok(BTreeMap::new())
    }
    fn remove(&self, _: &WorkloadId, _: &WorkloadSpec) -> Result<(), WorkloadError> {
        Ok(())
    }
    fn live(&self, id: &WorkloadId, _: &WorkloadSpec) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "peers": [{ "public_key": format!("peer-of-{}", id.node_name()), "rx_bytes": 1234 }],
            "rx_bytes": 1234,
        }))
    }
    /// Every workload "printed" 100 bytes of its name; offsets past 50 are kept.
    fn logs(
        &self,
        id: &WorkloadId,
        _: &WorkloadSpec,
        from: u64,
        max: u64,
    ) -> Option<Result<LogChunk, WorkloadError>> {
        let text: String = id.node_name().chars().cycle().take(100).collect();
        let from = from.clamp(50, 100);
        let to = (from + max).min(100);
        Some(Ok(LogChunk {
            start: 50,
            from,
            next: to,
            text: text[from as usize..to as usize].to_string(),
        }))
    }
}

#[tokio::test]
async fn status_deployments_and_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let k = keys::generate();
    let mut d = Deployment {
        owner: keys::public_key(&k),
        version: 1,
        metadata: BTreeMap::new(),
        workloads: vec![
            Workload {
                name: "data".into(),
                spec: WorkloadSpec::Volume {
                    size: Size(1 << 30),
                },
            },
            Workload {
                name: "backup".into(),
                spec: WorkloadSpec::Shard {
                    size: Size(1 << 30),
                    mode: ShardMode::User,
                    password: Some(SECRET.into()),
                },
            },
        ],
        signature: None,
    };
    d.sign(&k);
    store
        .put(&Record {
            contract: 7,
            deployment_hash: d.hash(),
            deployment: d.clone(),
            phases: BTreeMap::from([
                ("data".to_string(), Phase::Ready),
                ("backup".to_string(), Phase::Ready),
            ]),
            results: vec![WorkloadResult {
                name: "backup".into(),
                kind: "shard".into(),
                state: WorkloadState::Ok,
                message: String::new(),
                data: BTreeMap::from([("port".to_string(), "9900".to_string())]),
            }],
            accepted: true,
            rejected: None,
            billed_until: 0,
        })
        .expect("put");
    let node_key = keys::generate();
    let node_pub = keys::public_key(&node_key);
    let state = ApiState::new(Store::open(dir.path()).expect("store"), node_pub);
    state.set_info(NodeInfo {
        node: 3,
        farm: 1,
        pubkey: node_pub,
        capacity: Resources {
            cru: 2,
            mru: 1 << 30,
            sru: 8 << 30,
            hru: 0,
        },
        persistent: true,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state_for_metrics = state.clone();
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let signed = |p: &str, key: &ed25519_dalek::SigningKey, audience, time| {
        let auth = RequestAuth::sign(key, &audience, "GET", p, time);
        let mut req = http.get(format!("{base}{p}"));
        for (n, v) in auth.headers() {
            req = req.header(n, v);
        }
        async move {
            let r = req.send().await.expect("get");
            (r.status().as_u16(), r.text().await.expect("text"))
        }
    };
    let get = |p: &str| {
        let u = format!("{base}{p}");
        async move {
            let r = reqwest::get(u).await.expect("get");
            (r.status().as_u16(), r.text().await.expect("text"))
        }
    };
    let mut seen = Vec::new();

    let (st, body) = get("/v1/status").await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["registered"]["node"], 3);
    assert_eq!(v["deployments"], 1);
    seen.push(body);

    // Anonymous: nothing about tenants.
    for p in ["/v1/deployments", "/v1/deployments/7"] {
        let (st, body) = get(p).await;
        assert_eq!(st, 401, "{p}: {body}");
        assert!(body.contains("not signed"), "{body}");
        seen.push(body);
    }

    // The owner sees its deployment: phases and results, no spec.
    let (st, body) = signed("/v1/deployments", &k, node_pub, now()).await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v[0]["contract"], 7);
    assert_eq!(v[0]["workloads"][0]["phase"], "ready");
    assert_eq!(v[0]["workloads"][1]["result"]["data"]["port"], "9900");
    assert!(
        v[0]["workloads"][0].get("live").is_none(),
        "no live data without provisioners: {body}"
    );
    seen.push(body);

    // With the node's provisioners, the owner's views carry each ready workload's
    // live status; a stranger's carry nothing.
    let live: Arc<dyn Provisioner> = Arc::new(Live);
    state_for_metrics.set_provisioners(Provisioners {
        volume: live.clone(),
        shard: live.clone(),
        network: live.clone(),
        container: live.clone(),
        vm: live,
    });
    let (st, body) = signed("/v1/deployments", &k, node_pub, now()).await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v[0]["workloads"][0]["live"]["peers"][0]["public_key"],
        "peer-of-c7-data"
    );
    assert_eq!(v[0]["workloads"][1]["live"]["rx_bytes"], 1234);
    seen.push(body);
    let (st, body) = signed("/v1/deployments/7", &k, node_pub, now()).await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v["workloads"][1]["live"]["peers"][0]["public_key"],
        "peer-of-c7-backup"
    );
    seen.push(body);
    let (st, body) = signed("/v1/deployments/7", &k, node_pub, now()).await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["deployment_hash"], d.hash().to_hex());
    assert_eq!(v["owner"], keys::public_key(&k).to_hex());
    seen.push(body);

    // The owner reads a workload's log from an offset; a missing workload is named.
    let (st, body) = signed("/v1/deployments/7/logs/data?from=60", &k, node_pub, now()).await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (v["start"].as_u64(), v["from"].as_u64(), v["next"].as_u64()),
        (Some(50), Some(60), Some(100))
    );
    assert_eq!(v["text"].as_str().map(str::len), Some(40));
    let (st, body) = signed("/v1/deployments/7/logs/nope", &k, node_pub, now()).await;
    assert_eq!(st, 404, "{body}");
    assert!(
        body.contains("no workload") && body.contains("nope"),
        "{body}"
    );

    // Someone else, a request signed for another node, a stale or future time, or a
    // path other than the signed one: refused.
    let stranger = keys::generate();
    let (st, body) = signed("/v1/deployments/7/logs/data", &stranger, node_pub, now()).await;
    assert_eq!(st, 404, "{body}");
    assert!(!body.contains("c7-data"), "{body}");
    let (st, body) = get("/v1/deployments/7/logs/data").await;
    assert_eq!(st, 401, "{body}");
    let (st, body) = signed("/v1/deployments/7", &stranger, node_pub, now()).await;
    assert_eq!(st, 404, "{body}");
    seen.push(body);
    let (st, body) = signed("/v1/deployments", &stranger, node_pub, now()).await;
    assert_eq!((st, body.as_str()), (200, "[]"));
    for p in ["/v1/deployments", "/v1/deployments/7"] {
        let (st, body) = get(p).await;
        assert_eq!(st, 401, "{p}: {body}");
        assert!(!body.contains("peer-of"), "{body}");
        seen.push(body);
    }
    let other_node = keys::public_key(&keys::generate());
    for (aud, t) in [
        (other_node, now()),
        (node_pub, now() - WINDOW_SECS - 5),
        (node_pub, now() + WINDOW_SECS + 5),
    ] {
        let (st, body) = signed("/v1/deployments/7", &k, aud, t).await;
        assert_eq!(st, 401, "{body}");
        seen.push(body);
    }
    let auth = RequestAuth::sign(&k, &node_pub, "GET", "/v1/deployments/8", now());
    let mut req = http.get(format!("{base}/v1/deployments/7"));
    for (n, v) in auth.headers() {
        req = req.header(n, v);
    }
    assert_eq!(req.send().await.expect("get").status().as_u16(), 401);

    assert_eq!(
        signed("/v1/deployments/8", &k, node_pub, now()).await.0,
        404
    );
    let (st, body) = signed("/v1/deployments/x", &k, node_pub, now()).await;
    assert_eq!(st, 400);
    assert!(body.contains("bad contract id"));
    assert_eq!(get("/v1/nothing").await.0, 404);

    let (_, body) = get("/metrics").await;
    assert!(
        !body.contains("cellos_shard_damaged_records"),
        "nothing said before the shard server was asked: {body}"
    );
    state_for_metrics.set_shard_damage(3);
    let (st, body) = get("/metrics").await;
    assert_eq!(st, 200);
    assert!(body.contains("cellos_shard_damaged_records 3"), "{body}");
    assert!(
        body.contains("cellos_node_info{node=\"3\",farm=\"1\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("cellos_capacity{resource=\"sru\"} 8589934592"),
        "{body}"
    );
    assert!(
        body.contains("cellos_deployments{accepted=\"true\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("cellos_workloads{phase=\"ready\"} 2"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE cellos_uptime_seconds gauge"),
        "{body}"
    );
    seen.push(body);

    // No response carries a secret or the node's private key.
    let private = hex::encode(node_key.to_bytes());
    for body in &seen {
        assert!(!body.contains(SECRET), "a secret leaked: {body}");
        assert!(
            !body.contains("peer-of") || body.contains(&keys::public_key(&k).to_hex()),
            "live data outside its owner's view: {body}"
        );
        assert!(!body.contains(&private), "the node key leaked: {body}");
    }
}
