//! Per-grant login roles on one PostgreSQL target.
//!
//! A live grant on a `postgres` resource has exactly one login role on its database, named
//! `airlock_<grant id as 32 hex digits>`, valid until the grant's end, a member of the database
//! roles its Airlock role maps to and of nothing else. When the grant ends, the role loses its
//! login, its sessions are terminated, what it owns passes to the connector's own role, and it
//! is dropped.
//!
//! The role's password is derived, not stored: HMAC-SHA256 of the grant id under the
//! connector's secret ([`RoleKey`]), so a gateway holding the secret can log in as the grant and
//! nobody else ever learns it. PostgreSQL receives only a SCRAM-SHA-256 verifier of it, so the
//! password is not in the server's statement log either.

use airlock_core::ids::GrantId;
use airlock_core::lifecycle::Grant;
use hmac::{Hmac, Mac};
use postgres_protocol::escape::{escape_identifier, escape_literal};
use sha2::Sha256;
use time::format_description::well_known::Rfc3339;
use tokio_postgres::Client;
use uuid::Uuid;

/// What every per-grant role's name starts with.
pub const ROLE_PREFIX: &str = "airlock_";
/// The role that owns what an ended grant left and the catalog keeps (`keep_tables`): it cannot
/// log in, is a member of nothing and holds no privilege, so nothing it owns lends any power.
pub const HOLDING_ROLE: &str = "airlock_holding";

/// Why a target refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("{what}: {message}")]
    Database { what: String, message: String },
}

pub(crate) fn database(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> RoleError {
    let what = what.into();
    move |source| RoleError::Database { what, message: describe(&source) }
}

/// A database error as the server said it, or any other error with its causes (tokio-postgres's
/// own `Display` says only "db error" or "error performing TLS handshake").
pub fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        text.push_str(&format!(": {error}"));
        cause = error.source();
    }
    text
}

/// The login role of `grant` on its target.
pub fn role_name(grant: &GrantId) -> String {
    format!("{ROLE_PREFIX}{}", grant.as_uuid().simple())
}

/// The grant a per-grant role belongs to, if `name` is one.
pub fn grant_of_role(name: &str) -> Option<GrantId> {
    let hex = name.strip_prefix(ROLE_PREFIX)?;
    let lowercase_hex = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    lowercase_hex.then(|| Uuid::parse_str(hex).ok().map(GrantId::from_uuid)).flatten()
}

/// The connector's secret, from which each grant role's password is derived.
#[derive(Clone)]
pub struct RoleKey([u8; 32]);

impl RoleKey {
    pub fn new(secret: [u8; 32]) -> Self {
        Self(secret)
    }

    /// The password of `grant`'s login role.
    pub fn password(&self, grant: &GrantId) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(b"airlock grant role password v1\0");
        mac.update(grant.as_uuid().as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// What ending a grant's role did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Sessions of the role that were still open and were terminated.
    pub sessions_ended: i64,
}

/// The roles of one target database, managed through the connector's own login.
pub struct TargetRoles<'a> {
    client: &'a Client,
}

impl<'a> TargetRoles<'a> {
    pub fn new(client: &'a Client) -> Self {
        Self { client }
    }

    /// Every per-grant role that exists on the target.
    pub async fn existing(&self) -> Result<Vec<String>, RoleError> {
        let rows = self
            .client
            .query("SELECT rolname FROM pg_roles WHERE rolname ~ '^airlock_[0-9a-f]{32}$' ORDER BY rolname", &[])
            .await
            .map_err(database("listing per-grant roles"))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Creates `grant`'s login role, valid until the grant's end, in `database_roles` only.
    pub async fn create(&self, grant: &Grant, database_roles: &[String], password: &str) -> Result<(), RoleError> {
        let name = escape_identifier(&role_name(&grant.id));
        let until = grant.ends_at.format(&Rfc3339).expect("a grant's end is a formattable date");
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let mut statement = format!(
            "BEGIN; CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS \
             PASSWORD {} VALID UNTIL {};",
            escape_literal(&verifier),
            escape_literal(&until),
        );
        for role in database_roles {
            statement.push_str(&format!(" GRANT {} TO {name};", escape_identifier(role)));
        }
        statement.push_str(" COMMIT;");
        if let Err(source) = self.client.batch_execute(&statement).await {
            // A failed batch leaves the session inside an aborted transaction; end it.
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Err(database(format!("creating role for grant {}", grant.id))(source));
        }
        Ok(())
    }

    /// Ends the role `name`: no new logins, live sessions terminated, owned objects handed to
    /// the connector's role, then dropped. Dropping a role that is already gone is not an error.
    pub async fn drop(&self, name: &str) -> Result<Dropped, RoleError> {
        let role = escape_identifier(name);
        let what = || format!("dropping role {name}");
        let exists = self
            .client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
            .await
            .map_err(database(what()))?;
        if exists.is_none() {
            return Ok(Dropped { sessions_ended: 0 });
        }
        // Terminating a role's sessions and taking over what it owns both need its privileges.
        self.client
            .batch_execute(&format!("ALTER ROLE {role} NOLOGIN; GRANT {role} TO CURRENT_USER"))
            .await
            .map_err(database(what()))?;
        let sessions_ended: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1) ended",
                &[&name],
            )
            .await
            .map_err(database(what()))?
            .get(0);
        let statement =
            format!("BEGIN; REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role}; DROP ROLE {role}; COMMIT;");
        if let Err(source) = self.client.batch_execute(&statement).await {
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Err(database(what())(source));
        }
        Ok(Dropped { sessions_ended })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip_and_nothing_else_matches() {
        let grant = GrantId::from_uuid(Uuid::now_v7());
        let name = role_name(&grant);
        assert_eq!(name.len(), 40);
        assert_eq!(grant_of_role(&name), Some(grant));
        for other in ["airlock_connector", "airlock_", "postgres", &name.to_uppercase(), &format!("{name}0")] {
            assert_eq!(grant_of_role(other), None, "{other}");
        }
    }

    #[test]
    fn passwords_depend_on_key_and_grant() {
        let (a, b) = (GrantId::from_uuid(Uuid::now_v7()), GrantId::from_uuid(Uuid::now_v7()));
        let key = RoleKey::new([7; 32]);
        assert_eq!(key.password(&a), key.password(&a));
        assert_ne!(key.password(&a), key.password(&b));
        assert_ne!(key.password(&a), RoleKey::new([8; 32]).password(&a));
        assert_eq!(key.password(&a).len(), 64);
    }
}
