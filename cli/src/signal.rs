//! Stopping on Ctrl-C or SIGTERM: a ledger finishes the requests in flight and a VM
//! is powered off, instead of the process dying mid-way.

use anyhow::Result;

/// Runs blocking work `f` on its own thread; Ctrl-C or SIGTERM sets the flag it
/// gets, so it can stop cleanly (power a VM off) instead of dying mid-way.
pub async fn run_with_ctrl_c<F>(f: F) -> Result<()>
where
    F: FnOnce(&std::sync::atomic::AtomicBool) -> Result<()> + Send + 'static,
{
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let mut work = tokio::task::spawn_blocking(move || f(&flag));
    tokio::select! {
        r = &mut work => return r?,
        _ = shutdown_signal() => stop.store(true, std::sync::atomic::Ordering::Relaxed),
    }
    work.await?
}

/// Returns on the first Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
