//! A policy change against live grants: grants the new policies would no longer allow must not
//! survive it. A real SQLite store, the quickstart's catalog and incident playbooks, policy
//! bundles written to a temporary directory, and a hand-moved clock.
//!
//! Bundle A is the quickstart's policies plus a permit for `contractors` to request read. The
//! changes: B forbids write requests and drops the `contractors` permit; A2 is A with a comment
//! added (a new version that allows the same); C adds to B a forbid that cannot be evaluated;
//! D is C on a catalog without the write role.

mod common;

use std::sync::Arc;

use airlock_broker::breakglass::BreakGlassInput;
use airlock_broker::broker::RequestInput;
use airlock_broker::bundle::PolicyBundle;
use airlock_broker::clock::{Clock, ManualClock};
use airlock_broker::reevaluate::{POLICY_CHANGE, PoliciesLoaded};
use airlock_broker::{Broker, BrokerError, Caller};
use airlock_core::audit::ChainRecord;
use airlock_core::ids::GrantId;
use airlock_core::incident::{NewIncident, Severity, Title};
use airlock_core::lifecycle::{Grant, GrantState, OpenError};
use airlock_core::values::{GrantDuration, Reason};
use airlock_store::{BROKER_CHAIN, Store};
use serde_json::{Value, json};
use tempfile::TempDir;
use time::OffsetDateTime;
use time::macros::datetime;

use crate::common::{bob, caller, carol, quickstart_settings, write_bundle};

const T0: OffsetDateTime = datetime!(2026-11-23 10:00 UTC);

const QUICKSTART_POLICIES: &str = include_str!("../../../examples/quickstart/policies/demo-db.cedar");
const QUICKSTART_CATALOG: &str = include_str!("../../../examples/quickstart/catalog.toml");

const CONTRACTORS: &str = r#"
@id("contractors-may-request-read")
permit (principal in Group::"contractors", action == Action::"request", resource == Resource::"demo-db")
when { context.role == "read" };
"#;

const NO_WRITE: &str = r#"
@id("no-write-requests")
forbid (principal, action == Action::"request", resource == Resource::"demo-db")
when { context.role == "write" };
"#;

/// Overflows for every duration above one second: an evaluation error, never a forbid.
const OVERFLOWING: &str = r#"
@id("overflowing-forbid")
forbid (principal, action == Action::"request", resource == Resource::"demo-db")
when { context.duration_seconds * 9223372036854775807 > 0 };
"#;

/// demo-db with its read role only.
const READ_ONLY_CATALOG: &str = r#"
[[resource]]
name = "demo-db"
kind = "postgres"
environment = "prod"
tags = ["demo"]

[resource.postgres]
database = "demo"

[resource.roles.read]
max_duration = "1h"
approvals = 1
database_roles = ["pg_read_all_data"]
"#;

struct App {
    broker: Broker,
    clock: Arc<ManualClock>,
    dir: TempDir,
}

impl App {
    /// A broker on a fresh store with bundle A, and the quickstart's people (plus `frank`, a
    /// contractor, `gina`, who has left `eng` since she asked, and `olga`, on call only).
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let store = Store::open(dir.path()).await.unwrap();
        let key = airlock_broker::secrets::load_or_create_key(dir.path()).unwrap();
        let a = write_bundle(
            dir.path(),
            "a",
            QUICKSTART_CATALOG,
            &[("demo-db", QUICKSTART_POLICIES), ("contractors", CONTRACTORS)],
        );
        let broker = Broker::new(store, a, clock.clone() as Arc<dyn Clock>, quickstart_settings(), key);
        for (name, groups) in [
            ("alice", &["eng"][..]),
            ("bob", &["sre"]),
            ("carol", &["sre"]),
            ("dana", &["eng", "oncall"]),
            ("erin", &["eng"]),
            ("frank", &["contractors"]),
            ("gina", &["sales"]),
            ("olga", &["oncall"]),
        ] {
            let groups: Vec<_> = groups.iter().map(|g| g.parse().unwrap()).collect();
            broker.add_user(&name.parse().unwrap(), &groups, false, "admin").await.unwrap();
        }
        Self { broker, clock, dir }
    }

    /// Loads a bundle written under `name` in the test's directory.
    fn bundle(&self, name: &str, catalog: &str, files: &[(&str, &str)]) -> Arc<PolicyBundle> {
        Arc::new(write_bundle(self.dir.path(), name, catalog, files))
    }

    fn b(&self) -> Arc<PolicyBundle> {
        self.bundle("b", QUICKSTART_CATALOG, &[("demo-db", QUICKSTART_POLICIES), ("no-write", NO_WRITE)])
    }

    async fn load(&self, bundle: Arc<PolicyBundle>) -> PoliciesLoaded {
        self.broker.load_policies(bundle).await.expect("the policies are put in force")
    }

    async fn grant(&self, id: GrantId) -> Grant {
        self.broker.store().grant(&id.to_string()).await.unwrap().expect("the grant is stored")
    }

    async fn audit(&self) -> Vec<ChainRecord> {
        self.broker.store().audit_chain(BROKER_CHAIN).await.unwrap()
    }

    /// `who` asks for demo-db `role`; auto-approved, or approved by bob (and carol for write).
    async fn granted(&self, who: &Caller, role: &str, duration: &str) -> Grant {
        let (request, grant) = self.broker.create_request(who, ask(role, duration, None)).await.unwrap();
        if let Some(grant) = grant {
            return grant;
        }
        let id = request.id.to_string();
        let (_, grant) = self.broker.approve(&bob(), &id, None).await.unwrap();
        match grant {
            Some(grant) => grant,
            None => self.broker.approve(&carol(), &id, None).await.unwrap().1.expect("two approvals start the grant"),
        }
    }
}

fn ask(role: &str, duration: &str, incident: Option<&str>) -> RequestInput {
    RequestInput {
        resource: "demo-db".parse().unwrap(),
        role: role.parse().unwrap(),
        duration: GrantDuration::parse(duration).unwrap(),
        reason: Reason::parse("OPS-7 look at the orders").unwrap(),
        incident: incident.map(|i| i.parse().unwrap()),
    }
}

fn details(record: &ChainRecord) -> Value {
    serde_json::from_str(&record.details).unwrap()
}

/// The ids, sorted, for comparing sets.
fn ids(grants: impl IntoIterator<Item = GrantId>) -> Vec<String> {
    let mut ids: Vec<String> = grants.into_iter().map(|id| id.to_string()).collect();
    ids.sort();
    ids
}

#[track_caller]
fn assert_revoked_for_policy_change(grant: &Grant) {
    assert_eq!(grant.state, GrantState::Revoked, "{grant:?}");
    let closure = grant.closure.as_ref().expect("a revoked grant says who and why");
    assert_eq!((closure.by.as_str(), closure.reason.as_deref()), ("system", Some(POLICY_CHANGE)));
}

#[tokio::test]
async fn a_grant_the_new_policies_no_longer_allow_does_not_survive_the_change() {
    let app = App::start().await;
    let a_version = app.broker.policies().version.clone();
    let first = app.load(app.broker.policies()).await;
    assert_eq!((first.changed, first.previous.as_deref(), first.revoked.len()), (true, None, 0));

    let alice = app.granted(&caller("alice", &["eng"]), "read", "30m").await;
    let dana = app.granted(&caller("dana", &["eng", "oncall"]), "read", "30m").await;
    let erin = app.granted(&caller("erin", &["eng"]), "write", "20m").await;
    let frank = app.granted(&caller("frank", &["contractors"]), "read", "30m").await;
    let emergency = BreakGlassInput {
        resource: "demo-db".parse().unwrap(),
        role: "write".parse().unwrap(),
        duration: None,
        reason: Reason::parse("orders are stuck").unwrap(),
        incident: None,
    };
    let broken = app.broker.break_glass(&caller("dana", &["eng", "oncall"]), emergency).await.unwrap().grant;

    app.clock.advance(time::Duration::minutes(5));
    let mut changes = app.broker.watch_grants();
    changes.mark_unchanged();
    let before = app.audit().await.len();
    let b = app.b();
    let loaded = app.load(b.clone()).await;

    // (a) write is forbidden now; (b) contractors are no longer in any permit. Reads by `eng` and
    // a break-glass grant (asked `break_glass`, which B leaves alone) stay.
    assert!(loaded.changed);
    assert_eq!(loaded.previous.as_deref(), Some(a_version.as_str()));
    assert_eq!(ids(loaded.revoked.clone()), ids([erin.id, frank.id]));
    for revoked in [erin.id, frank.id] {
        assert_revoked_for_policy_change(&app.grant(revoked).await);
    }
    for kept in [alice.id, dana.id, broken.id] {
        assert_eq!(app.grant(kept).await.state, GrantState::Active);
    }
    assert!(changes.has_changed().unwrap(), "gateways are told at once");
    assert_eq!(app.broker.policies().version, b.version, "B is in force");

    // One commit: `policy.loaded` naming both versions and the grants, then each revocation
    // naming the version and why.
    let records = app.audit().await;
    let new: Vec<&ChainRecord> = records[before..].iter().collect();
    let kinds: Vec<&str> = new.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["policy.loaded", "grant.revoked", "grant.revoked"]);
    let policy_loaded = details(new[0]);
    assert_eq!(new[0].actor, "system");
    assert_eq!(policy_loaded["version"], b.version);
    assert_eq!(policy_loaded["previous"], a_version);
    assert_eq!(policy_loaded["grants_checked"], 5);
    let mut listed: Vec<String> =
        policy_loaded["grants_revoked"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect();
    listed.sort();
    assert_eq!(listed, ids([erin.id, frank.id]));
    for record in &new[1..] {
        let revocation = details(record);
        assert_eq!(record.actor, "system");
        assert_eq!(revocation["policy_version"], b.version);
        assert_eq!(revocation["grant"]["closure"]["reason"], POLICY_CHANGE);
        let refusal = &revocation["refusal"];
        assert_eq!((&refusal["refused"], &refusal["action"]), (&json!("denied"), &json!("request")));
        if revocation["grant"]["id"] == erin.id.to_string() {
            assert_eq!(refusal["policies"], json!(["no-write-requests"]), "the forbid that decided");
        } else {
            assert_eq!(refusal["policies"], json!([]), "nothing permits a contractor any more");
        }
    }

    // New requests are decided by B.
    let refused = app.broker.create_request(&caller("erin", &["eng"]), ask("write", "20m", None)).await;
    assert!(matches!(refused, Err(BrokerError::Open(OpenError::Refused { .. }))), "{refused:?}");
}

#[tokio::test]
async fn the_same_version_again_changes_nothing_and_records_nothing() {
    let app = App::start().await;
    app.load(app.broker.policies()).await;
    let erin = app.granted(&caller("erin", &["eng"]), "write", "20m").await;
    app.load(app.b()).await;
    assert_revoked_for_policy_change(&app.grant(erin.id).await);
    let alice = app.granted(&caller("alice", &["eng"]), "read", "30m").await;
    let records = app.audit().await.len();

    // Read again from disk (a SIGHUP without a change), and as a restart would: same version.
    let again = app.load(app.b()).await;
    assert_eq!((again.changed, again.revoked.len()), (false, 0));
    assert_eq!(again.previous.as_deref(), Some(again.version.as_str()));
    let store = Store::open(app.dir.path()).await.unwrap();
    let key = airlock_broker::secrets::load_or_create_key(app.dir.path()).unwrap();
    let b = write_bundle(
        app.dir.path(),
        "b",
        QUICKSTART_CATALOG,
        &[("demo-db", QUICKSTART_POLICIES), ("no-write", NO_WRITE)],
    );
    let restarted = Broker::new(store, b, app.clock.clone() as Arc<dyn Clock>, quickstart_settings(), key);
    assert!(!restarted.load_policies(restarted.policies()).await.unwrap().changed);
    assert_eq!(app.audit().await.len(), records, "nothing recorded");
    assert_eq!(app.grant(alice.id).await.state, GrantState::Active);
}

#[tokio::test]
async fn holders_are_asked_with_their_groups_of_now_and_playbooks_still_stand_in() {
    let app = App::start().await;
    app.load(app.broker.policies()).await;
    // Gina asked as a member of `eng`; the users table says she has left it since.
    let gina = app.granted(&caller("gina", &["eng"]), "read", "30m").await;
    // Olga is on call only: no policy lets her request write, the open incident's playbook does,
    // for up to its hour (above the role's 30 minutes).
    let incident = NewIncident {
        id: "INC-9".parse().unwrap(),
        severity: Severity::new(1).unwrap(),
        title: Title::parse("orders are not being written").unwrap(),
        responders: Vec::new(),
    };
    app.broker.open_incident(&bob(), incident).await.unwrap();
    let olga = caller("olga", &["oncall"]);
    let (request, armed) = app.broker.create_request(&olga, ask("write", "45m", Some("INC-9"))).await.unwrap();
    assert_eq!(request.decision.policies, ["playbook:demo-db-outage"]);
    let armed = armed.expect("granted at once by the playbook");

    // A2 allows what A allowed: only the holder who left the group loses her grant.
    let mut commented = QUICKSTART_POLICIES.to_owned();
    commented.push_str("\n// Reviewed by the platform team.\n");
    let a2 = app.bundle("a2", QUICKSTART_CATALOG, &[("demo-db", &commented), ("contractors", CONTRACTORS)]);
    let loaded = app.load(a2).await;
    assert_eq!(ids(loaded.revoked), ids([gina.id]));
    assert_revoked_for_policy_change(&app.grant(gina.id).await);
    assert_eq!(app.grant(armed.id).await.state, GrantState::Active, "the playbook still arms olga");

    // B forbids write requests: a forbid is never overridden by a playbook.
    let loaded = app.load(app.b()).await;
    assert_eq!(ids(loaded.revoked), ids([armed.id]));
}

#[tokio::test]
async fn a_policy_that_cannot_be_evaluated_revokes_what_it_applies_to() {
    let app = App::start().await;
    app.load(app.broker.policies()).await;
    let alice = app.granted(&caller("alice", &["eng"]), "read", "30m").await;
    let emergency = BreakGlassInput {
        resource: "demo-db".parse().unwrap(),
        role: "write".parse().unwrap(),
        duration: None,
        reason: Reason::parse("orders are stuck").unwrap(),
        incident: None,
    };
    let broken = app.broker.break_glass(&caller("dana", &["eng", "oncall"]), emergency).await.unwrap().grant;

    // Cedar skips a forbid it cannot evaluate and the permit alone would allow; a policy change
    // does not keep a grant it cannot fully check.
    let c = app.bundle(
        "c",
        QUICKSTART_CATALOG,
        &[("demo-db", QUICKSTART_POLICIES), ("no-write", NO_WRITE), ("overflowing", OVERFLOWING)],
    );
    let loaded = app.load(c.clone()).await;
    assert_eq!(ids(loaded.revoked), ids([alice.id]));
    assert_revoked_for_policy_change(&app.grant(alice.id).await);
    let revocation = app.audit().await.pop().unwrap();
    let refusal = &details(&revocation)["refusal"];
    assert_eq!(refusal["refused"], "denied");
    assert_eq!(refusal["errors"].as_array().map(Vec::len), Some(1), "{refusal}");
    assert_eq!(app.grant(broken.id).await.state, GrantState::Active, "break-glass is not asked `request`");

    // D: the same policies, and demo-db has no write role any more.
    let d = app.bundle(
        "d",
        READ_ONLY_CATALOG,
        &[("demo-db", QUICKSTART_POLICIES), ("no-write", NO_WRITE), ("overflowing", OVERFLOWING)],
    );
    let loaded = app.load(d).await;
    assert_eq!(ids(loaded.revoked), ids([broken.id]));
    let revocation = app.audit().await.pop().unwrap();
    assert_eq!(details(&revocation)["refusal"], json!({ "refused": "left_catalog" }));
}

/// Requests decided with A while B is being put in force: each one either commits before the
/// re-evaluation reads the grants (and is revoked by it) or is decided again with B (and
/// refused). None ends up a live grant that B forbids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_racing_a_policy_change_are_asked_again() {
    let app = App::start().await;
    app.load(app.broker.policies()).await;
    let no_read = r#"
        @id("no-read-requests")
        forbid (principal, action == Action::"request", resource == Resource::"demo-db")
        when { context.role == "read" };
    "#;
    let b = app.bundle("no-read", QUICKSTART_CATALOG, &[("demo-db", QUICKSTART_POLICIES), ("no-read", no_read)]);
    let dana = caller("dana", &["eng", "oncall"]);
    let requests: Vec<_> = (0..40)
        .map(|_| {
            let (broker, dana) = (app.broker.clone(), dana.clone());
            tokio::spawn(async move { broker.create_request(&dana, ask("read", "30m", None)).await })
        })
        .collect();
    tokio::task::yield_now().await;
    let loaded = app.load(b.clone()).await;
    let mut outcomes = (0, 0);
    for request in requests {
        match request.await.unwrap() {
            Ok((_, Some(_))) => outcomes.0 += 1,
            Err(BrokerError::Open(OpenError::Refused { decision, .. })) => {
                // Refused by A cannot happen: dana may read under A; so refused by B.
                assert_eq!(decision.policy_version, b.version);
                outcomes.1 += 1;
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(outcomes.0 + outcomes.1, 40);
    assert_eq!(loaded.revoked.len(), outcomes.0, "every grant made with A was revoked by B");
    let live = app.broker.live_grants().await.unwrap();
    assert!(live.is_empty(), "grants that survived the change: {live:?}");
}
