//! The standing-privilege report against a real PostgreSQL 15: the testkit's managed database
//! (a connector with `CREATEROLE` and the mapped roles WITH ADMIN OPTION), its catalog accepting
//! the role `dba` in `privileged_roles`, made unclean by the superuser one situation at a time,
//! and the exact findings the report gives for it.

use std::sync::Arc;
use std::time::Duration;

use airlock_broker::Broker;
use airlock_broker::broker::RequestInput;
use airlock_broker::clock::{Clock, ManualClock};
use airlock_core::lifecycle::Grant;
use airlock_core::values::{GrantDuration, Reason};
use airlock_postgres::cluster::LocalCluster;
use airlock_postgres::reconciler::{Reconciler, Target};
use airlock_postgres::roles::{RoleKey, role_name};
use airlock_postgres::standing::{Finding, standing};
use airlock_testkit::caller;
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio_postgres::Client;

/// A per-grant role no grant of this broker explains, as a crash could leave one.
const ENDED_GRANT_ROLE: &str = "airlock_0000000000000000000000000000dead";

struct Setup {
    cluster: LocalCluster,
    broker: Broker,
    target: Target,
    _dir: TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, catalog) = airlock_testkit::managed_database(dir.path()).await;
    let catalog = catalog.replace("[resource.postgres]", "[resource.postgres]\nprivileged_roles = [\"dba\"]");
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let broker = airlock_testkit::broker(dir.path(), &catalog, clock as Arc<dyn Clock>).await;
    let mut targets = Target::from_catalog(&broker.policies().catalog).unwrap();
    assert_eq!(targets[0].privileged_roles, ["dba"]);
    Setup { cluster, broker, target: targets.remove(0), _dir: dir }
}

impl Setup {
    async fn superuser(&self) -> Client {
        self.cluster.connect("postgres").await.unwrap()
    }

    /// A live `read` grant (on-call reads are approved at once) and its role on the database.
    async fn live_grant(&self) -> Grant {
        let input = RequestInput {
            resource: "demo-db".parse().unwrap(),
            role: "read".parse().unwrap(),
            duration: GrantDuration::parse("30m").unwrap(),
            reason: Reason::parse("INC-16 containment").unwrap(),
            incident: None,
        };
        let (_, grant) = self.broker.create_request(&caller("dana", &["eng", "oncall"]), input).await.unwrap();
        let reconciler = Reconciler::new(
            self.broker.clone(),
            vec![self.target.clone()],
            RoleKey::new([42; 32]),
            Duration::from_secs(5),
        );
        assert_eq!(reconciler.pass().await.unwrap().created, 1);
        grant.expect("on-call reads are approved at once")
    }

    async fn findings(&self) -> Vec<Finding> {
        standing(&self.target, &self.broker.live_grants().await.unwrap()).await.unwrap()
    }
}

/// Asserts that `found` is exactly `expect`, in any order: each a kind, a role and a piece of
/// the detail.
#[track_caller]
fn check(found: &[Finding], expect: &[(&str, &str, &str)]) {
    let mut left: Vec<&Finding> = found.iter().collect();
    for &(kind, role, detail) in expect {
        let at = left.iter().position(|f| f.kind == kind && f.database_role == role && f.detail.contains(detail));
        let at = at.unwrap_or_else(|| panic!("no {kind} finding for `{role}` saying `{detail}` in {found:#?}"));
        assert_eq!(left.remove(at).resource, "demo-db");
    }
    assert!(left.is_empty(), "findings not expected: {left:#?}");
}

/// What the managed database holds before anyone touches it: the connector's `CREATEROLE` and
/// memberships are what it needs, so only the bootstrap superuser, who can log in, is standing
/// privilege; once it cannot log in, nothing is.
#[tokio::test]
async fn a_clean_database_has_only_its_bootstrap_superuser_and_nothing_once_it_is_locked() {
    let s = setup().await;
    check(&s.findings().await, &[("superuser", "postgres", "can use every privilege")]);

    s.superuser().await.batch_execute("ALTER ROLE postgres NOLOGIN").await.unwrap();
    check(&s.findings().await, &[]);
}

#[tokio::test]
async fn every_kind_of_standing_privilege_is_found_and_nothing_else() {
    let s = setup().await;
    let grant = s.live_grant().await;
    let live = role_name(&grant.id);
    let superuser = s.superuser().await;
    let unclean = format!(
        "
        -- security_definer: a CREATEROLE role's function that PUBLIC may run; the same revoked
        -- from PUBLIC; and an unprivileged role's, which lends nothing.
        CREATE ROLE admin NOLOGIN CREATEROLE;
        CREATE FUNCTION public.lend_admin() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
        ALTER FUNCTION public.lend_admin() OWNER TO admin;
        CREATE FUNCTION public.kept_to_admin() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
        ALTER FUNCTION public.kept_to_admin() OWNER TO admin;
        REVOKE EXECUTE ON FUNCTION public.kept_to_admin() FROM PUBLIC;
        CREATE ROLE nobody NOLOGIN;
        CREATE FUNCTION public.lends_nothing() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
        ALTER FUNCTION public.lends_nothing() OWNER TO nobody;
        -- owned_by_grant_role: an ended grant's table; the holding role's view, not its table;
        -- the live grant's table.
        CREATE ROLE {ENDED_GRANT_ROLE} NOLOGIN;
        CREATE TABLE leftover (x int);
        ALTER TABLE leftover OWNER TO {ENDED_GRANT_ROLE};
        CREATE ROLE airlock_holding NOLOGIN;
        CREATE TABLE kept (id serial PRIMARY KEY);
        ALTER TABLE kept OWNER TO airlock_holding;
        CREATE VIEW held AS SELECT 1 AS x;
        ALTER VIEW held OWNER TO airlock_holding;
        CREATE TABLE live_scratch (x int);
        ALTER TABLE live_scratch OWNER TO {live};
        -- public_privilege and large_object.
        CREATE TABLE t (x int);
        GRANT SELECT ON t TO PUBLIC;
        SELECT lo_create(4242);
        -- bypassrls, server_access_member; and `dba`, accepted by the catalog with all of it.
        CREATE ROLE rls_exempt NOLOGIN BYPASSRLS;
        CREATE ROLE file_reader LOGIN;
        GRANT pg_read_server_files TO file_reader;
        CREATE ROLE dba LOGIN CREATEROLE BYPASSRLS;
        GRANT pg_execute_server_program TO dba;
        "
    );
    superuser.batch_execute(&unclean).await.unwrap();
    // A temporary function lives as long as its session: this one is kept open while the report
    // reads, as an attacker would keep theirs.
    superuser
        .batch_execute("CREATE FUNCTION pg_temp.borrow() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'")
        .await
        .unwrap();

    check(
        &s.findings().await,
        &[
            ("superuser", "postgres", "can use every privilege"),
            ("createrole", "admin", "can create roles"),
            ("bypassrls", "rls_exempt", "row-level security"),
            ("server_access_member", "file_reader", "`pg_read_server_files`"),
            ("ended_grant_role", ENDED_GRANT_ROLE, "its grant is not live"),
            ("owned_by_grant_role", ENDED_GRANT_ROLE, "owns table public.leftover; its grant is not live"),
            (
                "owned_by_grant_role",
                "airlock_holding",
                "owns view public.held; the holding role may own kept tables only",
            ),
            (
                "security_definer",
                "admin",
                "function public.lend_admin() is SECURITY DEFINER: PUBLIC may run it as `admin` (has CREATEROLE)",
            ),
            (
                "security_definer",
                "postgres",
                ".borrow() is SECURITY DEFINER: PUBLIC may run it as `postgres` (a superuser)",
            ),
            ("public_privilege", "PUBLIC", "everyone has SELECT on table public.t"),
            ("large_object", "postgres", "large object 4242, owned by `postgres`"),
        ],
    );
}

/// Ownership is read as `DROP OWNED` reads it, so every kind of object an ended grant's role
/// owns is found; the holding role may own tables and their sequences, and nothing else.
#[tokio::test]
async fn whatever_an_ended_grant_owns_is_found_and_the_holding_role_keeps_tables_only() {
    let s = setup().await;
    let leftovers = format!(
        "
        CREATE ROLE {ENDED_GRANT_ROLE} NOLOGIN;
        CREATE SCHEMA stash AUTHORIZATION {ENDED_GRANT_ROLE};
        CREATE FUNCTION public.helper() RETURNS int LANGUAGE sql AS 'SELECT 1';
        ALTER FUNCTION public.helper() OWNER TO {ENDED_GRANT_ROLE};
        CREATE TYPE public.mood AS ENUM ('fine');
        ALTER TYPE public.mood OWNER TO {ENDED_GRANT_ROLE};
        ALTER DEFAULT PRIVILEGES FOR ROLE {ENDED_GRANT_ROLE} GRANT SELECT ON TABLES TO app_writer;
        SELECT lo_create(4244);
        ALTER LARGE OBJECT 4244 OWNER TO {ENDED_GRANT_ROLE};
        CREATE ROLE airlock_holding NOLOGIN;
        CREATE TABLE public.kept_parts (id bigserial, at date) PARTITION BY RANGE (at);
        CREATE TABLE public.kept_2026 PARTITION OF public.kept_parts FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
        ALTER TABLE public.kept_parts OWNER TO airlock_holding;
        ALTER TABLE public.kept_2026 OWNER TO airlock_holding;
        CREATE FUNCTION public.held_helper() RETURNS int LANGUAGE sql AS 'SELECT 1';
        ALTER FUNCTION public.held_helper() OWNER TO airlock_holding;
        CREATE MATERIALIZED VIEW public.held_copy AS SELECT 1 AS x;
        ALTER MATERIALIZED VIEW public.held_copy OWNER TO airlock_holding;
        "
    );
    s.superuser().await.batch_execute(&leftovers).await.unwrap();
    let ended = |object: &'static str| ("owned_by_grant_role", ENDED_GRANT_ROLE, object);
    let held = |object: &'static str| ("owned_by_grant_role", "airlock_holding", object);
    check(
        &s.findings().await,
        &[
            ("superuser", "postgres", "can use every privilege"),
            ("ended_grant_role", ENDED_GRANT_ROLE, "its grant is not live"),
            ended("owns schema stash;"),
            ended("owns function public.helper();"),
            ended("owns type public.mood;"),
            ended("owns default acl for role airlock_0000000000000000000000000000dead on tables;"),
            ended("owns large object 4244;"),
            (
                "large_object",
                ENDED_GRANT_ROLE,
                "large object 4244, owned by `airlock_0000000000000000000000000000dead`",
            ),
            held("owns function public.held_helper(); the holding role may own kept tables only"),
            held("owns materialized view public.held_copy;"),
        ],
    );
}

/// A role that can execute a privileged function borrows its owner's power; one that is a member
/// of the owner already borrows nothing. The connector's own functions count: an ended grant's
/// functions become the connector's when its role is dropped.
#[tokio::test]
async fn security_definers_name_who_borrows_whose_power() {
    let s = setup().await;
    s.superuser()
        .await
        .batch_execute(
            "
            CREATE ROLE bob LOGIN;
            CREATE ROLE writers_lead LOGIN IN ROLE app_writer;
            CREATE FUNCTION public.as_connector(int, text) RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
            ALTER FUNCTION public.as_connector(int, text) OWNER TO airlock_connector;
            REVOKE EXECUTE ON FUNCTION public.as_connector(int, text) FROM PUBLIC;
            GRANT EXECUTE ON FUNCTION public.as_connector(int, text) TO bob, writers_lead;
            CREATE PROCEDURE public.as_writer() LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
            ALTER PROCEDURE public.as_writer() OWNER TO app_writer;
            REVOKE EXECUTE ON PROCEDURE public.as_writer() FROM PUBLIC;
            GRANT EXECUTE ON PROCEDURE public.as_writer() TO writers_lead;
            ",
        )
        .await
        .unwrap();
    check(
        &s.findings().await,
        &[
            ("superuser", "postgres", "can use every privilege"),
            ("member_of_mapped_role", "writers_lead", "can use `app_writer` without a grant"),
            (
                "security_definer",
                "airlock_connector",
                "function public.as_connector(integer, text) is SECURITY DEFINER: `bob`, `writers_lead` may run it as \
                 `airlock_connector` (the connector's login)",
            ),
        ],
    );
}

/// The connector must not be a superuser; when the catalog allows it, the risk is still shown.
#[tokio::test]
async fn a_superuser_connector_is_a_finding_even_when_allowed() {
    let mut s = setup().await;
    s.superuser().await.batch_execute("ALTER ROLE airlock_connector SUPERUSER").await.unwrap();
    let expect = [
        ("superuser", "postgres", "can use every privilege"),
        ("superuser", "airlock_connector", "the connector's own login is a superuser"),
    ];
    check(&s.findings().await, &expect);
    s.target.allow_superuser_connector = true;
    check(
        &s.findings().await,
        &[expect[0], (expect[1].0, expect[1].1, "`allow_superuser_connector` accepts the risk")],
    );
}

/// More privileges for everyone than PostgreSQL's defaults, one object kind at a time.
#[tokio::test]
async fn privileges_everyone_holds_beyond_the_defaults_are_found() {
    let s = setup().await;
    s.superuser()
        .await
        .batch_execute(
            "
            CREATE SCHEMA open_schema;
            GRANT USAGE ON SCHEMA open_schema TO PUBLIC;
            GRANT CREATE ON SCHEMA public TO PUBLIC;
            GRANT UPDATE (note) ON orders TO PUBLIC;
            GRANT CREATE ON DATABASE postgres TO PUBLIC;
            ALTER DEFAULT PRIVILEGES FOR ROLE app_writer GRANT INSERT ON TABLES TO PUBLIC;
            ALTER DEFAULT PRIVILEGES FOR ROLE app_writer REVOKE EXECUTE ON FUNCTIONS FROM app_writer;
            SELECT lo_create(4243);
            GRANT SELECT ON LARGE OBJECT 4243 TO PUBLIC;
            ALTER DATABASE postgres SET lo_compat_privileges = on;
            ",
        )
        .await
        .unwrap();
    check(
        &s.findings().await,
        &[
            ("superuser", "postgres", "can use every privilege"),
            ("large_object", "postgres", "large object 4243"),
            ("public_privilege", "PUBLIC", "everyone has UPDATE on table column public.orders.note"),
            ("public_privilege", "PUBLIC", "everyone has USAGE on schema open_schema"),
            ("public_privilege", "PUBLIC", "everyone has CREATE on schema public"),
            ("public_privilege", "PUBLIC", "everyone has CREATE on database postgres"),
            ("public_privilege", "PUBLIC", "everyone has INSERT on default acl for role app_writer on tables"),
            ("public_privilege", "PUBLIC", "everyone has SELECT on large object 4243"),
            ("public_privilege", "PUBLIC", "`lo_compat_privileges` is on"),
        ],
    );
}
