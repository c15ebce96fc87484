//! `grant_ending`: a warning that a grant ends soon, so its holder can finish or ask again.
//!
//! No audit record says "ends in ten minutes", so this is a periodic pass over the live grants
//! ([`CHECK_EVERY`], timed by the broker's clock, so tests move it by hand). Each grant is warned
//! about once, in the pass that first finds it within [`WARN_BEFORE`] of its end. The warned ids
//! are kept in memory only (grants that are no longer live are forgotten): after a restart
//! inside those ten minutes, a grant may be warned about again. A grant no longer than
//! [`WARN_BEFORE`] in all is not warned about: its `grant_started` notice already said when it
//! ends.

use std::collections::HashSet;

use airlock_core::ids::GrantId;
use airlock_core::lifecycle::Grant;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::Router;
use crate::Broker;

/// How long before its end a grant is warned about.
pub const WARN_BEFORE: time::Duration = time::Duration::minutes(10);
/// How often the live grants are looked at.
pub const CHECK_EVERY: time::Duration = time::Duration::seconds(30);

/// Looks at the live grants at start and every [`CHECK_EVERY`] until `stop` turns true.
pub(super) async fn watch(broker: Broker, router: Router, mut stop: watch::Receiver<bool>) {
    let mut warned = HashSet::new();
    loop {
        let now = broker.clock().now();
        match broker.live_grants().await {
            Ok(live) => {
                for grant in ending_soon(&live, &mut warned, now) {
                    router.grant_ending(grant, now);
                }
            }
            // Already slower than the back-off's cap: the next pass, CHECK_EVERY later, retries.
            Err(error) => {
                metrics::counter!(crate::metrics::BACKGROUND_FAILURES, "task" => "grant_ending").increment(1);
                tracing::error!(%error, "cannot read the live grants to warn of their end");
            }
        }
        tokio::select! {
            _ = broker.clock().sleep_until(now + CHECK_EVERY) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// The grants of `live` to warn about at `now`, soonest end first; they join `warned`, which
/// forgets grants that are no longer live.
fn ending_soon<'a>(live: &'a [Grant], warned: &mut HashSet<GrantId>, now: OffsetDateTime) -> Vec<&'a Grant> {
    warned.retain(|id| live.iter().any(|grant| grant.id == *id));
    let mut due: Vec<&Grant> = live
        .iter()
        .filter(|grant| grant.ends_at - grant.starts_at > WARN_BEFORE && grant.ends_at - now <= WARN_BEFORE)
        .filter(|grant| warned.insert(grant.id))
        .collect();
    due.sort_by_key(|grant| grant.ends_at);
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::ids::RequestId;
    use airlock_core::lifecycle::GrantState;
    use time::macros::datetime;
    use uuid::Uuid;

    const T0: OffsetDateTime = datetime!(2026-11-23 10:00 UTC);

    fn grant(n: u128, minutes: i64) -> Grant {
        Grant {
            id: GrantId::from_uuid(Uuid::from_u128(n)),
            request_id: RequestId::from_uuid(Uuid::from_u128(n)),
            holder: "alice".parse().unwrap(),
            resource: "demo-db".parse().unwrap(),
            role: "read".parse().unwrap(),
            starts_at: T0,
            ends_at: T0 + time::Duration::minutes(minutes),
            state: GrantState::Active,
            closure: None,
        }
    }

    fn ids(grants: &[&Grant]) -> Vec<GrantId> {
        grants.iter().map(|grant| grant.id).collect()
    }

    #[test]
    fn each_grant_is_warned_once_inside_the_window_and_forgotten_when_it_ends() {
        let (thirty, forty, short) = (grant(1, 30), grant(2, 40), grant(3, 10));
        let live = [thirty.clone(), forty.clone(), short];
        let mut warned = HashSet::new();
        let at = |minutes| T0 + time::Duration::minutes(minutes);
        assert!(ending_soon(&live, &mut warned, at(19)).is_empty(), "11 minutes left is not yet");
        assert_eq!(
            ids(&ending_soon(&live, &mut warned, at(20))),
            [thirty.id],
            "10 minutes left, and never the short one"
        );
        assert!(ending_soon(&live, &mut warned, at(25)).is_empty(), "once");
        assert_eq!(ids(&ending_soon(&live, &mut warned, at(31))), [forty.id]);
        assert_eq!(warned.len(), 2);
        assert!(ending_soon(&[], &mut warned, at(41)).is_empty());
        assert!(warned.is_empty(), "ended grants are forgotten");
    }
}
