//! Nodes: registration (with an enrollment token or the farmer's approval),
//! updates, uptime, status and decommissioning.

use super::{Event, State, TxError};
use crate::tx::EnrollToken;
use crate::types::*;

/// What a node says about itself, in RegisterNode and UpdateNode alike.
pub(super) struct Described<'a> {
    pub capacity: Resources,
    pub interfaces: &'a [Interface],
    pub gpus: &'a [Gpu],
    pub accel: Accel,
    pub encryption_key: EncryptionKey,
    pub persistent: bool,
}

/// The fields of a RegisterNode, once the signer is known.
pub(super) struct NewNode<'a> {
    pub farm: FarmId,
    pub described: Described<'a>,
    pub location: Option<&'a str>,
    pub enrollment: Option<&'a EnrollToken>,
}

const MAX_INTERFACES: usize = 64;
/// More display controllers than any server holds; the bound keeps a node record
/// (stored and served to everyone) small.
const MAX_GPUS: usize = 64;

fn check_len(what: &'static str, s: &str, max: usize) -> Result<(), TxError> {
    if s.len() > max {
        return Err(TxError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

fn check_interfaces(ifs: &[Interface]) -> Result<(), TxError> {
    if ifs.len() > MAX_INTERFACES {
        return Err(TxError::TooLong {
            what: "interfaces",
            len: ifs.len(),
            max: MAX_INTERFACES,
        });
    }
    for i in ifs {
        check_len("interface name", &i.name, 64)?;
        check_len("interface mac", &i.mac, 64)?;
        if i.ips.len() > 64 {
            return Err(TxError::TooLong {
                what: "interface ips",
                len: i.ips.len(),
                max: 64,
            });
        }
        for ip in &i.ips {
            check_len("interface ip", ip, 64)?;
        }
    }
    Ok(())
}

fn check_gpus(gpus: &[Gpu]) -> Result<(), TxError> {
    if gpus.len() > MAX_GPUS {
        return Err(TxError::TooLong {
            what: "gpu list",
            len: gpus.len(),
            max: MAX_GPUS,
        });
    }
    for g in gpus {
        // `dddd:bb:ss.f` is 12 bytes; some domains are longer, none this long.
        check_len("gpu pci address", &g.address, 32)?;
    }
    Ok(())
}

fn check_described(d: &Described<'_>) -> Result<(), TxError> {
    check_interfaces(d.interfaces)?;
    check_gpus(d.gpus)
}

/// Decommissioning is final (README, "Decommissioned nodes"): nothing changes a
/// decommissioned node again, and its key never registers again.
fn live(n: &Node) -> Result<(), TxError> {
    if n.status == NodeStatus::Decommissioned {
        return Err(TxError::NodeDecommissioned(n.id));
    }
    Ok(())
}

impl State {
    /// RegisterNode: a new node, approved at once with a valid enrollment token.
    pub(super) fn register_node(
        &mut self,
        signer: PublicKey,
        new: NewNode<'_>,
    ) -> Result<Vec<Event>, TxError> {
        let NewNode {
            farm,
            described,
            location,
            enrollment,
        } = new;
        let f = self.farms.get(&farm).ok_or(TxError::NoFarm(farm))?;
        if let Some(&node) = self.node_keys.get(&signer) {
            let retired = self
                .nodes
                .get(&node)
                .is_some_and(|n| n.status == NodeStatus::Decommissioned);
            return Err(if retired {
                TxError::NodeKeyRetired { key: signer, node }
            } else {
                TxError::NodeKeyTaken { key: signer, node }
            });
        }
        check_described(&described)?;
        if let Some(l) = location {
            check_len("location", l, 256)?;
        }
        let approved = match enrollment {
            None => false,
            Some(tok) => {
                if tok.farm != farm {
                    return Err(TxError::EnrollWrongFarm {
                        token: tok.farm,
                        farm,
                    });
                }
                let key = f.enrollment_key.ok_or(TxError::EnrollNotAccepted(farm))?;
                tok.verify(&self.params.chain_id, &key)
                    .map_err(|_| TxError::EnrollBadSignature(farm))?;
                if tok.expires < self.time {
                    return Err(TxError::EnrollExpired {
                        expires: tok.expires,
                        now: self.time,
                    });
                }
                true
            }
        };
        let id = self.next_node;
        self.next_node = id.checked_add(1).ok_or(TxError::Overflow("node id"))?;
        let Described {
            capacity,
            interfaces,
            gpus,
            accel,
            encryption_key,
            persistent,
        } = described;
        self.accounts.entry(signer).or_insert(Account {
            pubkey: signer,
            nonce: 0,
            balance: 0,
            encryption_key: Some(encryption_key),
        });
        self.node_keys.insert(signer, id);
        self.nodes.insert(
            id,
            Node {
                id,
                pubkey: signer,
                farm,
                approved,
                capacity,
                reserved: Resources::default(),
                interfaces: interfaces.to_vec(),
                gpus: gpus.to_vec(),
                accel,
                location: location.map(str::to_string),
                encryption_key,
                persistent,
                status: NodeStatus::Up,
                last_uptime: self.time,
                uptime_secs: 0,
                registered_at: self.time,
            },
        );
        Ok(vec![Event::NodeRegistered {
            node: id,
            farm,
            approved,
        }])
    }

    /// ApproveNode: the farmer lets the node take contracts.
    pub(super) fn approve_node(
        &mut self,
        signer: PublicKey,
        node: NodeId,
    ) -> Result<Vec<Event>, TxError> {
        let n = self.node_ref(node)?;
        self.owned_farm(&signer, n.farm)?;
        live(n)?;
        if n.approved {
            return Err(TxError::AlreadyApproved(node));
        }
        self.node_mut(node)?.approved = true;
        Ok(vec![Event::NodeApproved { node }])
    }

    /// RemoveNode: decommissions the node and closes its contracts.
    pub(super) fn remove_node(
        &mut self,
        signer: PublicKey,
        node: NodeId,
    ) -> Result<Vec<Event>, TxError> {
        live(self.node_or_farmer(&signer, node)?)?;
        let open: Vec<ContractId> = self.open_contracts_on(node).map(|c| c.id).collect();
        let mut events: Vec<Event> = open
            .into_iter()
            .filter_map(|c| self.close(c, CloseCause::NodeRemoved))
            .collect();
        let n = self.node_mut(node)?;
        n.status = NodeStatus::Decommissioned;
        n.approved = false;
        events.push(Event::NodeRemoved { node });
        Ok(events)
    }

    /// UpdateNode: the node's measured capacity, interfaces, GPUs and accelerator.
    pub(super) fn update_node(
        &mut self,
        signer: PublicKey,
        node: NodeId,
        described: Described<'_>,
    ) -> Result<Vec<Event>, TxError> {
        live(self.the_node(&signer, node)?)?;
        check_described(&described)?;
        let n = self.node_mut(node)?;
        n.capacity = described.capacity;
        n.interfaces = described.interfaces.to_vec();
        n.gpus = described.gpus.to_vec();
        n.accel = described.accel;
        n.encryption_key = described.encryption_key;
        n.persistent = described.persistent;
        Ok(vec![Event::NodeUpdated { node }])
    }

    /// ReportUptime: the node is alive (and back up from standby).
    pub(super) fn report_uptime(
        &mut self,
        signer: PublicKey,
        node: NodeId,
        timestamp: u64,
        uptime_secs: u64,
    ) -> Result<Vec<Event>, TxError> {
        live(self.the_node(&signer, node)?)?;
        let skew = self.params.uptime_skew_secs;
        if timestamp.abs_diff(self.time) > skew {
            return Err(TxError::UptimeSkew {
                got: timestamp,
                now: self.time,
                skew,
            });
        }
        let now = self.time;
        let n = self.node_mut(node)?;
        n.last_uptime = now;
        n.uptime_secs = uptime_secs;
        let mut events = vec![Event::NodeUptime { node }];
        if n.status == NodeStatus::Standby {
            n.status = NodeStatus::Up;
            events.push(Event::NodeStatusChanged {
                node,
                status: NodeStatus::Up,
            });
        }
        Ok(events)
    }

    /// SetNodeStatus: up or standby (decommissioning is RemoveNode).
    pub(super) fn set_node_status(
        &mut self,
        signer: PublicKey,
        node: NodeId,
        status: NodeStatus,
    ) -> Result<Vec<Event>, TxError> {
        live(self.node_or_farmer(&signer, node)?)?;
        if status == NodeStatus::Decommissioned {
            return Err(TxError::UseRemoveNode);
        }
        self.node_mut(node)?.status = status;
        Ok(vec![Event::NodeStatusChanged { node, status }])
    }

    // ---- lookups that produce the right error ---------------------------------

    pub(super) fn node_ref(&self, id: NodeId) -> Result<&Node, TxError> {
        self.nodes.get(&id).ok_or(TxError::NoNode(id))
    }
    pub(super) fn node_mut(&mut self, id: NodeId) -> Result<&mut Node, TxError> {
        self.nodes.get_mut(&id).ok_or(TxError::NoNode(id))
    }
    /// The signer must be the node itself.
    pub(super) fn the_node(&self, signer: &PublicKey, id: NodeId) -> Result<&Node, TxError> {
        let n = self.node_ref(id)?;
        if &n.pubkey != signer {
            return Err(TxError::NotTheNode(id));
        }
        Ok(n)
    }
    pub(super) fn node_or_farmer(&self, signer: &PublicKey, id: NodeId) -> Result<&Node, TxError> {
        let n = self.node_ref(id)?;
        let farmer = self.farms.get(&n.farm).is_some_and(|f| &f.owner == signer);
        if &n.pubkey != signer && !farmer {
            return Err(TxError::NotNodeOrFarmer(id));
        }
        Ok(n)
    }
}
