//! Group commit for audit records that come without a state change (gateway sessions and
//! statements, connector actions, credential issues).
//!
//! Callers hand their events to one task; it writes whatever has gathered, from every caller,
//! in one transaction — one disk sync for the lot — and then answers each caller. A caller's
//! events stay together and in order; callers are served in the order they came. With many
//! concurrent callers this turns one sync per call into one sync per batch (docs/benchmarks.md).

use airlock_core::audit::AuditEvent;
use airlock_store::Store;
use tokio::sync::{mpsc, oneshot};

/// Events written in one transaction, at most (a caller's events are never split).
const BATCH: usize = 8_192;
/// Calls waiting to be written, at most; further callers wait.
const QUEUE: usize = 4_096;

/// One caller's events and where to answer.
struct Call {
    events: Vec<AuditEvent>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Hands events to the writing task. The task ends when every clone is gone.
#[derive(Clone)]
pub(crate) struct Appender {
    calls: mpsc::Sender<Call>,
}

/// Why events were not appended; nothing of the batch they were in was written.
#[derive(Debug, thiserror::Error)]
#[error("cannot append to the audit chain: {0}")]
pub struct AppendError(String);

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
        let stopped = || AppendError("the audit writer stopped".into());
        self.calls.send(Call { events, done }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(AppendError)
    }
}

async fn write(store: Store, mut queue: mpsc::Receiver<Call>) {
    let mut calls = Vec::new();
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
        let outcome = commit(&store, batches).await.map_err(|e| e.to_string());
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
