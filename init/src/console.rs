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

/// An error and its causes on one line, `what failed: why: ...`: error types keep their
/// cause as `source()` only, so printing just `to_string()` would lose it.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /x")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_names_every_cause_once() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(chain(&e), "cannot read /x: disk on fire");
    }
}
