//! What the gateway asks of the broker, as one narrow trait: is this grant live, which grants are
//! live, tell me when that changes, record these events, and which of my sessions has no end on
//! record (after a crash). Inside `airlock serve` the broker
//! answers in-process; a gateway running apart would answer the same questions over the API.

use std::collections::HashSet;
use std::future::Future;

use airlock_broker::Broker;
use airlock_core::audit::AuditEvent;
use airlock_core::ids::{GrantId, ResourceName, RoleName, UserName};
use airlock_core::lifecycle::Grant;
use time::OffsetDateTime;
use tokio::sync::watch;

/// The broker could not answer; the gateway fails closed.
#[derive(Debug, thiserror::Error)]
#[error("the broker cannot be asked: {0}")]
pub struct AuthorityError(pub String);

/// What the gateway needs to know of a live grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveGrant {
    pub id: GrantId,
    pub holder: UserName,
    pub resource: ResourceName,
    pub role: RoleName,
    pub ends_at: OffsetDateTime,
}

impl From<Grant> for LiveGrant {
    fn from(grant: Grant) -> Self {
        Self { id: grant.id, holder: grant.holder, resource: grant.resource, role: grant.role, ends_at: grant.ends_at }
    }
}

/// The broker, as the gateway sees it.
pub trait Authority: Clone + Send + Sync + 'static {
    /// The grant, when it is live now.
    fn live_grant(&self, grant: GrantId) -> impl Future<Output = Result<Option<LiveGrant>, AuthorityError>> + Send;

    /// The ids of every grant live now.
    fn live_grants(&self) -> impl Future<Output = Result<HashSet<GrantId>, AuthorityError>> + Send;

    /// Changes whenever a grant may have started or ended.
    fn grant_changes(&self) -> watch::Receiver<u64>;

    /// The sessions the gateway named `gateway` started and never recorded the end of: the
    /// holder and the details of each `session.started`.
    fn unended_sessions(
        &self,
        gateway: &str,
    ) -> impl Future<Output = Result<Vec<(String, serde_json::Value)>, AuthorityError>> + Send;

    /// Appends events to the audit chain, in order, all or none.
    fn record(&self, events: &[AuditEvent]) -> impl Future<Output = Result<(), AuthorityError>> + Send;
}

fn unavailable(error: impl std::fmt::Display) -> AuthorityError {
    AuthorityError(error.to_string())
}

impl Authority for Broker {
    async fn live_grant(&self, grant: GrantId) -> Result<Option<LiveGrant>, AuthorityError> {
        Ok(Broker::live_grant(self, &grant).await.map_err(unavailable)?.map(LiveGrant::from))
    }

    async fn live_grants(&self) -> Result<HashSet<GrantId>, AuthorityError> {
        let grants = Broker::live_grants(self).await.map_err(unavailable)?;
        Ok(grants.into_iter().map(|grant| grant.id).collect())
    }

    fn grant_changes(&self) -> watch::Receiver<u64> {
        self.watch_grants()
    }

    async fn record(&self, events: &[AuditEvent]) -> Result<(), AuthorityError> {
        Broker::record(self, events).await.map_err(unavailable)
    }

    async fn unended_sessions(&self, gateway: &str) -> Result<Vec<(String, serde_json::Value)>, AuthorityError> {
        Broker::unended_sessions(self, gateway).await.map_err(unavailable)
    }
}

/// For tests: a broker that knows no grant and no unended session, whose appends are the test's
/// own ([`Appends`]).
#[cfg(test)]
pub(crate) mod doubles {
    use std::collections::HashSet;

    use airlock_core::audit::AuditEvent;
    use airlock_core::ids::GrantId;
    use tokio::sync::watch;

    use super::{Authority, AuthorityError, LiveGrant};

    /// What a test's broker does with events it is asked to record.
    pub(crate) trait Appends: Clone + Send + Sync + 'static {
        fn append(&self, events: &[AuditEvent]) -> impl Future<Output = Result<(), AuthorityError>> + Send;
    }

    /// A broker that knows no grant, recording through `A`.
    #[derive(Clone, Default)]
    pub(crate) struct NoGrants<A>(pub A);

    impl<A: Appends> Authority for NoGrants<A> {
        async fn live_grant(&self, _: GrantId) -> Result<Option<LiveGrant>, AuthorityError> {
            Ok(None)
        }
        async fn live_grants(&self) -> Result<HashSet<GrantId>, AuthorityError> {
            Ok(HashSet::new())
        }
        fn grant_changes(&self) -> watch::Receiver<u64> {
            watch::channel(0).1
        }
        async fn unended_sessions(&self, _: &str) -> Result<Vec<(String, serde_json::Value)>, AuthorityError> {
            Ok(Vec::new())
        }
        async fn record(&self, events: &[AuditEvent]) -> Result<(), AuthorityError> {
            self.0.append(events).await
        }
    }
}
