//! Break-glass reviews and the bars a rejected review leaves: stored beside the grants, read for
//! update inside a use case's transaction, listed and counted outside one.

use airlock_core::breakglass::Review;
use airlock_core::ids::{GrantId, UserName};
use time::OffsetDateTime;

use crate::rows::{self, ms, to_body};
use crate::{Store, StoreError, Tx};

/// How many reviews are open, and how many of those are overdue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReviews {
    pub open: i64,
    pub overdue: i64,
}

const REVIEW_BY_GRANT: &str = "SELECT grant_id AS id, body FROM breakglass_reviews WHERE grant_id = ?";

impl Tx {
    pub async fn insert_review(&mut self, review: &Review) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO breakglass_reviews (grant_id, holder, resource, state, opened_ms, due_ms, escalated, body)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(review.grant.to_string())
        .bind(review.holder.as_str())
        .bind(review.resource.as_str())
        .bind(review.state.as_str())
        .bind(ms(review.opened_at))
        .bind(ms(review.due_at))
        .bind(review.escalated_at.is_some())
        .bind(to_body(review))
        .execute(&mut *self.inner)
        .await?;
        Ok(())
    }

    pub async fn update_review(&mut self, review: &Review) -> Result<(), StoreError> {
        sqlx::query("UPDATE breakglass_reviews SET state = ?, escalated = ?, body = ? WHERE grant_id = ?")
            .bind(review.state.as_str())
            .bind(review.escalated_at.is_some())
            .bind(to_body(review))
            .bind(review.grant.to_string())
            .execute(&mut *self.inner)
            .await?;
        Ok(())
    }

    pub async fn review(&mut self, grant: &str) -> Result<Option<Review>, StoreError> {
        let row = sqlx::query(REVIEW_BY_GRANT).bind(grant).fetch_optional(&mut *self.inner).await?;
        row.map(|r| rows::body(&r)).transpose()
    }

    /// Open reviews due at or before `now` that were not escalated yet.
    pub async fn unescalated_overdue_reviews(&mut self, now: OffsetDateTime) -> Result<Vec<Review>, StoreError> {
        let rows = sqlx::query(
            "SELECT grant_id AS id, body FROM breakglass_reviews WHERE state = 'open' AND escalated = 0 AND due_ms <= ?",
        )
        .bind(ms(now))
        .fetch_all(&mut *self.inner)
        .await?;
        rows.iter().map(rows::body).collect()
    }

    /// The grant whose rejected review barred `user` from break-glass, if they are barred.
    pub async fn breakglass_bar(&mut self, user: &UserName) -> Result<Option<String>, StoreError> {
        let grant = sqlx::query_scalar("SELECT grant_id FROM breakglass_bars WHERE user = ?")
            .bind(user.as_str())
            .fetch_optional(&mut *self.inner)
            .await?;
        Ok(grant)
    }

    /// Bars `user` from break-glass because of `grant`'s rejected review (a bar already there stays).
    pub async fn bar_from_breakglass(
        &mut self,
        user: &UserName,
        grant: &GrantId,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO breakglass_bars (user, grant_id, at_ms) VALUES (?, ?, ?) ON CONFLICT (user) DO NOTHING",
        )
        .bind(user.as_str())
        .bind(grant.to_string())
        .bind(ms(now))
        .execute(&mut *self.inner)
        .await?;
        Ok(())
    }

    /// Lifts `user`'s bar; says whether there was one.
    pub async fn lift_breakglass_bar(&mut self, user: &UserName) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM breakglass_bars WHERE user = ?")
            .bind(user.as_str())
            .execute(&mut *self.inner)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

impl Store {
    pub async fn review(&self, grant: &str) -> Result<Option<Review>, StoreError> {
        let row = sqlx::query(REVIEW_BY_GRANT).bind(grant).fetch_optional(&self.pool).await?;
        row.map(|r| rows::body(&r)).transpose()
    }

    /// Reviews, newest first, at most `limit`; with `open_only`, only those still open; with
    /// `after`, those that come after it in that order.
    pub async fn reviews(
        &self,
        open_only: bool,
        limit: u32,
        after: Option<&Review>,
    ) -> Result<Vec<Review>, StoreError> {
        let rows = sqlx::query(
            "SELECT grant_id AS id, body FROM breakglass_reviews WHERE (?1 = 0 OR state = 'open')
               AND (?3 IS NULL OR (opened_ms, grant_id) < (?3, ?4))
             ORDER BY opened_ms DESC, grant_id DESC LIMIT ?2",
        )
        .bind(open_only)
        .bind(limit)
        .bind(after.map(|r| ms(r.opened_at)))
        .bind(after.map(|r| r.grant.to_string()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::body).collect()
    }

    /// Reviews still open of grants that started before `until`, oldest first.
    pub async fn open_reviews_opened_before(&self, until: OffsetDateTime) -> Result<Vec<Review>, StoreError> {
        let rows = sqlx::query(
            "SELECT grant_id AS id, body FROM breakglass_reviews WHERE state = 'open' AND opened_ms < ?
             ORDER BY opened_ms",
        )
        .bind(ms(until))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::body).collect()
    }

    /// How many reviews are open now, and overdue at `now`.
    pub async fn open_reviews(&self, now: OffsetDateTime) -> Result<OpenReviews, StoreError> {
        let (open, overdue): (i64, Option<i64>) =
            sqlx::query_as("SELECT count(*), sum(due_ms <= ?) FROM breakglass_reviews WHERE state = 'open'")
                .bind(ms(now))
                .fetch_one(&self.pool)
                .await?;
        Ok(OpenReviews { open, overdue: overdue.unwrap_or(0) })
    }
}
