//! The use cases. Each one authorises its caller, runs the core transition, and writes the new
//! state with its audit events in one transaction: both land or neither does.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use airlock_core::audit::{AuditEvent, EventKind, SYSTEM_ACTOR};
use airlock_core::breakglass::AnswerError;
use airlock_core::catalog::{Resource, Role};
use airlock_core::device::DeviceKey;
use airlock_core::ids::{
    DeviceId, GrantId, GroupName, IncidentId, RequestId, ResourceName, RoleName, TokenId, UserName,
};
use airlock_core::incident::{Playbook, arming};
use airlock_core::lifecycle::{
    AccessRequest, CancelError, Grant, GrantState, NewRequest, NotActive, OpenError, ReviewError,
};
use airlock_core::policy::{Action, Decision, Facts, Principal};
use airlock_core::values::{GrantDuration, Reason};
use airlock_store::{GrantFilter, RequestFilter, Store, StoreError, Tx};
use arc_swap::ArcSwap;
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::appender::{AppendError, Appender};
use crate::bundle::PolicyBundle;
use crate::clock::Clock;
use crate::config::{BreakGlassSection, Config, IdentitySection, IncidentsSection, MfaSection};
use crate::devices::SeenNonces;
use crate::secrets::{BrokerKey, SecretError};

/// How an error should be reported: the HTTP edge and the CLI map these to codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadInput,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    /// Allowed only with a fresh second factor, which the caller has not proved.
    MfaRequired,
    /// Too many attempts: try again later.
    RateLimited,
    /// The store cannot write for now (a full disk, a read-only database, a lock held
    /// elsewhere, an I/O error): nothing was changed; try again later.
    Unavailable,
    Internal,
}

/// Why a use case did not happen. Nothing was changed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("missing or invalid API token, or the user is disabled")]
    Unauthenticated,
    #[error("unknown resource `{0}`")]
    UnknownResource(ResourceName),
    #[error("resource `{resource}` has no role `{role}`")]
    UnknownRole { resource: ResourceName, role: RoleName },
    #[error("request `{0}` not found")]
    RequestNotFound(String),
    #[error("grant `{0}` not found")]
    GrantNotFound(String),
    #[error("no redacted value with commitment `{0}` can be proven (unknown, or its salt was deleted)")]
    CommitmentNotFound(String),
    #[error("no break-glass review for grant `{0}`")]
    ReviewNotFound(String),
    #[error(
        "you may not break the glass: a review rejected your break-glass grant `{grant}`; an administrator can lift this (`airlock admin user allow-breakglass`)"
    )]
    BreakGlassBarred { grant: String },
    #[error(transparent)]
    Answer(#[from] airlock_core::breakglass::AnswerError),
    #[error("user `{0}` not found")]
    UserNotFound(UserName),
    #[error("incident `{0}` not found")]
    IncidentNotFound(String),
    #[error("unknown incident `{0}`: requests may name only an open incident (`airlock incident list --open`)")]
    UnknownIncident(IncidentId),
    #[error("incident `{0}` is closed: access can no longer be given for it")]
    IncidentNotOpen(IncidentId),
    #[error("incident `{0}` is open with another severity, title or responders; close it, or open another id")]
    IncidentDiffers(IncidentId),
    #[error("incident `{0}` was closed; incident ids are not reused")]
    IncidentIdUsed(IncidentId),
    #[error(transparent)]
    IncidentClosed(#[from] airlock_core::incident::AlreadyClosed),
    #[error("only members of the incident manager groups (`[incidents] managers`) may open and close incidents")]
    IncidentsForbidden,
    #[error("only auditors and incident managers may read an incident's report")]
    IncidentReportForbidden,
    #[error(transparent)]
    DeviceProof(#[from] crate::devices::DeviceProofError),
    #[error("the device's enrollment was refused: {0}")]
    BadEnrollment(airlock_core::device::ProofError),
    #[error("this key is already enrolled as a device; each device has its own key")]
    DeviceKeyKnown,
    #[error("device `{0}` is disabled, for good")]
    DeviceDisabled(DeviceId),
    #[error("device `{0}` not found")]
    DeviceNotFound(DeviceId),
    #[error(
        "credentials for `{0}` are bound to a trusted device: ask from a device an administrator approved (`airlock device enroll`, `airlock device list`)"
    )]
    TrustedDeviceRequired(ResourceName),
    #[error("user `{0}` already exists")]
    UserExists(UserName),
    #[error("user `{0}` is disabled")]
    UserDisabled(UserName),
    #[error("token `{0}` not found")]
    TokenNotFound(String),
    #[error("token `{0}` has already ended")]
    TokenEnded(String),
    #[error("a token's expiry must be in the future")]
    TokenExpiryPast,
    #[error("{0} needs a fresh second factor: run `airlock mfa verify CODE` (or pass --otp CODE) and try again")]
    MfaRequired(&'static str),
    #[error("no authenticator is enrolled: run `airlock mfa enroll` first")]
    MfaNotEnrolled,
    #[error("an authenticator is already enrolled; an administrator can reset it (`airlock admin user reset-mfa`)")]
    MfaAlreadyEnrolled,
    #[error("second factor refused: {0}")]
    Mfa(airlock_core::mfa::MfaError),
    #[error("this is an API token, not a login: API tokens end by `airlock admin token revoke`")]
    NotALogin,
    #[error("the refresh token is not valid (unknown, ended, or already used)")]
    RefreshRefused,
    #[error(transparent)]
    SignIn(#[from] crate::logins::SignInError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Review(#[from] ReviewError),
    #[error(transparent)]
    Cancel(#[from] CancelError),
    #[error(transparent)]
    NotActive(#[from] NotActive),
    #[error("only members of the auditor groups or of `monitoring` may read the metrics")]
    MetricsForbidden,
    #[error("bad report window: {0}")]
    BadWindow(String),
    #[error("only members of the auditor groups may read the audit chain and its reports")]
    AuditForbidden,
    #[error("only service accounts in the `gateways` group may act as a gateway")]
    GatewayForbidden,
    #[error("{0}")]
    GatewayEvents(String),
    #[error(transparent)]
    Credential(#[from] airlock_core::credential::IssueError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("cannot sign: {0}")]
    Sign(#[from] airlock_core::audit::checkpoint::SignatureError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BrokerError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            BrokerError::Unauthenticated => ErrorKind::Unauthenticated,
            BrokerError::UnknownResource(_) | BrokerError::UnknownRole { .. } => ErrorKind::BadInput,
            BrokerError::Open(OpenError::TooLong { .. }) => ErrorKind::BadInput,
            BrokerError::Open(OpenError::Refused { .. }) => ErrorKind::Forbidden,
            BrokerError::UnknownIncident(_) => ErrorKind::BadInput,
            BrokerError::IncidentNotOpen(_)
            | BrokerError::IncidentDiffers(_)
            | BrokerError::IncidentIdUsed(_)
            | BrokerError::IncidentClosed(_) => ErrorKind::Conflict,
            BrokerError::IncidentsForbidden | BrokerError::IncidentReportForbidden => ErrorKind::Forbidden,
            BrokerError::RequestNotFound(_)
            | BrokerError::IncidentNotFound(_)
            | BrokerError::GrantNotFound(_)
            | BrokerError::UserNotFound(_)
            | BrokerError::ReviewNotFound(_)
            | BrokerError::CommitmentNotFound(_) => ErrorKind::NotFound,
            BrokerError::Answer(AnswerError::NotOpen(_)) => ErrorKind::Conflict,
            BrokerError::Answer(_) | BrokerError::BreakGlassBarred { .. } => ErrorKind::Forbidden,
            BrokerError::Review(ReviewError::OwnRequest | ReviewError::NotAllowed { .. })
            | BrokerError::Cancel(CancelError::NotRequester)
            | BrokerError::AuditForbidden
            | BrokerError::MetricsForbidden
            | BrokerError::GatewayForbidden => ErrorKind::Forbidden,
            BrokerError::GatewayEvents(_) | BrokerError::BadWindow(_) => ErrorKind::BadInput,
            BrokerError::Review(_)
            | BrokerError::Cancel(_)
            | BrokerError::NotActive(_)
            | BrokerError::UserExists(_)
            | BrokerError::UserDisabled(_)
            | BrokerError::TokenEnded(_)
            | BrokerError::MfaNotEnrolled
            | BrokerError::MfaAlreadyEnrolled
            | BrokerError::NotALogin
            | BrokerError::SignIn(_) => ErrorKind::Conflict,
            BrokerError::TokenNotFound(_) | BrokerError::DeviceNotFound(_) => ErrorKind::NotFound,
            BrokerError::DeviceProof(crate::devices::DeviceProofError::TooMany) => ErrorKind::RateLimited,
            BrokerError::DeviceProof(_) => ErrorKind::Unauthenticated,
            BrokerError::DeviceKeyKnown | BrokerError::DeviceDisabled(_) => ErrorKind::Conflict,
            BrokerError::BadEnrollment(_) => ErrorKind::BadInput,
            BrokerError::TrustedDeviceRequired(_) => ErrorKind::Forbidden,
            BrokerError::TokenExpiryPast => ErrorKind::BadInput,
            BrokerError::MfaRequired(_) => ErrorKind::MfaRequired,
            BrokerError::Mfa(airlock_core::mfa::MfaError::TooManyAttempts { .. }) => ErrorKind::RateLimited,
            BrokerError::Mfa(airlock_core::mfa::MfaError::BadSeed) => ErrorKind::Internal,
            BrokerError::Mfa(_) => ErrorKind::Forbidden,
            BrokerError::RefreshRefused => ErrorKind::Unauthenticated,
            BrokerError::Credential(airlock_core::credential::IssueError::GrantNotLive { .. }) => ErrorKind::Conflict,
            BrokerError::Credential(_) => ErrorKind::Internal,
            BrokerError::Store(e) if e.fault().is_some() => ErrorKind::Unavailable,
            BrokerError::Append(e) if e.fault().is_some() => ErrorKind::Unavailable,
            BrokerError::Secret(_) | BrokerError::Sign(_) | BrokerError::Append(_) | BrokerError::Store(_) => {
                ErrorKind::Internal
            }
        }
    }
}

/// An authenticated caller and where they connected from.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub source_ip: IpAddr,
    /// When the caller last proved a second factor with the token they called with.
    pub mfa_at: Option<OffsetDateTime>,
    /// The token they called with; `None` for callers inside the process (administration, tests).
    pub token: Option<TokenId>,
    /// The approved device the call was proved from (`context.device.trusted`).
    pub device: Option<TrustedDevice>,
}

/// A device an administrator approved, whose key signed the caller's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedDevice {
    pub id: DeviceId,
    pub key: DeviceKey,
}

/// What a new request asks for, as the caller typed it.
#[derive(Debug, Clone)]
pub struct RequestInput {
    pub resource: ResourceName,
    pub role: RoleName,
    pub duration: GrantDuration,
    pub reason: Reason,
    /// The open incident the request is made for.
    pub incident: Option<IncidentId>,
}

/// How the broker behaves, from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pending_ttl: GrantDuration,
    pub auditors: Vec<GroupName>,
    pub breakglass: BreakGlassSection,
    pub incidents: IncidentsSection,
    pub identity: IdentitySection,
    pub mfa: MfaSection,
}

impl From<&Config> for Settings {
    fn from(config: &Config) -> Self {
        Self {
            pending_ttl: config.broker.pending_ttl,
            auditors: config.broker.auditors.clone(),
            breakglass: config.breakglass.clone(),
            incidents: config.incidents.clone(),
            identity: config.identity.clone(),
            mfa: config.mfa.clone(),
        }
    }
}

/// What disabling a user or a device ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ended {
    pub requests_cancelled: usize,
    pub grants_revoked: usize,
    pub tokens_ended: usize,
}

/// What one pass of the expiry sweep ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub requests_expired: usize,
    pub grants_expired: usize,
    pub reviews_escalated: usize,
}

/// The broker: policies, store and clock, shared by every HTTP handler and the scheduler.
#[derive(Clone)]
pub struct Broker {
    store: Store,
    /// Replaced as a whole when the policies change ([`Broker::load_policies`]); each decision
    /// loads it once and decides with that one bundle throughout.
    pub(crate) policies: Arc<ArcSwap<PolicyBundle>>,
    clock: Arc<dyn Clock>,
    pub(crate) settings: Arc<Settings>,
    /// Woken whenever a new deadline appears, so the scheduler can sleep until the next one.
    deadlines: Arc<Notify>,
    /// Bumped whenever a grant starts or ends in this process, so connectors act at once.
    grant_changes: Arc<watch::Sender<u64>>,
    /// Signs credentials, audit checkpoints and export seals.
    key: Arc<BrokerKey>,
    /// Group commit for [`Broker::record`].
    appender: Appender,
    /// Device proofs accepted lately, so each works once.
    pub(crate) seen_nonces: Arc<SeenNonces>,
}

pub(crate) fn new_id() -> Uuid {
    Uuid::now_v7()
}

impl Broker {
    /// A broker over `store`. Call inside a Tokio runtime: it starts the audit writer task.
    pub fn new(
        mut store: Store,
        policies: PolicyBundle,
        clock: Arc<dyn Clock>,
        settings: Settings,
        key: BrokerKey,
    ) -> Self {
        store.observe_commits(Arc::new(crate::metrics::CommitMetrics));
        // Records are timed when they are appended, by the broker's clock (so tests move it too).
        let appended_at = clock.clone();
        store.set_clock(Arc::new(move || appended_at.now()));
        Self {
            key: Arc::new(key),
            appender: Appender::start(store.clone()),
            store,
            policies: Arc::new(ArcSwap::from_pointee(policies)),
            clock,
            settings: Arc::new(settings),
            deadlines: Arc::new(Notify::new()),
            grant_changes: Arc::new(watch::Sender::new(0)),
            seen_nonces: Arc::default(),
        }
    }

    /// Changes whenever a grant starts or ends through this broker. (A grant ended by another
    /// process, such as `airlock admin user disable`, is seen at a subscriber's next periodic pass.)
    pub fn watch_grants(&self) -> watch::Receiver<u64> {
        self.grant_changes.subscribe()
    }

    pub(crate) fn grants_changed(&self) {
        self.grant_changes.send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Every grant live at the clock's `now`, whatever its holder: for target connectors.
    pub async fn live_grants(&self) -> Result<Vec<Grant>, BrokerError> {
        let now = self.clock.now();
        Ok(self.store.active_grants().await?.into_iter().filter(|g| g.is_live(now)).collect())
    }

    /// The grant `id` if it is live at the clock's `now`, whatever its holder: for gateways.
    pub async fn live_grant(&self, id: &GrantId) -> Result<Option<Grant>, BrokerError> {
        let now = self.clock.now();
        Ok(self.store.grant(&id.to_string()).await?.filter(|g| g.is_live(now)))
    }

    /// Records what a target connector did (or failed to do) in the audit chain.
    pub async fn record_target_event(&self, kind: EventKind, details: serde_json::Value) -> Result<(), BrokerError> {
        let event = AuditEvent { kind, actor: SYSTEM_ACTOR.to_owned(), at: self.clock.now(), details };
        self.record(&[event]).await
    }

    /// Appends events that a gateway or connector observed (sessions, statements) to the audit
    /// chain, in order, committed together with whatever other callers append at the same time.
    pub async fn record(&self, events: &[AuditEvent]) -> Result<(), BrokerError> {
        Ok(self.appender.append(events.to_vec()).await?)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The broker's signing key.
    pub fn key(&self) -> &BrokerKey {
        &self.key
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// The policies in force now. Load them once per decision: they may be replaced at any time.
    pub fn policies(&self) -> Arc<PolicyBundle> {
        self.policies.load_full()
    }

    /// Whether `bundle` is still the broker's policies. Checked inside the transaction that
    /// records a decision made outside it: policies are replaced only inside the transaction
    /// that re-evaluates the grants ([`Broker::load_policies`]), so a decision that passes this
    /// check commits either before the re-evaluation reads the grants, or with the new policies.
    pub(crate) fn policies_are(&self, bundle: &Arc<PolicyBundle>) -> bool {
        Arc::ptr_eq(&self.policies.load(), bundle)
    }

    pub(crate) fn deadlines(&self) -> &Notify {
        &self.deadlines
    }

    /// The resource and role a request names, from `bundle`'s catalog.
    pub(crate) fn resource_and_role<'b>(
        bundle: &'b PolicyBundle,
        resource: &ResourceName,
        role: &RoleName,
    ) -> Result<(&'b Resource, &'b Role), BrokerError> {
        let found = bundle.catalog.resource(resource).ok_or_else(|| BrokerError::UnknownResource(resource.clone()))?;
        let role = found
            .roles
            .get(role)
            .ok_or_else(|| BrokerError::UnknownRole { resource: resource.clone(), role: role.clone() })?;
        Ok((found, role))
    }

    /// Asks `bundle`'s policies about `request` on behalf of `caller`.
    pub(crate) fn decide(
        &self,
        bundle: &PolicyBundle,
        action: Action,
        caller: &Caller,
        request: &AccessRequest,
        now: OffsetDateTime,
    ) -> Decision {
        let Some(resource) = bundle.catalog.resource(&request.resource) else {
            return Decision { allowed: false, policies: Vec::new(), errors: vec!["resource left the catalog".into()] };
        };
        // About the caller deciding (a reviewer): their address, second factor and device.
        let facts = Facts {
            source_ip: caller.source_ip,
            mfa: self.has_fresh_mfa(caller, now),
            trusted_device: caller.device.is_some(),
            ..request.facts(now)
        };
        bundle.engine.decide(action, &caller.principal, resource, &facts)
    }

    /// Auditors and members of the `monitoring` group (a metrics scraper's service account).
    pub fn may_read_metrics(&self, caller: &Caller) -> Result<(), BrokerError> {
        let monitoring = caller.principal.groups.iter().any(|g| g.as_str() == crate::metrics::MONITORING_GROUP);
        if monitoring || self.is_auditor(caller) { Ok(()) } else { Err(BrokerError::MetricsForbidden) }
    }

    pub(crate) fn is_auditor(&self, caller: &Caller) -> bool {
        caller.principal.groups.iter().any(|g| self.settings.auditors.contains(g))
    }

    /// Whether `caller` may see `request`: their own, one they may review, or any for auditors.
    pub(crate) fn may_see(&self, caller: &Caller, request: &AccessRequest, now: OffsetDateTime) -> bool {
        request.requester == caller.principal.name
            || self.is_auditor(caller)
            // A guard, not a clone of the bundle: listings call this once per row.
            || self.decide(&self.policies.load(), Action::Approve, caller, request, now).allowed
    }

    /// Opens a request; an auto-approved one comes back with its grant.
    pub async fn create_request(
        &self,
        caller: &Caller,
        input: RequestInput,
    ) -> Result<(AccessRequest, Option<Grant>), BrokerError> {
        loop {
            if let Some(opened) = self.open_request(&self.policies(), caller, input.clone()).await? {
                return Ok(opened);
            }
            // The policies were replaced while the request was decided: decide again.
        }
    }

    /// Opens a request decided by `bundle`; `None`, with nothing recorded, when `bundle` was
    /// replaced before the request could be recorded.
    async fn open_request(
        &self,
        bundle: &Arc<PolicyBundle>,
        caller: &Caller,
        input: RequestInput,
    ) -> Result<Option<(AccessRequest, Option<Grant>)>, BrokerError> {
        let (resource, role) = Self::resource_and_role(bundle, &input.resource, &input.role)?;
        let now = self.clock.now();
        let incident = self.incident_named(input.incident.as_ref()).await?;
        let playbooks = &self.settings.incidents.playbooks;
        let playbook = incident
            .as_ref()
            .and_then(|incident| arming(playbooks, incident, &caller.principal, &input.resource, &input.role));
        let new = NewRequest {
            id: RequestId::from_uuid(new_id()),
            requester: caller.principal.name.clone(),
            resource: input.resource,
            role: input.role,
            // A playbook's grants last at most its maximum: cut, not refused, in an emergency.
            duration: playbook.map_or(input.duration, |p| input.duration.min(p.max)),
            reason: input.reason,
            incident: incident.as_ref().map(|i| i.reference()),
            source_ip: caller.source_ip,
            mfa: self.has_fresh_mfa(caller, now),
            device: caller.device.map(|d| d.id),
        };
        let facts = new.facts(now);
        let request_decision = ask(bundle, Action::Request, &caller.principal, resource, &facts, playbook);
        let auto_decision = ask(bundle, Action::AutoApprove, &caller.principal, resource, &facts, playbook);
        let opened = AccessRequest::open(
            new.clone(),
            &ceiling(role, playbook),
            &request_decision,
            &auto_decision,
            &bundle.version,
            now,
            self.settings.pending_ttl.as_time(),
            GrantId::from_uuid(new_id()),
        );
        let (request, outcome) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                if let OpenError::Refused { decision, .. } = &error {
                    self.record_refusal(&new, caller, decision, now).await?;
                }
                return Err(error.into());
            }
        };
        let mut tx = self.store.begin().await?;
        if !self.policies_are(bundle) {
            return Ok(None);
        }
        Self::ensure_enabled(&mut tx, caller).await?;
        Self::ensure_incident_open(&mut tx, &request).await?;
        tx.insert_request(&request).await?;
        if let Some(grant) = &outcome.grant {
            tx.insert_grant(grant).await?;
        }
        tx.append(outcome.events).await?;
        tx.commit().await?;
        self.deadlines.notify_one();
        if outcome.grant.is_some() {
            self.grants_changed();
        }
        Ok(Some((request, outcome.grant)))
    }

    /// A refused request changes no state, but the refusal is part of the record.
    pub(crate) async fn record_refusal(
        &self,
        new: &NewRequest,
        caller: &Caller,
        decision: &airlock_core::lifecycle::RecordedDecision,
        now: OffsetDateTime,
    ) -> Result<(), BrokerError> {
        let mut request = json!({
            "id": new.id, "requester": new.requester, "resource": new.resource, "role": new.role,
            "duration": new.duration, "reason": new.reason, "decision": decision,
            "source_ip": caller.source_ip.to_string(),
        });
        if let Some(incident) = &new.incident {
            request["incident"] = json!(incident);
        }
        let event = AuditEvent {
            kind: EventKind::RequestRefused,
            actor: caller.principal.name.to_string(),
            at: now,
            details: json!({ "request": request }),
        };
        let mut tx = self.store.begin().await?;
        tx.append(vec![event]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Refuses a caller whose account, or the device they called from, was disabled after they
    /// authenticated: checked inside the use case's transaction, so a call in flight cannot
    /// outlive [`Broker::disable_user`] or [`Broker::disable_device`]. Callers without a stored
    /// account (the broker's own tests, administrators) are not refused.
    pub(crate) async fn ensure_enabled(tx: &mut Tx, caller: &Caller) -> Result<(), BrokerError> {
        if let Some(device) = caller.device
            && tx.device(device.id).await?.is_none_or(|d| !d.is_trusted())
        {
            return Err(crate::devices::DeviceProofError::Disabled(device.id).into());
        }
        match tx.user(&caller.principal.name).await? {
            Some(user) if user.disabled => Err(BrokerError::Unauthenticated),
            _ => Ok(()),
        }
    }

    /// Withdraws `requests` and ends `grants` (revoked, or expired when already past their end)
    /// in `tx` as `actor` for `reason`; returns what ended and the records to append.
    pub(crate) async fn end_access(
        tx: &mut Tx,
        requests: Vec<AccessRequest>,
        grants: Vec<Grant>,
        actor: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<(Ended, Vec<AuditEvent>), BrokerError> {
        let mut ended = Ended::default();
        let mut events = Vec::new();
        for mut request in requests {
            if let Some(event) = request.withdraw(actor, reason, now) {
                tx.update_request(&request).await?;
                events.push(event);
                ended.requests_cancelled += 1;
            }
        }
        for mut grant in grants {
            let event = grant.expire(now).map_or_else(|| grant.revoke(actor, reason, now), Ok)?;
            tx.update_grant(&grant).await?;
            events.push(event);
            ended.grants_revoked += usize::from(grant.state == GrantState::Revoked);
        }
        Ok((ended, events))
    }

    /// Loads a pending-or-not request for `caller` to review inside `tx`; an overdue one is
    /// expired first (and that expiry is committed, since it is true whatever the review would
    /// have said). A caller who may not see the request learns nothing about it, not even that
    /// it expired.
    async fn request_for_review(
        &self,
        caller: &Caller,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<(Tx, AccessRequest), BrokerError> {
        let mut tx = self.store.begin().await?;
        Self::ensure_enabled(&mut tx, caller).await?;
        let mut request = tx
            .request(id)
            .await?
            .filter(|r| self.may_see(caller, r, now))
            .ok_or_else(|| BrokerError::RequestNotFound(id.to_owned()))?;
        if let Some(event) = request.expire(now) {
            tx.update_request(&request).await?;
            tx.append(vec![event]).await?;
            tx.commit().await?;
            return Err(ReviewError::Expired.into());
        }
        Ok((tx, request))
    }

    /// Adds the caller's approval; the last one needed starts the grant.
    pub async fn approve(
        &self,
        caller: &Caller,
        id: &str,
        comment: Option<String>,
    ) -> Result<(AccessRequest, Option<Grant>), BrokerError> {
        let now = self.clock.now();
        let (mut tx, mut request) = self.request_for_review(caller, id, now).await?;
        // Loaded inside the transaction: policies are replaced only while holding it.
        let bundle = self.policies();
        let decision = self.decide(&bundle, Action::Approve, caller, &request, now);
        let sensitive = bundle.catalog.resource(&request.resource).is_some_and(|r| r.sensitive);
        if decision.allowed && sensitive && self.settings.mfa.sensitive_approvals {
            self.require_fresh_mfa(caller, now, "approving access to a sensitive resource")?;
        }
        let outcome = request.approve(
            &caller.principal.name,
            &decision,
            comment,
            &bundle.version,
            now,
            GrantId::from_uuid(new_id()),
        )?;
        tx.update_request(&request).await?;
        if let Some(grant) = &outcome.grant {
            tx.insert_grant(grant).await?;
        }
        tx.append(outcome.events).await?;
        tx.commit().await?;
        self.deadlines.notify_one();
        if outcome.grant.is_some() {
            self.grants_changed();
        }
        Ok((request, outcome.grant))
    }

    /// Denies the request: one denial ends it.
    pub async fn deny(&self, caller: &Caller, id: &str, reason: Reason) -> Result<AccessRequest, BrokerError> {
        let now = self.clock.now();
        let (mut tx, mut request) = self.request_for_review(caller, id, now).await?;
        let decision = self.decide(&self.policies(), Action::Approve, caller, &request, now);
        let event = request.deny(&caller.principal.name, &decision, &reason, now)?;
        tx.update_request(&request).await?;
        tx.append(vec![event]).await?;
        tx.commit().await?;
        Ok(request)
    }

    /// Withdraws the caller's own pending request.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<AccessRequest, BrokerError> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let mut request = tx.request(id).await?.ok_or_else(|| BrokerError::RequestNotFound(id.to_owned()))?;
        if !self.may_see(caller, &request, now) {
            return Err(BrokerError::RequestNotFound(id.to_owned()));
        }
        let event = request.cancel(&caller.principal.name, now)?;
        tx.update_request(&request).await?;
        tx.append(vec![event]).await?;
        tx.commit().await?;
        Ok(request)
    }

    /// Ends a grant at once. Whoever may see its request may end it: the holder gives it up,
    /// reviewers of its role and auditors take it away.
    pub async fn revoke(&self, caller: &Caller, grant_id: &str, reason: Reason) -> Result<Grant, BrokerError> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let mut grant = tx.grant(grant_id).await?.ok_or_else(|| BrokerError::GrantNotFound(grant_id.to_owned()))?;
        let request = tx
            .request(&grant.request_id.to_string())
            .await?
            .ok_or_else(|| BrokerError::GrantNotFound(grant_id.to_owned()))?;
        if !self.may_see(caller, &request, now) {
            return Err(BrokerError::GrantNotFound(grant_id.to_owned()));
        }
        // A grant whose time is up is expired, not revoked, even if the sweep has not run yet.
        if let Some(event) = grant.expire(now) {
            tx.update_grant(&grant).await?;
            tx.append(vec![event]).await?;
            tx.commit().await?;
            self.grants_changed();
            return Err(NotActive(grant.state).into());
        }
        let event = grant.revoke(caller.principal.name.as_str(), reason.as_str(), now)?;
        tx.update_grant(&grant).await?;
        tx.append(vec![event]).await?;
        tx.commit().await?;
        self.grants_changed();
        Ok(grant)
    }

    /// One request and its grant, if the caller may see it.
    pub async fn request(&self, caller: &Caller, id: &str) -> Result<(AccessRequest, Option<Grant>), BrokerError> {
        let now = self.clock.now();
        let request = self.store.request(id).await?.filter(|r| self.may_see(caller, r, now));
        let request = request.ok_or_else(|| BrokerError::RequestNotFound(id.to_owned()))?;
        let grant = self.store.grant_of_request(id).await?;
        Ok((request, grant))
    }

    /// Requests the caller may see, newest first.
    pub async fn requests(
        &self,
        caller: &Caller,
        pending_only: bool,
        mine: bool,
        limit: u32,
    ) -> Result<Vec<AccessRequest>, BrokerError> {
        let now = self.clock.now();
        let filter = RequestFilter {
            pending_only,
            requester: mine.then(|| caller.principal.name.clone()),
            limit: limit.clamp(1, MAX_LIST_LIMIT),
        };
        let filter = &filter;
        first_visible(
            filter.limit,
            |after| async move { self.store.requests(filter, after.as_ref()).await },
            |page| async move { Ok(page.into_iter().filter(|r| self.may_see(caller, r, now)).collect()) },
        )
        .await
    }

    /// Grants the caller may see, newest first.
    pub async fn grants(
        &self,
        caller: &Caller,
        active_only: bool,
        mine: bool,
        limit: u32,
    ) -> Result<Vec<Grant>, BrokerError> {
        let now = self.clock.now();
        let filter = GrantFilter {
            active_only,
            holder: mine.then(|| caller.principal.name.clone()),
            limit: limit.clamp(1, MAX_LIST_LIMIT),
        };
        let filter = &filter;
        first_visible(
            filter.limit,
            |after| async move { self.store.grants(filter, after.as_ref()).await },
            |page| self.visible_grants(caller, active_only, page, now),
        )
        .await
    }

    /// The grants of `page` that `caller` may see (and, with `active_only`, that are still live).
    async fn visible_grants(
        &self,
        caller: &Caller,
        active_only: bool,
        page: Vec<Grant>,
        now: OffsetDateTime,
    ) -> Result<Vec<Grant>, BrokerError> {
        let mut visible = Vec::new();
        for grant in page {
            // An active grant past its end is over even before the scheduler's sweep records it.
            if active_only && !grant.is_live(now) {
                continue;
            }
            if self.sees_held(caller, &grant.holder, &grant.request_id, now).await? {
                visible.push(grant);
            }
        }
        Ok(visible)
    }

    /// Whether `caller` may see something `holder` holds under request `request_id` (a grant, a
    /// break-glass review): the holder and auditors without reading the request, others as
    /// [`Broker::may_see`] says of it.
    pub(crate) async fn sees_held(
        &self,
        caller: &Caller,
        holder: &UserName,
        request_id: &RequestId,
        now: OffsetDateTime,
    ) -> Result<bool, BrokerError> {
        if holder == &caller.principal.name || self.is_auditor(caller) {
            return Ok(true);
        }
        let request = self.store.request(&request_id.to_string()).await?;
        Ok(request.is_some_and(|r| self.may_see(caller, &r, now)))
    }

    /// Ends every pending request and grant whose time is up at the clock's `now`, and escalates
    /// break-glass reviews that came due.
    pub async fn sweep(&self) -> Result<Swept, BrokerError> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let mut swept = Swept::default();
        let mut events = Vec::new();
        for mut request in tx.overdue_requests(now).await? {
            if let Some(event) = request.expire(now) {
                tx.update_request(&request).await?;
                events.push(event);
                swept.requests_expired += 1;
            }
        }
        for mut grant in tx.overdue_grants(now).await? {
            if let Some(event) = grant.expire(now) {
                tx.update_grant(&grant).await?;
                events.push(event);
                swept.grants_expired += 1;
            }
        }
        let escalated = self.escalate_overdue_reviews(&mut tx, now).await?;
        swept.reviews_escalated = escalated.len();
        events.extend(escalated);
        tx.append(events).await?;
        tx.commit().await?;
        if swept.grants_expired > 0 {
            self.grants_changed();
        }
        Ok(swept)
    }
}

/// Asks `bundle`'s policies about `action` on a request, with `playbook` (the one that arms the
/// requester under the incident the request names) standing in for a missing permit. New
/// requests and the re-evaluation of grants after a policy change ask through here.
pub(crate) fn ask(
    bundle: &PolicyBundle,
    action: Action,
    principal: &Principal,
    resource: &Resource,
    facts: &Facts<'_>,
    playbook: Option<&Playbook>,
) -> Decision {
    let decision = bundle.engine.decide(action, principal, resource, facts);
    match playbook {
        Some(playbook) => playbook.stand_in(decision),
        None => decision,
    }
}

/// The role whose ceiling a request meets: a playbook's maximum is the ceiling of the grants it
/// approves, in place of the role's.
pub(crate) fn ceiling<'r>(role: &'r Role, playbook: Option<&Playbook>) -> Cow<'r, Role> {
    match playbook {
        Some(playbook) => Cow::Owned(Role { max_duration: playbook.max, ..role.clone() }),
        None => Cow::Borrowed(role),
    }
}

/// The most rows one listing returns.
pub(crate) const MAX_LIST_LIMIT: u32 = 1000;

/// How many rows a listing reads at most while looking for rows its caller may see.
const LIST_SCAN_LIMIT: usize = 10_000;

/// Pages through rows (newest first, `limit` at a time) until `limit` of them pass `visible`, the
/// rows run out, or [`LIST_SCAN_LIMIT`] rows were read, so a caller who may see only some rows
/// still gets up to `limit` of them.
pub(crate) async fn first_visible<T: Clone, Page, Visible>(
    limit: u32,
    mut page_after: impl FnMut(Option<T>) -> Page,
    mut visible: impl FnMut(Vec<T>) -> Visible,
) -> Result<Vec<T>, BrokerError>
where
    Page: Future<Output = Result<Vec<T>, StoreError>>,
    Visible: Future<Output = Result<Vec<T>, BrokerError>>,
{
    let wanted = limit as usize;
    let mut shown = Vec::new();
    let mut last: Option<T> = None;
    let mut scanned = 0;
    loop {
        let page = page_after(last.take()).await?;
        let exhausted = page.len() < wanted;
        scanned += page.len();
        last = page.last().cloned();
        shown.extend(visible(page).await?);
        if shown.len() >= wanted || exhausted || scanned >= LIST_SCAN_LIMIT {
            shown.truncate(wanted);
            return Ok(shown);
        }
    }
}
