//! What a gateway running apart from the broker may ask and tell: which grants are live, and the
//! session and statement events it observed. Only service accounts in the [`GATEWAY_GROUP`] may.

use std::time::Duration;

use airlock_core::audit::{AuditEvent, EventKind};
use airlock_core::ids::GrantId;
use airlock_core::lifecycle::Grant;

use crate::broker::{Broker, BrokerError, Caller};

/// Service accounts in this group may act as gateways.
pub const GATEWAY_GROUP: &str = "gateways";

/// The most events one call may record.
pub const MAX_EVENTS_PER_CALL: usize = 10_000;

/// The live grants, and the generation of the broker's grant changes they were read at.
pub struct LiveGrants {
    pub generation: u64,
    pub grants: Vec<Grant>,
}

impl Broker {
    fn gateway_only(&self, caller: &Caller) -> Result<(), BrokerError> {
        let member = caller.principal.groups.iter().any(|group| group.as_str() == GATEWAY_GROUP);
        if caller.principal.service && member { Ok(()) } else { Err(BrokerError::GatewayForbidden) }
    }

    /// Every live grant. With `changed_since`, waits (up to `wait`) until the grants change after
    /// that generation first, so a gateway learns of a revoke at once.
    pub async fn gateway_live_grants(
        &self,
        caller: &Caller,
        changed_since: Option<u64>,
        wait: Duration,
    ) -> Result<LiveGrants, BrokerError> {
        self.gateway_only(caller)?;
        let mut changes = self.watch_grants();
        if let Some(seen) = changed_since {
            let _ = tokio::time::timeout(wait, changes.wait_for(|generation| *generation != seen)).await;
        }
        let generation = *changes.borrow_and_update();
        Ok(LiveGrants { generation, grants: self.live_grants().await? })
    }

    /// The grant `id` if it is live.
    pub async fn gateway_grant(&self, caller: &Caller, id: &GrantId) -> Result<Option<Grant>, BrokerError> {
        self.gateway_only(caller)?;
        self.live_grant(id).await
    }

    /// Records what a gateway observed: session and statement events only, all or none.
    pub async fn gateway_record(&self, caller: &Caller, events: &[AuditEvent]) -> Result<(), BrokerError> {
        self.gateway_only(caller)?;
        if events.len() > MAX_EVENTS_PER_CALL {
            return Err(BrokerError::GatewayEvents(format!("at most {MAX_EVENTS_PER_CALL} events per call")));
        }
        if let Some(event) = events.iter().find(|event| !observed_by_gateways(event.kind)) {
            return Err(BrokerError::GatewayEvents(format!("a gateway does not record `{}`", event.kind.as_str())));
        }
        if let Some(event) = events.iter().find(|event| !ids_well_formed(&event.details)) {
            let kind = event.kind.as_str();
            return Err(BrokerError::GatewayEvents(format!("`{kind}`: `grant` and `session` must be UUID strings")));
        }
        self.record(events).await
    }
}

impl Broker {
    /// The sessions the gateway named `gateway` started and never recorded the end of (it
    /// crashed): the holder and the details of each `session.started`.
    pub async fn unended_sessions(&self, gateway: &str) -> Result<Vec<(String, serde_json::Value)>, BrokerError> {
        let rows = self.store().unended_sessions(gateway).await?;
        let parsed =
            rows.into_iter().filter_map(|(actor, details)| Some((actor, serde_json::from_str(&details).ok()?)));
        Ok(parsed.collect())
    }

    /// [`Broker::unended_sessions`], for a gateway running apart.
    pub async fn gateway_unended_sessions(
        &self,
        caller: &Caller,
        gateway: &str,
    ) -> Result<Vec<(String, serde_json::Value)>, BrokerError> {
        self.gateway_only(caller)?;
        self.unended_sessions(gateway).await
    }
}

/// Whether the ids reports find records by are, when present, UUID strings: a record is kept
/// forever, so one that misleads reports must not get in.
fn ids_well_formed(details: &serde_json::Value) -> bool {
    ["grant", "session"].iter().all(|field| match details.get(field) {
        None => true,
        Some(value) => value.as_str().is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()),
    })
}

fn observed_by_gateways(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::SessionStarted
            | EventKind::SessionRefused
            | EventKind::SessionEnded
            | EventKind::StatementStarted
            | EventKind::StatementExecuted
            | EventKind::StatementRefused
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::ids_well_formed;

    #[test]
    fn records_that_would_mislead_reports_are_refused() {
        let id = "0197a8f3-6a3e-7c3d-9a51-2f0d5b8c4e11";
        assert!(ids_well_formed(&json!({ "grant": id, "session": id })));
        assert!(ids_well_formed(&json!({ "reason": "no ids at all" })));
        assert!(!ids_well_formed(&json!({ "grant": id, "session": 7 })));
        assert!(!ids_well_formed(&json!({ "grant": { "id": id } })));
        assert!(!ids_well_formed(&json!({ "grant": "not-a-uuid" })));
    }
}
