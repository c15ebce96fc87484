//! Gets the gateway's events (sessions, statements) into the audit chain in order and without
//! loss: sessions hand events to one bounded queue; one task appends what has gathered in a
//! single transaction (group commit), and retries a failed append until it lands. A full queue
//! makes sessions wait (back-pressure) rather than drop a record.
//!
//! Two ways in: [`Recorder::record`] returns once the event is queued, and its batch waits up to
//! [`GATHER_FOR`] for others to join it; [`Recorder::record_durably`] returns once the events are
//! committed, and a batch holding such events is written at once, with whatever queued while the
//! previous one was being written (so many sessions' statements share one commit).

use std::time::Duration;

use airlock_core::audit::AuditEvent;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::authority::Authority;

/// Events waiting to be written, at most.
const QUEUE: usize = 16_384;
/// Events written in one transaction, at most.
const BATCH: usize = 4_096;
/// How long the first event of a batch waits for others to join it.
const GATHER_FOR: Duration = Duration::from_millis(10);
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Hands events to the writer task. Cheap to clone; the task ends when every clone is gone and
/// the queue is written.
#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Queued>,
}

/// An event waiting to be written, and who waits for its commit, if anyone.
struct Queued {
    event: AuditEvent,
    committed: Option<oneshot::Sender<()>>,
}

impl Recorder {
    /// Starts the writer task.
    pub fn start(authority: impl Authority) -> (Recorder, JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        (Recorder { queue }, tokio::spawn(write(authority, receiver)))
    }

    /// Queues `event`, waiting while the queue is full.
    pub async fn record(&self, event: AuditEvent) {
        // The writer only stops once every sender is gone, so this cannot fail while `self` lives.
        let _ = self.queue.send(Queued { event, committed: None }).await;
    }

    /// Queues `events` and returns once they are committed to the audit chain. The writer retries
    /// a failed append until it lands, so this waits as long as the store cannot write.
    pub async fn record_durably(&self, events: Vec<AuditEvent>) {
        let (committed, done) = oneshot::channel();
        let mut committed = Some(committed);
        let count = events.len();
        for (index, event) in events.into_iter().enumerate() {
            // Batches commit in order: the last event's commit is every earlier one's too.
            let notice = if index + 1 == count { committed.take() } else { None };
            // The writer only stops once every sender is gone: this cannot fail while `self` lives.
            let _ = self.queue.send(Queued { event, committed: notice }).await;
        }
        if count > 0 {
            let _ = done.await;
        }
    }
}

async fn write(authority: impl Authority, mut receiver: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        // Unless somebody waits for this batch, gather a moment longer: one commit of many
        // statements costs the store far less than many commits of a few, each of which rewrites
        // the same last pages of the chain's table and indexes and syncs the disk.
        let until = Instant::now() + GATHER_FOR;
        while batch.len() < BATCH && !batch.iter().any(|queued| queued.committed.is_some()) {
            let room = BATCH - batch.len();
            match tokio::time::timeout_at(until, receiver.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let (events, waiting): (Vec<AuditEvent>, Vec<Option<oneshot::Sender<()>>>) =
            batch.drain(..).map(|queued| (queued.event, queued.committed)).unzip();
        let mut wait = RETRY_FIRST;
        while let Err(error) = authority.record(&events).await {
            tracing::warn!(%error, events = events.len(), "cannot record gateway events yet; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
        }
        for committed in waiting.into_iter().flatten() {
            let _ = committed.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use airlock_core::audit::EventKind;
    use time::OffsetDateTime;

    use super::*;
    use crate::authority::AuthorityError;
    use crate::authority::doubles::{self, NoGrants};

    /// Keeps how many events each append carried; refuses the first append, as a store that is
    /// briefly unavailable would.
    #[derive(Clone, Default)]
    struct Appends(Arc<Mutex<(bool, Vec<usize>)>>);

    impl doubles::Appends for Appends {
        async fn append(&self, events: &[AuditEvent]) -> Result<(), AuthorityError> {
            let mut appends = self.0.lock().unwrap();
            if !appends.0 {
                appends.0 = true;
                return Err(AuthorityError("not yet".into()));
            }
            appends.1.push(events.len());
            Ok(())
        }
    }

    fn event() -> AuditEvent {
        let at = OffsetDateTime::UNIX_EPOCH;
        AuditEvent { kind: EventKind::StatementExecuted, actor: "dana".into(), at, details: serde_json::json!({}) }
    }

    #[tokio::test(start_paused = true)]
    async fn events_within_the_gathering_time_are_appended_together_and_a_failed_append_is_retried() {
        let appends = Appends::default();
        let (recorder, writer) = Recorder::start(NoGrants(appends.clone()));
        recorder.record(event()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        recorder.record(event()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        recorder.record(event()).await;
        drop(recorder);
        writer.await.unwrap();
        assert_eq!(appends.0.lock().unwrap().1, [2, 1]);
    }
}
