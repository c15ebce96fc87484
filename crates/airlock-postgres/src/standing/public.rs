//! `public_privilege`: privileges everyone holds (granted to `PUBLIC`) beyond what PostgreSQL
//! gives everyone by default, since no grant explains a privilege everyone holds. Defaults are
//! fine: `CONNECT` and `TEMPORARY` on the database, `USAGE` on the `public` schema (PostgreSQL 15
//! gives no `CREATE` there), `EXECUTE` on functions (a `SECURITY DEFINER` one is a
//! `security_definer` finding), `USAGE` on types. Read on relations and their columns, schemas,
//! this database, large objects, foreign-data wrappers and servers, and default privileges,
//! outside `pg_catalog` and `information_schema`; and `lo_compat_privileges`, which turns the
//! large objects' privilege checks off.

use super::{Finding, Scan};
use crate::reconciler::ReconcileError;

/// Each object granting `PUBLIC` more than its defaults (`usual`), with those privileges.
const PUBLIC_PRIVILEGES: &str = "
    WITH acls(classid, objid, objsubid, acl, usual) AS (
        SELECT 'pg_class'::regclass, c.oid, 0, c.relacl, '{}'::text[]
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      UNION ALL
        SELECT 'pg_class'::regclass, a.attrelid, a.attnum, a.attacl, '{}'
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE a.attacl IS NOT NULL AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      UNION ALL
        SELECT 'pg_namespace'::regclass, oid, 0, nspacl, CASE nspname WHEN 'public' THEN '{USAGE}'::text[] ELSE '{}' END
        FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema')
      UNION ALL
        SELECT 'pg_database'::regclass, oid, 0, datacl, '{CONNECT,TEMPORARY}'
        FROM pg_database WHERE datname = current_database()
      UNION ALL
        SELECT 'pg_largeobject'::regclass, oid, 0, lomacl, '{}' FROM pg_largeobject_metadata
      UNION ALL
        SELECT 'pg_foreign_data_wrapper'::regclass, oid, 0, fdwacl, '{}' FROM pg_foreign_data_wrapper
      UNION ALL
        SELECT 'pg_foreign_server'::regclass, oid, 0, srvacl, '{}' FROM pg_foreign_server
      UNION ALL
        SELECT 'pg_default_acl'::regclass, oid, 0, defaclacl,
               CASE defaclobjtype WHEN 'f' THEN '{EXECUTE}'::text[] WHEN 'T' THEN '{USAGE}'::text[] ELSE '{}' END
        FROM pg_default_acl
    )
    SELECT o.type || ' ' || o.identity AS object,
           string_agg(p.privilege_type, ', ' ORDER BY p.privilege_type) AS privileges
    FROM acls x
    CROSS JOIN LATERAL aclexplode(x.acl) p
    CROSS JOIN LATERAL pg_identify_object(x.classid, x.objid, x.objsubid) o
    WHERE p.grantee = 0 AND p.privilege_type <> ALL(x.usual)
    GROUP BY 1
    ORDER BY 1";

/// Whether `lo_compat_privileges` is on.
const LARGE_OBJECT_CHECKS_OFF: &str = "SELECT current_setting('lo_compat_privileges')::bool";

/// `public_privilege` findings on objects, held by `PUBLIC`.
pub(super) async fn public_privileges(scan: &Scan<'_>) -> Result<Vec<Finding>, ReconcileError> {
    let rows = scan.rows("listing privileges granted to PUBLIC", PUBLIC_PRIVILEGES, &[]).await?;
    let findings = rows.iter().map(|row| {
        let (object, privileges): (String, String) = (row.get("object"), row.get("privileges"));
        scan.finding("PUBLIC", "public_privilege", format!("everyone has {privileges} on {object}"))
    });
    Ok(findings.collect())
}

/// A `public_privilege` finding when `lo_compat_privileges` is on.
pub(super) async fn large_object_checks_off(scan: &Scan<'_>) -> Result<Vec<Finding>, ReconcileError> {
    let rows = scan.rows("reading lo_compat_privileges", LARGE_OBJECT_CHECKS_OFF, &[]).await?;
    let off = rows.first().is_some_and(|row| row.get::<_, bool>(0));
    let detail = "`lo_compat_privileges` is on: everyone may read and write every large object";
    Ok(off.then(|| scan.finding("PUBLIC", "public_privilege", detail)).into_iter().collect())
}
