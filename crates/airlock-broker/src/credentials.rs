//! Issuing gateway credentials: a signed token bound to one live grant, handed to its holder
//! only. The issue is audited; the token never is.

use airlock_core::audit::{AuditEvent, EventKind};
use airlock_core::credential::{self, Credential, Token};
use serde_json::json;
use uuid::Uuid;

use crate::broker::{Broker, BrokerError, Caller};

impl Broker {
    /// A credential for the caller's own live grant `grant_id`, valid until the grant ends (bound
    /// to the caller's address when the catalog asks). Another user's grant is "not found".
    pub async fn issue_credential(&self, caller: &Caller, grant_id: &str) -> Result<(Credential, Token), BrokerError> {
        let not_found = || BrokerError::GrantNotFound(grant_id.to_owned());
        let grant = self.store().grant(grant_id).await?.ok_or_else(not_found)?;
        if grant.holder != caller.principal.name {
            return Err(not_found());
        }
        let now = self.clock().now();
        let mut credential = Credential::for_grant(&grant, Uuid::now_v7(), now)?;
        let bind = self.policies().catalog.resource(&grant.resource).is_some_and(|r| r.bind_credentials_to_source);
        if bind {
            credential = credential.bound_to(caller.source_ip);
        }
        let token = credential::issue(&self.key().keypair(), &credential)?;
        let event = AuditEvent {
            kind: EventKind::CredentialIssued,
            actor: caller.principal.name.as_str().to_owned(),
            at: now,
            details: json!({
                "grant": grant.id,
                "token_id": credential.token_id,
                "resource": grant.resource,
                "role": grant.role,
                "expires_at": credential.expires_at.unix_timestamp(),
                "source": credential.source,
            }),
        };
        self.record(&[event]).await?;
        Ok((credential, token))
    }
}
