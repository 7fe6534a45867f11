//! cellos-ledger: the phone book and the marketplace of cellos (DESIGN §3).
//!
//! Farms register here, nodes register their capacity here, and users reserve that
//! capacity through contracts whose escrow the nodes' usage reports settle. Every
//! transaction is ed25519-signed by its author over a deterministic encoding and
//! carries a nonce that only goes up; the ledger applies transactions to a
//! deterministic state machine ([`state`]) and commits them in hash-chained blocks
//! signed by its own key ([`block`], [`chain`]), so anyone can replay and verify the
//! whole history. Nodes never trust the ledger to authorize anything: they check the
//! signatures themselves.
//!
//! Features: `server` adds the embedded redb store and the HTTP server; `client`
//! adds the async HTTP client the node agent and the CLI use. The types, the state
//! machine and the verifier need neither.

pub mod blob;
pub mod block;
pub mod chain;
pub mod container;
pub mod deployment;
pub mod keys;
pub mod network;
pub mod request;
pub mod state;
pub mod store;
pub mod tx;
pub mod types;
pub mod vm;
pub mod wire;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod mailbox;
#[cfg(feature = "server")]
pub mod server;

pub use block::{Block, Genesis};
pub use chain::{Chain, Receipt};
pub use state::{Event, State, TxError};
pub use tx::{EnrollToken, SignedTx, Tx, TxBody};
pub use types::*;
