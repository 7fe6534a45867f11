//! cellos-provision: turns the contracts on this node into running workloads
//! (DESIGN §4).
//!
//! Pull-based, so nodes behind NAT work: the engine follows the ledger's events for
//! this node, fetches the deployment the owner sealed to the node's key from the
//! ledger's mailbox, checks it itself (hash, owner signature, size against the
//! reservation) and provisions it through [`workload::Provisioner`]s, one per workload
//! type, which the node's modules implement. It records every step on the state disk
//! ([`store`]) so a crash or a reboot resumes instead of repeating or forgetting, and
//! it answers on the ledger: AcceptContract with the results sealed to the owner, or
//! RejectContract with the reason. It never trusts the ledger to authorize anything.

pub mod api;
pub mod engine;
pub mod ledger;
pub mod logfile;
pub mod store;
pub mod workload;

pub use engine::{Config, Engine, EngineError, Notify};
pub use ledger::{Ledger, LedgerClient, LedgerError};
pub use store::{Phase, Record, Store};
pub use workload::{LogChunk, Provisioner, Provisioners, WorkloadError, WorkloadId};
