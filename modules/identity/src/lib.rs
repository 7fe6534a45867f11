//! cellos-identity: who a node is.
//!
//! A node is its ed25519 key: the ledger knows the node by the public key, every
//! transaction the node sends is signed with it, and users seal deployments to the
//! X25519 key derived from it. This crate owns that key and hands out only what the
//! other modules need (the public keys and a [`Signer`]); the secret never leaves it.
//!
//! For now the key lives in RAM and is generated at start, so a reboot makes a new
//! node. Persisting it on the state disk is a constructor next to [`Identity::generate`]
//! (`Identity::load_or_create(dir)` over `cellos_ledger::keys::load_or_create`); nothing
//! else in the API changes.

use cellos_ledger::keys::{self, Signer};
use cellos_ledger::{EncryptionKey, PublicKey};
use ed25519_dalek::SigningKey;

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

    /// The node's id on the ledger.
    pub fn public_key(&self) -> PublicKey {
        keys::public_key(&self.key)
    }

    /// The X25519 key deployments for this node are sealed to.
    pub fn encryption_key(&self) -> EncryptionKey {
        keys::encryption_key(&self.key)
    }

    /// A transaction signer for the ledger whose chain id is `chain_id`.
    pub fn signer(&self, chain_id: &str) -> Signer {
        Signer::new(self.key.clone(), chain_id)
    }
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

    #[test]
    fn signer_signs_as_the_identity() {
        let id = Identity::generate();
        let mut signer = id.signer("test-chain");
        assert_eq!(signer.public_key(), id.public_key());
        assert_eq!(signer.chain_id(), "test-chain");
        let tx = signer.sign(TxBody::Faucet { amount: 1 });
        assert_eq!(tx.tx.signer, id.public_key());
        assert!(tx.verify().is_ok());
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
