//! Billing: usage windows, suspension, top-ups and the grace period.

use super::*;

/// Measured CPU time adds up on the contract and the last memory figure replaces
/// the one before; CPU time the node's CPUs cannot have had in the window (and the
/// clock skew allowed) is refused and changes nothing.
#[test]
fn usage_reports_keep_cpu_time_and_memory() {
    let mut s = setup();
    let c = create(&mut s, SMALL, 0, 10_000).expect("create");
    accept(&mut s, c);
    let t = s.w.t;
    let report = |start: u64, end: u64, cpu_usec: u64, memory_bytes: u64| TxBody::ReportUsage {
        contract: c,
        window_start: start,
        window_end: end,
        nu_bytes: 0,
        cpu_usec,
        memory_bytes,
    };
    s.w.at(t + 100);
    s.w.ok(&mut s.node, report(t, t + 100, 30_000_000, 64 << 20));
    s.w.at(t + 200);
    s.w.ok(&mut s.node, report(t + 100, t + 200, 12_500_000, 48 << 20));
    let k = s.w.st.contract(c).expect("contract");
    assert_eq!((k.cpu_usec, k.memory_bytes), (42_500_000, 48 << 20));
    // The node has 4 CPUs (CAP) and the skew is 60 s: (100 + 60) s x 4 at most.
    s.w.at(t + 300);
    let max = 160 * 4 * 1_000_000;
    assert_eq!(
        s.w.err(&mut s.node, report(t + 200, t + 300, max + 1, 1)),
        TxError::CpuTimeBeyondNode {
            node: s.node_id,
            cpu_usec: max + 1,
            max
        }
    );
    let k = s.w.st.contract(c).expect("contract");
    assert_eq!(
        (k.cpu_usec, k.memory_bytes, k.billed_until),
        (42_500_000, 48 << 20, t + 200)
    );
    s.w.ok(&mut s.node, report(t + 200, t + 300, max, 1));
    let k = s.w.st.contract(c).expect("contract");
    assert_eq!((k.cpu_usec, k.memory_bytes), (42_500_000 + max, 1));
    // The contract endpoint's JSON names them.
    let json = serde_json::to_value(k).expect("json");
    assert_eq!(json["cpu_usec"], 42_500_000 + max);
    assert_eq!(json["memory_bytes"], 1);
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
                nu_bytes: 0,
                cpu_usec: 0,
                memory_bytes: 0
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
                nu_bytes: 0,
                cpu_usec: 0,
                memory_bytes: 0
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
                nu_bytes: 0,
                cpu_usec: 0,
                memory_bytes: 0
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
        cpu_usec: 0,
        memory_bytes: 0,
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
                nu_bytes: 0,
                cpu_usec: 0,
                memory_bytes: 0
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
                nu_bytes: 0,
                cpu_usec: 0,
                memory_bytes: 0
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
            cpu_usec: 0,
            memory_bytes: 0,
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
            cpu_usec: 0,
            memory_bytes: 0,
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
            cpu_usec: 0,
            memory_bytes: 0,
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
                nu_bytes: 0,
                cpu_usec: 0,
                memory_bytes: 0
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
            cpu_usec: 0,
            memory_bytes: 0,
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
