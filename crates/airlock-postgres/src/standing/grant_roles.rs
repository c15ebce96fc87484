//! What Airlock's own roles leave behind: per-grant roles whose grant is no longer live
//! (`ended_grant_role`), and what they own (`owned_by_grant_role`), as well as whatever the
//! holding role owns beyond kept tables and their sequences. Ownership is read from
//! `pg_shdepend`, as `REASSIGN OWNED` and `DROP OWNED` read it, so every kind of object counts:
//! relations, functions, types, schemas, large objects, default privileges and the rest.

use super::{Finding, Scan};
use crate::reconciler::ReconcileError;
use crate::roles::HOLDING_ROLE;

/// Per-grant roles that are not among the live ones `$1`.
const ENDED: &str = "
    SELECT rolname::text FROM pg_roles
    WHERE rolname ~ '^airlock_[0-9a-f]{32}$' AND rolname <> ALL($1::text[])
    ORDER BY 1";

/// Objects of this database, and shared ones, owned by a per-grant role that is not among the
/// live ones `$1`, or by the holding role `$2` unless they are tables and sequences.
const OWNED: &str = "
    SELECT r.rolname::text, o.type || ' ' || o.identity AS object
    FROM pg_shdepend d
    JOIN pg_roles r ON r.oid = d.refobjid
    LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
    CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) o
    WHERE d.refclassid = 'pg_authid'::regclass AND d.deptype = 'o'
      AND d.dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
      AND ((r.rolname ~ '^airlock_[0-9a-f]{32}$' AND r.rolname <> ALL($1::text[]))
           OR (r.rolname = $2 AND coalesce(c.relkind NOT IN ('r', 'p', 'S'), true)))
    ORDER BY 1, 2";

/// `ended_grant_role` findings: the reconciler drops these roles at its next pass.
pub(super) async fn ended(scan: &Scan<'_>) -> Result<Vec<Finding>, ReconcileError> {
    let rows = scan.rows("listing per-grant roles", ENDED, &[&scan.live]).await?;
    let detail = "its grant is not live (the connector drops it at its next pass)";
    Ok(rows.iter().map(|row| scan.finding(row.get::<_, String>(0), "ended_grant_role", detail)).collect())
}

/// `owned_by_grant_role` findings: what an ended grant's role owns, and what the holding role
/// should not.
pub(super) async fn owned(scan: &Scan<'_>) -> Result<Vec<Finding>, ReconcileError> {
    let rows = scan.rows("listing objects owned by Airlock's roles", OWNED, &[&scan.live, &HOLDING_ROLE]).await?;
    let findings = rows.iter().map(|row| {
        let (role, object): (String, String) = (row.get(0), row.get(1));
        let detail = match role == HOLDING_ROLE {
            true => format!("owns {object}; the holding role may own kept tables only"),
            false => format!("owns {object}; its grant is not live"),
        };
        scan.finding(role, "owned_by_grant_role", detail)
    });
    Ok(findings.collect())
}
