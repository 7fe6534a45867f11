//! Queries never wait for a commit's fsync (issue 12, item 5).
//!
//! The ledger's committer used to hold the chain's write lock while the store
//! fsynced, and every query waited on that lock, blocking a tokio worker with it. A
//! store that takes seconds to commit shows it: while a block is being written,
//! status, accounts and farms must still be answered at once, from the last durable
//! state.
//!
//! Also what the explorer reads: lists paged by `offset`/`limit` with their total
//! in `X-Total-Count`, and the explorer's own files beside the API.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellos_ledger::block::{Block, BlockEvents, Genesis};
use cellos_ledger::client::Client;
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::server::{Config, Server};
use cellos_ledger::store::{MemStore, Store, StoreError};
use cellos_ledger::*;

/// How long the slow store takes to commit a block.
const COMMIT: Duration = Duration::from_secs(3);
/// A generous bound for a query answered from memory.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// A store whose appends take [`COMMIT`] while `slow` is set, like a disk whose
/// fsync stalls.
#[derive(Default)]
struct SlowStore {
    inner: MemStore,
    slow: AtomicBool,
    appending: AtomicBool,
    /// The next append fails (after the block is stored, as an fsync error can).
    fail: AtomicBool,
}

impl Store for SlowStore {
    fn genesis(&self) -> Result<Option<Genesis>, StoreError> {
        self.inner.genesis()
    }
    fn init(&self, genesis: &Genesis) -> Result<(), StoreError> {
        self.inner.init(genesis)
    }
    fn append(&self, block: &Block, events: &BlockEvents) -> Result<(), StoreError> {
        self.appending.store(true, Ordering::SeqCst);
        if self.slow.load(Ordering::SeqCst) {
            std::thread::sleep(COMMIT);
        }
        let r = self.inner.append(block, events);
        self.appending.store(false, Ordering::SeqCst);
        if self.fail.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Io("injected fsync failure".into()));
        }
        r
    }
    fn height(&self) -> Result<u64, StoreError> {
        self.inner.height()
    }
    fn blocks(&self, from: u64, limit: usize) -> Result<Vec<Block>, StoreError> {
        self.inner.blocks(from, limit)
    }
    fn events(&self, from: u64, limit: usize) -> Result<Vec<BlockEvents>, StoreError> {
        self.inner.events(from, limit)
    }
    fn put_blob(&self, hash: &Hash, data: &[u8]) -> Result<(), StoreError> {
        self.inner.put_blob(hash, data)
    }
    fn get_blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_blob(hash)
    }
}

async fn within<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> T {
    let t = Instant::now();
    let r = tokio::time::timeout(ANSWER_WITHIN, f)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what} was not answered within {ANSWER_WITHIN:?} while a block was being written"
            )
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!("{what} answered in {:?} during the commit", t.elapsed());
    r
}

// One worker thread: a handler that blocked its worker would block every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn queries_are_answered_while_a_block_is_fsynced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SlowStore::default());
    let cfg = Config {
        data: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        params: ChainParams::new("slow", true),
        ..Default::default()
    };
    let srv = Server::bind_with_store(cfg, store.clone())
        .await
        .expect("bind");
    let url = format!("http://{}", srv.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(srv.run(async {
        let _ = stopped.await;
    }));
    let c = Client::new(&url).expect("client");
    let mut user = Signer::new(keys::generate(), "slow");
    c.submit(&user.sign(TxBody::Faucet {
        amount: EXISTENTIAL_DEPOSIT,
    }))
    .await
    .expect("open an account");
    let before = c.status().await.expect("status").height;

    store.slow.store(true, Ordering::SeqCst);
    let tx = user.sign(TxBody::Faucet { amount: 5 });
    let c2 = c.clone();
    let started = Instant::now();
    let slow_submit = tokio::spawn(async move { c2.submit(&tx).await });
    while !store.appending.load(Ordering::SeqCst) {
        assert!(started.elapsed() < COMMIT, "the commit never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The committer is inside the store's append now.
    let st = within("status", c.status()).await;
    assert_eq!(
        st.height, before,
        "a block that is not durable yet is visible"
    );
    let acct = within("account", c.account(&user.public_key())).await;
    assert_eq!(acct.balance, EXISTENTIAL_DEPOSIT);
    within("farms", c.farms()).await;
    within("digest", c.digest()).await;
    assert!(
        store.appending.load(Ordering::SeqCst),
        "the queries should have run while the block was being written"
    );

    let receipt = slow_submit
        .await
        .expect("join")
        .expect("the slow transaction");
    assert!(started.elapsed() >= COMMIT);
    assert_eq!(receipt.height, before + 1);
    // Once durable, it is visible.
    let acct = c.account(&user.public_key()).await.expect("account");
    assert_eq!(acct.balance, EXISTENTIAL_DEPOSIT + 5);
    assert_eq!(c.status().await.expect("status").height, before + 1);

    // And the next commits work on the copy that was published before.
    store.slow.store(false, Ordering::SeqCst);
    for amount in [1, 2, 3] {
        c.submit(&user.sign(TxBody::Faucet { amount }))
            .await
            .expect("faucet");
    }
    let acct = c.account(&user.public_key()).await.expect("account");
    assert_eq!(acct.balance, EXISTENTIAL_DEPOSIT + 5 + 6);
    let _ = stop.send(());
    let _ = server.await;
}

/// The two copies of the state (published, and the committer's working copy one
/// block behind) stay the state a replay of the store gives, also when readers hold
/// old snapshots across commits and when an append fails after the block was stored.
#[test]
fn published_state_is_always_the_replayed_one() {
    use cellos_ledger::chain::{replay, Chain};

    let store = Arc::new(SlowStore::default());
    let mut chain = Chain::open(
        store.clone(),
        keys::generate(),
        ChainParams::new("copies", true),
        1_000,
    )
    .expect("chain");
    let view = chain.view();
    let mut users: Vec<Signer> = (0..3)
        .map(|_| Signer::new(keys::generate(), "copies"))
        .collect();
    let mut held = Vec::new();
    let check = |chain: &Chain| {
        let r = replay(store.as_ref(), false, &mut |_, _| {}).expect("replay");
        assert_eq!(chain.state().digest(), r.state.digest());
        assert_eq!(chain.head(), r.head);
        assert_eq!(view.load().state().digest(), r.state.digest());
    };
    for round in 0..12u64 {
        let batch = users
            .iter_mut()
            .enumerate()
            .map(|(i, u)| {
                let amount = if round == 0 {
                    EXISTENTIAL_DEPOSIT
                } else {
                    round * 10 + i as u64
                };
                u.sign(TxBody::Faucet { amount })
                    .into_verified()
                    .expect("signed")
            })
            .collect();
        if round % 3 == 1 {
            // A reader keeps the snapshot of this round across the next commit.
            held.push(view.load());
        }
        if round == 7 {
            store.fail.store(true, Ordering::SeqCst);
            assert!(chain.commit(batch, 2_000 + round).is_err());
        } else {
            let r = chain.commit(batch, 2_000 + round).expect("commit");
            assert!(r.iter().all(Result::is_ok), "{r:?}");
        }
        check(&chain);
    }
    // The failed append had stored its block: the state is rebuilt with it.
    assert_eq!(chain.state().height(), 12);
    // Old snapshots are untouched by later commits.
    for (i, s) in held.iter().enumerate() {
        assert_eq!(s.state().height(), 3 * i as u64 + 1);
    }
}

/// A ledger on a free port over a [`MemStore`], for the read tests below: its URL,
/// a client, and what stops it.
async fn memory_ledger(
    chain: &str,
) -> (
    tempfile::TempDir,
    String,
    Client,
    tokio::sync::oneshot::Sender<()>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = Config {
        data: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        params: ChainParams::new(chain, true),
        ..Default::default()
    };
    let srv = Server::bind_with_store(cfg, Arc::new(MemStore::default()))
        .await
        .expect("bind");
    let url = srv.url().expect("url");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(srv.run(async {
        let _ = stopped.await;
    }));
    let c = Client::new(&url).expect("client");
    (dir, url, c, stop)
}

/// GET `path`: the status, the `X-Total-Count` header and the body as JSON.
async fn get_page(url: &str, path: &str) -> (u16, Option<usize>, serde_json::Value) {
    let r = reqwest::get(format!("{url}{path}")).await.expect("GET");
    let status = r.status().as_u16();
    let total = r
        .headers()
        .get("x-total-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, total, r.json().await.expect("JSON body"))
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|x| x["id"].as_u64().expect("id"))
        .collect()
}

/// Lists page by `offset` and `limit` (what the explorer's tables use) and say how
/// many match in `X-Total-Count`, under every filter; the body stays a plain array.
#[tokio::test]
async fn lists_page_by_offset_with_the_total_in_a_header() {
    let (_dir, url, c, stop) = memory_ledger("paging").await;
    let chain = "paging";
    let mut farmer = Signer::new(keys::generate(), chain);
    c.submit(&farmer.sign(TxBody::Faucet {
        amount: EXISTENTIAL_DEPOSIT,
    }))
    .await
    .expect("farmer account");
    let enroll = keys::generate();
    let mut farms = Vec::new();
    for name in ["paging-a", "paging-b"] {
        let r = c
            .submit(&farmer.sign(TxBody::CreateFarm {
                name: name.into(),
                prices: Prices::default(),
                enrollment_key: Some(keys::public_key(&enroll)),
            }))
            .await
            .expect("farm");
        farms.push(r.events.iter().find_map(Event::farm_created).expect("id"));
    }
    // 15 nodes on the first farm, 10 on the second; 3 of the first on standby.
    let mut nodes = Vec::new();
    for i in 0..25 {
        let farm = farms[usize::from(i >= 15)];
        let mut s = Signer::new(keys::generate(), chain);
        let r = c
            .submit(&s.sign(TxBody::RegisterNode {
                farm,
                capacity: Resources {
                    cru: 4,
                    mru: 8 * GIB,
                    sru: 100 * GIB,
                    hru: 0,
                },
                interfaces: vec![],
                gpus: vec![],
                accel: cellos_ledger::Accel::Tcg,
                encryption_key: keys::encryption_key(s.key()),
                location: None,
                enrollment: Some(EnrollToken::issue(&enroll, chain, farm, u64::MAX)),
                persistent: true,
            }))
            .await
            .expect("register");
        let id = r
            .events
            .iter()
            .find_map(|e| match e {
                Event::NodeRegistered { node, .. } => Some(*node),
                _ => None,
            })
            .expect("node id");
        if i < 3 {
            c.submit(&s.sign(TxBody::SetNodeStatus {
                node: id,
                status: NodeStatus::Standby,
            }))
            .await
            .expect("standby");
        }
        nodes.push(u64::from(id));
    }

    let (st, total, body) = get_page(&url, "/v1/nodes?offset=10&limit=5").await;
    assert_eq!((st, total), (200, Some(25)));
    assert_eq!(ids(&body), nodes[10..15]);
    let (_, total, body) = get_page(
        &url,
        &format!("/v1/nodes?farm={}&offset=8&limit=5", farms[1]),
    )
    .await;
    assert_eq!(total, Some(10));
    assert_eq!(ids(&body), nodes[23..25]);
    // limit=0 is a count.
    let (_, total, body) = get_page(&url, "/v1/nodes?status=standby&limit=0").await;
    assert_eq!(total, Some(3));
    assert_eq!(ids(&body), Vec::<u64>::new());
    let (_, total, body) = get_page(&url, "/v1/nodes?offset=100").await;
    assert_eq!((total, ids(&body).len()), (Some(25), 0));
    // `after` (the clients' cursor) and `offset` combine: offset counts from the cursor.
    let (_, total, body) = get_page(
        &url,
        &format!("/v1/nodes?after={}&offset=1&limit=2", nodes[19]),
    )
    .await;
    assert_eq!(total, Some(5));
    assert_eq!(ids(&body), nodes[21..23]);

    let (_, total, body) = get_page(&url, "/v1/farms?offset=1&limit=1").await;
    assert_eq!(total, Some(2));
    assert_eq!(ids(&body), [u64::from(farms[1])]);
    let (_, total, body) = get_page(&url, "/v1/farms").await;
    assert_eq!((total, ids(&body).len()), (Some(2), 2));

    let mut user = Signer::new(keys::generate(), chain);
    c.submit(&user.sign(TxBody::Faucet { amount: 100_000 }))
        .await
        .expect("user account");
    let node = nodes[5] as NodeId;
    let mut contracts = Vec::new();
    for i in 0..3u8 {
        let r = c
            .submit(&user.sign(TxBody::CreateContract {
                node,
                deployment_hash: Hash::of(&[i]),
                resources: Resources {
                    cru: 1,
                    ..Default::default()
                },
                public_ips: 0,
                deposit: 100,
                blob: None,
            }))
            .await
            .expect("contract");
        contracts.push(
            r.events
                .iter()
                .find_map(|e| match e {
                    Event::ContractCreated { contract, .. } => Some(*contract),
                    _ => None,
                })
                .expect("contract id"),
        );
    }
    let (_, total, body) = get_page(
        &url,
        &format!("/v1/contracts?node={node}&open=true&offset=1&limit=1"),
    )
    .await;
    assert_eq!(total, Some(3));
    assert_eq!(ids(&body), [contracts[1]]);
    let (_, total, _) = get_page(&url, &format!("/v1/contracts?owner={}", user.public_key())).await;
    assert_eq!(total, Some(3));

    let (st, _, body) = get_page(&url, "/v1/nodes?offset=-1").await;
    assert_eq!(st, 400, "{body}");
    let _ = stop.send(());
}

/// The explorer's files are served under `/` with their types and a strict CSP;
/// unknown paths are 404s, `/v1` is untouched, and nothing there takes a write.
#[tokio::test]
async fn explorer_files_are_served_beside_the_api() {
    let (_dir, url, _c, stop) = memory_ledger("explorer").await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{url}{path}")).send();

    let r = get("/").await.expect("GET /");
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let header = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert!(
        header("content-security-policy").starts_with("default-src 'self';"),
        "{h:?}"
    );
    assert_eq!(header("x-content-type-options"), "nosniff");
    let etag = header("etag");
    assert!(etag.len() > 2, "{h:?}");
    let page = r.text().await.expect("body");
    assert!(page.contains("<script src=\"/explorer/app.js\""), "{page}");

    for (path, kind) in [
        ("/explorer/app.js", "text/javascript; charset=utf-8"),
        ("/explorer/style.css", "text/css; charset=utf-8"),
        ("/explorer/icon.svg", "image/svg+xml"),
    ] {
        let r = get(path).await.expect("GET");
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], kind, "{path}");
        assert!(r.headers().contains_key("content-security-policy"));
    }
    // A browser that has the page revalidates it for free.
    let r = http
        .get(format!("{url}/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 304);

    for path in [
        "/explorer/nope.js",
        "/explorer/",
        "/explorer/..%2Fledger.key",
        "/index.html",
        "/ledger.key",
        "/v1/nope",
    ] {
        let r = get(path).await.expect("GET");
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = http.post(format!("{url}/")).send().await.expect("POST");
    assert_eq!(r.status(), 405, "the explorer takes no writes");
    let (st, _, status) = get_page(&url, "/v1/status").await;
    assert_eq!((st, status["chain_id"].as_str()), (200, Some("explorer")));
    let _ = stop.send(());
}
