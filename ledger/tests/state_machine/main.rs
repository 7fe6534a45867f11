//! Every transaction of the state machine, with each of its rejections: one module
//! per area of the state (as in `cellos_ledger::state`), all on the one [`World`]
//! defined here, plus the determinism of the state's digest.

mod accounts;
mod billing;
mod contracts;
mod determinism;
mod farms;
mod nodes;

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
            gpus: vec![],
            accel: Accel::Tcg,
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
