//! `cellos-dashboard`: the node's console dashboard. Init starts it on tty1:
//!
//! ```text
//! cellos-dashboard [--tty /dev/tty1] [--socket /run/cellos/dashboard.sock] [--every SECS]
//! ```
//!
//! It redraws every few seconds and on a key. On the console (`--tty`) no key stops it:
//! a farmer at the keyboard cannot take the dashboard, let alone the node, down; the
//! arrows, Page Up/Down and Home scroll the workload list, any other key just redraws.
//! Run on a developer's terminal without `--tty`, `q` quits.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use cellos_dashboard::model::Model;
use cellos_dashboard::view::{DEFAULT_RUN_DIR, SOCKET_NAME};
use cellos_dashboard::{sys, ui};
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::crossterm::terminal;
use ratatui::Terminal;

struct Args {
    tty: Option<PathBuf>,
    socket: PathBuf,
    every: Duration,
}

fn args() -> Result<Args> {
    let mut a = Args {
        tty: None,
        socket: PathBuf::from(DEFAULT_RUN_DIR).join(SOCKET_NAME),
        every: Duration::from_secs(3),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--tty" => a.tty = Some(value()?.into()),
            "--socket" => a.socket = value()?.into(),
            "--every" => {
                let v = value()?;
                let secs: u64 = v.parse().with_context(|| format!("--every {v:?}"))?;
                a.every = Duration::from_secs(secs.max(1));
            }
            other => bail!(
                "unknown argument {other:?}; usage: cellos-dashboard [--tty DEV] [--socket PATH] [--every SECS]"
            ),
        }
    }
    Ok(a)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn main() -> Result<()> {
    let args = args()?;
    if let Some(tty) = &args.tty {
        sys::attach_tty(tty).with_context(|| format!("cannot open {}", tty.display()))?;
        // Linux console: no screen blanking, the dashboard is meant to be looked at.
        let mut out = std::io::stdout();
        let _ = out.write_all(b"\x1b[9;0]").and_then(|()| out.flush());
    }
    terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
    let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout()))
        .context("cannot set up the terminal")?;
    term.clear().context("cannot clear the terminal")?;
    term.hide_cursor().context("cannot hide the cursor")?;
    let mut model = Model {
        snapshot: Err("starting".into()),
        nics: Vec::new(),
        now: now(),
        scroll: 0,
    };
    let on_console = args.tty.is_some();
    loop {
        model.snapshot = sys::fetch(&args.socket);
        model.nics = sys::nics();
        model.now = now();
        model.scroll_by(0);
        term.draw(|f| ui::draw(f, &model)).context("drawing")?;
        let deadline = Instant::now() + args.every;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if !event::poll(left).context("reading the keyboard")? {
                break;
            }
            if let Event::Key(k) = event::read().context("reading the keyboard")? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                match k.code {
                    KeyCode::Up => model.scroll_by(-1),
                    KeyCode::Down => model.scroll_by(1),
                    KeyCode::PageUp => model.scroll_by(-10),
                    KeyCode::PageDown => model.scroll_by(10),
                    KeyCode::Home => model.scroll = 0,
                    KeyCode::Char('q') if !on_console => {
                        terminal::disable_raw_mode().context("restoring the terminal")?;
                        term.show_cursor().context("restoring the cursor")?;
                        return Ok(());
                    }
                    _ => {}
                }
            }
            // A key or a resize: redraw what we have without asking cellosd again.
            term.autoresize().context("resizing")?;
            term.draw(|f| ui::draw(f, &model)).context("drawing")?;
        }
    }
}
