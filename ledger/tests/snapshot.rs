//! State snapshots: start-up resumes from one that checks out and replays only the
//! blocks after it; one that does not check out is ignored; `replay` with checks
//! (what `cellos ledger verify` runs) refuses a snapshot start-up would take that
//! the chain does not lead to.

use std::sync::Arc;

use cellos_ledger::chain::{replay, save_snapshot, ChainError, StateSnapshot};
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::store::{MemStore, Store};
use cellos_ledger::*;
use ed25519_dalek::SigningKey;

const CHAIN: &str = "snap";

fn open(store: &Arc<MemStore>, key: &SigningKey) -> Chain {
    Chain::open(
        store.clone(),
        key.clone(),
        ChainParams::new(CHAIN, true),
        100,
    )
    .expect("open")
}

/// A chain of `blocks` blocks, one faucet transaction each, with a snapshot at `at`.
fn chain_with_snapshot(blocks: u64, at: u64) -> (Arc<MemStore>, SigningKey, Chain) {
    let store = Arc::new(MemStore::default());
    let key = keys::generate();
    let mut chain = open(&store, &key);
    let mut s = Signer::new(keys::generate(), CHAIN);
    for h in 1..=blocks {
        let amount = if h == 1 { EXISTENTIAL_DEPOSIT } else { 1 };
        let tx = s
            .sign(TxBody::Faucet { amount })
            .into_verified()
            .expect("signed");
        let r = chain.commit(vec![tx], 100 + h).expect("commit");
        assert!(r[0].is_ok());
        if h == at {
            save_snapshot(store.as_ref(), &chain.view().load()).expect("save");
        }
    }
    (store, key, chain)
}

fn saved(store: &MemStore) -> StateSnapshot {
    postcard::from_bytes(&store.snapshot().expect("read").expect("a snapshot")).expect("decodes")
}

fn put(store: &MemStore, s: &StateSnapshot) {
    store
        .put_snapshot(&postcard::to_stdvec(s).expect("encode"))
        .expect("put");
}

#[test]
fn start_up_resumes_from_the_snapshot() {
    let (store, key, chain) = chain_with_snapshot(30, 20);
    let again = open(&store, &key);
    assert_eq!(again.resumed_from(), 20);
    assert_eq!(again.state().height(), 30);
    assert_eq!(again.head(), chain.head());
    assert_eq!(again.state().digest(), chain.state().digest());
    let r = replay(store.as_ref(), true, &mut |_, _| {}).expect("verifies");
    assert_eq!(r.state.digest(), chain.state().digest());
}

#[test]
fn a_snapshot_that_does_not_check_out_is_not_used() {
    let (store, key, chain) = chain_with_snapshot(30, 20);
    let good = saved(&store);
    // Damaged bytes: they no longer hash to the digest.
    let mut damaged = saved(&store);
    let last = damaged.state.len() - 1;
    damaged.state[last] ^= 1;
    // Another block at its height: not this chain's state.
    let elsewhere = StateSnapshot {
        head: Hash([7; 32]),
        ..saved(&store)
    };
    // Beyond the chain.
    let ahead = StateSnapshot {
        height: 31,
        ..saved(&store)
    };
    for bad in [damaged, elsewhere, ahead] {
        put(&store, &bad);
        let again = open(&store, &key);
        assert_eq!(again.resumed_from(), 0, "{bad:?} was used");
        assert_eq!(again.state().digest(), chain.state().digest());
        // Nothing uses it, so it is no reason to fail verify (an accepted rollback
        // leaves one beyond the chain).
        replay(store.as_ref(), true, &mut |_, _| {}).expect("verifies");
    }
    put(&store, &good);
    assert_eq!(open(&store, &key).resumed_from(), 20);
}

#[test]
fn verify_refuses_a_forged_state_start_up_would_take() {
    let (store, key, _) = chain_with_snapshot(30, 20);
    let good = saved(&store);
    // A state with money the chain never made, hashed right, at the right block.
    let mut state: State = postcard::from_bytes(&good.state).expect("state");
    let mut mallory = Signer::new(keys::generate(), CHAIN);
    let forged = mallory
        .sign(TxBody::Faucet {
            amount: EXISTENTIAL_DEPOSIT,
        })
        .into_verified()
        .expect("signed");
    state.apply(&forged).expect("applies");
    let bytes = postcard::to_stdvec(&state).expect("encode");
    put(
        &store,
        &StateSnapshot {
            digest: Hash::of(&bytes),
            state: bytes,
            ..good
        },
    );
    // Start-up cannot tell (it trusts the store as it trusts the blocks)...
    assert_eq!(open(&store, &key).resumed_from(), 20);
    // ...but verify replays the chain and compares.
    let refused = replay(store.as_ref(), true, &mut |_, _| {});
    assert!(
        matches!(refused, Err(ChainError::Snapshot { height: 20, .. })),
        "verify accepted a forged snapshot"
    );
}

/// The server saves a snapshot every `snapshot_every` blocks, and the next start
/// on its store begins there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_saves_snapshots() {
    use cellos_ledger::client::Client;
    use cellos_ledger::server::{Config, Server};

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(MemStore::default());
    let cfg = Config {
        data: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        params: ChainParams::new(CHAIN, true),
        snapshot_every: 3,
        ..Default::default()
    };
    let srv = Server::bind_with_store(cfg, store.clone())
        .await
        .expect("bind");
    let c = Client::new(&srv.url().expect("url")).expect("client");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(srv.run(async {
        let _ = stopped.await;
    }));
    let mut s = Signer::new(keys::generate(), CHAIN);
    for k in 0..8 {
        let amount = if k == 0 { EXISTENTIAL_DEPOSIT } else { 1 };
        c.submit(&s.sign(TxBody::Faucet { amount }))
            .await
            .expect("submit");
    }
    // Saved on a thread of its own, a moment after the block.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let snap = loop {
        if let Some(b) = store.snapshot().expect("read") {
            let s: StateSnapshot = postcard::from_bytes(&b).expect("decodes");
            if s.height >= 6 {
                break s;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot at block 6 or later"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let _ = stop.send(());
    server.await.expect("server").expect("run");
    let key = keys::load(&dir.path().join("ledger.key")).expect("ledger key");
    let again = tokio::task::spawn_blocking(move || open(&store, &key))
        .await
        .expect("open");
    assert_eq!(again.resumed_from(), snap.height);
    assert_eq!(again.state().height(), 8);
}
