//! Trusted devices: their public keys, who approved or disabled them, and what they were used for
//! (the requests made from them, the grants whose credentials are bound to them).

use airlock_core::device::DeviceKey;
use airlock_core::ids::{DeviceId, DeviceName, UserName};
use airlock_core::lifecycle::{AccessRequest, Grant};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;

use crate::rows::{self, ms, time_of_ms};
use crate::{Store, StoreError, Tx};

/// A device as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: DeviceId,
    pub user: UserName,
    pub name: DeviceName,
    pub key: DeviceKey,
    pub enrolled_at: OffsetDateTime,
    /// When, and by whom, an administrator approved it; until then it is not trusted.
    pub approved: Option<(OffsetDateTime, String)>,
    /// When, by whom and why it was disabled; it never works again.
    pub disabled: Option<(OffsetDateTime, String, String)>,
}

impl Device {
    /// Approved and not disabled.
    pub fn is_trusted(&self) -> bool {
        self.approved.is_some() && self.disabled.is_none()
    }
}

/// A query reading whole [`Device`]s: `devices_where!("WHERE …")`.
macro_rules! devices_where {
    ($condition:literal) => {
        concat!(
            "SELECT id, user, name, public_key, enrolled_ms, approved_ms, approved_by, disabled_ms, disabled_by,
                    disabled_reason
             FROM devices ",
            $condition
        )
    };
}

fn device(row: &SqliteRow) -> Result<Device, StoreError> {
    let id: String = row.get("id");
    let corrupt = |message: String| StoreError::Corrupt { id: id.clone(), message };
    let text = |column: &str| row.get::<String, _>(column);
    let approved = row.get::<Option<i64>, _>("approved_ms").map(|at| (time_of_ms(at), text("approved_by")));
    let disabled = row
        .get::<Option<i64>, _>("disabled_ms")
        .map(|at| (time_of_ms(at), text("disabled_by"), text("disabled_reason")));
    Ok(Device {
        id: id.parse().map_err(|e: uuid::Error| corrupt(e.to_string()))?,
        user: UserName::parse(&text("user")).map_err(|e| corrupt(e.to_string()))?,
        name: DeviceName::parse(&text("name")).map_err(|e| corrupt(e.to_string()))?,
        key: text("public_key").parse().map_err(|e: airlock_core::device::ProofError| corrupt(e.to_string()))?,
        enrolled_at: time_of_ms(row.get("enrolled_ms")),
        approved,
        disabled,
    })
}

impl Store {
    /// Device `id`, whatever its state: authentication reads it outside a transaction.
    pub async fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        let row = sqlx::query(devices_where!("WHERE id = ?")).bind(id.to_string()).fetch_optional(&self.pool).await?;
        row.as_ref().map(device).transpose()
    }

    /// Devices, oldest first: one user's, or everybody's.
    pub async fn devices(&self, user: Option<&UserName>) -> Result<Vec<Device>, StoreError> {
        let rows = sqlx::query(devices_where!("WHERE ?1 IS NULL OR user = ?1 ORDER BY enrolled_ms, id"))
            .bind(user.map(UserName::as_str))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device).collect()
    }
}

impl Tx {
    pub async fn insert_device(&mut self, new: &Device) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO devices (id, user, name, public_key, enrolled_ms) VALUES (?, ?, ?, ?, ?)")
            .bind(new.id.to_string())
            .bind(new.user.as_str())
            .bind(new.name.as_str())
            .bind(new.key.to_string())
            .bind(ms(new.enrolled_at))
            .execute(&mut *self.inner)
            .await?;
        Ok(())
    }

    /// Device `id`, read for update.
    pub async fn device(&mut self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        let row =
            sqlx::query(devices_where!("WHERE id = ?")).bind(id.to_string()).fetch_optional(&mut *self.inner).await?;
        row.as_ref().map(device).transpose()
    }

    /// Whether some device, in any state, already has `key`.
    pub async fn device_key_known(&mut self, key: &DeviceKey) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM devices WHERE public_key = ?")
            .bind(key.to_string())
            .fetch_optional(&mut *self.inner)
            .await?;
        Ok(row.is_some())
    }

    pub async fn approve_device(&mut self, id: DeviceId, by: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET approved_ms = ?, approved_by = ? WHERE id = ? AND approved_ms IS NULL")
            .bind(ms(now))
            .bind(by)
            .bind(id.to_string())
            .execute(&mut *self.inner)
            .await?;
        Ok(())
    }

    pub async fn disable_device(
        &mut self,
        id: DeviceId,
        by: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE devices SET disabled_ms = ?, disabled_by = ?, disabled_reason = ? WHERE id = ? AND disabled_ms IS NULL",
        )
        .bind(ms(now))
        .bind(by)
        .bind(reason)
        .bind(id.to_string())
        .execute(&mut *self.inner)
        .await?;
        Ok(())
    }

    /// Notes that grant `grant`'s credential is bound to device `id`.
    pub async fn bind_grant_to_device(&mut self, id: DeviceId, grant: &Grant) -> Result<(), StoreError> {
        sqlx::query("INSERT OR IGNORE INTO device_grants (device, grant_id) VALUES (?, ?)")
            .bind(id.to_string())
            .bind(grant.id.to_string())
            .execute(&mut *self.inner)
            .await?;
        Ok(())
    }

    /// Pending requests made from device `id`.
    pub async fn pending_requests_of_device(&mut self, id: DeviceId) -> Result<Vec<AccessRequest>, StoreError> {
        let rows = sqlx::query("SELECT id, body FROM requests WHERE device = ? AND state = 'pending'")
            .bind(id.to_string())
            .fetch_all(&mut *self.inner)
            .await?;
        rows.iter().map(rows::body).collect()
    }

    /// Active grants asked for from device `id`, or whose credentials are bound to it.
    pub async fn active_grants_of_device(&mut self, id: DeviceId) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, body FROM grants WHERE state = 'active'
               AND (request_id IN (SELECT id FROM requests WHERE device = ?1)
                    OR id IN (SELECT grant_id FROM device_grants WHERE device = ?1))",
        )
        .bind(id.to_string())
        .fetch_all(&mut *self.inner)
        .await?;
        rows.iter().map(rows::body).collect()
    }
}
