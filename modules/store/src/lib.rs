//! The cellos object store: an owner's objects spread over many shard servers
//! (`shardd`, crate `cellos-shard`), as `cellos store` uses it.
//!
//! Objects are split into segments, compressed (zstd), encrypted with a key only
//! the owner holds (an AEAD: [`cipher`]), and Reed-Solomon coded into k+m shards
//! ([`ec`]) placed on distinct backends ([`backend`]); the object's metadata is
//! coded the same way ([`object`]). Any k backends return the bytes; repair
//! rebuilds lost shards and moves them off dead backends. `store.toml`
//! ([`config`]) says where and how.
//!
//! A crate of its own, apart from the server: a node runs shardd but never codes
//! objects, so cellosd does not link two Reed-Solomon crates, two AEADs and zstd;
//! this side needs only the server's RESP client.
//!
//! Never: hand a backend plaintext, an object's name or its size, or return bytes
//! that failed a hash or an AEAD tag.

pub mod backend;
pub mod cipher;
pub mod config;
pub mod ec;
pub mod object;
