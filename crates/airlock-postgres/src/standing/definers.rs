//! `security_definer`: functions and procedures that run as a privileged owner for somebody
//! else. Whoever may execute a `SECURITY DEFINER` function borrows its owner's privileges; when a
//! grant's role leaves one behind, `REASSIGN OWNED` hands it to the connector, and everyone it was
//! granted to (PUBLIC, by default) runs code as the connector. Functions in temporary schemas
//! count: that is where such a function hides while its session lasts. PostgreSQL's own
//! (`pg_catalog`, `information_schema`) do not.
//!
//! An owner is privileged when it is a superuser, the connector's login, the holding role or a
//! per-grant role, has `CREATEROLE` or `BYPASSRLS`, or can use a mapped role or a server access
//! role. An executor borrows nothing when it is a member of the owner already (superusers are).

use super::{Finding, SERVER_ACCESS_ROLES, Scan};
use crate::reconciler::ReconcileError;
use crate::roles::HOLDING_ROLE;

/// `SECURITY DEFINER` functions whose owner is privileged (why, in `why`) and that others may
/// execute. `$1`: the mapped and server access roles, `$2`: the connector, `$3`: the holding role.
const SECURITY_DEFINERS: &str = "
    WITH lending AS (
        SELECT oid, rolname FROM pg_roles WHERE rolname = ANY($1::text[])
    ), privileged AS (
        SELECT r.oid, CASE
            WHEN r.rolsuper THEN 'a superuser'
            WHEN r.rolname = $2 THEN 'the connector''s login'
            WHEN r.rolname = $3 THEN 'the holding role'
            WHEN r.rolname ~ '^airlock_[0-9a-f]{32}$' THEN 'a per-grant role'
            WHEN r.rolcreaterole THEN 'has CREATEROLE'
            WHEN r.rolbypassrls THEN 'has BYPASSRLS'
            ELSE (SELECT format('can use `%s`', l.rolname) FROM lending l
                  WHERE pg_has_role(r.oid, l.oid, 'MEMBER') ORDER BY l.rolname LIMIT 1)
        END AS why
        FROM pg_roles r
    )
    SELECT pg_get_userbyid(p.proowner)::text AS owner, v.why, e.executors,
           format('%s %I.%I(%s)', CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END,
                  n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)) AS function
    FROM pg_proc p
    JOIN pg_namespace n ON n.oid = p.pronamespace
    JOIN privileged v ON v.oid = p.proowner AND v.why IS NOT NULL
    CROSS JOIN LATERAL (
        SELECT string_agg(CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE format('`%s`', pg_get_userbyid(a.grantee)) END,
                          ', ' ORDER BY a.grantee) AS executors
        FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
        WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
          AND CASE WHEN a.grantee = 0 THEN true ELSE NOT pg_has_role(a.grantee, p.proowner, 'MEMBER') END
    ) e
    WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND e.executors IS NOT NULL
    ORDER BY 1, 4";

/// `security_definer` findings, one per function, held by its owner.
pub(super) async fn security_definers(scan: &Scan<'_>) -> Result<Vec<Finding>, ReconcileError> {
    let lending: Vec<&str> = scan.mapped.iter().map(String::as_str).chain(SERVER_ACCESS_ROLES).collect();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&lending, &scan.connector, &HOLDING_ROLE];
    let rows = scan.rows("listing SECURITY DEFINER functions", SECURITY_DEFINERS, &params).await?;
    let findings = rows.iter().map(|row| {
        let (owner, why, function, executors): (String, String, String, String) =
            (row.get("owner"), row.get("why"), row.get("function"), row.get("executors"));
        let detail = format!("{function} is SECURITY DEFINER: {executors} may run it as `{owner}` ({why})");
        scan.finding(owner, "security_definer", detail)
    });
    Ok(findings.collect())
}
