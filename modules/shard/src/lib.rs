//! Storage shards for cellos: `shardd`, a server of append-only namespaces of
//! checksummed records spoken to over RESP (so redis-cli and redis-benchmark work
//! against it), and the RESP client that talks to it.
//!
//! - **Server** ([`server`], [`namespace`], [`record`]): nothing is acknowledged
//!   before it is fsynced; on start the index is rebuilt from the data files and
//!   a torn tail is cut and reported. The server is a library
//!   ([`server::Server::start`], `create_namespace`) so tests and benchmarks can
//!   run it in process; `shardd` is a thin binary (the `shardd` feature, on by
//!   default, brings its argument parser and logger).
//! - **Protocol and client** ([`resp`], [`client`]): what cellosd uses to manage
//!   namespaces (admin commands) and what the object store (`cellos-store`,
//!   erasure-coded objects over many shardd) uses to store shards. They live with
//!   the server because the server defines the protocol and its types
//!   ([`namespace::NamespaceOptions`], [`namespace::Mode`]).
//!
//! Never: trust bytes from disk or the network without a checksum, panic on
//! client input, or acknowledge a write that a crash could lose.

pub mod client;
#[cfg(feature = "failpoints")]
pub mod failpoint;
mod guard;
pub mod namespace;
pub mod record;
pub mod resp;
pub mod server;
mod sys;

/// An error and its causes on one line (`what failed: why: ...`). Errors here
/// keep their cause as `source` only, not in their own message (so a chain
/// printed whole names each cause once); a RESP reply or a log line that is
/// one string uses this.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_names_each_cause_once() {
        let e = sys::IoError {
            op: "read",
            path: "/x".into(),
            source: std::io::Error::other("disk on fire"),
        };
        assert_eq!(e.to_string(), "read /x");
        let ns = namespace::NsError::Io(e);
        assert_eq!(error_chain(&ns), "read /x: disk on fire");
    }
}
