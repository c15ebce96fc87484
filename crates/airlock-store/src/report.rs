//! What reports read: requests and grants of a window, and the audit records about grants.
//!
//! Records about a grant are found through the `audit_events_by_grant` index (the grant id at the
//! top of their details, migration 0004); grant ids are passed as one JSON array.

use airlock_core::audit::ChainRecord;
use airlock_core::lifecycle::{AccessRequest, Grant};
use sqlx::Row;

use crate::{Store, StoreError, rows};

/// Whose requests and grants: everyone's, or one requester's or one resource's.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReportScope<'a> {
    pub user: Option<&'a str>,
    pub resource: Option<&'a str>,
}

/// Executed statements of one session: how many, and when the last one finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementCount {
    pub grant: String,
    pub session: String,
    pub count: i64,
    pub last_at_ms: i64,
}

/// Records of some kinds (`?2`, a JSON array) about some grants (`?1`, a JSON array of ids).
const GRANT_RECORDS: &str = "SELECT seq, chain_id, prev_hash, hash, at_ms, kind, actor, details FROM audit_events
     WHERE json_extract(details, '$.grant') IN (SELECT value FROM json_each(?1))
       AND kind IN (SELECT value FROM json_each(?2))
     ORDER BY seq";

/// Executed statements about some grants (`?1`, a JSON array of ids), counted by session.
const STATEMENT_COUNTS: &str = "SELECT json_extract(details, '$.grant') AS grant_id,
        CASE WHEN json_type(details, '$.session') = 'text' THEN json_extract(details, '$.session') END AS session,
        count(*) AS n, max(at_ms) AS last_at_ms
     FROM audit_events
     WHERE json_extract(details, '$.grant') IN (SELECT value FROM json_each(?1)) AND kind = 'statement.executed'
     GROUP BY 1, 2";

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).expect("strings serialise")
}

impl Store {
    /// Requests made in `since_ms..until_ms`, in `scope`.
    pub async fn requests_made(
        &self,
        since_ms: i64,
        until_ms: i64,
        scope: ReportScope<'_>,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        let sql = "SELECT id, body FROM requests WHERE created_ms >= ?1 AND created_ms < ?2
               AND (?3 IS NULL OR requester = ?3) AND (?4 IS NULL OR resource = ?4)";
        self.bodies_in_window(sql, since_ms, until_ms, scope).await
    }

    /// Grants given before `until_ms` that were to last past `since_ms`, in `scope`.
    pub async fn grants_overlapping(
        &self,
        since_ms: i64,
        until_ms: i64,
        scope: ReportScope<'_>,
    ) -> Result<Vec<Grant>, StoreError> {
        let sql = "SELECT id, body FROM grants WHERE starts_ms < ?2 AND ends_ms > ?1
               AND (?3 IS NULL OR holder = ?3) AND (?4 IS NULL OR resource = ?4)";
        self.bodies_in_window(sql, since_ms, until_ms, scope).await
    }

    /// The bodies `sql` selects, given the window (`?1`, `?2`) and the scope (`?3`, `?4`).
    async fn bodies_in_window<T: serde::de::DeserializeOwned>(
        &self,
        sql: &'static str,
        since_ms: i64,
        until_ms: i64,
        scope: ReportScope<'_>,
    ) -> Result<Vec<T>, StoreError> {
        let rows = sqlx::query(sql)
            .bind(since_ms)
            .bind(until_ms)
            .bind(scope.user)
            .bind(scope.resource)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::body).collect()
    }

    /// The requests with these ids.
    pub async fn requests_by_id(&self, ids: &[String]) -> Result<Vec<AccessRequest>, StoreError> {
        let rows = sqlx::query("SELECT id, body FROM requests WHERE id IN (SELECT value FROM json_each(?))")
            .bind(json_list(ids))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::body).collect()
    }

    /// The records of `kinds` about `grants`, in chain order.
    pub async fn grant_records(&self, grants: &[String], kinds: &[&str]) -> Result<Vec<ChainRecord>, StoreError> {
        let rows = sqlx::query(GRANT_RECORDS)
            .bind(json_list(grants))
            .bind(serde_json::to_string(kinds).expect("strings serialise"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(rows::chain_record).collect())
    }

    /// The first `limit` executed statements under `grant`, in chain order.
    pub async fn grant_statements(&self, grant: &str, limit: u32) -> Result<Vec<ChainRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, chain_id, prev_hash, hash, at_ms, kind, actor, details FROM audit_events
             WHERE json_extract(details, '$.grant') = ? AND kind = 'statement.executed' ORDER BY seq LIMIT ?",
        )
        .bind(grant)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(rows::chain_record).collect())
    }

    /// Executed statements under `grants`, counted by session.
    pub async fn statement_counts(&self, grants: &[String]) -> Result<Vec<StatementCount>, StoreError> {
        let rows = sqlx::query(STATEMENT_COUNTS).bind(json_list(grants)).fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|row| StatementCount {
                grant: row.get("grant_id"),
                session: row.try_get::<Option<String>, _>("session").ok().flatten().unwrap_or_default(),
                count: row.get("n"),
                last_at_ms: row.get("last_at_ms"),
            })
            .collect())
    }

    /// Requests the policies refused in `since_ms..until_ms` (their only trace is the record).
    pub async fn refused_requests(&self, since_ms: i64, until_ms: i64) -> Result<Vec<ChainRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, chain_id, prev_hash, hash, at_ms, kind, actor, details FROM audit_events
             WHERE kind = 'request.refused' AND at_ms >= ? AND at_ms < ? ORDER BY at_ms",
        )
        .bind(since_ms)
        .bind(until_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(rows::chain_record).collect())
    }

    /// The standing-privilege records made before `until_ms`, newest first.
    pub async fn standing_records(&self, until_ms: i64) -> Result<Vec<ChainRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, chain_id, prev_hash, hash, at_ms, kind, actor, details FROM audit_events
             WHERE kind = 'target.standing' AND at_ms < ? ORDER BY at_ms DESC, seq DESC",
        )
        .bind(until_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(rows::chain_record).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reports on a long chain stay fast only if every query about grants goes through the index.
    #[tokio::test]
    async fn grant_queries_use_the_grant_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let one_grant =
            "SELECT seq FROM audit_events WHERE json_extract(details, '$.grant') = 'g' AND kind = 'statement.executed'";
        for sql in [GRANT_RECORDS, STATEMENT_COUNTS, one_grant] {
            let plan = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .bind("[]")
                .bind("[]")
                .fetch_all(&store.pool)
                .await
                .unwrap();
            let plan: Vec<String> = plan.iter().map(|row| row.get("detail")).collect();
            assert!(plan.iter().any(|step| step.contains("USING INDEX audit_events_by_grant")), "{sql}: {plan:?}");
            assert!(!plan.iter().any(|step| step == "SCAN audit_events"), "{sql}: {plan:?}");
        }
    }
}
