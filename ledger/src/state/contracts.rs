//! Contracts: a reservation of a node's capacity and its farm's IPs, paid from an
//! escrow. Created by the user, accepted or rejected by the node, updated by the
//! user, closed by either (or by the node's removal, or a grace period's end).

use super::{Event, State, TxError};
use crate::types::*;

/// The fields of a CreateContract, once the signer is known.
pub(super) struct NewContract {
    pub node_id: NodeId,
    pub deployment_hash: Hash,
    pub resources: Resources,
    pub ips: u32,
    pub deposit: Amount,
    pub blob: Option<Hash>,
}

const MAX_TEXT: usize = 1024;

impl State {
    /// CreateContract: reserves capacity and IPs on an approved node that is up, and
    /// moves the deposit into escrow.
    pub(super) fn create_contract(
        &mut self,
        owner: PublicKey,
        order: NewContract,
    ) -> Result<Vec<Event>, TxError> {
        let NewContract {
            node_id,
            deployment_hash,
            resources,
            ips,
            deposit,
            blob,
        } = order;
        let n = self.node_ref(node_id)?;
        if !n.approved {
            return Err(TxError::NodeNotApproved(node_id));
        }
        if !n.persistent {
            return Err(TxError::NodeNotPersistent(node_id));
        }
        if n.status != NodeStatus::Up {
            return Err(TxError::NodeNotUp {
                node: node_id,
                status: n.status,
            });
        }
        if resources.is_zero() && ips == 0 {
            return Err(TxError::EmptyReservation);
        }
        let reserved = n
            .reserved
            .checked_add(&resources)
            .ok_or(TxError::Overflow("resources"))?;
        if !reserved.fits_in(&n.capacity) {
            return Err(TxError::OverCapacity {
                node: node_id,
                free: n.free(),
                asked: resources,
            });
        }
        let farm = self.farms.get(&n.farm).ok_or(TxError::NoFarm(n.farm))?;
        let free_ips = farm.free_ips();
        if (ips as usize) > free_ips {
            return Err(TxError::NotEnoughIps {
                farm: farm.id,
                free: free_ips,
                asked: ips,
            });
        }
        let per_hour = price_per_hour(farm, resources, ips)?;
        if deposit < per_hour.max(1) {
            return Err(TxError::DepositTooSmall { deposit, per_hour });
        }
        let left = self.spend(&owner, deposit)?;
        // All checks passed: mutate.
        let id = self.next_contract;
        self.next_contract = id.checked_add(1).ok_or(TxError::Overflow("contract id"))?;
        let farm_id = farm.id;
        let price_per_gib = farm.prices.nu;
        let mut leased = Vec::new();
        let farm = self.farm_mut(farm_id)?;
        for p in farm
            .public_ips
            .iter_mut()
            .filter(|p| p.leased_by.is_none())
            .take(ips as usize)
        {
            p.leased_by = Some(id);
            leased.push(p.ip.to_string());
        }
        self.acct_mut(&owner)?.balance = left;
        self.node_mut(node_id)?.reserved = reserved;
        self.node_contracts.entry(node_id).or_default().insert(id);
        self.contracts.insert(
            id,
            Contract {
                id,
                owner,
                node: node_id,
                farm: farm_id,
                deployment_hash,
                accepted_hash: None,
                blob,
                result: None,
                resources,
                public_ips: leased,
                price_per_hour: per_hour,
                price_per_gib,
                escrow: deposit,
                state: ContractState::Pending,
                billed_until: self.time,
                suspended_at: None,
                created_at: self.time,
                paid: 0,
                cpu_usec: 0,
                memory_bytes: 0,
            },
        );
        Ok(vec![Event::ContractCreated {
            contract: id,
            node: node_id,
        }])
    }

    /// AcceptContract: the node provisioned the deployment with this hash.
    pub(super) fn accept_contract(
        &mut self,
        signer: PublicKey,
        contract: ContractId,
        deployment_hash: Hash,
        result: Option<Hash>,
    ) -> Result<Vec<Event>, TxError> {
        let c = self.contract_ref(contract)?;
        self.the_node(&signer, c.node)?;
        if !matches!(c.state, ContractState::Pending | ContractState::Active) {
            return Err(self.wrong_state(c, "pending or active"));
        }
        if c.deployment_hash != deployment_hash {
            return Err(TxError::HashMismatch {
                contract,
                want: c.deployment_hash,
                got: deployment_hash,
            });
        }
        let now = self.time;
        let c = self.contract_mut(contract)?;
        if c.state == ContractState::Pending {
            // Billing starts when the workload exists, not when it was ordered.
            c.billed_until = now;
        }
        c.state = ContractState::Active;
        c.accepted_hash = Some(deployment_hash);
        c.result = result;
        Ok(vec![Event::ContractAccepted {
            contract,
            node: c.node,
            deployment_hash,
        }])
    }

    /// RejectContract: the node refuses a pending contract, which closes it.
    pub(super) fn reject_contract(
        &mut self,
        signer: PublicKey,
        contract: ContractId,
        reason: &str,
    ) -> Result<Vec<Event>, TxError> {
        if reason.is_empty() || reason.len() > MAX_TEXT {
            return Err(TxError::BadReason);
        }
        let c = self.contract_ref(contract)?;
        self.the_node(&signer, c.node)?;
        if c.state != ContractState::Pending {
            return Err(self.wrong_state(c, "pending"));
        }
        Ok(self
            .close(contract, CloseCause::Rejected(reason.to_string()))
            .into_iter()
            .collect())
    }

    /// UpdateContract: a new deployment and reservation for the same contract.
    pub(super) fn update_contract(
        &mut self,
        signer: PublicKey,
        contract: ContractId,
        deployment_hash: Hash,
        resources: Resources,
        blob: Option<Hash>,
    ) -> Result<Vec<Event>, TxError> {
        let c = self.contract_ref(contract)?;
        if c.owner != signer {
            return Err(TxError::NotContractOwner(contract));
        }
        if !matches!(c.state, ContractState::Pending | ContractState::Active) {
            return Err(self.wrong_state(c, "pending or active"));
        }
        let n = self.node_ref(c.node)?;
        let others = n.reserved.saturating_sub(&c.resources);
        let needed = others
            .checked_add(&resources)
            .ok_or(TxError::Overflow("resources"))?;
        if !needed.fits_in(&n.capacity) {
            return Err(TxError::OverCapacity {
                node: n.id,
                free: n.capacity.saturating_sub(&others),
                asked: resources,
            });
        }
        let farm = self.farms.get(&c.farm).ok_or(TxError::NoFarm(c.farm))?;
        let ips = u32::try_from(c.public_ips.len()).map_err(|_| TxError::Overflow("public IPs"))?;
        let per_hour = price_per_hour(farm, resources, ips)?;
        let node_id = c.node;
        self.node_mut(node_id)?.reserved = needed;
        let c = self.contract_mut(contract)?;
        c.resources = resources;
        c.deployment_hash = deployment_hash;
        c.blob = blob;
        c.price_per_hour = per_hour;
        Ok(vec![Event::ContractUpdated {
            contract,
            node: node_id,
        }])
    }

    /// CancelContract: by the owner or the node.
    pub(super) fn cancel_contract(
        &mut self,
        signer: PublicKey,
        contract: ContractId,
    ) -> Result<Vec<Event>, TxError> {
        let c = self.contract_ref(contract)?;
        let by_owner = c.owner == signer;
        let by_node = self.nodes.get(&c.node).is_some_and(|n| n.pubkey == signer);
        if !by_owner && !by_node {
            return Err(TxError::NotOwnerOrNode(contract));
        }
        if !c.is_open() {
            return Err(self.wrong_state(c, "open"));
        }
        let cause = if by_owner {
            CloseCause::CanceledByOwner
        } else {
            CloseCause::CanceledByNode
        };
        Ok(self.close(contract, cause).into_iter().collect())
    }

    /// Closes an open contract: releases its capacity and IPs and refunds the escrow
    /// to the owner, all at once. Returns `None` for a contract that is already closed.
    pub(super) fn close(&mut self, id: ContractId, cause: CloseCause) -> Option<Event> {
        let c = self.contracts.get_mut(&id)?;
        if !c.is_open() {
            return None;
        }
        let refund = std::mem::take(&mut c.escrow);
        c.state = ContractState::Closed(cause);
        c.suspended_at = None;
        let (owner, node, farm, resources, state) =
            (c.owner, c.node, c.farm, c.resources, c.state.clone());
        self.suspended.remove(&id);
        if let Some(set) = self.node_contracts.get_mut(&node) {
            set.remove(&id);
        }
        if let Some(n) = self.nodes.get_mut(&node) {
            n.reserved = n.reserved.saturating_sub(&resources);
        }
        if let Some(f) = self.farms.get_mut(&farm) {
            for p in f.public_ips.iter_mut().filter(|p| p.leased_by == Some(id)) {
                p.leased_by = None;
            }
        }
        if let Some(a) = self.accounts.get_mut(&owner) {
            // Exact: balance + escrow <= supply <= Amount::MAX (see `supply`).
            a.balance = a.balance.saturating_add(refund);
        }
        Some(Event::ContractClosed {
            contract: id,
            node,
            state,
            refund,
        })
    }

    // ---- lookups that produce the right error ---------------------------------

    pub(super) fn contract_ref(&self, id: ContractId) -> Result<&Contract, TxError> {
        self.contracts.get(&id).ok_or(TxError::NoContract(id))
    }
    pub(super) fn contract_mut(&mut self, id: ContractId) -> Result<&mut Contract, TxError> {
        self.contracts.get_mut(&id).ok_or(TxError::NoContract(id))
    }
    pub(super) fn wrong_state(&self, c: &Contract, want: &'static str) -> TxError {
        TxError::WrongContractState {
            contract: c.id,
            state: c.state.clone(),
            want,
        }
    }
}

/// What `farm` charges per hour for `resources` and `ips`; an overflow is refused.
fn price_per_hour(farm: &Farm, resources: Resources, ips: u32) -> Result<u64, TxError> {
    farm.prices
        .per_hour(&resources, ips)
        .ok_or(TxError::PriceOverflow {
            farm: farm.id,
            resources,
            ips,
        })
}
