//! The broker's use cases end to end: a real SQLite store in a temporary directory, the
//! quickstart catalog and policies, and a [`ManualClock`] so that time only moves when a test
//! moves it. Races run on a multi-threaded runtime against the same store; background work (the
//! scheduler) is awaited by polling with an overall timeout, never by asserting on speed.
//!
//! The quickstart: group `eng` may request `demo-db` read (≤ 1h, 1 approval) or write (≤ 30m,
//! 2 approvals); `sre` reviews; `oncall` skips review for read and may break the glass. `sre`
//! are the auditors.

mod common;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use airlock_broker::breakglass::BreakGlassInput;
use airlock_broker::broker::RequestInput;
use airlock_broker::clock::{Clock, ManualClock};
use airlock_broker::{Broker, BrokerError, Caller, ErrorKind};
use airlock_core::audit::export::Report;
use airlock_core::audit::{ChainHead, ChainRecord};
use airlock_core::breakglass::{ReviewState, Verdict};
use airlock_core::lifecycle::{AccessRequest, Grant, GrantState, NotActive, OpenError, RequestState, ReviewError};
use airlock_core::values::{GrantDuration, Reason};
use airlock_store::{BROKER_CHAIN, GrantFilter, RequestFilter, Store};
use tempfile::TempDir;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use tokio::sync::watch;

use crate::common::{alice, bob, caller, carol, dana, erin, eventually, mallory, quickstart_broker};

/// A Monday morning: nothing in the quickstart policies depends on it, but it is fixed.
const T0: OffsetDateTime = datetime!(2026-11-23 10:00 UTC);

/// `Err` matching a pattern, or a panic that shows what came back instead.
macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {
        match $result {
            Err($pattern) => {}
            other => panic!("expected Err({}), got {other:?}", stringify!($pattern)),
        }
    };
}

/// A broker on a fresh store, and the clock that drives it.
struct TestBroker {
    broker: Broker,
    clock: Arc<ManualClock>,
    dir: TempDir,
}

async fn broker_on(dir: &std::path::Path, clock: Arc<ManualClock>) -> Broker {
    let store = Store::open(dir).await.expect("the store opens");
    quickstart_broker(store, dir, clock)
}

async fn spawn_broker() -> TestBroker {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = Arc::new(ManualClock::new(T0));
    let broker = broker_on(dir.path(), clock.clone()).await;
    TestBroker { broker, clock, dir }
}

impl TestBroker {
    /// A second broker on the same data directory and clock, as after a restart.
    async fn restart(&self) -> Broker {
        broker_on(self.dir.path(), self.clock.clone()).await
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("airlock.db")
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    async fn ask(
        &self,
        caller: &Caller,
        role: &str,
        duration: &str,
    ) -> Result<(AccessRequest, Option<Grant>), BrokerError> {
        self.broker.create_request(caller, input("demo-db", role, duration)).await
    }

    /// A request that must come back pending.
    async fn pending(&self, caller: &Caller, role: &str, duration: &str) -> AccessRequest {
        let (request, grant) = self.ask(caller, role, duration).await.expect("the request opens");
        assert_eq!((request.state, grant), (RequestState::Pending, None));
        request
    }

    async fn stored_request(&self, id: impl ToString) -> AccessRequest {
        self.broker.store().request(&id.to_string()).await.unwrap().expect("the request is stored")
    }

    async fn stored_grant(&self, id: impl ToString) -> Grant {
        self.broker.store().grant(&id.to_string()).await.unwrap().expect("the grant is stored")
    }

    async fn all_requests(&self) -> Vec<AccessRequest> {
        let filter = RequestFilter { pending_only: false, requester: None, limit: 1000 };
        self.broker.store().requests(&filter, None).await.unwrap()
    }

    async fn all_grants(&self) -> Vec<Grant> {
        let filter = GrantFilter { active_only: false, holder: None, limit: 1000 };
        self.broker.store().grants(&filter, None).await.unwrap()
    }

    async fn audit(&self) -> Vec<ChainRecord> {
        self.broker.store().audit_chain(BROKER_CHAIN).await.unwrap()
    }

    async fn audit_kinds(&self) -> Vec<String> {
        self.audit().await.into_iter().map(|r| r.kind).collect()
    }
}

fn input(resource: &str, role: &str, duration: &str) -> RequestInput {
    RequestInput {
        resource: resource.parse().unwrap(),
        role: role.parse().unwrap(),
        duration: GrantDuration::parse(duration).unwrap(),
        reason: Reason::parse("INC-42").unwrap(),
        incident: None,
    }
}

fn reason(text: &str) -> Reason {
    Reason::parse(text).unwrap()
}

fn minutes(n: i64) -> Duration {
    Duration::minutes(n)
}

#[track_caller]
fn intact(report: Report) -> ChainHead {
    assert!(report.intact(), "the audit chain is broken: {:?}", report.failures);
    report.head.unwrap_or_else(ChainHead::genesis)
}

#[track_caller]
fn granted(outcome: Result<(AccessRequest, Option<Grant>), BrokerError>) -> (AccessRequest, Grant) {
    match outcome {
        Ok((request, Some(grant))) => {
            assert_eq!(request.state, RequestState::Approved);
            assert_eq!(grant.request_id, request.id);
            (request, grant)
        }
        other => panic!("expected an approved request with its grant, got {other:?}"),
    }
}

/// The scheduler in the background, and the switch that stops it.
struct Scheduler {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start_scheduler(broker: &Broker) -> Scheduler {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(airlock_broker::scheduler::run(broker.clone(), stopped));
    Scheduler { stop, task }
}

impl Scheduler {
    async fn shut_down(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(StdDuration::from_secs(10), self.task)
            .await
            .expect("the scheduler stops when told to")
            .expect("the scheduler does not panic");
    }
}

#[tokio::test]
async fn oncall_read_is_approved_at_once() {
    let app = spawn_broker().await;
    let (request, grant) = granted(app.ask(&dana(), "read", "30m").await);

    assert!(request.auto_approved);
    assert!(request.approvals.is_empty());
    assert_eq!(request.decision.policies, ["oncall-auto-approves-read"]);
    assert_eq!(grant.holder.as_str(), "dana");
    assert_eq!((grant.starts_at, grant.ends_at, grant.state), (T0, T0 + minutes(30), GrantState::Active));
    assert_eq!(app.stored_grant(grant.id).await, grant);
    assert_eq!(app.stored_request(request.id).await, request);
    assert_eq!(app.audit_kinds().await, ["request.created", "request.approved", "grant.started"]);
    assert!(app.audit().await[1..].iter().all(|r| r.actor == "system"));
}

#[tokio::test]
async fn requests_outside_the_catalog_or_the_policies_are_refused() {
    let app = spawn_broker().await;

    let error = app.ask(&alice(), "write", "31m").await.unwrap_err();
    assert!(matches!(error, BrokerError::Open(OpenError::TooLong { .. })), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::BadInput);
    assert!(error.to_string().contains("maximum of 30m"), "{error}");
    let error = app.ask(&dana(), "read", "61m").await.unwrap_err();
    assert!(error.to_string().contains("maximum of 1h"), "{error}");

    let error = app.broker.create_request(&alice(), input("prod-db", "read", "10m")).await.unwrap_err();
    assert!(matches!(&error, BrokerError::UnknownResource(r) if r.as_str() == "prod-db"), "{error:?}");
    let error = app.broker.create_request(&alice(), input("demo-db", "admin", "10m")).await.unwrap_err();
    assert!(matches!(&error, BrokerError::UnknownRole { role, .. } if role.as_str() == "admin"), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::BadInput);
    assert!(app.audit().await.is_empty(), "bad input is not a refusal worth recording");

    let error = app.ask(&mallory(), "read", "10m").await.unwrap_err();
    assert!(matches!(error, BrokerError::Open(OpenError::Refused { .. })), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::Forbidden);
    let tail = app.broker.store().audit_tail(BROKER_CHAIN, 10).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!((tail[0].kind.as_str(), tail[0].actor.as_str()), ("request.refused", "mallory"));
    assert!(tail[0].details.contains("10.0.0.7"), "the refusal records where it came from: {}", tail[0].details);

    assert!(app.all_requests().await.is_empty());
    assert!(app.all_grants().await.is_empty());
    intact(app.broker.verify_chain().await.unwrap());
}

#[tokio::test]
async fn nobody_reviews_their_own_request() {
    let app = spawn_broker().await;
    let alice = caller("alice", &["eng", "sre"]);
    let request = app.pending(&alice, "write", "15m").await;

    let error = app.broker.approve(&alice, &request.id.to_string(), None).await.unwrap_err();
    assert!(matches!(error, BrokerError::Review(ReviewError::OwnRequest)), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::Forbidden);
    assert_err!(
        app.broker.deny(&alice, &request.id.to_string(), reason("changed my mind")).await,
        BrokerError::Review(ReviewError::OwnRequest)
    );

    let stored = app.stored_request(request.id).await;
    assert_eq!(stored.state, RequestState::Pending);
    assert!(stored.approvals.is_empty());
    assert!(app.all_grants().await.is_empty());
    assert_eq!(app.audit_kinds().await, ["request.created"]);
}

#[tokio::test]
async fn write_needs_two_distinct_approvals() {
    let app = spawn_broker().await;
    let request = app.pending(&alice(), "write", "20m").await;
    let id = request.id.to_string();

    app.clock.advance(minutes(5));
    let (after_bob, grant) = app.broker.approve(&bob(), &id, Some("looks fine".into())).await.unwrap();
    assert_eq!((after_bob.state, after_bob.approvals.len(), grant), (RequestState::Pending, 1, None));

    let error = app.broker.approve(&bob(), &id, None).await.unwrap_err();
    assert!(matches!(&error, BrokerError::Review(ReviewError::AlreadyApproved(who)) if who.as_str() == "bob"));
    assert_eq!(error.kind(), ErrorKind::Conflict);
    assert_eq!(app.stored_request(&id).await.approvals.len(), 1);

    app.clock.advance(minutes(5));
    let (approved, grant) = granted(app.broker.approve(&carol(), &id, None).await);
    let approvers: Vec<&str> = approved.approvals.iter().map(|a| a.approver.as_str()).collect();
    assert_eq!(approvers, ["bob", "carol"]);
    assert_eq!((grant.starts_at, grant.ends_at), (T0 + minutes(10), T0 + minutes(30)));
    assert_eq!(app.broker.store().grant_of_request(&id).await.unwrap(), Some(grant));

    assert_err!(
        app.broker.approve(&caller("dave", &["sre"]), &id, None).await,
        BrokerError::Review(ReviewError::NotPending(RequestState::Approved))
    );
    assert_eq!(app.all_grants().await.len(), 1);
    assert_eq!(
        app.audit_kinds().await,
        ["request.created", "request.approval_added", "request.approval_added", "request.approved", "grant.started"]
    );
}

#[tokio::test]
async fn one_denial_ends_the_request() {
    let app = spawn_broker().await;
    let request = app.pending(&alice(), "write", "20m").await;
    let id = request.id.to_string();
    app.broker.approve(&bob(), &id, None).await.unwrap();

    let denied = app.broker.deny(&carol(), &id, reason("use the replica")).await.unwrap();
    assert_eq!(denied.state, RequestState::Denied);
    let closure = denied.closure.expect("a denied request says who closed it");
    assert_eq!((closure.by.as_str(), closure.reason.as_deref()), ("carol", Some("use the replica")));

    let error = app.broker.approve(&caller("dave", &["sre"]), &id, None).await.unwrap_err();
    assert!(matches!(error, BrokerError::Review(ReviewError::NotPending(RequestState::Denied))), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::Conflict);
    assert_err!(
        app.broker.deny(&bob(), &id, reason("again")).await,
        BrokerError::Review(ReviewError::NotPending(RequestState::Denied))
    );
    assert_eq!(app.stored_request(&id).await.state, RequestState::Denied);
    assert!(app.all_grants().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_approvals_make_exactly_one_grant() {
    let app = spawn_broker().await;
    let request = app.pending(&alice(), "read", "45m").await;
    let id = request.id.to_string();

    let approvals: Vec<_> = (0..10)
        .map(|n| {
            let (broker, id) = (app.broker.clone(), id.clone());
            tokio::spawn(async move { broker.approve(&caller(&format!("sre-{n}"), &["sre"]), &id, None).await })
        })
        .collect();
    let mut grants = Vec::new();
    let mut refused = 0;
    for approval in approvals {
        match approval.await.unwrap() {
            Ok((approved, Some(grant))) => {
                assert_eq!(approved.approvals.len(), 1);
                grants.push(grant);
            }
            Ok((_, None)) => panic!("a one-approval request stayed pending after an approval"),
            Err(BrokerError::Review(ReviewError::NotPending(RequestState::Approved))) => refused += 1,
            Err(error) => panic!("unexpected error: {error:?}"),
        }
    }
    assert_eq!((grants.len(), refused), (1, 9));

    let stored: Vec<Grant> = app.all_grants().await.into_iter().filter(|g| g.request_id == request.id).collect();
    assert_eq!(stored, grants);
    let stored_request = app.stored_request(&id).await;
    assert_eq!((stored_request.state, stored_request.approvals.len()), (RequestState::Approved, 1));
    let kinds = app.audit_kinds().await;
    assert_eq!(kinds.iter().filter(|k| *k == "grant.started").count(), 1);
    assert_eq!(kinds.iter().filter(|k| *k == "request.approval_added").count(), 1);
    assert_eq!(intact(app.broker.verify_chain().await.unwrap()).seq, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_revokes_end_a_grant_once() {
    let app = spawn_broker().await;
    let (_, grant) = granted(app.ask(&dana(), "read", "30m").await);
    app.clock.advance(minutes(3));

    let revokes: Vec<_> = (0..8)
        .map(|n| {
            let (broker, id) = (app.broker.clone(), grant.id.to_string());
            tokio::spawn(async move { broker.revoke(&bob(), &id, reason(&format!("attempt {n}"))).await })
        })
        .collect();
    let mut revoked = Vec::new();
    let mut not_active = 0;
    for revoke in revokes {
        match revoke.await.unwrap() {
            Ok(grant) => revoked.push(grant),
            Err(BrokerError::NotActive(NotActive(GrantState::Revoked))) => not_active += 1,
            Err(error) => panic!("unexpected error: {error:?}"),
        }
    }
    assert_eq!((revoked.len(), not_active), (1, 7));

    let stored = app.stored_grant(grant.id).await;
    assert_eq!(stored, revoked[0]);
    assert_eq!(stored.state, GrantState::Revoked);
    let closure = stored.closure.expect("a revoked grant says who ended it");
    assert_eq!((closure.by.as_str(), closure.at), ("bob", T0 + minutes(3)));
    assert_eq!(stored.ends_at, grant.ends_at, "revoking does not rewrite the window");
    let kinds = app.audit_kinds().await;
    assert_eq!(kinds.iter().filter(|k| *k == "grant.revoked").count(), 1);
    intact(app.broker.verify_chain().await.unwrap());
}

#[tokio::test]
async fn pending_requests_expire_unreviewed() {
    let app = spawn_broker().await;
    let first = app.pending(&alice(), "read", "30m").await;
    assert_eq!(first.expires_at, T0 + Duration::HOUR);

    app.clock.advance(minutes(59));
    assert_eq!(app.broker.sweep().await.unwrap().requests_expired, 0);
    assert_eq!(app.stored_request(first.id).await.state, RequestState::Pending);

    app.clock.advance(minutes(1));
    assert_eq!(app.broker.sweep().await.unwrap().requests_expired, 1);
    let expired = app.stored_request(first.id).await;
    assert_eq!(expired.state, RequestState::Expired);
    let closure = expired.closure.expect("an expired request is closed");
    assert_eq!((closure.by.as_str(), closure.at), ("system", T0 + Duration::HOUR));
    assert_eq!(app.broker.sweep().await.unwrap().requests_expired, 0, "expiry happens once");

    // Overdue but not yet swept: a late approval expires it instead of approving it.
    let second = app.pending(&alice(), "read", "30m").await;
    app.clock.advance(Duration::HOUR);
    // Someone who may not see the request learns nothing about it, and changes nothing.
    assert_err!(app.broker.approve(&mallory(), &second.id.to_string(), None).await, BrokerError::RequestNotFound(_));
    assert_err!(app.broker.deny(&erin(), &second.id.to_string(), reason("no")).await, BrokerError::RequestNotFound(_));
    assert_eq!(app.stored_request(second.id).await.state, RequestState::Pending);
    let error = app.broker.approve(&bob(), &second.id.to_string(), None).await.unwrap_err();
    assert!(matches!(error, BrokerError::Review(ReviewError::Expired)), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::Conflict);
    assert_eq!(app.stored_request(second.id).await.state, RequestState::Expired);
    assert!(app.all_grants().await.is_empty());
    assert_eq!(app.broker.sweep().await.unwrap().requests_expired, 0);

    let kinds = app.audit_kinds().await;
    assert_eq!(kinds.iter().filter(|k| *k == "request.expired").count(), 2);
    intact(app.broker.verify_chain().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_ends_a_grant_at_its_end() {
    let app = spawn_broker().await;
    let scheduler = start_scheduler(&app.broker);
    let (_, grant) = granted(app.ask(&dana(), "read", "10m").await);
    assert_eq!(grant.ends_at, T0 + minutes(10));

    app.clock.advance(minutes(10));
    eventually("the scheduler expires the grant", async || {
        app.stored_grant(grant.id).await.state == GrantState::Expired
    })
    .await;

    let expired = app.stored_grant(grant.id).await;
    let closure = expired.closure.expect("an expired grant is closed");
    assert_eq!((closure.by.as_str(), closure.at), ("system", expired.ends_at));
    assert_eq!(app.audit_kinds().await.last().map(String::as_str), Some("grant.expired"));
    scheduler.shut_down().await;
    intact(app.broker.verify_chain().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_first_pass_ends_what_fell_due() {
    let app = spawn_broker().await;
    let (_, grant) = granted(app.ask(&dana(), "read", "10m").await);
    let request = app.pending(&alice(), "write", "10m").await;

    // The broker is down (no scheduler) while both fall due.
    app.clock.advance(Duration::HOUR + minutes(30));
    let restarted = app.restart().await;
    let scheduler = start_scheduler(&restarted);
    // The clock stands still from here on, so only the pass the scheduler makes as it starts
    // can end them: after it, the scheduler waits for a later time that never comes.
    eventually("the first pass expires the overdue grant and request", async || {
        app.stored_grant(grant.id).await.state == GrantState::Expired
            && app.stored_request(request.id).await.state == RequestState::Expired
    })
    .await;

    let closure = app.stored_grant(grant.id).await.closure.expect("an expired grant is closed");
    assert_eq!((closure.by.as_str(), closure.at), ("system", app.now()));
    assert_eq!(app.stored_grant(grant.id).await.ends_at, T0 + minutes(10));
    scheduler.shut_down().await;
    intact(restarted.verify_chain().await.unwrap());
}

#[tokio::test]
async fn only_holders_reviewers_and_auditors_revoke_and_nothing_extends() {
    let app = spawn_broker().await;
    let (request, grant) = granted(app.ask(&dana(), "read", "30m").await);
    let id = grant.id.to_string();

    let error = app.broker.revoke(&erin(), &id, reason("not mine")).await.unwrap_err();
    assert!(matches!(error, BrokerError::GrantNotFound(_)), "a bystander cannot revoke: {error:?}");
    assert_err!(app.broker.revoke(&mallory(), &id, reason("why not")).await, BrokerError::GrantNotFound(_));
    assert_eq!(app.stored_grant(&id).await.state, GrantState::Active);

    // Nothing a caller does moves the end of a grant: not another approval, not asking again.
    app.clock.advance(minutes(10));
    assert_err!(
        app.broker.approve(&bob(), &request.id.to_string(), None).await,
        BrokerError::Review(ReviewError::NotPending(RequestState::Approved))
    );
    let (_, second) = granted(app.ask(&dana(), "read", "30m").await);
    assert_ne!(second.id, grant.id);
    assert_eq!(second.ends_at, T0 + minutes(40));
    assert_eq!(app.stored_grant(&id).await.ends_at, T0 + minutes(30));

    let revoked = app.broker.revoke(&dana(), &id, reason("done early")).await.unwrap();
    assert_eq!(revoked.state, GrantState::Revoked);
    assert_eq!(revoked.ends_at, grant.ends_at);
    let error = app.broker.revoke(&dana(), &id, reason("again")).await.unwrap_err();
    assert!(matches!(error, BrokerError::NotActive(NotActive(GrantState::Revoked))), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::Conflict);
    assert_err!(
        app.broker.revoke(&bob(), &id, reason("again")).await,
        BrokerError::NotActive(NotActive(GrantState::Revoked))
    );

    assert_eq!(app.stored_grant(&id).await.ends_at, grant.ends_at);
    assert_eq!(app.stored_grant(second.id).await.state, GrantState::Active, "revoking one grant leaves the other");
    assert_err!(
        app.broker.revoke(&dana(), "0190b6a4-0000-7000-8000-000000000000", reason("no such grant")).await,
        BrokerError::GrantNotFound(_)
    );
}

#[tokio::test]
async fn disabling_a_user_ends_their_access_at_once() {
    let app = spawn_broker().await;
    let localhost = IpAddr::from([127, 0, 0, 1]);
    let alice_token =
        app.broker.add_user(&"alice".parse().unwrap(), &["eng".parse().unwrap()], false, "admin").await.unwrap();
    let bob_token =
        app.broker.add_user(&"bob".parse().unwrap(), &["sre".parse().unwrap()], false, "admin").await.unwrap();
    assert_ne!(alice_token, bob_token);
    assert_err!(app.broker.add_user(&"alice".parse().unwrap(), &[], false, "admin").await, BrokerError::UserExists(_));

    let (as_alice, _) = app.broker.authenticate(&alice_token, localhost, None).await.unwrap();
    assert_eq!(as_alice.principal, alice().principal);
    let (as_bob, _) = app.broker.authenticate(&bob_token, localhost, None).await.unwrap();
    assert_eq!(as_bob.principal, bob().principal);
    assert_err!(app.broker.authenticate("airlock_not-a-token", localhost, None).await, BrokerError::Unauthenticated);

    let pending = app.pending(&as_alice, "write", "20m").await;
    let read = app.pending(&as_alice, "read", "45m").await;
    let (_, grant) = granted(app.broker.approve(&as_bob, &read.id.to_string(), None).await);

    app.clock.advance(minutes(5));
    let done = app.broker.disable_user(&"alice".parse().unwrap(), "admin").await.unwrap();
    assert_eq!((done.requests_cancelled, done.grants_revoked, done.tokens_ended), (1, 1, 1));

    let cancelled = app.stored_request(pending.id).await;
    assert_eq!(cancelled.state, RequestState::Cancelled);
    assert_eq!(cancelled.closure.map(|c| (c.by, c.reason)), Some(("admin".into(), Some("user disabled".into()))));
    let revoked = app.stored_grant(grant.id).await;
    assert_eq!(revoked.state, GrantState::Revoked);
    assert_eq!(revoked.closure.map(|c| c.at), Some(T0 + minutes(5)));
    assert_eq!(revoked.ends_at, grant.ends_at);

    let error = app.broker.authenticate(&alice_token, localhost, None).await.unwrap_err();
    assert!(matches!(error, BrokerError::Unauthenticated), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::Unauthenticated);
    app.broker.authenticate(&bob_token, localhost, None).await.expect("other users are untouched");

    // A caller authenticated just before the disable (a call in flight) gets nothing after it.
    assert_err!(app.ask(&as_alice, "read", "10m").await, BrokerError::Unauthenticated);
    assert!(app.all_requests().await.iter().all(|r| r.state != RequestState::Pending));
    let dana_write = app.pending(&dana(), "write", "10m").await;
    app.broker.disable_user(&"bob".parse().unwrap(), "admin").await.unwrap();
    assert_err!(app.broker.approve(&as_bob, &dana_write.id.to_string(), None).await, BrokerError::Unauthenticated);
    assert!(app.stored_request(dana_write.id).await.approvals.is_empty());
    assert_err!(app.broker.disable_user(&"nobody".parse().unwrap(), "admin").await, BrokerError::UserNotFound(_));

    let kinds = app.audit_kinds().await;
    let alice_disabled = kinds.iter().position(|k| k == "user.disabled").expect("the disable is recorded");
    assert_eq!(
        kinds[alice_disabled..alice_disabled + 4],
        ["user.disabled", "request.cancelled", "grant.revoked", "token.revoked"]
    );
    intact(app.broker.verify_chain().await.unwrap());
}

#[tokio::test]
async fn the_audit_chain_shows_tampering() {
    let app = spawn_broker().await;
    app.broker.add_user(&"alice".parse().unwrap(), &["eng".parse().unwrap()], false, "admin").await.unwrap();
    granted(app.ask(&dana(), "read", "10m").await);
    let write = app.pending(&alice(), "write", "20m").await;
    app.broker.approve(&bob(), &write.id.to_string(), None).await.unwrap();
    app.broker.deny(&carol(), &write.id.to_string(), reason("no")).await.unwrap();
    app.ask(&mallory(), "read", "10m").await.unwrap_err();
    app.clock.advance(minutes(10));
    assert_eq!(app.broker.sweep().await.unwrap().grants_expired, 1);

    let records = app.audit().await;
    let head = intact(app.broker.verify_chain().await.unwrap());
    assert_eq!(head.seq, records.len() as i64);
    assert_eq!(head.seq, 9);
    intact(app.broker.audit_verify(&bob()).await.unwrap());
    assert_err!(app.broker.audit_verify(&alice()).await, BrokerError::AuditForbidden);

    // Rewrite history behind the broker's back: the approval by bob becomes one by mallory.
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(app.db_path());
    let raw = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let target = records.iter().find(|r| r.kind == "request.approval_added").expect("an approval was recorded");
    let forged = target.details.replace("\"bob\"", "\"mallory\"");
    assert_ne!(forged, target.details);
    let update = "UPDATE audit_events SET details = ? WHERE chain_id = ? AND seq = ?";

    let error = sqlx::query(update)
        .bind(&forged)
        .bind(BROKER_CHAIN)
        .bind(target.seq)
        .execute(&raw)
        .await
        .expect_err("the table is append-only");
    assert!(error.to_string().contains("append-only"), "{error}");
    let error = sqlx::query("DELETE FROM audit_events WHERE seq = ?").bind(target.seq).execute(&raw).await.unwrap_err();
    assert!(error.to_string().contains("append-only"), "{error}");
    intact(app.broker.verify_chain().await.unwrap());

    sqlx::query("DROP TRIGGER audit_events_no_update").execute(&raw).await.unwrap();
    sqlx::query(update).bind(&forged).bind(BROKER_CHAIN).bind(target.seq).execute(&raw).await.unwrap();
    raw.close().await;

    let report = app.broker.verify_chain().await.unwrap();
    let problems: Vec<String> = report.failures.iter().map(ToString::to_string).collect();
    assert_eq!(problems, [format!("record {}: its contents do not match its hash (edited)", target.seq)]);
}

#[tokio::test]
async fn requests_are_seen_by_their_requester_reviewers_and_auditors() {
    let app = spawn_broker().await;
    let (auto, _) = granted(app.ask(&dana(), "read", "30m").await);
    app.clock.advance(minutes(1));
    let write = app.pending(&alice(), "write", "20m").await;
    let id = write.id.to_string();

    assert_err!(app.broker.request(&mallory(), &id).await, BrokerError::RequestNotFound(_));
    assert_err!(app.broker.request(&erin(), &id).await, BrokerError::RequestNotFound(_));
    assert_err!(app.broker.approve(&mallory(), &id, None).await, BrokerError::RequestNotFound(_));
    assert_err!(app.broker.deny(&erin(), &id, reason("no")).await, BrokerError::RequestNotFound(_));
    assert_err!(app.broker.cancel(&mallory(), &id).await, BrokerError::RequestNotFound(_));
    assert_eq!(app.broker.request(&alice(), &id).await.unwrap(), (write.clone(), None));
    assert_eq!(app.broker.request(&bob(), &id).await.unwrap(), (write.clone(), None));

    #[track_caller]
    fn ids(requests: Vec<AccessRequest>) -> Vec<String> {
        requests.into_iter().map(|r| r.id.to_string()).collect()
    }
    let (auto_id, write_id) = (auto.id.to_string(), write.id.to_string());
    let list = |who: Caller, pending: bool, mine: bool| {
        let broker = app.broker.clone();
        async move { ids(broker.requests(&who, pending, mine, 100).await.unwrap()) }
    };

    // Newest first.
    assert_eq!(list(bob(), false, false).await, [write_id.as_str(), auto_id.as_str()]);
    assert_eq!(list(bob(), true, false).await, [write_id.as_str()]);
    assert!(list(bob(), false, true).await.is_empty());
    assert_eq!(list(alice(), false, false).await, [write_id.as_str()]);
    assert_eq!(list(alice(), true, true).await, [write_id.as_str()]);
    assert_eq!(list(dana(), false, true).await, [auto_id.as_str()]);
    assert!(list(dana(), true, true).await.is_empty());
    assert!(list(mallory(), false, false).await.is_empty());
    assert!(list(erin(), false, false).await.is_empty());

    let visible = |who: Caller| {
        let broker = app.broker.clone();
        async move { broker.grants(&who, false, false, 100).await.unwrap().len() }
    };
    assert_eq!((visible(dana()).await, visible(bob()).await, visible(erin()).await), (1, 1, 0));

    app.broker.cancel(&alice(), &id).await.unwrap();
    assert!(list(alice(), true, true).await.is_empty());
    assert_eq!(list(alice(), false, true).await, [write_id.as_str()]);
}

#[tokio::test]
async fn a_listing_pages_past_rows_its_caller_may_not_see() {
    let app = spawn_broker().await;
    let own = app.pending(&alice(), "read", "15m").await;
    for _ in 0..5 {
        app.clock.advance(Duration::milliseconds(10));
        app.pending(&erin(), "read", "15m").await;
    }
    // The five newest rows are erin's; alice still gets her own request within a limit of 1.
    let listed = app.broker.requests(&alice(), false, false, 1).await.unwrap();
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), [own.id]);
    assert_eq!(app.broker.requests(&bob(), false, false, 3).await.unwrap().len(), 3);
    assert_eq!(app.broker.requests(&bob(), false, false, 100).await.unwrap().len(), 6);
}

#[tokio::test]
async fn an_active_listing_leaves_out_a_grant_past_its_end_before_the_sweep() {
    let app = spawn_broker().await;
    let (_, grant) = granted(app.ask(&dana(), "read", "10m").await);
    let active = app.broker.grants(&dana(), true, true, 10).await.unwrap();
    assert_eq!(active.iter().map(|g| g.id).collect::<Vec<_>>(), [grant.id]);
    app.clock.advance(minutes(10));
    assert!(app.broker.grants(&dana(), true, true, 10).await.unwrap().is_empty());
    assert_eq!(app.broker.grants(&dana(), false, true, 10).await.unwrap().len(), 1);
}

fn emergency(role: &str, duration: Option<&str>) -> BreakGlassInput {
    BreakGlassInput {
        resource: "demo-db".parse().unwrap(),
        role: role.parse().unwrap(),
        duration: duration.map(|d| GrantDuration::parse(d).unwrap()),
        reason: reason("INC-77: orders table locked"),
        incident: None,
    }
}

#[tokio::test]
async fn break_glass_grants_at_once_cut_to_the_ceiling_and_owes_a_review() {
    let t = spawn_broker().await;
    // write normally needs two approvals and lasts at most 30m; break-glass skips both and is
    // cut to the role's break_glass_max (1h).
    let broken = t.broker.break_glass(&dana(), emergency("write", Some("4h"))).await.unwrap();
    assert!(broken.cut_to_ceiling);
    assert!(broken.request.break_glass && !broken.request.auto_approved);
    assert_eq!(broken.grant.state, GrantState::Active);
    assert_eq!((broken.grant.starts_at, broken.grant.ends_at), (T0, T0 + minutes(60)));
    assert_eq!((broken.review.state, broken.review.due_at), (ReviewState::Open, T0 + Duration::hours(24)));
    assert_eq!(t.broker.store().review(&broken.grant.id.to_string()).await.unwrap(), Some(broken.review.clone()));
    let kinds = t.audit_kinds().await;
    assert_eq!(kinds, ["request.created", "request.approved", "grant.started", "breakglass.used"]);
    let own = t.broker.break_glass(&dana(), emergency("read", None)).await.unwrap();
    assert_eq!((own.cut_to_ceiling, own.grant.ends_at), (false, T0 + minutes(60)), "default: the ceiling");

    // Engineers off call have no break_glass policy: refused, and the refusal is recorded.
    let refused = t.broker.break_glass(&alice(), emergency("write", None)).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Forbidden, "{refused}");
    assert_eq!(t.audit_kinds().await.last().map(String::as_str), Some("request.refused"));
    assert_eq!(t.all_grants().await.len(), 2);
}

#[tokio::test]
async fn only_somebody_else_allowed_reviews_a_break_glass_grant() {
    let t = spawn_broker().await;
    let broken = t.broker.break_glass(&dana(), emergency("write", None)).await.unwrap();
    let grant = broken.grant.id.to_string();
    let looked = reason("read the statements: one UPDATE to unlock orders");

    let own = t.broker.review_break_glass(&dana(), &grant, Verdict::Accept, looked.clone()).await.unwrap_err();
    assert_eq!(
        (own.kind(), own.to_string()),
        (ErrorKind::Forbidden, "you cannot review your own break-glass grant".into())
    );
    let stranger = t.broker.review_break_glass(&erin(), &grant, Verdict::Accept, looked.clone()).await.unwrap_err();
    assert_eq!(stranger.kind(), ErrorKind::NotFound, "who may not see the grant learns nothing of it");
    let unknown = t.broker.review_break_glass(&bob(), "nope", Verdict::Accept, looked.clone()).await.unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::NotFound);

    let review = t.broker.review_break_glass(&bob(), &grant, Verdict::Accept, looked.clone()).await.unwrap();
    assert_eq!(review.state, ReviewState::Accepted);
    assert_eq!(review.answer.as_ref().map(|a| a.reviewer.as_str()), Some("bob"));
    assert_eq!(t.stored_grant(&grant).await.state, GrantState::Active, "an accepted review leaves the grant");
    let again = t.broker.review_break_glass(&carol(), &grant, Verdict::Reject, looked).await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Conflict);

    assert_eq!(t.broker.reviews(&dana(), false, 10).await.unwrap().len(), 1, "the holder sees their review");
    assert!(t.broker.reviews(&erin(), false, 10).await.unwrap().is_empty());
    assert!(t.broker.reviews(&bob(), true, 10).await.unwrap().is_empty(), "none open any more");
    assert_eq!(t.audit_kinds().await.last().map(String::as_str), Some("breakglass.reviewed"));
}

#[tokio::test]
async fn a_rejected_review_ends_the_grant_and_bars_the_holder_until_lifted() {
    let t = spawn_broker().await;
    let broken = t.broker.break_glass(&dana(), emergency("write", None)).await.unwrap();
    let grant = broken.grant.id.to_string();
    let mut changes = t.broker.watch_grants();
    changes.borrow_and_update();
    t.clock.advance(minutes(5));
    let review = t
        .broker
        .review_break_glass(&carol(), &grant, Verdict::Reject, reason("no incident INC-77 exists"))
        .await
        .unwrap();
    assert_eq!(review.state, ReviewState::Rejected);
    let ended = t.stored_grant(&grant).await;
    assert_eq!(ended.state, GrantState::Revoked);
    let closure = ended.closure.unwrap();
    assert_eq!((closure.by.as_str(), closure.reason.as_deref()), ("carol", Some("break-glass review rejected")));
    assert!(changes.has_changed().unwrap(), "connectors and gateways hear of the ended grant at once");
    let audit = t.audit().await;
    let reviewed = audit.iter().find(|r| r.kind == "breakglass.reviewed").unwrap();
    assert!(reviewed.details.contains(r#""bars_holder":true"#), "{}", reviewed.details);
    assert_eq!(audit.last().map(|r| r.kind.as_str()), Some("grant.revoked"));

    let barred = t.broker.break_glass(&dana(), emergency("read", None)).await.unwrap_err();
    assert_eq!(barred.kind(), ErrorKind::Forbidden);
    assert!(barred.to_string().contains(&grant), "{barred}");
    // Ordinary requests still go through review as before.
    granted(t.ask(&dana(), "read", "10m").await);

    let dana_name = "dana".parse().unwrap();
    assert!(t.broker.lift_breakglass_bar(&dana_name, "admin:root").await.unwrap());
    assert!(!t.broker.lift_breakglass_bar(&dana_name, "admin:root").await.unwrap(), "lifted once");
    assert_eq!(t.audit_kinds().await.last().map(String::as_str), Some("user.breakglass_restored"));
    t.broker.break_glass(&dana(), emergency("read", None)).await.expect("allowed again");
}

#[tokio::test]
async fn an_open_review_is_escalated_once_when_due() {
    let t = spawn_broker().await;
    let broken = t.broker.break_glass(&dana(), emergency("read", None)).await.unwrap();
    let due = broken.review.due_at;
    assert_eq!(t.broker.store().next_deadline().await.unwrap(), Some(T0 + minutes(60)), "the grant's end first");
    t.clock.advance(minutes(61));
    t.broker.sweep().await.unwrap();
    assert_eq!(t.broker.store().next_deadline().await.unwrap(), Some(due), "then the review's due time");

    t.clock.advance(due - Duration::SECOND - t.now());
    assert_eq!(t.broker.sweep().await.unwrap().reviews_escalated, 0);
    t.clock.advance(Duration::SECOND);
    assert_eq!(t.broker.sweep().await.unwrap().reviews_escalated, 1);
    assert_eq!(t.broker.sweep().await.unwrap().reviews_escalated, 0, "escalated once");
    assert_eq!(t.broker.store().next_deadline().await.unwrap(), None);
    let counts = t.broker.store().open_reviews(t.now()).await.unwrap();
    assert_eq!((counts.open, counts.overdue), (1, 1));
    let overdue = t.audit().await.into_iter().filter(|r| r.kind == "breakglass.review_overdue").count();
    assert_eq!(overdue, 1);

    // Answered late is still answered: no longer open or overdue.
    let grant = broken.grant.id.to_string();
    t.broker.review_break_glass(&bob(), &grant, Verdict::Accept, reason("late, but checked")).await.unwrap();
    let counts = t.broker.store().open_reviews(t.now()).await.unwrap();
    assert_eq!((counts.open, counts.overdue), (0, 0));
}
