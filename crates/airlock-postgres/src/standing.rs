//! The standing-privilege report: on each target, who can use database privileges that no live
//! grant explains. Airlock's promise is that every privilege it hands out exists only while a
//! grant is live; this report finds what bypasses that promise, or lets a grant's power outlive
//! it ("containment in depth"). Each finding has a `kind`, one per check:
//!
//! - [`accounts`]: roles with `SUPERUSER`, `CREATEROLE` or `BYPASSRLS`; login roles that hold the
//!   mapped roles permanently; members of the roles that reach the server's files and programs;
//! - [`grant_roles`]: per-grant roles whose grant has ended, and what they (or the holding role,
//!   beyond kept tables) own;
//! - [`definers`]: `SECURITY DEFINER` functions that run as a privileged role for somebody else;
//! - [`public`]: privileges granted to `PUBLIC` beyond PostgreSQL's defaults;
//! - [`large_objects`]: every large object (grants should leave none).
//!
//! Each check is one small named query, read through a [`Scan`] of one connection.

mod accounts;
mod definers;
mod grant_roles;
mod large_objects;
mod public;

use airlock_core::lifecycle::Grant;
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::reconciler::{ReconcileError, Target};
use crate::roles::{database, role_name};

/// One privilege no live grant explains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub resource: String,
    /// The database role that holds the privilege (`PUBLIC` for privileges granted to everyone).
    pub database_role: String,
    /// `superuser`, `createrole`, `bypassrls`, `member_of_mapped_role`, `server_access_member`,
    /// `ended_grant_role`, `owned_by_grant_role`, `security_definer`, `public_privilege` or
    /// `large_object` (see `docs/reports.md`).
    pub kind: &'static str,
    pub detail: String,
}

/// The roles PostgreSQL lets read or write the server's files, or run programs on it.
const SERVER_ACCESS_ROLES: [&str; 3] = ["pg_execute_server_program", "pg_read_server_files", "pg_write_server_files"];

/// What `target` holds beyond its live grants and the connector's own login.
pub async fn standing(target: &Target, live: &[Grant]) -> Result<Vec<Finding>, ReconcileError> {
    let (client, connection) = target.connect().await?;
    let scan = Scan::new(&client, target, live);
    let mut findings = Vec::new();
    findings.extend(accounts::attributes(&scan).await?);
    findings.extend(accounts::members_of_mapped_roles(&scan).await?);
    findings.extend(accounts::server_access_members(&scan).await?);
    findings.extend(grant_roles::ended(&scan).await?);
    findings.extend(grant_roles::owned(&scan).await?);
    findings.extend(definers::security_definers(&scan).await?);
    findings.extend(public::public_privileges(&scan).await?);
    findings.extend(public::large_object_checks_off(&scan).await?);
    findings.extend(large_objects::large_objects(&scan).await?);
    drop(client);
    let _ = connection.await;
    Ok(findings)
}

/// One reading of one target: the connector's session, and what the catalog and the broker say
/// about the roles found there.
struct Scan<'a> {
    client: &'a Client,
    target: &'a Target,
    /// The connector's own login.
    connector: String,
    /// The per-grant roles of every live grant (on any resource: several may share a cluster).
    live: Vec<String>,
    /// The database roles the catalog hands out on this target, sorted, once each.
    mapped: Vec<String>,
}

impl<'a> Scan<'a> {
    fn new(client: &'a Client, target: &'a Target, live: &[Grant]) -> Self {
        let connector = target.connection.get_user().unwrap_or_default().to_owned();
        let live = live.iter().map(|grant| role_name(&grant.id)).collect();
        let mut mapped: Vec<String> = target.database_roles.values().flatten().cloned().collect();
        mapped.sort();
        mapped.dedup();
        Self { client, target, connector, live, mapped }
    }

    /// Runs one check's query; `what` names it in the error.
    async fn rows(&self, what: &str, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, ReconcileError> {
        self.client.query(sql, params).await.map_err(|error| ReconcileError::Role {
            resource: self.target.resource.clone(),
            source: database(what)(error),
        })
    }

    fn finding(&self, database_role: impl Into<String>, kind: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            resource: self.target.resource.to_string(),
            database_role: database_role.into(),
            kind,
            detail: detail.into(),
        }
    }
}
