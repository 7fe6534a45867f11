//! Console output. PID 1's stdout is `/dev/console`; a failed write must never panic (as
//! `println!` would), so every line goes through [`line`], which ignores write errors.

use std::io::Write;

/// Write one line to stdout, whole, ignoring errors.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{text}\n").as_bytes());
    let _ = out.flush();
}

/// `cellos-init: <msg>`.
pub fn say(msg: &str) {
    line(&format!("cellos-init: {msg}"));
}
