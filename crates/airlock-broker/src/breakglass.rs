//! Emergency access: break the glass, then answer for it. A `break_glass` policy decision starts
//! a grant at once, cut to the role's break-glass ceiling; the grant owes a review by somebody
//! other than its holder. A rejected review ends the grant if it is still live and, when
//! configured, bars the holder from break-glass until an administrator lifts the bar. Reviews
//! still open when due are escalated by the scheduler's sweep.

use std::sync::Arc;

use airlock_core::audit::{AuditEvent, EventKind};
use airlock_core::breakglass::{Review, ReviewState, Verdict};
use airlock_core::ids::{GrantId, IncidentId, RequestId, ResourceName, RoleName, UserName};
use airlock_core::lifecycle::{AccessRequest, Grant, NewRequest, OpenError};
use airlock_core::policy::Action;
use airlock_core::values::{GrantDuration, Reason};
use airlock_store::Tx;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::broker::{Broker, BrokerError, Caller, MAX_LIST_LIMIT, ask, first_visible};
use crate::bundle::PolicyBundle;

/// What an emergency asks for, as the caller typed it. Without a duration, the role's
/// break-glass ceiling.
#[derive(Debug, Clone)]
pub struct BreakGlassInput {
    pub resource: ResourceName,
    pub role: RoleName,
    pub duration: Option<GrantDuration>,
    pub reason: Reason,
    /// The open incident the emergency is part of: the grant ends when it closes.
    pub incident: Option<IncidentId>,
}

/// A broken glass: the approved request, its live grant, the review it owes, and whether the
/// asked duration was cut to the ceiling.
#[derive(Debug, Clone)]
pub struct BrokenGlass {
    pub request: AccessRequest,
    pub grant: Grant,
    pub review: Review,
    pub cut_to_ceiling: bool,
}

/// The reason recorded when a rejected review ends the grant.
const REJECTED: &str = "break-glass review rejected";

impl Broker {
    /// Grants emergency access at once, when a `break_glass` policy allows it, the caller proved
    /// a fresh second factor (`[mfa] breakglass`) and is not barred; the grant owes a review. A
    /// refusal by the policies is recorded like a refused request.
    pub async fn break_glass(&self, caller: &Caller, input: BreakGlassInput) -> Result<BrokenGlass, BrokerError> {
        loop {
            if let Some(broken) = self.break_glass_with(&self.policies(), caller, input.clone()).await? {
                return Ok(broken);
            }
            // The policies were replaced while the glass was being broken: decide again.
        }
    }

    /// Breaks the glass as `bundle` decides; `None`, with nothing recorded, when `bundle` was
    /// replaced before the grant could be recorded.
    async fn break_glass_with(
        &self,
        bundle: &Arc<PolicyBundle>,
        caller: &Caller,
        input: BreakGlassInput,
    ) -> Result<Option<BrokenGlass>, BrokerError> {
        let (resource, role) = Self::resource_and_role(bundle, &input.resource, &input.role)?;
        let now = self.clock().now();
        let asked = input.duration.unwrap_or(role.break_glass_max);
        let incident = self.incident_named(input.incident.as_ref()).await?.map(|i| i.reference());
        let new = NewRequest {
            id: RequestId::from_uuid(Uuid::now_v7()),
            requester: caller.principal.name.clone(),
            resource: input.resource,
            role: input.role,
            duration: asked,
            reason: input.reason,
            incident,
            source_ip: caller.source_ip,
            mfa: self.has_fresh_mfa(caller, now),
            device: caller.device.map(|d| d.id),
        };
        let decision = ask(bundle, Action::BreakGlass, &caller.principal, resource, &new.facts(now), None);
        let grant_id = GrantId::from_uuid(Uuid::now_v7());
        let (request, grant, mut events) =
            match AccessRequest::break_glass(new.clone(), role, &decision, &bundle.version, now, grant_id) {
                Ok(broken) => broken,
                Err(error) => {
                    if let OpenError::Refused { decision, .. } = &error {
                        self.record_refusal(&new, caller, decision, now).await?;
                    }
                    return Err(error.into());
                }
            };
        // Asked only of those the policies would let through: nobody is told to prove a factor
        // for what they may not have anyway.
        if self.settings.mfa.breakglass {
            self.require_fresh_mfa(caller, now, "break-glass")?;
        }
        let (review, used) = Review::open(&request, &grant, self.settings.breakglass.review_within.as_time());
        events.push(used);
        let mut tx = self.store().begin().await?;
        if !self.policies_are(bundle) {
            return Ok(None);
        }
        Self::ensure_enabled(&mut tx, caller).await?;
        if let Some(grant) = tx.breakglass_bar(&caller.principal.name).await? {
            return Err(BrokerError::BreakGlassBarred { grant });
        }
        Self::ensure_incident_open(&mut tx, &request).await?;
        tx.insert_request(&request).await?;
        tx.insert_grant(&grant).await?;
        tx.insert_review(&review).await?;
        tx.append(events).await?;
        tx.commit().await?;
        self.deadlines().notify_one();
        self.grants_changed();
        Ok(Some(BrokenGlass { cut_to_ceiling: request.duration < asked, request, grant, review }))
    }

    /// Answers the review that break-glass grant `grant_id` owes. Reviewers are those who may
    /// approve requests for its role, and auditors; never its holder.
    pub async fn review_break_glass(
        &self,
        caller: &Caller,
        grant_id: &str,
        verdict: Verdict,
        comment: Reason,
    ) -> Result<Review, BrokerError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        Self::ensure_enabled(&mut tx, caller).await?;
        let not_found = || BrokerError::ReviewNotFound(grant_id.to_owned());
        let mut review = tx.review(grant_id).await?.ok_or_else(not_found)?;
        let request = tx.request(&review.request.to_string()).await?.ok_or_else(not_found)?;
        if !self.may_see(caller, &request, now) {
            return Err(not_found());
        }
        let allowed =
            self.is_auditor(caller) || self.decide(&self.policies(), Action::Approve, caller, &request, now).allowed;
        let mut reviewed = review.answer(&caller.principal.name, allowed, verdict, comment, now)?;
        let bars = review.state == ReviewState::Rejected && self.settings.breakglass.reject_bars_holder;
        reviewed.details["bars_holder"] = json!(bars);
        tx.update_review(&review).await?;
        let ended = match review.state {
            ReviewState::Rejected => self.end_rejected_grant(&mut tx, caller, &review, now).await?,
            _ => None,
        };
        if bars {
            tx.bar_from_breakglass(&review.holder, &review.grant, now).await?;
        }
        let grant_ended = ended.is_some();
        tx.append([reviewed].into_iter().chain(ended).collect()).await?;
        tx.commit().await?;
        if grant_ended {
            self.grants_changed();
        }
        Ok(review)
    }

    /// Ends the rejected review's grant if it is still active.
    async fn end_rejected_grant(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        review: &Review,
        now: OffsetDateTime,
    ) -> Result<Option<AuditEvent>, BrokerError> {
        let Some(mut grant) = tx.grant(&review.grant.to_string()).await? else { return Ok(None) };
        let ended = match grant.expire(now) {
            Some(expired) => Some(expired),
            None => grant.revoke(caller.principal.name.as_str(), REJECTED, now).ok(),
        };
        if ended.is_some() {
            tx.update_grant(&grant).await?;
        }
        Ok(ended)
    }

    /// Break-glass reviews the caller may see (their own, those they may review, all for
    /// auditors), newest first.
    pub async fn reviews(&self, caller: &Caller, open_only: bool, limit: u32) -> Result<Vec<Review>, BrokerError> {
        let now = self.clock().now();
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        first_visible(
            limit,
            |after| async move { self.store().reviews(open_only, limit, after.as_ref()).await },
            |page| async move {
                let mut visible = Vec::new();
                for review in page {
                    if self.sees_held(caller, &review.holder, &review.request, now).await? {
                        visible.push(review);
                    }
                }
                Ok(visible)
            },
        )
        .await
    }

    /// Escalates every open review that has come due; part of the scheduler's sweep.
    pub(crate) async fn escalate_overdue_reviews(
        &self,
        tx: &mut Tx,
        now: OffsetDateTime,
    ) -> Result<Vec<AuditEvent>, BrokerError> {
        let mut events = Vec::new();
        for mut review in tx.unescalated_overdue_reviews(now).await? {
            if let Some(event) = review.escalate(now) {
                tx.update_review(&review).await?;
                events.push(event);
            }
        }
        Ok(events)
    }

    /// Lifts the bar a rejected review put on `user`; says whether there was one.
    pub async fn lift_breakglass_bar(&self, user: &UserName, actor: &str) -> Result<bool, BrokerError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let Some(barred_by) = tx.breakglass_bar(user).await? else { return Ok(false) };
        tx.lift_breakglass_bar(user).await?;
        let details = json!({ "user": user, "barred_by_grant": barred_by });
        tx.append(vec![AuditEvent {
            kind: EventKind::UserBreakGlassRestored,
            actor: actor.to_owned(),
            at: now,
            details,
        }])
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
