//! Gateway sessions whose end no record tells: a gateway that crashed lost their `session.ended`.
//! Each gateway names itself (`gateway` in the details of its `session.started`), so at its next
//! start it finds its own unended sessions and records their end.

use crate::{Store, StoreError};

/// Started by `gateway` and never ended: the actor and details of each `session.started`. The
/// ends are looked up by grant, through the `audit_events_by_grant` index.
const UNENDED: &str = "
    SELECT s.actor, s.details FROM audit_events s
    WHERE s.kind = 'session.started' AND json_extract(s.details, '$.gateway') = ?1
      AND NOT EXISTS (
          SELECT 1 FROM audit_events e
          WHERE json_extract(e.details, '$.grant') = json_extract(s.details, '$.grant')
            AND e.kind = 'session.ended'
            AND json_extract(e.details, '$.session') = json_extract(s.details, '$.session'))
    ORDER BY s.seq";

impl Store {
    /// The sessions `gateway` started whose end is not recorded: (actor, details JSON) of each
    /// `session.started`, oldest first.
    pub async fn unended_sessions(&self, gateway: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(UNENDED).bind(gateway).fetch_all(&self.pool).await?;
        Ok(rows)
    }
}
