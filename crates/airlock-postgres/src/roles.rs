//! Per-grant login roles on one PostgreSQL target.
//!
//! A live grant on a `postgres` resource has exactly one login role on its database, named
//! `airlock_<grant id as 32 hex digits>`, valid until the grant's end, a member of the database
//! roles its Airlock role maps to and of nothing else. When the grant ends, the role loses its
//! login and its memberships, its sessions are terminated (and waited for), what it owns is
//! dropped (its tables kept by a powerless holding role when the catalog says so), and it is
//! dropped. Nothing a grant's role owned ever passes to a role with more power.
//!
//! The role's password is derived, not stored: HMAC-SHA256 of the grant id under the
//! connector's secret ([`RoleKey`]), so a gateway holding the secret can log in as the grant and
//! nobody else ever learns it. PostgreSQL receives only a SCRAM-SHA-256 verifier of it, so the
//! password is not in the server's statement log either.

use std::collections::HashMap;
use std::time::Duration;

use airlock_core::ids::GrantId;

use crate::grant_ca::GATEWAY_LOGIN_ROLE;
use airlock_core::lifecycle::Grant;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use postgres_protocol::escape::{escape_identifier, escape_literal};
use sha2::{Digest, Sha256};
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
    #[error("role {role}: {left} session(s) still open after being terminated (left disarmed for the next pass)")]
    SessionsRemain { role: String, left: i64 },
}

/// Every statement of the connector gives up after these (set on its connection), so one stuck
/// role never holds up the others.
pub const TIMEOUTS: &str = "-c lock_timeout=3s -c statement_timeout=30s -c idle_in_transaction_session_timeout=60s";
/// How long ending a role with open sessions waits before terminating them, once disarmed.
pub const GATEWAY_FIRST: Duration = Duration::from_millis(200);
/// How long ending a role waits for its terminated sessions to be gone.
pub const SESSIONS_GONE_WITHIN: Duration = Duration::from_secs(3);

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

/// PBKDF2 iterations in the SCRAM verifier PostgreSQL keeps for a grant role. Iterations slow
/// down guessing a password somebody chose; a grant role's password is 256 bits of HMAC output
/// ([`RoleKey::password`]) that nobody can guess however fast they try, so PostgreSQL's default of
/// 4096 would protect nothing and cost ~4 ms of CPU per role created (what limited the connector
/// at hundreds of grants a second) and as much again at each gateway login.
pub const SCRAM_ITERATIONS: u32 = 16;

/// The SCRAM-SHA-256 verifier of `password` with `salt`, as PostgreSQL stores it
/// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, RFC 5802 and 7677), with
/// [`SCRAM_ITERATIONS`]. `password` is ASCII (hex digits), which SASLprep leaves unchanged.
pub fn scram_verifier(password: &str, salt: [u8; 16]) -> String {
    verifier(password, &salt, SCRAM_ITERATIONS)
}

fn verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    let keyed = Hmac::<Sha256>::new_from_slice(password.as_bytes()).expect("HMAC takes keys of any length");
    let mac = |key: &[u8], message: &[u8]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(message);
        mac.finalize().into_bytes()
    };
    // Hi(password, salt, i): PBKDF2-HMAC-SHA-256, one block.
    let mut block = {
        let mut mac = keyed.clone();
        mac.update(salt);
        mac.update(&1u32.to_be_bytes());
        mac.finalize().into_bytes()
    };
    let mut salted = block;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&block);
        block = mac.finalize().into_bytes();
        salted.iter_mut().zip(block).for_each(|(salted, byte)| *salted ^= byte);
    }
    let stored_key = Sha256::digest(mac(&salted, b"Client Key"));
    let server_key = mac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key),
        BASE64.encode(server_key)
    )
}

/// A grant role to create: its grant, the roles it is to be a member of, and its password.
pub struct NewRole<'g> {
    pub grant: &'g Grant,
    pub member_of: Vec<String>,
    pub password: String,
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
        let role = NewRole { grant, member_of: database_roles.to_vec(), password: password.to_owned() };
        self.create_all(std::slice::from_ref(&role)).await
    }

    /// Creates every role of `roles` in one transaction (one round trip, one commit): all of
    /// them, or none when any fails.
    pub async fn create_all(&self, roles: &[NewRole<'_>]) -> Result<(), RoleError> {
        let mut statement = String::from("BEGIN;");
        for role in roles {
            let name = escape_identifier(&role_name(&role.grant.id));
            let until = role.grant.ends_at.format(&Rfc3339).expect("a grant's end is a formattable date");
            statement.push_str(&format!(
                " CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS \
                 PASSWORD {} VALID UNTIL {};",
                escape_literal(&scram_verifier(&role.password, *Uuid::new_v4().as_bytes())),
                escape_literal(&until),
            ));
            for member_of in &role.member_of {
                statement.push_str(&format!(" GRANT {} TO {name};", escape_identifier(member_of)));
            }
        }
        statement.push_str(" COMMIT;");
        let what = || match roles {
            [one] => format!("creating role for grant {}", one.grant.id),
            _ => format!("creating {} roles together", roles.len()),
        };
        self.transaction(&statement, what).await
    }

    /// Ends the role `name` so that nothing it did outlives it, and no power it had passes on:
    ///
    /// 1. **Disarm**, in one transaction: no more logins, and every role membership revoked, so
    ///    whatever it still owns (a `SECURITY DEFINER` function, a view) runs with no privilege.
    /// 2. **Terminate its sessions** ([`GATEWAY_FIRST`] later, if any: the gateway tells its
    ///    clients why) **and wait until they are gone** (a backend cleans up its
    ///    temporary objects as it exits; a session holding a lock it needs keeps it from going):
    ///    a role whose sessions remain is left, disarmed, for the next pass.
    /// 3. **Drop what it owned** (tables, functions, temporary objects, large objects, default
    ///    privileges, and objects built on them), and the role. When `keep_tables`, its tables
    ///    first pass to the powerless [`HOLDING_ROLE`], which keeps no function or view.
    ///
    /// Nothing is ever handed to the connector's own role, which can do more than a grant. Each
    /// step runs under the connection's `lock_timeout` and `statement_timeout` ([`TIMEOUTS`]),
    /// so a role that cannot be ended now fails fast and is retried. A role already gone is not
    /// an error.
    pub async fn drop(&self, name: &str, keep_tables: bool) -> Result<Dropped, RoleError> {
        let dropped = self.drop_all(&[name.to_owned()], keep_tables).await?;
        Ok(dropped[0])
    }

    /// Ends every role of `names` as [`TargetRoles::drop`] ends one, each step once for all of
    /// them (one disarming transaction, one termination, one dropping transaction): all of them,
    /// or none past the step that failed (a role whose sessions remain fails the whole batch,
    /// disarmed). Returns what ending each did, in the order of `names`.
    pub async fn drop_all(&self, names: &[String], keep_tables: bool) -> Result<Vec<Dropped>, RoleError> {
        let what = || match names {
            [one] => format!("dropping role {one}"),
            _ => format!("dropping {} roles together", names.len()),
        };
        let present = self.disarm(names).await?;
        let mut dropped = vec![Dropped { sessions_ended: 0 }; names.len()];
        if present.is_empty() {
            return Ok(dropped);
        }
        let ended = self.end_sessions(&present).await?;
        for (name, done) in names.iter().zip(&mut dropped) {
            done.sessions_ended = ended.get(name).copied().unwrap_or(0);
        }
        let roles = present.iter().map(|name| escape_identifier(name)).collect::<Vec<_>>().join(", ");
        let mut statement = String::from("BEGIN;");
        if keep_tables {
            // The holding role keeps tables (with their indexes, sequences and types) only.
            for name in &present {
                statement.push_str(&drop_code(name));
            }
            statement.push_str(&format!(" REASSIGN OWNED BY {roles} TO {HOLDING_ROLE};"));
        }
        statement.push_str(&format!(" DROP OWNED BY {roles} CASCADE; DROP ROLE {roles}; COMMIT;"));
        self.transaction(&statement, what).await?;
        Ok(dropped)
    }

    /// Takes the login and memberships of every role of `names` away, and gives the connector
    /// their privileges (to terminate their sessions and drop what they own), in one
    /// transaction. Returns the roles that exist.
    async fn disarm(&self, names: &[String]) -> Result<Vec<String>, RoleError> {
        let what = || match names {
            [one] => format!("disarming role {one}"),
            _ => format!("disarming {} roles together", names.len()),
        };
        let rows = self
            .client
            .query(
                "SELECT r.rolname::text, m.roleid::regrole::text FROM pg_roles r
                 LEFT JOIN pg_auth_members m ON m.member = r.oid
                 WHERE r.rolname = ANY($1) ORDER BY 1, 2",
                &[&names],
            )
            .await
            .map_err(database(what()))?;
        let mut present: Vec<String> = Vec::new();
        let mut statement = String::from("BEGIN;");
        for row in rows {
            let name: String = row.get(0);
            let role = escape_identifier(&name);
            if present.last() != Some(&name) {
                statement.push_str(&format!(" ALTER ROLE {role} NOLOGIN;"));
                present.push(name);
            }
            // `regrole` text is already a quoted identifier.
            if let Some(member_of) = row.get::<_, Option<String>>(1) {
                statement.push_str(&format!(" REVOKE {member_of} FROM {role};"));
            }
        }
        if present.is_empty() {
            return Ok(present);
        }
        let roles = present.iter().map(|name| escape_identifier(name)).collect::<Vec<_>>().join(", ");
        statement.push_str(&format!(" GRANT {roles} TO CURRENT_USER; COMMIT;"));
        self.transaction(&statement, what).await?;
        Ok(present)
    }

    /// Terminates every session of the roles `names` and waits up to [`SESSIONS_GONE_WITHIN`]
    /// until none is left; returns how many each role had.
    async fn end_sessions(&self, names: &[String]) -> Result<HashMap<String, i64>, RoleError> {
        let what = || match names {
            [one] => format!("ending the sessions of role {one}"),
            _ => format!("ending the sessions of {} roles", names.len()),
        };
        let open: i64 = self
            .client
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = ANY($1)", &[&names])
            .await
            .map_err(database(what()))?
            .get(0);
        if open > 0 {
            // Disarmed already, they can do nothing more; the gateway, which cuts them too, gets
            // a moment to tell their clients why before the server ends them with its own words.
            tokio::time::sleep(GATEWAY_FIRST).await;
        }
        let ended: HashMap<String, i64> = self
            .client
            .query(
                "SELECT usename::text, count(*) FROM
                     (SELECT usename, pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY($1)) ended
                 GROUP BY 1",
                &[&names],
            )
            .await
            .map_err(database(what()))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let give_up = tokio::time::Instant::now() + SESSIONS_GONE_WITHIN;
        loop {
            let left = self
                .client
                .query_opt(
                    "SELECT usename::text, count(*) FROM pg_stat_activity WHERE usename = ANY($1)
                     GROUP BY 1 ORDER BY 1 LIMIT 1",
                    &[&names],
                )
                .await
                .map_err(database(what()))?;
            let Some(left) = left else { return Ok(ended) };
            if tokio::time::Instant::now() >= give_up {
                return Err(RoleError::SessionsRemain { role: left.get(0), left: left.get(1) });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `statement` (a whole `BEGIN; …; COMMIT;`), rolling back when it fails.
    async fn transaction(&self, statement: &str, what: impl FnOnce() -> String) -> Result<(), RoleError> {
        if let Err(source) = self.client.batch_execute(statement).await {
            // A failed batch leaves the session inside an aborted transaction; end it.
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Err(database(what())(source));
        }
        Ok(())
    }
}

/// Drops every routine, view and large object `role` owns, whatever depends on them (a
/// trigger of a kept table, a column default): the tables it hands to the holding role go
/// without any code that could run.
fn drop_code(role: &str) -> String {
    format!(
        "DO $drop$
        DECLARE
            owner oid := (SELECT oid FROM pg_roles WHERE rolname = {role});
            object record;
        BEGIN
            FOR object IN SELECT oid::regprocedure AS name, prokind FROM pg_proc WHERE proowner = owner LOOP
                EXECUTE format(CASE object.prokind WHEN 'a' THEN 'DROP AGGREGATE IF EXISTS %s CASCADE'
                                                   WHEN 'p' THEN 'DROP PROCEDURE IF EXISTS %s CASCADE'
                                                   ELSE 'DROP FUNCTION IF EXISTS %s CASCADE' END, object.name);
            END LOOP;
            FOR object IN SELECT oid::regclass AS name, relkind FROM pg_class
                          WHERE relowner = owner AND relkind IN ('v', 'm', 'f') LOOP
                EXECUTE format(CASE object.relkind WHEN 'v' THEN 'DROP VIEW IF EXISTS %s CASCADE'
                                                   WHEN 'm' THEN 'DROP MATERIALIZED VIEW IF EXISTS %s CASCADE'
                                                   ELSE 'DROP FOREIGN TABLE IF EXISTS %s CASCADE' END, object.name);
            END LOOP;
            PERFORM lo_unlink(oid) FROM pg_largeobject_metadata WHERE lomowner = owner;
        END
        $drop$;",
        role = escape_literal(role)
    )
}

/// Makes the group that `pg_hba.conf` admits with grant CA certificates only, if it is missing.
/// It holds no privilege; the connector (CREATEROLE) adds each grant role to it.
pub async fn ensure_login_group(client: &Client) -> Result<(), RoleError> {
    ensure_powerless_role(client, GATEWAY_LOGIN_ROLE, "").await.map_err(database("making the gateway login group"))
}

/// Makes the holding role if it is missing, and lets the connector act as it (to hand it tables).
pub async fn ensure_holding_role(client: &Client) -> Result<(), RoleError> {
    let then = format!("GRANT {HOLDING_ROLE} TO CURRENT_USER;");
    ensure_powerless_role(client, HOLDING_ROLE, &then).await.map_err(database("making the holding role"))
}

/// Makes the role `name` (a constant of ours) if it is missing: no login and no attribute; then
/// runs `then`.
async fn ensure_powerless_role(client: &Client, name: &str, then: &str) -> Result<(), tokio_postgres::Error> {
    let statement = format!(
        "DO $make$ BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN
                 CREATE ROLE {name} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
             END IF;
         END $make$;
         {then}"
    );
    client.batch_execute(&statement).await
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

    /// The verifier is PostgreSQL's: with its 4096 iterations and the same salt, it is exactly
    /// what tokio-postgres's own `scram_sha_256` makes.
    #[test]
    fn verifiers_are_postgresql_scram() {
        let theirs = postgres_protocol::password::scram_sha_256(b"0123abcd");
        let salt = theirs.split(['$', ':']).nth(2).unwrap();
        let salt = BASE64.decode(salt).unwrap();
        assert_eq!(verifier("0123abcd", &salt, 4096), theirs);
        let ours = scram_verifier("0123abcd", [1; 16]);
        assert!(ours.starts_with(&format!("SCRAM-SHA-256${SCRAM_ITERATIONS}:AQEBAQEBAQEBAQEBAQEBAQ==$")), "{ours}");
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
