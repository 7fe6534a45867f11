//! A node against an `https://` ledger (issue 11, item 10): the farm's own CA reaches
//! the node as `cellos.ca=` on its cmdline, and the node registers over TLS; a node
//! given another CA refuses the ledger's certificate and says so on its console.

use cellos_ledger::keys;
use cellos_tests::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// A test CA (made here, never from the internet).
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("self-signed");
        Ca { cert, key }
    }

    /// The certificate as `cellos.ca=` carries it: base64 DER, the PEM's body.
    fn cmdline(&self) -> String {
        self.cert
            .pem()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect()
    }
}

#[test]
fn vm_registers_over_tls_with_its_ca_and_refuses_another() {
    let img = image();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("cellos e2e farm CA");
    // The guest reaches the host as 10.0.2.2 (QEMU user networking).
    let leaf = CertificateParams::new(vec!["10.0.2.2".to_string(), "127.0.0.1".to_string()])
        .expect("params");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = leaf.signed_by(&leaf_key, &ca.cert, &ca.key).expect("sign");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, leaf.pem()).expect("write");
    std::fs::write(&key, leaf_key.serialize_pem()).expect("write");
    let ledger = Ledger::start_tls(&cert, &key, &ca.cert.pem());
    assert!(ledger.guest_url().starts_with("https://"));
    let enroll = keys::generate();
    let farm = ledger.farm(&enroll);

    let mut params = boot_params(farm, &ledger.guest_url(), &enroll);
    params
        .extra
        .push_str(&format!(" cellos.ca={}", ca.cmdline()));
    let mut vm = start(vm_config(img.direct(&params), vec![]));
    vm.wait_for("trusting the CA from cellos.ca=", BOOT_TIMEOUT)
        .expect("cellosd takes the CA");
    let (node, on_farm, _) = registered(
        &vm.wait_for(&Regex::new(REGISTERED).expect("regex"), BOOT_TIMEOUT)
            .expect("registers over TLS"),
    );
    assert_eq!(on_farm, farm);
    assert_eq!(ledger.node(node).farm, farm);
    drop(vm);

    // Another CA: the ledger's certificate is refused, with the reason on the console.
    let other = Ca::new("someone else's CA");
    let mut params = boot_params(farm, &ledger.guest_url(), &enroll);
    params
        .extra
        .push_str(&format!(" cellos.ca={}", other.cmdline()));
    let mut vm = start(vm_config(img.direct(&params), vec![]));
    let line = vm
        .wait_for(
            &Regex::new(r"(?i)certificate").expect("regex"),
            BOOT_TIMEOUT,
        )
        .expect("a console line about the certificate");
    assert!(
        !vm.console().contains("registered on farm"),
        "registered with a ledger it should not trust: {line}"
    );
    assert_eq!(ledger.nodes().len(), 1, "only the first node registered");
    println!("figures: refused with: {line}");
}
