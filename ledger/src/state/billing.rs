//! Billing: usage reports move escrow to the farmer, a contract whose escrow runs
//! low is suspended, a top-up resumes it, and a grace period that runs out closes it.

use super::{add, Event, State, TxError};
use crate::types::*;

/// What a ReportUsage says: the window `[start, end)` in ledger seconds and what the
/// contract's workloads used in it.
pub(super) struct Usage {
    pub start: u64,
    pub end: u64,
    pub nu_bytes: u64,
    pub cpu_usec: u64,
    pub memory_bytes: u64,
}

impl State {
    /// Closes the suspended contracts whose grace period ran out by ledger time.
    pub(super) fn expire_grace(&mut self) -> Vec<Event> {
        let due: Vec<ContractId> = self
            .suspended
            .iter()
            .copied()
            .filter(|id| {
                self.contracts
                    .get(id)
                    .and_then(|c| c.suspended_at)
                    .is_some_and(|at| at.saturating_add(self.params.grace_secs) <= self.time)
            })
            .collect();
        due.into_iter()
            .filter_map(|id| self.close(id, CloseCause::GraceExpired))
            .collect()
    }

    /// TopUp: more escrow; a suspended contract it covers again resumes.
    pub(super) fn top_up(
        &mut self,
        signer: PublicKey,
        contract: ContractId,
        amount: Amount,
    ) -> Result<Vec<Event>, TxError> {
        if amount == 0 {
            return Err(TxError::ZeroAmount);
        }
        let c = self.contract_ref(contract)?;
        if !c.is_open() {
            return Err(self.wrong_state(c, "open"));
        }
        let left = self.spend(&signer, amount)?;
        let escrow = add(c.escrow, amount, "escrow")?;
        let resume = c.state == ContractState::Suspended && escrow >= c.price_per_hour;
        let node = c.node;
        self.acct_mut(&signer)?.balance = left;
        let now = self.time;
        let c = self.contract_mut(contract)?;
        c.escrow = escrow;
        let mut events = vec![Event::ContractToppedUp {
            contract,
            node,
            amount,
        }];
        if resume {
            c.state = ContractState::Active;
            c.suspended_at = None;
            // The suspension is not billed.
            c.billed_until = c.billed_until.max(now);
            self.suspended.remove(&contract);
            events.push(Event::ContractResumed { contract, node });
        }
        Ok(events)
    }

    /// ReportUsage: the node bills `[start, end)` and the traffic in it.
    pub(super) fn report_usage(
        &mut self,
        signer: PublicKey,
        id: ContractId,
        usage: Usage,
    ) -> Result<Vec<Event>, TxError> {
        let Usage {
            start,
            end,
            nu_bytes,
            cpu_usec,
            memory_bytes,
        } = usage;
        let c = self.contract_ref(id)?;
        let cpus = self.the_node(&signer, c.node)?.capacity.cru;
        if c.state != ContractState::Active {
            return Err(self.wrong_state(c, "active"));
        }
        if end <= start {
            return Err(TxError::BadWindow { start, end });
        }
        // Windows never overlap: that is what makes a repeated report harmless. A
        // gap between windows (the node was off) is simply never billed.
        if start < c.billed_until {
            return Err(TxError::AlreadyBilled {
                start,
                end,
                billed_until: c.billed_until,
            });
        }
        if end > self.time.saturating_add(self.params.uptime_skew_secs) {
            return Err(TxError::WindowInFuture {
                end,
                now: self.time,
            });
        }
        // The node measures CPU time on its own clock and the window is ledger time:
        // the two may differ by the skew allowed. More than the node's CPUs have in
        // that time is no measurement. Saturating keeps the bound a bound: only
        // absurd windows and CPU counts reach u128::MAX.
        let max_cpu = u128::from(end - start)
            .saturating_add(u128::from(self.params.uptime_skew_secs))
            .saturating_mul(u128::from(cpus))
            .saturating_mul(1_000_000);
        if u128::from(cpu_usec) > max_cpu {
            return Err(TxError::CpuTimeBeyondNode {
                node: c.node,
                cpu_usec,
                max: u64::try_from(max_cpu).unwrap_or(u64::MAX),
            });
        }
        let total_cpu = add(c.cpu_usec, cpu_usec, "the contract's CPU time")?;
        // Each product of two u64 fits in a u128, and each quotient is at most
        // u128::MAX / 3600, so the sum fits too. A cost above the escrow takes the
        // whole escrow (and suspends the contract), it never wraps.
        let cost = u128::from(c.price_per_hour) * u128::from(end - start) / 3600
            + u128::from(c.price_per_gib) * u128::from(nu_bytes) / u128::from(GIB);
        let paid = u64::try_from(cost).map_or(c.escrow, |cost| cost.min(c.escrow));
        let remaining = c.escrow - paid;
        let total_paid = add(c.paid, paid, "the contract's total paid")?;
        let suspend = remaining < c.price_per_hour.max(1);
        let farm_owner = self
            .farms
            .get(&c.farm)
            .map(|f| f.owner)
            .ok_or(TxError::NoFarm(c.farm))?;
        let farmer_balance = self.accounts.get(&farm_owner).map_or(0, |a| a.balance);
        let farmer_balance = add(farmer_balance, paid, "the farmer's balance")?;
        let node = c.node;
        let now = self.time;

        let farmer = self.accounts.entry(farm_owner).or_insert(Account {
            pubkey: farm_owner,
            nonce: 0,
            balance: 0,
            encryption_key: None,
        });
        farmer.balance = farmer_balance;
        let c = self.contract_mut(id)?;
        c.escrow = remaining;
        c.billed_until = end;
        c.paid = total_paid;
        c.cpu_usec = total_cpu;
        c.memory_bytes = memory_bytes;
        let mut events = vec![Event::ContractBilled {
            contract: id,
            node,
            amount: paid,
            until: end,
        }];
        if suspend {
            c.state = ContractState::Suspended;
            c.suspended_at = Some(now);
            self.suspended.insert(id);
            events.push(Event::ContractSuspended { contract: id, node });
        }
        Ok(events)
    }
}
