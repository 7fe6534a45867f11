//! Accounts: the faucet, transfers, the existential deposit, nonces and signatures.

use super::*;

#[test]
fn accounts_faucet_and_transfer() {
    const ED: Amount = EXISTENTIAL_DEPOSIT;
    let mut w = World::new(true);
    let mut a = account(&mut w, 500);
    let mut b = account(&mut w, 0);
    assert_eq!(w.balance(&a), ED + 500);
    // CreateAccount again only records another encryption key.
    let ev = w.ok(
        &mut a,
        TxBody::CreateAccount {
            encryption_key: None,
        },
    );
    assert_eq!(
        ev,
        vec![Event::AccountKeySet {
            account: a.public_key()
        }]
    );
    assert_eq!(
        w.st.account(&a.public_key()).expect("a").encryption_key,
        None
    );
    w.ok(
        &mut a,
        TxBody::Transfer {
            to: b.public_key(),
            amount: 200,
        },
    );
    assert_eq!((w.balance(&a), w.balance(&b)), (ED + 300, ED + 200));
    // The existential deposit stays: b can spend 200, not 201.
    assert_eq!(
        w.err(
            &mut b,
            TxBody::Transfer {
                to: a.public_key(),
                amount: 201
            }
        ),
        TxError::InsufficientBalance {
            have: ED + 200,
            need: ED + 201
        }
    );
    w.ok(
        &mut b,
        TxBody::Transfer {
            to: a.public_key(),
            amount: 200,
        },
    );
    assert_eq!(w.balance(&b), ED);
    assert_eq!(
        w.err(
            &mut b,
            TxBody::Transfer {
                to: a.public_key(),
                amount: 0
            }
        ),
        TxError::ZeroAmount
    );
    assert!(matches!(
        w.err(&mut a, TxBody::Faucet { amount: u64::MAX }),
        TxError::FaucetTooMuch { .. }
    ));
}

/// Issue 11, item 9: 30,000 CreateAccount transactions from fresh keys were all
/// accepted. An account exists only once money reached it: a transfer (or a dev
/// faucet) of at least the existential deposit, which then stays in it.
#[test]
fn accounts_exist_only_once_funded() {
    const ED: Amount = EXISTENTIAL_DEPOSIT;
    let mut w = World::new(false);
    let mut fresh = signer();
    let ek = keys::encryption_key(fresh.key());
    let e = w.err(
        &mut fresh,
        TxBody::CreateAccount {
            encryption_key: Some(ek),
        },
    );
    assert_eq!(e, TxError::NoAccount(fresh.public_key()));
    assert!(e.to_string().contains("opened by a transfer"), "{e}");
    assert!(w.st.account(&fresh.public_key()).is_none());
    // Nor does anything else open an account for a key nobody paid for.
    for body in [
        TxBody::CreateFarm {
            name: "free".into(),
            prices: PRICES,
            enrollment_key: None,
        },
        TxBody::Faucet { amount: ED },
    ] {
        w.err(&mut fresh, body);
        assert!(w.st.account(&fresh.public_key()).is_none());
    }

    // A non-dev ledger mints nothing, so take the money from a dev ledger's faucet;
    // the transfer rules are the same on every ledger.
    let mut w = World::new(true);
    let mut payer = account(&mut w, 10 * ED);
    let e = w.err(
        &mut payer,
        TxBody::Transfer {
            to: fresh.public_key(),
            amount: ED - 1,
        },
    );
    assert_eq!(
        e,
        TxError::BelowExistentialDeposit {
            account: fresh.public_key(),
            amount: ED - 1
        }
    );
    assert!(w.st.account(&fresh.public_key()).is_none());
    let ev = w.ok(
        &mut payer,
        TxBody::Transfer {
            to: fresh.public_key(),
            amount: ED,
        },
    );
    assert_eq!(
        ev[0],
        Event::AccountCreated {
            account: fresh.public_key()
        }
    );
    assert_eq!(w.balance(&fresh), ED);
    // Now the key can record its encryption key and act, but not spend the deposit.
    w.ok(
        &mut fresh,
        TxBody::CreateAccount {
            encryption_key: Some(ek),
        },
    );
    assert_eq!(
        w.st.account(&fresh.public_key())
            .expect("opened")
            .encryption_key,
        Some(ek)
    );
    assert!(matches!(
        w.err(
            &mut fresh,
            TxBody::Transfer {
                to: payer.public_key(),
                amount: 1
            }
        ),
        TxError::InsufficientBalance { .. }
    ));
    // On a dev ledger the faucet opens an account, with at least the deposit.
    let mut dev = signer();
    assert_eq!(
        w.err(&mut dev, TxBody::Faucet { amount: ED - 1 }),
        TxError::BelowExistentialDeposit {
            account: dev.public_key(),
            amount: ED - 1
        }
    );
    let ev = w.ok(&mut dev, TxBody::Faucet { amount: ED });
    assert!(matches!(ev[0], Event::AccountCreated { .. }));
    assert_eq!(w.balance(&dev), ED);
}

#[test]
fn faucet_only_in_dev_mode() {
    let mut w = World::new(false);
    let mut a = signer();
    assert_eq!(
        w.err(
            &mut a,
            TxBody::Faucet {
                amount: EXISTENTIAL_DEPOSIT
            }
        ),
        TxError::FaucetDisabled
    );
    assert!(w.st.account(&a.public_key()).is_none());
}

#[test]
fn nonces_only_go_up_and_chain_id_is_checked() {
    let mut w = World::new(true);
    let mut a = account(&mut w, 0);
    let tx = a.sign(TxBody::Faucet { amount: 1 });
    w.apply_signed(&tx).expect("first");
    // The same transaction again: a replay.
    assert!(matches!(
        w.apply_signed(&tx),
        Err(TxError::StaleNonce { .. })
    ));
    // An older nonce, signed properly.
    let old = Tx {
        chain_id: "test".into(),
        signer: a.public_key(),
        nonce: tx.tx.nonce - 1,
        body: TxBody::Faucet { amount: 1 },
    }
    .sign(a.key());
    assert_eq!(
        w.apply_signed(&old),
        Err(TxError::StaleNonce {
            got: tx.tx.nonce - 1,
            last: tx.tx.nonce
        })
    );
    let mut other_chain = Signer::new(a.key().clone(), "prod");
    let t = other_chain.sign(TxBody::Faucet { amount: 1 });
    assert!(matches!(
        w.apply_signed(&t),
        Err(TxError::WrongChain { .. })
    ));
    assert_eq!(w.balance(&a), EXISTENTIAL_DEPOSIT + 1);
}

#[test]
fn bad_signature_never_reaches_the_state_machine() {
    let mut a = signer();
    let mut tx = a.sign(TxBody::Faucet { amount: 1 });
    tx.tx.body = TxBody::Faucet { amount: 1_000 };
    assert!(tx.clone().into_verified().is_err());
    tx.tx.body = TxBody::Faucet { amount: 1 };
    tx.signature.0[0] ^= 1;
    assert!(tx.into_verified().is_err());
}
