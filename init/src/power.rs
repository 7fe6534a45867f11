//! Shutdown requests: which signal means what, and the ACPI power button.
//!
//! Mapping (documented for operators and QEMU tests):
//! - SIGTERM, SIGUSR2 and the power button (KEY_POWER down on any `/dev/input/event*`):
//!   power off.
//! - SIGINT (the kernel sends it on ctrl-alt-del once init disabled the hard reboot) and
//!   SIGUSR1: reboot.
//!
//! The button arrives through evdev (modules `button` and `evdev`, which init always tries to
//! load). A watcher thread per event device turns a press into SIGTERM to ourselves, so every
//! request goes through the one signal path in the main loop.

use std::io::Read;
use std::path::Path;

/// What to do once services are stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `reboot(RB_POWER_OFF)`.
    PowerOff,
    /// `reboot(RB_AUTOBOOT)`.
    Reboot,
}

/// The action a signal asks for; `None` for signals that are not shutdown requests.
pub fn action_for_signal(sig: libc::c_int) -> Option<Action> {
    match sig {
        libc::SIGTERM | libc::SIGUSR2 => Some(Action::PowerOff),
        libc::SIGINT | libc::SIGUSR1 => Some(Action::Reboot),
        _ => None,
    }
}

/// `struct input_event` on 64-bit Linux: a 16-byte timeval, then type, code, value.
const EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
/// `KEY_POWER` from linux/input-event-codes.h.
pub const KEY_POWER: u16 = 116;

/// Does this buffer of whole input events hold a KEY_POWER key-down?
pub fn power_pressed(buf: &[u8]) -> bool {
    buf.chunks_exact(EVENT_SIZE).any(|ev| {
        let kind = u16::from_ne_bytes([ev[16], ev[17]]);
        let code = u16::from_ne_bytes([ev[18], ev[19]]);
        let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
        kind == EV_KEY && code == KEY_POWER && value == 1
    })
}

/// Watch every `event*` device under `dir` (normally `/dev/input`) and call `on_press` when
/// the power key goes down. Returns how many devices are watched.
pub fn watch_power_button(dir: &Path, on_press: fn()) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut watched = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("event") {
            continue;
        }
        let Ok(mut file) = std::fs::File::open(entry.path()) else {
            continue;
        };
        let spawned = std::thread::Builder::new()
            .name("power-button".into())
            .spawn(move || {
                let mut buf = [0u8; EVENT_SIZE * 16];
                // evdev returns whole events per read.
                while let Ok(n) = file.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    if power_pressed(buf.get(..n).unwrap_or_default()) {
                        on_press();
                    }
                }
            });
        if spawned.is_ok() {
            watched += 1;
        }
    }
    watched
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e.extend_from_slice(&kind.to_ne_bytes());
        e.extend_from_slice(&code.to_ne_bytes());
        e.extend_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn signal_mapping() {
        assert_eq!(action_for_signal(libc::SIGTERM), Some(Action::PowerOff));
        assert_eq!(action_for_signal(libc::SIGUSR2), Some(Action::PowerOff));
        assert_eq!(action_for_signal(libc::SIGINT), Some(Action::Reboot));
        assert_eq!(action_for_signal(libc::SIGUSR1), Some(Action::Reboot));
        assert_eq!(action_for_signal(libc::SIGCHLD), None);
    }

    #[test]
    fn detects_power_key_down_only() {
        let mut buf = event(EV_KEY, KEY_POWER, 1);
        buf.extend(event(0, 0, 0)); // SYN_REPORT
        assert!(power_pressed(&buf));
        assert!(!power_pressed(&event(EV_KEY, KEY_POWER, 0))); // release
        assert!(!power_pressed(&event(EV_KEY, 30, 1))); // KEY_A
        assert!(!power_pressed(&event(EV_KEY, KEY_POWER, 1)[..20])); // partial
    }
}
