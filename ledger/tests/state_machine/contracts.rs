//! Contracts: reservation, acceptance, rejection, cancellation and updates.

use super::*;

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
            cpu_usec: 0,
            memory_bytes: 0,
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
fn a_node_without_persistent_state_takes_no_contracts() {
    let mut s = setup();
    let ek = keys::encryption_key(s.node.key());
    let node = s.node_id;
    let update = move |persistent| TxBody::UpdateNode {
        node,
        capacity: CAP,
        interfaces: vec![],
        gpus: vec![],
        accel: Accel::Tcg,
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
