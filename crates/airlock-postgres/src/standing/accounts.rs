//! Roles that hold power of their own, whatever the live grants: role attributes (`superuser`,
//! `createrole`, `bypassrls`), login roles that can use a mapped role without a grant
//! (`member_of_mapped_role`), and members of the roles that reach the server's files and programs
//! (`server_access_member`). Roles the catalog names in `privileged_roles` are accepted with their
//! attributes and server access.

use super::{Finding, SERVER_ACCESS_ROLES, Scan};
use crate::reconciler::ReconcileError;
use crate::roles::grant_of_role;

/// Roles with `SUPERUSER`, `CREATEROLE` or `BYPASSRLS`, login or not, except the accepted ones.
const ATTRIBUTES: &str = "
    SELECT rolname::text, rolsuper, rolcreaterole, rolbypassrls, rolcanlogin, oid = 10 AS bootstrap
    FROM pg_roles
    WHERE (rolsuper OR rolcreaterole OR rolbypassrls) AND rolname <> ALL($1::text[])
    ORDER BY 1";

/// Login roles that can use one of the mapped roles `$1`, directly or through other roles.
const MEMBERS_OF_MAPPED_ROLES: &str = "
    SELECT r.rolname::text, m.rolname::text
    FROM pg_roles r JOIN pg_roles m ON m.rolname = ANY($1::text[])
    WHERE r.rolcanlogin AND NOT r.rolsuper AND r.oid <> m.oid AND pg_has_role(r.oid, m.oid, 'USAGE')
    ORDER BY 1, 2";

/// Roles that are members of one of the server access roles `$1`, directly or not, except
/// superusers and the roles `$2`.
const SERVER_ACCESS_MEMBERS: &str = "
    SELECT r.rolname::text, s.rolname::text
    FROM pg_roles r JOIN pg_roles s ON s.rolname = ANY($1::text[])
    WHERE NOT r.rolsuper AND r.oid <> s.oid AND r.rolname <> ALL($2::text[])
      AND pg_has_role(r.oid, s.oid, 'MEMBER')
    ORDER BY 1, 2";

/// `superuser`, `createrole` and `bypassrls` findings. Every superuser is one, the connector's
/// own login included, except the bootstrap superuser once it cannot log in (PostgreSQL keeps
/// that role, so locking it is the fix). The connector needs `CREATEROLE`, so its own is not one.
pub(super) async fn attributes(scan: &Scan<'_>) -> Result<Vec<Finding>, ReconcileError> {
    let accepted = &scan.target.privileged_roles;
    let rows = scan.rows("listing roles with SUPERUSER, CREATEROLE or BYPASSRLS", ATTRIBUTES, &[accepted]).await?;
    let mut findings = Vec::new();
    for row in rows {
        let role: String = row.get("rolname");
        let (superuser, createrole, bypassrls): (bool, bool, bool) =
            (row.get("rolsuper"), row.get("rolcreaterole"), row.get("rolbypassrls"));
        let (login, bootstrap): (bool, bool) = (row.get("rolcanlogin"), row.get("bootstrap"));
        if superuser {
            let detail = match (role == scan.connector, login, bootstrap) {
                (true, ..) if scan.target.allow_superuser_connector => {
                    "the connector's own login is a superuser (`allow_superuser_connector` accepts the risk)"
                }
                (true, ..) => "the connector's own login is a superuser",
                // PostgreSQL keeps its bootstrap superuser: unable to log in, it is all it can be.
                (false, false, true) => continue,
                (false, false, false) => "can use every privilege through the roles that can `SET ROLE` to it",
                (false, true, _) => "can use every privilege",
            };
            findings.push(scan.finding(role, "superuser", detail));
            continue;
        }
        if createrole && role != scan.connector {
            let detail = "can create roles and hand out roles (before PostgreSQL 16, any role but superusers)";
            findings.push(scan.finding(role.clone(), "createrole", detail));
        }
        if bypassrls {
            findings.push(scan.finding(role, "bypassrls", "bypasses every row-level security policy"));
        }
    }
    Ok(findings)
}

/// `member_of_mapped_role` findings: login roles, other than the connector and per-grant roles,
/// that can use a role the catalog hands out.
pub(super) async fn members_of_mapped_roles(scan: &Scan<'_>) -> Result<Vec<Finding>, ReconcileError> {
    let rows = scan.rows("listing members of the mapped roles", MEMBERS_OF_MAPPED_ROLES, &[&scan.mapped]).await?;
    let mut findings = Vec::new();
    for row in rows {
        let (role, mapped_role): (String, String) = (row.get(0), row.get(1));
        if role == scan.connector || grant_of_role(&role).is_some() {
            continue;
        }
        let detail = format!("can use `{mapped_role}` without a grant");
        findings.push(scan.finding(role, "member_of_mapped_role", detail));
    }
    Ok(findings)
}

/// `server_access_member` findings: roles, other than superusers (reported as such), live
/// grants' roles and the accepted ones, that can read or write the server's files or run
/// programs on it.
pub(super) async fn server_access_members(scan: &Scan<'_>) -> Result<Vec<Finding>, ReconcileError> {
    let excused: Vec<&String> = scan.target.privileged_roles.iter().chain(&scan.live).collect();
    let rows = scan
        .rows(
            "listing members of the server access roles",
            SERVER_ACCESS_MEMBERS,
            &[&SERVER_ACCESS_ROLES.as_slice(), &excused],
        )
        .await?;
    let findings = rows.iter().map(|row| {
        let (role, server_role): (String, String) = (row.get(0), row.get(1));
        let reach = match server_role.as_str() {
            "pg_execute_server_program" => "can run programs on the database server as its operating system user",
            "pg_read_server_files" => "can read every file the database server can",
            _ => "can write every file the database server can",
        };
        scan.finding(role, "server_access_member", format!("{reach} (member of `{server_role}`)"))
    });
    Ok(findings.collect())
}
