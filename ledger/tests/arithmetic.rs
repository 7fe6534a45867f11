//! Money, capacity and time at the edges of `u64` (issue 11, item 7; DESIGN §9).
//!
//! A property test drives whole contract lifetimes (create, accept, usage, top-up,
//! update, cancel) with extreme prices, resources, deposits, durations and traffic,
//! and checks after every transaction that nothing panicked, that a price the ledger
//! accepted is the true price (never a wrapped or capped one), and that no money was
//! created or destroyed. The ledger crate is built with overflow checks, so any
//! arithmetic that was not checked by hand would panic here.

use cellos_ledger::keys::{self, Signer};
use cellos_ledger::state::{Event, State, TxError};
use cellos_ledger::*;
use proptest::prelude::*;

struct World {
    st: State,
    h: u64,
    t: u64,
}

impl World {
    fn new() -> World {
        let mut p = ChainParams::new("arith", true);
        p.faucet_max = u64::MAX;
        let st = State::new(p, 1_000_000);
        World {
            st,
            h: 0,
            t: 1_000_000,
        }
    }

    /// Applies `body` in a block of its own at time `self.t`, checking afterwards
    /// that money is conserved and that a rejection left the state untouched.
    fn run(&mut self, who: &mut Signer, body: TxBody) -> Result<Vec<Event>, TxError> {
        self.h += 1;
        let mut ev = self.st.begin_block(self.h, self.t);
        let vtx = who.sign(body).into_verified().expect("signed right");
        let before = self.st.digest();
        let r = self.st.apply(&vtx);
        if r.is_err() {
            assert_eq!(self.st.digest(), before, "a rejection changed the state");
        }
        self.check_money();
        ev.extend(r?);
        Ok(ev)
    }

    fn ok(&mut self, who: &mut Signer, body: TxBody) -> Vec<Event> {
        let name = body.name();
        self.run(who, body)
            .unwrap_or_else(|e| panic!("{name} failed: {e}"))
    }

    /// Every balance and every escrow together are exactly the money minted.
    fn check_money(&self) {
        let balances: u128 = self.st.accounts().map(|a| u128::from(a.balance)).sum();
        let escrows: u128 = self.st.contracts().map(|c| u128::from(c.escrow)).sum();
        assert_eq!(
            balances + escrows,
            u128::from(self.st.supply()),
            "money was created or destroyed"
        );
    }

    fn balance(&self, s: &Signer) -> Amount {
        self.st.account(&s.public_key()).map_or(0, |a| a.balance)
    }
}

/// An account holding `funds` to spend on top of the existential deposit (minted by
/// the dev faucet), or as much as is left to mint.
fn account(w: &mut World, funds: Amount) -> Signer {
    let mut s = Signer::new(keys::generate(), "arith");
    let ek = keys::encryption_key(s.key());
    // An account is opened by money: the faucet brings `funds` to spend on top of
    // the existential deposit that stays in it.
    w.ok(
        &mut s,
        TxBody::Faucet {
            amount: funds
                .saturating_add(EXISTENTIAL_DEPOSIT)
                .min(u64::MAX - w.st.supply()),
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

/// The true hourly price as a float: an independent reckoning that cannot wrap.
fn price_estimate(p: &Prices, r: &Resources, ips: u32) -> f64 {
    let gib = GIB as f64;
    let cu = (r.cru as f64).max(r.mru as f64 / (4.0 * gib));
    let su = r.sru as f64 / (100.0 * gib) + r.hru as f64 / (1024.0 * gib);
    cu * p.cu as f64 + su * p.su as f64 + f64::from(ips) * p.ipu as f64
}

/// 2^64: the first number an amount cannot hold.
const LIMIT: f64 = 18_446_744_073_709_551_616.0;

/// Float reckonings are exact only to about 1e-16; near the limit they decide nothing.
fn clearly_fits(x: f64) -> bool {
    x < LIMIT * (1.0 - 1e-9)
}
fn clearly_overflows(x: f64) -> bool {
    x > LIMIT * (1.0 + 1e-9)
}

/// The larger of the CU and SU counts in thousandths, as floats.
fn units_estimate(r: &Resources) -> f64 {
    let gib = GIB as f64;
    let cu = (r.cru as f64 * 1000.0).max(r.mru as f64 * 1000.0 / (4.0 * gib));
    let su = r.sru as f64 * 1000.0 / (100.0 * gib) + r.hru as f64 * 1000.0 / (1024.0 * gib);
    cu.max(su)
}

/// Checks an accepted price against the estimate, or a refusal against it.
fn check_price(price: Option<Amount>, p: &Prices, r: &Resources, ips: u32) {
    let est = price_estimate(p, r, ips);
    let units = units_estimate(r);
    match price {
        Some(got) => {
            assert!(
                !clearly_overflows(units),
                "priced {r} whose units do not fit"
            );
            // Rounding up adds less than a thousandth of a unit per rounded part
            // (memory, SSD, HDD) and then 1 to the total; f64 loses ~1e-16.
            let tol = est * 1e-9 + (p.cu as f64 + 2.0 * p.su as f64) / 1000.0 + 2.0;
            assert!(
                (got as f64 - est).abs() <= tol,
                "price {got} for {r} with {ips} IPs at {p:?}, but it is about {est}"
            );
        }
        None => assert!(
            !(clearly_fits(units) && clearly_fits(est)),
            "refused a price of about {est} for {r} with {ips} IPs at {p:?}, which fits"
        ),
    }
}

fn extreme() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(u64::MAX / 1000),
        Just(u64::MAX / 1000 + 1),
        Just(1u64 << 63),
        Just(1u64 << 32),
        0u64..1000,
        any::<u64>(),
    ]
}

fn prices() -> impl Strategy<Value = Prices> {
    (extreme(), extreme(), extreme(), extreme()).prop_map(|(cu, su, nu, ipu)| Prices {
        cu,
        su,
        nu,
        ipu,
    })
}

fn resources() -> impl Strategy<Value = Resources> {
    (extreme(), extreme(), extreme(), extreme()).prop_map(|(cru, mru, sru, hru)| Resources {
        cru,
        mru,
        sru,
        hru,
    })
}

#[derive(Debug, Clone)]
struct Case {
    prices: Prices,
    capacity: Resources,
    reservation: Resources,
    ips: u32,
    funds: Amount,
    deposit: Amount,
    /// Seconds from creation to the usage window's start, and its length.
    gap: u64,
    window: u64,
    nu_bytes: u64,
    top_up: Amount,
    update: Resources,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (prices(), resources(), resources(), 0u32..3),
        (extreme(), extreme(), extreme(), extreme(), extreme()),
        (extreme(), extreme(), resources()),
    )
        .prop_map(
            |(
                (prices, capacity, reservation, ips),
                (funds, deposit, gap, window, nu_bytes),
                (top_up, update_pick, update),
            )| Case {
                prices,
                // Mostly a node big enough for the reservation, sometimes not.
                capacity: if update_pick % 4 == 0 {
                    capacity
                } else {
                    Resources {
                        cru: u64::MAX,
                        mru: u64::MAX,
                        sru: u64::MAX,
                        hru: u64::MAX,
                    }
                },
                reservation,
                ips,
                funds,
                deposit,
                gap,
                window,
                nu_bytes,
                top_up,
                update,
            },
        )
}

fn is_refusal_by_numbers(e: &TxError) -> bool {
    matches!(
        e,
        TxError::PriceOverflow { .. }
            | TxError::Overflow(_)
            | TxError::DepositTooSmall { .. }
            | TxError::InsufficientBalance { .. }
            | TxError::OverCapacity { .. }
            | TxError::EmptyReservation
            | TxError::ZeroAmount
    )
}

fn contract_lifetime(k: Case) {
    let mut w = World::new();
    let mut farmer = account(&mut w, 0);
    let ev = w.ok(
        &mut farmer,
        TxBody::CreateFarm {
            name: "edge".into(),
            prices: k.prices,
            enrollment_key: None,
        },
    );
    let farm = match ev.as_slice() {
        [Event::FarmCreated { farm, .. }] => *farm,
        other => panic!("unexpected events {other:?}"),
    };
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
    let mut node = Signer::new(keys::generate(), "arith");
    let node_ek = keys::encryption_key(node.key());
    let ev = w.ok(
        &mut node,
        TxBody::RegisterNode {
            farm,
            capacity: k.capacity,
            interfaces: vec![],
            gpus: vec![],
            accel: cellos_ledger::Accel::Tcg,
            encryption_key: node_ek,
            location: None,
            enrollment: None,
            persistent: true,
        },
    );
    let node_id = match ev.last() {
        Some(Event::NodeRegistered { node, .. }) => *node,
        other => panic!("unexpected events {other:?}"),
    };
    w.ok(&mut farmer, TxBody::ApproveNode { node: node_id });
    let mut user = account(&mut w, k.funds);

    let before = w.balance(&user);
    let created = w.run(
        &mut user,
        TxBody::CreateContract {
            node: node_id,
            deployment_hash: Hash::of(b"d"),
            resources: k.reservation,
            public_ips: k.ips,
            deposit: k.deposit,
            blob: None,
        },
    );
    let price = k.prices.per_hour(&k.reservation, k.ips);
    check_price(price, &k.prices, &k.reservation, k.ips);
    let id = match created {
        Err(e) => {
            assert!(is_refusal_by_numbers(&e), "unexpected refusal: {e}");
            if let TxError::PriceOverflow { .. } = e {
                assert_eq!(price, None, "refused a price that fits");
            }
            return;
        }
        Ok(ev) => match ev.last() {
            Some(Event::ContractCreated { contract, .. }) => *contract,
            other => panic!("unexpected events {other:?}"),
        },
    };
    let c = w.st.contract(id).expect("contract").clone();
    assert_eq!(
        Some(c.price_per_hour),
        price,
        "accepted at a price that is not the price"
    );
    assert!(c.escrow >= c.price_per_hour.max(1));
    assert_eq!(w.balance(&user), before - k.deposit);
    assert_eq!(w.st.node(node_id).expect("node").reserved, k.reservation);

    w.ok(
        &mut node,
        TxBody::AcceptContract {
            contract: id,
            deployment_hash: Hash::of(b"d"),
            result: None,
        },
    );

    // Usage over a window that may be anywhere up to the end of time.
    let start = w.t.saturating_add(k.gap);
    let end = start.saturating_add(k.window);
    w.t = end;
    let escrow = w.st.contract(id).expect("contract").escrow;
    let farmer_before = w.balance(&farmer);
    match w.run(
        &mut node,
        TxBody::ReportUsage {
            contract: id,
            window_start: start,
            window_end: end,
            nu_bytes: k.nu_bytes,
            cpu_usec: 0,
            memory_bytes: 0,
        },
    ) {
        Ok(_) => {
            let c = w.st.contract(id).expect("contract");
            let paid = escrow - c.escrow;
            assert_eq!(w.balance(&farmer), farmer_before + paid);
            // The true cost, or the whole escrow when it is more.
            let cost = c.price_per_hour as f64 * (end - start) as f64 / 3600.0
                + c.price_per_gib as f64 * k.nu_bytes as f64 / GIB as f64;
            let expected = cost.min(escrow as f64);
            assert!(
                (paid as f64 - expected).abs() <= expected * 1e-9 + 2.0,
                "paid {paid} for a cost of about {cost} with escrow {escrow}"
            );
        }
        Err(e) => assert!(
            matches!(
                e,
                TxError::BadWindow { .. } | TxError::WindowInFuture { .. }
            ),
            "unexpected refusal of usage: {e}"
        ),
    }

    match w.run(
        &mut user,
        TxBody::TopUp {
            contract: id,
            amount: k.top_up,
        },
    ) {
        Ok(_) | Err(TxError::WrongContractState { .. }) => {}
        Err(e) => assert!(is_refusal_by_numbers(&e), "unexpected refusal: {e}"),
    }

    let updated = w.run(
        &mut user,
        TxBody::UpdateContract {
            contract: id,
            deployment_hash: Hash::of(b"d2"),
            resources: k.update,
            blob: None,
        },
    );
    let ips = u32::try_from(c.public_ips.len()).expect("two IPs at most");
    let new_price = k.prices.per_hour(&k.update, ips);
    check_price(new_price, &k.prices, &k.update, ips);
    match updated {
        Ok(_) => {
            let c = w.st.contract(id).expect("contract");
            assert_eq!(Some(c.price_per_hour), new_price);
            assert_eq!(w.st.node(node_id).expect("node").reserved, k.update);
        }
        Err(TxError::WrongContractState { .. }) => {}
        Err(e) => assert!(is_refusal_by_numbers(&e), "unexpected refusal: {e}"),
    }

    // Cancel is always possible and refunds the rest.
    let escrow = w.st.contract(id).expect("contract").escrow;
    let before = w.balance(&user);
    match w.run(&mut user, TxBody::CancelContract { contract: id }) {
        Ok(_) => assert_eq!(w.balance(&user), before + escrow),
        Err(TxError::WrongContractState { .. }) => {}
        Err(e) => panic!("cancel refused: {e}"),
    }
    assert!(w.st.node(node_id).expect("node").reserved.is_zero());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn extreme_numbers_never_wrap(k in case()) {
        contract_lifetime(k);
    }
}

/// The case of issue 11: farm prices near `u64::MAX` and a node of huge capacity
/// used to give a contract at `price_per_hour: 1`.
#[test]
fn huge_prices_and_capacity_are_refused_with_a_reason() {
    let max = Resources {
        cru: u64::MAX / 1000,
        mru: u64::MAX,
        sru: u64::MAX,
        hru: u64::MAX,
    };
    let k = Case {
        prices: Prices {
            cu: u64::MAX,
            su: u64::MAX,
            nu: u64::MAX,
            ipu: u64::MAX,
        },
        capacity: max,
        reservation: max,
        ips: 0,
        funds: u64::MAX,
        deposit: 1,
        gap: 0,
        window: 1,
        nu_bytes: 0,
        top_up: 1,
        update: Resources::default(),
    };
    let mut w = World::new();
    let mut farmer = account(&mut w, 0);
    w.ok(
        &mut farmer,
        TxBody::CreateFarm {
            name: "edge".into(),
            prices: k.prices,
            enrollment_key: None,
        },
    );
    let mut node = Signer::new(keys::generate(), "arith");
    let node_ek = keys::encryption_key(node.key());
    w.ok(
        &mut node,
        TxBody::RegisterNode {
            farm: 1,
            capacity: k.capacity,
            interfaces: vec![],
            gpus: vec![],
            accel: cellos_ledger::Accel::Tcg,
            encryption_key: node_ek,
            location: None,
            enrollment: None,
            persistent: true,
        },
    );
    w.ok(&mut farmer, TxBody::ApproveNode { node: 1 });
    let mut user = account(&mut w, k.funds);
    let e = w
        .run(
            &mut user,
            TxBody::CreateContract {
                node: 1,
                deployment_hash: Hash::of(b"d"),
                resources: k.reservation,
                public_ips: 0,
                deposit: k.deposit,
                blob: None,
            },
        )
        .expect_err("a price that does not fit must be refused");
    assert!(matches!(e, TxError::PriceOverflow { farm: 1, .. }), "{e}");
    assert!(e.to_string().contains("does not fit"), "{e}");
}

/// The faucet never mints past what an amount can hold, so sums of balances never
/// overflow.
#[test]
fn supply_is_capped() {
    let mut w = World::new();
    let mut b = account(&mut w, 0);
    let mut a = account(&mut w, u64::MAX);
    assert_eq!(w.st.supply(), u64::MAX);
    let e = w
        .run(&mut a, TxBody::Faucet { amount: 1 })
        .expect_err("minting past u64::MAX");
    assert_eq!(e, TxError::Overflow("the money supply"));
    let e = w
        .run(&mut b, TxBody::Faucet { amount: 1 })
        .expect_err("minting past u64::MAX for another account");
    assert_eq!(e, TxError::Overflow("the money supply"));
}
