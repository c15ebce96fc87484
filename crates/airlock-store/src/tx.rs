//! One use case's transaction: reads for update, writes, and audit appends, committed together.
//!
//! A [`Tx`] holds one pooled connection and issues `BEGIN IMMEDIATE`, `COMMIT` and `ROLLBACK`
//! itself, rather than through sqlx's `Transaction`: when SQLite has already rolled a
//! transaction back (a failed `COMMIT` on a full disk, an I/O error), sqlx's own rollback fails
//! with "no transaction is active", leaves its transaction depth at one, and hands the
//! connection back to the pool, where every later `begin_with` fails ("attempted to call
//! begin_with at non-zero transaction depth") until the process restarts. Here a transaction
//! that does not commit is rolled back, "no transaction is active" counting as done, and a
//! connection whose rollback fails otherwise is closed rather than returned: the next use case
//! always gets a clean connection.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use airlock_core::audit::redaction::RedactionRules;
use airlock_core::audit::{AuditEvent, ChainHead, ChainRecord, chain_appended};
use airlock_core::ids::{GroupName, UserName};
use airlock_core::lifecycle::{AccessRequest, Grant};
use sqlx::pool::PoolConnection;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};
use time::OffsetDateTime;
use tokio::sync::{OwnedMutexGuard, watch};

use crate::health::Health;
use crate::rows::{self, User, ms, to_body};
use crate::{BROKER_CHAIN, CommitObserver, StoreClock, StoreError};

/// A write transaction. Dropping it without [`Tx::commit`] rolls everything back.
pub struct Tx {
    pub(crate) inner: Held,
    /// The chain's head after the records appended so far, and its record's time.
    head: Option<(ChainHead, i64)>,
    /// Told the new head when a commit appended records.
    committed_head: Arc<watch::Sender<i64>>,
    redaction: Arc<RedactionRules>,
    /// The events appended so far, as chained (redacted), for the commit observer.
    appended: Vec<AuditEvent>,
    observers: Arc<[CommitObserver]>,
    clock: StoreClock,
    health: Arc<Health>,
    /// Whether committing writes something to disk (records appended, or the health probe).
    pub(crate) wrote: bool,
    /// This process's write turn, held until the transaction ends.
    turn: Option<OwnedMutexGuard<()>>,
}

/// The connection of a transaction in progress; taken out when the transaction ends.
pub(crate) struct Held(Option<PoolConnection<Sqlite>>);

const HELD: &str = "a transaction holds its connection until it ends";

impl Deref for Held {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.0.as_deref().expect(HELD)
    }
}

impl DerefMut for Held {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.0.as_deref_mut().expect(HELD)
    }
}

/// Begins a write transaction on `connection`. When `BEGIN IMMEDIATE` fails (another process
/// holds the write lock past the busy timeout, or the disk fails), the connection is settled and
/// let go before the error is returned.
pub(crate) async fn begin_on(mut connection: PoolConnection<Sqlite>) -> Result<PoolConnection<Sqlite>, StoreError> {
    match sqlx::query("BEGIN IMMEDIATE").execute(&mut *connection).await {
        Ok(_) => Ok(connection),
        Err(error) => {
            settle(connection).await;
            Err(error.into())
        }
    }
}

/// Ends whatever transaction `connection` may still be in and lets it go: back to the pool when
/// it is clean, closed when even `ROLLBACK` fails (other than for having nothing to roll back).
async fn settle(mut connection: PoolConnection<Sqlite>) {
    match sqlx::query("ROLLBACK").execute(&mut *connection).await {
        Ok(_) => {}
        Err(error) if nothing_to_roll_back(&error) => {}
        Err(error) => {
            tracing::warn!(%error, "cannot roll a failed transaction back; closing its connection");
            if let Err(error) = connection.close().await {
                tracing::debug!(%error, "closing a connection after a failed rollback");
            }
        }
    }
}

fn nothing_to_roll_back(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.message().contains("no transaction is active"))
}

impl Tx {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        connection: PoolConnection<Sqlite>,
        turn: OwnedMutexGuard<()>,
        committed_head: Arc<watch::Sender<i64>>,
        redaction: Arc<RedactionRules>,
        observers: Arc<[CommitObserver]>,
        clock: StoreClock,
        health: Arc<Health>,
    ) -> Self {
        Self {
            inner: Held(Some(connection)),
            head: None,
            committed_head,
            redaction,
            appended: Vec::new(),
            observers,
            clock,
            health,
            wrote: false,
            turn: Some(turn),
        }
    }

    /// Commits; then, when records were appended, tells the observers what and how long the
    /// commit (its disk sync included) took. A commit that fails is rolled back (SQLite may
    /// already have done so) before the error is returned, and nothing of it is kept.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let mut connection = self.inner.0.take().expect(HELD);
        let committed = sqlx::query("COMMIT").execute(&mut *connection).await;
        let outcome = match committed {
            Ok(_) => {
                drop(connection);
                Ok(())
            }
            Err(error) => {
                settle(connection).await;
                Err(StoreError::from(error))
            }
        };
        self.turn = None;
        self.health.note(&outcome, |_| self.wrote);
        outcome?;
        if let Some((head, _)) = self.head.take() {
            self.committed_head.send_replace(head.seq);
        }
        if !self.appended.is_empty() {
            let took = started.elapsed();
            for observer in self.observers.iter() {
                observer.committed(&self.appended, took);
            }
        }
        Ok(())
    }

    pub async fn user(&mut self, name: &UserName) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(rows::USER_COLUMNS_BY_NAME).bind(name.as_str()).fetch_optional(&mut *self.inner).await?;
        row.map(|r| rows::user(&r)).transpose()
    }

    /// Adds a user; `subject` is the identity provider's id for users signed in by single
    /// sign-on.
    pub async fn insert_user(
        &mut self,
        name: &UserName,
        groups: &[GroupName],
        service: bool,
        subject: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (name, groups_json, service, disabled, created_ms, subject) VALUES (?, ?, ?, 0, ?, ?)",
        )
        .bind(name.as_str())
        .bind(rows::groups_json(groups))
        .bind(service)
        .bind(ms(now))
        .bind(subject)
        .execute(&mut *self.inner)
        .await?;
        Ok(())
    }

    pub async fn disable_user(&mut self, name: &UserName) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET disabled = 1 WHERE name = ?")
            .bind(name.as_str())
            .execute(&mut *self.inner)
            .await?;
        Ok(())
    }

    pub async fn request(&mut self, id: &str) -> Result<Option<AccessRequest>, StoreError> {
        let row =
            sqlx::query("SELECT id, body FROM requests WHERE id = ?").bind(id).fetch_optional(&mut *self.inner).await?;
        row.map(|r| rows::body(&r)).transpose()
    }

    pub async fn grant(&mut self, id: &str) -> Result<Option<Grant>, StoreError> {
        let row =
            sqlx::query("SELECT id, body FROM grants WHERE id = ?").bind(id).fetch_optional(&mut *self.inner).await?;
        row.map(|r| rows::body(&r)).transpose()
    }

    /// Pending requests whose time is up at `now`.
    pub async fn overdue_requests(&mut self, now: OffsetDateTime) -> Result<Vec<AccessRequest>, StoreError> {
        let rows = sqlx::query("SELECT id, body FROM requests WHERE state = 'pending' AND expires_ms <= ?")
            .bind(ms(now))
            .fetch_all(&mut *self.inner)
            .await?;
        rows.iter().map(rows::body).collect()
    }

    /// Active grants whose end is at or before `now`.
    pub async fn overdue_grants(&mut self, now: OffsetDateTime) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query("SELECT id, body FROM grants WHERE state = 'active' AND ends_ms <= ?")
            .bind(ms(now))
            .fetch_all(&mut *self.inner)
            .await?;
        rows.iter().map(rows::body).collect()
    }

    pub async fn pending_requests_of(&mut self, user: &UserName) -> Result<Vec<AccessRequest>, StoreError> {
        let rows = sqlx::query("SELECT id, body FROM requests WHERE state = 'pending' AND requester = ?")
            .bind(user.as_str())
            .fetch_all(&mut *self.inner)
            .await?;
        rows.iter().map(rows::body).collect()
    }

    /// Every grant in state `active` (some may be past their end until the next sweep).
    pub async fn active_grants(&mut self) -> Result<Vec<Grant>, StoreError> {
        let rows =
            sqlx::query("SELECT id, body FROM grants WHERE state = 'active'").fetch_all(&mut *self.inner).await?;
        rows.iter().map(rows::body).collect()
    }

    pub async fn active_grants_of(&mut self, user: &UserName) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query("SELECT id, body FROM grants WHERE state = 'active' AND holder = ?")
            .bind(user.as_str())
            .fetch_all(&mut *self.inner)
            .await?;
        rows.iter().map(rows::body).collect()
    }

    pub async fn insert_request(&mut self, request: &AccessRequest) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO requests (id, requester, resource, role, state, created_ms, expires_ms, incident, device, body)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(request.id.to_string())
        .bind(request.requester.as_str())
        .bind(request.resource.as_str())
        .bind(request.role.as_str())
        .bind(request.state.as_str())
        .bind(ms(request.created_at))
        .bind(ms(request.expires_at))
        .bind(request.incident.as_ref().map(|i| i.id.as_str()))
        .bind(request.device.map(|d| d.to_string()))
        .bind(to_body(request))
        .execute(&mut *self.inner)
        .await?;
        Ok(())
    }

    pub async fn update_request(&mut self, request: &AccessRequest) -> Result<(), StoreError> {
        sqlx::query("UPDATE requests SET state = ?, body = ? WHERE id = ?")
            .bind(request.state.as_str())
            .bind(to_body(request))
            .bind(request.id.to_string())
            .execute(&mut *self.inner)
            .await?;
        Ok(())
    }

    pub async fn insert_grant(&mut self, grant: &Grant) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO grants (id, request_id, holder, resource, role, state, starts_ms, ends_ms, body)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(grant.id.to_string())
        .bind(grant.request_id.to_string())
        .bind(grant.holder.as_str())
        .bind(grant.resource.as_str())
        .bind(grant.role.as_str())
        .bind(grant.state.as_str())
        .bind(ms(grant.starts_at))
        .bind(ms(grant.ends_at))
        .bind(to_body(grant))
        .execute(&mut *self.inner)
        .await?;
        Ok(())
    }

    pub async fn update_grant(&mut self, grant: &Grant) -> Result<(), StoreError> {
        sqlx::query("UPDATE grants SET state = ?, body = ? WHERE id = ?")
            .bind(grant.state.as_str())
            .bind(to_body(grant))
            .bind(grant.id.to_string())
            .execute(&mut *self.inner)
            .await?;
        Ok(())
    }

    /// Appends events to the broker's audit chain, in order, inside this transaction, with
    /// sensitive values redacted first (their salts are stored beside the chain). Each record's
    /// time is the store's clock now, never before the record it follows; the event's own time
    /// goes beside it, in its details (`event_at`).
    pub async fn append(&mut self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        let (mut head, head_at_ms) = match self.head.take() {
            Some(head) => head,
            None => {
                let row: Option<(i64, String, i64)> =
                    sqlx::query_as(rows::AUDIT_HEAD).bind(BROKER_CHAIN).fetch_optional(&mut *self.inner).await?;
                row.map_or_else(
                    || (ChainHead::genesis(), i64::MIN),
                    |(seq, hash, at_ms)| (ChainHead { seq, hash }, at_ms),
                )
            }
        };
        let at_ms = ms((self.clock.0)()).max(head_at_ms);
        let mut records = Vec::with_capacity(events.len());
        let mut commitments = Vec::new();
        for mut event in events {
            commitments.extend(self.redaction.redact(&mut event.details, &mut fresh_salt));
            let record = chain_appended(&head, BROKER_CHAIN, &mut event, at_ms);
            head = ChainHead { seq: record.seq, hash: record.hash.clone() };
            records.push(record);
            self.appended.push(event);
        }
        for batch in insert_shaped(&records) {
            insert_records(&mut self.inner, batch).await?;
        }
        for batch in insert_shaped(&commitments) {
            let mut insert = QueryBuilder::new("INSERT INTO audit_salts (commitment, salt) ");
            insert.push_values(batch, |mut row, commitment| {
                row.push_bind(&commitment.digest).push_bind(hex::encode(commitment.salt));
            });
            insert.build().execute(&mut *self.inner).await?;
        }
        self.wrote |= !records.is_empty();
        self.head = Some((head, at_ms));
        Ok(())
    }
}

impl Drop for Tx {
    /// A transaction that did not commit is rolled back on its connection before the connection
    /// (and this process's write turn) is let go.
    fn drop(&mut self) {
        let Some(connection) = self.inner.0.take() else { return };
        let turn = self.turn.take();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    settle(connection).await;
                    drop(turn);
                });
            }
            // No runtime to roll back on: closing the connection rolls back.
            Err(_) => drop(connection.detach()),
        }
    }
}

/// 16 random bytes. The system's random source failing is not something to carry on through.
fn fresh_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the system's random source works");
    salt
}

/// Rows per `INSERT` (of records or salts), at most: each statement is a round trip to SQLite's
/// thread, and 8 bound values a row stays far below SQLite's limit of 32,766 variables.
const RECORDS_PER_INSERT: usize = 512;

/// `rows` cut into pieces of [`RECORDS_PER_INSERT`] rows, then of the powers of two below it,
/// largest first: so every `INSERT` has one of ten shapes, each prepared once per connection and
/// then taken from its statement cache. (Preparing an `INSERT` of a few hundred rows, as a piece
/// of any length would need, costs SQLite more than inserting them.)
fn insert_shaped<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = if rest.len() >= RECORDS_PER_INSERT { RECORDS_PER_INSERT } else { 1 << rest.len().ilog2() };
        let (piece, after) = rest.split_at(size);
        rest = after;
        Some(piece)
    })
}

async fn insert_records(connection: &mut SqliteConnection, records: &[ChainRecord]) -> Result<(), StoreError> {
    let mut insert =
        QueryBuilder::new("INSERT INTO audit_events (chain_id, seq, prev_hash, hash, at_ms, kind, actor, details) ");
    insert.push_values(records, |mut row, record| {
        row.push_bind(&record.chain_id)
            .push_bind(record.seq)
            .push_bind(&record.prev_hash)
            .push_bind(&record.hash)
            .push_bind(record.at_ms)
            .push_bind(&record.kind)
            .push_bind(&record.actor)
            .push_bind(&record.details);
    });
    insert.build().execute(connection).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_come_in_few_shapes_and_keep_every_row_in_order() {
        for len in [0, 1, 2, 3, 200, 511, 512, 513, 1500] {
            let rows: Vec<usize> = (0..len).collect();
            let pieces: Vec<&[usize]> = insert_shaped(&rows).collect();
            assert_eq!(pieces.concat(), rows, "{len} rows");
            assert!(pieces.iter().all(|p| p.len() == RECORDS_PER_INSERT || p.len().is_power_of_two()), "{len} rows");
        }
        let sizes = |len: usize| insert_shaped(&vec![(); len]).map(<[()]>::len).collect::<Vec<_>>();
        assert_eq!(sizes(200), [128, 64, 8]);
        assert_eq!(sizes(1500), [512, 512, 256, 128, 64, 16, 8, 4]);
    }
}
