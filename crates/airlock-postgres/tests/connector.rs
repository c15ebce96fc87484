//! The connector against a real PostgreSQL: a throwaway cluster, a connector login with only
//! CREATEROLE and the mapped roles WITH ADMIN OPTION (not a superuser), and a broker on the
//! quickstart policies whose clock starts at the real time (PostgreSQL checks `VALID UNTIL`
//! against its own clock). The TLS tests give the cluster a certificate from a test CA.

use std::sync::Arc;
use std::time::Duration;

use airlock_broker::Broker;
use airlock_broker::broker::RequestInput;
use airlock_broker::clock::{Clock, ManualClock};
use airlock_core::ids::GrantId;
use airlock_core::lifecycle::Grant;
use airlock_core::values::{GrantDuration, Reason};
use airlock_postgres::cluster::LocalCluster;
use airlock_postgres::reconciler::{Pass, Reconciler, Target};
use airlock_postgres::roles::{RoleKey, role_name};
use airlock_postgres::standing::standing;
use airlock_testkit::{CONNECTOR_PASSWORD, DatabaseTls, caller, eventually};
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio_postgres::{Client, NoTls};

struct Setup {
    cluster: LocalCluster,
    broker: Broker,
    clock: Arc<ManualClock>,
    key: RoleKey,
    targets: Vec<Target>,
    _dir: TempDir,
}

async fn setup() -> Setup {
    setup_with(DatabaseTls::OFF).await
}

async fn setup_with(tls: DatabaseTls) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, catalog) = airlock_testkit::managed_database_with(dir.path(), tls).await;
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let broker = airlock_testkit::broker(dir.path(), &catalog, clock.clone() as Arc<dyn Clock>).await;
    let targets = Target::from_catalog(&broker.policies().catalog).unwrap();
    Setup { cluster, broker, clock, key: RoleKey::new([42; 32]), targets, _dir: dir }
}

impl Setup {
    fn reconciler(&self, every: Duration) -> Reconciler {
        Reconciler::new(self.broker.clone(), self.targets.clone(), self.key.clone(), every)
    }

    async fn pass(&self) -> Pass {
        self.reconciler(Reconciler::DEFAULT_EVERY).pass().await.expect("a pass")
    }

    async fn grant(&self, role: &str, duration: &str) -> Grant {
        let input = RequestInput {
            resource: "demo-db".parse().unwrap(),
            role: role.parse().unwrap(),
            duration: GrantDuration::parse(duration).unwrap(),
            reason: Reason::parse("INC-7 investigation").unwrap(),
            incident: None,
        };
        if role == "read" {
            let (_, grant) = self.broker.create_request(&caller("dana", &["eng", "oncall"]), input).await.unwrap();
            return grant.expect("oncall read is approved at once");
        }
        let (request, _) = self.broker.create_request(&caller("alice", &["eng"]), input).await.unwrap();
        let id = request.id.to_string();
        self.broker.approve(&caller("bob", &["sre"]), &id, None).await.unwrap();
        let (_, grant) = self.broker.approve(&caller("carol", &["sre"]), &id, None).await.unwrap();
        grant.expect("two approvals start the grant")
    }

    async fn login(&self, grant: &GrantId, password: &str) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.cluster.port())
            .dbname("postgres")
            .user(&role_name(grant))
            .password(password)
            .connect(NoTls)
            .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    async fn superuser(&self) -> Client {
        self.cluster.connect("postgres").await.unwrap()
    }

    async fn grant_roles(&self) -> Vec<String> {
        let rows = self.superuser().await.query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'airlock\\_%' AND rolname <> 'airlock_connector' ORDER BY 1", &[]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    async fn audit_kinds(&self) -> Vec<String> {
        let records = self.broker.store().audit_chain(airlock_store::BROKER_CHAIN).await.unwrap();
        records.into_iter().map(|r| r.kind).filter(|k| k.starts_with("target.")).collect()
    }
}

#[tokio::test]
async fn a_read_grant_gets_a_role_that_reads_and_loses_it_on_revoke() {
    let s = setup().await;
    let grant = s.grant("read", "30m").await;
    assert_eq!(s.pass().await, Pass { created: 1, ..Pass::default() });
    assert_eq!(s.grant_roles().await, [role_name(&grant.id)]);
    // A second pass has nothing to do.
    assert_eq!(s.pass().await, Pass::default());

    let session = s.login(&grant.id, &s.key.password(&grant.id)).await.expect("the grant's role logs in");
    let count: i64 = session.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    assert_eq!(count, 3);
    let refused = session.batch_execute("INSERT INTO orders VALUES (4)").await.unwrap_err();
    assert_eq!(refused.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE));
    assert!(s.login(&grant.id, "guessed").await.is_err(), "a wrong password is refused");
    let until: Option<String> = s
        .superuser()
        .await
        .query_one("SELECT rolvaliduntil::text FROM pg_roles WHERE rolname = $1", &[&role_name(&grant.id)])
        .await
        .unwrap()
        .get(0);
    assert!(until.is_some(), "the role expires with the grant");

    s.broker.revoke(&caller("bob", &["sre"]), &grant.id.to_string(), Reason::parse("done").unwrap()).await.unwrap();
    let pass = s.pass().await;
    let records = s.broker.store().audit_chain(airlock_store::BROKER_CHAIN).await.unwrap();
    assert_eq!((pass.dropped, pass.sessions_ended), (1, 1), "{pass:?} {:?}", records.last());
    assert!(s.grant_roles().await.is_empty());
    assert!(session.query_one("SELECT 1", &[]).await.is_err(), "the open session was terminated");
    assert!(s.login(&grant.id, &s.key.password(&grant.id)).await.is_err(), "and no new one starts");
    assert_eq!(s.audit_kinds().await, ["target.role_created", "target.role_dropped"]);
}

#[tokio::test]
async fn an_expired_write_grant_leaves_its_objects_to_the_connector() {
    let s = setup().await;
    let grant = s.grant("write", "10m").await;
    s.pass().await;
    let session = s.login(&grant.id, &s.key.password(&grant.id)).await.unwrap();
    session.batch_execute("INSERT INTO orders VALUES (4); CREATE TABLE scratch (x int)").await.unwrap();

    s.clock.advance(time::Duration::minutes(10));
    assert_eq!(s.broker.sweep().await.unwrap().grants_expired, 1);
    assert_eq!(s.pass().await.dropped, 1);
    let owner: String = s
        .superuser()
        .await
        .query_one("SELECT tableowner::text FROM pg_tables WHERE tablename = 'scratch'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "airlock_connector");
    assert!(s.grant_roles().await.is_empty());
}

#[tokio::test]
async fn roles_no_grant_explains_are_dropped() {
    let s = setup().await;
    let stray = format!("airlock_{}", uuid::Uuid::new_v4().simple());
    s.superuser().await.batch_execute(&format!("CREATE ROLE {stray} LOGIN")).await.unwrap();
    assert_eq!(s.pass().await.dropped, 1);
    assert!(s.grant_roles().await.is_empty());
}

#[tokio::test]
async fn the_running_reconciler_acts_on_a_revoke_without_waiting_for_its_period() {
    let s = setup().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(s.reconciler(Duration::from_secs(3600)).run(stopped));
    let grant = s.grant("read", "30m").await;
    eventually(|| async { s.grant_roles().await == [role_name(&grant.id)] }).await;
    s.broker
        .revoke(&caller("dana", &["eng", "oncall"]), &grant.id.to_string(), Reason::parse("done").unwrap())
        .await
        .unwrap();
    eventually(|| async { s.grant_roles().await.is_empty() }).await;
    stop.send(true).unwrap();
    running.await.unwrap();
}

#[tokio::test]
async fn an_unreachable_target_is_audited_without_its_secret() {
    let s = setup().await;
    s.grant("read", "30m").await;
    let mut targets = s.targets.clone();
    targets[0].connection.port(1);
    let pass = Reconciler::new(s.broker.clone(), targets, s.key.clone(), Duration::from_secs(5)).pass().await.unwrap();
    assert_eq!(pass.failed, 1);
    let records = s.broker.store().audit_chain(airlock_store::BROKER_CHAIN).await.unwrap();
    let failed = records.iter().find(|r| r.kind == "target.failed").expect("the failure is audited");
    assert!(failed.details.contains("cannot connect"), "{}", failed.details);
    assert!(records.iter().all(|r| !r.details.contains(CONNECTOR_PASSWORD)));
}

#[tokio::test]
async fn the_standing_report_names_privileges_no_live_grant_explains() {
    let s = setup().await;
    let standing_grants = "CREATE ROLE mallory LOGIN; GRANT pg_read_all_data TO mallory;
        CREATE ROLE reporting NOLOGIN; GRANT app_writer TO reporting;";
    s.superuser().await.batch_execute(standing_grants).await.unwrap();
    let grant = s.grant("read", "30m").await;
    s.pass().await;
    let found = standing(&s.targets[0], &s.broker.live_grants().await.unwrap()).await.unwrap();
    let seen: Vec<(String, &str)> = found.iter().map(|f| (f.database_role.clone(), f.kind)).collect();
    assert!(seen.contains(&("mallory".to_owned(), "member_of_mapped_role")), "{seen:?}");
    assert!(seen.contains(&(s.cluster.superuser().to_owned(), "superuser")), "{seen:?}");
    let explained = ["reporting", "airlock_connector", role_name(&grant.id).as_str()].map(str::to_owned);
    assert!(seen.iter().all(|(role, _)| !explained.contains(role)), "login-less, connector and live grant: {seen:?}");

    s.broker.revoke(&caller("bob", &["sre"]), &grant.id.to_string(), Reason::parse("done").unwrap()).await.unwrap();
    let found = standing(&s.targets[0], &s.broker.live_grants().await.unwrap()).await.unwrap();
    assert!(found.iter().any(|f| f.database_role == role_name(&grant.id) && f.kind == "ended_grant_role"), "{found:?}");
}

/// Whether the connector's own connection to the target is encrypted, as the server sees it.
async fn connector_uses_tls(target: &Target) -> bool {
    let (client, _connection) = target.connect().await.expect("the connector logs in");
    let ssl = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
    ssl.get(0)
}

#[tokio::test]
async fn over_verified_tls_a_grant_role_is_created_and_dropped() {
    let s = setup_with(DatabaseTls::VERIFIED).await;
    assert!(s.targets[0].tls.is_some());
    assert!(connector_uses_tls(&s.targets[0]).await, "the connector's login is encrypted");
    let grant = s.grant("read", "30m").await;
    assert_eq!(s.pass().await, Pass { created: 1, ..Pass::default() });
    assert_eq!(s.grant_roles().await, [role_name(&grant.id)]);

    s.broker.revoke(&caller("bob", &["sre"]), &grant.id.to_string(), Reason::parse("done").unwrap()).await.unwrap();
    assert_eq!(s.pass().await.dropped, 1);
    assert!(s.grant_roles().await.is_empty());
    assert_eq!(s.audit_kinds().await, ["target.role_created", "target.role_dropped"]);
}

#[tokio::test]
async fn require_encrypts_without_checking_the_certificate() {
    // The catalog names no CA: only `require` accepts a certificate nobody vouches for.
    let s = setup_with(DatabaseTls { server: true, catalog: r#"tls = "require""# }).await;
    assert!(connector_uses_tls(&s.targets[0]).await);
    s.grant("read", "30m").await;
    assert_eq!(s.pass().await, Pass { created: 1, ..Pass::default() });
}

/// Fail closed: a target whose certificate does not verify, or that does not speak TLS, is not
/// reconciled (and audited as such), and no role is made on it.
#[tokio::test]
async fn a_target_that_fails_verification_or_refuses_tls_is_not_used() {
    for (tls, expect) in [
        (DatabaseTls { server: true, catalog: r#"ca_file = "other-ca.pem""# }, "invalid peer certificate"),
        (DatabaseTls { server: false, catalog: r#"ca_file = "ca.pem""# }, "server does not support TLS"),
    ] {
        let s = setup_with(tls).await;
        s.grant("read", "30m").await;
        assert_eq!(s.pass().await, Pass { failed: 1, ..Pass::default() }, "{tls:?}");
        assert!(s.grant_roles().await.is_empty());
        let records = s.broker.store().audit_chain(airlock_store::BROKER_CHAIN).await.unwrap();
        let failed = records.iter().find(|r| r.kind == "target.failed").expect("the failure is audited");
        assert!(failed.details.contains(expect), "{tls:?}: {}", failed.details);
    }
}
