//! The node API over HTTP, on records written the way the engine writes them.

use std::collections::BTreeMap;

use cellos_ledger::deployment::{Deployment, Size, Workload, WorkloadSpec};
use cellos_ledger::{keys, Resources};
use cellos_provision::api::{router, ApiState, NodeInfo};
use cellos_provision::{Phase, Record, Store};

#[tokio::test]
async fn status_deployments_and_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let k = keys::generate();
    let mut d = Deployment {
        owner: keys::public_key(&k),
        version: 1,
        metadata: BTreeMap::new(),
        workloads: vec![Workload {
            name: "data".into(),
            spec: WorkloadSpec::Volume {
                size: Size(1 << 30),
            },
        }],
        signature: None,
    };
    d.sign(&k);
    store
        .put(&Record {
            contract: 7,
            deployment_hash: d.hash(),
            deployment: d.clone(),
            phases: BTreeMap::from([("data".to_string(), Phase::Ready)]),
            results: vec![],
            accepted: true,
            rejected: None,
            billed_until: 0,
        })
        .expect("put");
    let state = ApiState::new(Store::open(dir.path()).expect("store"));
    state.set_info(NodeInfo {
        node: 3,
        farm: 1,
        pubkey: keys::public_key(&keys::generate()),
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
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let base = format!("http://{addr}");
    let get = |p: &str| {
        let u = format!("{base}{p}");
        async move {
            let r = reqwest::get(u).await.expect("get");
            (r.status().as_u16(), r.text().await.expect("text"))
        }
    };

    let (st, body) = get("/v1/status").await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["registered"]["node"], 3);
    assert_eq!(v["deployments"], 1);

    let (st, body) = get("/v1/deployments").await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v[0]["contract"], 7);
    assert_eq!(v[0]["workloads"][0]["phase"], "ready");

    let (st, body) = get("/v1/deployments/7").await;
    assert_eq!(st, 200);
    let r: Record = serde_json::from_str(&body).expect("record");
    assert_eq!(r.deployment_hash, d.hash());
    assert_eq!(get("/v1/deployments/8").await.0, 404);
    let (st, body) = get("/v1/deployments/x").await;
    assert_eq!(st, 400);
    assert!(body.contains("bad contract id"));
    assert_eq!(get("/v1/nothing").await.0, 404);

    let (st, body) = get("/metrics").await;
    assert_eq!(st, 200);
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
        body.contains("cellos_workloads{phase=\"ready\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE cellos_uptime_seconds gauge"),
        "{body}"
    );
}
