//! Draws a [`Model`] on a ratatui frame.
//!
//! Laid out for the VGA console's 80x25 and wider: a header line, the identity block
//! (key, ledger, NICs), capacity bars, pools, the workload list (which takes the rest
//! and scrolls) and the last error lines. Lines that do not fit are cut, never wrapped,
//! so a long URL cannot push the rest off the screen. Below [`MIN_WIDTH`] x
//! [`MIN_HEIGHT`] it shows the node id and a short note instead. Only the 16 basic
//! colours: the Linux console has no more.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::Frame;

use crate::model::{
    capacity_rows, duration, error_line, last_uptime, ledger_state, nic_lines, registration, Model,
};
use crate::view::Snapshot;

pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 16;

/// Pools and error lines shown at most (the workload list gets the rest).
const MAX_POOLS: usize = 4;
const MAX_ERRORS: usize = 3;

pub fn draw(f: &mut Frame, m: &Model) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        return too_small(f, m, area);
    }
    let s = match &m.snapshot {
        Ok(s) => s,
        Err(why) => return no_snapshot(f, m, why, area),
    };
    let nics = nic_lines(&m.nics);
    let nic_rows = nics.len().clamp(1, 2);
    let pool_rows = s.pools.len().clamp(1, MAX_POOLS);
    let error_rows = s.errors.len().clamp(1, MAX_ERRORS);
    let [header, ident, cap, pools, work, errors] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(2 + nic_rows as u16),
        Constraint::Length(5),
        Constraint::Length(1 + pool_rows as u16),
        Constraint::Min(2),
        Constraint::Length(1 + error_rows as u16),
    ])
    .areas(area);
    f.render_widget(header_line(s), header);
    identity(f, m, s, &nics, ident);
    capacity(f, s, cap);
    pool_list(f, s, pools);
    workloads(f, m, work);
    error_lines(f, s, errors);
}

fn section(title: &str) -> Block<'_> {
    Block::new()
        .borders(Borders::TOP)
        .border_style(Style::new().fg(Color::Blue))
        .title(Span::styled(
            format!(" {title} "),
            Style::new().add_modifier(Modifier::BOLD),
        ))
}

fn header_line(s: &Snapshot) -> Paragraph<'static> {
    let who = match s.registration.node {
        Some(n) => format!(" cellos node {n} · farm {}", s.farm),
        None => format!(" cellos node (not registered) · farm {}", s.farm),
    };
    let right = format!("cellosd v{} · up {} ", s.version, duration(s.uptime_secs));
    Paragraph::new(Line::from(vec![
        Span::raw(who),
        Span::raw(" · "),
        Span::raw(registration(&s.registration)),
        Span::raw("  "),
        Span::raw(right),
    ]))
    .style(Style::new().fg(Color::Black).bg(Color::Cyan))
}

fn label(l: &str) -> Span<'static> {
    Span::styled(format!("{l:<7}"), Style::new().fg(Color::Cyan))
}

fn identity(f: &mut Frame, m: &Model, s: &Snapshot, nics: &[String], area: Rect) {
    let ledger_style = match s.ledger.reachable {
        Some(false) => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Some(true) => Style::new().fg(Color::Green),
        None => Style::new(),
    };
    let mut lines = vec![
        Line::from(vec![label("key"), Span::raw(s.node_key.clone())]),
        Line::from(vec![
            label("ledger"),
            Span::raw(format!("{} ", s.ledger.url)),
            Span::styled(ledger_state(s.ledger.reachable), ledger_style),
            Span::raw(format!(
                " · uptime report {}",
                last_uptime(&s.registration, m.now)
            )),
        ]),
    ];
    if nics.is_empty() {
        lines.push(Line::from(vec![
            label("nics"),
            Span::raw("none with an address"),
        ]));
    }
    for (i, n) in nics.iter().enumerate().take(2) {
        let l = if i == 0 { label("nics") } else { label("") };
        lines.push(Line::from(vec![l, Span::raw(n.clone())]));
    }
    f.render_widget(Paragraph::new(lines), area);
}

fn capacity(f: &mut Frame, s: &Snapshot, area: Rect) {
    let block = section("Capacity  █ used ▒ reserved ░ free");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let rows = capacity_rows(&s.capacity);
    let figures: Vec<String> = rows.iter().map(|r| r.figures()).collect();
    let fig_width = figures.iter().map(|x| x.chars().count()).max().unwrap_or(0);
    // label (4) + space + bar + two spaces + figures
    let bar = usize::from(inner.width)
        .saturating_sub(4 + 1 + 2 + fig_width)
        .max(4);
    let lines: Vec<Line> = rows
        .iter()
        .zip(&figures)
        .map(|(r, fig)| {
            Line::from(vec![
                Span::styled(format!("{:<4} ", r.label), Style::new().fg(Color::Cyan)),
                Span::styled(r.bar(bar), Style::new().fg(Color::Green)),
                Span::raw(format!("  {fig}")),
            ])
        })
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
}

fn pool_list(f: &mut Frame, s: &Snapshot, area: Rect) {
    let block = section("Pools");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let mut lines: Vec<Line> = s
        .pools
        .iter()
        .take(MAX_POOLS)
        .map(|p| {
            Line::raw(format!(
                "{:<14} {:<8} {:<4} {:>9} used of {:>9}",
                p.name,
                p.disk,
                p.kind,
                crate::model::bytes(p.used),
                crate::model::bytes(p.size)
            ))
        })
        .collect();
    if lines.is_empty() {
        lines.push(Line::raw("no disks: the state is in RAM"));
    } else if s.pools.len() > MAX_POOLS {
        lines.pop();
        lines.push(Line::raw(format!(
            "... and {} more",
            s.pools.len() - (MAX_POOLS - 1)
        )));
    }
    f.render_widget(Paragraph::new(lines), inner);
}

fn workloads(f: &mut Frame, m: &Model, area: Rect) {
    let all = m.workload_lines();
    let title = if all.is_empty() {
        "Workloads".to_string()
    } else {
        format!(
            "Workloads {}-{} of {} (↑↓)",
            (m.scroll + 1).min(all.len()),
            (m.scroll + usize::from(area.height.saturating_sub(1))).min(all.len()),
            all.len()
        )
    };
    let block = section(&title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    if all.is_empty() {
        f.render_widget(Paragraph::new("no contracts on this node"), inner);
        return;
    }
    let lines: Vec<Line> = all
        .iter()
        .skip(m.scroll)
        .take(usize::from(inner.height))
        .map(|w| {
            let style = match w.phase.as_str() {
                "ready" => Style::new().fg(Color::Green),
                "provisioning" | "removing" | "pending" => Style::new().fg(Color::Yellow),
                _ => Style::new().fg(Color::Red),
            };
            Line::from(vec![
                Span::raw(format!(
                    "contract {:<8} {:<16} {:<8} ",
                    w.contract, w.name, w.kind
                )),
                Span::styled(w.phase.clone(), style),
            ])
        })
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
}

fn error_lines(f: &mut Frame, s: &Snapshot, area: Rect) {
    let block = section("Last errors");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let skip = s.errors.len().saturating_sub(MAX_ERRORS);
    let mut lines: Vec<Line> = s.errors[skip..]
        .iter()
        .map(|e| Line::styled(error_line(e).to_string(), Style::new().fg(Color::Red)))
        .collect();
    if lines.is_empty() {
        lines.push(Line::raw("none"));
    }
    f.render_widget(Paragraph::new(lines), inner);
}

/// cellosd did not answer: say so, with what the dashboard knows by itself.
fn no_snapshot(f: &mut Frame, m: &Model, why: &str, area: Rect) {
    let mut lines = vec![
        Line::styled(
            " cellos node: waiting for cellosd",
            Style::new().fg(Color::Black).bg(Color::Cyan),
        ),
        Line::raw(""),
        Line::styled(why.to_string(), Style::new().fg(Color::Red)),
        Line::raw(""),
    ];
    lines.extend(
        nic_lines(&m.nics)
            .into_iter()
            .map(|n| Line::from(vec![label("nic"), Span::raw(n)])),
    );
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), area);
}

fn too_small(f: &mut Frame, m: &Model, area: Rect) {
    let node = match &m.snapshot {
        Ok(s) => match s.registration.node {
            Some(n) => format!("node {n}: {}", registration(&s.registration)),
            None => registration(&s.registration),
        },
        Err(_) => "waiting for cellosd".into(),
    };
    let lines = vec![
        Line::raw(format!("cellos {node}")),
        Line::raw(format!(
            "screen {}x{}: needs {MIN_WIDTH}x{MIN_HEIGHT}",
            area.width, area.height
        )),
    ];
    f.render_widget(Paragraph::new(lines), area);
}
