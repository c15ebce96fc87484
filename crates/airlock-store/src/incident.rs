//! Incidents, and the requests and grants made under one: read for update inside a use case's
//! transaction (closing an incident ends everything tied to it in the same commit), listed and
//! read whole outside one.

use airlock_core::incident::Incident;
use airlock_core::lifecycle::{AccessRequest, Grant};

use crate::rows::{self, ms, to_body};
use crate::{Store, StoreError, Tx};

const INCIDENT_BY_ID: &str = "SELECT id, body FROM incidents WHERE id = ?";
const REQUESTS_OF_INCIDENT: &str =
    "SELECT id, body FROM requests WHERE incident = ?1 AND (?2 = 0 OR state = 'pending') ORDER BY created_ms, id";
const GRANTS_OF_INCIDENT: &str = "SELECT g.id, g.body FROM grants g JOIN requests r ON r.id = g.request_id
     WHERE r.incident = ?1 AND (?2 = 0 OR g.state = 'active') ORDER BY g.starts_ms, g.id";

impl Tx {
    pub async fn insert_incident(&mut self, incident: &Incident) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO incidents (id, state, opened_ms, body) VALUES (?, ?, ?, ?)")
            .bind(incident.id.as_str())
            .bind(incident.state.as_str())
            .bind(ms(incident.opened_at))
            .bind(to_body(incident))
            .execute(&mut *self.inner)
            .await?;
        Ok(())
    }

    pub async fn update_incident(&mut self, incident: &Incident) -> Result<(), StoreError> {
        sqlx::query("UPDATE incidents SET state = ?, body = ? WHERE id = ?")
            .bind(incident.state.as_str())
            .bind(to_body(incident))
            .bind(incident.id.as_str())
            .execute(&mut *self.inner)
            .await?;
        Ok(())
    }

    pub async fn incident(&mut self, id: &str) -> Result<Option<Incident>, StoreError> {
        let row = sqlx::query(INCIDENT_BY_ID).bind(id).fetch_optional(&mut *self.inner).await?;
        row.map(|r| rows::body(&r)).transpose()
    }

    /// Requests made for incident `id` that still wait for review.
    pub async fn pending_requests_of_incident(&mut self, id: &str) -> Result<Vec<AccessRequest>, StoreError> {
        let rows = sqlx::query(REQUESTS_OF_INCIDENT).bind(id).bind(true).fetch_all(&mut *self.inner).await?;
        rows.iter().map(rows::body).collect()
    }

    /// Grants in state `active` whose request was made for incident `id`.
    pub async fn active_grants_of_incident(&mut self, id: &str) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query(GRANTS_OF_INCIDENT).bind(id).bind(true).fetch_all(&mut *self.inner).await?;
        rows.iter().map(rows::body).collect()
    }
}

impl Store {
    pub async fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        let row = sqlx::query(INCIDENT_BY_ID).bind(id).fetch_optional(&self.pool).await?;
        row.map(|r| rows::body(&r)).transpose()
    }

    /// Incidents, newest first, at most `limit`; with `open_only`, only those still open.
    pub async fn incidents(&self, open_only: bool, limit: u32) -> Result<Vec<Incident>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, body FROM incidents WHERE (?1 = 0 OR state = 'open') ORDER BY opened_ms DESC, id DESC LIMIT ?2",
        )
        .bind(open_only)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::body).collect()
    }

    /// How many incidents are open.
    pub async fn open_incident_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM incidents WHERE state = 'open'").fetch_one(&self.pool).await?)
    }

    /// Every request made for incident `id`, oldest first.
    pub async fn requests_of_incident(&self, id: &str) -> Result<Vec<AccessRequest>, StoreError> {
        let rows = sqlx::query(REQUESTS_OF_INCIDENT).bind(id).bind(false).fetch_all(&self.pool).await?;
        rows.iter().map(rows::body).collect()
    }

    /// Every grant whose request was made for incident `id`, oldest first.
    pub async fn grants_of_incident(&self, id: &str) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query(GRANTS_OF_INCIDENT).bind(id).bind(false).fetch_all(&self.pool).await?;
        rows.iter().map(rows::body).collect()
    }
}
