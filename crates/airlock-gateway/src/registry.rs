//! The live sessions of one gateway: how to cut them (by grant, or all), and how to route a
//! client's cancel request to the one backend it belongs to.
//!
//! A session is registered before its grant is checked, so a grant that ends between the check
//! and the session's start still reaches it: the cut waits in the session's channel.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Mutex;

use airlock_core::ids::GrantId;
use tokio::sync::watch;

use crate::relay::Ending;
use crate::target::{TargetAddress, TargetError};

/// What the gateway tells a client to quote in a cancel request (its own, random: the target's
/// real key data never reaches the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub process_id: i32,
    pub secret_key: i32,
}

/// Where a session's statements run, for cancelling them.
#[derive(Debug, Clone)]
pub struct Backend {
    pub address: TargetAddress,
    pub process_id: i32,
    pub secret_key: i32,
}

impl Backend {
    /// Asks the database to cancel what this backend is running.
    pub async fn cancel(&self) -> Result<(), TargetError> {
        crate::target::cancel(&self.address, self.process_id, self.secret_key).await
    }
}

struct Entry {
    grant: GrantId,
    backend: Option<Backend>,
    cut: watch::Sender<Option<Ending>>,
}

/// All live sessions.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<CancelKey, Entry>>,
}

/// A session's place in the registry; leaving it (drop) unregisters the session.
pub struct Registration<'a> {
    registry: &'a Registry,
    pub key: CancelKey,
    _counted: airlock_broker::metrics::SessionGauge,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CancelKey, Entry>> {
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a session of `grant`; its cuts arrive on the returned receiver.
    pub fn register(&self, grant: GrantId) -> (Registration<'_>, watch::Receiver<Option<Ending>>) {
        let (cut, cuts) = watch::channel(None);
        let mut sessions = self.lock();
        let key = loop {
            let random = uuid::Uuid::new_v4().as_u64_pair().0;
            let key = CancelKey { process_id: (random >> 33) as i32 + 1, secret_key: random as i32 };
            if !sessions.contains_key(&key) {
                break key;
            }
        };
        sessions.insert(key, Entry { grant, backend: None, cut });
        (Registration { registry: self, key, _counted: airlock_broker::metrics::session_opened() }, cuts)
    }

    /// Records where the session's statements run, once it is logged in.
    pub fn set_backend(&self, key: CancelKey, backend: Backend) {
        if let Some(entry) = self.lock().get_mut(&key) {
            entry.backend = Some(backend);
        }
    }

    /// The backend that `key` may cancel, if `key` is exactly a live session's.
    pub fn backend(&self, key: CancelKey) -> Option<Backend> {
        self.lock().get(&key).and_then(|entry| entry.backend.clone())
    }

    /// Cuts every session whose grant is not in `live`; returns how many.
    pub fn cut_ended(&self, live: &HashSet<GrantId>) -> usize {
        self.cut_where(|grant| !live.contains(grant), &Ending::GrantEnded)
    }

    /// Cuts every session, saying why.
    pub fn cut_all(&self, ending: &Ending) -> usize {
        self.cut_where(|_| true, ending)
    }

    fn cut_where(&self, mut matches: impl FnMut(&GrantId) -> bool, ending: &Ending) -> usize {
        let sessions = self.lock();
        let mut cut = 0;
        for entry in sessions.values().filter(|entry| matches(&entry.grant)) {
            let fresh = entry.cut.send_if_modified(|current| {
                let first = current.is_none();
                if first {
                    *current = Some(ending.clone());
                }
                first
            });
            cut += usize::from(fresh);
        }
        cut
    }

    /// How many sessions are live.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn cuts_reach_only_ended_grants_and_only_once() {
        let registry = Registry::default();
        let (live, ended) = (GrantId::from_uuid(Uuid::now_v7()), GrantId::from_uuid(Uuid::now_v7()));
        let (_a, live_cuts) = registry.register(live);
        let (b, ended_cuts) = registry.register(ended);
        assert_eq!(registry.cut_ended(&HashSet::from([live])), 1);
        assert_eq!(registry.cut_ended(&HashSet::from([live])), 0, "a session is cut once");
        assert_eq!(*ended_cuts.borrow(), Some(Ending::GrantEnded));
        assert_eq!(*live_cuts.borrow(), None);
        drop(b);
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.cut_all(&Ending::Shutdown), 1);
        assert_eq!(*live_cuts.borrow(), Some(Ending::Shutdown));
    }

    #[test]
    fn cancel_keys_must_match_exactly() {
        let registry = Registry::default();
        let (session, _cuts) = registry.register(GrantId::from_uuid(Uuid::now_v7()));
        let address = TargetAddress { host: "127.0.0.1".into(), port: 5432, database: "d".into(), tls: None };
        registry.set_backend(session.key, Backend { address, process_id: 7, secret_key: 9 });
        assert_eq!(registry.backend(session.key).map(|b| b.process_id), Some(7));
        let guessed = CancelKey { secret_key: session.key.secret_key.wrapping_add(1), ..session.key };
        assert!(registry.backend(guessed).is_none());
    }
}
