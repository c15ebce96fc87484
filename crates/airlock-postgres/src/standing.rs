//! The standing-privilege report: on each target, who can use database privileges that no live
//! grant explains. Airlock's promise is that every privilege it hands out exists only while a
//! grant is live; this report finds what bypasses that promise — accounts that hold the mapped
//! roles permanently, superusers, and per-grant roles whose grant has ended.

use std::collections::HashSet;

use airlock_core::lifecycle::Grant;
use serde::Serialize;

use crate::reconciler::{ReconcileError, Target};
use crate::roles::{database, grant_of_role, role_name};

/// One privilege no live grant explains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub resource: String,
    /// The database role that holds the privilege.
    pub database_role: String,
    /// `superuser`, `member_of_mapped_role` or `ended_grant_role`.
    pub kind: &'static str,
    pub detail: String,
}

/// What `target` holds beyond its live grants and the connector's own login.
pub async fn standing(target: &Target, live: &[Grant]) -> Result<Vec<Finding>, ReconcileError> {
    let resource = target.resource.to_string();
    let (client, connection) = target.connect().await?;
    let sql = |what: &str| {
        let (resource, describe) = (target.resource.clone(), database(what.to_owned()));
        move |error| ReconcileError::Role { resource, source: describe(error) }
    };
    let connector = target.connection.get_user().unwrap_or_default().to_owned();
    let live_roles: HashSet<String> = live.iter().map(|grant| role_name(&grant.id)).collect();
    let mut mapped: Vec<String> = target.database_roles.values().flatten().cloned().collect();
    mapped.sort();
    mapped.dedup();
    let mut findings = Vec::new();

    let superusers = client
        .query("SELECT rolname::text FROM pg_roles WHERE rolsuper AND rolcanlogin ORDER BY 1", &[])
        .await
        .map_err(sql("listing superusers"))?;
    for row in superusers {
        let role: String = row.get(0);
        let detail =
            if role == connector { "the connector's own login is a superuser" } else { "can use every privilege" };
        findings.push(Finding {
            resource: resource.clone(),
            database_role: role,
            kind: "superuser",
            detail: detail.into(),
        });
    }
    let members = client
        .query(
            "SELECT r.rolname::text, m.name FROM pg_roles r CROSS JOIN unnest($1::text[]) AS m(name)
             WHERE r.rolcanlogin AND NOT r.rolsuper AND r.rolname <> m.name
               AND EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = m.name)
               AND pg_has_role(r.oid, m.name, 'USAGE')
             ORDER BY 1, 2",
            &[&mapped],
        )
        .await
        .map_err(sql("listing members of the mapped roles"))?;
    for row in members {
        let (role, mapped_role): (String, String) = (row.get(0), row.get(1));
        if role == connector || live_roles.contains(&role) || grant_of_role(&role).is_some() {
            continue;
        }
        let detail = format!("can use `{mapped_role}` without a grant");
        findings.push(Finding {
            resource: resource.clone(),
            database_role: role,
            kind: "member_of_mapped_role",
            detail,
        });
    }
    let grant_roles = client
        .query("SELECT rolname::text FROM pg_roles WHERE rolname ~ '^airlock_[0-9a-f]{32}$' ORDER BY 1", &[])
        .await
        .map_err(sql("listing per-grant roles"))?;
    for row in grant_roles {
        let role: String = row.get(0);
        if !live_roles.contains(&role) {
            let detail = "its grant is not live (the connector drops it at its next pass)".to_owned();
            findings.push(Finding {
                resource: resource.clone(),
                database_role: role,
                kind: "ended_grant_role",
                detail,
            });
        }
    }
    drop(client);
    let _ = connection.await;
    Ok(findings)
}
