//! The state's digest is what every replaying machine must agree on, so its
//! encoding may depend neither on the order entries went into the state's maps and
//! sets, nor on anything that differs from one process to another (a `HashMap`'s
//! iteration order is seeded per process). The state built here has many entries in
//! every map and set, and the same state is built twice with the independent
//! transactions in opposite orders, in this process and in a second one.

use ed25519_dalek::SigningKey;

use super::*;

/// Set in the second process: it prints its digest instead of comparing.
const CHILD: &str = "CELLOS_TEST_DIGEST_CHILD";
const PRINTED: &str = "state digest: ";

const USERS: u8 = 24;
const FARMS: u8 = 4;
const NODES: u8 = 8;
const CONTRACTS: u64 = 24;

/// A key from a fixed seed with a nonce counted here, so that another process signs
/// the very same transactions (a [`Signer`] takes its nonces from the wall clock).
struct Fixed {
    key: SigningKey,
    nonce: u64,
}

impl Fixed {
    fn new(seed: u8) -> Fixed {
        Fixed {
            key: SigningKey::from_bytes(&[seed; 32]),
            nonce: 0,
        }
    }

    fn public_key(&self) -> PublicKey {
        keys::public_key(&self.key)
    }

    fn sign(&mut self, body: TxBody) -> SignedTx {
        self.nonce += 1;
        Tx {
            chain_id: "test".into(),
            signer: self.public_key(),
            nonce: self.nonce,
            body,
        }
        .sign(&self.key)
    }
}

fn ok(w: &mut World, who: &mut Fixed, body: TxBody) {
    let name = body.name();
    let tx = who.sign(body);
    if let Err(e) = w.apply_signed(&tx) {
        panic!("{name} failed: {e}");
    }
}

/// `0..n` forwards, or backwards.
fn order<T>(items: impl DoubleEndedIterator<Item = T>, reversed: bool) -> Vec<T> {
    if reversed {
        items.rev().collect()
    } else {
        items.collect()
    }
}

/// Accounts, farms with IPs, nodes and contracts (some suspended, some resumed,
/// some closed). Ids are handed out in order, so what creates an id runs in one
/// order; everything else runs forwards or backwards.
fn build(reversed: bool) -> Hash {
    let mut w = World::new(true);
    let mut users: Vec<Fixed> = (1..=USERS).map(Fixed::new).collect();
    let mut farmers: Vec<Fixed> = (0..FARMS).map(|i| Fixed::new(100 + i)).collect();
    let mut nodes: Vec<Fixed> = (0..NODES).map(|i| Fixed::new(200 + i)).collect();

    for u in order(users.iter_mut(), reversed) {
        let amount = 1_000_000 + EXISTENTIAL_DEPOSIT;
        ok(&mut w, u, TxBody::Faucet { amount });
        let encryption_key = Some(keys::encryption_key(&u.key));
        ok(&mut w, u, TxBody::CreateAccount { encryption_key });
    }
    for f in order(farmers.iter_mut(), reversed) {
        let amount = EXISTENTIAL_DEPOSIT;
        ok(&mut w, f, TxBody::Faucet { amount });
    }
    for (i, f) in farmers.iter_mut().enumerate() {
        // Names sort against their ids, so the name map is not in id order.
        let name = format!("farm-{}", char::from(b'z' - i as u8));
        let (prices, enrollment_key) = (PRICES, None);
        ok(
            &mut w,
            f,
            TxBody::CreateFarm {
                name,
                prices,
                enrollment_key,
            },
        );
    }
    for (i, f) in order(farmers.iter_mut().enumerate(), reversed) {
        let farm = i as FarmId + 1;
        for host in 10..13 {
            let ip = format!("185.0.{farm}.{host}/24");
            let gateway = format!("185.0.{farm}.1");
            ok(&mut w, f, TxBody::AddFarmIp { farm, ip, gateway });
        }
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        let body = TxBody::RegisterNode {
            farm: i as FarmId % FarmId::from(FARMS) + 1,
            capacity: CAP,
            interfaces: vec![],
            gpus: vec![],
            accel: Accel::Tcg,
            encryption_key: keys::encryption_key(&n.key),
            location: None,
            enrollment: None,
            persistent: true,
        };
        ok(&mut w, n, body);
    }
    for node in order(1..=NodeId::from(NODES), reversed) {
        let farmer = &mut farmers[((node - 1) % NodeId::from(FARMS)) as usize];
        ok(&mut w, farmer, TxBody::ApproveNode { node });
    }
    let node_of = |c: ContractId| ((c - 1) % u64::from(NODES)) as NodeId + 1;
    for c in 1..=CONTRACTS {
        // Every third contract's deposit runs out within the hour billed below.
        let deposit = if c % 3 == 0 { 200 } else { 100_000 };
        let body = TxBody::CreateContract {
            node: node_of(c),
            deployment_hash: Hash::of(&c.to_le_bytes()),
            resources: Resources {
                cru: 1,
                ..Default::default()
            },
            public_ips: u32::from(c % 5 == 2),
            deposit,
            blob: None,
        };
        ok(&mut w, &mut users[(c % u64::from(USERS)) as usize], body);
    }
    let start = w.t;
    for c in order(1..=CONTRACTS, reversed) {
        let body = TxBody::AcceptContract {
            contract: c,
            deployment_hash: Hash::of(&c.to_le_bytes()),
            result: None,
        };
        ok(&mut w, &mut nodes[(node_of(c) - 1) as usize], body);
    }
    w.at(start + 3600);
    for c in order(1..=CONTRACTS, reversed) {
        let body = TxBody::ReportUsage {
            contract: c,
            window_start: start,
            window_end: start + 3600,
            nu_bytes: c * GIB,
            cpu_usec: 0,
            memory_bytes: 0,
        };
        ok(&mut w, &mut nodes[(node_of(c) - 1) as usize], body);
    }
    // Some open contracts closed, some suspended ones topped up again.
    for c in order((1..=CONTRACTS).filter(|c| c % 5 == 0), reversed) {
        let user = &mut users[(c % u64::from(USERS)) as usize];
        ok(&mut w, user, TxBody::CancelContract { contract: c });
    }
    for c in order((1..=CONTRACTS).filter(|c| c % 6 == 0), reversed) {
        let user = &mut users[(c % u64::from(USERS)) as usize];
        let body = TxBody::TopUp {
            contract: c,
            amount: 10_000,
        };
        ok(&mut w, user, body);
    }
    let suspended =
        w.st.contracts()
            .filter(|c| c.state == ContractState::Suspended)
            .count();
    assert!(suspended >= 2, "{suspended} suspended contracts");
    w.st.digest()
}

#[test]
fn state_digest_is_the_same_in_any_order_and_any_process() {
    if std::env::var_os(CHILD).is_some() {
        println!("{PRINTED}{}", build(true));
        return;
    }
    let here = build(false);
    assert_eq!(
        here,
        build(true),
        "the same state built in another order has another digest"
    );

    // The same state built in a second process (another HashMap seed, another
    // address space) has the same digest.
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args([
            "determinism::state_digest_is_the_same_in_any_order_and_any_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let there = stdout
        .lines()
        // libtest prints the test's name on the same line.
        .find_map(|l| l.split_once(PRINTED)?.1.split_whitespace().next())
        .unwrap_or_else(|| panic!("the second process printed no digest: {stdout}"));
    assert_eq!(
        there,
        here.to_string(),
        "another process built the same state with another digest"
    );
}
