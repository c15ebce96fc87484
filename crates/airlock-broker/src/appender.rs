//! Group commit for audit records that come without a state change (gateway sessions and
//! statements, connector actions, credential issues).
//!
//! Callers hand their events to one task; it writes whatever has gathered, from every caller,
//! in one transaction — one disk sync for the lot — and then answers each caller. A caller's
//! events stay together and in order; callers are served in the order they came. With many
//! concurrent callers this turns one sync per call into one sync per batch (docs/benchmarks.md).
//! When a batch fails because the store cannot write, the writer rests for a back-off (100 ms
//! doubling to 10 s with each failed batch in a row, reset by a success): callers who come
//! meanwhile are answered at once with the same fault, without touching the disk, and the first
//! batch after the rest tries again. A failing disk is neither hammered nor left to hold callers.

use airlock_core::audit::AuditEvent;
use airlock_store::{Backoff, StorageFault, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::metrics::BACKGROUND_FAILURES;

/// Events written in one transaction, at most (a caller's events are never split).
const BATCH: usize = 8_192;
/// Calls waiting to be written, at most; further callers wait.
const QUEUE: usize = 4_096;

/// One caller's events and where to answer.
struct Call {
    events: Vec<AuditEvent>,
    done: oneshot::Sender<Result<(), AppendError>>,
}

/// Hands events to the writing task. The task ends when every clone is gone.
#[derive(Clone)]
pub(crate) struct Appender {
    calls: mpsc::Sender<Call>,
}

/// Why events were not appended; nothing of the batch they were in was written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("cannot append to the audit chain: the store cannot write: {0}; retry later")]
    Unavailable(StorageFault),
    #[error("cannot append to the audit chain: {0}")]
    Failed(String),
}

impl From<StoreError> for AppendError {
    fn from(error: StoreError) -> Self {
        match error.fault() {
            Some(fault) => AppendError::Unavailable(fault),
            None => AppendError::Failed(error.to_string()),
        }
    }
}

impl AppendError {
    /// The storage fault that stopped the append, when it was one.
    pub fn fault(&self) -> Option<StorageFault> {
        match self {
            AppendError::Unavailable(fault) => Some(*fault),
            AppendError::Failed(_) => None,
        }
    }
}

impl Appender {
    /// Starts the writing task (on the current Tokio runtime).
    pub(crate) fn start(store: Store) -> Self {
        let (calls, queue) = mpsc::channel(QUEUE);
        tokio::spawn(write(store, queue));
        Self { calls }
    }

    /// Appends `events` in order, returning once they are committed.
    pub(crate) async fn append(&self, events: Vec<AuditEvent>) -> Result<(), AppendError> {
        let (done, answer) = oneshot::channel();
        let stopped = || AppendError::Failed("the audit writer stopped".into());
        self.calls.send(Call { events, done }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn write(store: Store, mut queue: mpsc::Receiver<Call>) {
    let mut calls = Vec::new();
    let mut backoff = Backoff::default();
    // Until when the writer rests after a storage fault, and the fault.
    let mut resting: Option<(Instant, AppendError)> = None;
    while let Some(first) = queue.recv().await {
        let mut events = first.events.len();
        calls.push(first);
        while events < BATCH {
            match queue.try_recv() {
                Ok(call) => {
                    events += call.events.len();
                    calls.push(call);
                }
                Err(_) => break,
            }
        }
        let (batches, answers): (Vec<_>, Vec<_>) = calls.drain(..).map(|call| (call.events, call.done)).unzip();
        let outcome = match &resting {
            Some((until, fault)) if Instant::now() < *until => Err(fault.clone()),
            _ => {
                let outcome = commit(&store, batches).await.map_err(AppendError::from);
                match &outcome {
                    Ok(()) => {
                        backoff.succeeded();
                        resting = None;
                    }
                    Err(error) => {
                        metrics::counter!(BACKGROUND_FAILURES, "task" => "appender").increment(1);
                        if error.fault().is_some() {
                            let wait = backoff.failed();
                            tracing::warn!(%error, failures = backoff.failures(), rest = ?wait, "a group commit failed");
                            resting = Some((Instant::now() + wait, error.clone()));
                        } else {
                            tracing::error!(%error, "a group commit failed");
                        }
                    }
                }
                outcome
            }
        };
        for done in answers {
            let _ = done.send(outcome.clone());
        }
    }
}

async fn commit(store: &Store, batches: Vec<Vec<AuditEvent>>) -> Result<(), airlock_store::StoreError> {
    let mut tx = store.begin().await?;
    for events in batches {
        tx.append(events).await?;
    }
    tx.commit().await
}
