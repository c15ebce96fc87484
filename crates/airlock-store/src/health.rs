//! Whether the store can write: the faults of the disk and of the database's lock that stop it
//! for a while ([`StorageFault`]), read from SQLite's result codes; what the last write said
//! ([`Health`]); and a probe that writes to find out again.
//!
//! A fault is noted when a write fails with one (beginning a transaction, committing it, or a
//! write outside one), and cleared when a write that changed something commits, or a probe
//! does. While one is noted, [`Store::writable_now`] probes at most once per [`PROBE_EVERY`],
//! so readiness costs nothing while the store is well and one small write a second while not.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Store, StoreError};

/// A fault that stops the store from writing until it goes away, with nothing in Airlock to
/// change: the answer is "retry later".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// The disk is full (`SQLITE_FULL`).
    Full,
    /// The database refuses writes (`SQLITE_READONLY`: a read-only file system or file).
    ReadOnly,
    /// Another connection holds the database's write lock beyond the busy timeout
    /// (`SQLITE_BUSY`, `SQLITE_LOCKED`), or this process's writers queued as long.
    Busy,
    /// The disk failed to read or write (`SQLITE_IOERR`, `SQLITE_CANTOPEN`).
    Io,
}

impl std::fmt::Display for StorageFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageFault::Full => "disk full",
            StorageFault::ReadOnly => "the database is read-only",
            StorageFault::Busy => "the database is locked",
            StorageFault::Io => "input/output error",
        })
    }
}

impl StorageFault {
    /// The fault behind `error`, when it is one.
    pub(crate) fn of(error: &sqlx::Error) -> Option<Self> {
        match error {
            sqlx::Error::Database(error) => {
                // SQLite's extended result code: the primary code is its low byte.
                let code: i32 = error.code()?.parse().ok()?;
                match code & 0xff {
                    13 => Some(StorageFault::Full),
                    8 => Some(StorageFault::ReadOnly),
                    5 | 6 => Some(StorageFault::Busy),
                    10 | 14 => Some(StorageFault::Io),
                    _ => None,
                }
            }
            sqlx::Error::Io(_) => Some(StorageFault::Io),
            sqlx::Error::PoolTimedOut => Some(StorageFault::Busy),
            _ => None,
        }
    }
}

/// How often, at most, an unwritable store is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe may wait for its turn and its write.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the store's writes said last, shared by every handle on one store.
#[derive(Debug, Default)]
pub(crate) struct Health(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    /// The fault the last write failed with; `None` when it succeeded.
    fault: Option<StorageFault>,
    /// When the last probe began.
    probed: Option<Instant>,
}

impl Health {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn fault(&self) -> Option<StorageFault> {
        self.state().fault
    }

    /// Notes what a write said: a storage fault, or (with `Ok(true)`: it changed something) that
    /// the store writes again. Other outcomes say nothing about the disk.
    pub(crate) fn note<T>(&self, outcome: &Result<T, StoreError>, wrote: impl FnOnce(&T) -> bool) {
        match outcome {
            Err(StoreError::Unavailable { fault, .. }) => {
                let mut state = self.state();
                if state.fault.is_none() {
                    tracing::warn!(%fault, "the store cannot write");
                }
                state.fault = Some(*fault);
            }
            Ok(value) if wrote(value) => {
                let mut state = self.state();
                if let Some(fault) = state.fault.take() {
                    tracing::info!(%fault, "the store writes again");
                }
            }
            _ => {}
        }
    }

    /// Whether a probe is due now (and, if so, that it is under way).
    fn probe_due(&self) -> bool {
        let mut state = self.state();
        let due = state.probed.is_none_or(|at| at.elapsed() >= PROBE_EVERY);
        if due {
            state.probed = Some(Instant::now());
        }
        due
    }
}

impl Store {
    /// The fault the last write failed with, if it has not succeeded since.
    pub fn fault(&self) -> Option<StorageFault> {
        self.health.fault()
    }

    /// Whether the last write succeeded (or none failed yet).
    pub fn writable(&self) -> bool {
        self.fault().is_none()
    }

    /// Whether the store can write now: at once when the last write succeeded; otherwise by a
    /// probe, at most once per [`PROBE_EVERY`] (between probes, the last fault stands).
    pub async fn writable_now(&self) -> Result<(), StorageFault> {
        match self.fault() {
            None => Ok(()),
            Some(_) if self.health.probe_due() => {
                self.probe().await;
                self.fault().map_or(Ok(()), Err)
            }
            Some(fault) => Err(fault),
        }
    }

    /// Writes the smallest change that goes to disk and commits it: rewrites the database
    /// header's `user_version` with its own value (Airlock keeps nothing there; migrations are
    /// in `_sqlx_migrations`). Returns whether it committed, and notes the outcome.
    pub async fn probe(&self) -> bool {
        let write = async {
            let mut tx = self.begin().await?;
            let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut *tx.inner).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {version}")))
                .execute(&mut *tx.inner)
                .await?;
            tx.wrote = true;
            tx.commit().await
        };
        match tokio::time::timeout(PROBE_TIMEOUT, write).await {
            Ok(outcome) => outcome.is_ok(),
            Err(_) => {
                let timed_out = Err(StoreError::Unavailable { fault: StorageFault::Busy, source: None });
                self.health.note::<()>(&timed_out, |_| false);
                false
            }
        }
    }
}
