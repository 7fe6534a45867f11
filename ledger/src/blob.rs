//! Signed blob uploads: how an account proves that a mailbox upload is its own.
//!
//! An upload (`PUT /v1/blobs/<hash>`) carries the three headers of a signed request
//! ([`crate::request`]: the uploader's key, a time, an ed25519 signature), here over
//! {domain tag, chain id, blob hash, time}. The
//! hash names the content (the server checks the body against it), so the signature
//! covers the whole upload; the chain id keeps it off other chains; the time bounds
//! a replay to [`WINDOW_SECS`] (and a replay could only store the same bytes again).
//! Clients sign with the ledger's clock (its `/v1/status` time), so a node with a
//! wrong clock can still upload.
//!
//! Who may upload and how much is the server's business ([`crate::mailbox`]).

use ed25519_dalek::SigningKey;

use crate::request::{RequestAuth, RequestError};
use crate::tx::encode;
use crate::types::Hash;

const BLOB_DOMAIN: &[u8] = b"cellos-blob-v1\0";

/// How far an upload's time may be from the server's clock, either way, in seconds.
pub const WINDOW_SECS: u64 = 120;

fn message(chain_id: &str, blob: &Hash, time: u64) -> Vec<u8> {
    encode(BLOB_DOMAIN, &(chain_id, blob, time))
}

/// Signs the upload of `blob` to the chain `chain_id` at `time` (Unix seconds); send
/// [`RequestAuth::headers`] with it.
pub fn sign(key: &SigningKey, chain_id: &str, blob: &Hash, time: u64) -> RequestAuth {
    RequestAuth::sign_message(key, &message(chain_id, blob, time), time)
}

/// Checks an upload's time window against `now` and its signature over the upload.
pub fn verify(
    auth: &RequestAuth,
    chain_id: &str,
    blob: &Hash,
    now: u64,
) -> Result<(), RequestError> {
    auth.verify_message(&message(chain_id, blob, auth.time), now, WINDOW_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use crate::types::PublicKey;

    #[test]
    fn an_upload_verifies_only_for_its_blob_chain_and_window() {
        let k = keys::generate();
        let blob = Hash::of(b"sealed deployment");
        let a = sign(&k, "main", &blob, 1000);
        assert_eq!(a.key, keys::public_key(&k));
        assert_eq!(verify(&a, "main", &blob, 1000 + WINDOW_SECS), Ok(()));
        assert_eq!(verify(&a, "main", &blob, 1000 - WINDOW_SECS), Ok(()));
        assert!(matches!(
            verify(&a, "main", &blob, 1001 + WINDOW_SECS),
            Err(RequestError::OutOfWindow { .. })
        ));
        assert_eq!(
            verify(&a, "main", &Hash::of(b"other"), 1000),
            Err(RequestError::BadSignature(a.key))
        );
        assert_eq!(
            verify(&a, "test", &blob, 1000),
            Err(RequestError::BadSignature(a.key))
        );
        let other = RequestAuth {
            key: keys::public_key(&keys::generate()),
            ..a
        };
        assert_eq!(
            verify(&other, "main", &blob, 1000),
            Err(RequestError::BadSignature(other.key))
        );
        // A signed request for a node is no upload, and the other way round.
        let node: PublicKey = keys::public_key(&keys::generate());
        let req = RequestAuth::sign(&k, &node, "PUT", &format!("/v1/blobs/{blob}"), 1000);
        assert!(verify(&req, "main", &blob, 1000).is_err());
        assert!(a
            .verify(&node, "PUT", &format!("/v1/blobs/{blob}"), 1000)
            .is_err());
    }
}
