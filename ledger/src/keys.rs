//! Keys and the transaction signer.
//!
//! A key file holds the 32-byte ed25519 seed as hex on one line, mode 0600, written
//! atomically (temporary file, fsync, rename) so a crash never leaves half a key.
//! The account's X25519 encryption key is derived from the same seed (the
//! Montgomery form of the ed25519 public key), so one file is one identity.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;

use crate::tx::{SignedTx, Tx, TxBody};
use crate::types::{EncryptionKey, PublicKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} does not hold a key: expected 64 hex digits")]
    Malformed { path: PathBuf },
    #[error("key file {path} already exists (refusing to overwrite a key)")]
    Exists { path: PathBuf },
    #[error("key file {path} is readable by others (mode {mode:o}); run chmod 600 on it")]
    Permissions { path: PathBuf, mode: u32 },
}

pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

pub fn public_key(k: &SigningKey) -> PublicKey {
    PublicKey(k.verifying_key().to_bytes())
}

/// The X25519 key that sealed boxes for this identity are sealed to.
pub fn encryption_key(k: &SigningKey) -> EncryptionKey {
    EncryptionKey(k.verifying_key().to_montgomery().to_bytes())
}

/// Writes a new key file; fails if the file exists.
pub fn save(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        return Err(KeyError::Exists {
            path: path.to_path_buf(),
        });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(format!("{}\n", hex::encode(key.to_bytes())).as_bytes())
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(io)?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| KeyError::Malformed {
        path: path.to_path_buf(),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Loads the key at `path`, creating it first if there is none.
pub fn load_or_create(path: &Path) -> Result<(SigningKey, bool), KeyError> {
    if path.exists() {
        return Ok((load(path)?, false));
    }
    let k = generate();
    save(path, &k)?;
    Ok((k, true))
}

/// Signs transactions for one key with nonces that only go up.
///
/// Nonces are milliseconds since the Unix epoch, bumped past the last one used, so
/// a signer needs no state to start again after a restart (a node has none) and
/// needs no round trip to learn its account's nonce.
pub struct Signer {
    key: SigningKey,
    chain_id: String,
    last_nonce: u64,
}

impl Signer {
    pub fn new(key: SigningKey, chain_id: impl Into<String>) -> Self {
        Signer {
            key,
            chain_id: chain_id.into(),
            last_nonce: 0,
        }
    }

    pub fn public_key(&self) -> PublicKey {
        public_key(&self.key)
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// Never issue a nonce at or below `nonce`: the ledger's record of this account.
    /// A signer that starts after a reboot with a clock behind the one it signed with
    /// before would otherwise have its transactions refused as stale.
    pub fn observe(&mut self, nonce: u64) {
        self.last_nonce = self.last_nonce.max(nonce);
    }

    pub fn sign(&mut self, body: TxBody) -> SignedTx {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_nonce = now_ms.max(self.last_nonce.saturating_add(1));
        Tx {
            chain_id: self.chain_id.clone(),
            signer: self.public_key(),
            nonce: self.last_nonce,
            body,
        }
        .sign(&self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signer_never_goes_below_what_the_ledger_recorded() {
        let mut s = Signer::new(generate(), "c");
        let first = s.sign(TxBody::Faucet { amount: 1 }).tx.nonce;
        assert!(s.sign(TxBody::Faucet { amount: 1 }).tx.nonce > first);
        // The ledger saw a nonce an hour ahead of our clock (a clock that went back).
        let ahead = first + 3_600_000;
        s.observe(ahead);
        assert_eq!(s.sign(TxBody::Faucet { amount: 1 }).tx.nonce, ahead + 1);
        s.observe(5);
        assert_eq!(s.sign(TxBody::Faucet { amount: 1 }).tx.nonce, ahead + 2);
    }

    #[test]
    fn key_file_round_trip_and_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/key");
        let k = generate();
        save(&path, &k).expect("save");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).expect("load").to_bytes(), k.to_bytes());
        assert!(matches!(save(&path, &k), Err(KeyError::Exists { .. })));

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(load(&path), Err(KeyError::Permissions { .. })));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(&path, "not hex\n").expect("write");
        assert!(matches!(load(&path), Err(KeyError::Malformed { .. })));
    }

    #[test]
    fn signer_nonces_increase() {
        let mut s = Signer::new(generate(), "t");
        let a = s.sign(TxBody::Faucet { amount: 1 });
        let b = s.sign(TxBody::Faucet { amount: 1 });
        assert!(b.tx.nonce > a.tx.nonce);
        assert!(a.verify().is_ok() && b.verify().is_ok());
    }
}
