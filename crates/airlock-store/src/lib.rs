//! Airlock's persistence: one [`Store`] over an embedded SQLite database in the data directory.
//!
//! Every use case runs in one [`Tx`], begun with `BEGIN IMMEDIATE` so that read-then-write
//! transactions are serialised, also across processes (`airlock admin` works on the same file
//! as a running broker). A [`Tx`] is the only way to append audit records, so a state change
//! and its audit record commit together or not at all.
//!
//! SQLite would checkpoint its write-ahead log inside whichever commit crosses 1,000 pages,
//! adding milliseconds to that one request; a background task checkpoints instead, every
//! [`CHECKPOINT_EVERY`], without blocking writers (and backing off while it fails). Connections
//! are not pinged before use: the database is a local file, and the ping is a round trip to
//! SQLite's thread on every query.
//!
//! Faults heal without a restart: a transaction that does not commit leaves its connection
//! clean or closed (`tx`); a full disk, a read-only database, a lock held elsewhere or an I/O
//! error is [`StoreError::Unavailable`], remembered until a write succeeds again (`health`);
//! background loops retry with a [`Backoff`].

mod audit;
pub mod backoff;
mod breakglass;
mod device;
mod health;
mod identity;
mod incident;
mod report;
mod rows;
mod sessions;
mod tx;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::audit::AuditEvent;
use airlock_core::audit::redaction::RedactionRules;
use airlock_core::ids::UserName;
use airlock_core::lifecycle::{AccessRequest, Grant};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use time::OffsetDateTime;
use tokio::sync::{Mutex, watch};

pub use backoff::Backoff;
pub use breakglass::OpenReviews;
pub use device::Device;
use health::Health;
pub use health::{PROBE_EVERY, StorageFault};
pub use identity::{NewToken, RefreshLookup, Renewal, StoredMfa, Token, TokenKind};
pub use report::{ReportScope, StatementCount};
pub use rows::User;
pub use tx::Tx;

/// The one audit chain a broker writes.
pub const BROKER_CHAIN: &str = "broker";

/// How long a write waits for the database's write lock (SQLite's busy timeout), and for its
/// turn among this process's writers, before it fails as [`StorageFault::Busy`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory `{path}`: {source}")]
    DataDir { path: String, source: std::io::Error },
    /// A fault of the disk or of the database's lock: nothing was changed, and the same
    /// operation works again once the fault is gone.
    #[error("the store cannot write: {fault}; retry later")]
    Unavailable {
        fault: StorageFault,
        #[source]
        source: Option<sqlx::Error>,
    },
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored record `{id}` cannot be read: {message}")]
    Corrupt { id: String, message: String },
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match StorageFault::of(&error) {
            Some(fault) => StoreError::Unavailable { fault, source: Some(error) },
            None => StoreError::Database(error),
        }
    }
}

impl StoreError {
    /// The storage fault behind this error, when it is one.
    pub fn fault(&self) -> Option<StorageFault> {
        match self {
            StoreError::Unavailable { fault, .. } => Some(*fault),
            _ => None,
        }
    }
}

/// Which requests to list.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub pending_only: bool,
    pub requester: Option<UserName>,
    pub limit: u32,
}

/// Which grants to list.
#[derive(Debug, Clone, Default)]
pub struct GrantFilter {
    pub active_only: bool,
    pub holder: Option<UserName>,
    pub limit: u32,
}

/// Told of each commit that appended audit records: those records' events (as chained, so
/// redacted) and how long the commit took.
pub trait ObserveCommits: Send + Sync + std::fmt::Debug {
    fn committed(&self, events: &[AuditEvent], took: Duration);
}

pub type CommitObserver = Arc<dyn ObserveCommits>;

/// Where records' times come from: the system's clock unless told otherwise
/// ([`Store::set_clock`]).
#[derive(Clone)]
pub(crate) struct StoreClock(pub(crate) Arc<dyn Fn() -> OffsetDateTime + Send + Sync>);

impl std::fmt::Debug for StoreClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreClock")
    }
}

/// The database of one broker.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    /// Writers of this process queue here rather than in SQLite's busy handler, which backs off
    /// by sleeping (milliseconds each) and so turns contention into latency.
    writer: Arc<Mutex<()>>,
    /// The broker chain's head after this process's last commit that appended to it.
    committed_head: Arc<watch::Sender<i64>>,
    /// What is redacted from audit details before they are chained.
    redaction: Arc<RedactionRules>,
    observers: Arc<[CommitObserver]>,
    /// The time a record is appended at.
    clock: StoreClock,
    /// Whether the last write failed for a storage fault.
    health: Arc<Health>,
    _checkpointer: Arc<Checkpointer>,
}

/// How often the write-ahead log is copied back into the database.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The background checkpoint task, stopped when the last handle on the store is dropped.
#[derive(Debug)]
struct Checkpointer(tokio::task::JoinHandle<()>);

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checkpoints every [`CHECKPOINT_EVERY`]; while that fails (a full disk cannot take the pages
/// back), waits longer after each failure, up to the back-off's cap.
async fn checkpoint_forever(pool: SqlitePool) {
    let mut backoff = Backoff::default();
    let mut wait = CHECKPOINT_EVERY;
    loop {
        tokio::time::sleep(wait).await;
        // PASSIVE never waits for readers or writers; what it cannot copy now, a later tick will.
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            Ok(_) => {
                if backoff.failures() > 0 {
                    tracing::info!(failures = backoff.failures(), "write-ahead log checkpoints work again");
                }
                backoff.succeeded();
                wait = CHECKPOINT_EVERY;
            }
            Err(error) => {
                wait = CHECKPOINT_EVERY.max(backoff.failed());
                tracing::warn!(%error, failures = backoff.failures(), retry_in = ?wait, "write-ahead log checkpoint failed");
            }
        }
    }
}

impl Store {
    /// Opens (creating when missing) the store in `data_dir` and brings its schema up to date.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StoreError::DataDir { path: data_dir.display().to_string(), source })?;
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(data_dir.join("airlock.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("wal_autocheckpoint", "0");
        let pool = SqlitePoolOptions::new().max_connections(8).test_before_acquire(false).connect_with(options).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let checkpointer = Arc::new(Checkpointer(tokio::spawn(checkpoint_forever(pool.clone()))));
        let store = Self {
            pool,
            writer: Arc::new(Mutex::new(())),
            committed_head: Arc::new(watch::Sender::new(0)),
            redaction: Arc::new(RedactionRules::new(&[], &[]).expect("no rules are valid rules")),
            observers: Arc::new([]),
            clock: StoreClock(Arc::new(|| {
                let now = OffsetDateTime::now_utc();
                now.replace_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
                    .expect("a truncated nanosecond is in range")
            })),
            health: Arc::default(),
            _checkpointer: checkpointer,
        };
        store.committed_head.send_replace(store.audit_head(BROKER_CHAIN).await?.seq);
        Ok(store)
    }

    /// Redacts what `rules` name from every audit record appended from now on.
    pub fn set_redaction(&mut self, rules: RedactionRules) {
        self.redaction = Arc::new(rules);
    }

    /// Has `observer` told (after those already observing) of every commit that appends audit
    /// records, from this handle and the handles cloned from it from now on.
    pub fn observe_commits(&mut self, observer: CommitObserver) {
        self.observers = self.observers.iter().cloned().chain([observer]).collect();
    }

    /// Appends records at the time `now` says (the broker's clock), from this handle and the
    /// handles cloned from it from now on, rather than the system's.
    pub fn set_clock(&mut self, now: Arc<dyn Fn() -> OffsetDateTime + Send + Sync>) {
        self.clock = StoreClock(now);
    }

    /// Begins a use case's transaction, taking the write lock at once. Waits at most
    /// [`BUSY_TIMEOUT`] for this process's other writers and as long again for other processes';
    /// then fails as [`StorageFault::Busy`].
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let begun = self.begin_inner().await;
        self.health.note(&begun, |_| false);
        begun
    }

    async fn begin_inner(&self) -> Result<Tx, StoreError> {
        let turn = tokio::time::timeout(BUSY_TIMEOUT, self.writer.clone().lock_owned())
            .await
            .map_err(|_| StoreError::Unavailable { fault: StorageFault::Busy, source: None })?;
        let connection = tx::begin_on(self.pool.acquire().await?).await?;
        Ok(Tx::new(
            connection,
            turn,
            self.committed_head.clone(),
            self.redaction.clone(),
            self.observers.clone(),
            self.clock.clone(),
            self.health.clone(),
        ))
    }

    pub async fn request(&self, id: &str) -> Result<Option<AccessRequest>, StoreError> {
        let row = sqlx::query("SELECT id, body FROM requests WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.map(|r| rows::body(&r)).transpose()
    }

    pub async fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        let row = sqlx::query("SELECT id, body FROM grants WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.map(|r| rows::body(&r)).transpose()
    }

    /// The grant an approved request made, if any.
    pub async fn grant_of_request(&self, request_id: &str) -> Result<Option<Grant>, StoreError> {
        let row = sqlx::query("SELECT id, body FROM grants WHERE request_id = ?")
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| rows::body(&r)).transpose()
    }

    /// Requests, newest first; with `after`, those that come after it in that order.
    pub async fn requests(
        &self,
        filter: &RequestFilter,
        after: Option<&AccessRequest>,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, body FROM requests
             WHERE (?1 = 0 OR state = 'pending') AND (?2 IS NULL OR requester = ?2)
               AND (?4 IS NULL OR (created_ms, id) < (?4, ?5))
             ORDER BY created_ms DESC, id DESC LIMIT ?3",
        )
        .bind(filter.pending_only)
        .bind(filter.requester.as_ref().map(|u| u.as_str()))
        .bind(filter.limit)
        .bind(after.map(|r| rows::ms(r.created_at)))
        .bind(after.map(|r| r.id.to_string()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::body).collect()
    }

    /// Grants, newest first; with `after`, those that come after it in that order.
    pub async fn grants(&self, filter: &GrantFilter, after: Option<&Grant>) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, body FROM grants
             WHERE (?1 = 0 OR state = 'active') AND (?2 IS NULL OR holder = ?2)
               AND (?4 IS NULL OR (starts_ms, id) < (?4, ?5))
             ORDER BY starts_ms DESC, id DESC LIMIT ?3",
        )
        .bind(filter.active_only)
        .bind(filter.holder.as_ref().map(|u| u.as_str()))
        .bind(filter.limit)
        .bind(after.map(|g| rows::ms(g.starts_at)))
        .bind(after.map(|g| g.id.to_string()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::body).collect()
    }

    /// Every grant in state `active` (some may be past their end until the next sweep).
    pub async fn active_grants(&self) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query("SELECT id, body FROM grants WHERE state = 'active'").fetch_all(&self.pool).await?;
        rows.iter().map(rows::body).collect()
    }

    /// How many grants are in state `active` (some may be past their end until the next sweep).
    pub async fn active_grant_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM grants WHERE state = 'active'").fetch_one(&self.pool).await?)
    }

    /// The earliest time something is due: a pending request's expiry, an active grant's end, or
    /// an open break-glass review's escalation.
    pub async fn next_deadline(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let ms: Option<i64> = sqlx::query_scalar(
            "SELECT min(ms) FROM (
                SELECT min(expires_ms) AS ms FROM requests WHERE state = 'pending'
                UNION ALL SELECT min(ends_ms) FROM grants WHERE state = 'active'
                UNION ALL SELECT min(due_ms) FROM breakglass_reviews WHERE state = 'open' AND escalated = 0)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(ms.map(rows::time_of_ms))
    }
}
