//! cellos-fuzz: coverage-guided fuzz targets for every parser of untrusted input
//! (issue 12; DESIGN §9: nothing a client, a peer, a DHCP server or a disk sends may
//! panic a node or a ledger).
//!
//! Each target is a plain `fn(&[u8])` that feeds the bytes to one parser the way the
//! product does, then checks what the parser promises (a round trip, an invariant, a
//! differential between two ways of feeding it). A bug is a panic: a crash in the
//! parser itself, or a failed check here. The same functions run in two places:
//! - under AFL++ through `src/bin/afl.rs` (`cargo afl build --features afl`). That is
//!   stable Rust: cargo-afl instruments with LLVM's sanitizer-coverage pass, which
//!   stable rustc ships, so no nightly toolchain is needed (`scripts/fuzz.sh`);
//! - under `cargo test` (`tests/replay.rs`), which replays the committed seed
//!   corpora (`corpus/<target>/`) and every crash found so far
//!   (`regressions/<target>/`) in seconds, so a fixed crash stays fixed.
//!
//! Targets keep no state between inputs except caches that do not change what an
//! input does (a tokio runtime, a scratch file), so AFL's persistent mode is stable
//! and a crash replays the same way in the test.

pub mod init;
pub mod ledger;
pub mod shard;

/// One fuzz target: a name (its corpus directory) and the function AFL++ drives.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// What the input is, for `scripts/fuzz.sh list` and the README.
    pub about: &'static str,
}

/// Every target, in the order `scripts/fuzz.sh all` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "tx",
        run: ledger::tx,
        about: "a POST /v1/tx body: JSON into SignedTx, verify, the signed postcard encoding",
    },
    Target {
        name: "deployment",
        run: ledger::deployment,
        about: "a deployment as JSON (what a node opens) or TOML (what `cellos deploy` reads), validate, hash, verify",
    },
    Target {
        name: "sealed",
        run: ledger::sealed,
        about: "a mailbox blob opened as a sealed box to the node's key, then the deployment inside",
    },
    Target {
        name: "resp",
        run: shard::resp,
        about: "bytes from a shard client (CommandParser, fed whole and in pieces) and from a shard server (parse_reply)",
    },
    Target {
        name: "dispatch",
        run: shard::dispatch,
        about: "a RESP byte stream sent to a running shard server over TCP (parsing and command dispatch)",
    },
    Target {
        name: "cmdline",
        run: init::cmdline,
        about: "a kernel command line (cellos.* keys, the enrollment token)",
    },
    Target {
        name: "bootcfg",
        run: init::bootcfg,
        about: "cellos.cfg from the boot stick",
    },
    Target {
        name: "dhcp",
        run: init::dhcp,
        about: "DHCP replies to a DISCOVER/REQUEST exchange and a renewal (packets split on a marker)",
    },
    Target {
        name: "record",
        run: shard::record,
        about: "a shard data file scanned record by record",
    },
    Target {
        name: "object",
        run: shard::object,
        about: "what backends return for an object's metadata and shards (get and check)",
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
