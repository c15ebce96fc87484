//! Policy changes. When `airlock serve` starts with, or reloads (SIGHUP), policies whose version
//! is not the one the last `policy.loaded` record names, every live grant is asked again as its
//! request would be asked today: by the new policies, for its holder as they are now (their
//! current groups), with the facts recorded with the request, under the incident it names if
//! that is still open. A grant the new policies would no longer give is revoked by `system` for
//! "policy change", and its record names the new version and why.
//!
//! The `policy.loaded` record (the version, the one before, the grants revoked) and every
//! revocation are one commit, and the new policies replace the old ones inside that transaction:
//! a decision made with the old policies that would be recorded after it is made again instead
//! ([`Broker::policies_are`]), so no grant the new policies refuse outlives the change.
//!
//! [`decide_grant`] is the question itself, a pure function of the bundle, the request and the
//! holder, shared by the start and every reload; it asks through the same path as new requests
//! and break-glass.

use std::collections::HashMap;
use std::sync::Arc;

use airlock_core::audit::{AuditEvent, ChainRecord, EventKind, SYSTEM_ACTOR};
use airlock_core::ids::{GrantId, IncidentId, UserName};
use airlock_core::incident::{Incident, Playbook, arming};
use airlock_core::lifecycle::{AccessRequest, Grant};
use airlock_core::policy::{Action, Principal};
use airlock_core::values::GrantDuration;
use airlock_store::Tx;
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::broker::{Broker, BrokerError, ask, ceiling};
use crate::bundle::PolicyBundle;

/// The reason recorded on the grants a policy change revokes.
pub const POLICY_CHANGE: &str = "policy change";

/// Why the policies would no longer give a grant; recorded with its revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "refused", rename_all = "snake_case")]
pub enum Refusal {
    /// The grant's resource, or its role on it, is no longer in the catalog.
    LeftCatalog,
    /// The holder has no account any more, or it is disabled.
    NoHolder,
    /// The request the grant was made for is not in the store.
    NoRequest,
    /// The grant lasts longer than its role (or the playbook arming its holder) now allows.
    TooLong { max: GrantDuration },
    /// The policies deny the request's action, or could not evaluate one of its policies: an
    /// error counts as a denial even beside a permit, since a grant that cannot be fully checked
    /// is not kept.
    Denied { action: Action, policies: Vec<String>, errors: Vec<String> },
}

/// Whether `bundle` would still give the grant made for `request`, asked at `now` for `holder`
/// as they are now, under `incident` (the incident the request names, when it is still open).
/// A break-glass grant is asked `break_glass`; any other `request`, with the playbook that arms
/// the holder standing in for a missing permit and its maximum as the ceiling, as
/// [`Broker::create_request`] asks.
pub fn decide_grant(
    bundle: &PolicyBundle,
    playbooks: &[Playbook],
    request: &AccessRequest,
    holder: &Principal,
    incident: Option<&Incident>,
    now: OffsetDateTime,
) -> Result<(), Refusal> {
    let (resource, role) =
        Broker::resource_and_role(bundle, &request.resource, &request.role).map_err(|_| Refusal::LeftCatalog)?;
    let facts = request.facts(now);
    let (action, decision) = if request.break_glass {
        (Action::BreakGlass, ask(bundle, Action::BreakGlass, holder, resource, &facts, None))
    } else {
        let incident = incident.filter(|incident| incident.is_open());
        let playbook = incident.and_then(|i| arming(playbooks, i, holder, &request.resource, &request.role));
        let max = ceiling(role, playbook).max_duration;
        if request.duration > max {
            return Err(Refusal::TooLong { max });
        }
        (Action::Request, ask(bundle, Action::Request, holder, resource, &facts, playbook))
    };
    if decision.allowed && decision.errors.is_empty() {
        Ok(())
    } else {
        Err(Refusal::Denied { action, policies: decision.policies, errors: decision.errors })
    }
}

/// What putting policies in force did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoliciesLoaded {
    pub version: String,
    /// The version the last `policy.loaded` record named; none when there was none.
    pub previous: Option<String>,
    /// Whether the version was new, so it was recorded and every live grant asked again. When
    /// it was not, nothing was recorded and no grant changed.
    pub changed: bool,
    /// The grants the new policies would no longer give, revoked.
    pub revoked: Vec<GrantId>,
}

/// The version a `policy.loaded` record names.
fn recorded_version(record: &ChainRecord) -> Option<String> {
    let details: serde_json::Value = serde_json::from_str(&record.details).ok()?;
    details["version"].as_str().map(str::to_owned)
}

/// What asking grants again did.
#[derive(Default)]
struct Revocations {
    /// Live grants asked.
    checked: usize,
    revoked: Vec<GrantId>,
    revocations: Vec<AuditEvent>,
}

/// Holders and incidents read once per re-evaluation, however many grants name them.
#[derive(Default)]
struct Seen {
    holders: HashMap<UserName, Option<Principal>>,
    incidents: HashMap<IncidentId, Option<Incident>>,
}

impl Broker {
    /// Puts `bundle` in force. When its version is not the one the last `policy.loaded` record
    /// names (or there is none), records `policy.loaded` and revokes every live grant `bundle`
    /// would no longer give ([`decide_grant`]), in one commit, and then tells the grant watchers,
    /// so gateways cut those grants' sessions at once. The same version again changes nothing.
    pub async fn load_policies(&self, bundle: Arc<PolicyBundle>) -> Result<PoliciesLoaded, BrokerError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let last = tx.last_policy_loaded().await?;
        let previous = last.as_ref().and_then(recorded_version);
        if previous.as_deref() == Some(bundle.version.as_str()) {
            if self.policies().version != bundle.version {
                self.policies.store(bundle.clone());
            }
            return Ok(PoliciesLoaded {
                version: bundle.version.clone(),
                previous,
                changed: false,
                revoked: Vec::new(),
            });
        }
        // Replaced while this transaction holds the store: see `Broker::policies_are`.
        let old = self.policies.swap(bundle.clone());
        match self.revoke_refused(tx, &bundle, previous, now).await {
            Ok(loaded) => {
                if !loaded.revoked.is_empty() {
                    self.grants_changed();
                }
                Ok(loaded)
            }
            Err(error) => {
                self.policies.store(old);
                Err(error)
            }
        }
    }

    /// Asks every live grant again with `bundle`, revokes those it refuses and records
    /// `policy.loaded` with the revocations, all in `tx`.
    async fn revoke_refused(
        &self,
        mut tx: Tx,
        bundle: &PolicyBundle,
        previous: Option<String>,
        now: OffsetDateTime,
    ) -> Result<PoliciesLoaded, BrokerError> {
        let grants = tx.active_grants().await?;
        let asked = self.revoke_refusals(&mut tx, bundle, grants, POLICY_CHANGE, now).await?;
        let (checked, revoked) = (asked.checked, asked.revoked);
        let loaded = AuditEvent {
            kind: EventKind::PolicyLoaded,
            actor: SYSTEM_ACTOR.to_owned(),
            at: now,
            details: json!({
                "version": bundle.version,
                "previous": previous,
                "grants_checked": checked,
                "grants_revoked": revoked,
            }),
        };
        tx.append([loaded].into_iter().chain(asked.revocations).collect()).await?;
        tx.commit().await?;
        Ok(PoliciesLoaded { version: bundle.version.clone(), previous, changed: true, revoked })
    }

    /// Asks `user`'s live grants again with the policies in force, in `tx`, after their groups
    /// changed: returns the revocations of those the policies would no longer give (reason
    /// `reason`), for the caller to append and commit. Its caller tells the grant watchers.
    pub(crate) async fn revoke_refused_grants_of(
        &self,
        tx: &mut Tx,
        user: &UserName,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<AuditEvent>, BrokerError> {
        let grants = tx.active_grants_of(user).await?;
        Ok(self.revoke_refusals(tx, &self.policies(), grants, reason, now).await?.revocations)
    }

    /// Asks each of `grants` again with `bundle` ([`Broker::ask_again`]) and revokes, in `tx`,
    /// those it refuses, for `reason`; each revocation names the version and the refusal. A
    /// grant whose time is up is left to end by expiry, at the sweep.
    async fn revoke_refusals(
        &self,
        tx: &mut Tx,
        bundle: &PolicyBundle,
        grants: Vec<Grant>,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Revocations, BrokerError> {
        let mut seen = Seen::default();
        let mut asked = Revocations::default();
        for mut grant in grants.into_iter().filter(|grant| grant.is_live(now)) {
            asked.checked += 1;
            let Err(refusal) = self.ask_again(tx, &mut seen, bundle, &grant, now).await? else { continue };
            let mut event = grant.revoke(SYSTEM_ACTOR, reason, now)?;
            event.details["policy_version"] = json!(bundle.version);
            event.details["refusal"] = json!(refusal);
            tx.update_grant(&grant).await?;
            asked.revoked.push(grant.id);
            asked.revocations.push(event);
        }
        Ok(asked)
    }

    /// [`decide_grant`] for `grant`, with its request, its holder and its incident read in `tx`.
    async fn ask_again(
        &self,
        tx: &mut Tx,
        seen: &mut Seen,
        bundle: &PolicyBundle,
        grant: &Grant,
        now: OffsetDateTime,
    ) -> Result<Result<(), Refusal>, BrokerError> {
        let Some(request) = tx.request(&grant.request_id.to_string()).await? else {
            return Ok(Err(Refusal::NoRequest));
        };
        if !seen.holders.contains_key(&grant.holder) {
            let user = tx.user(&grant.holder).await?.filter(|user| !user.disabled);
            let holder = user.map(Principal::from);
            seen.holders.insert(grant.holder.clone(), holder);
        }
        let Some(Some(holder)) = seen.holders.get(&grant.holder) else { return Ok(Err(Refusal::NoHolder)) };
        let incident = match &request.incident {
            Some(named) => {
                if !seen.incidents.contains_key(&named.id) {
                    let incident = tx.incident(named.id.as_str()).await?;
                    seen.incidents.insert(named.id.clone(), incident);
                }
                seen.incidents.get(&named.id).and_then(Option::as_ref)
            }
            None => None,
        };
        let playbooks = &self.settings.incidents.playbooks;
        Ok(decide_grant(bundle, playbooks, &request, holder, incident, now))
    }
}
