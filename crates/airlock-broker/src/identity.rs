//! Who is calling: authenticating API tokens, and adding and disabling users.

use std::net::IpAddr;

use airlock_core::audit::{AuditEvent, EventKind};
use airlock_core::ids::{GroupName, UserName};
use airlock_core::policy::Principal;
use serde_json::json;

use crate::broker::{Broker, BrokerError, Caller, Disabled};
use crate::secrets;

impl Broker {
    pub async fn authenticate(&self, token: &str, source_ip: IpAddr) -> Result<Caller, BrokerError> {
        let user = self.store().user_by_token_hash(&secrets::token_hash(token)).await?;
        match user {
            Some(user) if !user.disabled => Ok(Caller {
                principal: Principal { name: user.name, groups: user.groups, service: user.service },
                source_ip,
            }),
            _ => Err(BrokerError::Unauthenticated),
        }
    }

    /// Adds a user and returns their API token, which is never stored or shown again.
    pub async fn add_user(
        &self,
        name: &UserName,
        groups: &[GroupName],
        service: bool,
        actor: &str,
    ) -> Result<String, BrokerError> {
        let now = self.clock().now();
        let token = secrets::new_token()?;
        let mut tx = self.store().begin().await?;
        if tx.user(name).await?.is_some() {
            return Err(BrokerError::UserExists(name.clone()));
        }
        tx.insert_user(name, groups, service, &secrets::token_hash(&token), now).await?;
        let details = json!({ "user": name, "groups": groups, "service": service });
        tx.append(vec![AuditEvent { kind: EventKind::UserAdded, actor: actor.to_owned(), at: now, details }]).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Disables a user and ends, at once, all their pending requests and live grants.
    pub async fn disable_user(&self, name: &UserName, actor: &str) -> Result<Disabled, BrokerError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        if tx.user(name).await?.is_none() {
            return Err(BrokerError::UserNotFound(name.clone()));
        }
        tx.disable_user(name).await?;
        let reason = "user disabled";
        let mut events = vec![AuditEvent {
            kind: EventKind::UserDisabled,
            actor: actor.to_owned(),
            at: now,
            details: json!({ "user": name }),
        }];
        let mut done = Disabled { requests_cancelled: 0, grants_revoked: 0 };
        for mut request in tx.pending_requests_of(name).await? {
            if let Some(event) = request.withdraw(actor, reason, now) {
                tx.update_request(&request).await?;
                events.push(event);
                done.requests_cancelled += 1;
            }
        }
        for mut grant in tx.active_grants_of(name).await? {
            let event = grant.expire(now).map_or_else(|| grant.revoke(actor, reason, now), Ok)?;
            tx.update_grant(&grant).await?;
            events.push(event);
            done.grants_revoked += usize::from(grant.state == airlock_core::lifecycle::GrantState::Revoked);
        }
        tx.append(events).await?;
        tx.commit().await?;
        self.grants_changed();
        Ok(done)
    }
}
