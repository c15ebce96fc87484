//! Reading the audit chain back, and its signed checkpoints.
//!
//! Records are only ever appended through [`crate::Tx::append`]; checkpoints are appended here,
//! outside any use case, because they describe the chain rather than a change of state. Both
//! tables refuse updates and deletes (triggers).

use airlock_core::audit::checkpoint::Checkpoint;
use airlock_core::audit::{ChainHead, ChainRecord};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use tokio::sync::watch;

use crate::{BROKER_CHAIN, Store, StoreError, Tx, rows};

fn checkpoint(row: &SqliteRow) -> Checkpoint {
    Checkpoint {
        chain_id: row.get("chain_id"),
        seq: row.get("seq"),
        head_hash: row.get("head_hash"),
        at_ms: row.get("at_ms"),
        key_id: row.get("key_id"),
        signature: row.get("signature"),
    }
}

const CHECKPOINT_COLUMNS: &str = "chain_id, seq, head_hash, at_ms, key_id, signature";

impl Store {
    /// The whole audit chain, in order (for tests and small chains; see [`Store::audit_records`]).
    pub async fn audit_chain(&self, chain_id: &str) -> Result<Vec<ChainRecord>, StoreError> {
        self.audit_records(chain_id, 1, i64::MAX, u32::MAX).await
    }

    /// At most `limit` records with sequence numbers in `from..=to`, in order.
    pub async fn audit_records(
        &self,
        chain_id: &str,
        from: i64,
        to: i64,
        limit: u32,
    ) -> Result<Vec<ChainRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, chain_id, prev_hash, hash, at_ms, kind, actor, details FROM audit_events
             WHERE chain_id = ? AND seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
        )
        .bind(chain_id)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(rows::chain_record).collect())
    }

    /// The last `n` audit records, oldest first.
    pub async fn audit_tail(&self, chain_id: &str, n: u32) -> Result<Vec<ChainRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT seq, chain_id, prev_hash, hash, at_ms, kind, actor, details FROM audit_events
             WHERE chain_id = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
        )
        .bind(chain_id)
        .bind(n)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(rows::chain_record).collect())
    }

    /// The chain's last record, or genesis when it has none.
    pub async fn audit_head(&self, chain_id: &str) -> Result<ChainHead, StoreError> {
        let row: Option<(i64, String, i64)> =
            sqlx::query_as(rows::AUDIT_HEAD).bind(chain_id).fetch_optional(&self.pool).await?;
        Ok(row.map_or_else(ChainHead::genesis, |(seq, hash, _)| ChainHead { seq, hash }))
    }

    /// The sequence numbers of the first record at or after `since_ms` and of the last record
    /// before `until_ms` (either bound open when `None`); `None` when no record is in between.
    pub async fn audit_span(
        &self,
        chain_id: &str,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let row = sqlx::query(
            "SELECT min(seq) AS first, max(seq) AS last FROM audit_events
             WHERE chain_id = ? AND at_ms >= ? AND at_ms < ?",
        )
        .bind(chain_id)
        .bind(since_ms.unwrap_or(i64::MIN))
        .bind(until_ms.unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await?;
        let (first, last): (Option<i64>, Option<i64>) = (row.get("first"), row.get("last"));
        Ok(first.zip(last))
    }

    pub async fn insert_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO audit_checkpoints (chain_id, seq, head_hash, at_ms, key_id, signature)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&checkpoint.chain_id)
        .bind(checkpoint.seq)
        .bind(&checkpoint.head_hash)
        .bind(checkpoint.at_ms)
        .bind(&checkpoint.key_id)
        .bind(&checkpoint.signature)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from);
        self.health.note(&inserted, |_| true);
        inserted.map(drop)
    }

    /// The newest checkpoint of a chain.
    pub async fn latest_checkpoint(&self, chain_id: &str) -> Result<Option<Checkpoint>, StoreError> {
        let query =
            format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE chain_id = ? ORDER BY seq DESC LIMIT 1");
        let row = sqlx::query(sqlx::AssertSqlSafe(query)).bind(chain_id).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(checkpoint))
    }

    /// The checkpoints of records `from..=to`, in order.
    pub async fn checkpoints(&self, chain_id: &str, from: i64, to: i64) -> Result<Vec<Checkpoint>, StoreError> {
        let query = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE chain_id = ? AND seq BETWEEN ? AND ?
             ORDER BY seq"
        );
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(query)).bind(chain_id).bind(from).bind(to).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(checkpoint).collect())
    }

    /// The salt that opens a redacted value's commitment, unless there is none (or it was deleted).
    pub async fn audit_salt(&self, commitment: &str) -> Result<Option<[u8; 16]>, StoreError> {
        let salt: Option<String> = sqlx::query_scalar("SELECT salt FROM audit_salts WHERE commitment = ?")
            .bind(commitment)
            .fetch_optional(&self.pool)
            .await?;
        salt.map(|hex_salt| {
            hex::decode(&hex_salt).ok().and_then(|bytes| <[u8; 16]>::try_from(bytes).ok()).ok_or_else(|| {
                StoreError::Corrupt { id: commitment.to_owned(), message: "the salt is not 16 hex bytes".into() }
            })
        })
        .transpose()
    }

    /// The broker chain's head sequence number as committed by this process, changing at every
    /// commit that appended records (appends by other processes are seen by reading the store).
    pub fn watch_audit_head(&self) -> watch::Receiver<i64> {
        self.committed_head.subscribe()
    }
}

const LAST_POLICY_LOADED: &str = "SELECT seq, chain_id, prev_hash, hash, at_ms, kind, actor, details FROM audit_events
     WHERE chain_id = ? AND kind = 'policy.loaded' ORDER BY seq DESC LIMIT 1";

impl Tx {
    /// The broker chain's last `policy.loaded` record, read inside the transaction, so that no
    /// other is appended before it commits; found through its own partial index (migration 0008).
    pub async fn last_policy_loaded(&mut self) -> Result<Option<ChainRecord>, StoreError> {
        let row = sqlx::query(LAST_POLICY_LOADED).bind(BROKER_CHAIN).fetch_optional(&mut *self.inner).await?;
        Ok(row.as_ref().map(rows::chain_record))
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;

    #[tokio::test]
    async fn the_last_policy_loaded_is_found_through_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let plan = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {LAST_POLICY_LOADED}")))
            .bind(BROKER_CHAIN)
            .fetch_all(&store.pool)
            .await
            .unwrap();
        let plan: Vec<String> = plan.iter().map(|row| row.get("detail")).collect();
        assert!(plan.iter().any(|step| step.contains("audit_events_policy_loaded")), "{plan:?}");
    }
}
