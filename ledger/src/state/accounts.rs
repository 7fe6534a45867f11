//! Accounts and money: CreateAccount, the dev faucet, Transfer, and the two rules
//! every payment follows (an account is opened by money, and keeps the existential
//! deposit).

use super::{add, Event, State, TxError};
use crate::types::*;

impl State {
    /// CreateAccount: records the encryption key of an account that exists (only a
    /// funded account gets here: `apply` checks that), it opens nothing.
    pub(super) fn create_account(
        &mut self,
        signer: PublicKey,
        encryption_key: Option<EncryptionKey>,
    ) -> Result<Vec<Event>, TxError> {
        // Only a funded account gets here (`apply` checks that it exists):
        // CreateAccount records its encryption key, it opens nothing.
        self.acct_mut(&signer)?.encryption_key = encryption_key;
        Ok(vec![Event::AccountKeySet { account: signer }])
    }

    /// Faucet (dev mode only): mints `amount` to the signer, opening its account.
    pub(super) fn faucet(
        &mut self,
        signer: PublicKey,
        amount: Amount,
    ) -> Result<Vec<Event>, TxError> {
        if !self.params.dev_mode {
            return Err(TxError::FaucetDisabled);
        }
        if amount == 0 {
            return Err(TxError::ZeroAmount);
        }
        if amount > self.params.faucet_max {
            return Err(TxError::FaucetTooMuch {
                got: amount,
                max: self.params.faucet_max,
            });
        }
        let supply = add(self.supply, amount, "the money supply")?;
        let mut events = self.open_account(signer, amount)?;
        let balance = self.acct(&signer)?.balance;
        let balance = add(balance, amount, "balance")?;
        self.supply = supply;
        self.acct_mut(&signer)?.balance = balance;
        events.push(Event::Transferred {
            from: None,
            to: signer,
            amount,
        });
        Ok(events)
    }

    /// Transfer: moves `amount` to `to`, opening its account if the amount is enough.
    pub(super) fn transfer(
        &mut self,
        signer: PublicKey,
        to: PublicKey,
        amount: Amount,
    ) -> Result<Vec<Event>, TxError> {
        if amount == 0 {
            return Err(TxError::ZeroAmount);
        }
        let from_bal = self.spend(&signer, amount)?;
        let to_bal = self.accounts.get(&to).map_or(0, |a| a.balance);
        let to_bal = add(to_bal, amount, "balance")?;
        let mut events = Vec::new();
        if to != signer {
            events = self.open_account(to, amount)?;
            self.acct_mut(&signer)?.balance = from_bal;
            self.acct_mut(&to)?.balance = to_bal;
        }
        events.push(Event::Transferred {
            from: Some(signer),
            to,
            amount,
        });
        Ok(events)
    }

    /// Opens the account of `key` with `amount` on its way in, if it has none. The
    /// caller credits `amount` afterwards; nothing is changed when this fails.
    pub(super) fn open_account(
        &mut self,
        key: PublicKey,
        amount: Amount,
    ) -> Result<Vec<Event>, TxError> {
        if self.accounts.contains_key(&key) {
            return Ok(Vec::new());
        }
        if amount < EXISTENTIAL_DEPOSIT {
            return Err(TxError::BelowExistentialDeposit {
                account: key,
                amount,
            });
        }
        self.accounts.insert(
            key,
            Account {
                pubkey: key,
                nonce: 0,
                balance: 0,
                encryption_key: None,
            },
        );
        Ok(vec![Event::AccountCreated { account: key }])
    }

    /// The balance `who` is left with after paying `amount`, which must leave the
    /// existential deposit in the account.
    pub(super) fn spend(&self, who: &PublicKey, amount: Amount) -> Result<Amount, TxError> {
        let have = self.acct(who)?.balance;
        let need = add(amount, EXISTENTIAL_DEPOSIT, "the amount to pay")?;
        if have < need {
            return Err(TxError::InsufficientBalance { have, need });
        }
        Ok(have - amount)
    }

    // ---- lookups that produce the right error ---------------------------------

    pub(super) fn acct(&self, k: &PublicKey) -> Result<&Account, TxError> {
        self.accounts.get(k).ok_or(TxError::NoAccount(*k))
    }
    pub(super) fn acct_mut(&mut self, k: &PublicKey) -> Result<&mut Account, TxError> {
        self.accounts.get_mut(k).ok_or(TxError::NoAccount(*k))
    }
}
