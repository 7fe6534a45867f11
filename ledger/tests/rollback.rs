//! The ledger never silently serves a shorter chain (issue 12, item 3).
//!
//! When the pages of redb's latest commit are damaged, redb opens the commit before
//! it. These tests damage a stopped store the way a disk does (the latest commit's
//! slot in redb's header, after a crash; or an older copy of the file put back) and
//! check that opening it fails with an error naming the lost block, that an operator
//! can accept the loss, and that a torn head record is not taken for a rollback.

use std::path::Path;
use std::sync::Arc;

use cellos_ledger::chain::Chain;
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::store::{RedbStore, Rollback, StoreError};
use cellos_ledger::*;

const CHAIN: &str = "rollback";

/// Opens the chain in `dir` and commits `blocks` more blocks of one faucet each.
fn grow(dir: &Path, key: &ed25519_dalek::SigningKey, user: &mut Signer, blocks: usize) -> u64 {
    grow_and_crash(dir, key, user, blocks, None)
}

/// [`grow`], and with `crash_image`, a copy of `ledger.redb` taken while the store
/// is still open after the last commit: the file as a power cut would leave it.
/// (A clean close adds a commit of redb's own, which it writes in two phases.)
fn grow_and_crash(
    dir: &Path,
    key: &ed25519_dalek::SigningKey,
    user: &mut Signer,
    blocks: usize,
    crash_image: Option<&Path>,
) -> u64 {
    let store = Arc::new(RedbStore::open(&dir.join("ledger.redb")).expect("open"));
    let mut chain =
        Chain::open(store, key.clone(), ChainParams::new(CHAIN, true), 1_000).expect("chain");
    for i in 0..blocks {
        let amount = if chain.state().account(&user.public_key()).is_none() {
            EXISTENTIAL_DEPOSIT
        } else {
            1
        };
        let tx = user
            .sign(TxBody::Faucet { amount })
            .into_verified()
            .expect("signed");
        let r = chain.commit(vec![tx], 2_000 + i as u64).expect("commit");
        assert!(r[0].is_ok(), "{:?}", r[0]);
    }
    if let Some(image) = crash_image {
        std::fs::copy(dir.join("ledger.redb"), image).expect("crash image");
    }
    chain.state().height()
}

/// Damages the latest commit of a crashed redb file: one byte of its commit slot
/// (redb's header: a god byte choosing the primary of two 128-byte slots). On open,
/// redb's crash repair finds the primary's checksum wrong and falls back to the
/// other slot: the commit before.
fn damage_latest_commit(db: &Path) {
    let mut b = std::fs::read(db).expect("read redb");
    const GOD_BYTE: usize = 9;
    const PRIMARY_BIT: u8 = 1;
    const RECOVERY_REQUIRED: u8 = 2;
    const SLOT_0: usize = 64;
    const SLOT_LEN: usize = 128;
    assert_ne!(b[GOD_BYTE] & RECOVERY_REQUIRED, 0, "not a crash image");
    let primary = usize::from(b[GOD_BYTE] & PRIMARY_BIT);
    b[SLOT_0 + primary * SLOT_LEN + 8] ^= 0x40;
    std::fs::write(db, b).expect("write redb");
}

fn setup() -> (tempfile::TempDir, ed25519_dalek::SigningKey, Signer) {
    let dir = tempfile::tempdir().expect("tempdir");
    (dir, keys::generate(), Signer::new(keys::generate(), CHAIN))
}

#[test]
fn damaged_latest_commit_is_refused_naming_the_lost_block() {
    let (dir, key, mut user) = setup();
    let db = dir.path().join("ledger.redb");
    let crash = dir.path().join("crash.redb");
    assert_eq!(
        grow_and_crash(dir.path(), &key, &mut user, 5, Some(&crash)),
        5
    );
    std::fs::copy(&crash, &db).expect("the power cut");
    damage_latest_commit(&db);

    let e = RedbStore::open(&db)
        .err()
        .expect("a rolled-back store must not open");
    assert!(
        matches!(
            e,
            StoreError::RolledBack {
                recorded: 5,
                store: 4,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("block 5 was acknowledged but gone"), "{msg}");
    assert!(msg.contains("--accept-rollback"), "{msg}");
    // It stays refused: opening does not quietly repair the record.
    assert!(RedbStore::open(&db).is_err());

    // The operator accepts: the chain continues from block 4.
    let (store, accepted) = RedbStore::open_accepting_rollback(&db).expect("accept");
    assert_eq!(
        accepted,
        Some(Rollback {
            recorded: 5,
            store: 4
        })
    );
    drop(store);
    assert_eq!(grow(dir.path(), &key, &mut user, 1), 5);
    assert!(RedbStore::open(&db).is_ok());
}

#[test]
fn an_older_copy_put_back_is_refused() {
    let (dir, key, mut user) = setup();
    let db = dir.path().join("ledger.redb");
    grow(dir.path(), &key, &mut user, 3);
    let old = dir.path().join("old.redb");
    std::fs::copy(&db, &old).expect("copy");
    assert_eq!(grow(dir.path(), &key, &mut user, 2), 5);
    std::fs::copy(&old, &db).expect("put the old copy back");

    let e = RedbStore::open(&db).err().expect("refused");
    assert!(
        e.to_string()
            .contains("blocks 4 to 5 were acknowledged but gone"),
        "{e}"
    );
}

#[test]
fn another_chain_at_the_recorded_height_is_refused() {
    let (dir, key, mut user) = setup();
    let db = dir.path().join("ledger.redb");
    grow(dir.path(), &key, &mut user, 2);
    // A different history of the same length, from another directory.
    let other = tempfile::tempdir().expect("tempdir");
    let mut stranger = Signer::new(keys::generate(), CHAIN);
    grow(other.path(), &key, &mut stranger, 2);
    std::fs::copy(other.path().join("ledger.redb"), &db).expect("swap");

    let e = RedbStore::open(&db).err().expect("refused");
    assert!(
        matches!(e, StoreError::HeadMismatch { height: 2, .. }),
        "{e}"
    );
}

#[test]
fn a_torn_head_record_falls_back_to_its_other_slot() {
    let (dir, key, mut user) = setup();
    let db = dir.path().join("ledger.redb");
    grow(dir.path(), &key, &mut user, 4);
    let head = dir.path().join("ledger.head");
    let mut b = std::fs::read(&head).expect("head record");
    // Block 4 was written to one slot, block 3 to the other; tear the newer one.
    for slot in [0usize, 4096] {
        if b[slot + 24..slot + 32] == 4u64.to_le_bytes() {
            // Half of a write of block 9 got through; its checksum cannot match.
            b[slot + 24..slot + 32].copy_from_slice(&9u64.to_le_bytes());
        }
    }
    std::fs::write(&head, b).expect("write head");
    // The record now says block 3; the store holds 4 (as after a crash between the
    // commit and the record): that is not a rollback, and the record catches up.
    drop(RedbStore::open(&db).expect("open"));
    let b = std::fs::read(&head).expect("head record");
    assert!(
        [0usize, 4096]
            .iter()
            .any(|&s| b[s + 24..s + 32] == 4u64.to_le_bytes()),
        "the record caught up with block 4"
    );

    // Both slots unreadable: refuse rather than guess.
    std::fs::write(&head, vec![0xff; 8192]).expect("write head");
    let e = RedbStore::open(&db).err().expect("refused");
    assert!(matches!(e, StoreError::HeadRecord { .. }), "{e}");
}

/// A store cut short (a truncated copy, a full disk) is an error naming the file, not
/// a panic: redb asserts on it, and the store turns that into `StoreError::Open`.
#[test]
fn a_truncated_store_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keys::generate();
    let mut user = Signer::new(keys::generate(), CHAIN);
    grow(dir.path(), &key, &mut user, 3);
    let db = dir.path().join("ledger.redb");
    let len = std::fs::metadata(&db).expect("stat").len();
    for cut in [100, len / 2] {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .expect("open");
        file.set_len(cut).expect("truncate");
        drop(file);
        match RedbStore::open(&db) {
            Err(StoreError::Open { path, .. }) => assert!(path.ends_with("ledger.redb")),
            Err(e) => panic!("cut at {cut}: another error: {e}"),
            Ok(_) => panic!("cut at {cut}: a truncated store opened"),
        }
    }
}
