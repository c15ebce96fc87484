//! The gateway against a real PostgreSQL, as the gateway's tests and its bench run it, all in this
//! process: a throwaway cluster managed by the connector ([`managed_database`]), a broker on the
//! quickstart policies with the system clock (PostgreSQL and the credentials check times against
//! the real clock), the connector's reconciler, and the gateway on a random port of 127.0.0.1
//! with a generated TLS certificate; the database is reached in plaintext or over TLS, as
//! [`Setup::tls`] says. Clients are tokio-postgres, over rustls trusting that
//! certificate ([`client_tls`]) or in plain text when the settings allow it.
//!
//! Dropping the harness tells the reconciler and the gateway to stop and stops the cluster;
//! [`GatewayHarness::shutdown`] also waits for the gateway to write its last audit records.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_broker::Broker;
use airlock_broker::broker::RequestInput;
use airlock_broker::clock::{Clock, SystemClock};
use airlock_core::lifecycle::{AccessRequest, Grant};
use airlock_core::values::{GrantDuration, Reason};
use airlock_gateway::gateway::{self, Parts, ResourceTarget, Settings, Verifier};
use airlock_gateway::guard::Allowed;
use airlock_gateway::target::TargetAddress;
use airlock_gateway::tls::{self, GENERATED_CERT, Identity};
use airlock_postgres::cluster::LocalCluster;
use airlock_postgres::reconciler::{Reconciler, Target};
use airlock_postgres::roles::RoleKey;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{DatabaseTls, broker, caller, managed_database_with, managed_database_with_grant_logins};

/// The database the gateway serves `demo-db` from.
pub const DATABASE: &str = "postgres";

/// How to set up a [`GatewayHarness`].
#[derive(Debug, Clone, Default)]
pub struct Setup {
    pub settings: Settings,
    /// The cluster's `max_connections`, when more sessions than PostgreSQL's default of 100 are
    /// needed at once (set before anything connects; the cluster restarts for it).
    pub max_connections: Option<u32>,
    /// How the database uses TLS, for the connector and the gateway alike.
    pub tls: DatabaseTls,
    /// The catalog sets `bind_credentials_to_device = true` on `demo-db`: credentials are issued
    /// only to a trusted device and work only with a client certificate for its key.
    pub bind_credentials_to_device: bool,
    /// Grant roles log in only with a certificate from the grant CA (`pg_hba.conf` and the
    /// catalog's `grant_login = "certificate"`), over verified TLS; `tls` is then not used.
    pub grant_logins: bool,
    /// Statements are recorded only once they complete (`audit = "after"`), not before they are sent.
    pub audit_after: bool,
}

/// A cluster, a broker, a reconciler and a gateway; see the module documentation.
pub struct GatewayHarness {
    pub broker: Broker,
    /// The gateway's port on 127.0.0.1.
    pub port: u16,
    /// A client TLS configuration that trusts the gateway's certificate.
    pub tls: MakeRustlsConnect,
    stop: watch::Sender<bool>,
    gateway: Option<JoinHandle<()>>,
    cluster: LocalCluster,
    dir: TempDir,
}

impl GatewayHarness {
    pub async fn start(settings: Settings) -> Self {
        Self::start_with(Setup { settings, ..Setup::default() }).await
    }

    pub async fn start_with(setup: Setup) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (cluster, mut catalog, grant_ca) = match setup.grant_logins {
            true => {
                let (cluster, catalog, grant_ca) = managed_database_with_grant_logins(dir.path()).await;
                (cluster, catalog, Some(grant_ca))
            }
            false => {
                let (cluster, catalog) = managed_database_with(dir.path(), setup.tls).await;
                (cluster, catalog, None)
            }
        };
        if setup.bind_credentials_to_device {
            catalog =
                catalog.replacen("[resource.postgres]", "bind_credentials_to_device = true\n[resource.postgres]", 1);
        }
        if let Some(connections) = setup.max_connections {
            set_max_connections(&cluster, &dir.path().join("pg").join("data"), connections).await;
        }
        let broker = broker(dir.path(), &catalog, Arc::new(SystemClock) as Arc<dyn Clock>).await;
        let role_key = RoleKey::new([42; 32]);
        let mut targets = Target::from_catalog(&broker.policies().catalog).expect("the catalog's targets");
        if let Some(grant_ca) = grant_ca {
            targets[0].tls = targets[0].tls.take().map(|tls| tls.with_grant_ca(grant_ca));
        }
        let target_tls = targets[0].tls.clone();
        let (stop, stopped) = watch::channel(false);
        let reconciler = Reconciler::new(broker.clone(), targets, role_key.clone(), Duration::from_secs(1));
        tokio::spawn(reconciler.run(stopped.clone()));

        let identity = Identity::Generated { dir: dir.path().to_owned() };
        let (host, port, database) = ("127.0.0.1".into(), cluster.port(), DATABASE.into());
        let address = TargetAddress { host, port, database, tls: target_tls };
        let roles = ["read", "write"].map(|role| (role.parse().expect("a role name"), Allowed::default()));
        let resource = ResourceTarget { address, roles: HashMap::from(roles), audit_before: !setup.audit_after };
        let parts = Parts {
            authority: broker.clone(),
            settings: setup.settings,
            tls: Some(tls::acceptor(&identity).expect("the gateway's TLS identity")),
            targets: HashMap::from([("demo-db".parse().expect("a resource name"), resource)]),
            verifier: Verifier { public_key: broker.key().public_key() },
            role_key,
            name: uuid::Uuid::new_v4().to_string(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port for the gateway");
        let port = listener.local_addr().expect("the gateway's address").port();
        let gateway = Some(tokio::spawn(gateway::serve(parts, listener, stopped)));
        let tls = client_tls(&dir.path().join(GENERATED_CERT));
        GatewayHarness { broker, port, tls, stop, gateway, cluster, dir }
    }

    /// The target cluster (its superuser connects directly, not through the gateway).
    pub fn cluster(&self) -> &LocalCluster {
        &self.cluster
    }

    /// The gateway's generated certificate, for clients in another process.
    pub fn certificate(&self) -> PathBuf {
        self.dir.path().join(GENERATED_CERT)
    }

    /// The broker's SQLite database, which holds the audit chain.
    pub fn store_file(&self) -> PathBuf {
        self.dir.path().join("data").join("airlock.db")
    }

    /// A live `read` grant of dana's (on call: approved at once) → `pg_read_all_data`.
    pub async fn read_grant(&self, duration: &str) -> Grant {
        let (_, grant) = self.request("read", duration).await;
        grant.expect("on-call read is approved at once")
    }

    /// A live `write` grant of dana's, approved by bob and carol (sre) → `app_writer`.
    pub async fn write_grant(&self, duration: &str) -> Grant {
        let (request, grant) = self.request("write", duration).await;
        assert!(grant.is_none(), "write needs two approvals");
        let id = request.id.to_string();
        self.broker.approve(&caller("bob", &["sre"]), &id, None).await.expect("bob approves");
        let (_, grant) = self.broker.approve(&caller("carol", &["sre"]), &id, None).await.expect("carol approves");
        grant.expect("the second approval starts the grant")
    }

    async fn request(&self, role: &str, duration: &str) -> (AccessRequest, Option<Grant>) {
        let input = RequestInput {
            resource: "demo-db".parse().expect("a resource name"),
            role: role.parse().expect("a role name"),
            duration: GrantDuration::parse(duration).expect("a duration"),
            reason: Reason::parse("INC-7 investigation").expect("a reason"),
            incident: None,
        };
        self.broker.create_request(&caller("dana", &["eng", "oncall"]), input).await.expect("the request opens")
    }

    /// Revokes `grant` as bob (sre).
    pub async fn revoke(&self, grant: &Grant) {
        let reason = Reason::parse("done").expect("a reason");
        self.broker
            .revoke(&caller("bob", &["sre"]), &grant.id.to_string(), reason)
            .await
            .expect("the grant is revoked");
    }

    /// A credential for `grant`, issued to its holder.
    pub async fn token(&self, grant: &Grant) -> String {
        let holder = caller(grant.holder.as_str(), &["eng", "oncall"]);
        let (_, token) = self.broker.issue_credential(&holder, &grant.id.to_string()).await.expect("a credential");
        token.expose().to_owned()
    }

    /// A client configuration for the gateway, with TLS required.
    pub fn config(&self, user: &str, password: &str) -> Config {
        let mut config = Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .dbname(DATABASE)
            .user(user)
            .password(password)
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        config
    }

    /// Connects as `user` over TLS; the connection's own outcome (how it ended) comes back on
    /// the handle.
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
    ) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>), tokio_postgres::Error> {
        let (client, connection) = self.config(user, password).connect(self.tls.clone()).await?;
        Ok((client, tokio::spawn(connection)))
    }

    /// The details of every audit record of `kind`, oldest first.
    pub async fn audit(&self, kind: &str) -> Vec<Value> {
        let records = self.broker.store().audit_chain(airlock_store::BROKER_CHAIN).await.expect("the audit chain");
        let details = records.into_iter().filter(|r| r.kind == kind).map(|r| serde_json::from_str(&r.details));
        details.collect::<Result<_, _>>().expect("audit details are JSON")
    }

    /// Stops the gateway (cutting its sessions) and waits until its audit records are written,
    /// then stops the reconciler and the cluster.
    pub async fn shutdown(mut self) {
        self.stop_gateway().await;
    }

    /// Stops the gateway (cutting its sessions) and the reconciler, and waits until the gateway's
    /// audit records are written; the cluster stays up. Grants stay live.
    pub async fn stop_gateway(&mut self) {
        let _ = self.stop.send(true);
        if let Some(gateway) = self.gateway.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), gateway).await;
        }
    }
}

impl Drop for GatewayHarness {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A rustls client that trusts the certificate in the PEM file `cert`.
pub fn client_tls(cert: &Path) -> MakeRustlsConnect {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cert).expect("a PEM file") {
        roots.add(cert.expect("a certificate")).expect("a usable certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    MakeRustlsConnect::new(config)
}

/// Sets the cluster's `max_connections` and restarts it (`pg_ctl restart` keeps its port and
/// options), as the `postgres` system user when we are root, as [`LocalCluster`] does.
async fn set_max_connections(cluster: &LocalCluster, data_dir: &Path, connections: u32) {
    let superuser = cluster.connect("postgres").await.expect("the superuser connects");
    superuser.batch_execute(&format!("ALTER SYSTEM SET max_connections = {connections}")).await.expect("ALTER SYSTEM");
    let bin: String = superuser
        .query_one("SELECT setting FROM pg_config WHERE name = 'BINDIR'", &[])
        .await
        .expect("the server's BINDIR")
        .get(0);
    drop(superuser);
    let pg_ctl = Path::new(&bin).join("pg_ctl");
    let root = std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0;
    let mut command =
        if root { tokio::process::Command::new("runuser") } else { tokio::process::Command::new(&pg_ctl) };
    if root {
        command.args(["-u", "postgres", "--"]).arg(&pg_ctl);
    }
    command.arg("-D").arg(data_dir).arg("-l").arg(cluster.log_path()).args(["-m", "fast", "-w", "restart"]);
    let output = command.current_dir("/").output().await.expect("pg_ctl runs");
    assert!(output.status.success(), "pg_ctl restart failed: {}", String::from_utf8_lossy(&output.stderr));
    let superuser = cluster.connect("postgres").await.expect("the superuser connects after the restart");
    let now: String = superuser.query_one("SHOW max_connections", &[]).await.expect("SHOW").get(0);
    assert_eq!(now, connections.to_string());
}
