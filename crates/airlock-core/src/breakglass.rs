//! Break-glass reviews. An emergency grant starts at once, without approval
//! ([`crate::lifecycle::AccessRequest::break_glass`]), and in exchange owes a review: somebody
//! other than its holder accepts or rejects it afterwards. A review still open at its due time
//! is escalated, once.
//!
//! As in [`crate::lifecycle`], every transition takes `now`, changes the review only when it
//! succeeds, and returns the audit event that describes it. That the holder never reviews their
//! own grant is checked here, whatever the policies say.

use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{AuditEvent, EventKind, SYSTEM_ACTOR};
use crate::ids::{GrantId, RequestId, ResourceName, RoleName, UserName};
use crate::lifecycle::{AccessRequest, Grant};
use crate::values::Reason;

/// Where a review stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewState {
    Open,
    Accepted,
    Rejected,
}

impl ReviewState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewState::Open => "open",
            ReviewState::Accepted => "accepted",
            ReviewState::Rejected => "rejected",
        }
    }
}

/// A reviewer's verdict on an emergency grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Accept,
    Reject,
}

/// Who answered a review, how, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub reviewer: UserName,
    pub verdict: Verdict,
    pub comment: Reason,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The review an emergency grant owes. It is known by its grant's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub grant: GrantId,
    pub request: RequestId,
    pub holder: UserName,
    pub resource: ResourceName,
    pub role: RoleName,
    /// The holder's reason for breaking the glass.
    pub reason: Reason,
    pub state: ReviewState,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    /// Still open at this time, the review is overdue and escalated.
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub escalated_at: Option<OffsetDateTime>,
    pub answer: Option<Answer>,
}

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the review is {} already", .0.as_str())]
    NotOpen(ReviewState),
    #[error("you cannot review your own break-glass grant")]
    OwnGrant,
    #[error("`{reviewer}` may not review role `{role}` on `{resource}` (no policy lets them approve it)")]
    NotAllowed { reviewer: UserName, resource: ResourceName, role: RoleName },
}

impl Review {
    /// The review `grant` owes, due `review_within` after it started, and the record that the
    /// glass was broken (with the request, the grant and the review).
    pub fn open(request: &AccessRequest, grant: &Grant, review_within: time::Duration) -> (Self, AuditEvent) {
        let review = Self {
            grant: grant.id,
            request: request.id,
            holder: grant.holder.clone(),
            resource: grant.resource.clone(),
            role: grant.role.clone(),
            reason: request.reason.clone(),
            state: ReviewState::Open,
            opened_at: grant.starts_at,
            due_at: grant.starts_at + review_within,
            escalated_at: None,
            answer: None,
        };
        let event = AuditEvent {
            kind: EventKind::BreakGlassUsed,
            actor: grant.holder.to_string(),
            at: grant.starts_at,
            details: json!({ "request": request, "grant": grant, "review": review }),
        };
        (review, event)
    }

    /// Whether the review is still open at or past its due time.
    pub fn is_overdue(&self, now: OffsetDateTime) -> bool {
        self.state == ReviewState::Open && now >= self.due_at
    }

    /// Records `reviewer`'s verdict. `allowed` says whether the reviewer may review this role on
    /// this resource; the holder may not, whatever it says.
    pub fn answer(
        &mut self,
        reviewer: &UserName,
        allowed: bool,
        verdict: Verdict,
        comment: Reason,
        now: OffsetDateTime,
    ) -> Result<AuditEvent, AnswerError> {
        if self.state != ReviewState::Open {
            return Err(AnswerError::NotOpen(self.state));
        }
        if reviewer == &self.holder {
            return Err(AnswerError::OwnGrant);
        }
        if !allowed {
            return Err(AnswerError::NotAllowed {
                reviewer: reviewer.clone(),
                resource: self.resource.clone(),
                role: self.role.clone(),
            });
        }
        self.state = match verdict {
            Verdict::Accept => ReviewState::Accepted,
            Verdict::Reject => ReviewState::Rejected,
        };
        self.answer = Some(Answer { reviewer: reviewer.clone(), verdict, comment, at: now });
        Ok(self.event(EventKind::BreakGlassReviewed, reviewer.as_str(), now))
    }

    /// Escalates the review once it is overdue; only once.
    pub fn escalate(&mut self, now: OffsetDateTime) -> Option<AuditEvent> {
        (self.is_overdue(now) && self.escalated_at.is_none()).then(|| {
            self.escalated_at = Some(now);
            self.event(EventKind::BreakGlassReviewOverdue, SYSTEM_ACTOR, now)
        })
    }

    fn event(&self, kind: EventKind, actor: &str, at: OffsetDateTime) -> AuditEvent {
        AuditEvent { kind, actor: actor.to_owned(), at, details: json!({ "review": self }) }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use uuid::Uuid;

    use super::*;
    use crate::catalog::Role;
    use crate::lifecycle::{NewRequest, OpenError, RequestState};
    use crate::policy::Decision;
    use crate::values::GrantDuration;

    const T0: OffsetDateTime = datetime!(2026-11-23 03:00 UTC);

    fn role() -> Role {
        Role {
            name: "write".parse().unwrap(),
            max_duration: GrantDuration::parse("30m").unwrap(),
            approvals: 2,
            break_glass_max: GrantDuration::parse("1h").unwrap(),
            database_roles: Vec::new(),
            allow_statements: Vec::new(),
            keep_tables: false,
        }
    }

    fn decision(allowed: bool) -> Decision {
        Decision { allowed, policies: vec!["oncall-may-break-glass".into()], errors: vec![] }
    }

    fn user(name: &str) -> UserName {
        name.parse().unwrap()
    }

    fn broken(duration: &str) -> Result<(AccessRequest, Grant, Vec<AuditEvent>), OpenError> {
        let new = NewRequest {
            id: RequestId::from_uuid(Uuid::from_u128(1)),
            requester: user("dana"),
            resource: "demo-db".parse().unwrap(),
            role: "write".parse().unwrap(),
            duration: GrantDuration::parse(duration).unwrap(),
            reason: Reason::parse("INC-9 orders stuck").unwrap(),
            incident: None,
            source_ip: [10, 0, 0, 7].into(),
            mfa: false,
            device: None,
        };
        AccessRequest::break_glass(new, &role(), &decision(true), "v1", T0, GrantId::from_uuid(Uuid::from_u128(2)))
    }

    fn comment() -> Reason {
        Reason::parse("checked the statements").unwrap()
    }

    #[test]
    fn break_glass_starts_at_once_cut_to_the_ceiling_and_owes_a_review() {
        // The role's ordinary ceiling (30m) and approvals (2) do not apply; its break-glass ceiling does.
        let (request, grant, events) = broken("4h").unwrap();
        assert!(request.break_glass && !request.auto_approved);
        assert_eq!(request.state, RequestState::Approved);
        assert_eq!((grant.starts_at, grant.ends_at), (T0, T0 + time::Duration::HOUR));
        let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["request.created", "request.approved", "grant.started"]);
        assert_eq!(events[2].actor, "dana", "the holder broke the glass");
        assert_eq!(events[0].details["request"]["break_glass"], true, "recorded as break-glass from the start");
        let (review, used) = Review::open(&request, &grant, time::Duration::hours(24));
        assert_eq!((review.state, review.due_at), (ReviewState::Open, T0 + time::Duration::hours(24)));
        assert_eq!(used.kind, EventKind::BreakGlassUsed);
        assert_eq!(used.details["review"]["grant"], grant.id.to_string());
        assert_eq!(broken("20m").unwrap().1.ends_at, T0 + time::Duration::minutes(20));
    }

    #[test]
    fn refused_without_a_break_glass_policy() {
        let new = NewRequest {
            id: RequestId::from_uuid(Uuid::from_u128(1)),
            requester: user("eve"),
            resource: "demo-db".parse().unwrap(),
            role: "write".parse().unwrap(),
            duration: GrantDuration::parse("1h").unwrap(),
            reason: Reason::parse("just because").unwrap(),
            incident: None,
            source_ip: [10, 0, 0, 7].into(),
            mfa: false,
            device: None,
        };
        let refused =
            AccessRequest::break_glass(new, &role(), &decision(false), "v1", T0, GrantId::from_uuid(Uuid::nil()));
        assert!(matches!(refused, Err(OpenError::Refused { .. })));
    }

    #[test]
    fn only_somebody_else_allowed_answers_and_only_once() {
        let (request, grant, _) = broken("1h").unwrap();
        let (mut review, _) = Review::open(&request, &grant, time::Duration::hours(24));
        let later = T0 + time::Duration::hours(2);
        assert_eq!(review.answer(&user("dana"), true, Verdict::Accept, comment(), later), Err(AnswerError::OwnGrant));
        let refused = review.answer(&user("eve"), false, Verdict::Accept, comment(), later).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "`eve` may not review role `write` on `demo-db` (no policy lets them approve it)"
        );
        assert_eq!(review.state, ReviewState::Open);
        let event = review.answer(&user("bob"), true, Verdict::Reject, comment(), later).unwrap();
        assert_eq!((event.kind, review.state), (EventKind::BreakGlassReviewed, ReviewState::Rejected));
        assert_eq!(review.answer.as_ref().map(|a| a.reviewer.as_str()), Some("bob"));
        assert_eq!(
            review.answer(&user("carol"), true, Verdict::Accept, comment(), later),
            Err(AnswerError::NotOpen(ReviewState::Rejected))
        );
    }

    #[test]
    fn an_open_review_is_escalated_once_when_due() {
        let (request, grant, _) = broken("1h").unwrap();
        let (mut review, _) = Review::open(&request, &grant, time::Duration::hours(24));
        let due = T0 + time::Duration::hours(24);
        assert!(review.escalate(due - time::Duration::SECOND).is_none());
        assert_eq!(review.escalate(due).map(|e| e.kind), Some(EventKind::BreakGlassReviewOverdue));
        assert!(review.escalate(due + time::Duration::HOUR).is_none(), "escalated once");
        assert!(review.is_overdue(due));
        review.answer(&user("bob"), true, Verdict::Accept, comment(), due + time::Duration::HOUR).unwrap();
        assert!(!review.is_overdue(due + time::Duration::HOUR), "answered late, but answered");
    }
}
