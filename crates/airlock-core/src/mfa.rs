//! A second factor: TOTP (RFC 6238: SHA-1, six digits, 30-second steps, one step of skew either
//! way, which is what every authenticator app speaks).
//!
//! What this adds to the RFC, which `totp-rs` leaves to its callers: a code is accepted once
//! (a step at or before the last accepted one is a replay, even inside its window), and wrong
//! codes are rate-limited ([`MAX_FAILURES`] per [`FAILURE_WINDOW`], then refused without
//! looking at the code until the window has passed). The seed comes from the caller (random
//! bytes are I/O); storing it sealed is the broker's business.

use time::{Duration, OffsetDateTime};
use totp_rs::{Builder, Totp};

/// Wrong codes allowed per [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 5;

/// How long wrong codes count against a user.
pub const FAILURE_WINDOW: Duration = Duration::minutes(5);

/// Bytes of a seed: 160 bits, as RFC 4226 recommends.
pub const SEED_BYTES: usize = 20;

/// Why a code was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MfaError {
    #[error("wrong code")]
    Wrong,
    #[error("this code was already used; wait for the next one")]
    Replayed,
    #[error("too many wrong codes; try again after {until}")]
    TooManyAttempts { until: OffsetDateTime },
    #[error("a TOTP seed must be {SEED_BYTES} bytes")]
    BadSeed,
}

/// Where a user's authenticator stands: the last step accepted and recent wrong codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attempts {
    /// The last accepted time step; only later steps are accepted.
    pub last_step: u64,
    /// Wrong codes since `failures_since`.
    pub failures: u32,
    pub failures_since: Option<OffsetDateTime>,
}

/// A user's authenticator: their seed, for one account name.
pub struct Authenticator {
    totp: Totp,
}

impl Authenticator {
    /// `account` is shown in the authenticator app beside `issuer`; neither may hold a colon.
    pub fn new(seed: &[u8], issuer: &str, account: &str) -> Result<Self, MfaError> {
        if seed.len() != SEED_BYTES {
            return Err(MfaError::BadSeed);
        }
        let label = |text: &str| text.replace(':', "_");
        let totp = Builder::new()
            .with_secret(seed)
            .with_issuer(Some(label(issuer)))
            .with_account_name(label(account))
            .build()
            .map_err(|_| MfaError::BadSeed)?;
        Ok(Self { totp })
    }

    /// The `otpauth://` URI an authenticator app enrolls from (it holds the seed: show it once).
    pub fn uri(&self) -> String {
        self.totp.to_url().expect("issuer and account are set and hold no colon")
    }

    /// The code for `at` (what the user's app shows then).
    pub fn code(&self, at: OffsetDateTime) -> String {
        self.totp.generate(unix_seconds(at)).to_string()
    }

    /// Checks `code` at `now` against `attempts`, returning the attempts to store whatever the
    /// outcome (a wrong code counts) and whether the code was accepted.
    pub fn check(&self, code: &str, now: OffsetDateTime, attempts: Attempts) -> (Attempts, Result<(), MfaError>) {
        let mut next = attempts;
        let window_open = attempts.failures_since.is_some_and(|since| now < since + FAILURE_WINDOW);
        if !window_open {
            next.failures = 0;
            next.failures_since = None;
        }
        if next.failures >= MAX_FAILURES {
            let until = next.failures_since.map_or(now, |since| since + FAILURE_WINDOW);
            return (next, Err(MfaError::TooManyAttempts { until }));
        }
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        match self.totp.check(&code, unix_seconds(now)) {
            Some(step) if step > attempts.last_step => {
                next.last_step = step;
                (next, Ok(()))
            }
            matched => {
                next.failures += 1;
                next.failures_since.get_or_insert(now);
                (next, Err(if matched.is_some() { MfaError::Replayed } else { MfaError::Wrong }))
            }
        }
    }
}

fn unix_seconds(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const SEED: [u8; SEED_BYTES] = *b"12345678901234567890";

    fn authenticator() -> Authenticator {
        Authenticator::new(&SEED, "Airlock", "alice").unwrap()
    }

    #[test]
    fn rfc_6238_test_vector() {
        // RFC 6238 appendix B, SHA-1, T = 59 s: 94287082 (eight digits; six are the last six).
        let at = OffsetDateTime::from_unix_timestamp(59).unwrap();
        assert_eq!(authenticator().code(at), "287082");
    }

    #[test]
    fn a_code_is_accepted_once_and_only_later_steps_after_it() {
        let now = datetime!(2026-11-23 10:00:00 UTC);
        let auth = authenticator();
        let (after, ok) = auth.check(&auth.code(now), now, Attempts::default());
        assert_eq!(ok, Ok(()));
        let (replayed, again) = auth.check(&auth.code(now), now + Duration::seconds(5), after);
        assert_eq!(again, Err(MfaError::Replayed));
        assert_eq!(replayed.failures, 1);
        // The previous step's code is inside the skew but older than the accepted one.
        let (_, older) = auth.check(&auth.code(now - Duration::seconds(30)), now, after);
        assert_eq!(older, Err(MfaError::Replayed));
        let later = now + Duration::seconds(30);
        assert_eq!(auth.check(&auth.code(later), later, after).1, Ok(()));
    }

    #[test]
    fn one_step_of_skew_either_way_and_no_more() {
        let now = datetime!(2026-11-23 10:00:00 UTC);
        let auth = authenticator();
        for offset in [-30, 30] {
            let code = auth.code(now + Duration::seconds(offset));
            assert_eq!(auth.check(&code, now, Attempts::default()).1, Ok(()), "offset {offset}");
        }
        for offset in [-90, 90] {
            let code = auth.code(now + Duration::seconds(offset));
            assert_eq!(auth.check(&code, now, Attempts::default()).1, Err(MfaError::Wrong), "offset {offset}");
        }
    }

    #[test]
    fn wrong_codes_lock_the_user_out_until_the_window_passes() {
        let start = datetime!(2026-11-23 10:00:00 UTC);
        let auth = authenticator();
        let mut attempts = Attempts::default();
        for i in 0..MAX_FAILURES {
            let result;
            (attempts, result) = auth.check("000000", start + Duration::seconds(i.into()), attempts);
            assert_eq!(result, Err(MfaError::Wrong));
        }
        // Locked: even the right code is refused without being looked at, and is not used up.
        let now = start + Duration::minutes(1);
        let (locked, refused) = auth.check(&auth.code(now), now, attempts);
        assert_eq!(refused, Err(MfaError::TooManyAttempts { until: start + FAILURE_WINDOW }));
        assert_eq!(locked.last_step, 0);
        let later = start + FAILURE_WINDOW;
        let (cleared, ok) = auth.check(&auth.code(later), later, locked);
        assert_eq!(ok, Ok(()));
        assert_eq!((cleared.failures, cleared.failures_since), (0, None));
    }

    #[test]
    fn the_uri_names_issuer_and_account_and_bad_seeds_are_refused() {
        let uri = authenticator().uri();
        assert!(uri.starts_with("otpauth://totp/Airlock:alice?"), "{uri}");
        assert!(uri.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"), "{uri}");
        assert!(matches!(Authenticator::new(&SEED[..10], "Airlock", "alice"), Err(MfaError::BadSeed)));
    }
}
