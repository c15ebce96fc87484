//! `large_object`: every large object, held by its owner. A grant should leave none behind: a
//! large object is not in any schema, outlives the session that made it, and `DROP OWNED` is the
//! only thing that removes it with its owner; whatever one holds is worth a look.

use super::{Finding, Scan};
use crate::reconciler::ReconcileError;

/// Every large object of this database with its owner.
const LARGE_OBJECTS: &str =
    "SELECT oid::bigint, pg_get_userbyid(lomowner)::text FROM pg_largeobject_metadata ORDER BY oid";

/// `large_object` findings, one per large object.
pub(super) async fn large_objects(scan: &Scan<'_>) -> Result<Vec<Finding>, ReconcileError> {
    let rows = scan.rows("listing large objects", LARGE_OBJECTS, &[]).await?;
    let findings = rows.iter().map(|row| {
        let (oid, owner): (i64, String) = (row.get(0), row.get(1));
        scan.finding(owner.clone(), "large_object", format!("large object {oid}, owned by `{owner}`"))
    });
    Ok(findings.collect())
}
