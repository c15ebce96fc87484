//! Access reports: what the requests, grants and audit records of a time window say about who
//! had which access, how quickly it was approved and taken away, what was done with it, and what
//! deviated from the rules.
//!
//! Pure, like the rest of the core: the broker reads the facts (requests, grants, the audit
//! records about those grants) and the time, and [`summary`] and [`story`] only read them.
//! [`activity`] turns the audit records about grants into sessions, statements and role changes.

pub mod activity;
pub mod story;
pub mod summary;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{GrantId, ResourceName, RoleName, UserName};
use crate::lifecycle::{Grant, GrantState};

/// The time span a report covers: from `since` up to, not including, `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

impl Window {
    pub fn contains(&self, at: OffsetDateTime) -> bool {
        self.since <= at && at < self.until
    }

    /// Whether anything of `from..to` falls in the window.
    pub fn overlaps(&self, from: OffsetDateTime, to: OffsetDateTime) -> bool {
        from < self.until && to > self.since
    }

    /// How long, inside the window, `grant` gave access (until `now` while it is active).
    pub fn held(&self, grant: &Grant, now: OffsetDateTime) -> time::Duration {
        let ended = ended_at(grant, now).unwrap_or(now);
        let (from, to) = (grant.starts_at.max(self.since), ended.min(self.until));
        (to - from).max(time::Duration::ZERO)
    }
}

/// When a grant's access ended, as of `now`: its revocation, or the end it was given — also for
/// a grant past its end that the scheduler has not swept yet. `None` while it is live.
pub fn ended_at(grant: &Grant, now: OffsetDateTime) -> Option<OffsetDateTime> {
    match grant.state {
        GrantState::Active => (now >= grant.ends_at).then_some(grant.ends_at),
        GrantState::Expired => Some(grant.ends_at),
        GrantState::Revoked => Some(grant.closure.as_ref().map_or(grant.ends_at, |c| c.at.min(grant.ends_at))),
    }
}

/// Milliseconds from `from` to `to`, never negative.
pub fn millis_between(from: OffsetDateTime, to: OffsetDateTime) -> u64 {
    (to - from).whole_milliseconds().max(0) as u64
}

/// Median, 90th percentile and maximum of some durations (nearest rank), in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spread {
    pub count: u64,
    pub p50_ms: Option<u64>,
    pub p90_ms: Option<u64>,
    pub max_ms: Option<u64>,
}

impl Spread {
    pub fn of(mut values: Vec<u64>) -> Self {
        values.sort_unstable();
        let rank = |p: f64| {
            let index = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len().max(1)) - 1;
            values.get(index).copied()
        };
        Self { count: values.len() as u64, p50_ms: rank(0.5), p90_ms: rank(0.9), max_ms: values.last().copied() }
    }
}

/// A grant, named in a list of findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantLine {
    pub grant: GrantId,
    pub holder: UserName,
    pub resource: ResourceName,
    pub role: RoleName,
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    /// When its access ended (`None` while active).
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
}

impl GrantLine {
    pub fn new(grant: &Grant, now: OffsetDateTime) -> Self {
        Self {
            grant: grant.id,
            holder: grant.holder.clone(),
            resource: grant.resource.clone(),
            role: grant.role.clone(),
            starts_at: grant.starts_at,
            ended_at: ended_at(grant, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_use_the_nearest_rank() {
        assert_eq!(Spread::of(vec![]), Spread::default());
        let one = Spread::of(vec![7]);
        assert_eq!((one.p50_ms, one.p90_ms, one.max_ms), (Some(7), Some(7), Some(7)));
        let ten = Spread::of((1..=10).rev().collect());
        assert_eq!((ten.count, ten.p50_ms, ten.p90_ms, ten.max_ms), (10, Some(5), Some(9), Some(10)));
        let hundred = Spread::of((1..=100).collect());
        assert_eq!((hundred.p50_ms, hundred.p90_ms), (Some(50), Some(90)));
    }
}
