//! The `shard` workload end to end: a namespace on the node's shard server (on its HDD
//! pool), deployed with the real CLI, used over RESP from the host, removed on cancel.

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
    let mut cfg = vm_config(
        img.direct(&boot_params(farm, &ledger.guest_url(), &enroll)),
        vec![
            Disk::new(8 * GIB, DiskKind::Ssd),
            Disk::new(8 * GIB, DiskKind::Hdd),
        ],
    );
    cfg.hostfwd = vec![HostFwd {
        protocol: Protocol::Tcp,
        host_port: port,
        guest_port: SHARD_PORT,
    }];
    let mut vm = start(cfg);
    // cellosd starts the shard server before it registers.
    vm.wait_for("shard server on port 9900, data in /mnt/hdd", BOOT_TIMEOUT)
        .expect("shards on the HDD pool");
    let (node, _, _) = registered(
        &vm.wait_for(&Regex::new(REGISTERED).expect("regex"), BOOT_TIMEOUT)
            .expect("registers"),
    );

    let key = dir.path().join("user.key");
    let cli = |args: &[&str]| {
        let (ok, out, err) = cellos_cli(args, &url, &key);
        assert!(ok, "cellos {args:?} failed:\n{out}\n{err}");
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
