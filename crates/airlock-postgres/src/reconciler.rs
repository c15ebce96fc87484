//! The reconciler: converges every PostgreSQL target on the set of live grants.
//!
//! Level-triggered, not event-driven: it compares the live grants from the broker with the
//! per-grant roles on each target, creates the roles that are missing and drops the ones no live
//! grant explains. So a crash, a restart, a lost notification or a grant ended by another process
//! (`airlock admin user disable`) all converge the same way: at the next pass.
//!
//! **Keeping up.** One coordinating loop ([`Reconciler::run`]) looks again whenever a grant starts
//! or ends in this process, when the earliest live grant's end comes (so a drop does not wait
//! for the expiry scheduler), when a piece of work finishes, and every [`Reconciler::every`]. It
//! compares the live grants with the roles it knows are on each target (listed from the database
//! at start and every `every`, and kept up to date by its own changes in between) and hands the
//! difference to workers: per target, up to [`Tuning::creating`] batches of creations and
//! [`Tuning::dropping`] batches of drops at once, each on a connection of the target's small pool
//! (kept open between passes, over TLS when the catalog asks for it, see [`crate::tls`]; a broken
//! one is replaced, so a restarted or failed-over database needs nothing special). A batch creates
//! (or ends) up to [`Tuning::batch`] roles in one transaction; when it fails, its roles are tried
//! again one by one, so one bad grant does not hold up the others. Creations and drops have
//! workers of their own: a drop never waits behind creations. A role (or a target) that failed is
//! tried again after a back-off that doubles, up to [`ROLE_RETRY_MAX`] (or `every`).
//!
//! **Never a role for an ended grant.** Right before a batch runs, each grant is checked against
//! the clock: one with less than [`CREATE_MARGIN`] left gets no role (`target.role_unchanged`).
//! The role's `VALID UNTIL` is its grant's end anyway.
//!
//! **Intent first.** Before a batch touches the database the connector records its intent, one
//! record per role (`target.role_creating`, `target.role_dropping`), all committed together; when
//! they cannot be recorded, the database is not touched. After the batch it records each role's
//! outcome: `target.role_created`, `target.role_dropped`, `target.failed` or
//! `target.role_unchanged`. An outcome that cannot be recorded is kept and recorded at the next
//! pass. An intent a crash left without its outcome is resolved by the first pass on its target
//! after the restart ([`RECOVERY_WINDOW`]): the database says whether the role was created or
//! dropped, and the outcome is recorded as such (`"recovered": true`), or as not done
//! (`target.role_unchanged`).
//!
//! At start and every [`STANDING_EVERY`] it also reads each target's standing privileges
//! ([`crate::standing`]) and records them (`target.standing`) whenever they differ from what it
//! recorded last, so reports show what was found and since when.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use airlock_broker::{Broker, BrokerError};
use airlock_core::audit::{AuditEvent, EventKind, SYSTEM_ACTOR, unix_ms};
use airlock_core::catalog::{Catalog, GrantLogin, PostgresTarget};
use airlock_core::ids::{GrantId, ResourceName, RoleName};
use airlock_core::lifecycle::Grant;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Connection, NoTls, Socket};

use crate::grant_ca::{GATEWAY_LOGIN_ROLE, GrantCa};
use crate::roles::{
    NewRole, RoleError, RoleKey, TargetRoles, database, describe, ensure_holding_role, ensure_login_group,
    grant_of_role, role_name,
};
use crate::standing::{Finding, standing};
use crate::tls::{TargetTls, TlsError};

/// Why a target could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("resource `{resource}`: the connector's password: {message}")]
    Secret { resource: ResourceName, message: String },
    #[error("resource `{resource}`: tls: {source}")]
    Tls { resource: ResourceName, source: TlsError },
    #[error("resource `{resource}`: cannot connect to {address}: {message}")]
    Connect { resource: ResourceName, address: String, message: String },
    #[error("resource `{resource}`: {source}")]
    Role { resource: ResourceName, source: RoleError },
    #[error(
        "resource `{resource}`: the connector logs in as `{user}`, a superuser; give it a login with CREATEROLE and the mapped roles WITH ADMIN OPTION only (docs/postgres.md), or set allow_superuser_connector = true to accept the risk"
    )]
    SuperuserConnector { resource: ResourceName, user: String },
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// One target database and how Airlock roles map onto its roles.
#[derive(Clone)]
pub struct Target {
    pub resource: ResourceName,
    /// The connector's own login (it needs CREATEROLE and the mapped roles WITH ADMIN OPTION).
    pub connection: tokio_postgres::Config,
    /// TLS to the target; none for plaintext (`tls = "disable"`, or a throwaway cluster).
    pub tls: Option<TargetTls>,
    pub database_roles: BTreeMap<RoleName, Vec<String>>,
    /// The Airlock roles whose grants' tables outlive them (owned by [`crate::roles::HOLDING_ROLE`]).
    pub keep_tables: BTreeSet<RoleName>,
    /// The connector may be a superuser (the catalog's `allow_superuser_connector`).
    pub allow_superuser_connector: bool,
    /// Roles the standing report accepts with `SUPERUSER`, `CREATEROLE` or `BYPASSRLS`.
    pub privileged_roles: Vec<String>,
    /// Grant roles log in with certificates only: each is made a member of
    /// [`GATEWAY_LOGIN_ROLE`], which `pg_hba.conf` names ([`crate::grant_ca`]).
    pub certificate_logins: bool,
}

impl Target {
    /// The catalog's `postgres` resources that name an address, with their secrets read and
    /// their TLS configured now.
    pub fn from_catalog(catalog: &Catalog) -> Result<Vec<Target>, ReconcileError> {
        let mut targets = Vec::new();
        for resource in catalog.resources() {
            let Some(postgres @ PostgresTarget { database, admin: Some((user, secret)), .. }) = &resource.postgres
            else {
                continue;
            };
            let Some((host, port)) = postgres.host_and_port() else { continue };
            let password = airlock_broker::secrets::read_named(secret)
                .map_err(|e| ReconcileError::Secret { resource: resource.name.clone(), message: e.to_string() })?;
            let tls = TargetTls::new(&postgres.tls, host)
                .map_err(|source| ReconcileError::Tls { resource: resource.name.clone(), source })?;
            targets.push(Target::new(resource, connection(host, port, database, user, &password), tls));
        }
        Ok(targets)
    }

    /// A target for `resource` reached with `connection`, over `tls` when given.
    pub fn new(
        resource: &airlock_core::catalog::Resource,
        connection: tokio_postgres::Config,
        tls: Option<TargetTls>,
    ) -> Self {
        let database_roles = resource.roles.values().map(|r| (r.name.clone(), r.database_roles.clone())).collect();
        let keep_tables = resource.roles.values().filter(|r| r.keep_tables).map(|r| r.name.clone()).collect();
        let (allow_superuser_connector, privileged_roles, certificate_logins) = match &resource.postgres {
            Some(postgres) => (
                postgres.allow_superuser_connector,
                postgres.privileged_roles.clone(),
                postgres.grant_login == GrantLogin::Certificate,
            ),
            None => (false, Vec::new(), false),
        };
        Self {
            resource: resource.name.clone(),
            connection,
            tls,
            database_roles,
            keep_tables,
            allow_superuser_connector,
            privileged_roles,
            certificate_logins,
        }
    }

    /// Makes the gateway's logins as this target's grant roles present certificates from
    /// `grant_ca`, when the catalog says they log in that way (and the target uses TLS).
    pub fn sign_logins_with(&mut self, grant_ca: &Arc<GrantCa>) {
        if self.certificate_logins {
            self.tls = self.tls.take().map(|tls| tls.with_grant_ca(grant_ca.clone()));
        }
    }

    /// The TCP host and port of the target, when it is reached over TCP.
    pub fn endpoint(&self) -> Option<(String, u16)> {
        let port = self.connection.get_ports().first().copied().unwrap_or(5432);
        match self.connection.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => Some((host.clone(), port)),
            _ => None,
        }
    }

    /// The target's database.
    pub fn database(&self) -> &str {
        self.connection.get_dbname().unwrap_or_default()
    }

    /// Logs in to the target as the connector; the connection runs until the client is dropped.
    /// With TLS, a server that does not agree to it is refused, never spoken to in plaintext.
    pub async fn connect(&self) -> Result<(Client, JoinHandle<()>), ReconcileError> {
        let connected = match &self.tls {
            None => self.connection.connect(NoTls).await.map(drive),
            Some(tls) => {
                let mut config = self.connection.clone();
                config.ssl_mode(SslMode::Require);
                config.connect(tls.postgres()).await.map(drive)
            }
        };
        connected.map_err(|source| ReconcileError::Connect {
            resource: self.resource.clone(),
            address: self.address(),
            message: describe(&source),
        })
    }

    fn address(&self) -> String {
        match self.endpoint() {
            Some((host, port)) => format!("{host}:{port}"),
            None => "?".to_owned(),
        }
    }
}

/// Drives `connection` on a task until its client is dropped.
fn drive<T>((client, connection): (Client, Connection<Socket, T>)) -> (Client, JoinHandle<()>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    (client, tokio::spawn(async move { drop(connection.await) }))
}

/// How the connector logs in to a target.
pub fn connection(host: &str, port: u16, database: &str, user: &str, password: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .dbname(database)
        .user(user)
        .password(password)
        .application_name("airlock-connector")
        .options(crate::roles::TIMEOUTS)
        .connect_timeout(Duration::from_secs(5));
    config
}

/// What one pass changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    pub created: usize,
    pub dropped: usize,
    pub sessions_ended: i64,
    /// Targets or roles that could not be reconciled (each is logged and audited, and retried).
    pub failed: usize,
    /// Grants whose role was not created because they ended first (`target.role_unchanged`).
    pub skipped: usize,
}

impl Pass {
    fn add(&mut self, other: Pass) {
        self.created += other.created;
        self.dropped += other.dropped;
        self.sessions_ended += other.sessions_ended;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

/// How much the connector does at once on each target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Batches of roles being created at once, each on a connection of its own.
    pub creating: usize,
    /// Batches of roles being ended at once, each on a connection of its own.
    pub dropping: usize,
    /// The most roles created, or ended, in one transaction.
    pub batch: usize,
    /// Connections kept open between passes (0: a new one for each piece of work).
    pub idle: usize,
}

impl Default for Tuning {
    /// Up to 8 connections per target, all kept open: 4 creating, 3 ending, 1 listing the roles.
    fn default() -> Self {
        Self { creating: 4, dropping: 3, batch: 32, idle: 8 }
    }
}

/// How often the standing privileges of each target are read.
pub const STANDING_EVERY: Duration = Duration::from_secs(300);
/// How long reading one target's standing privileges may take before it is left for next time.
const STANDING_TIMEOUT: Duration = Duration::from_secs(30);
/// A grant with less than this left when its batch runs gets no role.
pub const CREATE_MARGIN: time::Duration = time::Duration::milliseconds(100);
/// How far back, by their grants' ends, intents left without outcome are looked for at start.
pub const RECOVERY_WINDOW: time::Duration = time::Duration::days(1);
/// The longest a role whose creation or end failed waits before it is tried again.
pub const ROLE_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long stopping waits for the work under way, so that its outcomes are recorded.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Keeps every target's per-grant roles equal to the live grants.
pub struct Reconciler {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    key: RoleKey,
    every: Duration,
    tuning: Tuning,
    targets: Vec<TargetState>,
    /// The findings last recorded for each target.
    standing: Mutex<HashMap<ResourceName, Vec<Finding>>>,
    /// Outcomes of changes made whose records could not be appended yet.
    owed: SyncMutex<Vec<AuditEvent>>,
}

/// One target, its pool of connections and what the connector knows of it.
struct TargetState {
    target: Target,
    /// Connections kept open between passes.
    idle: SyncMutex<Vec<Client>>,
    creating: Arc<Semaphore>,
    dropping: Arc<Semaphore>,
    view: SyncMutex<View>,
}

/// The per-grant roles of one target as the connector knows them.
#[derive(Default)]
struct View {
    /// The roles on the target, as last listed and changed since by this connector.
    existing: HashSet<String>,
    /// When the roles were last listed; `None` until they are.
    listed: Option<Instant>,
    /// Changes made since (when, role, whether it exists now), laid over a listing that started
    /// before them.
    recent: Vec<(Instant, String, bool)>,
    /// Roles a worker is creating or ending now.
    busy: HashSet<String>,
    /// Roles of other resources' grants on the same cluster: left alone.
    foreign: HashSet<String>,
    /// Roles whose last change failed: how many times in a row, and not before when.
    failing: HashMap<String, (u32, Instant)>,
    /// The target itself failed (unreachable, or an intent not recorded): how many times in a
    /// row, and not before when.
    down: Option<(u32, Instant)>,
    /// Intents left without outcome by a crash have been resolved.
    recovered: bool,
}

/// A grant whose role is to be created, and the details of its records.
type Planned = (Grant, Value);

/// A role to end, and its grant when the broker knows it.
struct Ending {
    name: String,
    grant: Option<Grant>,
}

/// Whether planning respects back-offs and free connections (the running loop), or does
/// everything now (one [`Reconciler::pass`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Running,
    Now,
}

impl Reconciler {
    /// How often a pass runs when nothing wakes it.
    pub const DEFAULT_EVERY: Duration = Duration::from_secs(5);

    pub fn new(broker: Broker, targets: Vec<Target>, key: RoleKey, every: Duration) -> Self {
        Self::tuned(broker, targets, key, every, Tuning::default())
    }

    /// A reconciler doing as much at once as `tuning` says.
    pub fn tuned(broker: Broker, targets: Vec<Target>, key: RoleKey, every: Duration, tuning: Tuning) -> Self {
        let tuning = Tuning {
            creating: tuning.creating.max(1),
            dropping: tuning.dropping.max(1),
            batch: tuning.batch.max(1),
            ..tuning
        };
        let targets = targets
            .into_iter()
            .map(|target| TargetState {
                target,
                idle: SyncMutex::new(Vec::new()),
                creating: Arc::new(Semaphore::new(tuning.creating)),
                dropping: Arc::new(Semaphore::new(tuning.dropping)),
                view: SyncMutex::new(View::default()),
            })
            .collect();
        let inner = Inner {
            broker,
            key,
            every,
            tuning,
            targets,
            standing: Mutex::new(HashMap::new()),
            owed: SyncMutex::new(Vec::new()),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Runs until `shutdown` turns true: the coordinating loop (see the module's documentation)
    /// and, beside it, the standing-privilege reading. At shutdown, the work under way is given
    /// [`STOP_GRACE`] to finish and record its outcomes.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let standing = self.inner.clone().record_standing_every(shutdown.clone());
        let converging = self.inner.clone().converge(shutdown);
        tokio::join!(standing, converging);
    }

    /// One whole pass over every target, now: the missing roles created, then the ended ones
    /// dropped, each side listing the roles afresh, ignoring back-offs, waiting for all its work.
    pub async fn pass(&self) -> Result<Pass, ReconcileError> {
        let inner = &self.inner;
        inner.settle_owed().await;
        let live = inner.broker.live_grants().await?;
        let mut total = Pass::default();
        for creating in [true, false] {
            for t in 0..inner.targets.len() {
                if let Err(error) = inner.prepare(t, &live).await {
                    total.failed += 1;
                    inner.record_failure(&inner.targets[t].target, None, &error).await;
                    continue;
                }
                let mut workers = JoinSet::new();
                if creating {
                    inner.launch_creates(t, &live, &mut workers, Mode::Now);
                } else {
                    inner.launch_drops(t, &live, &mut workers, Mode::Now).await?;
                }
                while let Some(done) = workers.join_next().await {
                    total.add(done.unwrap_or_default());
                }
            }
        }
        Ok(total)
    }

    /// Reads every target's standing privileges and records those that changed since last time.
    /// Roles of ended grants are left out: the connector drops them.
    pub async fn record_standing(&self) -> Result<(), ReconcileError> {
        self.inner.record_standing().await
    }
}

impl Inner {
    /// The coordinating loop: see the module's documentation.
    async fn converge(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.broker.watch_grants();
        let mut workers: JoinSet<Pass> = JoinSet::new();
        let mut failures = 0u32;
        loop {
            changes.mark_unchanged();
            let mut wake = Instant::now() + self.every;
            self.settle_owed().await;
            match self.broker.live_grants().await {
                Ok(live) => {
                    failures = 0;
                    for t in 0..self.targets.len() {
                        if let Some(at) = self.step(t, &live, &mut workers).await {
                            wake = wake.min(at);
                        }
                    }
                    if let Some(end) = self.earliest_end(&live) {
                        let left = (end - self.broker.clock().now()).clamp(time::Duration::ZERO, time::Duration::HOUR);
                        wake = wake.min(Instant::now() + left.unsigned_abs() + Duration::from_millis(1));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "the live grants could not be read; retrying");
                    failures += 1;
                    wake = wake.min(Instant::now() + back_off(failures, Duration::from_millis(100), self.every));
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                Some(_) = workers.join_next(), if !workers.is_empty() => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        let finishing = async { while workers.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE, finishing).await.is_err() {
            tracing::warn!("the connector stopped with work under way; its intents are resolved at the next start");
        }
        self.settle_owed().await;
    }

    /// What the running loop does for target `t`: list its roles when due, resolve intents left
    /// by a crash once, and launch what work the free connections allow. Returns when it wants
    /// to look again (a back-off ending, the next listing).
    async fn step(self: &Arc<Self>, t: usize, live: &[Grant], workers: &mut JoinSet<Pass>) -> Option<Instant> {
        let now = Instant::now();
        let (down, listed) = {
            let view = self.targets[t].view.lock().unwrap();
            (view.down.map(|(_, at)| at).filter(|at| *at > now), view.listed)
        };
        if down.is_some() {
            return down;
        }
        let due = listed.is_none_or(|at| now >= at + self.every);
        let ready = if due { self.prepare(t, live).await } else { Ok(()) };
        if let Err(error) = ready {
            self.record_failure(&self.targets[t].target, None, &error).await;
            return Some(self.target_failed(t));
        }
        let mut next = self.launch_creates(t, live, workers, Mode::Running);
        match self.launch_drops(t, live, workers, Mode::Running).await {
            Ok(retry) => next = min_instant(next, retry),
            Err(error) => tracing::warn!(%error, "roles to drop not looked up; retrying"),
        }
        let listed = self.targets[t].view.lock().unwrap().listed;
        min_instant(next, listed.map(|at| at + self.every))
    }

    /// The earliest end of a live grant on one of the targets.
    fn earliest_end(&self, live: &[Grant]) -> Option<OffsetDateTime> {
        let ours: HashSet<&ResourceName> = self.targets.iter().map(|t| &t.target.resource).collect();
        live.iter().filter(|g| ours.contains(&g.resource)).map(|g| g.ends_at).min()
    }

    /// Lists target `t`'s roles afresh, and resolves the intents a crash left there if that
    /// is not done yet.
    async fn prepare(&self, t: usize, live: &[Grant]) -> Result<(), ReconcileError> {
        self.list(t).await?;
        if !self.targets[t].view.lock().unwrap().recovered {
            self.recover(t, live).await?;
            self.targets[t].view.lock().unwrap().recovered = true;
        }
        Ok(())
    }

    /// Lists target `t`'s per-grant roles, keeping what this connector changed since the
    /// listing began.
    async fn list(&self, t: usize) -> Result<(), ReconcileError> {
        let state = &self.targets[t];
        let role_error = |source| ReconcileError::Role { resource: state.target.resource.clone(), source };
        let started = Instant::now();
        let client = self.lease(t).await?;
        let listed = TargetRoles::new(&client).existing().await.map_err(role_error)?;
        if state.target.certificate_logins {
            ensure_login_group(&client).await.map_err(role_error)?;
        }
        self.give_back(t, client);
        let mut view = state.view.lock().unwrap();
        view.existing = listed.into_iter().collect();
        let recent = std::mem::take(&mut view.recent);
        for (at, name, exists) in recent.into_iter().filter(|(at, ..)| *at >= started) {
            match exists {
                true => view.existing.insert(name.clone()),
                false => view.existing.remove(&name),
            };
            view.recent.push((at, name, exists));
        }
        view.listed = Some(started);
        view.foreign.clear();
        view.down = None;
        Ok(())
    }

    /// Marks target `t` failed; returns when to try it again.
    fn target_failed(&self, t: usize) -> Instant {
        let mut view = self.targets[t].view.lock().unwrap();
        let times = view.down.map_or(0, |(times, _)| times) + 1;
        let at = Instant::now() + back_off(times, Duration::from_millis(250), self.every);
        view.down = Some((times, at));
        at
    }

    /// Launches batches creating the missing roles of target `t`'s live grants, oldest first:
    /// as many as there are free connections for creating (all of them, waiting their turn,
    /// with [`Mode::Now`]). Returns when a role left to back off may be tried again.
    fn launch_creates(
        self: &Arc<Self>,
        t: usize,
        live: &[Grant],
        workers: &mut JoinSet<Pass>,
        mode: Mode,
    ) -> Option<Instant> {
        let state = &self.targets[t];
        let horizon = self.broker.clock().now() + CREATE_MARGIN;
        let now = Instant::now();
        let mut retry = None;
        let mut missing: Vec<&Grant> = {
            let view = state.view.lock().unwrap();
            live.iter()
                .filter(|g| g.resource == state.target.resource && g.ends_at > horizon)
                .filter(|g| {
                    let name = role_name(&g.id);
                    if view.existing.contains(&name) || view.busy.contains(&name) {
                        return false;
                    }
                    match view.failing.get(&name) {
                        Some((_, at)) if mode == Mode::Running && *at > now => {
                            retry = min_instant(retry, Some(*at));
                            false
                        }
                        _ => true,
                    }
                })
                .collect()
        };
        if missing.is_empty() {
            return retry;
        }
        missing.sort_by_key(|g| g.starts_at);
        let slots = match mode {
            Mode::Running => state.creating.available_permits(),
            Mode::Now => self.tuning.creating,
        };
        let batches = batches(missing, slots, self.tuning.batch, mode);
        for batch in batches {
            let permit = match mode {
                Mode::Running => match state.creating.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => break,
                },
                Mode::Now => None,
            };
            let grants: Vec<Grant> = batch.into_iter().cloned().collect();
            state.view.lock().unwrap().busy.extend(grants.iter().map(|g| role_name(&g.id)));
            let (this, semaphore) = (self.clone(), state.creating.clone());
            workers.spawn(async move {
                let _permit = match permit {
                    Some(permit) => permit,
                    None => semaphore.acquire_owned().await.expect("the semaphore is never closed"),
                };
                this.create_batch(t, grants).await
            });
        }
        retry
    }

    /// Launches batches ending target `t`'s roles that no live grant explains, like
    /// [`Self::launch_creates`]. Roles of another resource's grants on the same cluster are left
    /// alone. Returns when a role left to back off may be tried again.
    async fn launch_drops(
        self: &Arc<Self>,
        t: usize,
        live: &[Grant],
        workers: &mut JoinSet<Pass>,
        mode: Mode,
    ) -> Result<Option<Instant>, ReconcileError> {
        let state = &self.targets[t];
        let resource = &state.target.resource;
        let wanted: HashSet<String> =
            live.iter().filter(|g| &g.resource == resource).map(|g| role_name(&g.id)).collect();
        let now = Instant::now();
        let mut retry = None;
        let mut candidates: Vec<String> = {
            let view = state.view.lock().unwrap();
            view.existing
                .iter()
                .filter(|name| !wanted.contains(*name) && !view.busy.contains(*name) && !view.foreign.contains(*name))
                .filter(|name| match view.failing.get(*name) {
                    Some((_, at)) if mode == Mode::Running && *at > now => {
                        retry = min_instant(retry, Some(*at));
                        false
                    }
                    _ => true,
                })
                .cloned()
                .collect()
        };
        if candidates.is_empty() {
            return Ok(retry);
        }
        candidates.sort();
        let slots = match mode {
            Mode::Running => state.dropping.available_permits(),
            Mode::Now => self.tuning.dropping,
        };
        if mode == Mode::Running {
            candidates.truncate(slots * self.tuning.batch);
        }
        // Which resource's grant each role is, and whether its tables are kept.
        let (mut kept, mut dropped) = (Vec::new(), Vec::new());
        for name in candidates {
            let grant = match grant_of_role(&name) {
                Some(id) => self.broker.store().grant(&id.to_string()).await.map_err(BrokerError::from)?,
                None => None,
            };
            if grant.as_ref().is_some_and(|g| &g.resource != resource) {
                state.view.lock().unwrap().foreign.insert(name);
                continue;
            }
            let keep_tables = grant.as_ref().is_some_and(|g| state.target.keep_tables.contains(&g.role));
            let ending = Ending { name, grant };
            if keep_tables { kept.push(ending) } else { dropped.push(ending) }
        }
        let mut slots_left = slots;
        for (keep_tables, endings) in [(false, dropped), (true, kept)] {
            if endings.is_empty() || (mode == Mode::Running && slots_left == 0) {
                continue;
            }
            for batch in batches(endings, slots_left.max(1), self.tuning.batch, mode) {
                let permit = match mode {
                    Mode::Running => match state.dropping.clone().try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => break,
                    },
                    Mode::Now => None,
                };
                slots_left = slots_left.saturating_sub(1);
                state.view.lock().unwrap().busy.extend(batch.iter().map(|e| e.name.clone()));
                let (this, semaphore) = (self.clone(), state.dropping.clone());
                workers.spawn(async move {
                    let _permit = match permit {
                        Some(permit) => permit,
                        None => semaphore.acquire_owned().await.expect("the semaphore is never closed"),
                    };
                    this.drop_batch(t, batch, keep_tables).await
                });
            }
        }
        Ok(retry)
    }

    /// Creates the roles of `grants` on target `t`: their intents recorded first, then one
    /// transaction (each grant checked against the clock right before it), then their outcomes.
    async fn create_batch(&self, t: usize, grants: Vec<Grant>) -> Pass {
        let state = &self.targets[t];
        let target = &state.target;
        let mut pass = Pass::default();
        let planned: Vec<Planned> = grants
            .into_iter()
            .map(|grant| {
                let mut member_of = target.database_roles.get(&grant.role).cloned().unwrap_or_default();
                if target.certificate_logins {
                    member_of.push(GATEWAY_LOGIN_ROLE.to_owned());
                }
                let details = json!({
                    "resource": target.resource, "grant": grant.id, "role": grant.role,
                    "database_role": role_name(&grant.id), "member_of": member_of,
                    "valid_until": grant.ends_at.unix_timestamp(),
                });
                (grant, details)
            })
            .collect();
        let names: Vec<String> = planned.iter().map(|(g, _)| role_name(&g.id)).collect();
        let intents: Vec<AuditEvent> =
            planned.iter().map(|(_, details)| self.event(EventKind::TargetRoleCreating, details.clone())).collect();
        if let Err(error) = self.broker.record(&intents).await {
            tracing::warn!(%error, "intents to create roles not recorded: the database is left untouched");
            self.target_failed(t);
            self.finish(t, &names, &[], &[]);
            pass.failed += 1;
            return pass;
        }
        let (mut outcomes, mut made, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        match self.lease(t).await {
            Err(error) => {
                for (grant, details) in &planned {
                    outcomes.push(self.failure_event(target, Some(&role_name(&grant.id)), &error, details));
                }
                failed.extend(names.iter().cloned());
                pass.failed += planned.len();
                self.target_failed(t);
            }
            Ok(client) => {
                let roles = TargetRoles::new(&client);
                let role_error = |source| ReconcileError::Role { resource: target.resource.clone(), source };
                // Right before creating: no role for a grant that has ended, or is about to.
                let (go, late) = self.split_late(planned);
                for (_, details) in late {
                    outcomes.push(self.unchanged_event(
                        details,
                        "create",
                        "its grant ended before its role was created",
                    ));
                    pass.skipped += 1;
                }
                let batch: Vec<NewRole> = go.iter().map(|(grant, details)| self.new_role(grant, details)).collect();
                let together = match batch.len() {
                    0 => Ok(()),
                    _ => roles.create_all(&batch).await,
                };
                match together {
                    Ok(()) => {
                        for (grant, details) in go {
                            outcomes.push(self.event(EventKind::TargetRoleCreated, details));
                            made.push(role_name(&grant.id));
                            pass.created += 1;
                        }
                    }
                    Err(source) if go.len() == 1 => {
                        let (grant, details) = &go[0];
                        let name = role_name(&grant.id);
                        outcomes.push(self.failure_event(target, Some(&name), &role_error(source), details));
                        failed.push(name);
                        pass.failed += 1;
                    }
                    Err(source) => {
                        tracing::info!(error = %role_error(source), "a batch failed; creating its roles one by one");
                        for (grant, details) in go {
                            let name = role_name(&grant.id);
                            let (go, late) = self.split_late(vec![(grant, details)]);
                            if let Some((_, details)) = late.into_iter().next() {
                                let why = "its grant ended before its role was created";
                                outcomes.push(self.unchanged_event(details, "create", why));
                                pass.skipped += 1;
                                continue;
                            }
                            let (grant, details) = go.into_iter().next().expect("one grant, on time");
                            match roles.create_all(&[self.new_role(&grant, &details)]).await {
                                Ok(()) => {
                                    outcomes.push(self.event(EventKind::TargetRoleCreated, details));
                                    made.push(name);
                                    pass.created += 1;
                                }
                                Err(source) => {
                                    outcomes.push(self.failure_event(
                                        target,
                                        Some(&name),
                                        &role_error(source),
                                        &details,
                                    ));
                                    failed.push(name);
                                    pass.failed += 1;
                                }
                            }
                        }
                    }
                }
                self.give_back(t, client);
            }
        }
        self.settle(outcomes).await;
        self.finish(t, &names, &made, &failed);
        pass
    }

    /// Ends the roles `endings` on target `t`: their intents recorded first, then the steps of
    /// [`TargetRoles::drop_all`] for all of them (one by one when that fails), then their outcomes.
    async fn drop_batch(&self, t: usize, endings: Vec<Ending>, keep_tables: bool) -> Pass {
        let state = &self.targets[t];
        let target = &state.target;
        let mut pass = Pass::default();
        let details: Vec<Value> = endings
            .iter()
            .map(|e| {
                json!({
                    "resource": target.resource, "grant": grant_of_role(&e.name), "database_role": e.name,
                    "tables_kept": keep_tables,
                })
            })
            .collect();
        let names: Vec<String> = endings.iter().map(|e| e.name.clone()).collect();
        let intents: Vec<AuditEvent> =
            details.iter().map(|details| self.event(EventKind::TargetRoleDropping, details.clone())).collect();
        if let Err(error) = self.broker.record(&intents).await {
            tracing::warn!(%error, "intents to drop roles not recorded: the database is left untouched");
            self.target_failed(t);
            self.finish(t, &names, &[], &[]);
            pass.failed += 1;
            return pass;
        }
        let (mut outcomes, mut gone, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        let role_error = |source| ReconcileError::Role { resource: target.resource.clone(), source };
        let client = match self.lease(t).await {
            Ok(client) => client,
            Err(error) => {
                for (ending, details) in endings.iter().zip(&details) {
                    outcomes.push(self.failure_event(target, Some(&ending.name), &error, details));
                }
                pass.failed += endings.len();
                self.target_failed(t);
                self.settle(outcomes).await;
                self.finish(t, &names, &[], &names);
                return pass;
            }
        };
        let roles = TargetRoles::new(&client);
        let holding = match keep_tables {
            true => ensure_holding_role(&client).await.map_err(role_error),
            false => Ok(()),
        };
        let together = match holding {
            Ok(()) => roles.drop_all(&names, keep_tables).await.map_err(role_error),
            Err(error) => Err(error),
        };
        let mut each: Vec<Result<crate::roles::Dropped, ReconcileError>> = Vec::new();
        match together {
            Ok(dropped) => each.extend(dropped.into_iter().map(Ok)),
            Err(error) if names.len() == 1 => each.push(Err(error)),
            Err(error) => {
                tracing::info!(%error, "a batch failed; ending its roles one by one");
                for name in &names {
                    each.push(roles.drop(name, keep_tables).await.map_err(role_error));
                }
            }
        }
        self.give_back(t, client);
        let now = self.broker.clock().now();
        for ((ending, mut details), result) in endings.into_iter().zip(details).zip(each) {
            match result {
                Ok(dropped) => {
                    details["sessions_ended"] = json!(dropped.sessions_ended);
                    outcomes.push(self.event(EventKind::TargetRoleDropped, details));
                    pass.dropped += 1;
                    pass.sessions_ended += dropped.sessions_ended;
                    if let Some(ended) = ending.grant.as_ref().and_then(|g| airlock_core::report::ended_at(g, now)) {
                        airlock_broker::metrics::revoked_after((now - ended).as_seconds_f64());
                    }
                    gone.push(ending.name);
                }
                Err(error) => {
                    outcomes.push(self.failure_event(target, Some(&ending.name), &error, &details));
                    pass.failed += 1;
                    failed.push(ending.name);
                }
            }
        }
        self.settle(outcomes).await;
        let mut view = state.view.lock().unwrap();
        let at = Instant::now();
        for name in &gone {
            view.existing.remove(name);
            view.recent.push((at, name.clone(), false));
        }
        drop(view);
        self.finish(t, &names, &[], &failed);
        pass
    }

    /// Records that work on `names` ended on target `t`: those `made` exist now, those `failed`
    /// back off, the others are no longer failing.
    fn finish(&self, t: usize, names: &[String], made: &[String], failed: &[String]) {
        let mut view = self.targets[t].view.lock().unwrap();
        let at = Instant::now();
        for name in made {
            view.existing.insert(name.clone());
            view.recent.push((at, name.clone(), true));
        }
        for name in names {
            view.busy.remove(name);
            if !failed.contains(name) {
                view.failing.remove(name);
            }
        }
        for name in failed {
            let times = view.failing.get(name).map_or(0, |(times, _)| *times) + 1;
            view.failing.insert(name.clone(), (times, at + back_off(times, Duration::from_secs(1), ROLE_RETRY_MAX)));
        }
    }

    /// The grants of `planned` with time left for a role (at least [`CREATE_MARGIN`]), and the others.
    fn split_late(&self, planned: Vec<Planned>) -> (Vec<Planned>, Vec<Planned>) {
        let horizon = self.broker.clock().now() + CREATE_MARGIN;
        planned.into_iter().partition(|(grant, _)| grant.ends_at > horizon)
    }

    fn new_role<'g>(&self, grant: &'g Grant, details: &Value) -> NewRole<'g> {
        let member_of = details["member_of"]
            .as_array()
            .map(|roles| roles.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        NewRole { grant, member_of, password: self.key.password(&grant.id) }
    }

    /// Looks for intents on target `t` left without outcome by a crash (about grants that ended
    /// within [`RECOVERY_WINDOW`], live ones, or roles on the target) and records their outcome
    /// as the database shows it; a live grant whose role exists without a `target.role_created`
    /// record gets one. All recorded together, or the target is not worked on.
    async fn recover(&self, t: usize, live: &[Grant]) -> Result<(), ReconcileError> {
        let state = &self.targets[t];
        let resource = &state.target.resource;
        let existing = state.view.lock().unwrap().existing.clone();
        let now = self.broker.clock().now();
        let store = self.broker.store();
        let recent = store
            .grants_overlapping(unix_ms(now - RECOVERY_WINDOW), i64::MAX, Default::default())
            .await
            .map_err(BrokerError::from)?;
        let mut grants: BTreeSet<GrantId> =
            recent.iter().chain(live).filter(|g| &g.resource == resource).map(|g| g.id).collect();
        grants.extend(existing.iter().filter_map(|name| grant_of_role(name)));
        if grants.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = grants.iter().map(ToString::to_string).collect();
        let kinds = [
            EventKind::TargetRoleCreating,
            EventKind::TargetRoleCreated,
            EventKind::TargetRoleDropping,
            EventKind::TargetRoleDropped,
            EventKind::TargetRoleUnchanged,
            EventKind::TargetFailed,
        ]
        .map(EventKind::as_str);
        let records = store.grant_records(&ids, &kinds).await.map_err(BrokerError::from)?;
        // Per grant: the intent still waiting for its outcome, and whether a role was ever
        // recorded created.
        let mut pending: BTreeMap<String, (String, Value)> = BTreeMap::new();
        let mut created: HashSet<String> = HashSet::new();
        for record in records {
            let Ok(details) = serde_json::from_str::<Value>(&record.details) else { continue };
            if details["resource"].as_str() != Some(resource.as_str()) {
                continue;
            }
            let Some(grant) = details["grant"].as_str().map(str::to_owned) else { continue };
            if record.kind == EventKind::TargetRoleCreated.as_str() {
                created.insert(grant.clone());
            }
            if record.kind == EventKind::TargetRoleCreating.as_str()
                || record.kind == EventKind::TargetRoleDropping.as_str()
            {
                pending.insert(grant, (record.kind, details));
            } else {
                pending.remove(&grant);
            }
        }
        let mut outcomes = Vec::new();
        for (grant, (kind, mut details)) in pending {
            let name = details["database_role"].as_str().unwrap_or_default().to_owned();
            let exists = existing.contains(&name);
            details["recovered"] = json!(true);
            let creating = kind == EventKind::TargetRoleCreating.as_str();
            outcomes.push(match (creating, exists) {
                (true, true) => {
                    created.insert(grant);
                    self.event(EventKind::TargetRoleCreated, details)
                }
                (true, false) => self.unchanged_event(details, "create", "the connector stopped before creating it"),
                (false, false) => {
                    details["sessions_ended"] = Value::Null;
                    self.event(EventKind::TargetRoleDropped, details)
                }
                (false, true) => self.unchanged_event(details, "drop", "the connector stopped before dropping it"),
            });
        }
        for grant in live.iter().filter(|g| &g.resource == resource) {
            let name = role_name(&grant.id);
            if existing.contains(&name) && !created.contains(&grant.id.to_string()) {
                let details = json!({
                    "resource": resource, "grant": grant.id, "role": grant.role, "database_role": name,
                    "valid_until": grant.ends_at.unix_timestamp(), "recovered": true,
                });
                outcomes.push(self.event(EventKind::TargetRoleCreated, details));
            }
        }
        if !outcomes.is_empty() {
            tracing::info!(resource = %resource, count = outcomes.len(), "outcomes of intents left by a stop recorded");
            self.broker.record(&outcomes).await?;
        }
        Ok(())
    }

    /// Records `outcomes`, or keeps them to be recorded at the next pass.
    async fn settle(&self, outcomes: Vec<AuditEvent>) {
        if outcomes.is_empty() {
            return;
        }
        if let Err(error) = self.broker.record(&outcomes).await {
            tracing::warn!(%error, count = outcomes.len(), "outcomes not recorded; kept for the next pass");
            self.owed.lock().unwrap().extend(outcomes);
        }
    }

    /// Records the outcomes kept by earlier passes.
    async fn settle_owed(&self) {
        let owed = std::mem::take(&mut *self.owed.lock().unwrap());
        if owed.is_empty() {
            return;
        }
        if let Err(error) = self.broker.record(&owed).await {
            tracing::warn!(%error, count = owed.len(), "outcomes still not recorded; kept for the next pass");
            let mut kept = self.owed.lock().unwrap();
            let newer = std::mem::replace(&mut *kept, owed);
            kept.extend(newer);
        }
    }

    fn event(&self, kind: EventKind, details: Value) -> AuditEvent {
        AuditEvent { kind, actor: SYSTEM_ACTOR.to_owned(), at: self.broker.clock().now(), details }
    }

    /// `target.role_unchanged`: the intent (`create` or `drop`) in `details` was not carried out.
    fn unchanged_event(&self, mut details: Value, intent: &str, why: &str) -> AuditEvent {
        details["intent"] = json!(intent);
        details["reason"] = json!(why);
        self.event(EventKind::TargetRoleUnchanged, details)
    }

    /// `target.failed` about the role `database_role`, with its grant.
    fn failure_event(
        &self,
        target: &Target,
        database_role: Option<&str>,
        error: &ReconcileError,
        intent: &Value,
    ) -> AuditEvent {
        tracing::warn!(%error, "target not reconciled");
        let mut details = json!({ "resource": target.resource, "error": error.to_string() });
        if let Some(role) = database_role {
            details["database_role"] = json!(role);
            details["grant"] = json!(grant_of_role(role));
        }
        if let Some(role) = intent.get("role") {
            details["role"] = role.clone();
        }
        self.event(EventKind::TargetFailed, details)
    }

    /// Logs and audits that `target` (or one of its roles) could not be reconciled; it is
    /// retried at the next pass.
    async fn record_failure(&self, target: &Target, database_role: Option<&str>, error: &ReconcileError) {
        let event = self.failure_event(target, database_role, error, &Value::Null);
        if let Err(error) = self.broker.record(&[event]).await {
            tracing::warn!(%error, "a connector failure was not recorded");
        }
    }

    /// A connection to target `t` from its pool, or a new one.
    async fn lease(&self, t: usize) -> Result<Client, ReconcileError> {
        loop {
            let idle = self.targets[t].idle.lock().unwrap().pop();
            match idle {
                Some(client) if client.is_closed() => continue,
                Some(client) => return Ok(client),
                None => return self.connect(&self.targets[t].target).await,
            }
        }
    }

    /// Puts `client` back in target `t`'s pool, unless it is closed or the pool is full.
    fn give_back(&self, t: usize, client: Client) {
        let mut idle = self.targets[t].idle.lock().unwrap();
        if !client.is_closed() && idle.len() < self.tuning.idle {
            idle.push(client);
        }
    }

    /// Logs in to `target` as the connector, refusing a superuser login unless the catalog
    /// accepts the risk.
    async fn connect(&self, target: &Target) -> Result<Client, ReconcileError> {
        let (client, _connection) = target.connect().await?;
        let superuser: bool = client
            .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[])
            .await
            .map_err(|e| ReconcileError::Role {
                resource: target.resource.clone(),
                source: database("checking the connector's own login")(e),
            })?
            .get(0);
        if superuser && !target.allow_superuser_connector {
            let user = target.connection.get_user().unwrap_or_default().to_owned();
            return Err(ReconcileError::SuperuserConnector { resource: target.resource.clone(), user });
        }
        Ok(client)
    }

    /// Reads the standing privileges now and every [`STANDING_EVERY`] until `shutdown`.
    async fn record_standing_every(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(error) = self.record_standing().await {
                tracing::warn!(%error, "standing privileges not recorded");
            }
            tokio::select! {
                _ = tokio::time::sleep(STANDING_EVERY) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    async fn record_standing(&self) -> Result<(), ReconcileError> {
        let live = self.broker.live_grants().await?;
        for state in &self.targets {
            let target = &state.target;
            let mut findings = match tokio::time::timeout(STANDING_TIMEOUT, standing(target, &live)).await {
                Ok(Ok(findings)) => findings,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "standing privileges not read");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(resource = %target.resource, "standing privileges not read in time");
                    continue;
                }
            };
            findings.retain(|f| f.kind != "ended_grant_role");
            let mut recorded = self.standing.lock().await;
            if recorded.get(&target.resource) == Some(&findings) {
                continue;
            }
            let details = json!({ "resource": target.resource, "count": findings.len(), "findings": findings });
            match self.broker.record_target_event(EventKind::TargetStanding, details).await {
                Ok(()) => {
                    recorded.insert(target.resource.clone(), findings);
                }
                Err(error) => tracing::warn!(%error, "standing privileges not recorded"),
            }
        }
        Ok(())
    }
}

/// `items` in batches: as many as `slots` allows with the running loop (each at most `max`,
/// the rest left for later), or all of them, spread over `slots`.
fn batches<T>(mut items: Vec<T>, slots: usize, max: usize, mode: Mode) -> Vec<Vec<T>> {
    let slots = slots.max(1);
    if mode == Mode::Running {
        items.truncate(slots * max);
    }
    let size = items.len().div_ceil(slots).clamp(1, max);
    let mut batches = Vec::new();
    while !items.is_empty() {
        let rest = items.split_off(size.min(items.len()));
        batches.push(std::mem::replace(&mut items, rest));
    }
    batches
}

/// `first`, doubled for each time after the first, at most `max`.
fn back_off(times: u32, first: Duration, max: Duration) -> Duration {
    first.saturating_mul(1 << times.saturating_sub(1).min(16)).min(max)
}

fn min_instant(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
