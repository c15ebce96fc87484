//! Issuing gateway credentials: a signed token bound to one live grant, handed to its holder
//! only. The issue is audited; the token never is.

use airlock_core::audit::{AuditEvent, EventKind};
use airlock_core::credential::{self, Credential, Token};
use serde_json::json;
use uuid::Uuid;

use crate::broker::{Broker, BrokerError, Caller};

impl Broker {
    /// A credential for the caller's own live grant `grant_id`, valid until the grant ends (bound
    /// to the caller's address, and to the key of the trusted device they call from, when the catalog asks). Another user's grant is "not found".
    pub async fn issue_credential(&self, caller: &Caller, grant_id: &str) -> Result<(Credential, Token), BrokerError> {
        let not_found = || BrokerError::GrantNotFound(grant_id.to_owned());
        let grant = self.store().grant(grant_id).await?.ok_or_else(not_found)?;
        if grant.holder != caller.principal.name {
            return Err(not_found());
        }
        let now = self.clock().now();
        let mut credential = Credential::for_grant(&grant, Uuid::now_v7(), now)?;
        let (to_source, to_device) = match self.policies().catalog.resource(&grant.resource) {
            Some(resource) => (resource.bind_credentials_to_source, resource.bind_credentials_to_device),
            None => (false, false),
        };
        if to_source {
            credential = credential.bound_to(caller.source_ip);
        }
        let device = match to_device {
            true => Some(caller.device.ok_or_else(|| BrokerError::TrustedDeviceRequired(grant.resource.clone()))?),
            false => None,
        };
        if let Some(device) = device {
            credential = credential.bound_to_device(device.key);
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
                "device": device.map(|d| d.id),
            }),
        };
        match device {
            // Bound to a device: disabling it must find this grant, so both commit together,
            // and only while the device is still trusted.
            Some(device) => {
                let mut tx = self.store().begin().await?;
                Self::ensure_enabled(&mut tx, caller).await?;
                tx.bind_grant_to_device(device.id, &grant).await?;
                tx.append(vec![event]).await?;
                tx.commit().await?;
            }
            None => self.record(&[event]).await?,
        }
        Ok((credential, token))
    }
}
