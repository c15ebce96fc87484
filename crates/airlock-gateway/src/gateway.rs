//! The gateway: a listener that admits sessions, and a watcher that cuts them when their grant
//! ends. A grant's end reaches a session three ways: its own timer at the grant's end; a push
//! (the broker's grant changes) after which the live grants are reloaded and every session of an
//! ended grant is cut; and failing closed, when the broker cannot be asked for longer than a
//! bound, every session is cut.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::ids::{ResourceName, RoleName};
use airlock_postgres::roles::RoleKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::admission::serve_connection;
use crate::authority::Authority;
use crate::guard::{Allowed, Guard};
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            require_tls: true,
            idle_timeout: Duration::from_secs(15 * 60),
            redact_literals: false,
            fail_closed_after: Duration::from_secs(10),
            recheck_every: Duration::from_secs(5),
        }
    }
}

/// A resource the gateway serves: where its database is, and what each role's statements may do.
#[derive(Debug, Clone)]
pub struct ResourceTarget {
    pub address: TargetAddress,
    pub roles: HashMap<RoleName, Allowed>,
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
    pub(crate) guard: Arc<Guard>,
    pub(crate) recorder: Recorder,
    pub(crate) registry: Registry,
}

/// Everything a gateway needs to start.
pub struct Parts<A> {
    pub authority: A,
    pub settings: Settings,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub targets: HashMap<ResourceName, ResourceTarget>,
    pub verifier: Verifier,
    pub role_key: RoleKey,
}

/// Serves sessions on `listener` until `shutdown` turns true; then cuts every session, waits for
/// them (a few seconds at most) and for their audit records to be written.
pub async fn serve<A: Authority>(parts: Parts<A>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let (recorder, writer) = Recorder::start(parts.authority.clone());
    let shared = Arc::new(Shared {
        authority: parts.authority,
        settings: parts.settings,
        tls: parts.tls,
        targets: parts.targets,
        verifier: parts.verifier,
        role_key: parts.role_key,
        guard: Arc::new(Guard::new()),
        recorder,
        registry: Registry::default(),
    });
    let watcher = tokio::spawn(watch_grants(shared.clone(), shutdown.clone()));
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            () = stopping(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    sessions.spawn(serve_connection(shared.clone(), socket, peer));
                }
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
    drop(shared);
    let _ = writer.await;
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

/// Completes once `shutdown` turns true (or its sender is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
