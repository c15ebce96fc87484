//! The reconciler: converges every PostgreSQL target on the set of live grants.
//!
//! Level-triggered, not event-driven: each pass reads the live grants from the broker and the
//! per-grant roles from each target, creates the roles that are missing and drops the ones no
//! live grant explains. So a crash, a restart, a lost notification or a grant ended by another
//! process (`airlock admin user disable`) all converge the same way: at the next pass. Passes
//! run at start, whenever a grant starts or ends in this process, and every [`Reconciler::every`].
//! Each role created or dropped is an audit record; so is a target that could not be reached.
//! Each pass opens its own connection (over TLS when the catalog asks for it, see [`crate::tls`]),
//! so a restarted or failed-over database needs nothing special. At start and every [`STANDING_EVERY`] it also reads each target's standing privileges
//! ([`crate::standing`]) and records them (`target.standing`) whenever they differ from what it
//! recorded last, so reports show what was found and since when.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use airlock_broker::{Broker, BrokerError};
use airlock_core::audit::EventKind;
use airlock_core::catalog::{Catalog, GrantLogin, PostgresTarget};
use airlock_core::ids::{ResourceName, RoleName};
use airlock_core::lifecycle::Grant;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Connection, NoTls, Socket};

use crate::grant_ca::{GATEWAY_LOGIN_ROLE, GrantCa};
use crate::roles::{
    RoleError, RoleKey, TargetRoles, database, describe, ensure_holding_role, ensure_login_group, grant_of_role,
    role_name,
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
}

impl Pass {
    fn add(&mut self, other: Pass) {
        self.created += other.created;
        self.dropped += other.dropped;
        self.sessions_ended += other.sessions_ended;
        self.failed += other.failed;
    }
}

/// The two sides of a pass, run by loops of their own.
#[derive(Clone, Copy)]
enum Side {
    Create,
    Drop,
}

/// How often the standing privileges of each target are read.
pub const STANDING_EVERY: Duration = Duration::from_secs(300);
/// How long reading one target's standing privileges may take before it is left for next time.
const STANDING_TIMEOUT: Duration = Duration::from_secs(30);

/// Keeps every target's per-grant roles equal to the live grants.
pub struct Reconciler {
    broker: Broker,
    targets: Vec<Target>,
    key: RoleKey,
    every: Duration,
    /// The findings last recorded for each target.
    standing: Mutex<HashMap<ResourceName, Vec<Finding>>>,
}

impl Reconciler {
    /// How often a pass runs when nothing wakes it.
    pub const DEFAULT_EVERY: Duration = Duration::from_secs(5);

    pub fn new(broker: Broker, targets: Vec<Target>, key: RoleKey, every: Duration) -> Self {
        Self { broker, targets, key, every, standing: Mutex::new(HashMap::new()) }
    }

    /// Runs passes until `shutdown` turns true. Roles are created and dropped by two loops of
    /// their own, each woken at start, on every grant change and every [`Reconciler::every`], so
    /// a role that is slow to end (its sessions hold locks, say) never delays another grant's start.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let this = &self;
        let creating = this.repeat(shutdown.clone(), |live| {
            Box::pin(async move {
                this.create_all(&live).await;
            })
        });
        let standing_due = Mutex::new(tokio::time::Instant::now());
        let dropping = this.repeat(shutdown, |live| {
            let standing_due = &standing_due;
            Box::pin(async move {
                this.drop_all(&live).await;
                let mut due = standing_due.lock().await;
                if tokio::time::Instant::now() >= *due {
                    *due += STANDING_EVERY;
                    if let Err(error) = this.record_standing().await {
                        tracing::warn!(%error, "standing privileges not recorded");
                    }
                }
            })
        });
        tokio::join!(creating, dropping);
    }

    /// Runs `step` on the live grants at start, on every grant change and every [`Self::every`].
    async fn repeat<'a, F>(&'a self, mut shutdown: watch::Receiver<bool>, step: F)
    where
        F: Fn(Vec<Grant>) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    {
        let mut changes = self.broker.watch_grants();
        loop {
            changes.mark_unchanged();
            match self.broker.live_grants().await {
                Ok(live) => step(live).await,
                Err(error) => tracing::warn!(%error, "reconciler pass failed"),
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(self.every) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// One pass over every target: the missing roles created, then the ended ones dropped.
    pub async fn pass(&self) -> Result<Pass, ReconcileError> {
        let live = self.broker.live_grants().await?;
        let mut pass = self.create_all(&live).await;
        pass.add(self.drop_all(&live).await);
        Ok(pass)
    }

    /// Reads every target's standing privileges and records those that changed since last time.
    /// Roles of ended grants are left out: the pass just before dropped them, or will.
    pub async fn record_standing(&self) -> Result<(), ReconcileError> {
        let live = self.broker.live_grants().await?;
        for target in &self.targets {
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

    /// Creates the missing role of every live grant, on every target.
    async fn create_all(&self, live: &[Grant]) -> Pass {
        self.on_every_target(Side::Create, live).await
    }

    /// Drops every per-grant role no live grant explains, on every target.
    async fn drop_all(&self, live: &[Grant]) -> Pass {
        self.on_every_target(Side::Drop, live).await
    }

    /// One side of a pass on every target; a target that fails is recorded and counted.
    async fn on_every_target(&self, side: Side, live: &[Grant]) -> Pass {
        let mut total = Pass::default();
        for target in &self.targets {
            let outcome = match side {
                Side::Create => self.create_missing(target, live).await,
                Side::Drop => self.drop_ended(target, live).await,
            };
            match outcome {
                Ok(pass) => total.add(pass),
                Err(error) => {
                    total.failed += 1;
                    self.record_failure(target, None, &error).await;
                }
            }
        }
        total
    }

    /// Logs and audits that `target` (or one of its roles) could not be reconciled; it is
    /// retried at the next pass.
    async fn record_failure(&self, target: &Target, database_role: Option<&str>, error: &ReconcileError) {
        tracing::warn!(%error, "target not reconciled");
        let mut details = json!({ "resource": target.resource, "error": error.to_string() });
        if let Some(role) = database_role {
            details["database_role"] = json!(role);
        }
        if let Err(error) = self.broker.record_target_event(EventKind::TargetFailed, details).await {
            tracing::warn!(%error, "a connector failure was not recorded");
        }
    }

    /// Logs in to `target` as the connector, refusing a superuser login unless the catalog
    /// accepts the risk.
    async fn connect(&self, target: &Target) -> Result<(Client, JoinHandle<()>), ReconcileError> {
        let (client, connection) = target.connect().await?;
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
        Ok((client, connection))
    }

    async fn create_missing(&self, target: &Target, live: &[Grant]) -> Result<Pass, ReconcileError> {
        let resource = &target.resource;
        let wanted: Vec<&Grant> = live.iter().filter(|g| &g.resource == resource).collect();
        let mut pass = Pass::default();
        if wanted.is_empty() {
            return Ok(pass);
        }
        let (client, connection) = self.connect(target).await?;
        let roles = TargetRoles::new(&client);
        let role_error = |source| ReconcileError::Role { resource: resource.clone(), source };
        let existing = roles.existing().await.map_err(role_error)?;
        if target.certificate_logins && wanted.iter().any(|grant| !existing.contains(&role_name(&grant.id))) {
            ensure_login_group(&client).await.map_err(role_error)?;
        }
        for grant in wanted {
            let name = role_name(&grant.id);
            if existing.contains(&name) {
                continue;
            }
            let mut mapped = target.database_roles.get(&grant.role).cloned().unwrap_or_default();
            if target.certificate_logins {
                mapped.push(GATEWAY_LOGIN_ROLE.to_owned());
            }
            if let Err(source) = roles.create(grant, &mapped, &self.key.password(&grant.id)).await {
                pass.failed += 1;
                self.record_failure(target, Some(&name), &role_error(source)).await;
                continue;
            }
            pass.created += 1;
            let details = json!({
                "resource": resource, "grant": grant.id, "role": grant.role, "database_role": name,
                "member_of": mapped, "valid_until": grant.ends_at.unix_timestamp(),
            });
            self.broker.record_target_event(EventKind::TargetRoleCreated, details).await?;
        }
        drop(client);
        let _ = connection.await;
        Ok(pass)
    }

    async fn drop_ended(&self, target: &Target, live: &[Grant]) -> Result<Pass, ReconcileError> {
        let resource = &target.resource;
        let (client, connection) = self.connect(target).await?;
        let roles = TargetRoles::new(&client);
        let role_error = |source| ReconcileError::Role { resource: resource.clone(), source };
        let wanted: HashSet<String> =
            live.iter().filter(|g| &g.resource == resource).map(|g| role_name(&g.id)).collect();
        let existing = roles.existing().await.map_err(role_error)?;
        let mut pass = Pass::default();
        let mut holding_ready = false;
        for name in existing.iter().filter(|name| !wanted.contains(*name)) {
            let Some(role) = self.ended_here(name, resource).await? else { continue };
            let keep_tables = role.is_some_and(|role| target.keep_tables.contains(&role));
            if keep_tables && !holding_ready {
                ensure_holding_role(&client).await.map_err(role_error)?;
                holding_ready = true;
            }
            let dropped = match roles.drop(name, keep_tables).await {
                Ok(dropped) => dropped,
                Err(source) => {
                    pass.failed += 1;
                    self.record_failure(target, Some(name), &role_error(source)).await;
                    continue;
                }
            };
            pass.dropped += 1;
            pass.sessions_ended += dropped.sessions_ended;
            let details = json!({
                "resource": resource, "grant": grant_of_role(name), "database_role": name,
                "sessions_ended": dropped.sessions_ended, "tables_kept": keep_tables,
            });
            self.broker.record_target_event(EventKind::TargetRoleDropped, details).await?;
            self.measure_revocation(name).await;
        }
        drop(client);
        let _ = connection.await;
        Ok(pass)
    }

    /// Records how long after its grant's end the role `name` was dropped.
    async fn measure_revocation(&self, name: &str) {
        let Some(grant) = grant_of_role(name) else { return };
        let Ok(Some(grant)) = self.broker.store().grant(&grant.to_string()).await else { return };
        let now = self.broker.clock().now();
        if let Some(ended) = airlock_core::report::ended_at(&grant, now) {
            airlock_broker::metrics::revoked_after((now - ended).as_seconds_f64());
        }
    }

    /// Whether the role `name` is to be ended on `resource`'s database: `None` when it is
    /// another resource's grant role on the same cluster, or its grant is live now (it started
    /// after the live grants were read: the creating loop may already have made its role), else
    /// the Airlock role of its grant (`Some(None)` when the broker does not know the grant).
    async fn ended_here(
        &self,
        name: &str,
        resource: &ResourceName,
    ) -> Result<Option<Option<RoleName>>, ReconcileError> {
        let Some(grant) = grant_of_role(name) else { return Ok(Some(None)) };
        let grant = self.broker.store().grant(&grant.to_string()).await.map_err(BrokerError::from)?;
        let now = self.broker.clock().now();
        match grant {
            Some(grant) if &grant.resource != resource || grant.is_live(now) => Ok(None),
            Some(grant) => Ok(Some(Some(grant.role))),
            None => Ok(Some(None)),
        }
    }
}
