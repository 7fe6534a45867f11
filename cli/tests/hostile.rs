//! A real `cellos ledger serve` under attack from this process (issue 11, items 4
//! and 5): connection floods, slowloris heads and bodies, blob floods. Each attack
//! has a bounded size and duration; while it runs, a legitimate client (a fresh
//! connection each time) must still get its status and a transaction answered
//! within 2 s, and the ledger's memory must stay below [`RSS_CAP_KIB`].
//!
//! The tests run one at a time (they share this process's fd limit and the
//! machine's two cores).

mod common;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cellos_ledger::client::Client;
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::*;
use common::LedgerProc;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The ledger's resident memory must stay below this during every attack.
const RSS_CAP_KIB: u64 = 512 * 1024;
/// How long a legitimate request may take while an attack runs.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Raises this process's soft fd limit to its hard limit (the attacks need
/// thousands of sockets).
fn raise_own_fd_limit() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

/// Starts a ledger whose soft fd limit starts at the kernel's default of 1,024, as a
/// service started without help would; the server must raise it itself.
fn start_ledger(dir: &Path, extra: &[&str]) -> LedgerProc {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, 1024.min(hard), hard).expect("lower the fd limit");
    let ledger = LedgerProc::start(dir, extra);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).expect("restore the fd limit");
    raise_own_fd_limit();
    ledger
}

fn addr(ledger: &LedgerProc) -> String {
    ledger.url.trim_start_matches("http://").to_string()
}

fn proc_field(pid: u32, file: &str, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).expect("read /proc");
    text.lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/{file}"))
        .to_string()
}

fn rss_kib(pid: u32) -> u64 {
    proc_field(pid, "status", "VmRSS:")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in kB")
}

fn assert_memory_bounded(ledger: &LedgerProc) {
    let rss = rss_kib(ledger.child.id());
    assert!(
        rss < RSS_CAP_KIB,
        "the ledger holds {rss} KiB, more than the cap of {RSS_CAP_KIB} KiB"
    );
}

/// A legitimate client on a fresh connection: its status and a transaction must be
/// answered within [`ANSWER_WITHIN`] each. The transaction may be refused (the key
/// has no account): what counts is that the committer answered.
async fn legit_client_is_served(url: &str, what: &str) {
    let c = Client::new(url).expect("client");
    let t = Instant::now();
    let st = tokio::time::timeout(ANSWER_WITHIN, c.status())
        .await
        .unwrap_or_else(|_| panic!("{what}: status not answered within 2 s"))
        .unwrap_or_else(|e| panic!("{what}: status failed: {e}"));
    let mut s = Signer::new(keys::generate(), st.chain_id);
    let c = Client::new(url).expect("client");
    let tx = s.sign(TxBody::Faucet { amount: 1 });
    match tokio::time::timeout(ANSWER_WITHIN, c.submit(&tx))
        .await
        .unwrap_or_else(|_| panic!("{what}: transaction not answered within 2 s"))
    {
        Ok(_) => {}
        Err(e) if e.status() == Some(422) => {}
        Err(e) => panic!("{what}: transaction failed: {e}"),
    }
    eprintln!(
        "{what}: status and transaction answered in {:?}",
        t.elapsed()
    );
}

/// Opens `n` connections to `addr` (up to 100 at a time) that send nothing.
async fn idle_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut set = JoinSet::new();
        for _ in 0..(n - out.len()).min(100) {
            let addr = addr.to_string();
            set.spawn(async move { TcpStream::connect(addr).await.expect("connect") });
        }
        while let Some(s) = set.join_next().await {
            out.push(s.expect("join"));
        }
    }
    out
}

/// Sockets the process `pid` holds open.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/pid/fd")
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

/// Waits until the server has closed every connection; returns how many it still
/// held after `within`.
async fn still_open_after(conns: Vec<TcpStream>, within: Duration) -> usize {
    let mut set = JoinSet::new();
    for mut s in conns {
        set.spawn(async move {
            let mut buf = [0u8; 256];
            loop {
                match tokio::time::timeout(within, s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => continue,
                    Err(_) => return false,
                }
            }
        });
    }
    let mut open = 0;
    while let Some(closed) = set.join_next().await {
        if !closed.expect("join") {
            open += 1;
        }
    }
    open
}

#[test]
fn the_ledger_raises_its_own_fd_limit() {
    let _s = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = start_ledger(dir.path(), &[]);
    let line = proc_field(ledger.child.id(), "limits", "Max open files");
    let v: Vec<&str> = line.split_whitespace().collect();
    // "Max open files  <soft>  <hard>  files"
    assert_eq!(
        v[3], v[4],
        "soft limit not raised to the hard limit: {line}"
    );
}

#[test]
fn idle_connection_flood_leaves_room_for_real_clients() {
    let _s = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = start_ledger(dir.path(), &["--header-timeout", "8s"]);
    rt().block_on(async {
        let t = Instant::now();
        let flood = idle_connections(&addr(&ledger), 3000).await;
        eprintln!("3000 idle connections open after {:?}", t.elapsed());
        // The server holds them all (more than its initial fd limit of 1,024)...
        let mut held = 0;
        for _ in 0..50 {
            held = open_sockets(ledger.child.id());
            if held >= 3000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(held >= 3000, "the ledger holds only {held} sockets");
        // ...and still serves real clients.
        legit_client_is_served(&ledger.url, "idle flood").await;
        legit_client_is_served(&ledger.url, "idle flood, again").await;
        assert_memory_bounded(&ledger);
        // The header timeout closes every one of them (8 s, plus slack for 3000).
        let open = still_open_after(flood, Duration::from_secs(14)).await;
        assert_eq!(
            open, 0,
            "{open} idle connections were still open after 14 s"
        );
        legit_client_is_served(&ledger.url, "after the idle flood").await;
    });
}

#[test]
fn connections_over_the_cap_are_refused_at_once_and_the_server_recovers() {
    let _s = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = start_ledger(
        dir.path(),
        &["--max-connections", "300", "--header-timeout", "3s"],
    );
    rt().block_on(async {
        let flood = idle_connections(&addr(&ledger), 1000).await;
        // At most the 300 the server serves stay open; the rest were turned away.
        let t = Instant::now();
        let open = still_open_after(flood, Duration::from_secs(1)).await;
        assert!(
            open <= 300,
            "{open} connections were held open; the cap is 300"
        );
        assert!(
            open > 0,
            "the server should hold the connections under its cap"
        );
        // One over the cap reads a 503 before the close.
        let mut hold = idle_connections(&addr(&ledger), 300).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut extra = TcpStream::connect(addr(&ledger)).await.expect("connect");
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(1), extra.read_to_end(&mut got)).await;
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 503"), "over the cap: {got:?}");
        hold.clear();
        // The held ones time out after 3 s; then a real client is served.
        tokio::time::sleep(Duration::from_secs(4).saturating_sub(t.elapsed())).await;
        legit_client_is_served(&ledger.url, "after the cap was reached").await;
    });
}

/// Connections that each send `head` and then `drip` one byte every 100 ms; returns,
/// for each, how long the server kept it (`None`: still open after `give_up`).
async fn dribble(
    addr: String,
    n: usize,
    head: &'static [u8],
    drip: u8,
    give_up: Duration,
) -> Vec<Option<Duration>> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let addr = addr.clone();
        set.spawn(async move {
            let t = Instant::now();
            let Ok(s) = TcpStream::connect(&addr).await else {
                return Some(t.elapsed());
            };
            let (mut r, mut w) = s.into_split();
            if w.write_all(head).await.is_err() {
                return Some(t.elapsed());
            }
            let mut buf = [0u8; 512];
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while t.elapsed() < give_up {
                tokio::select! {
                    r = r.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return Some(t.elapsed()),
                        Ok(_) => {}
                    },
                    _ = tick.tick() => {
                        if w.write_all(&[drip]).await.is_err() {
                            return Some(t.elapsed());
                        }
                    }
                }
            }
            None
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(r.expect("join"));
    }
    out
}

fn assert_all_cut_off(kept: &[Option<Duration>], bound: Duration, what: &str) {
    let held = kept.iter().filter(|k| k.is_none()).count();
    assert_eq!(held, 0, "{what}: {held} connections were never closed");
    let longest = kept.iter().flatten().max().copied().unwrap_or_default();
    assert!(
        longest <= bound,
        "{what}: a connection was held for {longest:?}, more than {bound:?}"
    );
    eprintln!(
        "{what}: {} connections cut off, the longest after {longest:?}",
        kept.len()
    );
}

#[test]
fn slowloris_heads_are_cut_off_and_clients_still_served() {
    let _s = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = start_ledger(dir.path(), &["--header-timeout", "2s"]);
    rt().block_on(async {
        let attack = tokio::spawn(dribble(
            addr(&ledger),
            1500,
            b"GET /v1/status HTTP/1.1\r\nhost: ledger\r\nx-slow: ",
            b'a',
            Duration::from_secs(15),
        ));
        // Probe while the attack is in full swing.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        legit_client_is_served(&ledger.url, "slowloris heads").await;
        assert_memory_bounded(&ledger);
        let kept = attack.await.expect("attack");
        // 2 s header timeout; slack for 1500 connections on two cores.
        assert_all_cut_off(&kept, Duration::from_secs(5), "slowloris heads");
    });
}

#[test]
fn slowloris_bodies_are_cut_off_and_clients_still_served() {
    let _s = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = start_ledger(dir.path(), &["--body-timeout", "2s"]);
    rt().block_on(async {
        let attack = tokio::spawn(dribble(
            addr(&ledger),
            1500,
            b"POST /v1/tx HTTP/1.1\r\nhost: ledger\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n{",
            b' ',
            Duration::from_secs(15),
        ));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        legit_client_is_served(&ledger.url, "slowloris bodies").await;
        assert_memory_bounded(&ledger);
        let kept = attack.await.expect("attack");
        assert_all_cut_off(&kept, Duration::from_secs(5), "slowloris bodies");
    });
}

// ---- blob mailbox (item 5) ---------------------------------------------------------

/// A funded account (the faucet opens it) with an encryption key.
async fn account(c: &Client) -> Signer {
    let chain = c.status().await.expect("status").chain_id;
    let mut s = Signer::new(keys::generate(), chain);
    c.submit(&s.sign(TxBody::Faucet { amount: 1_000_000 }))
        .await
        .expect("faucet");
    let ek = keys::encryption_key(s.key());
    c.submit(&s.sign(TxBody::CreateAccount {
        encryption_key: Some(ek),
    }))
    .await
    .expect("encryption key");
    s
}

/// A farm with one approved node; returns the node's signer and id.
async fn node(c: &Client) -> (Signer, NodeId) {
    let mut farmer = account(c).await;
    let chain = farmer.chain_id().to_string();
    let enroll = keys::generate();
    let r = c
        .submit(&farmer.sign(TxBody::CreateFarm {
            name: format!(
                "farm-{}",
                farmer.public_key().to_hex().get(..8).unwrap_or("x")
            ),
            prices: Prices {
                cu: 60,
                su: 0,
                nu: 0,
                ipu: 0,
            },
            enrollment_key: Some(keys::public_key(&enroll)),
        }))
        .await
        .expect("farm");
    let farm = r
        .events
        .iter()
        .find_map(Event::farm_created)
        .expect("farm id");
    let mut node = Signer::new(keys::generate(), chain.clone());
    c.submit(&node.sign(TxBody::RegisterNode {
        farm,
        capacity: Resources {
            cru: 4,
            mru: 4 * GIB,
            sru: 20 * GIB,
            hru: 0,
        },
        interfaces: vec![],
        gpus: vec![],
        accel: cellos_ledger::Accel::Tcg,
        encryption_key: keys::encryption_key(node.key()),
        location: None,
        enrollment: Some(EnrollToken::issue(&enroll, &chain, farm, u64::MAX)),
        persistent: true,
    }))
    .await
    .expect("register");
    let id = c
        .node_by_key(&node.public_key())
        .await
        .expect("query")
        .expect("node")
        .id;
    (node, id)
}

/// A contract on `node` whose deployment blob is `blob`.
async fn contract(c: &Client, user: &mut Signer, node: NodeId, blob: Hash) -> ContractId {
    let r = c
        .submit(&user.sign(TxBody::CreateContract {
            node,
            deployment_hash: Hash::of(b"deployment"),
            resources: Resources {
                cru: 1,
                ..Default::default()
            },
            public_ips: 0,
            deposit: 10_000,
            blob: Some(blob),
        }))
        .await
        .expect("contract");
    r.events
        .iter()
        .find_map(|e| e.contract())
        .expect("contract id")
}

async fn put_raw(url: &str, data: Vec<u8>, headers: &[(&'static str, String)]) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .put(format!("{url}/v1/blobs/{}", Hash::of(&data)))
        .body(data);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.expect("put");
    (r.status().as_u16(), r.text().await.expect("text"))
}

#[test]
fn anonymous_and_unknown_uploads_are_refused() {
    let _s = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = start_ledger(dir.path(), &[]);
    rt().block_on(async {
        let c = Client::new(&ledger.url).expect("client");
        let data = b"sealed deployment".to_vec();
        let h = Hash::of(&data);
        let chain = c.status().await.expect("status").chain_id;
        let now = c.status().await.expect("status").time;

        let (st, body) = put_raw(&ledger.url, data.clone(), &[]).await;
        assert_eq!(st, 401, "anonymous: {body}");
        assert!(body.contains("not signed"), "{body}");

        let stranger = keys::generate();
        let auth = blob::sign(&stranger, &chain, &h, now);
        let (st, body) = put_raw(&ledger.url, data.clone(), &auth.headers()).await;
        assert_eq!(st, 403, "unknown key: {body}");
        assert!(body.contains("has no account"), "{body}");

        let user = account(&c).await;
        // Signed for another blob, another chain, or long ago: refused.
        for (what, auth) in [
            (
                "other blob",
                blob::sign(user.key(), &chain, &Hash::of(b"x"), now),
            ),
            ("other chain", blob::sign(user.key(), "elsewhere", &h, now)),
            ("stale", blob::sign(user.key(), &chain, &h, now - 3600)),
        ] {
            let (st, body) = put_raw(&ledger.url, data.clone(), &auth.headers()).await;
            assert_eq!(st, 401, "{what}: {body}");
        }
        assert_eq!(
            c.get_blob(&h).await.unwrap_err().status(),
            Some(404),
            "nothing was stored"
        );

        // The account itself, through the client: stored.
        let got = c.put_blob(&user, data.clone()).await.expect("put");
        assert_eq!(got, h);
        assert_eq!(c.get_blob(&h).await.expect("get"), data);
    });
}

#[test]
fn blob_flood_from_one_account_stops_at_the_quota() {
    let _s = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // The defaults: 16 blobs or 64 MiB waiting for a contract per account.
    let ledger = start_ledger(dir.path(), &[]);
    let mailbox = dir.path().join("mailbox");
    rt().block_on(async {
        let c = Client::new(&ledger.url).expect("client");
        let attacker = std::sync::Arc::new(account(&c).await);
        let mut blob = vec![0u8; 4 << 20];
        let mut set = JoinSet::new();
        let t = Instant::now();
        let mut probe_at = 100;
        let (mut stored, mut refused) = (0, 0);
        for i in 0u32..750 {
            blob[..4].copy_from_slice(&i.to_le_bytes());
            let (c, a, data) = (c.clone(), attacker.clone(), blob.clone());
            set.spawn(async move { c.put_blob(&a, data).await });
            // Four uploads in flight at a time.
            while set.len() >= 4 {
                match set.join_next().await.expect("task").expect("join") {
                    Ok(_) => stored += 1,
                    Err(e) => {
                        assert_eq!(e.status(), Some(429), "{e}");
                        assert!(e.to_string().contains("waiting for a contract"), "{e}");
                        refused += 1;
                    }
                }
            }
            if i == probe_at {
                legit_client_is_served(&ledger.url, "blob flood").await;
                assert_memory_bounded(&ledger);
                probe_at += 250;
            }
        }
        while let Some(r) = set.join_next().await {
            match r.expect("join") {
                Ok(_) => stored += 1,
                Err(e) => {
                    assert_eq!(e.status(), Some(429), "{e}");
                    refused += 1;
                }
            }
        }
        eprintln!(
            "blob flood: {stored} stored, {refused} refused in {:?}",
            t.elapsed()
        );
        assert_eq!(stored, 16, "the quota is 16 blobs or 64 MiB");
        assert_eq!(refused, 750 - 16);
        let size: u64 = std::fs::read_dir(mailbox.join("blobs"))
            .expect("mailbox")
            .map(|e| e.expect("entry").metadata().expect("meta").len())
            .sum::<u64>()
            + std::fs::metadata(mailbox.join("mailbox.redb"))
                .expect("mailbox.redb")
                .len();
        assert!(
            size <= (64 << 20) + (4 << 20),
            "the mailbox grew to {size} bytes for 16 blobs of 4 MiB"
        );
        // The quota is per account: another one still uploads.
        let other = account(&c).await;
        c.put_blob(&other, b"small".to_vec())
            .await
            .expect("another account's upload");
        legit_client_is_served(&ledger.url, "after the blob flood").await;
    });
}

#[test]
fn blobs_expire_unless_a_contract_names_them_and_go_after_it_closes() {
    let _s = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = start_ledger(
        dir.path(),
        &["--blob-pending-ttl", "3s", "--blob-retention", "2s"],
    );
    rt().block_on(async {
        let c = Client::new(&ledger.url).expect("client");
        let mut user = account(&c).await;
        let (node_signer, node) = node(&c).await;
        let deployment = c
            .put_blob(&user, b"sealed deployment".to_vec())
            .await
            .expect("put");
        let stray = c
            .put_blob(&user, b"never named".to_vec())
            .await
            .expect("put");
        let k = contract(&c, &mut user, node, deployment).await;
        // The node answers with a result blob (a node may upload too).
        let result = c
            .put_blob(&node_signer, b"sealed results".to_vec())
            .await
            .expect("node's upload");
        let mut node_signer = node_signer;
        c.submit(&node_signer.sign(TxBody::AcceptContract {
            contract: k,
            deployment_hash: Hash::of(b"deployment"),
            result: Some(result),
        }))
        .await
        .expect("accept");

        // Past the pending time: the stray blob is gone, the named ones stay.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(c.get_blob(&stray).await.unwrap_err().status(), Some(404));
        assert!(c.get_blob(&deployment).await.is_ok(), "deployment blob");
        assert!(c.get_blob(&result).await.is_ok(), "result blob");

        // Closed: still there right after (the owner may fetch the results)...
        c.submit(&user.sign(TxBody::CancelContract { contract: k }))
            .await
            .expect("cancel");
        assert!(c.get_blob(&result).await.is_ok(), "right after the close");
        // ...and gone after the retention period.
        let t = Instant::now();
        loop {
            let d = c.get_blob(&deployment).await;
            let r = c.get_blob(&result).await;
            if let (Err(d), Err(r)) = (&d, &r) {
                assert_eq!(d.status(), Some(404), "{d}");
                assert_eq!(r.status(), Some(404), "{r}");
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "the blobs of a closed contract are still there after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            t.elapsed() >= Duration::from_secs(1),
            "removed before the retention period: {:?}",
            t.elapsed()
        );
    });
}
