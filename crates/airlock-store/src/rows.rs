//! Turning rows into domain values and back.

use airlock_core::audit::ChainRecord;
pub(crate) use airlock_core::audit::time_of_ms;
use airlock_core::ids::{GroupName, UserName};
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;

use crate::StoreError;

/// A principal as stored (their tokens are apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: UserName,
    pub groups: Vec<GroupName>,
    pub service: bool,
    pub disabled: bool,
    pub created_at: OffsetDateTime,
}

pub(crate) const USER_COLUMNS_BY_NAME: &str =
    "SELECT name, groups_json, service, disabled, created_ms FROM users WHERE name = ?";

/// The last record of a chain: its sequence number, hash and time.
pub(crate) const AUDIT_HEAD: &str =
    "SELECT seq, hash, at_ms FROM audit_events WHERE chain_id = ? ORDER BY seq DESC LIMIT 1";

pub(crate) fn ms(at: OffsetDateTime) -> i64 {
    airlock_core::audit::unix_ms(at)
}

pub(crate) fn user(row: &SqliteRow) -> Result<User, StoreError> {
    user_from(row, "created_ms")
}

/// A user from a row whose creation time is in column `created` (joins rename it).
pub(crate) fn user_from(row: &SqliteRow, created: &str) -> Result<User, StoreError> {
    let name: String = row.get("name");
    let corrupt = |message: String| StoreError::Corrupt { id: name.clone(), message };
    let groups_json: String = row.get("groups_json");
    Ok(User {
        name: UserName::parse(&name).map_err(|e| corrupt(e.to_string()))?,
        groups: serde_json::from_str(&groups_json).map_err(|e| corrupt(e.to_string()))?,
        service: row.get("service"),
        disabled: row.get("disabled"),
        created_at: time_of_ms(row.get(created)),
    })
}

/// A user as the policies see them.
impl From<User> for airlock_core::policy::Principal {
    fn from(user: User) -> Self {
        Self { name: user.name, groups: user.groups, service: user.service }
    }
}

/// How a user's groups are stored.
pub(crate) fn groups_json(groups: &[GroupName]) -> String {
    to_body(&groups.iter().map(GroupName::as_str).collect::<Vec<_>>())
}

/// Reads the JSON `body` column of a request or grant row.
pub(crate) fn body<T: DeserializeOwned>(row: &SqliteRow) -> Result<T, StoreError> {
    let body: String = row.get("body");
    serde_json::from_str(&body).map_err(|e| StoreError::Corrupt { id: row.get("id"), message: e.to_string() })
}

pub(crate) fn to_body<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain values serialise to JSON")
}

pub(crate) fn chain_record(row: &SqliteRow) -> ChainRecord {
    ChainRecord {
        seq: row.get("seq"),
        chain_id: row.get("chain_id"),
        prev_hash: row.get("prev_hash"),
        hash: row.get("hash"),
        at_ms: row.get("at_ms"),
        kind: row.get("kind"),
        actor: row.get("actor"),
        details: row.get("details"),
    }
}
