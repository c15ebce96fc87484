//! The gateway: a listener that admits sessions, and a watcher that cuts them when their grant
//! ends. A grant's end reaches a session three ways: its own timer at the grant's end; a push
//! (the broker's grant changes) after which the live grants are reloaded and every session of an
//! ended grant is cut; and failing closed, when the broker cannot be asked for longer than a
//! bound, every session is cut.
//!
//! The listener also keeps the front door ([`crate::limits`]): a connection is counted as
//! logging in from its accept until its credential verifies, and one over
//! [`Settings::max_pending_logins`] is refused at once; a task summarises, once per limit, the
//! logins refused to sources with too many failures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use airlock_core::audit::{AuditEvent, EventKind};
use airlock_core::ids::{ResourceName, RoleName};
use airlock_postgres::roles::RoleKey;
use serde_json::json;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::admission::{refuse_at_the_door, serve_connection};
use crate::authority::Authority;
use crate::guard::{Allowed, Guard};
use crate::limits::{FailureLimit, Failures, Summary};
use crate::recorder::Recorder;
use crate::registry::Registry;
use crate::relay::Ending;
use crate::target::TargetAddress;

/// How the gateway behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Refuse clients that do not use TLS.
    pub require_tls: bool,
    /// A session with no traffic and no statement running for this long is closed.
    pub idle_timeout: Duration,
    /// Record statements with their literals replaced by `$n`.
    pub redact_literals: bool,
    /// How long the broker may be unreachable before every session is cut.
    pub fail_closed_after: Duration,
    /// How often live grants are reloaded without a push.
    pub recheck_every: Duration,
    /// A connection that has not shown a valid credential this long after it was accepted is
    /// closed (told why if it sent its startup message).
    pub startup_timeout: Duration,
    /// Connections logging in (accepted, credential not yet verified) at once, at most; more are
    /// refused at once.
    pub max_pending_logins: usize,
    /// When a source with failed logins is refused before its credential is read.
    pub login_failures: FailureLimit,
    /// The longest statement text read, in bytes; longer texts are refused before parsing.
    pub max_statement_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            require_tls: true,
            idle_timeout: Duration::from_secs(15 * 60),
            redact_literals: false,
            fail_closed_after: Duration::from_secs(10),
            recheck_every: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(10),
            max_pending_logins: 256,
            login_failures: FailureLimit::default(),
            max_statement_bytes: 1 << 20,
        }
    }
}

/// A resource the gateway serves: where its database is, and what each role's statements may do.
#[derive(Debug, Clone)]
pub struct ResourceTarget {
    pub address: TargetAddress,
    pub roles: HashMap<RoleName, Allowed>,
    /// Statements are recorded before they are sent (the catalog's `audit`, `"before"` by default).
    pub audit_before: bool,
}

/// The broker's public key, to verify credentials offline.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub public_key: [u8; 32],
}

/// What every session of a gateway shares.
pub struct Shared<A> {
    pub(crate) authority: A,
    pub(crate) settings: Settings,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) targets: HashMap<ResourceName, ResourceTarget>,
    pub(crate) verifier: Verifier,
    pub(crate) role_key: RoleKey,
    pub(crate) name: String,
    pub(crate) guard: Arc<Guard>,
    pub(crate) recorder: Recorder,
    pub(crate) registry: Registry,
    /// One permit per connection logging in.
    pub(crate) pending: Arc<Semaphore>,
    pub(crate) failures: Mutex<Failures>,
}

impl<A> Shared<A> {
    pub(crate) fn failures(&self) -> MutexGuard<'_, Failures> {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Connections over the pending-login cap being told so, at most; beyond, they are closed
/// without a word.
const REFUSING_AT_ONCE: usize = 64;
/// How often the summaries of ended login limits are recorded.
const SUMMARISE_EVERY: Duration = Duration::from_secs(1);

/// Everything a gateway needs to start.
pub struct Parts<A> {
    pub authority: A,
    pub settings: Settings,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub targets: HashMap<ResourceName, ResourceTarget>,
    pub verifier: Verifier,
    pub role_key: RoleKey,
    /// The gateway's own name, kept across restarts (a UUID): its `session.started` records
    /// carry it, so after a crash it finds the sessions whose end it could not record.
    pub name: String,
}

/// Serves sessions on `listener` until `shutdown` turns true; then cuts every session, waits for
/// them (a few seconds at most) and for their audit records to be written.
pub async fn serve<A: Authority>(parts: Parts<A>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let (recorder, writer) = Recorder::start(parts.authority.clone());
    let recovering = tokio::spawn(end_crashed_sessions(parts.authority.clone(), parts.name.clone(), recorder.clone()));
    let pending = Arc::new(Semaphore::new(parts.settings.max_pending_logins.min(Semaphore::MAX_PERMITS)));
    let failures = Mutex::new(Failures::new(parts.settings.login_failures));
    let shared = Arc::new(Shared {
        authority: parts.authority,
        settings: parts.settings,
        tls: parts.tls,
        targets: parts.targets,
        verifier: parts.verifier,
        role_key: parts.role_key,
        name: parts.name,
        guard: Arc::new(Guard::new()),
        recorder,
        registry: Registry::default(),
        pending,
        failures,
    });
    let watcher = tokio::spawn(watch_grants(shared.clone(), shutdown.clone()));
    let summaries = tokio::spawn(summarise_limits(shared.clone(), shutdown.clone()));
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            () = stopping(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => match shared.pending.clone().try_acquire_owned() {
                    Ok(logging_in) => {
                        sessions.spawn(serve_connection(shared.clone(), socket, peer, logging_in));
                    }
                    Err(_) => {
                        airlock_broker::metrics::gateway_login_refused("pending_limit");
                        tracing::debug!(%peer, "too many connections logging in; refused");
                        if let Ok(turn) = refusing.clone().try_acquire_owned() {
                            sessions.spawn(refuse_at_the_door(shared.clone(), socket, turn));
                        }
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    shared.registry.cut_all(&Ending::Shutdown);
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while sessions.join_next().await.is_some() {} }).await;
    sessions.abort_all();
    let _ = watcher.await;
    let _ = summaries.await;
    // Every connection has ended: no refusal can come after these summaries.
    let all = shared.failures().take_all();
    record_summaries(&shared, all).await;
    recovering.abort();
    let _ = recovering.await;
    drop(shared);
    let _ = writer.await;
}

/// Records the end (`reason = "crash"`) of every session the gateway named `name` started in an
/// earlier life and could not record the end of (it was killed); asks again, backing off, until
/// the broker answers. It runs before any session of this life has started, so none of them is
/// taken for one.
async fn end_crashed_sessions<A: Authority>(authority: A, name: String, recorder: Recorder) {
    let mut wait = Duration::from_millis(200);
    let unended = loop {
        match authority.unended_sessions(&name).await {
            Ok(unended) => break unended,
            Err(error) => {
                tracing::warn!(%error, "cannot ask for sessions a crash left unended yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    };
    let count = unended.len();
    for (actor, started) in unended {
        let mut details = json!({ "reason": "crash" });
        for field in ["session", "grant", "resource", "role", "gateway"] {
            if let Some(value) = started.get(field) {
                details[field] = value.clone();
            }
        }
        let event = AuditEvent { kind: EventKind::SessionEnded, actor, at: OffsetDateTime::now_utc(), details };
        recorder.record(event).await;
    }
    if count > 0 {
        tracing::info!(count, "recorded the end of sessions a crash left open");
    }
}

/// Cuts the sessions of grants that are no longer live, on every grant change and periodically;
/// cuts every session when the broker cannot be asked for longer than the bound.
async fn watch_grants<A: Authority>(shared: Arc<Shared<A>>, mut shutdown: watch::Receiver<bool>) {
    let mut changes = shared.authority.grant_changes();
    let mut unconfirmed_since: Option<Instant> = None;
    loop {
        changes.borrow_and_update();
        let wait = match shared.authority.live_grants().await {
            Ok(live) => {
                unconfirmed_since = None;
                let cut = shared.registry.cut_ended(&live);
                if cut > 0 {
                    tracing::info!(sessions = cut, "sessions of ended grants cut");
                }
                shared.settings.recheck_every
            }
            Err(error) => {
                let since = *unconfirmed_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= shared.settings.fail_closed_after {
                    let cut = shared.registry.cut_all(&Ending::Unconfirmed);
                    tracing::error!(%error, sessions = cut, "the broker cannot confirm live grants; sessions cut");
                } else {
                    tracing::warn!(%error, "the broker cannot confirm live grants");
                }
                Duration::from_millis(500)
            }
        };
        tokio::select! {
            () = stopping(&mut shutdown) => return,
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Records, once per limit, how many logins a source with too many failures had refused, every
/// [`SUMMARISE_EVERY`] for the limits that ended (`serve` records the rest when it stops).
async fn summarise_limits<A: Authority>(shared: Arc<Shared<A>>, mut shutdown: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(SUMMARISE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopping(&mut shutdown) => return,
            _ = ticks.tick() => {
                let ended = shared.failures().take_ended(Instant::now());
                record_summaries(&shared, ended).await;
            }
        }
    }
}

async fn record_summaries<A: Authority>(shared: &Shared<A>, summaries: Vec<Summary>) {
    let limit = shared.settings.login_failures;
    for Summary { source, refused } in summaries {
        let details = json!({
            "source": source.to_string(),
            "refused": refused,
            "reason": format!(
                "too many failed logins ({} within {}): logins refused before their credential was read",
                limit.max_failures,
                crate::limits::spoken(limit.window)
            ),
        });
        let at = OffsetDateTime::now_utc();
        let event = AuditEvent { kind: EventKind::SessionRefused, actor: "gateway".to_owned(), at, details };
        shared.recorder.record(event).await;
    }
}

/// Completes once `shutdown` turns true (or its sender is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::authority::AuthorityError;
    use crate::authority::doubles::{Appends, NoGrants};
    use crate::limits::Source;

    /// Keeps every event recorded.
    #[derive(Clone, Default)]
    struct Events(Arc<Mutex<Vec<AuditEvent>>>);

    impl Events {
        fn recorded(&self) -> Vec<AuditEvent> {
            self.0.lock().unwrap().clone()
        }
    }

    impl Appends for Events {
        async fn append(&self, events: &[AuditEvent]) -> Result<(), AuthorityError> {
            self.0.lock().unwrap().extend_from_slice(events);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_limited_source_is_summarised_once_when_its_limit_ends() {
        let events = Events::default();
        let (recorder, writer) = Recorder::start(NoGrants(events.clone()));
        let limit = FailureLimit { max_failures: 2, window: Duration::from_secs(60), ..FailureLimit::default() };
        let settings = Settings { login_failures: limit, ..Settings::default() };
        let shared = Arc::new(Shared {
            authority: NoGrants(events.clone()),
            tls: None,
            targets: HashMap::new(),
            verifier: Verifier { public_key: [0; 32] },
            role_key: RoleKey::new([0; 32]),
            name: "gateway-under-test".to_owned(),
            guard: Arc::new(Guard::new()),
            recorder,
            registry: Registry::default(),
            pending: Arc::new(Semaphore::new(settings.max_pending_logins)),
            failures: Mutex::new(Failures::new(limit)),
            settings,
        });
        let (stop, stopped) = watch::channel(false);
        let summaries = tokio::spawn(summarise_limits(shared.clone(), stopped));
        let source = Source::of([192, 0, 2, 1].into());
        {
            let (mut failures, now) = (shared.failures(), Instant::now());
            failures.failed(source, now);
            failures.failed(source, now);
            for _ in 0..5 {
                assert!(failures.check(source, now).is_err());
            }
        }
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(events.recorded().is_empty(), "nothing while the limit lasts");
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let recorded = events.recorded();
        assert_eq!(recorded.len(), 1);
        assert_eq!((recorded[0].kind, recorded[0].actor.as_str()), (EventKind::SessionRefused, "gateway"));
        assert_eq!((&recorded[0].details["source"], &recorded[0].details["refused"]), (&json!("192.0.2.1"), &json!(5)));

        let _ = stop.send(true);
        summaries.await.unwrap();
        assert!(shared.failures().take_all().is_empty(), "nothing is left to summarise at shutdown");
        drop(shared);
        writer.await.unwrap();
        assert_eq!(events.recorded().len(), 1);
    }
}
