//! A test hook, compiled only with the `failpoints` feature (which nothing but
//! this crate's own tests turns on, through its dev-dependency on itself): it
//! stops a compaction pass at a named step, so a crash test can SIGKILL `shardd`
//! knowing exactly where the pass stands instead of hoping a random kill lands
//! in one.
//!
//! `shardd` arms it once at start from `CELLOS_SHARDD_FAILPOINT=compaction:<step>`
//! ([`arm_from_env`]). The first pass to reach that step prints
//! `shardd: failpoint compaction:<step> reached` on stdout and its thread stops
//! for good; the rest of the server (writers included) goes on until the test
//! kills it (SIGKILL: a stopped pass also keeps a SIGTERM shutdown from
//! finishing). A build without the feature has no such code, so the variable
//! means nothing to a production `shardd`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

pub use crate::namespace::COMPACTION_STEPS;

/// The variable `shardd` reads.
pub const ENV: &str = "CELLOS_SHARDD_FAILPOINT";

static ARMED: OnceLock<&'static str> = OnceLock::new();
static FIRED: AtomicBool = AtomicBool::new(false);

/// `CELLOS_SHARDD_FAILPOINT` names no step.
#[derive(Debug, thiserror::Error)]
#[error("{ENV}={0:?}: expected compaction:<step>, a step among {COMPACTION_STEPS:?}")]
pub struct BadFailpoint(String);

/// Reads `CELLOS_SHARDD_FAILPOINT` and arms the step it names; the step, if any.
pub fn arm_from_env() -> Result<Option<&'static str>, BadFailpoint> {
    let Some(v) = std::env::var_os(ENV) else {
        return Ok(None);
    };
    let v = v.to_string_lossy();
    let step = v
        .strip_prefix("compaction:")
        .and_then(|s| COMPACTION_STEPS.into_iter().find(|p| *p == s))
        .ok_or_else(|| BadFailpoint(v.to_string()))?;
    let _ = ARMED.set(step);
    Ok(Some(step))
}

/// A pass reached `step`: at the armed step, the first thread here says so and
/// stops for good (the test kills the process).
pub(crate) fn reached(step: &str) {
    if ARMED.get() != Some(&step) || FIRED.swap(true, Ordering::SeqCst) {
        return;
    }
    let mut out = std::io::stdout().lock();
    // Nobody to tell if stdout is gone: the test then times out on its wait.
    let _ = writeln!(out, "shardd: failpoint compaction:{step} reached");
    let _ = out.flush();
    drop(out);
    loop {
        std::thread::park();
    }
}
