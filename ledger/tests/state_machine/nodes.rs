//! Nodes: registration, approval, enrollment, updates, uptime, status and decommissioning.

use super::*;

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

fn gpu(slot: u8, iommu_group: Option<u32>) -> Gpu {
    Gpu {
        address: format!("0000:00:{slot:02x}.0"),
        vendor: 0x10de,
        device: 0x2204,
        iommu_group,
    }
}

/// The node's record carries its GPUs and accelerator from RegisterNode and follows
/// them on UpdateNode; a list past the bound, or an address too long, is refused
/// with what was too long.
#[test]
fn gpus_and_accel_are_recorded_and_bounded() {
    let mut w = World::new(true);
    let mut farmer = account(&mut w, 0);
    let f = farm(&mut w, &mut farmer, "f", None);
    let mut node = signer();
    let ek = keys::encryption_key(node.key());
    let register = |gpus: Vec<Gpu>| TxBody::RegisterNode {
        farm: f,
        capacity: CAP,
        interfaces: vec![],
        gpus,
        accel: Accel::Kvm,
        encryption_key: ek,
        location: None,
        enrollment: None,
        persistent: true,
    };
    let too_many: Vec<Gpu> = (0..65).map(|i| gpu(i, None)).collect();
    assert_eq!(
        w.err(&mut node, register(too_many.clone())),
        TxError::TooLong {
            what: "gpu list",
            len: 65,
            max: 64
        }
    );
    let ev = w.ok(&mut node, register(vec![gpu(2, Some(7))]));
    let id = match ev.last() {
        Some(Event::NodeRegistered { node, .. }) => *node,
        other => panic!("unexpected events {other:?}"),
    };
    let n = w.st.node(id).expect("node");
    assert_eq!(n.gpus, vec![gpu(2, Some(7))]);
    assert_eq!(n.accel, Accel::Kvm);

    let update = |gpus: Vec<Gpu>| TxBody::UpdateNode {
        node: id,
        capacity: CAP,
        interfaces: vec![],
        gpus,
        accel: Accel::Tcg,
        encryption_key: ek,
        persistent: true,
    };
    assert!(matches!(
        w.err(&mut node, update(too_many)),
        TxError::TooLong {
            what: "gpu list",
            ..
        }
    ));
    let mut long = gpu(3, None);
    long.address = "0".repeat(33);
    let e = w.err(&mut node, update(vec![long]));
    assert_eq!(e.to_string(), "gpu pci address is too long (33 > 32)");
    // Refusals changed nothing.
    assert_eq!(w.st.node(id).expect("node").gpus, vec![gpu(2, Some(7))]);
    let two = vec![gpu(2, Some(7)), gpu(3, None)];
    w.ok(&mut node, update(two.clone()));
    let n = w.st.node(id).expect("node");
    assert_eq!((&n.gpus, n.accel), (&two, Accel::Tcg));
    // On the wire the accelerator is lowercase, and a record without GPUs or
    // accelerator (an older client's) reads as none and TCG.
    let json = serde_json::to_value(n).expect("json");
    assert_eq!(json["accel"], "tcg");
    assert_eq!(json["gpus"][1]["iommu_group"], serde_json::Value::Null);
    let mut old = json.clone();
    let fields = old.as_object_mut().expect("an object");
    fields.remove("gpus");
    fields.remove("accel");
    let back: Node = serde_json::from_value(old).expect("an older record");
    assert!(back.gpus.is_empty());
    assert_eq!(back.accel, Accel::Tcg);
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
                gpus: vec![],
                accel: Accel::Tcg,
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
            gpus: vec![],
            accel: Accel::Tcg,
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
                gpus: vec![],
                accel: Accel::Tcg,
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
