//! Queries never wait for a commit's fsync (issue 12, item 5).
//!
//! The ledger's committer used to hold the chain's write lock while the store
//! fsynced, and every query waited on that lock, blocking a tokio worker with it. A
//! store that takes seconds to commit shows it: while a block is being written,
//! status, accounts and farms must still be answered at once, from the last durable
//! state.

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
