//! Incidents: opened and closed by incident managers (people, or an incident tool's service
//! account driving the API from its webhook), named by requests made for them, and closed with
//! everything given under them: closing one revokes every grant made for it and withdraws every
//! request still waiting, in the same commit, so gateways cut the sessions at once.

use airlock_core::incident::{Incident, IncidentId, NewIncident};
use airlock_core::lifecycle::{AccessRequest, GrantState};
use airlock_store::Tx;
use serde_json::json;

use crate::broker::{Broker, BrokerError, Caller, MAX_LIST_LIMIT};

/// What closing an incident ended.
#[derive(Debug, Clone)]
pub struct ClosedIncident {
    pub incident: Incident,
    pub grants_revoked: usize,
    pub requests_withdrawn: usize,
}

impl Broker {
    /// Members of the `[incidents] managers` groups.
    fn managers_only(&self, caller: &Caller) -> Result<(), BrokerError> {
        let managers = &self.settings.incidents.managers;
        if caller.principal.groups.iter().any(|g| managers.contains(g)) {
            Ok(())
        } else {
            Err(BrokerError::IncidentsForbidden)
        }
    }

    pub(crate) fn may_read_incident_reports(&self, caller: &Caller) -> Result<(), BrokerError> {
        self.managers_only(caller)
            .or_else(|_| self.auditors_only(caller))
            .map_err(|_| BrokerError::IncidentReportForbidden)
    }

    /// Opens an incident; says whether it was opened now. Opening one that is already open with
    /// the same severity, title and responders changes nothing (an incident tool may send its
    /// webhook twice); any other reuse of an id is refused.
    pub async fn open_incident(&self, caller: &Caller, new: NewIncident) -> Result<(Incident, bool), BrokerError> {
        self.managers_only(caller)?;
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        Self::ensure_enabled(&mut tx, caller).await?;
        if let Some(existing) = tx.incident(new.id.as_str()).await? {
            return match (existing.is_same_as(&new), existing.is_open()) {
                (true, _) => Ok((existing, false)),
                (false, true) => Err(BrokerError::IncidentDiffers(existing.id)),
                (false, false) => Err(BrokerError::IncidentIdUsed(existing.id)),
            };
        }
        let (incident, opened) = Incident::open(new, caller.principal.name.as_str(), now);
        tx.insert_incident(&incident).await?;
        tx.append(vec![opened]).await?;
        tx.commit().await?;
        Ok((incident, true))
    }

    /// Closes an incident: every grant made for it is revoked and every request made for it that
    /// still waits for review is withdrawn, in the same commit.
    pub async fn close_incident(&self, caller: &Caller, id: &str) -> Result<ClosedIncident, BrokerError> {
        self.managers_only(caller)?;
        let now = self.clock().now();
        let actor = caller.principal.name.as_str();
        let mut tx = self.store().begin().await?;
        Self::ensure_enabled(&mut tx, caller).await?;
        let mut incident = tx.incident(id).await?.ok_or_else(|| BrokerError::IncidentNotFound(id.to_owned()))?;
        if !incident.is_open() {
            return Err(airlock_core::incident::AlreadyClosed(incident.id).into());
        }
        let why = format!("incident {} closed", incident.id);
        let mut ended = Vec::new();
        let mut revoked = Vec::new();
        let grants = tx.active_grants_of_incident(id).await?;
        let grants_ended = !grants.is_empty();
        for mut grant in grants {
            // A grant whose time is up is expired, not revoked, even if the sweep has not run yet.
            let event = grant.expire(now).map_or_else(|| grant.revoke(actor, &why, now), Ok)?;
            if grant.state == GrantState::Revoked {
                revoked.push(grant.id);
            }
            tx.update_grant(&grant).await?;
            ended.push(event);
        }
        let mut withdrawn = Vec::new();
        for mut request in tx.pending_requests_of_incident(id).await? {
            if let Some(event) = request.withdraw(actor, &why, now) {
                tx.update_request(&request).await?;
                withdrawn.push(request.id);
                ended.push(event);
            }
        }
        let closed =
            incident.close(actor, now, json!({ "grants_revoked": revoked, "requests_withdrawn": withdrawn }))?;
        tx.update_incident(&incident).await?;
        tx.append([closed].into_iter().chain(ended).collect()).await?;
        tx.commit().await?;
        if grants_ended {
            self.grants_changed();
        }
        Ok(ClosedIncident { incident, grants_revoked: revoked.len(), requests_withdrawn: withdrawn.len() })
    }

    /// One incident; every authenticated caller may read incidents, to name them in requests.
    pub async fn incident(&self, id: &str) -> Result<Incident, BrokerError> {
        self.store().incident(id).await?.ok_or_else(|| BrokerError::IncidentNotFound(id.to_owned()))
    }

    /// Incidents, newest first; with `open_only`, those still open.
    pub async fn incidents(&self, open_only: bool, limit: u32) -> Result<Vec<Incident>, BrokerError> {
        Ok(self.store().incidents(open_only, limit.clamp(1, MAX_LIST_LIMIT)).await?)
    }

    /// The open incident a new request names, if it names one: unknown and closed ones are refused.
    pub(crate) async fn incident_named(&self, id: Option<&IncidentId>) -> Result<Option<Incident>, BrokerError> {
        let Some(id) = id else { return Ok(None) };
        match self.store().incident(id.as_str()).await? {
            Some(incident) if incident.is_open() => Ok(Some(incident)),
            Some(_) => Err(BrokerError::IncidentNotOpen(id.clone())),
            None => Err(BrokerError::UnknownIncident(id.clone())),
        }
    }

    /// Refuses, inside the transaction that would record `request`, when the incident it was made
    /// for closed since it was read: a grant made for it would outlive its close.
    pub(crate) async fn ensure_incident_open(tx: &mut Tx, request: &AccessRequest) -> Result<(), BrokerError> {
        let Some(id) = request.incident.as_ref().map(|i| &i.id) else { return Ok(()) };
        match tx.incident(id.as_str()).await? {
            Some(incident) if incident.is_open() => Ok(()),
            _ => Err(BrokerError::IncidentNotOpen(id.clone())),
        }
    }
}
