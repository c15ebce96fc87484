//! Throwaway PostgreSQL clusters for catalog resources that name a database but no address, so
//! the quickstart's `demo-db` is a real database on a machine that has none of its own.
//!
//! Each cluster lives in `<data dir>/postgres/<resource>`, starts empty at every `serve` (a server
//! left running by a killed `serve` is stopped, and the old contents deleted), gets the catalog's database with a small `orders` table to
//! read, and is stopped when `serve` ends. It listens on loopback only.
//!
//! Its grant roles log in only through the gateway: the cluster trusts Airlock's grant CA for
//! client certificates and `pg_hba.conf` admits grant roles with one only
//! ([`airlock_postgres::grant_ca`]); the connector and the gateway reach it over TLS, verified
//! against the same CA.
//!
//! The connector never manages it as the superuser: each cluster gets an `airlock_connector`
//! login with only what docs/postgres.md asks of a real database's connector (`CREATEROLE`, and
//! the catalog's mapped roles `WITH ADMIN OPTION`), with a fresh random password. Where to reach
//! it and that password are left in the cluster's directory (`connector.json`, 0600) while it
//! runs, so `airlock report standing` can check the quickstart's own database too. The cluster's
//! superuser cannot log in once the database is set up.
//!
//! When we are root, PostgreSQL runs as the `postgres` user, which must pass through the data
//! directory and `<data dir>/postgres`: both are 0711 then ([`crate::data_dir`]).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use airlock_core::catalog::{Catalog, PostgresTarget, Resource, TlsMode};
use airlock_postgres::cluster::{ClusterError, LocalCluster, ServerCertificate};
use airlock_postgres::grant_ca::GrantCa;
use airlock_postgres::reconciler::{Target, connection};
use airlock_postgres::roles::describe;
use airlock_postgres::tls::TargetTls;
use postgres_protocol::escape::{escape_identifier, escape_literal};
use uuid::Uuid;

/// Rows to look at in a fresh demo database.
const SEED: &str = "
    CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, total numeric(10, 2) NOT NULL, status text NOT NULL);
    INSERT INTO orders VALUES
        (1, 'Ada', 120.00, 'shipped'), (2, 'Grace', 75.50, 'stuck'), (3, 'Linus', 18.25, 'stuck'),
        (4, 'Barbara', 240.00, 'paid'), (5, 'Edsger', 9.99, 'refunded');
";

/// The clusters started, and a connector target for each.
pub struct Throwaway {
    pub clusters: Vec<LocalCluster>,
    pub targets: Vec<Target>,
}

/// Starts a cluster for every `postgres` resource without an address. A resource whose cluster
/// cannot start is reported and left without one: requests for it still work, and no database
/// role is made for its grants.
pub async fn start(catalog: &Catalog, data_dir: &Path, grant_ca: &Arc<GrantCa>) -> Throwaway {
    let mut started = Throwaway { clusters: Vec::new(), targets: Vec::new() };
    let wanted: Vec<_> = catalog
        .resources()
        .filter_map(|resource| match &resource.postgres {
            Some(PostgresTarget { address: None, database, .. }) => Some((resource, database)),
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return started;
    }
    let passes_through = crate::data_dir::postgres_passes_through(catalog);
    let clusters = match crate::data_dir::throwaway_dir(data_dir, passes_through) {
        Ok(clusters) => clusters,
        Err(error) => {
            eprintln!("warning: no throwaway PostgreSQL ({error}); grants on its resources get no database role");
            return started;
        }
    };
    for (resource, database) in wanted {
        let dir = clusters.join(resource.name.as_str());
        match start_one(&dir, resource, database, grant_ca, data_dir).await {
            Ok((cluster, login, tls)) => {
                println!(
                    "started a throwaway PostgreSQL for `{}` on {}:{} (database `{database}`, data in {}, discarded at exit)",
                    resource.name,
                    cluster.host(),
                    cluster.port(),
                    dir.display()
                );
                started.targets.push(Target::new(resource, login.config(), Some(tls)));
                started.clusters.push(cluster);
            }
            Err(error) => eprintln!(
                "warning: no throwaway PostgreSQL for `{}` ({error}); its grants get no database role",
                resource.name
            ),
        }
    }
    started
}

async fn start_one(
    dir: &Path,
    resource: &Resource,
    database: &str,
    grant_ca: &Arc<GrantCa>,
    data_dir: &Path,
) -> Result<(LocalCluster, Login, TargetTls), ClusterError> {
    if dir.exists() {
        LocalCluster::stop_leftover(dir).await?;
        std::fs::remove_dir_all(dir)
            .map_err(|source| ClusterError::Io { what: format!("removing {}", dir.display()), source })?;
    }
    let unusable = |message: String| ClusterError::Io {
        what: "set up TLS with the grant CA".to_owned(),
        source: std::io::Error::other(message),
    };
    let (cert_pem, key_pem) = grant_ca.server_certificate(&[HOST, "localhost"]).map_err(|e| unusable(e.to_string()))?;
    let server = ServerCertificate { cert_pem, key_pem };
    let cluster = LocalCluster::start_with_grant_logins(dir, &server, grant_ca.cert_pem()).await?;
    let verify = TlsMode::VerifyFull { ca_file: Some(GrantCa::cert_path(data_dir)) };
    let tls = TargetTls::new(&verify, HOST)
        .map_err(|e| unusable(e.to_string()))?
        .ok_or_else(|| unusable("no TLS".to_owned()))?
        .with_grant_ca(grant_ca.clone());
    let sql = |what: &str| {
        let what = what.to_owned();
        move |e: tokio_postgres::Error| ClusterError::Sql { what, message: describe(&e) }
    };
    if database != "postgres" {
        let create = format!("CREATE DATABASE {}", escape_identifier(database));
        cluster.connect("postgres").await?.batch_execute(&create).await.map_err(sql("creating the database"))?;
    }
    let login = Login {
        host: cluster.host().to_owned(),
        port: cluster.port(),
        database: database.to_owned(),
        password: format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
    };
    let superuser = cluster.connect(database).await?;
    superuser.batch_execute(SEED).await.map_err(sql("adding the demo table"))?;
    superuser
        .batch_execute(&connector_setup(resource, &login.password))
        .await
        .map_err(sql("making the connector's login"))?;
    // Nothing needs the superuser from here on: a login superuser would be standing privilege.
    let lock = format!("ALTER ROLE {} NOLOGIN", escape_identifier(cluster.superuser()));
    superuser.batch_execute(&lock).await.map_err(sql("locking the superuser"))?;
    login.write(dir)?;
    Ok((cluster, login, tls))
}

/// The superuser's statements that make the connector's own login: what docs/postgres.md asks
/// of a real database, nothing more.
fn connector_setup(resource: &Resource, password: &str) -> String {
    let mut mapped: Vec<&String> = resource.roles.values().flat_map(|role| &role.database_roles).collect();
    mapped.sort();
    mapped.dedup();
    let mut setup = format!(
        "CREATE ROLE {CONNECTOR} LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS PASSWORD {};",
        escape_literal(password)
    );
    for role in mapped {
        setup.push_str(&format!(" GRANT {} TO {CONNECTOR} WITH ADMIN OPTION;", escape_identifier(role)));
    }
    setup
}

/// Where a throwaway cluster listens.
const HOST: &str = "127.0.0.1";
/// The throwaway connector's login name.
const CONNECTOR: &str = "airlock_connector";
/// The file in a cluster's directory that says how to reach it as the connector, while it runs.
const LOGIN_FILE: &str = "connector.json";

/// How the connector reaches a throwaway cluster.
#[derive(serde::Serialize, serde::Deserialize)]
struct Login {
    host: String,
    port: u16,
    database: String,
    password: String,
}

impl Login {
    fn config(&self) -> tokio_postgres::Config {
        connection(&self.host, self.port, &self.database, CONNECTOR, &self.password)
    }

    /// Writes the login where `report standing` finds it, readable by its owner only.
    fn write(&self, dir: &Path) -> Result<(), ClusterError> {
        let path = dir.join(LOGIN_FILE);
        let text = serde_json::to_string(self).expect("a login serializes");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()));
        written.map_err(|source| ClusterError::Io { what: format!("writing {}", path.display()), source })
    }
}

/// Connector targets for the throwaway clusters a running `serve` on `data_dir` started.
pub fn running(catalog: &Catalog, data_dir: &Path) -> Vec<Target> {
    let mut targets = Vec::new();
    for resource in catalog.resources() {
        let Some(PostgresTarget { address: None, .. }) = &resource.postgres else { continue };
        let path = data_dir.join("postgres").join(resource.name.as_str()).join(LOGIN_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        if let Ok(login) = serde_json::from_str::<Login>(&text) {
            targets.push(Target::new(resource, login.config(), None));
        }
    }
    targets
}

impl Throwaway {
    pub async fn stop(self) {
        for cluster in self.clusters {
            if let Err(error) = cluster.stop().await {
                eprintln!("warning: a throwaway PostgreSQL did not stop cleanly: {error}");
            }
        }
    }
}
