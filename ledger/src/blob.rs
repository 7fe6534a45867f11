//! Signed blob uploads: how an account proves that a mailbox upload is its own.
//!
//! An upload (`PUT /v1/blobs/<hash>`) carries three headers: the uploader's key, a
//! time, and an ed25519 signature over {domain tag, chain id, blob hash, time}. The
//! hash names the content (the server checks the body against it), so the signature
//! covers the whole upload; the chain id keeps it off other chains; the time bounds
//! a replay to [`WINDOW_SECS`] (and a replay could only store the same bytes again).
//! Clients sign with the ledger's clock (its `/v1/status` time), so a node with a
//! wrong clock can still upload.
//!
//! Who may upload and how much is the server's business ([`crate::mailbox`]).

use ed25519_dalek::{Signer as _, SigningKey};

use crate::tx::{encode, verify_sig};
use crate::types::{Hash, PublicKey, Signature};

const BLOB_DOMAIN: &[u8] = b"cellos-blob-v1\0";

/// The header that carries the uploader's public key (hex).
pub const KEY_HEADER: &str = "x-cellos-key";
/// The header that carries the signing time (Unix seconds).
pub const TIME_HEADER: &str = "x-cellos-time";
/// The header that carries the signature (hex).
pub const SIGNATURE_HEADER: &str = "x-cellos-signature";

/// How far an upload's time may be from the server's clock, either way, in seconds.
pub const WINDOW_SECS: u64 = 120;

/// The authentication an upload carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadAuth {
    pub key: PublicKey,
    pub time: u64,
    pub signature: Signature,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UploadAuthError {
    #[error("the upload is not signed: send the {KEY_HEADER}, {TIME_HEADER} and {SIGNATURE_HEADER} headers")]
    Unsigned,
    #[error("header {header}: {reason}")]
    BadHeader {
        header: &'static str,
        reason: String,
    },
    #[error(
        "the upload was signed at {time}, more than {WINDOW_SECS} s from the ledger's time {now}"
    )]
    OutOfWindow { time: u64, now: u64 },
    #[error("the upload's signature does not verify for key {0}")]
    BadSignature(PublicKey),
}

fn message(chain_id: &str, blob: &Hash, time: u64) -> Vec<u8> {
    encode(BLOB_DOMAIN, &(chain_id, blob, time))
}

impl UploadAuth {
    /// Signs the upload of `blob` to the chain `chain_id` at `time` (Unix seconds).
    pub fn sign(key: &SigningKey, chain_id: &str, blob: &Hash, time: u64) -> Self {
        let sig = key.sign(&message(chain_id, blob, time));
        UploadAuth {
            key: PublicKey(key.verifying_key().to_bytes()),
            time,
            signature: Signature(sig.to_bytes()),
        }
    }

    /// The headers to send, as (name, value).
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            (KEY_HEADER, self.key.to_hex()),
            (TIME_HEADER, self.time.to_string()),
            (SIGNATURE_HEADER, self.signature.to_hex()),
        ]
    }

    /// Reads the headers through `get` (header name -> value). All three absent is
    /// [`UploadAuthError::Unsigned`]; any one missing or malformed says which.
    pub fn from_headers<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Self, UploadAuthError> {
        let (k, t, s) = (get(KEY_HEADER), get(TIME_HEADER), get(SIGNATURE_HEADER));
        if k.is_none() && t.is_none() && s.is_none() {
            return Err(UploadAuthError::Unsigned);
        }
        let bad =
            |header: &'static str, reason: String| UploadAuthError::BadHeader { header, reason };
        let missing = |h: &'static str| bad(h, "missing".into());
        Ok(UploadAuth {
            key: k
                .ok_or_else(|| missing(KEY_HEADER))?
                .trim()
                .parse()
                .map_err(|e| bad(KEY_HEADER, format!("{e}")))?,
            time: t
                .ok_or_else(|| missing(TIME_HEADER))?
                .trim()
                .parse()
                .map_err(|_| bad(TIME_HEADER, "expected Unix seconds".into()))?,
            signature: s
                .ok_or_else(|| missing(SIGNATURE_HEADER))?
                .trim()
                .parse()
                .map_err(|e| bad(SIGNATURE_HEADER, format!("{e}")))?,
        })
    }

    /// Checks the time window against `now` and the signature over the upload.
    pub fn verify(&self, chain_id: &str, blob: &Hash, now: u64) -> Result<(), UploadAuthError> {
        if self.time.abs_diff(now) > WINDOW_SECS {
            return Err(UploadAuthError::OutOfWindow {
                time: self.time,
                now,
            });
        }
        verify_sig(
            &self.key,
            &message(chain_id, blob, self.time),
            &self.signature,
        )
        .map_err(|_| UploadAuthError::BadSignature(self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use std::collections::HashMap;

    fn roundtrip(a: &UploadAuth) -> Result<UploadAuth, UploadAuthError> {
        let h: HashMap<&str, String> = a.headers().into_iter().collect();
        UploadAuth::from_headers(|n| h.get(n).map(String::as_str))
    }

    #[test]
    fn an_upload_verifies_only_for_its_blob_chain_and_window() {
        let k = keys::generate();
        let blob = Hash::of(b"sealed deployment");
        let a = roundtrip(&UploadAuth::sign(&k, "main", &blob, 1000)).expect("parse");
        assert_eq!(a.key, keys::public_key(&k));
        assert_eq!(a.verify("main", &blob, 1000 + WINDOW_SECS), Ok(()));
        assert_eq!(a.verify("main", &blob, 1000 - WINDOW_SECS), Ok(()));
        assert!(matches!(
            a.verify("main", &blob, 1001 + WINDOW_SECS),
            Err(UploadAuthError::OutOfWindow { .. })
        ));
        assert_eq!(
            a.verify("main", &Hash::of(b"other"), 1000),
            Err(UploadAuthError::BadSignature(a.key))
        );
        assert_eq!(
            a.verify("test", &blob, 1000),
            Err(UploadAuthError::BadSignature(a.key))
        );
        let other = UploadAuth {
            key: keys::public_key(&keys::generate()),
            ..a
        };
        assert_eq!(
            other.verify("main", &blob, 1000),
            Err(UploadAuthError::BadSignature(other.key))
        );
    }

    #[test]
    fn headers_missing_or_malformed_say_which() {
        assert_eq!(
            UploadAuth::from_headers(|_| None),
            Err(UploadAuthError::Unsigned)
        );
        let e = UploadAuth::from_headers(|n| (n == KEY_HEADER).then_some("zz"));
        assert!(
            matches!(
                e,
                Err(UploadAuthError::BadHeader {
                    header: KEY_HEADER,
                    ..
                })
            ),
            "{e:?}"
        );
        let k = keys::public_key(&keys::generate()).to_hex();
        let e = UploadAuth::from_headers(|n| (n == KEY_HEADER).then_some(k.as_str()));
        assert!(
            matches!(
                e,
                Err(UploadAuthError::BadHeader {
                    header: TIME_HEADER,
                    ..
                })
            ),
            "{e:?}"
        );
    }
}
