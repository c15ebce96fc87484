//! Signed checkpoints of the audit chain, and their copies kept elsewhere.
//!
//! [`run`] signs the broker chain's head with the broker's key whenever it has moved, at most
//! [`CheckpointSettings::every`] after the last checkpoint and as soon as
//! [`CheckpointSettings::every_records`] records were appended since, and once more at shutdown.
//! Each checkpoint is stored (append-only) and handed to every sink: a file on another volume
//! (one JSON line per checkpoint, synced to disk) or a webhook (the same JSON line, POSTed).
//! Each sink runs apart and only ever sends the newest checkpoint, retrying with backoff: a slow
//! or broken sink never holds up checkpoints or the broker, and since a checkpoint vouches for
//! every record before it, skipping older ones loses nothing. A checkpoint that cannot be made
//! (the store cannot write) is tried again after a back-off too: 100 ms doubling to 10 s.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_core::audit::checkpoint::Checkpoint;
use airlock_core::audit::export::Line;
use airlock_core::audit::unix_ms;
use airlock_store::{BROKER_CHAIN, Backoff};
use tokio::sync::watch;

use crate::broker::{Broker, BrokerError};
use crate::config::AuditSection;
use crate::metrics::BACKGROUND_FAILURES;
use crate::outbound;

/// When to checkpoint, and where copies go.
#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    pub every: Duration,
    pub every_records: i64,
    pub sinks: Vec<Sink>,
}

impl From<&AuditSection> for CheckpointSettings {
    fn from(section: &AuditSection) -> Self {
        let files = section.checkpoint_file.iter().cloned().map(Sink::File);
        let webhooks = section.checkpoint_webhook.iter().cloned().map(Sink::Webhook);
        Self {
            every: Duration::from_secs(section.checkpoint_every.as_secs()),
            every_records: i64::from(section.checkpoint_every_records),
            sinks: files.chain(webhooks).collect(),
        }
    }
}

/// A place outside the database that keeps a copy of every checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Appends each checkpoint as one JSON line (the export format), synced to disk.
    File(PathBuf),
    /// POSTs each checkpoint as one JSON document (the export format's line).
    Webhook(String),
}

/// Why a sink did not take a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("checkpoint file `{path}`: {source}")]
    File { path: String, source: std::io::Error },
    #[error("checkpoint webhook: {0}")]
    Webhook(String),
}

impl Broker {
    /// Signs and stores a checkpoint of the broker chain's head, unless the newest checkpoint
    /// already covers it. Returns the new checkpoint.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, BrokerError> {
        let head = self.store().audit_head(BROKER_CHAIN).await?;
        let latest = self.store().latest_checkpoint(BROKER_CHAIN).await?;
        if head.seq == 0 || latest.is_some_and(|c| c.seq >= head.seq) {
            return Ok(None);
        }
        let at_ms = unix_ms(self.clock().now());
        let checkpoint = Checkpoint::sign(&self.key().keypair(), BROKER_CHAIN, head.seq, &head.hash, at_ms)?;
        self.store().insert_checkpoint(&checkpoint).await?;
        Ok(Some(checkpoint))
    }
}

/// Checkpoints until `stop` turns true, then once more.
pub async fn run(broker: Broker, settings: CheckpointSettings, mut stop: watch::Receiver<bool>) {
    let (newest, _) = watch::channel::<Option<Checkpoint>>(None);
    let deliveries: Vec<_> =
        settings.sinks.iter().cloned().map(|sink| tokio::spawn(deliver(sink, newest.subscribe()))).collect();
    let mut appended = broker.store().watch_audit_head();
    let mut covered = match broker.store().latest_checkpoint(BROKER_CHAIN).await {
        Ok(latest) => latest.map_or(0, |c| c.seq),
        Err(error) => {
            tracing::error!(%error, "cannot read the latest audit checkpoint");
            0
        }
    };
    let mut backoff = Backoff::default();
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(settings.every) => false,
            _ = appended.wait_for(|head| head - covered >= settings.every_records) => false,
            _ = stop.wait_for(|stop| *stop) => true,
        };
        match broker.checkpoint().await {
            Ok(Some(checkpoint)) => {
                backoff.succeeded();
                covered = checkpoint.seq;
                newest.send_replace(Some(checkpoint));
            }
            // The head is already signed: nothing is owed up to it.
            Ok(None) => {
                backoff.succeeded();
                covered = covered.max(*appended.borrow());
            }
            Err(error) => {
                metrics::counter!(BACKGROUND_FAILURES, "task" => "checkpointer").increment(1);
                let wait = backoff.failed();
                tracing::error!(%error, failures = backoff.failures(), retry_in = ?wait, "cannot checkpoint the audit chain");
                if !stopping {
                    // Do not spin on a failing store; the head stays owed until a later pass.
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|stop| *stop) => {}
                    }
                }
            }
        }
        if stopping {
            break;
        }
    }
    // Let each sink try once more to take the last checkpoint, for a bounded time.
    drop(newest);
    for delivery in deliveries {
        let _ = tokio::time::timeout(Duration::from_secs(5), delivery).await;
    }
}

/// Hands the newest checkpoint to `sink` each time there is one, until the sender is gone.
async fn deliver(sink: Sink, mut newest: watch::Receiver<Option<Checkpoint>>) {
    let client = match outbound::client(Duration::from_secs(10)) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the HTTP client for audit checkpoint sinks");
            return;
        }
    };
    let (mut delivered, mut backoff, mut closed) = (0, Backoff::new(FIRST_RETRY, LAST_RETRY), false);
    loop {
        let checkpoint = newest.borrow_and_update().clone();
        if let Some(checkpoint) = checkpoint.filter(|c| c.seq > delivered) {
            match hand_over(&sink, &client, &checkpoint).await {
                Ok(()) => {
                    delivered = checkpoint.seq;
                    backoff.succeeded();
                }
                Err(error) if closed => {
                    tracing::warn!(%error, seq = checkpoint.seq, "the last audit checkpoint did not reach its sink");
                }
                Err(error) => {
                    metrics::counter!(BACKGROUND_FAILURES, "task" => "checkpoint_sink").increment(1);
                    tracing::warn!(%error, seq = checkpoint.seq, "an audit checkpoint sink failed; retrying");
                    backoff.wait().await;
                    continue;
                }
            }
        }
        if closed {
            return;
        }
        // Once the checkpointer has stopped, go round once more for what it left.
        closed = newest.changed().await.is_err();
    }
}

const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(30);

async fn hand_over(sink: &Sink, client: &reqwest::Client, checkpoint: &Checkpoint) -> Result<(), SinkError> {
    match sink {
        Sink::File(path) => {
            let (owned, line) = (path.clone(), line(checkpoint));
            match tokio::task::spawn_blocking(move || append_line(&owned, &line)).await {
                Ok(outcome) => outcome,
                Err(e) => Err(SinkError::File { path: path.display().to_string(), source: std::io::Error::other(e) }),
            }
        }
        Sink::Webhook(url) => post(client, url, checkpoint).await,
    }
}

fn line(checkpoint: &Checkpoint) -> String {
    Line::Checkpoint(checkpoint.clone()).to_json()
}

fn append_line(path: &Path, line: &str) -> Result<(), SinkError> {
    let io = |source| SinkError::File { path: path.display().to_string(), source };
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
    file.write_all(format!("{line}\n").as_bytes()).map_err(io)?;
    file.sync_data().map_err(io)
}

async fn post(client: &reqwest::Client, url: &str, checkpoint: &Checkpoint) -> Result<(), SinkError> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(line(checkpoint))
        .send()
        .await
        .map_err(|e| SinkError::Webhook(e.without_url().to_string()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(SinkError::Webhook(format!("the receiver answered {}", response.status())))
    }
}
