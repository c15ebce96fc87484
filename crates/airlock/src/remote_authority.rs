//! The broker over its API, as a gateway running apart (`airlock gateway`) asks it: live grants,
//! one grant, recording events, and a long-poll that turns the broker's grant changes into a
//! local signal so a revoke reaches the gateway's sessions at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::audit::AuditEvent;
use airlock_core::ids::GrantId;
use airlock_gateway::authority::{Authority, AuthorityError, LiveGrant};
use airlock_http::api::{GatewayEventView, GrantView, LiveGrantsView, RecordedView, UnendedSessionView};
use tokio::sync::watch;

use crate::Failure;
use crate::client::Client;

/// How long to wait before asking again after the broker could not be reached.
const RETRY: Duration = Duration::from_millis(500);

/// The broker at the end of a [`Client`].
#[derive(Clone)]
pub struct RemoteAuthority {
    client: Arc<Client>,
    changes: watch::Receiver<u64>,
}

fn unavailable(failure: Failure) -> AuthorityError {
    match failure {
        Failure::Refused(message) => AuthorityError(message),
        Failure::Usage(error) => AuthorityError(format!("{error:#}")),
    }
}

impl RemoteAuthority {
    /// Starts following the broker's grant changes.
    pub fn start(client: Client) -> Self {
        let client = Arc::new(client);
        let (signal, changes) = watch::channel(0);
        tokio::spawn(follow(client.clone(), signal));
        Self { client, changes }
    }
}

/// Long-polls the broker's live grants, signalling each new generation, until nobody listens.
async fn follow(client: Arc<Client>, signal: watch::Sender<u64>) {
    let mut seen: Option<u64> = None;
    while !signal.is_closed() {
        let path = match seen {
            Some(generation) => format!("/v1/gateway/grants?changed_since={generation}"),
            None => "/v1/gateway/grants".to_owned(),
        };
        match client.get::<LiveGrantsView>(&path).await {
            Ok(view) => {
                if seen != Some(view.generation) {
                    signal.send_modify(|count| *count = count.wrapping_add(1));
                }
                seen = Some(view.generation);
            }
            Err(failure) => {
                tracing::warn!(error = %unavailable(failure), "cannot follow the broker's grant changes");
                seen = None;
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

fn live(view: &GrantView) -> Result<LiveGrant, AuthorityError> {
    let bad = |what: &str| AuthorityError(format!("the broker sent a grant with an invalid {what}"));
    Ok(LiveGrant {
        id: GrantId::from_uuid(view.id),
        holder: view.holder.parse().map_err(|_| bad("holder"))?,
        resource: view.resource.parse().map_err(|_| bad("resource"))?,
        role: view.role.parse().map_err(|_| bad("role"))?,
        ends_at: view.expires_at,
    })
}

impl Authority for RemoteAuthority {
    async fn live_grant(&self, grant: GrantId) -> Result<Option<LiveGrant>, AuthorityError> {
        let found: Option<GrantView> =
            self.client.get_if_found(&format!("/v1/gateway/grants/{grant}")).await.map_err(unavailable)?;
        found.as_ref().map(live).transpose()
    }

    async fn live_grants(&self) -> Result<HashSet<GrantId>, AuthorityError> {
        let view: LiveGrantsView = self.client.get("/v1/gateway/grants").await.map_err(unavailable)?;
        Ok(view.grants.iter().map(|grant| GrantId::from_uuid(grant.id)).collect())
    }

    fn grant_changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    async fn unended_sessions(&self, gateway: &str) -> Result<Vec<(String, serde_json::Value)>, AuthorityError> {
        // A gateway's name is a UUID: nothing in it needs escaping in a query.
        let gateway =
            uuid::Uuid::parse_str(gateway).map_err(|_| AuthorityError("a gateway's name is a UUID".to_owned()))?;
        let path = format!("/v1/gateway/sessions/unended?gateway={gateway}");
        let sessions: Vec<UnendedSessionView> = self.client.get(&path).await.map_err(unavailable)?;
        Ok(sessions.into_iter().map(|session| (session.actor, session.details)).collect())
    }

    async fn record(&self, events: &[AuditEvent]) -> Result<(), AuthorityError> {
        let body: Vec<GatewayEventView> = events
            .iter()
            .map(|event| GatewayEventView {
                kind: event.kind.as_str().to_owned(),
                actor: event.actor.clone(),
                at: event.at,
                details: event.details.clone(),
            })
            .collect();
        let _: RecordedView = self.client.post("/v1/gateway/events", &body).await.map_err(unavailable)?;
        Ok(())
    }
}
