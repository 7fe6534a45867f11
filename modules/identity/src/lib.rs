//! cellos-identity: who a node is.
//!
//! A node is its ed25519 key: the ledger knows the node by the public key, every
//! transaction the node sends is signed with it, and users seal deployments to the
//! X25519 key derived from it. This crate owns that key and hands out only what the
//! other modules need (the public keys and a [`Signer`]); the secret never leaves it.
//!
//! The key lives in the node's state directory ([`Identity::load_or_create`]), so a
//! reboot onto the same disks is the same node. It is written once, atomically (write,
//! fsync, rename) with mode 0600, next to a record of its public key. The rule that
//! keeps a node from ever registering twice: a new key is made only in a directory
//! that shows no sign of an earlier one (no key, no public key record, no key moved
//! aside as corrupt). A corrupt key file is moved aside and reported, and from then on
//! [`IdentityError::Lost`] is returned until an operator restores the key or clears
//! the evidence; the agent waits rather than inventing a new node the ledger would
//! count twice. [`Identity::generate`] is for nodes without persistent state.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cellos_ledger::keys::{self, KeyError, Signer};
use cellos_ledger::{EncryptionKey, PublicKey};
use ed25519_dalek::SigningKey;

/// The key file in the state directory (the ledger's key file format).
pub const KEY_FILE: &str = "node.key";
/// The record of the key's public half, written right after the key.
pub const PUBLIC_KEY_FILE: &str = "node.pub";
/// A corrupt key is renamed to this prefix and a Unix timestamp.
const CORRUPT_PREFIX: &str = "node.key.corrupt-";

/// Whether [`Identity::load_or_create`] found the key or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from the key file: the same node as before.
    Loaded,
    /// Made now: a new node.
    Created,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("node key {path} is corrupt ({cause}); moved it aside to {moved_to}")]
    Corrupt {
        path: PathBuf,
        moved_to: PathBuf,
        cause: String,
    },
    #[error(
        "no usable node key at {key}, but {evidence} shows this node had one{}; not making a new identity (the ledger would count the node twice). Restore the key file (mode 0600) to keep the node, or remove {evidence} to start as a new node",
        known.map(|k| format!(" (node key {k})")).unwrap_or_default()
    )]
    Lost {
        key: PathBuf,
        evidence: PathBuf,
        known: Option<PublicKey>,
    },
    #[error("node key {path} is {found} but {record} says the node is {known}; not using either. Restore the key of {known}, or remove {record} to be node {found}")]
    Mismatch {
        path: PathBuf,
        record: PathBuf,
        found: PublicKey,
        known: PublicKey,
    },
}

/// The node's key pair. `Debug` shows only the public key.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// A new random identity from the OS's random source.
    pub fn generate() -> Self {
        Identity {
            key: keys::generate(),
        }
    }

    /// The node's key from the state directory `dir`, made there first if the
    /// directory shows no sign of an earlier key (see the crate docs for the rule).
    ///
    /// A corrupt key file is moved aside and [`IdentityError::Corrupt`] returned;
    /// every later call then returns [`IdentityError::Lost`] until an operator acts.
    pub fn load_or_create(dir: &Path) -> Result<(Self, Origin), IdentityError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("creating", dir))?;
        let path = dir.join(KEY_FILE);
        let record = dir.join(PUBLIC_KEY_FILE);
        let known = fs::read_to_string(&record)
            .ok()
            .and_then(|t| t.trim().parse::<PublicKey>().ok());
        if !path.exists() {
            let evidence = if record.exists() {
                Some(record.clone())
            } else {
                corrupt_files(dir)?.into_iter().next()
            };
            if let Some(evidence) = evidence {
                return Err(IdentityError::Lost {
                    key: path,
                    evidence,
                    known,
                });
            }
            let key = keys::generate();
            keys::save(&path, &key)?;
            let id = Identity { key };
            write_record(&record, &id.public_key())?;
            return Ok((id, Origin::Created));
        }
        let key = match keys::load(&path) {
            Ok(k) => k,
            Err(KeyError::Permissions { .. }) => {
                // Only this agent writes the state directory; put the mode right.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .map_err(io("chmod 600", &path))?;
                keys::load(&path)?
            }
            Err(e @ KeyError::Malformed { .. }) => {
                let secs = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let moved_to = dir.join(format!("{CORRUPT_PREFIX}{secs}"));
                fs::rename(&path, &moved_to).map_err(io("moving aside", &path))?;
                return Err(IdentityError::Corrupt {
                    path,
                    moved_to,
                    cause: e.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let id = Identity { key };
        match known {
            Some(k) if k != id.public_key() => Err(IdentityError::Mismatch {
                path,
                record,
                found: id.public_key(),
                known: k,
            }),
            Some(_) => Ok((id, Origin::Loaded)),
            None => {
                write_record(&record, &id.public_key())?;
                Ok((id, Origin::Loaded))
            }
        }
    }

    /// The node's id on the ledger.
    pub fn public_key(&self) -> PublicKey {
        keys::public_key(&self.key)
    }

    /// The X25519 key deployments for this node are sealed to.
    pub fn encryption_key(&self) -> EncryptionKey {
        keys::encryption_key(&self.key)
    }

    /// The secret key, for what must act as the node without the ledger in between:
    /// opening deployments sealed to it (the provision engine).
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The node's transaction signer for the ledger whose chain id is `chain_id`,
    /// starting above `ledger_nonce` (the ledger's record of the node's account). Make
    /// one per process and share it: see [`NodeSigner`].
    pub fn signer(&self, chain_id: &str, ledger_nonce: u64) -> NodeSigner {
        let mut s = Signer::new(self.key.clone(), chain_id);
        s.observe(ledger_nonce);
        NodeSigner::new(s)
    }
}

/// The one signer of a node's transactions, shared by every part of cellosd that
/// submits (the registrar, the provision engine).
///
/// Two signers for one key would each pick millisecond nonces on their own, and the
/// ledger refuses whichever lands second with a lower one. So there is one, behind an
/// async lock that its user holds from signing until the ledger has answered: the
/// node's transactions reach the ledger in nonce order.
#[derive(Clone)]
pub struct NodeSigner(Arc<tokio::sync::Mutex<Signer>>);

impl NodeSigner {
    pub fn new(signer: Signer) -> Self {
        NodeSigner(Arc::new(tokio::sync::Mutex::new(signer)))
    }

    /// Holds the signer: sign, submit, and only then let go.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, Signer> {
        self.0.lock().await
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError {
    let path = path.to_path_buf();
    move |source| IdentityError::Io { op, path, source }
}

/// Keys moved aside as corrupt, sorted.
fn corrupt_files(dir: &Path) -> Result<Vec<PathBuf>, IdentityError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io("listing", dir))? {
        let e = e.map_err(io("listing", dir))?;
        if e.file_name().to_string_lossy().starts_with(CORRUPT_PREFIX) {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Writes the public key record atomically (temporary file, fsync, rename).
fn write_record(path: &Path, key: &PublicKey) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("writing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming to", path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", dir))?;
    }
    Ok(())
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellos_ledger::TxBody;

    #[tokio::test]
    async fn signer_signs_as_the_identity_above_the_ledgers_nonce() {
        let id = Identity::generate();
        let shared = id.signer("test-chain", u64::MAX / 2);
        let other = shared.clone();
        let mut signer = shared.lock().await;
        assert_eq!(signer.public_key(), id.public_key());
        assert_eq!(signer.chain_id(), "test-chain");
        let tx = signer.sign(TxBody::Faucet { amount: 1 });
        assert_eq!(tx.tx.signer, id.public_key());
        assert_eq!(tx.tx.nonce, u64::MAX / 2 + 1);
        assert!(tx.verify().is_ok());
        drop(signer);
        // Clones are the same signer: nonces keep going up across them.
        let next = other.lock().await.sign(TxBody::Faucet { amount: 1 });
        assert_eq!(next.tx.nonce, u64::MAX / 2 + 2);
    }

    #[test]
    fn keys_are_distinct_and_stable() {
        let a = Identity::generate();
        let b = Identity::generate();
        assert_ne!(a.public_key(), b.public_key());
        assert_ne!(a.encryption_key(), b.encryption_key());
        assert_eq!(a.encryption_key(), a.clone().encryption_key());
        assert_ne!(a.encryption_key().0, a.public_key().0);
    }

    fn load(dir: &Path) -> Result<(Identity, Origin), IdentityError> {
        Identity::load_or_create(dir)
    }

    #[test]
    fn created_once_then_loaded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state/identity");
        let (a, origin) = load(&dir).expect("create");
        assert_eq!(origin, Origin::Created);
        let key = dir.join(KEY_FILE);
        let mode = fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let before = fs::read(&key).expect("key");
        let (b, origin) = load(&dir).expect("load");
        assert_eq!((origin, b.public_key()), (Origin::Loaded, a.public_key()));
        assert_eq!(
            fs::read(&key).expect("key"),
            before,
            "the key file is never rewritten"
        );
        let record = fs::read_to_string(dir.join(PUBLIC_KEY_FILE)).expect("record");
        assert_eq!(record.trim(), a.public_key().to_hex());
        assert!(!dir.join("node.tmp").exists());
    }

    #[test]
    fn a_corrupt_key_is_moved_aside_and_never_replaced_silently() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let (a, _) = load(dir).expect("create");
        fs::write(dir.join(KEY_FILE), "garbage\n").expect("corrupt");
        let e = load(dir).expect_err("corrupt");
        let IdentityError::Corrupt { moved_to, .. } = &e else {
            panic!("{e}");
        };
        assert!(moved_to.starts_with(dir));
        assert_eq!(fs::read_to_string(moved_to).expect("moved"), "garbage\n");
        assert!(!dir.join(KEY_FILE).exists());
        // Every later try refuses, naming the key the ledger knows.
        let e = load(dir).expect_err("lost");
        assert!(
            matches!(&e, IdentityError::Lost { known: Some(k), .. } if *k == a.public_key()),
            "{e}"
        );
        assert!(e.to_string().contains("not making a new identity"), "{e}");
        // Without the record, the corrupt file is still evidence.
        fs::remove_file(dir.join(PUBLIC_KEY_FILE)).expect("rm record");
        let e = load(dir).expect_err("still lost");
        assert!(
            matches!(&e, IdentityError::Lost { known: None, evidence, .. } if evidence == moved_to),
            "{e}"
        );
        // The operator clears the evidence: a new node.
        fs::remove_file(moved_to).expect("rm corrupt");
        let (b, origin) = load(dir).expect("new");
        assert_eq!(origin, Origin::Created);
        assert_ne!(b.public_key(), a.public_key());
    }

    #[test]
    fn a_deleted_key_or_a_foreign_key_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let (a, _) = load(dir).expect("create");
        let saved = fs::read(dir.join(KEY_FILE)).expect("key");
        fs::remove_file(dir.join(KEY_FILE)).expect("rm");
        assert!(matches!(load(dir), Err(IdentityError::Lost { .. })));
        // Another node's key where this one's was.
        keys::save(&dir.join(KEY_FILE), &keys::generate()).expect("other key");
        assert!(
            matches!(load(dir), Err(IdentityError::Mismatch { known, .. }) if known == a.public_key())
        );
        // Restoring the key brings the node back.
        fs::remove_file(dir.join(KEY_FILE)).expect("rm");
        fs::write(dir.join(KEY_FILE), saved).expect("restore");
        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o644)).expect("chmod");
        let (b, origin) = load(dir).expect("restored");
        assert_eq!((origin, b.public_key()), (Origin::Loaded, a.public_key()));
        let mode = fs::metadata(dir.join(KEY_FILE))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the mode is put right");
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let id = Identity::generate();
        let shown = format!("{id:?}");
        assert!(shown.contains(&id.public_key().to_hex()), "{shown}");
        let secret: String = id
            .key
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!shown.contains(&secret), "{shown}");
    }
}
