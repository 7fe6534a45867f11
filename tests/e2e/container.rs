//! Containers end to end: an image the test builds (a static busybox) pushed to
//! Debian's real registry on the host, a deployment with a tenant network and a
//! container sent with `cellos deploy` to a QEMU node, which pulls the image over
//! plain HTTP (`cellos.registry.insecure`), unpacks it into btrfs snapshots and runs
//! it with crun in a namespace of its own on the network's bridge.
//!
//! Checked from inside the node (the debug shell) and through `cellos logs`: the
//! container runs and its owner reads its output, a stranger cannot; a second
//! container that outgrows its memory is OOM-killed and restarted (on-failure) while
//! the first is untouched; the tenant's namespace reaches the web server, while the
//! container cannot reach the node's API; cellosd killed, the container keeps its
//! pid; after a reboot the containers run again from the node's cache without a blob
//! fetched; cancel removes container, root, log and namespace; a hostile image (a
//! layer writing `../../etc/passwd`) is refused with its reason on the ledger and
//! leaves the node's files alone.

#[path = "../../modules/container/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use cellos_container::Compression;
use cellos_qemu::{Disk, DiskKind, HostFwd, Protocol, Vm};
use cellos_tests::*;
use support::{layer, push_image, tar, Entry, Registry, TestImage};

const GIB: u64 = 1 << 30;
const SHELL: Duration = Duration::from_secs(60);

fn sh(vm: &mut Vm, cmd: &str) -> (i32, String) {
    vm.shell(cmd, SHELL)
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// A one-layer image: busybox and the applets the test uses, as links.
fn busybox_image() -> TestImage {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let mut entries = vec![
        Entry::Dir("bin/", 0o755),
        Entry::Dir("www/", 0o755),
        Entry::File("www/index.html", b"served-from-a-container\n", 0o644),
        Entry::File("bin/busybox", &busybox, 0o755),
    ];
    for applet in ["sh", "echo", "sleep", "httpd", "cat", "head", "tr"] {
        entries.push(Entry::Symlink(
            Box::leak(format!("bin/{applet}").into_boxed_str()),
            "busybox",
        ));
    }
    let mut image = TestImage::new(vec![layer(&tar(&entries), Compression::Gzip)]);
    image.entrypoint = vec![];
    image.cmd = vec!["/bin/sh"];
    image.env = vec!["PATH=/bin"];
    image.working_dir = "/";
    image.user = "";
    image
}

/// Waits until `cmd` succeeds in the node's shell; its output.
fn until_ok(vm: &mut Vm, cmd: &str, timeout: Duration) -> String {
    let t = Instant::now();
    loop {
        let (status, out) = sh(vm, cmd);
        if status == 0 {
            return out;
        }
        assert!(
            t.elapsed() < timeout,
            "{cmd} still fails after {timeout:?}: {out}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The web container answers from the tenant's namespace `net_ns`.
fn serves_the_page(vm: &mut Vm, net_ns: &str) {
    let from_tenant = format!("nsenter --net=/run/netns/{net_ns}");
    let page = until_ok(vm, &http_get(&from_tenant, "10.20.1.5", 8080, "/"), SHELL);
    assert!(page.contains("served-from-a-container"), "{page}");
}

fn deployment(dir: &Path, image: &str) -> std::path::PathBuf {
    let file = dir.join("web.toml");
    std::fs::write(
        &file,
        format!(
            r#"version = 1
[[workloads]]
name = "net"
spec.network.ip_range = "10.20.0.0/16"
spec.network.subnet = "10.20.1.0/24"
spec.network.private_key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
spec.network.listen_port = 51820
spec.network.peers = []

[[workloads]]
name = "web"
[workloads.spec.container]
image = "{image}"
cmd = ["/bin/sh", "-c", "echo hello-from-container; exec httpd -f -p 8080 -h /www"]
cpu = 1
memory = "64M"
network = "net"
ip = "10.20.1.5"

[[workloads]]
name = "hog"
[workloads.spec.container]
image = "{image}"
cmd = ["/bin/sh", "-c", "echo hog-start; x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo hog-survived"]
cpu = 1
memory = "32M"
network = "net"
ip = "10.20.1.6"
restart = "on-failure"
"#
        ),
    )
    .expect("deployment file");
    file
}

#[test]
fn vm_container_pull_run_isolate_survive_cancel() {
    let reg = Registry::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(push_image(&reg, "cellos/box", Some("1"), &busybox_image()));
    let port = reg.addr.rsplit(':').next().expect("port").to_string();
    let guest_ref = format!("10.0.2.2:{port}/cellos/box:1");

    let ledger = Ledger::start(free_port());
    let enroll = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let farm = ledger.farm(&enroll);
    let mut params = boot_params(farm, &ledger.guest_url(), &enroll);
    params.extra.push_str(&format!(
        " cellos.debug cellos.registry.insecure=10.0.2.2:{port}"
    ));
    let forwarded_api = free_port();
    let work = tempfile::tempdir().expect("work dir");
    let boot = |disks: Vec<Disk>, dir: &Path| {
        let mut cfg = vm_config(image().direct(&params), disks);
        cfg.hostfwd = vec![HostFwd {
            protocol: Protocol::Tcp,
            host_port: forwarded_api,
            guest_port: NODE_API_PORT,
        }];
        cfg.work_dir = Some(dir.to_path_buf());
        start(cfg)
    };
    let mut vm = boot(
        vec![Disk::new(20 * GIB, DiskKind::Ssd)],
        &work.path().join("first"),
    );
    let line = vm
        .wait_for(&Regex::new(REGISTERED).expect("regex"), BOOT_TIMEOUT)
        .expect("registers");
    let (node, _, _) = registered(&line);

    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("user.key");
    let url = format!("http://{}", ledger.addr);
    let cli = |args: &[&str]| {
        let (ok, out, err) = cellos_cli(args, &url, &key);
        assert!(ok, "cellos {args:?} failed:\n{out}\n{err}");
        out
    };
    cli(&["key", "new"]);
    cli(&["account", "create"]);
    cli(&["account", "fund", "10000000"]);
    let file = deployment(dir.path(), &guest_ref);
    let t = Instant::now();
    let out = cli(&[
        "--json",
        "deploy",
        file.to_str().expect("path"),
        "--node",
        &node.to_string(),
    ]);
    eprintln!(
        "figure: contract to a running container (cold cache, over TCG): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("deploy --json");
    let contract = v["contract"]["id"].as_u64().expect("contract id");
    let web = v["result"]["workloads"]
        .as_array()
        .expect("workloads")
        .iter()
        .find(|w| w["name"] == "web")
        .expect("the container's result")
        .clone();
    assert_eq!(web["state"], "ok", "{web}");
    let pid = web["data"]["pid"].as_str().expect("pid").to_string();
    assert_ne!(pid, "0", "{web}");
    let name = format!("c{contract}-web");
    let net_ns = v["result"]["workloads"][0]["data"]["namespace"]
        .as_str()
        .expect("namespace")
        .to_string();

    // It runs, and its owner reads what it printed with `cellos logs`; nobody else can.
    let state = format!("crun --root /run/cellos/containers/crun state {name}");
    let (_, s) = sh(&mut vm, &state);
    assert!(s.contains("\"running\""), "{s}");
    let api = format!("http://127.0.0.1:{forwarded_api}");
    let logs = cli(&["logs", &contract.to_string(), "web", "--api", &api]);
    assert!(logs.contains("hello-from-container"), "{logs}");
    let stranger = dir.path().join("stranger.key");
    let (made, _, _) = cellos_cli(&["key", "new"], &url, &stranger);
    assert!(made, "a second key");
    let (ok, out, err) = cellos_cli(
        &["logs", &contract.to_string(), "web", "--api", &api],
        &url,
        &stranger,
    );
    assert!(
        !ok && !out.contains("hello"),
        "a stranger read the logs: {out} {err}"
    );
    assert!(err.contains("no deployment"), "{err}");

    // The hog goes past its 32 MiB: OOM-killed and restarted (on-failure), while
    // the web container keeps its pid and the node keeps answering.
    let t = Instant::now();
    loop {
        let hog = cli(&["logs", &contract.to_string(), "hog", "--api", &api]);
        if hog.matches("hog-start").count() >= 2 {
            assert!(hog.contains("killed for lack of memory"), "{hog}");
            assert!(hog.contains("restarting in"), "{hog}");
            assert!(!hog.contains("hog-survived"), "{hog}");
            break;
        }
        // Generous: under TCG on a busy host the hog fills its 32 MiB slowly.
        if t.elapsed() > Duration::from_secs(300) {
            let (_, diag) = sh(
                &mut vm,
                &format!(
                    "crun --root /run/cellos/containers/crun state c{contract}-hog; cat /sys/fs/cgroup/cellos/c{contract}-hog/memory.events /sys/fs/cgroup/cellos/c{contract}-hog/memory.max /sys/fs/cgroup/cellos/c{contract}-hog/memory.current /sys/fs/cgroup/cgroup.subtree_control; ls /run/cellos/exits; ps"
                ),
            );
            let console = vm.console();
            let tail = console
                .get(console.len().saturating_sub(3000)..)
                .unwrap_or_default();
            panic!("the hog was not restarted: {hog}\n{diag}\n{tail}");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let (_, s) = sh(&mut vm, &state);
    assert!(
        s.contains(&format!("\"pid\": {pid}")),
        "the web container was hit: {s}"
    );

    // The tenant's namespace reaches its web server on the network.
    serves_the_page(&mut vm, &net_ns);
    // The container reaches its gateway but not the node's API, on any address.
    let in_container = format!("nsenter --target {pid} --net");
    let (gw, out) = sh(&mut vm, &format!("{in_container} ping -c 1 -W 2 10.20.1.1"));
    assert_eq!(gw, 0, "the container cannot ping its gateway: {out}");
    // The same request from the node's own namespace is answered: the check works.
    let (status, out) = sh(
        &mut vm,
        &http_get("", "10.0.2.15", NODE_API_PORT, "/v1/status"),
    );
    assert!(
        status == 0 && out.contains("200"),
        "the node API does not answer the node: {out}"
    );
    for target in ["10.0.2.15", "10.20.1.1", "127.0.0.1"] {
        let (_, out) = sh(
            &mut vm,
            &http_get(&in_container, target, NODE_API_PORT, "/v1/status"),
        );
        assert!(
            !out.contains("HTTP/"),
            "the container reached the node API at {target}: {out}"
        );
    }

    // cellosd killed: the container keeps running with the same pid, and the
    // restarted cellosd (init supervises it) reports it.
    sh(&mut vm, "kill -9 $(pidof cellosd)");
    until_ok(&mut vm, "pidof cellosd", SHELL);
    let (_, s) = sh(&mut vm, &state);
    assert!(
        s.contains("\"running\"") && s.contains(&format!("\"pid\": {pid}")),
        "{s}"
    );

    // Reboot: the containers come back from the node's cache, no blob fetched again.
    let gets = reg.blob_gets();
    let disks: Vec<Disk> = vm
        .disks()
        .iter()
        .map(|p| Disk::existing(p.clone(), DiskKind::Ssd))
        .collect();
    vm.quit().expect("quit");
    drop(vm);
    let mut vm = boot(disks, &work.path().join("again"));
    vm.wait_for(&Regex::new(REGISTERED).expect("regex"), BOOT_TIMEOUT)
        .expect("registers again");
    until_ok(
        &mut vm,
        &format!("{state} | grep -q '\"running\"'"),
        BOOT_TIMEOUT,
    );
    assert_eq!(
        reg.blob_gets(),
        gets,
        "blobs were fetched again after the reboot"
    );
    serves_the_page(&mut vm, &net_ns);

    // Cancel: container, root, log and namespace are gone.
    cli(&["contract", "cancel", &contract.to_string()]);
    let gone = format!(
        "{state} >/dev/null 2>&1 && echo container-alive; ls /run/netns /mnt/ssd0/containers/layers/roots /mnt/ssd0/containers/logs"
    );
    let t = Instant::now();
    loop {
        let (_, s) = sh(&mut vm, &gone);
        if !s.contains("container-alive") && !s.contains(&name) && !s.contains(&net_ns) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "not removed after cancel: {s}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }

    // A hostile image (a layer writing ../../etc/passwd) is refused with the reason on
    // the ledger, and nothing outside its root changed.
    let (_, passwd) = sh(&mut vm, "cat /etc/passwd");
    let mut evil = busybox_image();
    evil.layers.push(layer(
        &tar(&[Entry::File(
            "../../etc/passwd",
            b"pwned::0:0::/:/bin/sh\n",
            0o644,
        )]),
        Compression::Gzip,
    ));
    rt.block_on(push_image(&reg, "cellos/evil", Some("1"), &evil));
    let file = deployment(dir.path(), &format!("10.0.2.2:{port}/cellos/evil:1"));
    let (ok, out, err) = cellos_cli(
        &[
            "deploy",
            file.to_str().expect("path"),
            "--node",
            &node.to_string(),
        ],
        &url,
        &key,
    );
    assert!(!ok, "a hostile image was deployed: {out}");
    assert!(
        err.contains("..") && err.contains("etc/passwd"),
        "no reason given: {err}"
    );
    let (_, after) = sh(&mut vm, "cat /etc/passwd");
    assert_eq!(after, passwd, "/etc/passwd changed");
    let (_, left) = sh(&mut vm, "ls /mnt/ssd0/containers/layers/roots /run/netns");
    assert!(
        left.split_whitespace()
            .all(|n| n.ends_with(':') || n.is_empty()),
        "left behind: {left}"
    );
    let _ = vm.powerdown();
}
