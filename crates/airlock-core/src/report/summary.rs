//! The summary report of a window (`airlock report`): access by resource, user and duration;
//! how long approvals and revocations took; how requests were decided; and the deviations an
//! auditor must look at.
//!
//! Definitions (also in `docs/reports.md`):
//! - *time to approve*: from a request to the approval that started its grant, for requests
//!   people approved (auto-approved ones take no time and are counted apart);
//! - *time to revoke*: from the moment a grant's access ended (its revocation, or the end it was
//!   given) to the last thing that took the access away: its last session closed, its database
//!   role dropped;
//! - *challenged*: requests the policies did not let through on their own, so a person had to
//!   review them; *refused*: requests the policies refused outright; *break-glass*: granted at
//!   once by a `break_glass` policy, reviewed afterwards (an open review is a deviation).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::activity::{GrantActivity, Refusal, Revocation};
use super::{GrantLine, Spread, Window, ended_at, millis_between};
use crate::audit::{ChainRecord, time_of_ms};
use crate::breakglass::Review;
use crate::ids::{GrantId, ResourceName};
use crate::lifecycle::{AccessRequest, Grant, RequestState};

/// Activity this long after a grant's end counts as use after the end (the gateway cuts sessions
/// within about 100 ms; a statement finishing as the cut lands is recorded a moment later).
pub const LATE_USE_GRACE: time::Duration = time::Duration::seconds(1);

/// The buckets of `by_duration`: grants given at most this long.
const DURATION_BUCKETS: [(&str, i64); 5] =
    [("15m", 15 * 60), ("1h", 3600), ("4h", 4 * 3600), ("1d", 86_400), ("7d", 7 * 86_400)];

/// A request the policies refused (it exists only as its audit record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedRequest {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub requester: String,
    pub resource: String,
    pub role: String,
    pub reason: String,
    /// The incident the request named, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
}

/// A standing privilege the connector found on a target, as last recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandingFinding {
    pub resource: String,
    #[serde(with = "time::serde::rfc3339")]
    pub observed_at: OffsetDateTime,
    pub database_role: String,
    pub kind: String,
    pub detail: String,
}

impl RefusedRequest {
    /// Reads a `request.refused` record.
    pub fn from_record(record: &ChainRecord) -> Option<Self> {
        let details: serde_json::Value = serde_json::from_str(&record.details).ok()?;
        let request = details.get("request")?;
        let field = |name: &str| request.get(name).and_then(serde_json::Value::as_str).map(str::to_owned);
        Some(Self {
            at: time_of_ms(record.at_ms),
            requester: field("requester")?,
            resource: field("resource")?,
            role: field("role")?,
            reason: field("reason").unwrap_or_default(),
            incident: request.pointer("/incident/id").and_then(serde_json::Value::as_str).map(str::to_owned),
        })
    }
}

/// The findings of each resource's newest `target.standing` record, from records newest first.
pub fn latest_standing(records_newest_first: &[ChainRecord]) -> Vec<StandingFinding> {
    let mut seen = BTreeSet::new();
    let mut findings = Vec::new();
    for record in records_newest_first {
        let Ok(details) = serde_json::from_str::<serde_json::Value>(&record.details) else { continue };
        let Some(resource) = details.get("resource").and_then(serde_json::Value::as_str) else { continue };
        if !seen.insert(resource.to_owned()) {
            continue;
        }
        for finding in details.get("findings").and_then(serde_json::Value::as_array).into_iter().flatten() {
            let field =
                |name: &str| finding.get(name).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
            findings.push(StandingFinding {
                resource: resource.to_owned(),
                observed_at: time_of_ms(record.at_ms),
                database_role: field("database_role"),
                kind: field("kind"),
                detail: field("detail"),
            });
        }
    }
    findings.sort_by(|a, b| (&a.resource, &a.database_role).cmp(&(&b.resource, &b.database_role)));
    findings
}

/// What a report is made from.
#[derive(Debug, Default)]
pub struct Facts {
    /// Requests made in the window.
    pub requests: Vec<AccessRequest>,
    /// Requests the policies refused in the window.
    pub refused: Vec<RefusedRequest>,
    /// Grants whose time overlaps the window.
    pub grants: Vec<Grant>,
    /// What was recorded under those grants.
    pub activity: HashMap<GrantId, GrantActivity>,
    pub refusals: Vec<Refusal>,
    /// Resources reached only through the gateway, so that every use of them is recorded.
    pub gateway_resources: BTreeSet<ResourceName>,
    /// The latest standing-privilege findings of each target.
    pub standing: Vec<StandingFinding>,
    /// Break-glass reviews still open, of grants that started before the window's end.
    pub open_reviews: Vec<Review>,
}

/// How the requests of the window were decided.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestFigures {
    /// Every request made, refused ones included.
    pub made: u64,
    pub refused_by_policy: u64,
    pub auto_approved: u64,
    /// Granted at once by a `break_glass` policy, reviewed afterwards.
    pub break_glass: u64,
    pub approved_by_people: u64,
    pub denied: u64,
    pub expired_unreviewed: u64,
    pub cancelled: u64,
    pub pending: u64,
    /// Auto-approved among approved requests.
    pub auto_approved_share: Option<f64>,
    /// Refused by the policies among requests made.
    pub refused_rate: Option<f64>,
    /// Sent to people for review among requests made (neither auto-approved nor break-glass).
    pub challenged_rate: Option<f64>,
}

/// A break-glass grant whose review is still open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreviewedBreakGlass {
    pub grant: String,
    pub holder: String,
    pub resource: String,
    pub role: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    /// Past its due time (and so escalated).
    pub overdue: bool,
}

impl UnreviewedBreakGlass {
    fn new(review: &Review, now: OffsetDateTime) -> Self {
        Self {
            grant: review.grant.to_string(),
            holder: review.holder.to_string(),
            resource: review.resource.to_string(),
            role: review.role.to_string(),
            reason: review.reason.to_string(),
            started_at: review.opened_at,
            due_at: review.due_at,
            overdue: review.is_overdue(now),
        }
    }
}

/// Access to one resource, or by one user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessLine {
    pub name: String,
    pub grants: u64,
    /// Distinct holders.
    pub users: u64,
    /// Distinct resources.
    pub resources: u64,
    /// Time with access, inside the window.
    pub held_seconds: u64,
    pub sessions: u64,
    pub statements: u64,
    pub refused_statements: u64,
}

/// Grants given at most `up_to` (and more than the bucket before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurationBucket {
    pub up_to: String,
    pub grants: u64,
}

/// A grant used after its access ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateUse {
    #[serde(flatten)]
    pub grant: GrantLine,
    #[serde(with = "time::serde::rfc3339")]
    pub last_use_at: OffsetDateTime,
    pub after_end_ms: u64,
}

/// An ended grant whose access Airlock cannot show was taken away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unconfirmed {
    #[serde(flatten)]
    pub grant: GrantLine,
    pub missing: Vec<String>,
}

/// What an auditor must look at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deviations {
    /// Statements the guardrails refused.
    pub guardrail_refusals: Vec<Refusal>,
    /// Ended grants on gateway resources with no session at all.
    pub unused_grants: Vec<GrantLine>,
    /// Grants with activity more than [`LATE_USE_GRACE`] after their access ended.
    pub used_after_end: Vec<LateUse>,
    /// Ended grants with a session whose end was never recorded, or a database role never dropped.
    pub unconfirmed_revocations: Vec<Unconfirmed>,
    /// Break-glass grants still lacking their review (as of the report), oldest first.
    pub breakglass_unreviewed: Vec<UnreviewedBreakGlass>,
}

/// The summary report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub window: Window,
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
    pub requests: RequestFigures,
    pub time_to_approve: Spread,
    pub time_to_revoke: Spread,
    pub by_resource: Vec<AccessLine>,
    pub by_user: Vec<AccessLine>,
    pub by_duration: Vec<DurationBucket>,
    pub deviations: Deviations,
    pub standing: Vec<StandingFinding>,
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn request_figures(requests: &[AccessRequest], refused: u64) -> RequestFigures {
    let mut f = RequestFigures { refused_by_policy: refused, ..Default::default() };
    let mut challenged = 0;
    for r in requests {
        challenged += u64::from(!r.auto_approved && !r.break_glass);
        match r.state {
            RequestState::Approved if r.auto_approved => f.auto_approved += 1,
            RequestState::Approved if r.break_glass => f.break_glass += 1,
            RequestState::Approved => f.approved_by_people += 1,
            RequestState::Denied => f.denied += 1,
            RequestState::Expired => f.expired_unreviewed += 1,
            RequestState::Cancelled => f.cancelled += 1,
            RequestState::Pending => f.pending += 1,
        }
    }
    f.made = requests.len() as u64 + refused;
    f.auto_approved_share = share(f.auto_approved, f.auto_approved + f.approved_by_people);
    f.refused_rate = share(refused, f.made);
    f.challenged_rate = share(challenged, f.made);
    f
}

/// From a request to the approval that started its grant, for requests people approved.
fn approval_times(requests: &[AccessRequest]) -> Vec<u64> {
    requests
        .iter()
        .filter(|r| r.state == RequestState::Approved && !r.auto_approved)
        .filter_map(|r| r.approvals.last().map(|a| millis_between(r.created_at, a.at)))
        .collect()
}

fn access_lines<'a>(
    grants: impl Iterator<Item = (&'a str, &'a Grant)>,
    window: &Window,
    now: OffsetDateTime,
    activity: &HashMap<GrantId, GrantActivity>,
) -> Vec<AccessLine> {
    let mut lines: BTreeMap<&str, (AccessLine, BTreeSet<&str>, BTreeSet<&str>)> = BTreeMap::new();
    for (key, grant) in grants {
        let (line, users, resources) = lines.entry(key).or_default();
        line.name = key.to_owned();
        line.grants += 1;
        users.insert(grant.holder.as_str());
        resources.insert(grant.resource.as_str());
        line.held_seconds += window.held(grant, now).whole_seconds().max(0) as u64;
        if let Some(a) = activity.get(&grant.id) {
            line.sessions += a.sessions.values().filter(|s| s.started_at.is_some()).count() as u64;
            line.statements += a.statements();
            line.refused_statements += a.refused_statements();
        }
    }
    lines
        .into_values()
        .map(|(mut line, users, resources)| {
            (line.users, line.resources) = (users.len() as u64, resources.len() as u64);
            line
        })
        .collect()
}

fn duration_buckets(grants: &[Grant]) -> Vec<DurationBucket> {
    let mut counts = [0u64; DURATION_BUCKETS.len()];
    for grant in grants {
        let given = (grant.ends_at - grant.starts_at).whole_seconds();
        let bucket = DURATION_BUCKETS.iter().position(|(_, max)| given <= *max).unwrap_or(DURATION_BUCKETS.len() - 1);
        counts[bucket] += 1;
    }
    DURATION_BUCKETS
        .iter()
        .zip(counts)
        .map(|((up_to, _), grants)| DurationBucket { up_to: (*up_to).into(), grants })
        .collect()
}

/// Computes the summary of `window` from `facts`, as of `now`.
pub fn summary(window: Window, facts: Facts, now: OffsetDateTime) -> Summary {
    let Facts { requests, refused, grants, activity, refusals, gateway_resources, standing, mut open_reviews } = facts;
    open_reviews.sort_by_key(|review| review.opened_at);
    let mut deviations = Deviations {
        guardrail_refusals: refusals.into_iter().filter(|r| window.contains(r.at)).collect(),
        breakglass_unreviewed: open_reviews.iter().map(|review| UnreviewedBreakGlass::new(review, now)).collect(),
        ..Default::default()
    };
    let mut revoke_times = Vec::new();
    for grant in &grants {
        let Some(ended) = ended_at(grant, now) else { continue };
        let grant_activity = activity.get(&grant.id);
        if window.contains(ended) {
            match grant_activity.map_or(Revocation::NothingToTakeAway, |a| a.revocation(ended)) {
                Revocation::Took(ms) => revoke_times.push(ms),
                Revocation::Missing(missing) => {
                    deviations.unconfirmed_revocations.push(Unconfirmed { grant: GrantLine::new(grant, now), missing });
                }
                Revocation::NothingToTakeAway => {}
            }
        }
        let used = grant_activity.is_some_and(|a| a.sessions.values().any(|s| s.started_at.is_some()));
        if !used && gateway_resources.contains(&grant.resource) {
            deviations.unused_grants.push(GrantLine::new(grant, now));
        }
        if let Some(last) = grant_activity.and_then(GrantActivity::last_use)
            && last > ended + LATE_USE_GRACE
        {
            let grant = GrantLine::new(grant, now);
            deviations.used_after_end.push(LateUse {
                grant,
                last_use_at: last,
                after_end_ms: millis_between(ended, last),
            });
        }
    }
    Summary {
        window,
        generated_at: now,
        requests: request_figures(&requests, refused.len() as u64),
        time_to_approve: Spread::of(approval_times(&requests)),
        time_to_revoke: Spread::of(revoke_times),
        by_resource: access_lines(grants.iter().map(|g| (g.resource.as_str(), g)), &window, now, &activity),
        by_user: access_lines(grants.iter().map(|g| (g.holder.as_str(), g)), &window, now, &activity),
        by_duration: duration_buckets(&grants),
        deviations,
        standing,
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use uuid::Uuid;

    use super::*;
    use crate::lifecycle::{Approval, Closure, GrantState, RecordedDecision};
    use crate::report::activity::Activity;

    const T0: OffsetDateTime = datetime!(2026-11-23 09:00 UTC);

    fn decision() -> RecordedDecision {
        RecordedDecision { allowed: true, policies: vec!["p".into()], policy_version: "v".into() }
    }

    fn request(n: u128, state: RequestState, auto: bool, approved_after: Option<time::Duration>) -> AccessRequest {
        let approvals = approved_after
            .map(|after| Approval {
                approver: "bob".parse().unwrap(),
                comment: None,
                at: T0 + after,
                decision: decision(),
            })
            .into_iter()
            .collect();
        AccessRequest {
            id: crate::ids::RequestId::from_uuid(Uuid::from_u128(n)),
            requester: "alice".parse().unwrap(),
            resource: "db".parse().unwrap(),
            role: "read".parse().unwrap(),
            duration: "1h".to_owned().try_into().unwrap(),
            reason: crate::values::Reason::parse("INC-1").unwrap(),
            state,
            created_at: T0,
            expires_at: T0 + time::Duration::hours(1),
            required_approvals: 1,
            approvals,
            decision: decision(),
            auto_approved: auto,
            break_glass: false,
            incident: None,
            source_ip: None,
            mfa: false,
            device: None,
            closure: None,
        }
    }

    fn grant(n: u128, holder: &str, state: GrantState, minutes: i64, revoked_after: Option<i64>) -> Grant {
        Grant {
            id: GrantId::from_uuid(Uuid::from_u128(n)),
            request_id: crate::ids::RequestId::from_uuid(Uuid::from_u128(n)),
            holder: holder.parse().unwrap(),
            resource: "db".parse().unwrap(),
            role: "read".parse().unwrap(),
            starts_at: T0,
            ends_at: T0 + time::Duration::minutes(minutes),
            state,
            closure: revoked_after.map(|m| Closure {
                by: "carol".into(),
                reason: None,
                at: T0 + time::Duration::minutes(m),
            }),
        }
    }

    fn record(grant: u128, kind: &str, at: OffsetDateTime, session: &str) -> ChainRecord {
        let details = serde_json::json!({ "grant": Uuid::from_u128(grant).to_string(), "session": session,
            "resource": "db", "text": "GRANT x TO y", "refusal": "GRANT is not allowed" });
        ChainRecord {
            seq: 1,
            chain_id: "broker".into(),
            prev_hash: String::new(),
            hash: String::new(),
            at_ms: crate::audit::unix_ms(at),
            kind: kind.into(),
            actor: "alice".into(),
            details: details.to_string(),
        }
    }

    #[test]
    fn figures_revocations_and_deviations() {
        let min = time::Duration::minutes;
        let ms = time::Duration::milliseconds;
        let requests = vec![
            request(1, RequestState::Approved, true, None),
            request(2, RequestState::Approved, false, Some(min(2))),
            request(3, RequestState::Approved, false, Some(min(10))),
            request(4, RequestState::Denied, false, None),
            request(5, RequestState::Expired, false, None),
            AccessRequest { break_glass: true, ..request(7, RequestState::Approved, false, None) },
        ];
        // 1: revoked after 10 minutes, its session cut 80 ms later and its role dropped at 120 ms.
        // 2: expired, never used. 3: expired, used 5 s past its end, its role never dropped.
        let grants = vec![
            grant(1, "alice", GrantState::Revoked, 60, Some(10)),
            grant(2, "alice", GrantState::Expired, 30, None),
            grant(3, "dave", GrantState::Expired, 300, None),
        ];
        let mut activity = Activity::default();
        for r in [
            record(1, "target.role_created", T0, ""),
            record(1, "session.started", T0 + min(1), "s1"),
            record(1, "statement.refused", T0 + min(2), "s1"),
            record(1, "session.ended", T0 + min(10) + ms(80), "s1"),
            record(1, "target.role_dropped", T0 + min(10) + ms(120), ""),
            record(3, "target.role_created", T0, ""),
            record(3, "session.started", T0 + min(1), "s3"),
            record(3, "session.ended", T0 + min(300) + ms(5_000), "s3"),
        ] {
            activity.add(&r);
        }
        let review = Review::open(&requests[5], &grants[1], time::Duration::hours(24)).0;
        let facts = Facts {
            requests,
            refused: vec![RefusedRequest {
                at: T0,
                requester: "eve".into(),
                resource: "db".into(),
                role: "admin".into(),
                reason: "x".into(),
                incident: None,
            }],
            grants,
            activity: activity.grants,
            refusals: activity.refusals,
            gateway_resources: ["db".parse().unwrap()].into(),
            standing: Vec::new(),
            open_reviews: vec![review],
        };
        let window = Window { since: T0, until: T0 + time::Duration::days(1) };
        let s = summary(window, facts, T0 + time::Duration::days(2));

        let r = &s.requests;
        assert_eq!((r.made, r.refused_by_policy, r.auto_approved, r.approved_by_people), (7, 1, 1, 2));
        assert_eq!((r.denied, r.expired_unreviewed, r.break_glass), (1, 1, 1));
        assert_eq!(r.auto_approved_share, Some(1.0 / 3.0), "break-glass is neither");
        assert_eq!(r.challenged_rate, Some(4.0 / 7.0), "break-glass skipped review");
        assert_eq!((s.time_to_approve.p50_ms, s.time_to_approve.max_ms), (Some(120_000), Some(600_000)));
        assert_eq!((s.time_to_revoke.count, s.time_to_revoke.max_ms), (1, Some(120)), "grant 3 is unconfirmed");

        let d = &s.deviations;
        assert_eq!(d.guardrail_refusals.len(), 1);
        assert_eq!(d.unused_grants.iter().map(|g| g.grant.as_uuid().as_u128()).collect::<Vec<_>>(), [2]);
        assert_eq!(d.used_after_end.len(), 1);
        assert_eq!(d.used_after_end[0].after_end_ms, 5_000);
        assert_eq!(d.unconfirmed_revocations.len(), 1);
        assert_eq!(d.unconfirmed_revocations[0].missing, ["its database role was never dropped"]);
        assert_eq!(d.breakglass_unreviewed.len(), 1);
        assert!(d.breakglass_unreviewed[0].overdue, "opened at T0, due a day later, reported two days later");

        assert_eq!(s.by_resource.len(), 1);
        let db = &s.by_resource[0];
        assert_eq!((db.grants, db.users, db.sessions, db.refused_statements), (3, 2, 2, 1));
        assert_eq!(db.held_seconds, (10 + 30 + 300) * 60);
        assert_eq!(
            s.by_user.iter().map(|l| (l.name.as_str(), l.grants)).collect::<Vec<_>>(),
            [("alice", 2), ("dave", 1)]
        );
        let buckets: Vec<u64> = s.by_duration.iter().map(|b| b.grants).collect();
        assert_eq!(buckets, [0, 2, 0, 1, 0], "1 h and 30 min grants, and one of 5 h");
    }
}
