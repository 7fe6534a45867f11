//! What a transaction did, as watchers see it.

use serde::{Deserialize, Serialize};

use crate::types::*;

/// Something that happened, for watchers (a node follows the events naming it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    AccountCreated {
        account: PublicKey,
    },
    Transferred {
        from: Option<PublicKey>,
        to: PublicKey,
        amount: Amount,
    },
    FarmCreated {
        farm: FarmId,
        name: String,
    },
    FarmIpAdded {
        farm: FarmId,
        ip: String,
    },
    FarmIpRemoved {
        farm: FarmId,
        ip: String,
    },
    NodeRegistered {
        node: NodeId,
        farm: FarmId,
        approved: bool,
    },
    NodeApproved {
        node: NodeId,
    },
    NodeUpdated {
        node: NodeId,
    },
    NodeUptime {
        node: NodeId,
    },
    NodeStatusChanged {
        node: NodeId,
        status: NodeStatus,
    },
    NodeRemoved {
        node: NodeId,
    },
    ContractCreated {
        contract: ContractId,
        node: NodeId,
    },
    ContractAccepted {
        contract: ContractId,
        node: NodeId,
        deployment_hash: Hash,
    },
    ContractUpdated {
        contract: ContractId,
        node: NodeId,
    },
    ContractToppedUp {
        contract: ContractId,
        node: NodeId,
        amount: Amount,
    },
    ContractBilled {
        contract: ContractId,
        node: NodeId,
        amount: Amount,
        until: u64,
    },
    ContractSuspended {
        contract: ContractId,
        node: NodeId,
    },
    ContractResumed {
        contract: ContractId,
        node: NodeId,
    },
    ContractClosed {
        contract: ContractId,
        node: NodeId,
        state: ContractState,
        refund: Amount,
    },
    /// CreateAccount recorded the account's encryption key.
    AccountKeySet {
        account: PublicKey,
    },
}

impl Event {
    /// The node this event concerns, if any.
    pub fn node(&self) -> Option<NodeId> {
        use Event::*;
        match self {
            NodeRegistered { node, .. }
            | NodeApproved { node }
            | NodeUpdated { node }
            | NodeUptime { node }
            | NodeStatusChanged { node, .. }
            | NodeRemoved { node }
            | ContractCreated { node, .. }
            | ContractAccepted { node, .. }
            | ContractUpdated { node, .. }
            | ContractToppedUp { node, .. }
            | ContractBilled { node, .. }
            | ContractSuspended { node, .. }
            | ContractResumed { node, .. }
            | ContractClosed { node, .. } => Some(*node),
            _ => None,
        }
    }

    /// The farm a `FarmCreated` event made (a farm's id is known only from it).
    pub fn farm_created(&self) -> Option<FarmId> {
        match self {
            Event::FarmCreated { farm, .. } => Some(*farm),
            _ => None,
        }
    }

    /// The contract this event concerns, if any.
    pub fn contract(&self) -> Option<ContractId> {
        use Event::*;
        match self {
            ContractCreated { contract, .. }
            | ContractAccepted { contract, .. }
            | ContractUpdated { contract, .. }
            | ContractToppedUp { contract, .. }
            | ContractBilled { contract, .. }
            | ContractSuspended { contract, .. }
            | ContractResumed { contract, .. }
            | ContractClosed { contract, .. } => Some(*contract),
            _ => None,
        }
    }
}
