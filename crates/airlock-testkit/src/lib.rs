//! Dev-only helpers shared by the test suites: a caller with groups, a broker over a catalog and
//! the quickstart policies, a throwaway database for the connector (with or without TLS, and
//! certificates from a [`TestCa`]), an audit chain rewritten behind the broker's back
//! ([`rewrite_chain`]), and waiting for a condition to hold; [`gateway`] runs the
//! whole gateway against a throwaway cluster, for the gateway's tests and its bench.

pub mod gateway;
pub mod oidc;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use airlock_broker::broker::Settings;
use airlock_broker::bundle::PolicyBundle;
use airlock_broker::clock::Clock;
use airlock_broker::config::PolicySection;
use airlock_broker::secrets::load_or_create_key;
use airlock_broker::{Broker, Caller};
use airlock_core::audit::{AuditEvent, ChainHead, chain};
use airlock_core::policy::Principal;
use airlock_core::values::GrantDuration;
use airlock_postgres::cluster::{LocalCluster, ServerCertificate};
use airlock_postgres::grant_ca::GrantCa;
use airlock_store::Store;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A person named `name` in `groups`, calling from 127.0.0.1.
pub fn caller(name: &str, groups: &[&str]) -> Caller {
    caller_from(name, groups, [127, 0, 0, 1].into())
}

/// A person named `name` in `groups`, calling from `source_ip`, in the process (no token, no
/// second factor).
pub fn caller_from(name: &str, groups: &[&str], source_ip: std::net::IpAddr) -> Caller {
    Caller {
        principal: Principal {
            name: name.parse().expect("a valid user name"),
            groups: groups.iter().map(|g| g.parse().expect("a valid group name")).collect(),
            service: false,
        },
        source_ip,
        mfa_at: None,
        token: None,
        device: None,
    }
}

/// A broker in `dir` (store in `dir/data`) over `catalog` and the quickstart's policies:
/// `eng` may request demo-db's `read` and `write`, `sre` reviews, `oncall` reads at once.
pub async fn broker(dir: &Path, catalog: &str, clock: Arc<dyn Clock>) -> Broker {
    let quickstart = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart");
    std::fs::write(dir.join("catalog.toml"), catalog).expect("the catalog is written");
    let bundle = PolicyBundle::load(&PolicySection {
        catalog: dir.join("catalog.toml"),
        policies: format!("{quickstart}/policies").into(),
        tests: format!("{quickstart}/policy-tests").into(),
    })
    .expect("the catalog and the quickstart policies load");
    let store = Store::open(&dir.join("data")).await.expect("a store");
    let settings = Settings {
        pending_ttl: GrantDuration::parse("1h").expect("a duration"),
        auditors: vec!["sre".parse().expect("a group name")],
        breakglass: Default::default(),
        incidents: Default::default(),
        identity: Default::default(),
        mfa: Default::default(),
    };
    let key = load_or_create_key(&dir.join("data")).expect("the broker's key");
    Broker::new(store, bundle, clock, settings, key)
}

/// Replaces the whole audit chain in the SQLite database behind `pool` with `events` (each with
/// its chain id), as someone holding the database file could: the delete guard dropped, every
/// record chained afresh from genesis so that every hash checks out. Returns the forged head.
pub async fn rewrite_chain(
    pool: &sqlx::SqlitePool,
    events: impl IntoIterator<Item = (String, AuditEvent)>,
) -> ChainHead {
    for statement in ["DROP TRIGGER audit_events_no_delete", "DELETE FROM audit_events"] {
        sqlx::query(statement).execute(pool).await.expect("the guard is dropped and the chain emptied");
    }
    let mut head = ChainHead::genesis();
    for (chain_id, event) in events {
        let record = chain(&head, &chain_id, &event);
        sqlx::query("INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(&record.chain_id)
            .bind(record.seq)
            .bind(&record.prev_hash)
            .bind(&record.hash)
            .bind(record.at_ms)
            .bind(&record.kind)
            .bind(&record.actor)
            .bind(&record.details)
            .execute(pool)
            .await
            .expect("a forged record is written");
        head = ChainHead { seq: record.seq, hash: record.hash };
    }
    head
}

/// The connector's password on a [`managed_database`].
pub const CONNECTOR_PASSWORD: &str = "connector-secret-3f9a";

/// Superuser SQL giving the connector what docs/postgres.md says it needs, and a table.
const PREPARE: &str = "
    CREATE ROLE airlock_connector LOGIN CREATEROLE PASSWORD 'connector-secret-3f9a';
    GRANT pg_read_all_data TO airlock_connector WITH ADMIN OPTION;
    CREATE ROLE app_writer NOLOGIN;
    CREATE TABLE orders (id int, note text);
    INSERT INTO orders VALUES (1, 'a'), (2, 'b'), (3, 'c');
    GRANT SELECT, INSERT ON orders TO app_writer;
    GRANT CREATE ON SCHEMA public TO app_writer;
    GRANT app_writer TO airlock_connector WITH ADMIN OPTION;
";

/// A certificate authority of a test's own.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).expect("no names to check");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key");
        let pem = params.self_signed(&key).expect("a CA certificate").pem();
        Self { issuer: Issuer::new(params, key), pem }
    }

    /// The CA's own certificate, in PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `localhost` and 127.0.0.1 signed by this CA, and its key.
    pub fn server_certificate(&self) -> ServerCertificate {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("valid names");
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a server certificate");
        ServerCertificate { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

/// How a [`managed_database`] uses TLS: whether the server has it, and what the catalog asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseTls {
    /// The server has `ssl = on`, with a certificate for 127.0.0.1 and localhost signed by the CA
    /// in `dir/ca.pem`; `dir/other-ca.pem` holds a CA that signed nothing.
    pub server: bool,
    /// The `tls` and `ca_file` lines of the catalog's `[resource.postgres]`.
    pub catalog: &'static str,
}

impl DatabaseTls {
    /// No TLS on either side.
    pub const OFF: Self = Self { server: false, catalog: r#"tls = "disable""# };
    /// The server's certificate is verified against the CA that signed it.
    pub const VERIFIED: Self = Self { server: true, catalog: "tls = \"verify-full\"\nca_file = \"ca.pem\"" };
}

impl Default for DatabaseTls {
    fn default() -> Self {
        Self::OFF
    }
}

/// A throwaway cluster in `dir/pg`, prepared for a connector that is not a superuser, and the
/// catalog naming it as `demo-db` (`read` → `pg_read_all_data`; `write`, two approvals →
/// `app_writer`), reached in plaintext. The connector's password is in `dir/connector.password`.
pub async fn managed_database(dir: &Path) -> (LocalCluster, String) {
    managed_database_with(dir, DatabaseTls::OFF).await
}

/// A [`managed_database`] using TLS as `tls` says.
pub async fn managed_database_with(dir: &Path, tls: DatabaseTls) -> (LocalCluster, String) {
    let (ca, other) = (TestCa::new("airlock test CA"), TestCa::new("another test CA"));
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("the CA's certificate is written");
    std::fs::write(dir.join("other-ca.pem"), other.pem()).expect("the other CA's certificate is written");
    let started = match tls.server {
        true => LocalCluster::start_with_tls(&dir.join("pg"), &ca.server_certificate()).await,
        false => LocalCluster::start(&dir.join("pg")).await,
    };
    prepare(dir, started.expect("a throwaway cluster"), tls.catalog).await
}

/// Gives `cluster` what docs/postgres.md says the connector needs, and returns the catalog naming
/// it as `demo-db` with `tls_lines` in its `[resource.postgres]`.
async fn prepare(dir: &Path, cluster: LocalCluster, tls_lines: &str) -> (LocalCluster, String) {
    let superuser = cluster.connect("postgres").await.expect("the superuser connects");
    superuser.batch_execute(PREPARE).await.expect("the target is prepared");
    std::fs::write(dir.join("connector.password"), format!("{CONNECTOR_PASSWORD}\n")).expect("a password file");
    let catalog = format!(
        r#"
        [[resource]]
        name = "demo-db"
        kind = "postgres"
        environment = "prod"
        [resource.postgres]
        address = "127.0.0.1:{port}"
        database = "postgres"
        admin_user = "airlock_connector"
        admin_password_file = "connector.password"
        {tls}
        [resource.roles.read]
        max_duration = "1h"
        database_roles = ["pg_read_all_data"]
        [resource.roles.write]
        max_duration = "30m"
        approvals = 2
        database_roles = ["app_writer"]
        "#,
        port = cluster.port(),
        tls = tls_lines,
    );
    (cluster, catalog)
}

/// A [`managed_database`] whose grant roles log in only with a certificate from the grant CA in
/// `dir` (`pg_hba.conf` as docs/postgres.md says, `grant_login = "certificate"`), over TLS
/// verified against the test CA; also returns the grant CA, which the gateway signs logins with.
pub async fn managed_database_with_grant_logins(dir: &Path) -> (LocalCluster, String, Arc<GrantCa>) {
    let grant_ca = GrantCa::load_or_create(dir).expect("a grant CA");
    let ca = TestCa::new("airlock test CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("the CA's certificate is written");
    let (pg, server) = (dir.join("pg"), ca.server_certificate());
    let started = LocalCluster::start_with_grant_logins(&pg, &server, grant_ca.cert_pem()).await;
    let cluster = started.expect("a throwaway cluster");
    let (cluster, catalog) =
        prepare(dir, cluster, "tls = \"verify-full\"\nca_file = \"ca.pem\"\ngrant_login = \"certificate\"").await;
    (cluster, catalog, grant_ca)
}

/// Polls `check` until it holds, for at most 10 seconds.
pub async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the condition did not hold within 10 seconds");
}
