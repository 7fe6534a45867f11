//! What the screen shows, as plain data: the snapshot from cellosd (or why there is
//! none), the NICs the dashboard read itself, the time, and the scroll position.
//! The mapping to display strings lives here so that it is tested without a terminal.

use crate::view::{CapacityView, ContractView, RegState, Registration, Res, Snapshot};

/// One network interface and its addresses (`10.0.2.15/24`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub addrs: Vec<String>,
}

/// Everything one frame is drawn from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    /// cellosd's snapshot, or why it could not be had.
    pub snapshot: Result<Snapshot, String>,
    pub nics: Vec<Nic>,
    /// Unix seconds, for "12s ago".
    pub now: u64,
    /// First workload line shown.
    pub scroll: usize,
}

impl Model {
    /// Scrolls the workload list by `delta` lines, within `0..lines`.
    pub fn scroll_by(&mut self, delta: isize) {
        let max = self.workload_lines().len().saturating_sub(1);
        self.scroll = self.scroll.saturating_add_signed(delta).min(max);
    }

    /// The workload list, one line per workload (a contract without workloads, or a
    /// refused one, gets a line of its own).
    pub fn workload_lines(&self) -> Vec<WorkloadLine> {
        self.snapshot
            .as_ref()
            .map(|s| workload_lines(&s.contracts))
            .unwrap_or_default()
    }
}

/// One line of the workload list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadLine {
    pub contract: u64,
    pub name: String,
    pub kind: String,
    pub phase: String,
}

pub fn workload_lines(contracts: &[ContractView]) -> Vec<WorkloadLine> {
    let mut out = Vec::new();
    for c in contracts {
        let state = match (&c.rejected, c.accepted) {
            (Some(why), _) => Some(format!("refused: {why}")),
            (None, false) => Some("not accepted yet".to_string()),
            (None, true) => None,
        };
        if c.workloads.is_empty() || state.as_deref().is_some_and(|s| s.starts_with("refused")) {
            out.push(WorkloadLine {
                contract: c.id,
                name: "-".into(),
                kind: "-".into(),
                phase: state.unwrap_or_else(|| "no workloads".into()),
            });
            continue;
        }
        for w in &c.workloads {
            out.push(WorkloadLine {
                contract: c.id,
                name: w.name.clone(),
                kind: w.kind.clone(),
                phase: w.phase.clone(),
            });
        }
    }
    out
}

/// Bytes in binary units, short: `512B`, `1.5K`, `20.0G`, `3.6T`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// A duration in its two largest units: `42s`, `3m05s`, `2h10m`, `4d03h`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// The ledger's state in a few words.
pub fn ledger_state(reachable: Option<bool>) -> &'static str {
    match reachable {
        None => "not asked yet",
        Some(true) => "answers",
        Some(false) => "UNREACHABLE",
    }
}

/// Registration in a few words: `registering`, `waiting for the farmer's approval`,
/// `registered (up)` (the header names the node id).
pub fn registration(r: &Registration) -> String {
    match r.state {
        RegState::Registering => "registering".into(),
        RegState::WaitingForApproval => "waiting for the farmer's approval".into(),
        RegState::Registered => match &r.status {
            Some(s) => format!("registered ({s})"),
            None => "registered".into(),
        },
    }
}

/// An error line from cellosd without its `cellos: ` prefix (the whole screen is
/// cellos'), so that more of what matters fits on a line.
pub fn error_line(line: &str) -> &str {
    ["cellos: ", "cellosd: "]
        .iter()
        .find_map(|p| line.strip_prefix(p))
        .unwrap_or(line)
}

/// When the ledger last recorded an uptime report, relative to `now`.
pub fn last_uptime(r: &Registration, now: u64) -> String {
    match r.last_uptime {
        None | Some(0) => "none yet".into(),
        Some(t) => format!("{} ago", duration(now.saturating_sub(t))),
    }
}

/// One row of the capacity table.
#[derive(Clone, Debug)]
pub struct CapacityRow {
    pub label: &'static str,
    pub total: u64,
    pub reserved: u64,
    pub used: u64,
    /// Formats an amount of this resource.
    pub unit: fn(u64) -> String,
}

impl CapacityRow {
    /// A bar of `width` cells: `█` used, `▒` reserved but not (yet) used, `░` free.
    /// Reserved and used never draw past the bar, even when they exceed the total.
    pub fn bar(&self, width: usize) -> String {
        let cells = |v: u64| -> usize {
            if self.total == 0 {
                0
            } else {
                let c = (v.min(self.total) as u128 * width as u128).div_ceil(self.total as u128);
                c as usize
            }
        };
        let reserved = cells(self.reserved.max(self.used));
        let used = cells(self.used);
        [
            "█".repeat(used),
            "▒".repeat(reserved - used),
            "░".repeat(width - reserved),
        ]
        .concat()
    }

    /// `used 1 · reserved 2 · of 4`, each in the resource's unit.
    pub fn figures(&self) -> String {
        format!(
            "used {} · rsvd {} · of {}",
            (self.unit)(self.used),
            (self.unit)(self.reserved),
            (self.unit)(self.total)
        )
    }
}

fn cores(n: u64) -> String {
    n.to_string()
}

pub fn capacity_rows(c: &CapacityView) -> [CapacityRow; 4] {
    let row = |label, pick: fn(&Res) -> u64, unit| CapacityRow {
        label,
        total: pick(&c.total),
        reserved: pick(&c.reserved),
        used: pick(&c.used),
        unit,
    };
    [
        row("CRU", |r| r.cru, cores),
        row("MRU", |r| r.mru, bytes),
        row("SRU", |r| r.sru, bytes),
        row("HRU", |r| r.hru, bytes),
    ]
}

/// NICs in one line each: `eth0  10.0.2.15/24  fec0::5054:ff:fe12:3456/64`.
pub fn nic_lines(nics: &[Nic]) -> Vec<String> {
    nics.iter()
        .map(|n| {
            if n.addrs.is_empty() {
                format!("{:<6} no address", n.name)
            } else {
                format!("{:<6} {}", n.name, n.addrs.join("  "))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::WorkloadView;

    fn w(name: &str, kind: &str, phase: &str) -> WorkloadView {
        WorkloadView {
            name: name.into(),
            kind: kind.into(),
            phase: phase.into(),
        }
    }

    #[test]
    fn units() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(bytes(20 << 30), "20.0G");
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(185), "3m05s");
        assert_eq!(duration(7800), "2h10m");
        assert_eq!(duration(4 * 86_400 + 3 * 3600), "4d03h");
    }

    #[test]
    fn bars_split_used_reserved_free_and_never_overflow() {
        let r = |reserved, used| CapacityRow {
            label: "CRU",
            total: 4,
            reserved,
            used,
            unit: cores,
        };
        assert_eq!(r(2, 1).bar(8), "██▒▒░░░░");
        assert_eq!(r(0, 0).bar(4), "░░░░");
        assert_eq!(r(9, 9).bar(4), "████");
        // Used but not reserved (a stale record) still shows as used.
        assert_eq!(r(0, 2).bar(4), "██░░");
        let empty = CapacityRow {
            total: 0,
            ..r(3, 3)
        };
        assert_eq!(empty.bar(3), "░░░");
        assert_eq!(r(2, 1).figures(), "used 1 · rsvd 2 · of 4");
    }

    #[test]
    fn capacity_rows_take_each_resource_in_its_unit() {
        let c = CapacityView {
            total: Res {
                cru: 4,
                mru: 8 << 30,
                sru: 100 << 30,
                hru: 0,
            },
            reserved: Res {
                cru: 1,
                mru: 1 << 30,
                sru: 10 << 30,
                hru: 0,
            },
            used: Res {
                cru: 0,
                mru: 0,
                sru: 10 << 30,
                hru: 0,
            },
        };
        let rows = capacity_rows(&c);
        let labels: Vec<_> = rows.iter().map(|r| r.label).collect();
        assert_eq!(labels, ["CRU", "MRU", "SRU", "HRU"]);
        assert_eq!(rows[0].figures(), "used 0 · rsvd 1 · of 4");
        assert_eq!(rows[2].figures(), "used 10.0G · rsvd 10.0G · of 100.0G");
        assert_eq!(rows[3].total, 0);
    }

    #[test]
    fn contracts_become_one_line_per_workload() {
        let contracts = vec![
            ContractView {
                id: 3,
                accepted: true,
                rejected: None,
                workloads: vec![
                    w("data", "volume", "ready"),
                    w("s", "shard", "provisioning"),
                ],
            },
            ContractView {
                id: 4,
                accepted: false,
                rejected: Some("no capacity".into()),
                workloads: vec![w("x", "volume", "failed")],
            },
            ContractView {
                id: 5,
                accepted: true,
                rejected: None,
                workloads: vec![],
            },
            ContractView {
                id: 6,
                accepted: false,
                rejected: None,
                workloads: vec![],
            },
        ];
        let lines = workload_lines(&contracts);
        let flat: Vec<_> = lines
            .iter()
            .map(|l| format!("{} {} {} {}", l.contract, l.name, l.kind, l.phase))
            .collect();
        assert_eq!(
            flat,
            [
                "3 data volume ready",
                "3 s shard provisioning",
                "4 - - refused: no capacity",
                "5 - - no workloads",
                "6 - - not accepted yet",
            ]
        );
    }

    #[test]
    fn registration_and_ledger_words() {
        let mut r = Registration::default();
        assert_eq!(registration(&r), "registering");
        r.state = RegState::WaitingForApproval;
        r.node = Some(7);
        assert_eq!(registration(&r), "waiting for the farmer's approval");
        r.state = RegState::Registered;
        r.status = Some("up".into());
        assert_eq!(registration(&r), "registered (up)");
        assert_eq!(last_uptime(&r, 100), "none yet");
        r.last_uptime = Some(40);
        assert_eq!(last_uptime(&r, 100), "1m00s ago");
        assert_eq!(ledger_state(Some(false)), "UNREACHABLE");
        assert_eq!(ledger_state(None), "not asked yet");
        assert_eq!(error_line("cellos: ledger down"), "ledger down");
        assert_eq!(error_line("cellosd: stopping"), "stopping");
        assert_eq!(error_line("shardd: x"), "shardd: x");
    }

    #[test]
    fn scrolling_stays_within_the_list() {
        let contracts = vec![ContractView {
            id: 1,
            accepted: true,
            rejected: None,
            workloads: vec![w("a", "volume", "ready"), w("b", "volume", "ready")],
        }];
        let mut m = Model {
            snapshot: Ok(Snapshot {
                contracts,
                ..Snapshot::default()
            }),
            nics: vec![],
            now: 0,
            scroll: 0,
        };
        m.scroll_by(-1);
        assert_eq!(m.scroll, 0);
        m.scroll_by(10);
        assert_eq!(m.scroll, 1);
        m.snapshot = Err("down".into());
        m.scroll_by(1);
        assert_eq!(m.scroll, 0);
    }
}
