//! The request → approval → grant state machine.
//!
//! Every transition takes `now` (and any fresh id) as an argument, changes the request or grant
//! it is called on only when it succeeds, and returns the audit events that describe it. The
//! rules that hold whatever the policies say live here: nobody reviews their own request,
//! approvals come from distinct people, one denial ends a request, a duration above the role's
//! ceiling is refused, and a grant is never extended.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{AuditEvent, EventKind, SYSTEM_ACTOR};
use crate::catalog::Role;
use crate::ids::{DeviceId, GrantId, RequestId, ResourceName, RoleName, UserName};
use crate::incident::IncidentRef;
use crate::policy::{Decision, Facts};
use crate::values::{GrantDuration, Reason};

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Expired => "expired",
            RequestState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Approved, Self::Denied, Self::Expired, Self::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// Where a grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    Active,
    Expired,
    Revoked,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Active => "active",
            GrantState::Expired => "expired",
            GrantState::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Active, Self::Expired, Self::Revoked].into_iter().find(|s| s.as_str() == text)
    }
}

/// A policy decision as it is recorded: its effect, the deciding policies, the policy set version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedDecision {
    pub allowed: bool,
    pub policies: Vec<String>,
    pub policy_version: String,
}

impl RecordedDecision {
    pub fn new(decision: &Decision, policy_version: &str) -> Self {
        Self {
            allowed: decision.allowed,
            policies: decision.policies.clone(),
            policy_version: policy_version.to_owned(),
        }
    }
}

/// One reviewer's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub approver: UserName,
    pub comment: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub decision: RecordedDecision,
}

/// How a request was closed without a grant, or who closed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closure {
    pub by: String,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// An access request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    pub id: RequestId,
    pub requester: UserName,
    pub resource: ResourceName,
    pub role: RoleName,
    pub duration: GrantDuration,
    pub reason: Reason,
    pub state: RequestState,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// A pending request expires, unreviewed, at this time.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub required_approvals: u32,
    pub approvals: Vec<Approval>,
    /// The `request` decision, and whether review was skipped by `auto_approve`.
    pub decision: RecordedDecision,
    pub auto_approved: bool,
    /// Emergency access: granted at once by the `break_glass` decision, reviewed afterwards.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// The open incident the request was made for: its grant ends when the incident closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<IncidentRef>,
    /// The address the request was made from, as the policies were told; none on requests
    /// recorded before addresses were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<IpAddr>,
    /// Whether the requester had proved a fresh second factor when they asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mfa: bool,
    /// The trusted device the requester asked from: disabling it ends the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// Set once the request is denied, cancelled or expired.
    pub closure: Option<Closure>,
}

/// A time-bound permission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: GrantId,
    pub request_id: RequestId,
    pub holder: UserName,
    pub resource: ResourceName,
    pub role: RoleName,
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
    pub state: GrantState,
    /// Set once the grant has ended.
    pub closure: Option<Closure>,
}

/// What a new request asks for; names are already checked against the catalog by the caller.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: RequestId,
    pub requester: UserName,
    pub resource: ResourceName,
    pub role: RoleName,
    pub duration: GrantDuration,
    pub reason: Reason,
    /// The open incident it is made for, if any.
    pub incident: Option<IncidentRef>,
    /// Where the requester asks from.
    pub source_ip: IpAddr,
    /// Whether the requester proved a fresh second factor.
    pub mfa: bool,
    /// The trusted device the requester asked from.
    pub device: Option<DeviceId>,
}

impl NewRequest {
    /// What the policies are told about this ask, made at `now`.
    pub fn facts(&self, now: OffsetDateTime) -> Facts<'_> {
        Facts {
            role: &self.role,
            duration: self.duration,
            reason: self.reason.as_str(),
            requester: &self.requester,
            now,
            source_ip: self.source_ip,
            incident: self.incident.as_ref(),
            mfa: self.mfa,
            trusted_device: self.device.is_some(),
        }
    }
}

/// Why a request cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("duration {asked} is above the maximum of {max} for role `{role}`")]
    TooLong { asked: GrantDuration, max: GrantDuration, role: RoleName },
    #[error("no policy allows `{requester}` to request role `{role}` on `{resource}`")]
    Refused { requester: UserName, resource: ResourceName, role: RoleName, decision: RecordedDecision },
}

/// Why a review (approve or deny) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("request is {} and can no longer be reviewed", .0.as_str())]
    NotPending(RequestState),
    #[error("request has expired unreviewed")]
    Expired,
    #[error("you cannot review your own request")]
    OwnRequest,
    #[error("no policy allows `{reviewer}` to review role `{role}` on `{resource}`")]
    NotAllowed { reviewer: UserName, resource: ResourceName, role: RoleName },
    #[error("`{0}` has already approved this request")]
    AlreadyApproved(UserName),
}

/// Why a cancellation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    #[error("only the requester can cancel a request")]
    NotRequester,
    #[error("request is {} and can no longer be cancelled", .0.as_str())]
    NotPending(RequestState),
}

/// Why a grant could not be ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("grant is {} already", .0.as_str())]
pub struct NotActive(pub GrantState);

/// The result of a transition that may start a grant.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub grant: Option<Grant>,
    pub events: Vec<AuditEvent>,
}

impl AccessRequest {
    /// Opens a request: refuses a duration above the role's ceiling or a `request` the policies do
    /// not allow; skips review when `auto_approve` allows it, starting the grant at once.
    pub fn open(
        new: NewRequest,
        role: &Role,
        request: &Decision,
        auto_approve: &Decision,
        policy_version: &str,
        now: OffsetDateTime,
        pending_ttl: time::Duration,
        grant_id: GrantId,
    ) -> Result<(Self, Outcome), OpenError> {
        if new.duration > role.max_duration {
            return Err(OpenError::TooLong { asked: new.duration, max: role.max_duration, role: role.name.clone() });
        }
        let mut this = Self::refused_or_new(new, request, policy_version, now, now + pending_ttl)?;
        this.required_approvals = role.approvals;
        let mut events = vec![this.event(EventKind::RequestCreated, this.requester.as_str(), now)];
        let grant = if auto_approve.allowed {
            this.auto_approved = true;
            this.decision = RecordedDecision::new(auto_approve, policy_version);
            Some(this.grant(grant_id, now, &mut events))
        } else {
            None
        };
        Ok((this, Outcome { grant, events }))
    }

    /// Emergency access: when the `break_glass` decision allows it, the request is approved and
    /// its grant starts at once, for the asked duration cut to the role's break-glass ceiling.
    /// The grant still owes a review ([`crate::breakglass::Review`]).
    pub fn break_glass(
        mut new: NewRequest,
        role: &Role,
        decision: &Decision,
        policy_version: &str,
        now: OffsetDateTime,
        grant_id: GrantId,
    ) -> Result<(Self, Grant, Vec<AuditEvent>), OpenError> {
        new.duration = new.duration.min(role.break_glass_max);
        let mut this = Self::refused_or_new(new, decision, policy_version, now, now)?;
        this.break_glass = true;
        let mut events = vec![this.event(EventKind::RequestCreated, this.requester.as_str(), now)];
        let grant = this.grant_by(this.requester.to_string(), grant_id, now, &mut events);
        Ok((this, grant, events))
    }

    /// A new pending request, or the refusal when `decision` does not allow it.
    fn refused_or_new(
        new: NewRequest,
        decision: &Decision,
        policy_version: &str,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<Self, OpenError> {
        let decision_recorded = RecordedDecision::new(decision, policy_version);
        if !decision.allowed {
            return Err(OpenError::Refused {
                requester: new.requester,
                resource: new.resource,
                role: new.role,
                decision: decision_recorded,
            });
        }
        Ok(Self {
            id: new.id,
            requester: new.requester,
            resource: new.resource,
            role: new.role,
            duration: new.duration,
            reason: new.reason,
            state: RequestState::Pending,
            created_at: now,
            expires_at,
            required_approvals: 0,
            approvals: Vec::new(),
            decision: decision_recorded,
            auto_approved: false,
            break_glass: false,
            incident: new.incident,
            source_ip: Some(new.source_ip),
            mfa: new.mfa,
            device: new.device,
            closure: None,
        })
    }

    /// What the policies were told about this request, told again at `now` (when a policy
    /// change asks whether its grant may stay). A request recorded without its address gives
    /// the unspecified address `0.0.0.0`, which no caller has: a policy that permits only some
    /// networks does not permit it.
    pub fn facts(&self, now: OffsetDateTime) -> Facts<'_> {
        Facts {
            role: &self.role,
            duration: self.duration,
            reason: self.reason.as_str(),
            requester: &self.requester,
            now,
            source_ip: self.source_ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            incident: self.incident.as_ref(),
            mfa: self.mfa,
            trusted_device: self.device.is_some(),
        }
    }

    /// Whether the request has outlived its pending time.
    pub fn is_overdue(&self, now: OffsetDateTime) -> bool {
        self.state == RequestState::Pending && now >= self.expires_at
    }

    fn check_reviewable(
        &self,
        reviewer: &UserName,
        decision: &Decision,
        now: OffsetDateTime,
    ) -> Result<(), ReviewError> {
        if self.state != RequestState::Pending {
            return Err(ReviewError::NotPending(self.state));
        }
        if self.is_overdue(now) {
            return Err(ReviewError::Expired);
        }
        // Separation of duties is not a policy option: checked before, and whatever, the policies say.
        if reviewer == &self.requester {
            return Err(ReviewError::OwnRequest);
        }
        if !decision.allowed {
            return Err(ReviewError::NotAllowed {
                reviewer: reviewer.clone(),
                resource: self.resource.clone(),
                role: self.role.clone(),
            });
        }
        Ok(())
    }

    /// Adds `approver`'s approval; the last one needed approves the request and starts its grant.
    pub fn approve(
        &mut self,
        approver: &UserName,
        decision: &Decision,
        comment: Option<String>,
        policy_version: &str,
        now: OffsetDateTime,
        grant_id: GrantId,
    ) -> Result<Outcome, ReviewError> {
        self.check_reviewable(approver, decision, now)?;
        if self.approvals.iter().any(|a| &a.approver == approver) {
            return Err(ReviewError::AlreadyApproved(approver.clone()));
        }
        self.approvals.push(Approval {
            approver: approver.clone(),
            comment,
            at: now,
            decision: RecordedDecision::new(decision, policy_version),
        });
        let mut events = vec![self.event(EventKind::ApprovalAdded, approver.as_str(), now)];
        let grant =
            (self.approvals.len() as u32 >= self.required_approvals).then(|| self.grant(grant_id, now, &mut events));
        Ok(Outcome { grant, events })
    }

    /// Denies the request: one denial from an allowed reviewer ends it.
    pub fn deny(
        &mut self,
        reviewer: &UserName,
        decision: &Decision,
        reason: &Reason,
        now: OffsetDateTime,
    ) -> Result<AuditEvent, ReviewError> {
        self.check_reviewable(reviewer, decision, now)?;
        Ok(self.close(RequestState::Denied, reviewer.as_str(), Some(reason.to_string()), now, EventKind::RequestDenied))
    }

    /// Withdraws a pending request; only its requester can.
    pub fn cancel(&mut self, by: &UserName, now: OffsetDateTime) -> Result<AuditEvent, CancelError> {
        if by != &self.requester {
            return Err(CancelError::NotRequester);
        }
        if self.state != RequestState::Pending {
            return Err(CancelError::NotPending(self.state));
        }
        Ok(self.close(RequestState::Cancelled, by.as_str(), None, now, EventKind::RequestCancelled))
    }

    /// Ends a pending request whose requester was disabled.
    pub fn withdraw(&mut self, by: &str, reason: &str, now: OffsetDateTime) -> Option<AuditEvent> {
        (self.state == RequestState::Pending)
            .then(|| self.close(RequestState::Cancelled, by, Some(reason.to_owned()), now, EventKind::RequestCancelled))
    }

    /// Expires the request if it is pending past its time.
    pub fn expire(&mut self, now: OffsetDateTime) -> Option<AuditEvent> {
        self.is_overdue(now).then(|| {
            self.close(
                RequestState::Expired,
                SYSTEM_ACTOR,
                Some("not reviewed in time".into()),
                now,
                EventKind::RequestExpired,
            )
        })
    }

    fn close(
        &mut self,
        state: RequestState,
        by: &str,
        reason: Option<String>,
        now: OffsetDateTime,
        kind: EventKind,
    ) -> AuditEvent {
        self.state = state;
        self.closure = Some(Closure { by: by.to_owned(), reason, at: now });
        self.event(kind, by, now)
    }

    fn grant(&mut self, id: GrantId, now: OffsetDateTime, events: &mut Vec<AuditEvent>) -> Grant {
        let actor = self.approvals.last().map_or(SYSTEM_ACTOR, |a| a.approver.as_str()).to_owned();
        self.grant_by(actor, id, now, events)
    }

    /// Approves the request on `actor`'s word and starts its grant.
    fn grant_by(&mut self, actor: String, id: GrantId, now: OffsetDateTime, events: &mut Vec<AuditEvent>) -> Grant {
        self.state = RequestState::Approved;
        let grant = Grant {
            id,
            request_id: self.id,
            holder: self.requester.clone(),
            resource: self.resource.clone(),
            role: self.role.clone(),
            starts_at: now,
            ends_at: now + self.duration.as_time(),
            state: GrantState::Active,
            closure: None,
        };
        events.push(self.event(EventKind::RequestApproved, &actor, now));
        events.push(grant.event(EventKind::GrantStarted, &actor, now));
        grant
    }

    fn event(&self, kind: EventKind, actor: &str, at: OffsetDateTime) -> AuditEvent {
        AuditEvent { kind, actor: actor.to_owned(), at, details: json!({ "request": self }) }
    }
}

impl Grant {
    /// Whether the grant is active at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.state == GrantState::Active && now < self.ends_at
    }

    /// Ends the grant if its time is up.
    pub fn expire(&mut self, now: OffsetDateTime) -> Option<AuditEvent> {
        (self.state == GrantState::Active && now >= self.ends_at)
            .then(|| self.end(GrantState::Expired, SYSTEM_ACTOR, None, now, EventKind::GrantExpired))
    }

    /// Ends the grant at once.
    pub fn revoke(&mut self, by: &str, reason: &str, now: OffsetDateTime) -> Result<AuditEvent, NotActive> {
        if self.state != GrantState::Active {
            return Err(NotActive(self.state));
        }
        Ok(self.end(GrantState::Revoked, by, Some(reason.to_owned()), now, EventKind::GrantRevoked))
    }

    fn end(
        &mut self,
        state: GrantState,
        by: &str,
        reason: Option<String>,
        now: OffsetDateTime,
        kind: EventKind,
    ) -> AuditEvent {
        self.state = state;
        self.closure = Some(Closure { by: by.to_owned(), reason, at: now });
        self.event(kind, by, now)
    }

    fn event(&self, kind: EventKind, actor: &str, at: OffsetDateTime) -> AuditEvent {
        AuditEvent { kind, actor: actor.to_owned(), at, details: json!({ "grant": self }) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use uuid::Uuid;

    const T0: OffsetDateTime = datetime!(2026-11-23 10:00 UTC);

    fn allow() -> Decision {
        Decision { allowed: true, policies: vec!["p".into()], errors: vec![] }
    }

    fn deny() -> Decision {
        Decision { allowed: false, policies: vec![], errors: vec![] }
    }

    fn role(approvals: u32) -> Role {
        Role {
            name: "write".parse().unwrap(),
            max_duration: GrantDuration::parse("30m").unwrap(),
            approvals,
            break_glass_max: GrantDuration::parse("1h").unwrap(),
            database_roles: Vec::new(),
            allow_statements: Vec::new(),
            keep_tables: false,
        }
    }

    fn gid(n: u128) -> GrantId {
        GrantId::from_uuid(Uuid::from_u128(n))
    }

    fn user(name: &str) -> UserName {
        name.parse().unwrap()
    }

    fn open(approvals: u32, duration: &str, auto: bool) -> Result<(AccessRequest, Outcome), OpenError> {
        let new = NewRequest {
            id: RequestId::from_uuid(Uuid::from_u128(1)),
            requester: user("alice"),
            resource: "demo-db".parse().unwrap(),
            role: "write".parse().unwrap(),
            duration: GrantDuration::parse(duration).unwrap(),
            reason: Reason::parse("INC-7").unwrap(),
            incident: None,
            source_ip: [10, 0, 0, 7].into(),
            mfa: false,
            device: None,
        };
        let auto = if auto { allow() } else { deny() };
        AccessRequest::open(new, &role(approvals), &allow(), &auto, "v1", T0, time::Duration::HOUR, gid(9))
    }

    fn kinds(events: &[AuditEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn duration_above_ceiling_names_the_maximum() {
        let error = open(1, "31m", false).unwrap_err();
        assert_eq!(error.to_string(), "duration 31m is above the maximum of 30m for role `write`");
    }

    #[test]
    fn auto_approval_starts_the_grant_at_once() {
        let (request, outcome) = open(2, "10m", true).unwrap();
        assert_eq!(request.state, RequestState::Approved);
        assert!(request.auto_approved);
        let grant = outcome.grant.unwrap();
        assert_eq!((grant.starts_at, grant.ends_at), (T0, T0 + time::Duration::minutes(10)));
        assert_eq!(kinds(&outcome.events), ["request.created", "request.approved", "grant.started"]);
        assert_eq!(outcome.events[0].details["request"]["required_approvals"], 2, "recorded as created");
    }

    #[test]
    fn two_distinct_approvals_make_one_grant() {
        let (mut request, _) = open(2, "10m", false).unwrap();
        let later = T0 + time::Duration::minutes(5);
        let first = request.approve(&user("bob"), &allow(), None, "v1", later, gid(2)).unwrap();
        assert_eq!((first.grant.is_none(), kinds(&first.events)), (true, vec!["request.approval_added"]));
        assert_eq!(
            request.approve(&user("bob"), &allow(), None, "v1", later, gid(3)),
            Err(ReviewError::AlreadyApproved(user("bob")))
        );
        let second = request.approve(&user("carol"), &allow(), Some("ok".into()), "v1", later, gid(4)).unwrap();
        let grant = second.grant.unwrap();
        assert_eq!((grant.id, grant.starts_at, grant.ends_at), (gid(4), later, later + time::Duration::minutes(10)));
        assert_eq!(kinds(&second.events), ["request.approval_added", "request.approved", "grant.started"]);
        assert_eq!(
            request.approve(&user("dave"), &allow(), None, "v1", later, gid(5)),
            Err(ReviewError::NotPending(RequestState::Approved))
        );
    }

    #[test]
    fn nobody_reviews_their_own_request_whatever_the_policies_say() {
        let (mut request, _) = open(1, "10m", false).unwrap();
        assert_eq!(request.approve(&user("alice"), &allow(), None, "v1", T0, gid(2)), Err(ReviewError::OwnRequest));
        assert_eq!(
            request.deny(&user("alice"), &allow(), &Reason::parse("no").unwrap(), T0),
            Err(ReviewError::OwnRequest)
        );
        assert_eq!(request.state, RequestState::Pending);
        assert!(request.approvals.is_empty());
    }

    #[test]
    fn reviewers_need_a_policy() {
        let (mut request, _) = open(1, "10m", false).unwrap();
        let error = request.approve(&user("eve"), &deny(), None, "v1", T0, gid(2)).unwrap_err();
        assert_eq!(error.to_string(), "no policy allows `eve` to review role `write` on `demo-db`");
    }

    #[test]
    fn one_denial_ends_the_request() {
        let (mut request, _) = open(2, "10m", false).unwrap();
        request.approve(&user("bob"), &allow(), None, "v1", T0, gid(2)).unwrap();
        let event = request.deny(&user("carol"), &allow(), &Reason::parse("not now").unwrap(), T0).unwrap();
        assert_eq!((event.kind, request.state), (EventKind::RequestDenied, RequestState::Denied));
        assert_eq!(
            request.approve(&user("dave"), &allow(), None, "v1", T0, gid(3)),
            Err(ReviewError::NotPending(RequestState::Denied))
        );
    }

    #[test]
    fn pending_requests_expire_and_cannot_be_approved_late() {
        let (mut request, _) = open(1, "10m", false).unwrap();
        let late = T0 + time::Duration::HOUR;
        assert_eq!(request.approve(&user("bob"), &allow(), None, "v1", late, gid(2)), Err(ReviewError::Expired));
        assert!(request.expire(T0 + time::Duration::minutes(59)).is_none());
        assert_eq!(request.expire(late).map(|e| e.kind), Some(EventKind::RequestExpired));
        assert!(request.expire(late).is_none(), "expiry happens once");
    }

    #[test]
    fn only_the_requester_cancels() {
        let (mut request, _) = open(1, "10m", false).unwrap();
        assert_eq!(request.cancel(&user("bob"), T0), Err(CancelError::NotRequester));
        request.cancel(&user("alice"), T0).unwrap();
        assert_eq!(request.cancel(&user("alice"), T0), Err(CancelError::NotPending(RequestState::Cancelled)));
    }

    #[test]
    fn grants_end_once_at_their_end_or_at_revoke() {
        let (_, outcome) = open(1, "10m", true).unwrap();
        let mut grant = outcome.grant.unwrap();
        let end = T0 + time::Duration::minutes(10);
        assert!(grant.is_live(end - time::Duration::milliseconds(1)));
        assert!(!grant.is_live(end));
        assert!(grant.expire(end - time::Duration::milliseconds(1)).is_none());
        assert_eq!(grant.expire(end).map(|e| e.kind), Some(EventKind::GrantExpired));
        assert_eq!(grant.revoke("bob", "too late", end), Err(NotActive(GrantState::Expired)));

        let (_, outcome) = open(1, "10m", true).unwrap();
        let mut grant = outcome.grant.unwrap();
        grant.revoke("bob", "done", T0).unwrap();
        assert_eq!(grant.state, GrantState::Revoked);
        assert!(grant.expire(end).is_none(), "a revoked grant does not expire again");
    }
}
