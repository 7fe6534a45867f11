//! Farms: names, public IPs and ownership.

use super::*;

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
