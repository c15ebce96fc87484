//! The expiry scheduler: sleeps until the next deadline (a pending request's expiry, a grant's
//! end, or a break-glass review coming due) and ends or escalates whatever is due. Its first
//! pass, at start, ends everything that fell due while the broker was down. Each pass also
//! ends logins that lapsed (idle or past their end), at most [`IDLE_RECHECK`] late.
//!
//! A pass that fails (the store cannot write, say) is tried again after a back-off: 100 ms,
//! doubling with each failed pass in a row up to 10 s, and back to the usual pace after a pass
//! that works. Without it, a deadline already past and a sweep that cannot commit made the loop
//! spin (hundreds of failed passes a second).

use airlock_store::Backoff;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::metrics::BACKGROUND_FAILURES;

/// The longest the scheduler sleeps without looking again: changes made by another process
/// (`airlock admin` on the same data directory) are picked up at least this often.
const IDLE_RECHECK: time::Duration = time::Duration::seconds(5);

/// Runs until `shutdown` turns true.
pub async fn run(broker: Broker, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::default();
    loop {
        let mut failed = false;
        match broker.sweep().await {
            Ok(swept) if swept.requests_expired + swept.grants_expired + swept.reviews_escalated > 0 => {
                tracing::info!(
                    swept.requests_expired,
                    swept.grants_expired,
                    swept.reviews_escalated,
                    "ended and escalated what was due"
                );
            }
            Ok(_) => {}
            Err(error) => {
                failed = true;
                tracing::error!(%error, "expiry sweep failed");
            }
        }
        match broker.end_lapsed_logins().await {
            Ok(0) => {}
            Ok(ended) => tracing::info!(ended, "ended idle and expired logins"),
            Err(error) => {
                failed = true;
                tracing::error!(%error, "ending lapsed logins failed");
            }
        }
        let now = broker.clock().now();
        let next = match broker.store().next_deadline().await {
            Ok(Some(deadline)) => deadline.min(now + IDLE_RECHECK),
            Ok(None) => now + IDLE_RECHECK,
            Err(error) => {
                failed = true;
                tracing::error!(%error, "cannot read the next deadline");
                now + IDLE_RECHECK
            }
        };
        if failed {
            metrics::counter!(BACKGROUND_FAILURES, "task" => "scheduler").increment(1);
            let wait = backoff.failed();
            tracing::warn!(failures = backoff.failures(), retry_in = ?wait, "the scheduler backs off");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            continue;
        }
        backoff.succeeded();
        tokio::select! {
            _ = broker.clock().sleep_until(next) => {}
            _ = broker.deadlines().notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
