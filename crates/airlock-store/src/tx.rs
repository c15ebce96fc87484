//! One use case's transaction: reads for update, writes, and audit appends, committed together.

use airlock_core::audit::{AuditEvent, ChainHead, ChainRecord, chain};
use airlock_core::ids::{GroupName, UserName};
use airlock_core::lifecycle::{AccessRequest, Grant};
use sqlx::{Sqlite, Transaction};
use time::OffsetDateTime;
use tokio::sync::OwnedMutexGuard;

use crate::rows::{self, User, ms, to_body};
use crate::{BROKER_CHAIN, StoreError};

/// A write transaction. Dropping it without [`Tx::commit`] rolls everything back.
pub struct Tx {
    inner: Transaction<'static, Sqlite>,
    head: Option<ChainHead>,
    /// This process's write turn, held until the transaction ends.
    _turn: OwnedMutexGuard<()>,
}

impl Tx {
    pub(crate) fn new(inner: Transaction<'static, Sqlite>, turn: OwnedMutexGuard<()>) -> Self {
        Self { inner, head: None, _turn: turn }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        Ok(self.inner.commit().await?)
    }

    pub async fn user(&mut self, name: &UserName) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(rows::USER_COLUMNS_BY_NAME).bind(name.as_str()).fetch_optional(&mut *self.inner).await?;
        row.map(|r| rows::user(&r)).transpose()
    }

    pub async fn insert_user(
        &mut self,
        name: &UserName,
        groups: &[GroupName],
        service: bool,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let groups: Vec<&str> = groups.iter().map(GroupName::as_str).collect();
        sqlx::query(
            "INSERT INTO users (name, groups_json, service, disabled, token_hash, created_ms) VALUES (?, ?, ?, 0, ?, ?)",
        )
        .bind(name.as_str())
        .bind(to_body(&groups))
        .bind(service)
        .bind(token_hash)
        .bind(ms(now))
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

    pub async fn active_grants_of(&mut self, user: &UserName) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query("SELECT id, body FROM grants WHERE state = 'active' AND holder = ?")
            .bind(user.as_str())
            .fetch_all(&mut *self.inner)
            .await?;
        rows.iter().map(rows::body).collect()
    }

    pub async fn insert_request(&mut self, request: &AccessRequest) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO requests (id, requester, resource, role, state, created_ms, expires_ms, body)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(request.id.to_string())
        .bind(request.requester.as_str())
        .bind(request.resource.as_str())
        .bind(request.role.as_str())
        .bind(request.state.as_str())
        .bind(ms(request.created_at))
        .bind(ms(request.expires_at))
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

    /// Appends events to the broker's audit chain, in order, inside this transaction.
    pub async fn append(&mut self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let mut head = match self.head.take() {
            Some(head) => head,
            None => {
                let row: Option<(i64, String)> =
                    sqlx::query_as("SELECT seq, hash FROM audit_events WHERE chain_id = ? ORDER BY seq DESC LIMIT 1")
                        .bind(BROKER_CHAIN)
                        .fetch_optional(&mut *self.inner)
                        .await?;
                row.map_or_else(ChainHead::genesis, |(seq, hash)| ChainHead { seq, hash })
            }
        };
        for event in events {
            let record = chain(&head, BROKER_CHAIN, event);
            insert_record(&mut self.inner, &record).await?;
            head = ChainHead { seq: record.seq, hash: record.hash };
        }
        self.head = Some(head);
        Ok(())
    }
}

async fn insert_record(tx: &mut Transaction<'static, Sqlite>, record: &ChainRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_events (chain_id, seq, prev_hash, hash, at_ms, kind, actor, details)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&record.chain_id)
    .bind(record.seq)
    .bind(&record.prev_hash)
    .bind(&record.hash)
    .bind(record.at_ms)
    .bind(&record.kind)
    .bind(&record.actor)
    .bind(&record.details)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
