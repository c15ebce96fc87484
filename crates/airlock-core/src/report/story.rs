//! The story of one user or one resource over a window, for an access review
//! (`airlock report user NAME`, `airlock report resource NAME`): each request with its reasons,
//! decision and approvals; its grant, how its access ended and how fast it was taken away; each
//! session and the statements run in it. For a user, also the requests they reviewed. For an
//! incident's post-mortem (`airlock report incident ID`), the same story of every request made
//! for it, with the incident and the break-glass reviews of its emergency grants.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::activity::{GrantActivity, Revocation, SessionActivity};
use super::summary::RefusedRequest;
use super::{Window, ended_at};
use crate::breakglass::Review;
use crate::ids::{GrantId, RequestId};
use crate::incident::Incident;
use crate::lifecycle::{AccessRequest, Grant, RequestState};

/// Whose story: `user` or `resource`, and the name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub kind: String,
    pub name: String,
}

/// A grant and what happened under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantStory {
    pub grant: Grant,
    /// When its access ended (`None` while active).
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    /// From the end to the last session closed and the database role dropped.
    pub revoked_in_ms: Option<u64>,
    pub credentials_issued: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub role_created_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub role_dropped_at: Option<OffsetDateTime>,
    pub sessions: Vec<SessionActivity>,
    pub statements: u64,
    pub refused_statements: u64,
    /// How many statements are listed in the sessions (at most the limit asked for per grant).
    pub statements_listed: u64,
}

/// A request and, once approved, its grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestStory {
    pub request: AccessRequest,
    pub grant: Option<GrantStory>,
}

/// A review the subject gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewGiven {
    pub request: RequestId,
    pub requester: String,
    pub resource: String,
    pub role: String,
    /// `approved` or `denied`.
    pub verdict: String,
    pub comment: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The story report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Story {
    pub subject: Subject,
    pub window: Window,
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
    /// Oldest first.
    pub requests: Vec<RequestStory>,
    pub refused_requests: Vec<RefusedRequest>,
    pub reviews_given: Vec<ReviewGiven>,
}

/// An incident's post-mortem: who got what under it, when, why, and what they did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentReport {
    pub incident: Incident,
    /// Over the incident's open time; its requests whenever they were made.
    pub story: Story,
    /// The reviews its break-glass grants owe, answered or not.
    pub breakglass_reviews: Vec<Review>,
}

/// What a story is made from.
#[derive(Debug, Default)]
pub struct StoryFacts {
    /// The subject's requests made in the window or whose grant overlaps it.
    pub requests: Vec<AccessRequest>,
    /// Their grants.
    pub grants: Vec<Grant>,
    pub activity: HashMap<GrantId, GrantActivity>,
    pub refused: Vec<RefusedRequest>,
    /// Requests that may have been reviewed in the window: made in it, or so shortly before that
    /// they were still pending (for a user's reviews).
    pub reviewed: Vec<AccessRequest>,
}

fn grant_story(grant: Grant, activity: Option<GrantActivity>, now: OffsetDateTime) -> GrantStory {
    let activity = activity.unwrap_or_default();
    let ended = ended_at(&grant, now);
    let revoked_in_ms = match ended.map(|end| activity.revocation(end)) {
        Some(Revocation::Took(ms)) => Some(ms),
        _ => None,
    };
    let mut sessions: Vec<SessionActivity> = activity.sessions.into_values().collect();
    for session in &mut sessions {
        session.lines.sort_by_key(|line| line.seq);
    }
    GrantStory {
        ended_at: ended,
        revoked_in_ms,
        credentials_issued: activity.credentials_issued,
        role_created_at: activity.role_created_at,
        role_dropped_at: activity.role_dropped_at,
        statements: sessions.iter().map(|s| s.statements).sum(),
        refused_statements: sessions.iter().map(|s| s.refused_statements).sum(),
        statements_listed: sessions.iter().map(|s| s.lines.len() as u64).sum(),
        sessions,
        grant,
    }
}

/// The reviews `reviewer` gave among `requests`, during `window`.
fn reviews_by(reviewer: &str, requests: &[AccessRequest], window: &Window) -> Vec<ReviewGiven> {
    let mut reviews = Vec::new();
    for r in requests {
        let given = |verdict: &str, comment: Option<String>, at| ReviewGiven {
            request: r.id,
            requester: r.requester.to_string(),
            resource: r.resource.to_string(),
            role: r.role.to_string(),
            verdict: verdict.to_owned(),
            comment,
            at,
        };
        for a in r.approvals.iter().filter(|a| a.approver.as_str() == reviewer) {
            reviews.push(given("approved", a.comment.clone(), a.at));
        }
        if let (RequestState::Denied, Some(closure)) = (r.state, &r.closure)
            && closure.by == reviewer
        {
            reviews.push(given("denied", closure.reason.clone(), closure.at));
        }
    }
    reviews.retain(|r| window.contains(r.at));
    reviews.sort_by_key(|r| r.at);
    reviews
}

/// Tells the story of `subject` over `window` from `facts`, as of `now`.
pub fn story(subject: Subject, window: Window, facts: StoryFacts, now: OffsetDateTime) -> Story {
    let StoryFacts { mut requests, grants, mut activity, refused, reviewed } = facts;
    let mut grants: HashMap<_, _> = grants.into_iter().map(|g| (g.request_id, g)).collect();
    requests.sort_by_key(|r| (r.created_at, r.id));
    let requests = requests
        .into_iter()
        .map(|request| {
            let grant = grants.remove(&request.id).map(|g| {
                let a = activity.remove(&g.id);
                grant_story(g, a, now)
            });
            RequestStory { request, grant }
        })
        .collect();
    let reviews_given = if subject.kind == "user" { reviews_by(&subject.name, &reviewed, &window) } else { Vec::new() };
    Story { subject, window, generated_at: now, requests, refused_requests: refused, reviews_given }
}
