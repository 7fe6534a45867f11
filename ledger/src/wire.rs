//! Response bodies shared by the server and the client.

use serde::{Deserialize, Serialize};

use crate::chain::Receipt;
use crate::state::Event;
use crate::types::{Hash, PublicKey};

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub chain_id: String,
    pub dev_mode: bool,
    pub ledger_key: PublicKey,
    pub genesis_hash: Hash,
    pub height: u64,
    pub head: Hash,
    pub time: u64,
}

/// `GET /v1/state/digest`: what `cellos ledger verify --url` compares its replay with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Digest {
    pub height: u64,
    pub digest: Hash,
}

/// One event with where it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub height: u64,
    pub time: u64,
    pub event: Event,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<EventRecord>,
    /// The height to ask from next time.
    pub next: u64,
}

/// One transaction's answer in `POST /v1/txs`, in the order they were sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxOutcome {
    /// In a durable block.
    Accepted(Receipt),
    /// Not taken: the status `POST /v1/tx` would have answered it with, and why.
    Refused { status: u16, error: String },
}
