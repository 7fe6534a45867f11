//! Signed HTTP requests: how an account proves to a server that a request is its own.
//!
//! Reads that belong to one account (a deployment's details on a node, a workload's
//! logs, a VM's console) carry three headers: the account's key, the time, and an
//! ed25519 signature over {domain tag, audience, method, path and query, time}. The
//! audience is the key of the server the request is meant for (a node's key), so a
//! request signed for one node is worthless on another; the time bounds a replay to a
//! short window. The body is not signed: these are reads (GET).
//!
//! The server checks the signature and the window, and then decides whether the
//! signer may see what it asks for (the deployment's owner); this module knows
//! nothing about that. Blob uploads to the ledger carry the same three headers over
//! a message of their own ([`crate::blob`]).

use ed25519_dalek::{Signer as _, SigningKey};

use crate::tx::{encode, verify_sig};
use crate::types::{PublicKey, Signature};

const REQUEST_DOMAIN: &[u8] = b"cellos-request-v1\0";

/// The header that carries the signer's public key (hex).
pub const KEY_HEADER: &str = "x-cellos-key";
/// The header that carries the signing time (Unix seconds).
pub const TIME_HEADER: &str = "x-cellos-time";
/// The header that carries the signature (hex).
pub const SIGNATURE_HEADER: &str = "x-cellos-signature";

/// How far a request's time may be from the server's clock, either way, in seconds.
pub const WINDOW_SECS: u64 = 60;

/// The authentication a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestAuth {
    pub key: PublicKey,
    pub time: u64,
    pub signature: Signature,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("the request is not signed: send the {KEY_HEADER}, {TIME_HEADER} and {SIGNATURE_HEADER} headers")]
    Unsigned,
    #[error("header {header}: {reason}")]
    BadHeader {
        header: &'static str,
        reason: String,
    },
    #[error("the request was signed at {time}, more than {window} s from the server's time {now} (check the clock)")]
    OutOfWindow { time: u64, now: u64, window: u64 },
    #[error("the request's signature does not verify for key {0}")]
    BadSignature(PublicKey),
}

fn message(audience: &PublicKey, method: &str, path: &str, time: u64) -> Vec<u8> {
    encode(REQUEST_DOMAIN, &(audience, method, path, time))
}

impl RequestAuth {
    /// Signs `method` on `path` (path and query, as sent) for the server whose key is
    /// `audience`, at `time` (Unix seconds).
    pub fn sign(
        key: &SigningKey,
        audience: &PublicKey,
        method: &str,
        path: &str,
        time: u64,
    ) -> Self {
        Self::sign_message(key, &message(audience, method, path, time), time)
    }

    /// Signs `msg`, which must include `time`.
    pub(crate) fn sign_message(key: &SigningKey, msg: &[u8], time: u64) -> Self {
        RequestAuth {
            key: PublicKey(key.verifying_key().to_bytes()),
            time,
            signature: Signature(key.sign(msg).to_bytes()),
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
    /// [`RequestError::Unsigned`]; any one missing or malformed says which.
    pub fn from_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, RequestError> {
        let (k, t, s) = (get(KEY_HEADER), get(TIME_HEADER), get(SIGNATURE_HEADER));
        if k.is_none() && t.is_none() && s.is_none() {
            return Err(RequestError::Unsigned);
        }
        let bad = |header: &'static str, reason: String| RequestError::BadHeader { header, reason };
        let missing = |h: &'static str| bad(h, "missing".into());
        Ok(RequestAuth {
            key: k
                .ok_or_else(|| missing(KEY_HEADER))?
                .parse()
                .map_err(|e| bad(KEY_HEADER, format!("{e}")))?,
            time: t
                .ok_or_else(|| missing(TIME_HEADER))?
                .trim()
                .parse()
                .map_err(|_| bad(TIME_HEADER, "expected Unix seconds".into()))?,
            signature: s
                .ok_or_else(|| missing(SIGNATURE_HEADER))?
                .parse()
                .map_err(|e| bad(SIGNATURE_HEADER, format!("{e}")))?,
        })
    }

    /// Checks the time window against `now` and the signature over the request.
    pub fn verify(
        &self,
        audience: &PublicKey,
        method: &str,
        path: &str,
        now: u64,
    ) -> Result<(), RequestError> {
        self.verify_message(
            &message(audience, method, path, self.time),
            now,
            WINDOW_SECS,
        )
    }

    /// Checks that `now` is within `window` seconds of the signing time and that the
    /// signature is over `msg` (which must include that time).
    pub(crate) fn verify_message(
        &self,
        msg: &[u8],
        now: u64,
        window: u64,
    ) -> Result<(), RequestError> {
        if self.time.abs_diff(now) > window {
            return Err(RequestError::OutOfWindow {
                time: self.time,
                now,
                window,
            });
        }
        verify_sig(&self.key, msg, &self.signature)
            .map_err(|_| RequestError::BadSignature(self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use std::collections::HashMap;

    fn roundtrip(a: &RequestAuth) -> RequestAuth {
        let h: HashMap<&str, String> = a.headers().into_iter().collect();
        RequestAuth::from_headers(|n| h.get(n).map(String::as_str)).expect("parse")
    }

    #[test]
    fn a_signed_request_verifies_only_for_its_audience_method_path_and_window() {
        let user = keys::generate();
        let node = keys::public_key(&keys::generate());
        let other = keys::public_key(&keys::generate());
        let a = roundtrip(&RequestAuth::sign(
            &user,
            &node,
            "GET",
            "/v1/deployments/7",
            1000,
        ));
        assert_eq!(a.key, keys::public_key(&user));
        assert_eq!(a.verify(&node, "GET", "/v1/deployments/7", 1000), Ok(()));
        assert_eq!(
            a.verify(&node, "GET", "/v1/deployments/7", 1000 + WINDOW_SECS),
            Ok(())
        );
        for (aud, method, path) in [
            (&other, "GET", "/v1/deployments/7"),
            (&node, "POST", "/v1/deployments/7"),
            (&node, "GET", "/v1/deployments/8"),
        ] {
            assert_eq!(
                a.verify(aud, method, path, 1000),
                Err(RequestError::BadSignature(a.key))
            );
        }
        assert_eq!(
            a.verify(&node, "GET", "/v1/deployments/7", 1000 + WINDOW_SECS + 1),
            Err(RequestError::OutOfWindow {
                time: 1000,
                now: 1000 + WINDOW_SECS + 1,
                window: WINDOW_SECS
            })
        );
        assert!(a.verify(&node, "GET", "/v1/deployments/7", 900).is_err());
    }

    #[test]
    fn missing_and_malformed_headers_say_which() {
        assert_eq!(
            RequestAuth::from_headers(|_| None),
            Err(RequestError::Unsigned)
        );
        let e = RequestAuth::from_headers(|n| (n == KEY_HEADER).then_some("00")).expect_err("bad");
        assert!(
            matches!(
                e,
                RequestError::BadHeader {
                    header: KEY_HEADER,
                    ..
                }
            ),
            "{e}"
        );
        let key = "11".repeat(32);
        let e = RequestAuth::from_headers(|n| match n {
            KEY_HEADER => Some(key.as_str()),
            TIME_HEADER => Some("soon"),
            _ => Some("22"),
        })
        .expect_err("bad");
        assert!(
            matches!(
                e,
                RequestError::BadHeader {
                    header: TIME_HEADER,
                    ..
                }
            ),
            "{e}"
        );
    }
}
