//! Every transaction of the state machine, with each of its rejections.

use cellos_ledger::keys::{self, Signer};
use cellos_ledger::state::{Event, State, TxError};
use cellos_ledger::*;

const GRACE: u64 = 3600;

struct World {
    st: State,
    t: u64,
    h: u64,
}

impl World {
    fn new(dev: bool) -> World {
        let mut p = ChainParams::new("test", dev);
        p.grace_secs = GRACE;
        let st = State::new(p, 1_000_000);
        World {
            st,
            t: 1_000_000,
            h: 0,
        }
    }

    fn at(&mut self, t: u64) -> &mut Self {
        self.t = t;
        self
    }

    /// Applies `tx` in a block of its own at the current time.
    fn apply_signed(&mut self, tx: &SignedTx) -> Result<Vec<Event>, TxError> {
        self.h += 1;
        let mut ev = self.st.begin_block(self.h, self.t);
        let vtx = tx
            .clone()
            .into_verified()
            .expect("test transactions are signed right");
        let before = self.st.digest();
        let r = self.st.apply(&vtx);
        if r.is_err() {
            assert_eq!(
                self.st.digest(),
                before,
                "a rejected transaction changed the state"
            );
        }
        ev.extend(r?);
        Ok(ev)
    }

    fn run(&mut self, who: &mut Signer, body: TxBody) -> Result<Vec<Event>, TxError> {
        let tx = who.sign(body);
        self.apply_signed(&tx)
    }

    fn ok(&mut self, who: &mut Signer, body: TxBody) -> Vec<Event> {
        let name = body.name();
        self.run(who, body)
            .unwrap_or_else(|e| panic!("{name} failed: {e}"))
    }

    fn err(&mut self, who: &mut Signer, body: TxBody) -> TxError {
        let name = body.name();
        match self.run(who, body) {
            Ok(ev) => panic!("{name} should have failed, got {ev:?}"),
            Err(e) => e,
        }
    }

    fn balance(&self, s: &Signer) -> Amount {
        self.st.account(&s.public_key()).map_or(0, |a| a.balance)
    }
}

fn signer() -> Signer {
    Signer::new(keys::generate(), "test")
}

fn account(w: &mut World, funds: Amount) -> Signer {
    let mut s = Signer::new(keys::generate(), "test");
    let ek = keys::encryption_key(s.key());
    // An account is opened by money: the faucet brings `funds` to spend on top of
    // the existential deposit that stays in it.
    w.ok(
        &mut s,
        TxBody::Faucet {
            amount: funds + EXISTENTIAL_DEPOSIT,
        },
    );
    w.ok(
        &mut s,
        TxBody::CreateAccount {
            encryption_key: Some(ek),
        },
    );
    s
}

const PRICES: Prices = Prices {
    cu: 100,
    su: 50,
    nu: 10,
    ipu: 20,
};
const CAP: Resources = Resources {
    cru: 4,
    mru: 8 * GIB,
    sru: 200 * GIB,
    hru: 1024 * GIB,
};

fn farm(w: &mut World, farmer: &mut Signer, name: &str, enroll: Option<PublicKey>) -> FarmId {
    let ev = w.ok(
        farmer,
        TxBody::CreateFarm {
            name: name.into(),
            prices: PRICES,
            enrollment_key: enroll,
        },
    );
    match ev.as_slice() {
        [Event::FarmCreated { farm, .. }] => *farm,
        other => panic!("unexpected events {other:?}"),
    }
}

fn register(
    w: &mut World,
    node: &mut Signer,
    farm: FarmId,
    enrollment: Option<EnrollToken>,
) -> Result<NodeId, TxError> {
    let encryption_key = keys::encryption_key(node.key());
    let ev = w.run(
        node,
        TxBody::RegisterNode {
            farm,
            capacity: CAP,
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                ips: vec!["10.0.2.15/24".into()],
            }],
            encryption_key,
            location: None,
            enrollment,
            persistent: true,
        },
    )?;
    match ev.last() {
        Some(Event::NodeRegistered { node, .. }) => Ok(*node),
        other => panic!("unexpected events {other:?}"),
    }
}

/// A farm with one approved node and two public IPs, and a funded user.
struct Setup {
    w: World,
    farmer: Signer,
    node: Signer,
    user: Signer,
    farm: FarmId,
    node_id: NodeId,
}

fn setup() -> Setup {
    let mut w = World::new(true);
    let mut farmer = account(&mut w, 0);
    let farm = farm(&mut w, &mut farmer, "farm-1", None);
    for ip in ["185.0.0.10/24", "185.0.0.11/24"] {
        w.ok(
            &mut farmer,
            TxBody::AddFarmIp {
                farm,
                ip: ip.into(),
                gateway: "185.0.0.1".into(),
            },
        );
    }
    let mut node = signer();
    let node_id = register(&mut w, &mut node, farm, None).expect("register");
    w.ok(&mut farmer, TxBody::ApproveNode { node: node_id });
    let user = account(&mut w, 1_000_000);
    Setup {
        w,
        farmer,
        node,
        user,
        farm,
        node_id,
    }
}

const SMALL: Resources = Resources {
    cru: 1,
    mru: 2 * GIB,
    sru: 50 * GIB,
    hru: 0,
};

fn create(
    s: &mut Setup,
    resources: Resources,
    ips: u32,
    deposit: Amount,
) -> Result<ContractId, TxError> {
    let ev = s.w.run(
        &mut s.user,
        TxBody::CreateContract {
            node: s.node_id,
            deployment_hash: Hash::of(b"d1"),
            resources,
            public_ips: ips,
            deposit,
            blob: None,
        },
    )?;
    match ev.last() {
        Some(Event::ContractCreated { contract, .. }) => Ok(*contract),
        other => panic!("unexpected events {other:?}"),
    }
}

fn accept(s: &mut Setup, c: ContractId) {
    s.w.ok(
        &mut s.node,
        TxBody::AcceptContract {
            contract: c,
            deployment_hash: Hash::of(b"d1"),
            result: None,
        },
    );
}

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

#[test]
fn farms_names_ips_and_ownership() {
    let mut w = World::new(true);
    let mut farmer = account(&mut w, 0);
    let mut other = account(&mut w, 0);
    let f = farm(&mut w, &mut farmer, "alpha", None);
    assert_eq!(
        w.err(
            &mut other,
            TxBody::CreateFarm {
                name: "alpha".into(),
                prices: PRICES,
                enrollment_key: None
            }
        ),
        TxError::FarmNameTaken("alpha".into())
    );
    assert!(matches!(
        w.err(
            &mut other,
            TxBody::CreateFarm {
                name: "bad name!".into(),
                prices: PRICES,
                enrollment_key: None
            }
        ),
        TxError::BadFarmName(_)
    ));
    assert_eq!(
        w.err(
            &mut other,
            TxBody::AddFarmIp {
                farm: f,
                ip: "1.2.3.4/24".into(),
                gateway: "1.2.3.1".into()
            }
        ),
        TxError::NotFarmOwner(f)
    );
    assert!(matches!(
        w.err(
            &mut farmer,
            TxBody::AddFarmIp {
                farm: f,
                ip: "1.2.3.4".into(),
                gateway: "1.2.3.1".into()
            }
        ),
        TxError::BadIp { .. }
    ));
    assert!(matches!(
        w.err(
            &mut farmer,
            TxBody::AddFarmIp {
                farm: f,
                ip: "1.2.3.4/33".into(),
                gateway: "1.2.3.1".into()
            }
        ),
        TxError::BadIp { .. }
    ));
    w.ok(
        &mut farmer,
        TxBody::AddFarmIp {
            farm: f,
            ip: "1.2.3.4/24".into(),
            gateway: "1.2.3.1".into(),
        },
    );
    assert!(matches!(
        w.err(
            &mut farmer,
            TxBody::AddFarmIp {
                farm: f,
                ip: "1.2.3.4/24".into(),
                gateway: "1.2.3.1".into()
            }
        ),
        TxError::IpExists { .. }
    ));
    assert_eq!(w.st.farm(f).expect("farm").public_ips.len(), 1);
    w.ok(
        &mut farmer,
        TxBody::RemoveFarmIp {
            farm: f,
            ip: "1.2.3.4/24".into(),
        },
    );
    assert!(matches!(
        w.err(
            &mut farmer,
            TxBody::RemoveFarmIp {
                farm: f,
                ip: "1.2.3.4/24".into()
            }
        ),
        TxError::NoIp { .. }
    ));
    assert_eq!(
        w.err(
            &mut farmer,
            TxBody::AddFarmIp {
                farm: 99,
                ip: "1.2.3.4/24".into(),
                gateway: "1.2.3.1".into()
            }
        ),
        TxError::NoFarm(99)
    );
}

#[test]
fn node_registration_pending_until_approved() {
    let mut w = World::new(true);
    let mut farmer = account(&mut w, 0);
    let mut stranger = account(&mut w, 0);
    let f = farm(&mut w, &mut farmer, "f", None);
    let mut node = signer();
    assert_eq!(
        register(&mut w, &mut node, 42, None),
        Err(TxError::NoFarm(42))
    );
    let id = register(&mut w, &mut node, f, None).expect("register");
    let n = w.st.node(id).expect("node");
    assert!(!n.approved);
    assert_eq!(n.capacity, CAP);
    // The same key cannot register twice.
    assert_eq!(
        register(&mut w, &mut node, f, None),
        Err(TxError::NodeKeyTaken {
            key: node.public_key(),
            node: id
        })
    );
    assert_eq!(
        w.err(&mut stranger, TxBody::ApproveNode { node: id }),
        TxError::NotFarmOwner(f)
    );
    assert_eq!(
        w.err(&mut node, TxBody::ApproveNode { node: id }),
        TxError::NotFarmOwner(f)
    );
    w.ok(&mut farmer, TxBody::ApproveNode { node: id });
    assert!(w.st.node(id).expect("node").approved);
    assert_eq!(
        w.err(&mut farmer, TxBody::ApproveNode { node: id }),
        TxError::AlreadyApproved(id)
    );
}

#[test]
fn enrollment_token_approves_at_once() {
    let mut w = World::new(true);
    let mut farmer = account(&mut w, 0);
    let ek = keys::generate();
    let f = farm(&mut w, &mut farmer, "enrolled", Some(keys::public_key(&ek)));
    let plain = farm(&mut w, &mut farmer, "plain", None);
    let now = w.t;

    let good = EnrollToken::issue(&ek, "test", f, now + 100);
    let mut n1 = signer();
    let id = register(&mut w, &mut n1, f, Some(good.clone())).expect("register");
    assert!(w.st.node(id).expect("node").approved);

    let mut n2 = signer();
    assert_eq!(
        register(&mut w, &mut n2, plain, Some(good.clone())),
        Err(TxError::EnrollWrongFarm {
            token: f,
            farm: plain
        })
    );
    let for_plain = EnrollToken::issue(&ek, "test", plain, now + 100);
    assert_eq!(
        register(&mut w, &mut n2, plain, Some(for_plain)),
        Err(TxError::EnrollNotAccepted(plain))
    );
    let forged = EnrollToken::issue(&keys::generate(), "test", f, now + 100);
    assert_eq!(
        register(&mut w, &mut n2, f, Some(forged)),
        Err(TxError::EnrollBadSignature(f))
    );
    let other_chain = EnrollToken::issue(&ek, "prod", f, now + 100);
    assert_eq!(
        register(&mut w, &mut n2, f, Some(other_chain)),
        Err(TxError::EnrollBadSignature(f))
    );
    let expired = EnrollToken::issue(&ek, "test", f, now - 1);
    assert_eq!(
        register(&mut w, &mut n2, f, Some(expired)),
        Err(TxError::EnrollExpired {
            expires: now - 1,
            now
        })
    );
    w.at(now + 101);
    assert!(matches!(
        register(&mut w, &mut n2, f, Some(good)),
        Err(TxError::EnrollExpired { .. })
    ));
}

#[test]
fn update_uptime_status_and_remove() {
    let mut s = setup();
    let id = s.node_id;
    let bigger = Resources { cru: 8, ..CAP };
    let ek = keys::encryption_key(s.node.key());
    assert_eq!(
        s.w.err(
            &mut s.user,
            TxBody::UpdateNode {
                node: id,
                capacity: bigger,
                interfaces: vec![],
                encryption_key: ek,
                persistent: true
            }
        ),
        TxError::NotTheNode(id)
    );
    s.w.ok(
        &mut s.node,
        TxBody::UpdateNode {
            node: id,
            capacity: bigger,
            interfaces: vec![],
            encryption_key: ek,
            persistent: true,
        },
    );
    assert_eq!(s.w.st.node(id).expect("node").capacity.cru, 8);

    let t = s.w.t + 500;
    s.w.at(t);
    s.w.ok(
        &mut s.node,
        TxBody::ReportUptime {
            node: id,
            timestamp: t + 60,
            uptime_secs: 42,
        },
    );
    assert_eq!(s.w.st.node(id).expect("node").last_uptime, t);
    assert_eq!(s.w.st.node(id).expect("node").uptime_secs, 42);
    assert_eq!(
        s.w.err(
            &mut s.node,
            TxBody::ReportUptime {
                node: id,
                timestamp: t + 61,
                uptime_secs: 1
            }
        ),
        TxError::UptimeSkew {
            got: t + 61,
            now: t,
            skew: 60
        }
    );
    assert!(matches!(
        s.w.err(
            &mut s.node,
            TxBody::ReportUptime {
                node: id,
                timestamp: t - 61,
                uptime_secs: 1
            }
        ),
        TxError::UptimeSkew { .. }
    ));
    assert_eq!(
        s.w.err(
            &mut s.farmer,
            TxBody::ReportUptime {
                node: id,
                timestamp: t,
                uptime_secs: 1
            }
        ),
        TxError::NotTheNode(id)
    );

    s.w.ok(
        &mut s.farmer,
        TxBody::SetNodeStatus {
            node: id,
            status: NodeStatus::Standby,
        },
    );
    assert_eq!(
        create(&mut s, SMALL, 0, 1000),
        Err(TxError::NodeNotUp {
            node: id,
            status: NodeStatus::Standby
        })
    );
    assert_eq!(
        s.w.err(
            &mut s.user,
            TxBody::SetNodeStatus {
                node: id,
                status: NodeStatus::Up
            }
        ),
        TxError::NotNodeOrFarmer(id)
    );
    assert_eq!(
        s.w.err(
            &mut s.node,
            TxBody::SetNodeStatus {
                node: id,
                status: NodeStatus::Decommissioned
            }
        ),
        TxError::UseRemoveNode
    );
    // An uptime report wakes a standby node.
    s.w.ok(
        &mut s.node,
        TxBody::ReportUptime {
            node: id,
            timestamp: t,
            uptime_secs: 43,
        },
    );
    assert_eq!(s.w.st.node(id).expect("node").status, NodeStatus::Up);

    let c = create(&mut s, SMALL, 1, 1000).expect("contract");
    let user_before = s.w.balance(&s.user);
    assert_eq!(
        s.w.err(&mut s.user, TxBody::RemoveNode { node: id }),
        TxError::NotNodeOrFarmer(id)
    );
    let ev = s.w.ok(&mut s.farmer, TxBody::RemoveNode { node: id });
    assert!(ev.iter().any(
        |e| matches!(e, Event::ContractClosed { contract, refund: 1000, .. } if *contract == c)
    ));
    assert_eq!(s.w.balance(&s.user), user_before + 1000);
    let n = s.w.st.node(id).expect("node");
    assert_eq!(n.status, NodeStatus::Decommissioned);
    assert!(n.reserved.is_zero());
    assert_eq!(s.w.st.farm(s.farm).expect("farm").free_ips(), 2);
}

/// Issue 11, item 8: the farmer's SetNodeStatus up + ApproveNode revived a removed
/// node. Decommissioning is final: nothing brings the node back, and its key never
/// registers again; the machine comes back only as a new node with a new key.
#[test]
fn decommissioning_is_final() {
    let mut s = setup();
    let id = s.node_id;
    let ek = keys::encryption_key(s.node.key());
    s.w.ok(&mut s.node, TxBody::RemoveNode { node: id });
    let revivals = [
        (
            true,
            TxBody::SetNodeStatus {
                node: id,
                status: NodeStatus::Up,
            },
        ),
        (
            false,
            TxBody::SetNodeStatus {
                node: id,
                status: NodeStatus::Standby,
            },
        ),
        (true, TxBody::ApproveNode { node: id }),
        (true, TxBody::RemoveNode { node: id }),
        (
            false,
            TxBody::UpdateNode {
                node: id,
                capacity: CAP,
                interfaces: vec![],
                encryption_key: ek,
                persistent: true,
            },
        ),
        (
            false,
            TxBody::ReportUptime {
                node: id,
                timestamp: s.w.t,
                uptime_secs: 1,
            },
        ),
    ];
    for (by_farmer, body) in revivals {
        let name = body.name();
        let who = if by_farmer {
            &mut s.farmer
        } else {
            &mut s.node
        };
        assert_eq!(
            s.w.err(who, body),
            TxError::NodeDecommissioned(id),
            "{name} on a decommissioned node"
        );
    }
    let n = s.w.st.node(id).expect("node");
    assert_eq!((n.status, n.approved), (NodeStatus::Decommissioned, false));
    assert_eq!(
        create(&mut s, SMALL, 0, 1000),
        Err(TxError::NodeNotApproved(id))
    );
    // The same key cannot register again, not even with the farm's consent.
    let e = register(&mut s.w, &mut s.node, s.farm, None).expect_err("re-registration");
    assert_eq!(
        e,
        TxError::NodeKeyRetired {
            key: s.node.public_key(),
            node: id
        }
    );
    assert!(e.to_string().contains("never registers again"), "{e}");
    // A new identity is a new node.
    let mut fresh = signer();
    let new_id = register(&mut s.w, &mut fresh, s.farm, None).expect("a new node");
    assert_ne!(new_id, id);
    assert_eq!(s.w.st.node(new_id).expect("node").status, NodeStatus::Up);
    assert_eq!(
        s.w.st.node(id).expect("node").status,
        NodeStatus::Decommissioned
    );
}

#[test]
fn contract_reserves_capacity_ips_and_escrow() {
    let mut s = setup();
    let before = s.w.balance(&s.user);
    let c = create(&mut s, SMALL, 1, 5000).expect("create");
    let k = s.w.st.contract(c).expect("contract").clone();
    assert_eq!(k.state, ContractState::Pending);
    assert_eq!(k.escrow, 5000);
    // 1 CU * 100 + 0.5 SU * 50 + 1 IP * 20
    assert_eq!(k.price_per_hour, 145);
    assert_eq!(k.public_ips, vec!["185.0.0.10/24".to_string()]);
    assert_eq!(s.w.balance(&s.user), before - 5000);
    assert_eq!(s.w.st.node(s.node_id).expect("node").reserved, SMALL);
    let farm = s.w.st.farm(s.farm).expect("farm");
    assert_eq!(farm.public_ips[0].leased_by, Some(c));
    assert_eq!(farm.free_ips(), 1);
}

#[test]
fn contract_rejections() {
    let mut s = setup();
    // Over the node's free capacity.
    let huge = Resources { cru: 5, ..SMALL };
    assert!(matches!(
        create(&mut s, huge, 0, 10_000),
        Err(TxError::OverCapacity { .. })
    ));
    let three_quarters = Resources {
        cru: 3,
        mru: 6 * GIB,
        sru: 150 * GIB,
        hru: 0,
    };
    create(&mut s, three_quarters, 0, 10_000).expect("fits");
    let err = create(
        &mut s,
        Resources {
            cru: 2,
            ..Default::default()
        },
        0,
        10_000,
    )
    .unwrap_err();
    assert_eq!(
        err,
        TxError::OverCapacity {
            node: s.node_id,
            free: Resources {
                cru: 1,
                mru: 2 * GIB,
                sru: 50 * GIB,
                hru: 1024 * GIB
            },
            asked: Resources {
                cru: 2,
                ..Default::default()
            }
        }
    );
    // More IPs than the farm has free.
    assert_eq!(
        create(&mut s, Resources::default(), 3, 10_000),
        Err(TxError::NotEnoughIps {
            farm: s.farm,
            free: 2,
            asked: 3
        })
    );
    assert_eq!(
        create(&mut s, Resources::default(), 0, 10_000),
        Err(TxError::EmptyReservation)
    );
    assert_eq!(
        create(&mut s, SMALL, 0, 10),
        Err(TxError::DepositTooSmall {
            deposit: 10,
            per_hour: 125
        })
    );
    assert_eq!(
        create(&mut s, SMALL, 0, 10_000_000),
        Err(TxError::InsufficientBalance {
            have: EXISTENTIAL_DEPOSIT + 1_000_000 - 10_000,
            need: 10_000_000 + EXISTENTIAL_DEPOSIT
        })
    );
    assert!(matches!(
        s.w.err(
            &mut s.user,
            TxBody::CreateContract {
                node: 77,
                deployment_hash: Hash::of(b"x"),
                resources: SMALL,
                public_ips: 0,
                deposit: 1000,
                blob: None
            }
        ),
        TxError::NoNode(77)
    ));
}

#[test]
fn unapproved_node_takes_no_contracts() {
    let mut s = setup();
    let mut n2 = signer();
    let id = register(&mut s.w, &mut n2, s.farm, None).expect("register");
    let e = s.w.err(
        &mut s.user,
        TxBody::CreateContract {
            node: id,
            deployment_hash: Hash::of(b"x"),
            resources: SMALL,
            public_ips: 0,
            deposit: 1000,
            blob: None,
        },
    );
    assert_eq!(e, TxError::NodeNotApproved(id));
}

#[test]
fn accept_needs_the_node_and_the_same_hash() {
    let mut s = setup();
    let c = create(&mut s, SMALL, 0, 1000).expect("create");
    assert_eq!(
        s.w.err(
            &mut s.node,
            TxBody::AcceptContract {
                contract: c,
                deployment_hash: Hash::of(b"other"),
                result: None
            }
        ),
        TxError::HashMismatch {
            contract: c,
            want: Hash::of(b"d1"),
            got: Hash::of(b"other")
        }
    );
    assert_eq!(
        s.w.err(
            &mut s.user,
            TxBody::AcceptContract {
                contract: c,
                deployment_hash: Hash::of(b"d1"),
                result: None
            }
        ),
        TxError::NotTheNode(s.node_id)
    );
    assert_eq!(s.w.st.contract(c).expect("c").state, ContractState::Pending);
    s.w.at(s.w.t + 30);
    accept(&mut s, c);
    let k = s.w.st.contract(c).expect("c");
    assert_eq!(k.state, ContractState::Active);
    assert_eq!(k.billed_until, s.w.t, "billing starts at activation");
}

#[test]
fn reject_closes_and_refunds() {
    let mut s = setup();
    let before = s.w.balance(&s.user);
    let c = create(&mut s, SMALL, 2, 1000).expect("create");
    assert_eq!(
        s.w.err(
            &mut s.node,
            TxBody::RejectContract {
                contract: c,
                reason: String::new()
            }
        ),
        TxError::BadReason
    );
    assert_eq!(
        s.w.err(
            &mut s.user,
            TxBody::RejectContract {
                contract: c,
                reason: "no".into()
            }
        ),
        TxError::NotTheNode(s.node_id)
    );
    s.w.ok(
        &mut s.node,
        TxBody::RejectContract {
            contract: c,
            reason: "hash differs".into(),
        },
    );
    let k = s.w.st.contract(c).expect("c");
    assert_eq!(
        k.state,
        ContractState::Closed(CloseCause::Rejected("hash differs".into()))
    );
    assert_eq!(s.w.balance(&s.user), before);
    assert!(s.w.st.node(s.node_id).expect("n").reserved.is_zero());
    assert_eq!(s.w.st.farm(s.farm).expect("f").free_ips(), 2);
    assert!(matches!(
        s.w.err(
            &mut s.node,
            TxBody::AcceptContract {
                contract: c,
                deployment_hash: Hash::of(b"d1"),
                result: None
            }
        ),
        TxError::WrongContractState { .. }
    ));
}

#[test]
fn cancel_releases_capacity_and_ips_and_refunds() {
    let mut s = setup();
    let before = s.w.balance(&s.user);
    let c = create(&mut s, SMALL, 2, 5000).expect("create");
    accept(&mut s, c);
    let mut stranger = account(&mut s.w, 0);
    assert_eq!(
        s.w.err(&mut stranger, TxBody::CancelContract { contract: c }),
        TxError::NotOwnerOrNode(c)
    );
    let t = s.w.t;
    s.w.at(t + 1800);
    s.w.ok(
        &mut s.node,
        TxBody::ReportUsage {
            contract: c,
            window_start: t,
            window_end: t + 1800,
            nu_bytes: 0,
        },
    );
    let ev = s.w.ok(&mut s.user, TxBody::CancelContract { contract: c });
    // 1 CU * 100 + 0.5 SU * 50 + 2 IPs * 20 = 165/h; half an hour = 82.
    let paid = 82;
    assert_eq!(
        ev,
        vec![Event::ContractClosed {
            contract: c,
            node: s.node_id,
            state: ContractState::Closed(CloseCause::CanceledByOwner),
            refund: 5000 - paid
        }]
    );
    assert_eq!(s.w.balance(&s.user), before - paid);
    assert_eq!(s.w.balance(&s.farmer), EXISTENTIAL_DEPOSIT + paid);
    assert!(s.w.st.node(s.node_id).expect("n").reserved.is_zero());
    assert_eq!(s.w.st.farm(s.farm).expect("f").free_ips(), 2);
    assert!(s.w.st.open_contracts_on(s.node_id).next().is_none());
    assert!(matches!(
        s.w.err(&mut s.user, TxBody::CancelContract { contract: c }),
        TxError::WrongContractState { .. }
    ));

    // The node may cancel too.
    let c2 = create(&mut s, SMALL, 0, 1000).expect("create");
    s.w.ok(&mut s.node, TxBody::CancelContract { contract: c2 });
    assert_eq!(
        s.w.st.contract(c2).expect("c").state,
        ContractState::Closed(CloseCause::CanceledByNode)
    );
}

#[test]
fn usage_billing_is_windowed_and_idempotent() {
    let mut s = setup();
    let c = create(&mut s, SMALL, 0, 10_000).expect("create");
    let t0 = s.w.t;
    // Not billed while pending.
    assert!(matches!(
        s.w.err(
            &mut s.node,
            TxBody::ReportUsage {
                contract: c,
                window_start: t0,
                window_end: t0 + 10,
                nu_bytes: 0
            }
        ),
        TxError::WrongContractState { want: "active", .. }
    ));
    s.w.at(t0 + 100);
    accept(&mut s, c);
    let t1 = t0 + 100;
    s.w.at(t1 + 3600);
    assert_eq!(
        s.w.err(
            &mut s.user,
            TxBody::ReportUsage {
                contract: c,
                window_start: t1,
                window_end: t1 + 3600,
                nu_bytes: 0
            }
        ),
        TxError::NotTheNode(s.node_id)
    );
    assert_eq!(
        s.w.err(
            &mut s.node,
            TxBody::ReportUsage {
                contract: c,
                window_start: t1 + 5,
                window_end: t1 + 5,
                nu_bytes: 0
            }
        ),
        TxError::BadWindow {
            start: t1 + 5,
            end: t1 + 5
        }
    );
    // One hour of 125/h plus 2 GiB of traffic at 10/GiB.
    let report = TxBody::ReportUsage {
        contract: c,
        window_start: t1,
        window_end: t1 + 3600,
        nu_bytes: 2 * GIB,
    };
    let ev = s.w.ok(&mut s.node, report.clone());
    assert_eq!(
        ev,
        vec![Event::ContractBilled {
            contract: c,
            node: s.node_id,
            amount: 145,
            until: t1 + 3600
        }]
    );
    assert_eq!(s.w.balance(&s.farmer), EXISTENTIAL_DEPOSIT + 145);
    let k = s.w.st.contract(c).expect("c");
    assert_eq!(
        (k.escrow, k.paid, k.billed_until),
        (10_000 - 145, 145, t1 + 3600)
    );
    // The same window again, and an overlapping one: refused, nothing moves.
    assert_eq!(
        s.w.err(&mut s.node, report),
        TxError::AlreadyBilled {
            start: t1,
            end: t1 + 3600,
            billed_until: t1 + 3600
        }
    );
    assert!(matches!(
        s.w.err(
            &mut s.node,
            TxBody::ReportUsage {
                contract: c,
                window_start: t1 + 3000,
                window_end: t1 + 3700,
                nu_bytes: 0
            }
        ),
        TxError::AlreadyBilled { .. }
    ));
    // Windows in the future are refused.
    assert!(matches!(
        s.w.err(
            &mut s.node,
            TxBody::ReportUsage {
                contract: c,
                window_start: t1 + 3600,
                window_end: t1 + 7200,
                nu_bytes: 0
            }
        ),
        TxError::WindowInFuture { .. }
    ));
    // The node was off for an hour: it reports from when it came back; the gap is free.
    s.w.at(t1 + 3 * 3600);
    s.w.ok(
        &mut s.node,
        TxBody::ReportUsage {
            contract: c,
            window_start: t1 + 2 * 3600,
            window_end: t1 + 2 * 3600 + 1800,
            nu_bytes: 0,
        },
    );
    assert_eq!(s.w.balance(&s.farmer), EXISTENTIAL_DEPOSIT + 145 + 62);
}

#[test]
fn suspension_top_up_and_grace() {
    let mut s = setup();
    // 125/h; a deposit of 300 pays two hours and then cannot pay the next.
    let c = create(&mut s, SMALL, 0, 300).expect("create");
    accept(&mut s, c);
    let t = s.w.t;
    s.w.at(t + 3600);
    let ev = s.w.ok(
        &mut s.node,
        TxBody::ReportUsage {
            contract: c,
            window_start: t,
            window_end: t + 3600,
            nu_bytes: 0,
        },
    );
    assert_eq!(ev.len(), 1, "175 left still pays an hour: {ev:?}");
    s.w.at(t + 7200);
    let ev = s.w.ok(
        &mut s.node,
        TxBody::ReportUsage {
            contract: c,
            window_start: t + 3600,
            window_end: t + 7200,
            nu_bytes: 0,
        },
    );
    assert!(
        ev.contains(&Event::ContractSuspended {
            contract: c,
            node: s.node_id
        }),
        "{ev:?}"
    );
    let k = s.w.st.contract(c).expect("c");
    assert_eq!((k.state.clone(), k.escrow), (ContractState::Suspended, 50));
    // Nothing is billed while suspended.
    s.w.at(t + 9000);
    assert!(matches!(
        s.w.err(
            &mut s.node,
            TxBody::ReportUsage {
                contract: c,
                window_start: t + 7200,
                window_end: t + 9000,
                nu_bytes: 0
            }
        ),
        TxError::WrongContractState { .. }
    ));
    // A top-up that covers an hour resumes it, and the suspension is not billed.
    s.w.ok(
        &mut s.user,
        TxBody::TopUp {
            contract: c,
            amount: 1000,
        },
    );
    let k = s.w.st.contract(c).expect("c");
    assert_eq!(
        (k.state.clone(), k.escrow, k.billed_until),
        (ContractState::Active, 1050, t + 9000)
    );

    // Run it dry again, then let the grace period pass.
    let c2 = create(&mut s, SMALL, 1, 145).expect("create");
    accept(&mut s, c2);
    let t2 = s.w.t;
    s.w.at(t2 + 60);
    let ev = s.w.ok(
        &mut s.node,
        TxBody::ReportUsage {
            contract: c2,
            window_start: t2,
            window_end: t2 + 60,
            nu_bytes: 0,
        },
    );
    assert!(ev.contains(&Event::ContractSuspended {
        contract: c2,
        node: s.node_id
    }));
    let before = s.w.balance(&s.user);
    let escrow = s.w.st.contract(c2).expect("c").escrow;
    // A top-up too small to pay an hour does not resume.
    s.w.ok(
        &mut s.user,
        TxBody::TopUp {
            contract: c2,
            amount: 1,
        },
    );
    assert_eq!(
        s.w.st.contract(c2).expect("c").state,
        ContractState::Suspended
    );
    s.w.at(t2 + 60 + GRACE - 1);
    s.w.ok(
        &mut s.user,
        TxBody::Transfer {
            to: s.farmer.public_key(),
            amount: 1,
        },
    );
    assert_eq!(
        s.w.st.contract(c2).expect("c").state,
        ContractState::Suspended
    );
    s.w.at(t2 + 60 + GRACE);
    let ev = s.w.ok(
        &mut s.user,
        TxBody::Transfer {
            to: s.farmer.public_key(),
            amount: 1,
        },
    );
    assert!(
        ev.iter().any(|e| matches!(e, Event::ContractClosed { contract, state: ContractState::Closed(CloseCause::GraceExpired), .. } if *contract == c2)),
        "{ev:?}"
    );
    assert_eq!(s.w.balance(&s.user), before - 1 - 2 + escrow + 1);
    assert_eq!(s.w.st.farm(s.farm).expect("f").free_ips(), 2);
    assert_eq!(
        s.w.st.node(s.node_id).expect("n").reserved,
        SMALL,
        "only c is left"
    );
}

#[test]
fn update_contract_resizes_within_capacity() {
    let mut s = setup();
    let c = create(&mut s, SMALL, 0, 10_000).expect("create");
    accept(&mut s, c);
    let bigger = Resources {
        cru: 4,
        mru: 8 * GIB,
        sru: 200 * GIB,
        hru: 0,
    };
    let too_big = Resources { cru: 5, ..bigger };
    assert!(matches!(
        s.w.err(
            &mut s.user,
            TxBody::UpdateContract {
                contract: c,
                deployment_hash: Hash::of(b"d2"),
                resources: too_big,
                blob: None
            }
        ),
        TxError::OverCapacity { .. }
    ));
    assert_eq!(
        s.w.err(
            &mut s.node,
            TxBody::UpdateContract {
                contract: c,
                deployment_hash: Hash::of(b"d2"),
                resources: bigger,
                blob: None
            }
        ),
        TxError::NotContractOwner(c)
    );
    s.w.ok(
        &mut s.user,
        TxBody::UpdateContract {
            contract: c,
            deployment_hash: Hash::of(b"d2"),
            resources: bigger,
            blob: None,
        },
    );
    let k = s.w.st.contract(c).expect("c").clone();
    assert_eq!(k.deployment_hash, Hash::of(b"d2"));
    assert_eq!(k.accepted_hash, Some(Hash::of(b"d1")));
    assert_eq!(k.price_per_hour, 4 * 100 + 2 * 50);
    assert_eq!(s.w.st.node(s.node_id).expect("n").reserved, bigger);
    s.w.ok(
        &mut s.node,
        TxBody::AcceptContract {
            contract: c,
            deployment_hash: Hash::of(b"d2"),
            result: None,
        },
    );
    assert_eq!(
        s.w.st.contract(c).expect("c").accepted_hash,
        Some(Hash::of(b"d2"))
    );
}

#[test]
fn state_digest_is_deterministic() {
    let build = || {
        let mut w = World::new(true);
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let tx = Tx {
            chain_id: "test".into(),
            signer: keys::public_key(&key),
            nonce: 1,
            body: TxBody::Faucet {
                amount: EXISTENTIAL_DEPOSIT,
            },
        }
        .sign(&key);
        w.apply_signed(&tx).expect("apply");
        w.st.digest()
    };
    assert_eq!(build(), build());
}

#[test]
fn a_node_without_persistent_state_takes_no_contracts() {
    let mut s = setup();
    let ek = keys::encryption_key(s.node.key());
    let node = s.node_id;
    let update = move |persistent| TxBody::UpdateNode {
        node,
        capacity: CAP,
        interfaces: vec![],
        encryption_key: ek,
        persistent,
    };
    s.w.ok(&mut s.node, update(false));
    assert!(!s.w.st.node(s.node_id).expect("node").persistent);
    assert_eq!(
        create(&mut s, SMALL, 0, 1000),
        Err(TxError::NodeNotPersistent(s.node_id))
    );
    s.w.ok(&mut s.node, update(true));
    assert!(create(&mut s, SMALL, 0, 1000).is_ok());
}
