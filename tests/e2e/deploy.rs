//! Deploying through ledger reservations, end to end: the real image in QEMU with an
//! SSD, a real ledger on the host, the real `cellos deploy` CLI as the user. Volumes
//! are real btrfs subvolumes with qgroup limits on the node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cellos_ledger::deployment::{Deployment, Size, Workload, WorkloadSpec};
use cellos_ledger::keys;
use cellos_ledger::*;
use cellos_qemu::{Disk, HostFwd, Protocol, Vm};
use cellos_tests::*;
use ed25519_dalek::SigningKey;

const GIB: u64 = 1 << 30;

/// Polls `f` until it gives a value; fails with the node's console after `timeout`.
fn wait_until<T>(vm: &Vm, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if t.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n--- node console ---\n{}",
                vm.console()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn volume_file(dir: &std::path::Path, name: &str, size: &str) -> String {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!("version = 1\n[[workloads]]\nname = \"{name}\"\nspec.volume.size = \"{size}\"\n"),
    )
    .expect("write deployment");
    p.to_str().expect("path").to_string()
}

/// The owner's signed view of its deployments on the node.
fn api(port: u16, path: &str, owner: &SigningKey, node: &PublicKey) -> serde_json::Value {
    let (_, body) = node_api(port, path, Some((owner, node)));
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

#[test]
fn vm_deploy_cancel_reject_bill_and_reboot() {
    let img = image();
    let ledger = Ledger::start(0);
    let url = format!("http://{}", ledger.addr);
    let enroll = keys::generate();
    let farm = ledger.farm(&enroll);
    let params = boot_params(farm, &ledger.guest_url(), &enroll);
    let dir = tempfile::tempdir().expect("tempdir");
    let api_port = free_port();
    let vm_config_with = |disks: Vec<Disk>, work: &str| {
        let mut c = vm_config(img.direct(&params), disks);
        c.work_dir = Some(dir.path().join(work));
        c.hostfwd = vec![HostFwd {
            protocol: Protocol::Tcp,
            host_port: api_port,
            guest_port: NODE_API_PORT,
        }];
        c
    };
    let mut vm = start(vm_config_with(
        vec![Disk::new(8 * GIB, DiskKind::Ssd)],
        "boot1",
    ));
    let registered_re = Regex::new(REGISTERED).expect("regex");
    let (node, _, _) = registered(
        &vm.wait_for(&registered_re, BOOT_TIMEOUT)
            .expect("node registers"),
    );

    // The user, through the real CLI.
    let key = dir.path().join("user.key");
    let cli = |vm: &Vm, args: &[&str]| {
        let (ok, out, err) = cellos_cli(args, &url, &key);
        assert!(
            ok,
            "cellos {args:?} failed:\n{out}\n{err}\n--- node console ---\n{}",
            vm.console()
        );
        out
    };
    cli(&vm, &["key", "new"]);
    cli(&vm, &["account", "create"]);
    cli(&vm, &["account", "fund", "1000000"]);
    let node_s = node.to_string();
    let owner = keys::load(&key).expect("user key");
    let user_key = keys::public_key(&owner);
    let node_pub = ledger.node(node).pubkey;

    // 1. Deploy a volume: Active, the subvolume exists with its quota, results reach us.
    let file = volume_file(dir.path(), "data", "2G");
    let out = cli(
        &vm,
        &[
            "--json",
            "deploy",
            &file,
            "--node",
            &node_s,
            "--timeout",
            "240",
        ],
    );
    let o: serde_json::Value = serde_json::from_str(&out).expect("deploy output");
    let data_contract = o["contract"]["id"].as_u64().expect("contract id");
    assert_eq!(o["contract"]["state"], "active", "{out}");
    let w = &o["result"]["workloads"][0];
    assert_eq!(w["state"], "ok", "{out}");
    assert_eq!(
        w["data"]["size"],
        (2 * GIB).to_string(),
        "the qgroup limit btrfs reports: {out}"
    );
    assert!(
        w["data"]["path"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("c{data_contract}-data")),
        "{out}"
    );
    let deployments = api(api_port, "/v1/deployments", &owner, &node_pub);
    assert_eq!(deployments[0]["contract"], data_contract, "{deployments}");
    assert_eq!(
        deployments[0]["workloads"][0]["phase"], "ready",
        "{deployments}"
    );
    // Anyone else learns nothing from the node API about its tenants.
    for path in [
        "/v1/deployments",
        &format!("/v1/deployments/{data_contract}"),
    ] {
        let (status, body) = node_api(api_port, path, None);
        assert_eq!(status, 401, "anonymous {path}: {body}");
    }
    let stranger = keys::generate();
    let (status, body) = node_api(api_port, "/v1/deployments", Some((&stranger, &node_pub)));
    assert_eq!((status, body.as_str()), (200, "[]"), "a stranger's list");

    // 4. Rejections, each with its reason on the ledger.
    let c = &ledger.client;
    let mut user = ledger.user();
    let mut d = Deployment {
        owner: user.public_key(),
        version: 1,
        metadata: BTreeMap::new(),
        workloads: vec![Workload {
            name: "x".into(),
            spec: WorkloadSpec::Volume { size: Size(GIB) },
        }],
        signature: None,
    };
    d.sign(user.key());
    let mut forged = d.clone();
    forged.sign(&keys::generate());
    forged.owner = user.public_key();
    let other = Deployment {
        version: 2,
        ..d.clone()
    };
    let mut order =
        |body: &Deployment, hash: Hash, reserve: Resources, to: EncryptionKey| -> ContractId {
            let body = serde_json::to_vec(body).expect("json");
            ledger.order(&mut user, node, &to, &body, hash, reserve)
        };
    let ek = ledger.node(node).encryption_key;
    let refusals = [
        (
            order(&d, other.hash(), d.resources(), ek),
            "but the contract names",
        ),
        (
            order(&forged, forged.hash(), d.resources(), ek),
            "signature does not verify",
        ),
        (
            order(
                &d,
                d.hash(),
                Resources {
                    sru: 1 << 20,
                    ..Default::default()
                },
                ek,
            ),
            "but the contract reserves",
        ),
        (
            order(
                &d,
                d.hash(),
                d.resources(),
                keys::encryption_key(&keys::generate()),
            ),
            "not sealed to this node",
        ),
    ];
    for (id, want) in refusals {
        let reason = wait_until(
            &vm,
            &format!("contract {id} refused"),
            Duration::from_secs(120),
            || match ledger.block_on(c.contract(id)).ok()?.state {
                ContractState::Closed(CloseCause::Rejected(r)) => Some(r),
                _ => None,
            },
        );
        assert!(
            reason.contains(want),
            "contract {id}: {reason:?} should say {want:?}"
        );
    }

    // 5. Usage reports move escrow to the farmer (test mode reports every few seconds).
    let farmer_key = ledger.block_on(c.farm(farm)).expect("farm").owner;
    let paid = wait_until(&vm, "a usage report", Duration::from_secs(120), || {
        let k = ledger.block_on(c.contract(data_contract)).ok()?;
        (k.paid > 0).then_some(k.paid)
    });
    assert!(
        ledger
            .block_on(c.account(&farmer_key))
            .expect("farmer")
            .balance
            >= paid
    );

    // A second volume, to be cancelled while the node is off.
    let file = volume_file(dir.path(), "gone", "1G");
    let out = cli(
        &vm,
        &[
            "--json",
            "deploy",
            &file,
            "--node",
            &node_s,
            "--timeout",
            "240",
        ],
    );
    let gone_contract = serde_json::from_str::<serde_json::Value>(&out).expect("json")["contract"]
        ["id"]
        .as_u64()
        .expect("id");

    // The node goes off; nothing is billed while it is off.
    vm.powerdown().expect("power button");
    vm.wait_exit(Duration::from_secs(90))
        .expect("node powers off");
    let disk = vm.disks()[0].clone();
    let off_at = ledger.block_on(c.status()).expect("status").time;
    cli(&vm, &["deployment", "cancel", &gone_contract.to_string()]);
    std::thread::sleep(Duration::from_secs(8));
    let billed_off = ledger
        .block_on(c.contract(data_contract))
        .expect("contract")
        .billed_until;
    assert!(
        billed_off <= off_at,
        "billed until {billed_off} although the node went off at {off_at}"
    );
    drop(vm);

    // 3. Reboot on the same disk: same node, the volume is still there and Active, the
    //    contract cancelled while off is cleaned up.
    let mut vm = start(vm_config_with(
        vec![Disk::existing(&disk, DiskKind::Ssd)],
        "boot2",
    ));
    let on_at = ledger.block_on(c.status()).expect("status").time;
    let (again, _, _) = registered(
        &vm.wait_for(&registered_re, BOOT_TIMEOUT)
            .expect("node registers again"),
    );
    assert_eq!(again, node, "the same disk brings back the same node");
    vm.wait_for(&format!("contract {gone_contract} closed"), BOOT_TIMEOUT)
        .expect("cancelled-while-off cleaned up");
    let deployments = wait_until(
        &vm,
        "the node API after the reboot",
        Duration::from_secs(60),
        || {
            // The first pass after a boot ensures every workload again: the API
            // answers meanwhile (provisioning), and then says ready.
            let v = api(api_port, "/v1/deployments", &owner, &node_pub);
            (v.as_array().map(Vec::len) == Some(1) && v[0]["workloads"][0]["phase"] == "ready")
                .then_some(v)
        },
    );
    assert_eq!(deployments[0]["contract"], data_contract);
    assert_eq!(
        ledger
            .block_on(c.contract(data_contract))
            .expect("contract")
            .state,
        ContractState::Active
    );
    // The first report after the reboot starts after the node came back.
    wait_until(
        &vm,
        "a usage report after the reboot",
        Duration::from_secs(120),
        || {
            let k = ledger.block_on(c.contract(data_contract)).ok()?;
            (k.billed_until > on_at).then_some(())
        },
    );
    let blocks = ledger.block_on(c.blocks(1, 1000)).expect("blocks");
    for t in blocks.iter().flat_map(|b| &b.txs) {
        if let TxBody::ReportUsage {
            contract,
            window_start,
            window_end,
            ..
        } = t.tx.body
        {
            if contract == data_contract {
                assert!(
                    window_end <= off_at + 1 || window_start >= off_at,
                    "usage window [{window_start}, {window_end}) covers the time the node was off (from {off_at})"
                );
            }
        }
    }

    // 2. Cancel: the volume goes, reserved capacity drops back, escrow is refunded.
    let before = ledger
        .block_on(c.account(&user_key))
        .expect("account")
        .balance;
    cli(&vm, &["deployment", "cancel", &data_contract.to_string()]);
    vm.wait_for(&format!("contract {data_contract} closed"), BOOT_TIMEOUT)
        .expect("volume removed");
    let k = ledger
        .block_on(c.contract(data_contract))
        .expect("contract");
    let after = ledger
        .block_on(c.account(&user_key))
        .expect("account")
        .balance;
    assert!(after > before, "escrow refunded: {before} -> {after}");
    assert_eq!(k.escrow, 0);
    assert!(
        ledger.node(node).reserved.is_zero(),
        "reserved capacity drops back"
    );
    wait_until(
        &vm,
        "the node API to forget the contract",
        Duration::from_secs(30),
        || {
            let v = api(api_port, "/v1/deployments", &owner, &node_pub);
            (v.as_array().map(Vec::is_empty) == Some(true)).then_some(())
        },
    );
}
