//! The second factor, as use cases: enrolling a TOTP authenticator, proving a code for the token
//! one calls with (step-up), an administrator's reset, and the checks that demand a fresh one.
//!
//! The seed is made here, sealed with the broker's key (bound to the user's name) before it is
//! stored, and shown once, inside the `otpauth://` URI of the enrollment. Every code is checked
//! inside a write transaction, so two uses of one code race to one winner. Wrong codes are
//! recorded (`mfa.refused`) and rate-limited by `airlock_core::mfa`.

use airlock_core::audit::{AuditEvent, EventKind};
use airlock_core::ids::UserName;
use airlock_core::mfa::{Attempts, Authenticator, MfaError, SEED_BYTES};
use airlock_store::StoredMfa;
use serde_json::json;
use time::OffsetDateTime;

use crate::broker::{Broker, BrokerError, Caller};
use crate::secrets::SecretError;

impl Broker {
    /// Starts (or starts again, until confirmed) the caller's enrollment; returns the
    /// `otpauth://` URI to show once. Nothing is trusted until [`Broker::confirm_mfa`].
    pub async fn enroll_mfa(&self, caller: &Caller) -> Result<String, BrokerError> {
        let user = &caller.principal.name;
        let mut seed = [0u8; SEED_BYTES];
        getrandom::fill(&mut seed).map_err(|e| SecretError::Random(e.to_string()))?;
        let authenticator =
            Authenticator::new(&seed, &self.settings.mfa.issuer, user.as_str()).map_err(BrokerError::Mfa)?;
        let sealed = self.key().seal(user.as_str(), &seed)?;
        let mut tx = self.store().begin().await?;
        if tx.mfa(user).await?.is_some_and(|m| m.confirmed_at.is_some()) {
            return Err(BrokerError::MfaAlreadyEnrolled);
        }
        tx.put_unconfirmed_mfa(user, &sealed).await?;
        tx.commit().await?;
        Ok(authenticator.uri())
    }

    /// Confirms the caller's enrollment with a first code, which also counts as a step-up.
    pub async fn confirm_mfa(&self, caller: &Caller, code: &str) -> Result<(), BrokerError> {
        self.prove_mfa(caller, code, Proof::Confirm).await
    }

    /// Proves a second factor for the token the caller called with: for `[mfa] fresh_for`, the
    /// policies see `context.mfa` and what needs a fresh factor is allowed.
    pub async fn verify_mfa(&self, caller: &Caller, code: &str) -> Result<(), BrokerError> {
        self.prove_mfa(caller, code, Proof::StepUp).await
    }

    /// Removes `user`'s authenticator (a lost phone); they enroll again.
    pub async fn reset_mfa(&self, user: &UserName, actor: &str) -> Result<(), BrokerError> {
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        if !tx.delete_mfa(user).await? {
            return Err(BrokerError::MfaNotEnrolled);
        }
        let event = AuditEvent {
            kind: EventKind::MfaReset,
            actor: actor.to_owned(),
            at: now,
            details: json!({ "user": user }),
        };
        tx.append(vec![event]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether the caller proved a second factor within `[mfa] fresh_for` of `now`.
    pub fn has_fresh_mfa(&self, caller: &Caller, now: OffsetDateTime) -> bool {
        caller.mfa_at.is_some_and(|at| at <= now && now < self.mfa_fresh_until(at))
    }

    /// Until when a second factor proved at `at` counts as fresh.
    pub fn mfa_fresh_until(&self, at: OffsetDateTime) -> OffsetDateTime {
        at + self.settings.mfa.fresh_for.as_time()
    }

    /// Refuses `what` unless the caller has a fresh second factor.
    pub(crate) fn require_fresh_mfa(
        &self,
        caller: &Caller,
        now: OffsetDateTime,
        what: &'static str,
    ) -> Result<(), BrokerError> {
        if self.has_fresh_mfa(caller, now) { Ok(()) } else { Err(BrokerError::MfaRequired(what)) }
    }

    async fn prove_mfa(&self, caller: &Caller, code: &str, proof: Proof) -> Result<(), BrokerError> {
        let token = caller.token.ok_or(BrokerError::NotALogin)?;
        let user = &caller.principal.name;
        let now = self.clock().now();
        let mut tx = self.store().begin().await?;
        let stored = tx.mfa(user).await?;
        let stored = match (stored, proof) {
            (None, _) | (Some(StoredMfa { confirmed_at: None, .. }), Proof::StepUp) => {
                return Err(BrokerError::MfaNotEnrolled);
            }
            (Some(StoredMfa { confirmed_at: Some(_), .. }), Proof::Confirm) => {
                return Err(BrokerError::MfaAlreadyEnrolled);
            }
            (Some(stored), _) => stored,
        };
        let seed = self.key().unseal(user.as_str(), &stored.sealed_seed)?;
        let authenticator =
            Authenticator::new(&seed, &self.settings.mfa.issuer, user.as_str()).map_err(BrokerError::Mfa)?;
        let (attempts, checked) = authenticator.check(code, now, stored.attempts);
        let confirmed_at = matches!((&checked, proof), (Ok(()), Proof::Confirm)).then_some(now);
        tx.update_mfa(user, &attempts, confirmed_at).await?;
        let event = match &checked {
            Ok(()) => {
                tx.set_token_mfa(token, now).await?;
                proof_event(proof.kind(), user, now, &attempts, None)
            }
            Err(refused) => proof_event(EventKind::MfaRefused, user, now, &attempts, Some(refused)),
        };
        tx.append(vec![event]).await?;
        tx.commit().await?;
        checked.map_err(BrokerError::Mfa)
    }
}

/// What a code is proving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    Confirm,
    StepUp,
}

impl Proof {
    fn kind(self) -> EventKind {
        match self {
            Proof::Confirm => EventKind::MfaEnrolled,
            Proof::StepUp => EventKind::MfaVerified,
        }
    }
}

fn proof_event(
    kind: EventKind,
    user: &UserName,
    at: OffsetDateTime,
    attempts: &Attempts,
    refused: Option<&MfaError>,
) -> AuditEvent {
    let mut details = json!({ "user": user });
    if let Some(refused) = refused {
        details["reason"] = json!(refused.to_string());
        details["failures"] = json!(attempts.failures);
    }
    AuditEvent { kind, actor: user.to_string(), at, details }
}
