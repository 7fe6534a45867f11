//! The dashboard's screens as text, drawn on ratatui's `TestBackend` at the VGA
//! console's 80x25 and at 132x43, for a fresh node, a node with contracts, a node
//! whose ledger does not answer and a node whose cellosd is not up; and a 40x10
//! screen, which must get a short note and no panic. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p cellos-dashboard --test golden`.

use std::path::Path;

use cellos_dashboard::model::{Model, Nic};
use cellos_dashboard::ui;
use cellos_dashboard::view::{
    CapacityView, ContractView, LedgerView, PoolView, RegState, Registration, Res, Snapshot,
    WorkloadView,
};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

const GIB: u64 = 1 << 30;
const NOW: u64 = 1_800_000_000;

fn nics() -> Vec<Nic> {
    vec![
        Nic {
            name: "eth0".into(),
            addrs: vec!["10.0.2.15/24".into(), "fec0::5054:ff:fe12:3456/64".into()],
        },
        Nic {
            name: "eth1".into(),
            addrs: vec![],
        },
    ]
}

fn fresh() -> Snapshot {
    Snapshot {
        version: "0.1.0".into(),
        uptime_secs: 9,
        node_key: "4f8a1c0e6b2d93a7c5e1f0b8d2a4c6e8f1a3b5c7d9e0f2a4b6c8d0e2f4a6b8c0".into(),
        farm: 1,
        ledger: LedgerView {
            url: "http://10.0.2.2:8080".into(),
            reachable: Some(true),
        },
        registration: Registration::default(),
        capacity: CapacityView::default(),
        pools: vec![],
        contracts: vec![],
        errors: vec![],
    }
}

fn workload(name: &str, kind: &str, phase: &str) -> WorkloadView {
    WorkloadView {
        name: name.into(),
        kind: kind.into(),
        phase: phase.into(),
    }
}

fn busy() -> Snapshot {
    let mut contracts = Vec::new();
    for id in 11..=16 {
        contracts.push(ContractView {
            id,
            accepted: true,
            rejected: None,
            workloads: vec![
                workload("data", "volume", "ready"),
                workload(
                    "objects",
                    "shard",
                    if id == 16 { "provisioning" } else { "ready" },
                ),
            ],
        });
    }
    contracts.push(ContractView {
        id: 17,
        accepted: false,
        rejected: Some("not enough SRU".into()),
        workloads: vec![workload("big", "volume", "failed")],
    });
    Snapshot {
        uptime_secs: 3 * 86_400 + 5 * 3600,
        registration: Registration {
            state: RegState::Registered,
            node: Some(7),
            last_uptime: Some(NOW - 42),
            status: Some("up".into()),
        },
        capacity: CapacityView {
            total: Res {
                cru: 8,
                mru: 32 * GIB,
                sru: 900 * GIB,
                hru: 4000 * GIB,
            },
            reserved: Res {
                cru: 2,
                mru: 8 * GIB,
                sru: 300 * GIB,
                hru: 1000 * GIB,
            },
            used: Res {
                cru: 1,
                mru: 4 * GIB,
                sru: 250 * GIB,
                hru: 800 * GIB,
            },
        },
        pools: vec![
            PoolView {
                name: "ssd-3f2a91c0".into(),
                disk: "sda".into(),
                kind: "ssd".into(),
                size: 900 * GIB,
                used: 260 * GIB,
            },
            PoolView {
                name: "hdd-77b0e412".into(),
                disk: "sdb".into(),
                kind: "hdd".into(),
                size: 4000 * GIB,
                used: 810 * GIB,
            },
        ],
        contracts,
        ..fresh()
    }
}

fn unreachable() -> Snapshot {
    let mut s = busy();
    s.ledger.reachable = Some(false);
    s.registration.last_uptime = Some(NOW - 1300);
    s.errors = vec![
        "cellos: ledger http://10.0.2.2:8080 unreachable (connection refused), retrying in 8s"
            .into(),
        "cellos: ledger http://10.0.2.2:8080 unreachable (connection refused), retrying in 16s"
            .into(),
        "cellos: ledger http://10.0.2.2:8080 unreachable (connection refused), retrying in 32s"
            .into(),
        "cellos: ledger http://10.0.2.2:8080 unreachable (connection refused), retrying in 60s"
            .into(),
    ];
    s
}

fn model(snapshot: Result<Snapshot, String>) -> Model {
    Model {
        snapshot,
        nics: nics(),
        now: NOW,
        scroll: 0,
    }
}

/// Draws `m` at `w`x`h` and returns the screen's text, one line per row, trailing
/// blanks cut.
fn screen(m: &Model, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    t.draw(|f| ui::draw(f, m)).expect("draw");
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..h {
        let row: String = (0..w).map(|x| buf[(x, y)].symbol()).collect();
        out.push_str(row.trim_end());
        out.push('\n');
    }
    out
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        actual,
        expected,
        "{}; regenerate with UPDATE_GOLDEN=1",
        path.display()
    );
}

fn both_sizes(name: &str, m: &Model) -> [String; 2] {
    let small = screen(m, 80, 25);
    let large = screen(m, 132, 43);
    golden(&format!("{name}-80x25.txt"), &small);
    golden(&format!("{name}-132x43.txt"), &large);
    [small, large]
}

#[test]
fn fresh_node() {
    for s in both_sizes("fresh", &model(Ok(fresh()))) {
        assert!(s.contains("cellos node (not registered) · farm 1 · registering"));
        assert!(s.contains("10.0.2.15/24"));
        assert!(s.contains("no contracts on this node"));
        assert!(s.contains("no disks: the state is in RAM"));
    }
}

#[test]
fn node_with_contracts() {
    let [small, large] = both_sizes("contracts", &model(Ok(busy())));
    for s in [&small, &large] {
        assert!(s.contains("cellos node 7 · farm 1 · registered (up)"));
        assert!(s.contains("answers · uptime report 42s ago"));
        assert!(s.contains("CRU  ██"));
        assert!(s.contains("ssd-3f2a91c0"));
        assert!(s.contains("contract 11"));
        assert!(s.contains("Last errors"));
    }
    // The large screen holds the whole list, the small one scrolls.
    assert!(large.contains("refused: not enough SRU"));
    assert!(!small.contains("refused: not enough SRU"));
    assert!(small.contains("Workloads 1-"));
}

#[test]
fn scrolled_to_the_end_shows_the_last_workload() {
    let mut m = model(Ok(busy()));
    m.scroll_by(100);
    let s = screen(&m, 80, 25);
    assert!(s.contains("contract 17"), "{s}");
    assert!(s.contains("refused: not enough SRU"), "{s}");
}

#[test]
fn ledger_unreachable() {
    for s in both_sizes("unreachable", &model(Ok(unreachable()))) {
        assert!(s.contains("UNREACHABLE · uptime report 21m40s ago"));
        assert!(s.contains("retrying in 60s"));
        // Only the last three error lines fit.
        assert!(!s.contains("retrying in 8s"));
    }
}

#[test]
fn cellosd_not_up() {
    let m = model(Err(
        "cellosd's socket /run/cellos/dashboard.sock: No such file or directory (os error 2)"
            .into(),
    ));
    let s = screen(&m, 80, 25);
    golden("no-cellosd-80x25.txt", &s);
    assert!(s.contains("waiting for cellosd"));
    assert!(s.contains("eth0   10.0.2.15/24"));
}

#[test]
fn too_small_a_screen_gets_a_note() {
    for (w, h) in [(40, 10), (79, 15), (1, 1), (0, 0)] {
        let s = screen(&model(Ok(busy())), w, h);
        if w >= 20 {
            assert!(s.contains("needs 60x16"), "{w}x{h}: {s}");
        }
    }
    let s = screen(&model(Ok(busy())), 40, 10);
    golden("too-small-40x10.txt", &s);
    assert!(
        s.starts_with("cellos node 7: registered (up)\nscreen 40x10: needs 60x16\n"),
        "{s}"
    );
}
