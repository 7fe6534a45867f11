//! Group commit: a write is acknowledged only once `fdatasync` covers it, and
//! many concurrent writers share one fsync.
//!
//! Writers append under a short lock, then wait in [`Namespace::make_durable`]:
//! the first waiter becomes the leader and syncs everything appended so far, the
//! others wait for it. An fsync error poisons the namespace: after one, the
//! kernel may have dropped the dirty pages, so no later write is trusted.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Namespace, NsError, Result, State};
use crate::error_chain;
use crate::sys::{self, IoError};

impl Namespace {
    /// Marks the namespace failed after an fsync error, and returns the error.
    pub(super) fn poison(&self, st: &mut State, e: IoError) -> NsError {
        st.failed = Some(error_chain(&e));
        NsError::Io(e)
    }

    /// Waits until every byte up to `upto` (on the `appended` clock) is on disk.
    pub async fn make_durable(&self, upto: u64) -> Result<()> {
        loop {
            // Registered before the state is read, so the leader's notify cannot be
            // missed between reading `syncing` and waiting.
            let notified = self.synced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let lead = {
                let mut st = self.lock();
                let Some(lead) = st.sync_target(&self.name, upto)? else {
                    return Ok(());
                };
                // Someone else leads this sync: wait for it.
                (!std::mem::replace(&mut st.syncing, true)).then_some(lead)
            };
            let Some((target, file, path)) = lead else {
                notified.await;
                continue;
            };
            // Clears `syncing` and wakes the waiters even if this future is dropped
            // mid-fsync, so one cancelled writer cannot stall the namespace.
            let _leader = Leader(self);
            let res = tokio::task::spawn_blocking(move || sys::sync_data(&file, &path)).await;
            self.lock().record_sync(
                target,
                match res {
                    Ok(r) => r.map_err(|e| error_chain(&e)),
                    Err(join) => Err(format!("fsync task: {join}")),
                },
            );
        }
    }
}

impl State {
    /// `Deleted` or `Failed` when the namespace takes no more writes.
    pub(super) fn usable(&self, ns: &str) -> Result<()> {
        if self.deleted {
            return Err(NsError::Deleted { ns: ns.into() });
        }
        self.healthy(ns)
    }

    /// `Failed` once an fsync has failed: no later write is trusted.
    fn healthy(&self, ns: &str) -> Result<()> {
        match &self.failed {
            Some(reason) => Err(NsError::Failed {
                ns: ns.into(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// What a sync that makes `upto` durable has to cover: the append clock now
    /// and the last file (earlier files were fsynced when they were closed);
    /// `None` if `upto` is durable already, `Failed` after a failed fsync.
    pub(super) fn sync_target(&self, ns: &str, upto: u64) -> Result<Option<SyncTarget>> {
        self.healthy(ns)?;
        if self.synced >= upto {
            return Ok(None);
        }
        let f = self.last();
        Ok(Some((self.appended, f.file.clone(), f.path.clone())))
    }

    /// Records how a sync up to `target` (on the append clock) went; a failure
    /// poisons the namespace.
    pub(super) fn record_sync(&mut self, target: u64, outcome: std::result::Result<(), String>) {
        match outcome {
            Ok(()) => self.synced = self.synced.max(target),
            Err(reason) => self.failed = Some(reason),
        }
    }
}

/// The append clock a sync covers, and the file to sync.
pub(super) type SyncTarget = (u64, Arc<File>, Arc<PathBuf>);

struct Leader<'a>(&'a Namespace);

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.0.lock().syncing = false;
        self.0.synced.notify_waiters();
    }
}
