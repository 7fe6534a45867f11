//! The `shard` workload end to end: a namespace on the node's shard server (on its HDD
//! pool), deployed with the real CLI, used over RESP from the host, removed on cancel.
//! The node API never shows the namespace's password, to anyone. The shard server is
//! a service of its own: killing cellosd while a client writes costs the client
//! nothing.

use std::net::SocketAddr;
use std::time::Duration;

use cellos_ledger::keys;
use cellos_qemu::{Disk, HostFwd, Protocol};
use cellos_shard::client::Client as ShardClient;
use cellos_tests::*;

const GIB: u64 = 1 << 30;
const SHARD_PORT: u16 = 9900;

#[test]
fn vm_shard_namespace_is_served_and_removed() {
    let img = image();
    let ledger = Ledger::start(0);
    let url = format!("http://{}", ledger.addr);
    let enroll = keys::generate();
    let farm = ledger.farm(&enroll);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let api_port = free_port();
    let mut params = boot_params(farm, &ledger.guest_url(), &enroll);
    params.extra.push_str(" cellos.debug");
    let mut cfg = vm_config(
        img.direct(&params),
        vec![
            Disk::new(8 * GIB, DiskKind::Ssd),
            Disk::new(8 * GIB, DiskKind::Hdd),
        ],
    );
    cfg.hostfwd = vec![
        HostFwd {
            protocol: Protocol::Tcp,
            host_port: port,
            guest_port: SHARD_PORT,
        },
        HostFwd {
            protocol: Protocol::Tcp,
            host_port: api_port,
            guest_port: NODE_API_PORT,
        },
    ];
    let mut vm = start(cfg);
    // cellosd starts the shard server before it registers.
    vm.wait_for("shard server on port 9900, data in /mnt/hdd", BOOT_TIMEOUT)
        .expect("shards on the HDD pool");
    let (node, _, _) = registered(
        &vm.wait_for(&Regex::new(REGISTERED).expect("regex"), BOOT_TIMEOUT)
            .expect("registers"),
    );

    let key = dir.path().join("user.key");
    let console = vm.console_path();
    let cli = |args: &[&str]| {
        let (ok, out, err) = cellos_cli(args, &url, &key);
        assert!(
            ok,
            "cellos {args:?} failed:\n{out}\n{err}\n--- node console ---\n{}",
            std::fs::read_to_string(&console).unwrap_or_default()
        );
        out
    };
    cli(&["key", "new"]);
    cli(&["account", "create"]);
    cli(&["account", "fund", "1000000"]);
    let file = dir.path().join("shard.toml");
    std::fs::write(&file, "version = 1\n[[workloads]]\nname = \"store\"\nspec.shard = { size = \"64M\", password = \"s3cret\" }\n")
        .expect("write");
    let out = cli(&[
        "--json",
        "deploy",
        file.to_str().expect("path"),
        "--node",
        &node.to_string(),
        "--timeout",
        "240",
    ]);
    let o: serde_json::Value = serde_json::from_str(&out).expect("json");
    let contract = o["contract"]["id"].as_u64().expect("id");
    let w = &o["result"]["workloads"][0];
    assert_eq!(w["state"], "ok", "{out}");
    assert_eq!(w["data"]["port"], "9900", "{out}");
    assert_eq!(w["data"]["address"], "10.0.2.15", "{out}");
    let ns = w["data"]["namespace"]
        .as_str()
        .expect("namespace")
        .to_string();
    assert_eq!(
        o["contract"]["resources"]["hru"],
        64 << 20,
        "a shard reserves HDD: {out}"
    );

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    ledger.block_on(async {
        let mut c = ShardClient::connect(addr, Duration::from_secs(10))
            .await
            .expect("connect");
        c.select(&ns, Some("s3cret"))
            .await
            .expect("select with the password");
        c.set(b"hello", b"world").await.expect("set");
        assert_eq!(c.get(b"hello").await.expect("get"), Some(b"world".to_vec()));
        let mut stranger = ShardClient::connect(addr, Duration::from_secs(10))
            .await
            .expect("connect");
        assert!(
            stranger.select(&ns, Some("guess")).await.is_err(),
            "a wrong password is refused"
        );
    });

    // Kill cellosd while a client writes: shardd, its own service, keeps serving.
    let pidof = |vm: &mut cellos_qemu::Vm, name: &str| {
        let (status, out) = vm
            .shell(
                &format!("/bin/busybox pidof {name}"),
                Duration::from_secs(20),
            )
            .expect("guest shell");
        assert_eq!(status, 0, "{name} is not running: {out}");
        out.trim().to_string()
    };
    let shardd_pid = pidof(&mut vm, "shardd");
    let cellosd_pid = pidof(&mut vm, "cellosd");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, ns) = (stop.clone(), ns.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut c = ShardClient::connect(addr, Duration::from_secs(10))
                    .await
                    .expect("connect");
                c.select(&ns, Some("s3cret")).await.expect("select");
                let mut written = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = format!("k{written}");
                    if let Err(e) = c.set(k.as_bytes(), &[7u8; 1024]).await {
                        return Err(format!("write {written} failed: {e}"));
                    }
                    written += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(written)
            })
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let (status, out) = vm
        .shell(
            &format!("/bin/busybox kill -9 {cellosd_pid}"),
            Duration::from_secs(20),
        )
        .expect("guest shell");
    assert_eq!(status, 0, "kill cellosd: {out}");
    vm.wait_for(
        &Regex::new(r"service cellosd was killed by signal 9.*restarting").expect("regex"),
        BOOT_TIMEOUT,
    )
    .expect("init restarts cellosd");
    vm.wait_for(&Regex::new(REGISTERED).expect("regex"), BOOT_TIMEOUT)
        .expect("cellosd comes back");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer
        .join()
        .expect("writer thread")
        .unwrap_or_else(|e| panic!("the client saw an error while cellosd died: {e}"));
    assert!(written > 10, "the client wrote only {written} keys");
    assert_eq!(
        pidof(&mut vm, "shardd"),
        shardd_pid,
        "shardd was not restarted"
    );
    assert_ne!(
        pidof(&mut vm, "cellosd"),
        cellosd_pid,
        "cellosd is a new process"
    );
    ledger.block_on(async {
        let mut c = ShardClient::connect(addr, Duration::from_secs(10))
            .await
            .expect("connect");
        c.select(&ns, Some("s3cret")).await.expect("select");
        for i in 0..written {
            assert!(
                c.get(format!("k{i}").as_bytes())
                    .await
                    .expect("get")
                    .is_some(),
                "key k{i} is missing"
            );
        }
    });
    println!("figures: {written} writes, none failed, while cellosd was killed and came back");

    // The node API: the owner sees the namespace's address, nobody sees its password.
    let owner = keys::load(&key).expect("user key");
    let node_pub = ledger.node(node).pubkey;
    let mut seen = Vec::new();
    let view = cli(&[
        "deployment",
        "status",
        &contract.to_string(),
        "--api",
        &format!("http://127.0.0.1:{api_port}"),
    ]);
    assert!(
        view.contains(&ns),
        "the owner's view names the namespace: {view}"
    );
    seen.push(view);
    let stranger = keys::generate();
    for (path, signed, want) in [
        ("/v1/status".to_string(), None, 200),
        ("/metrics".to_string(), None, 200),
        ("/v1/deployments".to_string(), None, 401),
        (format!("/v1/deployments/{contract}"), None, 401),
        ("/v1/deployments".to_string(), Some(&owner), 200),
        (format!("/v1/deployments/{contract}"), Some(&owner), 200),
        (format!("/v1/deployments/{contract}"), Some(&stranger), 404),
    ] {
        let (status, body) = node_api(api_port, &path, signed.map(|k| (k, &node_pub)));
        assert_eq!(status, want, "{path}: {body}");
        seen.push(body);
    }
    for body in &seen {
        assert!(!body.contains("s3cret"), "the password leaked: {body}");
    }
    // cellosd asks shardd for damaged records and exports the count.
    let (_, metrics) = node_api(api_port, "/metrics", None);
    assert!(
        metrics.contains("cellos_shard_damaged_records 0"),
        "{metrics}"
    );

    cli(&["deployment", "cancel", &contract.to_string()]);
    vm.wait_for(&format!("contract {contract} closed"), BOOT_TIMEOUT)
        .expect("torn down");
    ledger.block_on(async {
        let mut c = ShardClient::connect(addr, Duration::from_secs(10))
            .await
            .expect("connect");
        assert!(
            c.select(&ns, Some("s3cret")).await.is_err(),
            "the namespace is gone with its data"
        );
    });
}
