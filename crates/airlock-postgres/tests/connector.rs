//! The connector against a real PostgreSQL: a throwaway cluster, a connector login with only
//! CREATEROLE and the mapped roles WITH ADMIN OPTION (not a superuser), and a broker on the
//! quickstart policies whose clock starts at the real time (PostgreSQL checks `VALID UNTIL`
//! against its own clock). The TLS tests give the cluster a certificate from a test CA.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use airlock_broker::Broker;
use airlock_broker::broker::RequestInput;
use airlock_broker::clock::{Clock, ManualClock, SystemClock};
use airlock_core::audit::{ChainRecord, EventKind, unix_ms};
use airlock_core::ids::GrantId;
use airlock_core::lifecycle::Grant;
use airlock_core::values::{GrantDuration, Reason};
use airlock_postgres::cluster::LocalCluster;
use airlock_postgres::reconciler::{Pass, Reconciler, Target, Tuning};
use airlock_postgres::roles::{RoleKey, role_name};
use airlock_postgres::standing::standing;
use airlock_testkit::{CONNECTOR_PASSWORD, DatabaseTls, caller, eventually};
use serde_json::{Value, json};
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

async fn setup_editing(edit: impl FnOnce(String) -> String) -> Setup {
    setup_full(DatabaseTls::OFF, edit).await
}

async fn setup_with(tls: DatabaseTls) -> Setup {
    setup_full(tls, |catalog| catalog).await
}

async fn setup_full(tls: DatabaseTls, edit: impl FnOnce(String) -> String) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, catalog) = airlock_testkit::managed_database_with(dir.path(), tls).await;
    let catalog = edit(catalog);
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

    /// Every object outside PostgreSQL's own schemas owned by a grant role, the holding role or
    /// a role that can log in (the connector, the superuser), and every large object.
    async fn left_behind(&self) -> Vec<String> {
        let rows = self
            .superuser()
            .await
            .query(
                "SELECT 'table ' || c.relname || ' owned by ' || pg_get_userbyid(c.relowner) FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND c.relkind IN ('r', 'p', 'v', 'm')
                   AND c.relname <> 'orders'
                 UNION ALL
                 SELECT 'function ' || p.proname || ' owned by ' || pg_get_userbyid(p.proowner) FROM pg_proc p
                 JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                 UNION ALL
                 SELECT 'large object owned by ' || pg_get_userbyid(lomowner) FROM pg_largeobject_metadata
                 UNION ALL
                 SELECT 'default privileges of ' || pg_get_userbyid(defaclrole) FROM pg_default_acl
                 ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Objects outside PostgreSQL's own schemas owned by a superuser or the connector.
    async fn owned_by_the_powerful(&self) -> Vec<String> {
        let rows = self
            .superuser()
            .await
            .query(
                "SELECT p.proname::text FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
                 JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE (r.rolsuper OR r.rolcreaterole) AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                 UNION ALL
                 SELECT c.relname::text FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE (r.rolsuper OR r.rolcreaterole) AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                   AND c.relname <> 'orders'",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    async fn audit_kinds(&self) -> Vec<String> {
        let records = self.broker.store().audit_chain(airlock_store::BROKER_CHAIN).await.unwrap();
        records.into_iter().map(|r| r.kind).filter(|k| k.starts_with("target.")).collect()
    }

    /// The kinds of the connector's records about `grant`, in order.
    async fn kinds_about(&self, grant: &Grant) -> Vec<String> {
        target_records(&self.broker, grant).await.into_iter().map(|r| r.kind).collect()
    }

    /// Records `kind` about `grant`'s role as the connector would have.
    async fn record(&self, kind: EventKind, grant: &Grant) {
        let details = json!({ "resource": "demo-db", "grant": grant.id, "database_role": role_name(&grant.id) });
        self.broker.record_target_event(kind, details).await.unwrap();
    }
}

/// The connector's records about `grant`, in order.
async fn target_records(broker: &Broker, grant: &Grant) -> Vec<ChainRecord> {
    let kinds = ["target.role_creating", "target.role_created", "target.role_dropping", "target.role_dropped"];
    let kinds = [&kinds[..], &["target.role_unchanged", "target.failed"]].concat();
    broker.store().grant_records(&[grant.id.to_string()], &kinds).await.unwrap()
}

/// A role created and dropped: each change's intent, then its outcome.
const INTENTS_AND_OUTCOMES: [&str; 4] =
    ["target.role_creating", "target.role_created", "target.role_dropping", "target.role_dropped"];

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
    assert_eq!(s.audit_kinds().await, INTENTS_AND_OUTCOMES);
}

/// What a write grant made (a table, a `SECURITY DEFINER` function, a large object, a default
/// privilege) ends with it: nothing passes to the connector or any other role with more power.
#[tokio::test]
async fn an_ended_write_grant_leaves_nothing_behind() {
    let s = setup().await;
    let grant = s.grant("write", "10m").await;
    s.pass().await;
    let session = s.login(&grant.id, &s.key.password(&grant.id)).await.unwrap();
    session.batch_execute(LEAVE_BEHIND).await.unwrap();

    s.clock.advance(time::Duration::minutes(10));
    assert_eq!(s.broker.sweep().await.unwrap().grants_expired, 1);
    assert_eq!(s.pass().await.dropped, 1);
    assert_eq!(s.left_behind().await, Vec::<String>::new());
    assert!(s.grant_roles().await.is_empty());
}

/// With `keep_tables`, a grant's tables outlive it, owned by the holding role, which can do
/// nothing: its trigger function (`SECURITY DEFINER`), view and large object are gone.
#[tokio::test]
async fn kept_tables_go_to_a_powerless_holding_role_without_their_code() {
    let s = setup_editing(|catalog| {
        catalog.replace("[resource.roles.write]", "[resource.roles.write]\nkeep_tables = true")
    })
    .await;
    let grant = s.grant("write", "10m").await;
    s.pass().await;
    let session = s.login(&grant.id, &s.key.password(&grant.id)).await.unwrap();
    session.batch_execute(LEAVE_BEHIND).await.unwrap();
    s.clock.advance(time::Duration::minutes(10));
    s.broker.sweep().await.unwrap();
    let pass = s.pass().await;
    let records = s.broker.store().audit_chain(airlock_store::BROKER_CHAIN).await.unwrap();
    assert_eq!(pass.dropped, 1, "{:?}", records.last());
    assert_eq!(s.left_behind().await, ["table scratch owned by airlock_holding"]);
    let holding: (bool, bool, i64) = {
        let row = s
            .superuser()
            .await
            .query_one(
                "SELECT rolcanlogin, rolsuper, (SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid)
                 FROM pg_roles r WHERE rolname = 'airlock_holding'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(holding, (false, false, 0), "the holding role cannot log in and is a member of nothing");
    let superuser = s.superuser().await;
    superuser.batch_execute("INSERT INTO scratch VALUES (2)").await.expect("the trigger went with its function");
}

/// The red team's chain: a write holder leaves a `SECURITY DEFINER` function in its temporary
/// schema that would make a superuser, a read holder locks that session's temporary table so
/// its clean-up cannot finish, and the write grant is revoked. The function must never run with
/// more than the grant had: the role is disarmed at once, and dropped once its session is gone.
#[tokio::test]
async fn a_temporary_security_definer_function_never_outlives_its_grant_with_power() {
    let s = setup().await;
    let (write, read) = (s.grant("write", "30m").await, s.grant("read", "30m").await);
    s.pass().await;
    let writer = s.login(&write.id, &s.key.password(&write.id)).await.unwrap();
    writer
        .batch_execute(
            "CREATE TEMP TABLE t (x int);
             CREATE FUNCTION pg_temp.pwn() RETURNS void LANGUAGE sql SECURITY DEFINER
                 AS $$ CREATE ROLE pwn SUPERUSER LOGIN PASSWORD 'pwned' $$;
             GRANT EXECUTE ON FUNCTION pg_temp.pwn() TO PUBLIC;
             CREATE FUNCTION public.pwn() RETURNS void LANGUAGE sql SECURITY DEFINER
                 AS $$ CREATE ROLE pwn SUPERUSER LOGIN PASSWORD 'pwned' $$;",
        )
        .await
        .unwrap();
    let temp: String = writer
        .query_one("SELECT nspname::text FROM pg_namespace WHERE oid = pg_my_temp_schema()", &[])
        .await
        .unwrap()
        .get(0);
    let reader = s.login(&read.id, &s.key.password(&read.id)).await.unwrap();
    reader.batch_execute(&format!("BEGIN; LOCK TABLE {temp}.t IN ACCESS SHARE MODE")).await.unwrap();

    s.broker.revoke(&caller("bob", &["sre"]), &write.id.to_string(), Reason::parse("done").unwrap()).await.unwrap();
    let pass = s.pass().await;
    assert_eq!((pass.dropped, pass.failed), (0, 1), "the session cannot end while its lock is held: {pass:?}");
    let write_role = role_name(&write.id);
    let disarmed: (bool, i64) = {
        let row = s
            .superuser()
            .await
            .query_one(
                "SELECT rolcanlogin, (SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid) FROM pg_roles r WHERE rolname = $1",
                &[&write_role],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(disarmed, (false, 0), "the role is disarmed at once");
    assert_eq!(s.owned_by_the_powerful().await, Vec::<String>::new());
    // Calling what was left runs as the disarmed role: it cannot make a superuser.
    for call in [format!("SELECT {temp}.pwn()"), "SELECT public.pwn()".to_owned()] {
        let error = reader.batch_execute(&call).await.expect_err("the call fails");
        assert_eq!(error.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{call}");
        reader.batch_execute("ROLLBACK; BEGIN").await.unwrap();
    }

    reader.batch_execute("COMMIT").await.unwrap();
    eventually(|| async { s.pass().await.dropped == 1 }).await;
    assert_eq!(s.left_behind().await, Vec::<String>::new());
    let pwn = s.superuser().await.query_opt("SELECT 1 FROM pg_roles WHERE rolname = 'pwn'", &[]).await.unwrap();
    assert!(pwn.is_none(), "no superuser was made");
    let kinds = s.audit_kinds().await;
    assert!(
        kinds.contains(&"target.failed".to_owned()) && kinds.contains(&"target.role_dropped".to_owned()),
        "{kinds:?}"
    );
}

/// The connector refuses to work as a superuser unless the catalog accepts the risk: a
/// superuser takes whatever a grant role leaves, and every mistake of the connector is the
/// whole cluster's.
#[tokio::test]
async fn a_superuser_connector_is_refused_unless_accepted() {
    let s = setup().await;
    s.grant("read", "30m").await;
    let mut targets = s.targets.clone();
    targets[0].connection.user(s.cluster.superuser()).password(s.cluster.superuser_password());
    let reconciler = Reconciler::new(s.broker.clone(), targets.clone(), s.key.clone(), Duration::from_secs(5));
    assert_eq!(reconciler.pass().await.unwrap().created, 0);
    assert!(s.grant_roles().await.is_empty());
    let records = s.broker.store().audit_chain(airlock_store::BROKER_CHAIN).await.unwrap();
    let failed = records.iter().find(|r| r.kind == "target.failed").expect("the refusal is audited");
    assert!(failed.details.contains("a superuser"), "{}", failed.details);

    targets[0].allow_superuser_connector = true;
    let reconciler = Reconciler::new(s.broker.clone(), targets, s.key.clone(), Duration::from_secs(5));
    assert_eq!(reconciler.pass().await.unwrap().created, 1);
}

/// A write grant's leftovers of every kind: a table with a trigger whose function is
/// `SECURITY DEFINER`, a view, a function granted to everyone, a large object and default
/// privileges.
const LEAVE_BEHIND: &str = "
    CREATE TABLE scratch (x int);
    CREATE FUNCTION public.stamp() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        AS $$ BEGIN RETURN NEW; END $$;
    CREATE TRIGGER stamp BEFORE INSERT ON scratch FOR EACH ROW EXECUTE FUNCTION public.stamp();
    CREATE VIEW scratch_view AS SELECT * FROM scratch;
    CREATE FUNCTION public.helper() RETURNS int LANGUAGE sql SECURITY DEFINER AS $$ SELECT 1 $$;
    GRANT EXECUTE ON FUNCTION public.helper() TO PUBLIC;
    SELECT lo_create(0);
    ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC;
";

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
    assert_eq!(pass.failed, 2, "creating and dropping each failed");
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
    assert_eq!(s.audit_kinds().await, INTENTS_AND_OUTCOMES);
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
        // Both the creating and the dropping side fail to reach it.
        assert_eq!(s.pass().await, Pass { failed: 2, ..Pass::default() }, "{tls:?}");
        assert!(s.grant_roles().await.is_empty());
        let records = s.broker.store().audit_chain(airlock_store::BROKER_CHAIN).await.unwrap();
        let failed = records.iter().find(|r| r.kind == "target.failed").expect("the failure is audited");
        assert!(failed.details.contains(expect), "{tls:?}: {}", failed.details);
    }
}

/// A crash between an intent and its outcome, four ways: the next reconciler's first pass
/// records the outcome the database shows, then converges as usual.
#[tokio::test]
async fn intents_a_crash_left_without_outcome_are_resolved_at_the_next_pass() {
    let s = setup().await;
    let (dropped, not_dropped) = (s.grant("read", "30m").await, s.grant("read", "30m").await);
    assert_eq!(s.pass().await.created, 2);
    for grant in [&dropped, &not_dropped] {
        s.broker.revoke(&caller("bob", &["sre"]), &grant.id.to_string(), Reason::parse("done").unwrap()).await.unwrap();
        s.record(EventKind::TargetRoleDropping, grant).await;
    }
    let superuser = s.superuser().await;
    // Stopped after the DROP ROLE (`dropped`), before it (`not_dropped`).
    superuser.batch_execute(&format!("DROP ROLE {}", role_name(&dropped.id))).await.unwrap();
    let (created, not_created) = (s.grant("read", "30m").await, s.grant("read", "30m").await);
    s.record(EventKind::TargetRoleCreating, &created).await;
    s.record(EventKind::TargetRoleCreating, &not_created).await;
    // Stopped after the CREATE ROLE (`created`), before it (`not_created`).
    superuser.batch_execute(&format!("CREATE ROLE {} LOGIN", role_name(&created.id))).await.unwrap();

    let pass = s.pass().await;
    assert_eq!((pass.created, pass.dropped, pass.failed), (1, 1, 0), "{pass:?}");
    let (creating, created_, dropping, dropped_, unchanged) = (
        "target.role_creating",
        "target.role_created",
        "target.role_dropping",
        "target.role_dropped",
        "target.role_unchanged",
    );
    let expect = [
        (&dropped, vec![creating, created_, dropping, dropped_]),
        (&not_dropped, vec![creating, created_, dropping, unchanged, dropping, dropped_]),
        (&created, vec![creating, created_]),
        (&not_created, vec![creating, unchanged, creating, created_]),
    ];
    for (grant, kinds) in expect {
        assert_eq!(s.kinds_about(grant).await, kinds);
    }
    let recovered = target_records(&s.broker, &dropped).await.pop().unwrap();
    assert!(recovered.details.contains(r#""recovered":true"#), "{}", recovered.details);
    let mut left = s.grant_roles().await;
    left.sort();
    let mut live = vec![role_name(&created.id), role_name(&not_created.id)];
    live.sort();
    assert_eq!(left, live);
    // Nothing more to resolve or do.
    assert_eq!(s.pass().await, Pass::default());
    assert_eq!(s.kinds_about(&created).await.len(), 2);
}

/// When the intent cannot be recorded, the database is not touched; once it can, the role is made.
#[tokio::test]
async fn no_role_is_created_while_its_intent_cannot_be_recorded() {
    let s = setup().await;
    let store = sqlx::SqlitePool::connect(&format!("sqlite://{}", s._dir.path().join("data/airlock.db").display()))
        .await
        .unwrap();
    let refuse = "CREATE TRIGGER refuse_intents BEFORE INSERT ON audit_events WHEN NEW.kind = 'target.role_creating'
                  BEGIN SELECT RAISE(ABORT, 'the disk is full'); END";
    sqlx::query(refuse).execute(&store).await.unwrap();
    let grant = s.grant("read", "30m").await;
    let pass = s.pass().await;
    assert_eq!((pass.created, pass.failed), (0, 1), "{pass:?}");
    assert!(s.grant_roles().await.is_empty(), "no role without its intent");
    assert!(s.kinds_about(&grant).await.is_empty());

    sqlx::query("DROP TRIGGER refuse_intents").execute(&store).await.unwrap();
    assert_eq!(s.pass().await.created, 1);
    assert_eq!(s.kinds_about(&grant).await, ["target.role_creating", "target.role_created"]);
}

/// The churn benchmark's invariants at a rate CI runs: 50 grants of 1 or 2 s, started over about
/// 3 s on the system clock, with the running reconciler (`benches/churn.rs` is the full-size run).
#[tokio::test]
async fn under_churn_every_grant_gets_its_role_in_time_with_its_records_and_none_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, catalog) = airlock_testkit::managed_database(dir.path()).await;
    let broker = airlock_testkit::broker(dir.path(), &catalog, Arc::new(SystemClock) as Arc<dyn Clock>).await;
    let targets = Target::from_catalog(&broker.policies().catalog).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let reconciler = Reconciler::new(broker.clone(), targets, RoleKey::new([42; 32]), Duration::from_secs(5));
    let running = tokio::spawn(reconciler.run(stopped));
    let mut grants = Vec::new();
    for i in 0..50 {
        let input = RequestInput {
            resource: "demo-db".parse().unwrap(),
            role: "read".parse().unwrap(),
            duration: GrantDuration::from_secs(1 + i % 2).unwrap(),
            reason: Reason::parse("churn").unwrap(),
            incident: None,
        };
        let (_, grant) = broker.create_request(&caller("dana", &["eng", "oncall"]), input).await.unwrap();
        grants.push(grant.unwrap());
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let superuser = cluster.connect("postgres").await.unwrap();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = superuser
            .query_one("SELECT count(*) FROM pg_roles WHERE rolname ~ '^airlock_[0-9a-f]{32}$'", &[])
            .await
            .unwrap()
            .get(0);
        let ended = grants.iter().all(|g| g.ends_at < OffsetDateTime::now_utc());
        if ended && left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < give_up, "{left} grant role(s) left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    running.await.unwrap();

    for grant in &grants {
        let records = target_records(&broker, grant).await;
        let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
        // Each grant lived through many passes: its role was made, then ended, each change
        // recorded as an intent and then its outcome, and nothing else happened to it.
        assert_eq!(kinds, INTENTS_AND_OUTCOMES, "grant {}", grant.id);
        let created = &records[1];
        assert!(created.at_ms < unix_ms(grant.ends_at), "grant {}: its role was created after its end", grant.id);
        let details: Value = serde_json::from_str(&created.details).unwrap();
        assert_eq!(details["valid_until"], json!(grant.ends_at.unix_timestamp()));
    }
    let kinds: HashMap<String, usize> =
        broker.store().audit_chain(airlock_store::BROKER_CHAIN).await.unwrap().into_iter().fold(
            HashMap::new(),
            |mut counts, record| {
                *counts.entry(record.kind).or_default() += 1;
                counts
            },
        );
    assert_eq!(kinds.get("target.failed"), None, "{kinds:?}");
}

/// Roles are created in batches; one grant whose role cannot be made (its mapped role does not
/// exist) fails alone, and the others of its batch are made one by one.
#[tokio::test]
async fn a_grant_whose_role_fails_does_not_hold_up_its_batch() {
    let s = setup_editing(|catalog| catalog.replace(r#"["app_writer"]"#, r#"["no_such_role"]"#)).await;
    let mut reads = Vec::new();
    for _ in 0..3 {
        reads.push(s.grant("read", "30m").await);
    }
    let write = s.grant("write", "10m").await;
    let one_batch = Tuning { creating: 1, dropping: 1, ..Tuning::default() };
    let reconciler =
        Reconciler::tuned(s.broker.clone(), s.targets.clone(), s.key.clone(), Duration::from_secs(5), one_batch);
    let pass = reconciler.pass().await.unwrap();
    assert_eq!((pass.created, pass.failed), (3, 1), "{pass:?}");
    assert_eq!(s.grant_roles().await.len(), 3);
    for read in &reads {
        assert_eq!(s.kinds_about(read).await, ["target.role_creating", "target.role_created"]);
    }
    assert_eq!(s.kinds_about(&write).await, ["target.role_creating", "target.failed"]);
    let failed = target_records(&s.broker, &write).await.pop().unwrap();
    assert!(failed.details.contains("no_such_role"), "{}", failed.details);
}

/// A grant with less than the margin left gets no role, and no intent is recorded for it.
#[tokio::test]
async fn a_grant_about_to_end_gets_no_role() {
    let s = setup().await;
    let grant = s.grant("read", "1m").await;
    s.clock.advance(time::Duration::seconds(60) - time::Duration::milliseconds(50));
    assert_eq!(s.pass().await, Pass::default());
    assert!(s.grant_roles().await.is_empty());
    assert!(s.kinds_about(&grant).await.is_empty());
}
