//! cellos-registrar: puts the node on the ledger and keeps its record true.
//!
//! [`Registrar::register`] finds the node's record by its public key or submits
//! RegisterNode (with the farm's enrollment token when the boot config has one), brings
//! a stale record up to date with UpdateNode, and waits until the farmer has approved
//! the node. [`Registrar::maintain`] then re-measures the capacity every few minutes
//! (UpdateNode when it changed) and reports uptime every minute.
//!
//! A node has nobody at its console, so this crate never gives up and never crashes:
//! an unreachable ledger is retried with a delay doubling from 1 s to 30 s, a refusal
//! is retried every 30 s, and each failure is a [`Notice`] (one console line) that says
//! what failed and when the next try is. Every step starts from what the ledger says,
//! so it is safe to repeat after a timeout that may or may not have committed, and
//! after a restart of the whole agent.
//!
//! The ledger is behind [`Ledger`] and the machine behind [`Host`], so the logic here is
//! tested with fakes; the real ledger client implements [`Ledger`].

mod backoff;
mod ledger;

use std::convert::Infallible;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cellos_identity::{Identity, NodeSigner};
use cellos_ledger::{
    Accel, EncryptionKey, EnrollToken, Event, FarmId, Gpu, Interface, NodeId, Receipt, Resources,
    TxBody,
};
use tokio::time::{sleep, sleep_until, Instant};

use backoff::{Backoff, SLOW};
pub use ledger::{Ledger, LedgerError};

/// What the node has, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub resources: Resources,
    pub interfaces: Vec<Interface>,
    /// What a passthrough workload could reserve.
    pub gpus: Vec<Gpu>,
    /// How the node runs virtual machines.
    pub accel: Accel,
}

/// The machine the registrar reports on.
pub trait Host: Send {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Measures the capacity now.
    fn measure(&mut self) -> Result<Capacity, Self::Error>;
    /// Time since the machine booted.
    fn uptime(&mut self) -> Result<Duration, Self::Error>;
}

/// How the registrar behaves; [`Config::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// The farm the boot config names.
    pub farm: FarmId,
    /// The farm's consent to join approved at once (`cellos.enroll=`).
    pub enrollment: Option<EnrollToken>,
    /// How often uptime is reported (60 s).
    pub uptime_every: Duration,
    /// How often the capacity is measured again (5 min).
    pub remeasure_every: Duration,
    /// How often the record is read while waiting for the farmer's approval (5 s).
    pub approval_poll: Duration,
    /// Whether the node's state is on disk (told to the ledger, which gives a node
    /// without persistent state no contracts).
    pub persistent: bool,
}

impl Config {
    pub fn new(farm: FarmId) -> Self {
        Config {
            farm,
            enrollment: None,
            uptime_every: Duration::from_secs(60),
            remeasure_every: Duration::from_secs(300),
            approval_poll: Duration::from_secs(5),
            persistent: true,
        }
    }
}

/// An approved node on the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub node: NodeId,
    pub farm: FarmId,
    pub capacity: Resources,
}

/// Something the operator should see on the console; `Display` is the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Unreachable {
        url: String,
        cause: String,
        retry_in: Duration,
    },
    /// The ledger refused `action` or answered it with something unreadable.
    Failed {
        url: String,
        action: &'static str,
        error: LedgerError,
        retry_in: Duration,
    },
    /// Measuring the machine failed.
    HostFailed {
        what: &'static str,
        error: String,
        retry_in: Duration,
    },
    EnrollmentRefused {
        error: LedgerError,
    },
    /// The key is already a node on another farm than the boot config says.
    OtherFarm {
        node: NodeId,
        farm: FarmId,
        wanted: FarmId,
    },
    WaitingForApproval {
        node: NodeId,
        farm: FarmId,
    },
    CapacityUpdated {
        node: NodeId,
        resources: Resources,
    },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Unreachable {
                url,
                cause,
                retry_in,
            } => write!(
                f,
                "cellos: ledger {url} unreachable ({cause}), retrying in {}s",
                retry_in.as_secs()
            ),
            Notice::Failed {
                url,
                action,
                error,
                retry_in,
            } => {
                let secs = retry_in.as_secs();
                match error {
                    LedgerError::Refused { status, message } => write!(
                        f,
                        "cellos: ledger {url} refused {action} ({status}): {message}, retrying in {secs}s"
                    ),
                    other => write!(
                        f,
                        "cellos: ledger {url} failed {action}: {other}, retrying in {secs}s"
                    ),
                }
            }
            Notice::HostFailed {
                what,
                error,
                retry_in,
            } => write!(
                f,
                "cellos: {what} failed: {error}, retrying in {}s",
                retry_in.as_secs()
            ),
            Notice::EnrollmentRefused { error } => write!(
                f,
                "cellos: the ledger refused the enrollment token ({error}); registering without it, the farmer must approve the node"
            ),
            Notice::OtherFarm { node, farm, wanted } => write!(
                f,
                "cellos: node {node} is registered on farm {farm}, not on farm {wanted} as the boot config says; it stays on farm {farm}"
            ),
            Notice::WaitingForApproval { node, farm } => write!(
                f,
                "cellos: node {node} registered on farm {farm}, waiting for the farmer to approve it"
            ),
            Notice::CapacityUpdated { node, resources } => {
                write!(f, "cellos: node {node} capacity updated ({resources})")
            }
        }
    }
}

/// One failed step, before it becomes a notice and a delay.
enum Failure {
    Ledger {
        action: &'static str,
        error: LedgerError,
    },
    Host {
        what: &'static str,
        error: String,
    },
}

fn ledger_failure(action: &'static str) -> impl FnOnce(LedgerError) -> Failure {
    move |error| Failure::Ledger { action, error }
}

fn host_failure<E: std::error::Error>(what: &'static str) -> impl FnOnce(E) -> Failure {
    move |e| Failure::Host {
        what,
        error: e.to_string(),
    }
}

/// The node as far as the ledger knows it, once registered.
struct Known {
    node: NodeId,
    farm: FarmId,
    approved: bool,
    /// What the ledger's record says now.
    capacity: Capacity,
    encryption_key: EncryptionKey,
    persistent: bool,
}

type Notify = Box<dyn FnMut(Notice) + Send>;

pub struct Registrar<L, H> {
    ledger: L,
    host: H,
    identity: Identity,
    config: Config,
    notify: Notify,
    backoff: Backoff,
    /// Made once the chain id is known; shared with the rest of cellosd.
    signer: Option<NodeSigner>,
    /// Ledger time minus local time, in seconds: uptime reports carry ledger time so
    /// a node without a synchronized clock is not refused for skew. `None` until
    /// learned, and again after an uptime report is refused.
    clock_offset: Option<i64>,
    known: Option<Known>,
}

impl<L: Ledger, H: Host> Registrar<L, H> {
    /// `notify` receives every console-worthy event.
    pub fn new(
        ledger: L,
        host: H,
        identity: Identity,
        config: Config,
        notify: impl FnMut(Notice) + Send + 'static,
    ) -> Self {
        Registrar {
            ledger,
            host,
            identity,
            config,
            notify: Box::new(notify),
            backoff: Backoff::new(),
            signer: None,
            clock_offset: None,
            known: None,
        }
    }

    /// Registers the node (or finds its record) and waits until it is approved.
    /// Returns only on success; failures are notices and retries.
    pub async fn register(&mut self) -> Registered {
        let k = self.register_known().await;
        let r = Registered {
            node: k.node,
            farm: k.farm,
            capacity: k.capacity.resources,
        };
        self.known = Some(k);
        r
    }

    async fn register_known(&mut self) -> Known {
        let mut k = loop {
            match self.try_register().await {
                Ok(k) => break k,
                Err(f) => self.retry_after(f).await,
            }
        };
        let mut told = false;
        while !k.approved {
            if !told {
                told = true;
                (self.notify)(Notice::WaitingForApproval {
                    node: k.node,
                    farm: k.farm,
                });
            }
            sleep(self.config.approval_poll).await;
            match self.ledger.node(k.node).await {
                Ok(n) => {
                    self.backoff.reset();
                    k.approved = n.approved;
                }
                Err(e) => {
                    self.retry_after(ledger_failure("reading the node record")(e))
                        .await
                }
            }
        }
        k
    }

    /// Keeps the record current: uptime every [`Config::uptime_every`] (the first at
    /// once), capacity every [`Config::remeasure_every`]. Registers first if
    /// [`Registrar::register`] has not run (or a previous `maintain` was dropped).
    /// Never returns.
    pub async fn maintain(&mut self) -> Infallible {
        let mut k = match self.known.take() {
            Some(k) => k,
            None => self.register_known().await,
        };
        let mut next_uptime = Instant::now();
        let mut next_measure = Instant::now() + self.config.remeasure_every;
        loop {
            sleep_until(next_uptime.min(next_measure)).await;
            let now = Instant::now();
            if now >= next_measure {
                next_measure = match self.update_capacity(&mut k).await {
                    Ok(()) => now + self.config.remeasure_every,
                    Err(f) => now + self.notice(f),
                };
            }
            if now >= next_uptime {
                next_uptime = match self.report_uptime(k.node).await {
                    Ok(()) => now + self.config.uptime_every,
                    Err(f) => now + self.notice(f),
                };
            }
        }
    }

    /// Turns a failure into a notice; returns how long to wait before trying again.
    fn notice(&mut self, f: Failure) -> Duration {
        let url = self.ledger.url().to_string();
        let (notice, delay) = match f {
            Failure::Ledger {
                error: LedgerError::Unreachable { cause },
                ..
            } => {
                let retry_in = self.backoff.next();
                let n = Notice::Unreachable {
                    url,
                    cause,
                    retry_in,
                };
                (n, retry_in)
            }
            Failure::Ledger { action, error } => {
                let n = Notice::Failed {
                    url,
                    action,
                    error,
                    retry_in: SLOW,
                };
                (n, SLOW)
            }
            Failure::Host { what, error } => {
                let n = Notice::HostFailed {
                    what,
                    error,
                    retry_in: SLOW,
                };
                (n, SLOW)
            }
        };
        (self.notify)(notice);
        delay
    }

    async fn retry_after(&mut self, f: Failure) {
        let delay = self.notice(f);
        sleep(delay).await;
    }

    /// The node's one signer, made on first use from the ledger's chain id and its
    /// record of the node's nonce.
    async fn signer(&mut self) -> Result<NodeSigner, Failure> {
        if let Some(s) = &self.signer {
            return Ok(s.clone());
        }
        let status = self
            .ledger
            .status()
            .await
            .map_err(ledger_failure("status"))?;
        let nonce = self
            .ledger
            .nonce(&self.identity.public_key())
            .await
            .map_err(ledger_failure("reading the node's nonce"))?;
        self.backoff.reset();
        self.clock_offset = Some(status.time as i64 - unix_now() as i64);
        Ok(self
            .signer
            .insert(self.identity.signer(&status.chain_id, nonce))
            .clone())
    }

    /// The signer the rest of cellosd must use for the node's transactions (one per
    /// node: see [`NodeSigner`]); `None` before the first contact with the ledger.
    pub fn shared_signer(&self) -> Option<NodeSigner> {
        self.signer.clone()
    }

    async fn submit(&mut self, body: TxBody) -> Result<Receipt, Failure> {
        let action = body.name();
        let signer = self.signer().await?;
        let mut s = signer.lock().await;
        let tx = s.sign(body);
        let submitted = self.ledger.submit(&tx).await;
        if let Err(LedgerError::Refused { message, .. }) = &submitted {
            if message.contains("nonce") {
                // Someone else signed for this key: start above what the ledger saw.
                if let Ok(n) = self.ledger.nonce(&tx.tx.signer).await {
                    s.observe(n);
                }
            }
        }
        drop(s);
        let receipt = submitted.map_err(ledger_failure(action))?;
        self.backoff.reset();
        Ok(receipt)
    }

    /// One attempt at having a current record of this node on the ledger.
    async fn try_register(&mut self) -> Result<Known, Failure> {
        self.signer().await?;
        let measured = self
            .host
            .measure()
            .map_err(host_failure("measuring the capacity"))?;
        let key = self.identity.public_key();
        let found = self
            .ledger
            .node_by_key(&key)
            .await
            .map_err(ledger_failure("looking up the node"))?;
        self.backoff.reset();
        if let Some(n) = found {
            if n.farm != self.config.farm {
                (self.notify)(Notice::OtherFarm {
                    node: n.id,
                    farm: n.farm,
                    wanted: self.config.farm,
                });
            }
            let mut k = Known {
                node: n.id,
                farm: n.farm,
                approved: n.approved,
                capacity: Capacity {
                    resources: n.capacity,
                    interfaces: n.interfaces,
                    gpus: n.gpus,
                    accel: n.accel,
                },
                encryption_key: n.encryption_key,
                persistent: n.persistent,
            };
            self.update_to(&mut k, measured).await?;
            return Ok(k);
        }
        let (farm, encryption_key, persistent) = (
            self.config.farm,
            self.identity.encryption_key(),
            self.config.persistent,
        );
        let register = |enrollment| TxBody::RegisterNode {
            farm,
            capacity: measured.resources,
            interfaces: measured.interfaces.clone(),
            gpus: measured.gpus.clone(),
            accel: measured.accel,
            encryption_key,
            location: None,
            enrollment,
            persistent,
        };
        let body = register(self.config.enrollment.clone());
        let receipt = match self.submit(body).await {
            Err(Failure::Ledger {
                error: error @ LedgerError::Refused { .. },
                ..
            }) if self.config.enrollment.is_some() => {
                // A token the ledger will not take (expired, another farm, wrong
                // key) must not keep the node off the ledger: the farmer can still
                // approve it by hand. Any refusal drops the token, not only the
                // enrollment ones: the worst case of dropping a good token is a node
                // waiting for the farmer, while keeping a bad one is no node at all.
                (self.notify)(Notice::EnrollmentRefused { error });
                self.config.enrollment = None;
                let body = register(None);
                self.submit(body).await?
            }
            other => other?,
        };
        let Some((node, farm, approved)) = receipt.events.iter().find_map(|e| match e {
            Event::NodeRegistered {
                node,
                farm,
                approved,
            } => Some((*node, *farm, *approved)),
            _ => None,
        }) else {
            return Err(ledger_failure("RegisterNode")(LedgerError::BadAnswer {
                reason: "the receipt has no NodeRegistered event".into(),
            }));
        };
        Ok(Known {
            node,
            farm,
            approved,
            capacity: measured,
            encryption_key: self.identity.encryption_key(),
            persistent,
        })
    }

    /// Measures again and updates the record if it changed.
    async fn update_capacity(&mut self, k: &mut Known) -> Result<(), Failure> {
        let measured = self
            .host
            .measure()
            .map_err(host_failure("measuring the capacity"))?;
        self.update_to(k, measured).await
    }

    async fn update_to(&mut self, k: &mut Known, measured: Capacity) -> Result<(), Failure> {
        let encryption_key = self.identity.encryption_key();
        if k.capacity == measured
            && k.encryption_key == encryption_key
            && k.persistent == self.config.persistent
        {
            return Ok(());
        }
        self.submit(TxBody::UpdateNode {
            node: k.node,
            capacity: measured.resources,
            interfaces: measured.interfaces.clone(),
            gpus: measured.gpus.clone(),
            accel: measured.accel,
            encryption_key,
            persistent: self.config.persistent,
        })
        .await?;
        (self.notify)(Notice::CapacityUpdated {
            node: k.node,
            resources: measured.resources,
        });
        k.capacity = measured;
        k.encryption_key = encryption_key;
        k.persistent = self.config.persistent;
        Ok(())
    }

    async fn report_uptime(&mut self, node: NodeId) -> Result<(), Failure> {
        let uptime = self
            .host
            .uptime()
            .map_err(host_failure("reading the uptime"))?;
        let offset = match self.clock_offset {
            Some(o) => o,
            None => {
                let status = self
                    .ledger
                    .status()
                    .await
                    .map_err(ledger_failure("status"))?;
                let o = status.time as i64 - unix_now() as i64;
                self.clock_offset = Some(o);
                o
            }
        };
        let timestamp = (unix_now() as i64).saturating_add(offset).max(0) as u64;
        let r = self
            .submit(TxBody::ReportUptime {
                node,
                timestamp,
                uptime_secs: uptime.as_secs(),
            })
            .await;
        if let Err(Failure::Ledger {
            error: LedgerError::Refused { .. },
            ..
        }) = &r
        {
            // Perhaps the clocks drifted apart: learn the offset again next time.
            self.clock_offset = None;
        }
        r.map(|_| ())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
