//! Storage shards for cellos: the `shardd` server and the erasure-coded object codec.
//!
//! Two halves, one crate, because they share the wire protocol:
//! - **Server** ([`server`], [`namespace`], [`record`]): append-only namespaces of
//!   checksummed records served over RESP, so redis-cli and redis-benchmark work
//!   against it. Nothing is acknowledged before it is fsynced; on start the index
//!   is rebuilt from the data files and a torn tail is cut and reported. The
//!   server is a library ([`server::Server::start`], `create_namespace`) so the
//!   provision engine's `shard` workload can run it; `shardd` is a thin binary.
//! - **Objects** ([`object`], [`ec`], [`cipher`], [`config`]): the client side.
//!   Objects are split into segments, compressed, encrypted with a key only the
//!   owner holds, and Reed-Solomon coded into k+m shards placed on distinct
//!   backends; the object's metadata is coded the same way. Any k backends can
//!   return the bytes; a backend never sees plaintext, names or sizes of files.
//!
//! Never: trust bytes from disk or the network without a checksum, panic on
//! client input, or acknowledge a write that a crash could lose.

pub mod cipher;
pub mod client;
pub mod config;
pub mod ec;
mod guard;
pub mod namespace;
pub mod object;
pub mod record;
pub mod resp;
pub mod server;
mod sys;
