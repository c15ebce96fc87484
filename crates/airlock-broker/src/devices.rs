//! Trusted devices: enrolled by their user, who proves holding the key; approved by an
//! administrator; disabled by either, which ends at once everything the device was used for.
//!
//! A call made from a device carries a proof signed by its key ([`airlock_core::device::Proof`]):
//! [`Broker::authenticate`] checks it and the caller becomes a [`TrustedDevice`] caller when the
//! device is approved — the policies' `context.device.trusted`. A proof that is present but
//! wrong (forged, replayed, stale, for another user's or a disabled device) refuses the call:
//! it is an attack or a stolen token, never a reason to fall back to "untrusted".
//!
//! "What the device was used for": requests made from it (pending ones are withdrawn, their
//! grants revoked) and grants whose gateway credentials are bound to it (revoked; the gateway
//! then cuts their sessions).

use std::collections::HashMap;
use std::sync::Mutex;

use airlock_core::audit::{AuditEvent, EventKind};
use airlock_core::device::{self, Call, DeviceKey, PROOF_WINDOW, Proof, ProofError};
use airlock_core::ids::{DeviceId, DeviceName, UserName};
pub use airlock_store::Device;
use serde_json::json;
use time::OffsetDateTime;

use crate::broker::{Broker, BrokerError, Caller, Ended, TrustedDevice, new_id};

/// Proofs one device may make within [`PROOF_WINDOW`]; past this, its proofs are refused until
/// old ones age out (other devices are not affected).
const MAX_PROOFS_PER_DEVICE: usize = 1_000;

/// Devices remembered before the nonces of every device are swept.
const SWEEP_DEVICES_OVER: usize = 1_024;

/// Why a call's device proof was refused. Shown to the caller.
#[derive(Debug, thiserror::Error)]
pub enum DeviceProofError {
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error("the device proof names a device this user has not enrolled")]
    UnknownDevice,
    #[error("device `{0}` is disabled; enroll this machine again (`airlock device enroll`)")]
    Disabled(DeviceId),
    #[error("this device proof was already used")]
    Replayed,
    #[error("this device made too many calls in the last minute; try again in a minute")]
    TooMany,
}

/// A call's device proof as it arrived: the header and the call it claims to be for.
#[derive(Debug, Clone, Copy)]
pub struct PresentedProof<'a> {
    pub header: &'a str,
    pub method: &'a str,
    pub path: &'a str,
}

/// The nonces of each device's proofs accepted within [`PROOF_WINDOW`], so that each proof
/// works once.
#[derive(Default)]
pub(crate) struct SeenNonces(Mutex<HashMap<DeviceId, HashMap<[u8; device::NONCE_BYTES], OffsetDateTime>>>);

impl SeenNonces {
    /// Remembers `proof`'s nonce; refuses it when already seen, or when its device has made
    /// too many proofs lately.
    fn remember(&self, proof: &Proof, now: OffsetDateTime) -> Result<(), DeviceProofError> {
        let mut seen = self.0.lock().expect("the nonce lock is never poisoned");
        // A proof made before this is out of its window for good: forgotten for this device at
        // each call, and for every device once many have called.
        let oldest = now - PROOF_WINDOW;
        if seen.len() >= SWEEP_DEVICES_OVER {
            seen.retain(|_, nonces| {
                nonces.retain(|_, at| *at >= oldest);
                !nonces.is_empty()
            });
        }
        let nonces = seen.entry(proof.device).or_default();
        nonces.retain(|_, at| *at >= oldest);
        if nonces.contains_key(&proof.nonce) {
            return Err(DeviceProofError::Replayed);
        }
        if nonces.len() >= MAX_PROOFS_PER_DEVICE {
            return Err(DeviceProofError::TooMany);
        }
        nonces.insert(proof.nonce, proof.at);
        Ok(())
    }
}

/// A device the caller asks to enroll.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub name: DeviceName,
    pub key: DeviceKey,
    /// The key's signature of [`device::enrollment_message`], 128 hex digits.
    pub signature: String,
}

impl Broker {
    /// The trusted device `presented` proves for the caller `user` presenting `bearer`; `None`
    /// when the device is not approved yet.
    pub(crate) async fn device_of_call(
        &self,
        user: &UserName,
        bearer: &str,
        presented: &PresentedProof<'_>,
        now: OffsetDateTime,
    ) -> Result<Option<TrustedDevice>, BrokerError> {
        let proof = Proof::parse(presented.header).map_err(DeviceProofError::from)?;
        let device = match self.store().device(proof.device).await? {
            Some(device) if &device.user == user => device,
            _ => return Err(DeviceProofError::UnknownDevice.into()),
        };
        if device.disabled.is_some() {
            return Err(DeviceProofError::Disabled(device.id).into());
        }
        let call = Call { method: presented.method, path: presented.path, bearer };
        proof.verify(&device.key, &call, now).map_err(DeviceProofError::from)?;
        self.seen_nonces.remember(&proof, now)?;
        Ok(device.is_trusted().then_some(TrustedDevice { id: device.id, key: device.key }))
    }

    /// Registers a device for the caller, waiting for an administrator's approval.
    pub async fn enroll_device(&self, caller: &Caller, enrollment: Enrollment) -> Result<Device, BrokerError> {
        let user = &caller.principal.name;
        device::verify_enrollment(user, &enrollment.key, &enrollment.signature).map_err(BrokerError::BadEnrollment)?;
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        Self::ensure_enabled(&mut tx, caller).await?;
        if tx.device_key_known(&enrollment.key).await? {
            return Err(BrokerError::DeviceKeyKnown);
        }
        let device = Device {
            id: DeviceId::from_uuid(new_id()),
            user: user.clone(),
            name: enrollment.name,
            key: enrollment.key,
            enrolled_at: now,
            approved: None,
            disabled: None,
        };
        tx.insert_device(&device).await?;
        tx.append(vec![device_event(EventKind::DeviceEnrolled, user.as_str(), now, &device)]).await?;
        tx.commit().await?;
        Ok(device)
    }

    /// An administrator approves device `id`: calls proved by it are trusted from now on.
    /// Approving an approved device changes nothing.
    pub async fn approve_device(&self, id: DeviceId, actor: &str) -> Result<Device, BrokerError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let mut device = tx.device(id).await?.ok_or(BrokerError::DeviceNotFound(id))?;
        if device.disabled.is_some() {
            return Err(BrokerError::DeviceDisabled(id));
        }
        if device.approved.is_some() {
            return Ok(device);
        }
        Self::enabled_user(&mut tx, &device.user).await?;
        tx.approve_device(id, actor, now).await?;
        device.approved = Some((now, actor.to_owned()));
        tx.append(vec![device_event(EventKind::DeviceApproved, actor, now, &device)]).await?;
        tx.commit().await?;
        Ok(device)
    }

    /// The caller disables one of their own devices (a lost laptop); another's is "not found".
    pub async fn disable_own_device(&self, caller: &Caller, id: DeviceId) -> Result<(Device, Ended), BrokerError> {
        match self.store().device(id).await? {
            Some(device) if device.user == caller.principal.name => {
                self.disable_device(id, caller.principal.name.as_str(), "disabled by its user").await
            }
            _ => Err(BrokerError::DeviceNotFound(id)),
        }
    }

    /// Disables device `id` for good: in the same commit, withdraws the pending requests made
    /// from it and revokes the grants asked for from it or bound to it; then gateways cut their
    /// sessions.
    pub async fn disable_device(
        &self,
        id: DeviceId,
        actor: &str,
        reason: &str,
    ) -> Result<(Device, Ended), BrokerError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let mut device = tx.device(id).await?.ok_or(BrokerError::DeviceNotFound(id))?;
        if device.disabled.is_some() {
            return Err(BrokerError::DeviceDisabled(id));
        }
        tx.disable_device(id, actor, reason, now).await?;
        device.disabled = Some((now, actor.to_owned(), reason.to_owned()));
        let requests = tx.pending_requests_of_device(id).await?;
        let grants = tx.active_grants_of_device(id).await?;
        let (ended, mut events) = Self::end_access(&mut tx, requests, grants, actor, reason, now).await?;
        let mut record = device_event(EventKind::DeviceDisabled, actor, now, &device);
        record.details["reason"] = json!(reason);
        record.details["requests_cancelled"] = json!(ended.requests_cancelled);
        record.details["grants_revoked"] = json!(ended.grants_revoked);
        events.insert(0, record);
        tx.append(events).await?;
        tx.commit().await?;
        self.grants_changed();
        Ok((device, ended))
    }

    /// The caller's devices; with `everyone`, every user's (auditors only).
    pub async fn devices(&self, caller: &Caller, everyone: bool) -> Result<Vec<Device>, BrokerError> {
        if everyone && !self.is_auditor(caller) {
            return Err(BrokerError::AuditForbidden);
        }
        let user = (!everyone).then_some(&caller.principal.name);
        Ok(self.store().devices(user).await?)
    }

    /// Every device, or one user's, for administrators on the data directory.
    pub async fn devices_of(&self, user: Option<&UserName>) -> Result<Vec<Device>, BrokerError> {
        Ok(self.store().devices(user).await?)
    }
}

fn device_event(kind: EventKind, actor: &str, at: OffsetDateTime, device: &Device) -> AuditEvent {
    AuditEvent {
        kind,
        actor: actor.to_owned(),
        at,
        details: json!({ "device": device.id, "user": device.user, "name": device.name, "key": device.key }),
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use uuid::Uuid;

    use super::*;

    const T0: OffsetDateTime = datetime!(2030-01-01 10:00 UTC);

    /// A proof as parsed from its header (the signature is not looked at here).
    fn proof(device: u128, n: usize, at: OffsetDateTime) -> Proof {
        let device = DeviceId::from_uuid(Uuid::from_u128(device));
        let header = format!("{device}.{}.{n:032x}.{}", at.unix_timestamp(), "00".repeat(64));
        Proof::parse(&header).unwrap()
    }

    #[test]
    fn each_proof_works_once_and_a_busy_device_slows_only_itself() {
        let seen = SeenNonces::default();
        seen.remember(&proof(1, 0, T0), T0).unwrap();
        assert!(matches!(seen.remember(&proof(1, 0, T0), T0), Err(DeviceProofError::Replayed)));
        seen.remember(&proof(2, 0, T0), T0).expect("the same nonce from another device");

        for n in 1..MAX_PROOFS_PER_DEVICE {
            seen.remember(&proof(1, n, T0), T0).unwrap();
        }
        let over = proof(1, MAX_PROOFS_PER_DEVICE, T0);
        assert!(matches!(seen.remember(&over, T0), Err(DeviceProofError::TooMany)));
        seen.remember(&proof(2, 1, T0), T0).expect("other devices are not affected");

        // A minute later the device's old proofs are out of their window, and forgotten.
        let later = T0 + PROOF_WINDOW + time::Duration::seconds(1);
        seen.remember(&proof(1, MAX_PROOFS_PER_DEVICE, later), later).unwrap();
        assert_eq!(seen.0.lock().unwrap()[&proof(1, 0, T0).device].len(), 1);

        // Many devices calling: every device's old proofs are swept.
        for device in 3..3 + SWEEP_DEVICES_OVER as u128 {
            seen.remember(&proof(device, 0, later), later).unwrap();
        }
        let device_two = proof(2, 0, T0).device;
        assert!(!seen.0.lock().unwrap().contains_key(&device_two), "device 2 has not called since T0");
    }
}
