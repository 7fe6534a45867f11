//! Ledger targets: what a client POSTs as a transaction, what a user writes as a
//! deployment, and what a node takes out of the blob mailbox.

use cellos_ledger::deployment::{self, Deployment, WorkloadSpec};
use cellos_ledger::{keys, SignedTx, Tx};
use ed25519_dalek::SigningKey;

/// A fixed key, so every run of an input does the same thing.
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// The node key sealed deployments are addressed to (seeds are sealed to it).
pub const NODE_KEY: u8 = 3;

/// `POST /v1/tx`: the server decodes the body with serde_json and checks the
/// signature over the canonical encoding before anything else looks at it.
pub fn tx(data: &[u8]) {
    let Ok(stx) = serde_json::from_slice::<SignedTx>(data) else {
        return;
    };
    let verified = stx.verify().is_ok();
    let hash = stx.hash();

    // What a client signs is what the ledger checks: JSON keeps the transaction.
    let json = serde_json::to_vec(&stx).expect("a decoded transaction encodes as JSON");
    let back: SignedTx = serde_json::from_slice(&json).expect("a transaction's own JSON decodes");
    assert_eq!(back, stx, "JSON round trip changed the transaction");
    assert_eq!(back.hash(), hash, "JSON round trip changed the hash");
    assert_eq!(back.verify().is_ok(), verified);

    // The signed bytes are a domain tag and the postcard encoding of the
    // transaction, which decodes back to it (so a hash names exactly one body).
    let body = postcard::to_allocvec(&stx.tx).expect("a transaction encodes with postcard");
    assert!(
        stx.tx.signing_bytes().ends_with(&body),
        "the signed bytes do not end with the transaction's encoding"
    );
    let decoded: Tx = postcard::from_bytes(&body).expect("the canonical encoding decodes");
    assert_eq!(
        decoded, stx.tx,
        "postcard round trip changed the transaction"
    );

    // Signing the same body with its signer's key verifies; any other signature
    // bit does not.
    let signer = key(1);
    let mut own = stx.tx.clone();
    own.signer = keys::public_key(&signer);
    let own_hash = own.hash();
    let signed = own.sign(&signer);
    assert_eq!(signed.hash(), own_hash, "signing changed the hash");
    assert!(signed.verify().is_ok(), "a fresh signature does not verify");
    let mut forged = signed.clone();
    forged.signature.0[usize::from(data[0]) % 64] ^= 1;
    assert!(forged.verify().is_err(), "a flipped signature bit verifies");
}

/// A deployment as the node decodes it (JSON, out of the sealed box) and as the
/// CLI reads a user's file (TOML).
pub fn deployment(data: &[u8]) {
    if let Ok(d) = serde_json::from_slice::<Deployment>(data) {
        check_deployment(&d);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(d) = toml::from_str::<Deployment>(text) {
            check_deployment(&d);
        }
    }
}

/// What the provision engine does with a decoded deployment, plus the promises
/// it relies on: the hash ignores the signature and survives the JSON trip, and
/// a valid deployment's resources are the sum of its sizes.
fn check_deployment(d: &Deployment) {
    let hash = d.hash();
    let valid = d.validate();
    let _ = d.verify();

    let json = serde_json::to_vec(d).expect("a decoded deployment encodes as JSON");
    let back: Deployment = serde_json::from_slice(&json).expect("a deployment's JSON decodes");
    assert_eq!(&back, d, "JSON round trip changed the deployment");
    assert_eq!(back.hash(), hash, "JSON round trip changed the hash");
    assert_eq!(back.validate(), valid, "JSON round trip changed validity");

    if valid.is_ok() {
        let mut sum = 0u64;
        for w in &d.workloads {
            let size = match &w.spec {
                WorkloadSpec::Volume { size } | WorkloadSpec::Shard { size, .. } => size.0,
                WorkloadSpec::Network(_) | WorkloadSpec::Container(_) | WorkloadSpec::Vm(_) => 0,
            };
            sum = sum
                .checked_add(size)
                .expect("valid deployments cannot overflow their sizes");
        }
        let r = d.resources();
        assert_eq!(r.sru + r.hru, sum, "resources are not the sum of the sizes");
    }

    let mut signed = d.clone();
    signed.sign(&key(2));
    assert!(
        signed.verify().is_ok(),
        "a freshly signed deployment does not verify"
    );
    let mut unsigned = signed.clone();
    unsigned.signature = None;
    assert_eq!(
        unsigned.hash(),
        signed.hash(),
        "the hash covers the signature"
    );
}

/// A blob from the ledger's mailbox: the engine opens it with the node key and
/// decodes the deployment inside. Also, for one input in eight (the X25519 work
/// costs more than everything else here, and does not depend on the bytes much):
/// whatever is sealed opens to itself, and only with the right key and unaltered.
pub fn sealed(data: &[u8]) {
    let node = key(NODE_KEY);
    if let Ok(plain) = deployment::open(data, &node) {
        if let Ok(d) = serde_json::from_slice::<Deployment>(&plain) {
            check_deployment(&d);
        }
    }
    if data.first().is_some_and(|b| b % 8 != 0) {
        return;
    }

    let sealed = deployment::seal(data, &keys::encryption_key(&node))
        .expect("sealing to a valid key does not fail");
    assert_eq!(
        deployment::open(&sealed, &node).as_deref(),
        Ok(data),
        "a sealed box does not open to what was sealed"
    );
    assert!(
        deployment::open(&sealed, &key(NODE_KEY + 1)).is_err(),
        "a sealed box opens with another key"
    );
    let mut altered = sealed;
    let at = data.iter().map(|&b| usize::from(b)).sum::<usize>() % altered.len();
    altered[at] ^= 0x80;
    assert!(
        deployment::open(&altered, &node).is_err(),
        "an altered sealed box opens"
    );
}
