//! An https:// ledger (issue 11, item 10): `cellos ledger serve --tls-cert --tls-key`
//! against the client with and without the test CA, and a certificate for the
//! wrong host. The CA and certificates are made here with rcgen; all on 127.0.0.1.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cellos_ledger::client::{Client, ClientError};
use cellos_ledger::keys::{self, Signer};
use cellos_ledger::*;
use common::{cellos, LedgerProc};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A test CA: its certificate (PEM) and a way to sign leaves.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "cellos test CA");
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("self-signed");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes a certificate for `names` signed by this CA and its key into `dir`.
    fn leaf(&self, dir: &Path, names: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
        let p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign");
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }
}

fn tls_ledger(dir: &Path, cert: &Path, key: &Path, extra: &[&str]) -> LedgerProc {
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let mut args = vec!["--tls-cert", &*cert, "--tls-key", &*key];
    args.extend_from_slice(extra);
    let l = LedgerProc::start(&dir.join("data"), &args);
    assert!(l.url.starts_with("https://"), "{}", l.url);
    l
}

#[test]
fn a_client_that_trusts_the_ca_uses_a_tls_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (cert, key) = ca.leaf(dir.path(), &["localhost", "127.0.0.1"]);
    let ledger = tls_ledger(dir.path(), &cert, &key, &[]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");
    rt().block_on(async {
        for url in [
            ledger.url.clone(),
            ledger.url.replace("127.0.0.1", "localhost"),
        ] {
            let c = Client::with_ca(&url, ca.pem().as_bytes()).expect("client");
            let st = c.status().await.expect("status over TLS");
            let mut s = Signer::new(keys::generate(), st.chain_id);
            c.submit(&s.sign(TxBody::Faucet { amount: 5000 }))
                .await
                .expect("a transaction over TLS");
            let h = c.put_blob(&s, b"sealed".to_vec()).await.expect("blob");
            assert_eq!(c.get_blob(&h).await.expect("get"), b"sealed");
        }
    });
    // The CLI: --ca (or CELLOS_CA) makes it trust the test CA.
    let key_file = dir.path().join("user.key");
    let (ok, out, err) = cellos(
        &["--ca", &ca_file.to_string_lossy(), "node", "list"],
        &ledger.url,
        &key_file,
    );
    assert!(ok, "cellos --ca node list: {out}{err}");
    let (ok, out, err) = cellos(&["node", "list"], &ledger.url, &key_file);
    assert!(!ok, "without --ca the CLI must refuse the ledger: {out}");
    assert!(
        err.contains("not signed by a CA this client trusts"),
        "a clear error without --ca: {err}"
    );
}

#[test]
fn an_untrusted_or_misnamed_certificate_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (cert, key) = ca.leaf(dir.path(), &["localhost", "127.0.0.1"]);
    let ledger = tls_ledger(dir.path(), &cert, &key, &[]);
    let other = tempfile::tempdir().expect("tempdir");
    let (cert2, key2) = ca.leaf(other.path(), &["ledger.example.org"]);
    let misnamed = tls_ledger(other.path(), &cert2, &key2, &[]);
    rt().block_on(async {
        // No CA: the built-in roots do not know the test CA.
        let e = Client::new(&ledger.url)
            .expect("client")
            .status()
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Tls { .. }), "{e:?}");
        assert!(
            e.to_string().contains("UnknownIssuer")
                && e.to_string()
                    .contains("not signed by a CA this client trusts"),
            "{e}"
        );
        // Another CA: refused the same way.
        let stranger = Ca::new();
        let e = Client::with_ca(&ledger.url, stranger.pem().as_bytes())
            .expect("client")
            .status()
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Tls { .. }), "{e:?}");
        // The right CA, but a certificate for another name.
        let e = Client::with_ca(&misnamed.url, ca.pem().as_bytes())
            .expect("client")
            .status()
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("not issued for this host name"),
            "{e}"
        );
        // Not a CA at all.
        assert!(matches!(
            Client::with_ca(&ledger.url, b"not pem"),
            Err(ClientError::BadCa(_))
        ));
    });
}

#[test]
fn a_stalled_tls_handshake_is_cut_off_by_the_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (cert, key) = ca.leaf(dir.path(), &["127.0.0.1"]);
    let ledger = tls_ledger(dir.path(), &cert, &key, &["--header-timeout", "2s"]);
    let addr = ledger.url.trim_start_matches("https://").to_string();
    rt().block_on(async {
        use tokio::io::AsyncReadExt;
        let t = Instant::now();
        let mut stalled = Vec::new();
        for _ in 0..200 {
            stalled.push(
                tokio::net::TcpStream::connect(&addr)
                    .await
                    .expect("connect"),
            );
        }
        // A real client is served meanwhile.
        let c = Client::with_ca(&ledger.url, ca.pem().as_bytes()).expect("client");
        tokio::time::timeout(Duration::from_secs(2), c.status())
            .await
            .expect("status within 2 s")
            .expect("status");
        for mut s in stalled {
            let mut buf = [0u8; 64];
            let r = tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf)).await;
            assert!(
                matches!(r, Ok(Ok(0)) | Ok(Err(_))),
                "a connection that never started its handshake was still open after {:?}",
                t.elapsed()
            );
        }
    });
}
