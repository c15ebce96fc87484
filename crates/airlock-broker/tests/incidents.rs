//! Incidents against a real SQLite store and the quickstart's policies and playbook
//! (`demo-db-outage`: severity 2 or worse arms responders and `oncall` for write, at most 1h).
//! Time is a hand-moved clock.

mod common;

use std::sync::Arc;

use airlock_broker::breakglass::BreakGlassInput;
use airlock_broker::broker::RequestInput;
use airlock_broker::clock::ManualClock;
use airlock_broker::{Broker, BrokerError, Caller, ErrorKind};
use airlock_core::incident::{IncidentState, NewIncident, Severity, Title};
use airlock_core::lifecycle::{AccessRequest, Grant, GrantState, OpenError, RequestState};
use airlock_core::values::{GrantDuration, Reason};
use airlock_store::Store;
use tempfile::TempDir;
use time::OffsetDateTime;
use time::macros::datetime;

use crate::common::{alice, bob, caller, dana, erin, mallory, quickstart_broker};

const T0: OffsetDateTime = datetime!(2026-11-23 10:00 UTC);

struct App {
    broker: Broker,
    clock: Arc<ManualClock>,
    _dir: TempDir,
}

async fn spawn() -> App {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    App { broker: quickstart_broker(store, dir.path(), clock.clone()), clock, _dir: dir }
}

/// An incident tool's service account.
fn pager() -> Caller {
    let mut pager = caller("pagerduty", &["incident-tools"]);
    pager.principal.service = true;
    pager
}

fn incident(id: &str, severity: u8, responders: &[&str]) -> NewIncident {
    NewIncident {
        id: id.parse().unwrap(),
        severity: Severity::new(severity).unwrap(),
        title: Title::parse("orders are not being written").unwrap(),
        responders: responders.iter().map(|r| r.parse().unwrap()).collect(),
    }
}

fn ask(role: &str, duration: &str, incident: Option<&str>) -> RequestInput {
    RequestInput {
        resource: "demo-db".parse().unwrap(),
        role: role.parse().unwrap(),
        duration: GrantDuration::parse(duration).unwrap(),
        reason: Reason::parse("fix the orders table").unwrap(),
        incident: incident.map(|i| i.parse().unwrap()),
    }
}

#[track_caller]
fn granted(outcome: Result<(AccessRequest, Option<Grant>), BrokerError>) -> (AccessRequest, Grant) {
    match outcome {
        Ok((request, Some(grant))) => (request, grant),
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[track_caller]
fn pending(outcome: Result<(AccessRequest, Option<Grant>), BrokerError>) -> AccessRequest {
    match outcome {
        Ok((request, None)) if request.state == RequestState::Pending => request,
        other => panic!("expected a pending request, got {other:?}"),
    }
}

#[tokio::test]
async fn a_playbook_arms_responders_until_the_incident_closes_and_closing_ends_everything_given_for_it() {
    let app = spawn().await;
    let broker = &app.broker;
    let (opened, new) = broker.open_incident(&pager(), incident("INC-7", 1, &["erin"])).await.unwrap();
    assert!(new);
    assert_eq!((opened.state, opened.opened_by.as_str()), (IncidentState::Open, "pagerduty"));

    // A named responder: write (two approvals normally, 30m at most) at once, cut to the playbook's 1h.
    let (request, grant) = granted(broker.create_request(&erin(), ask("write", "3h", Some("INC-7"))).await);
    assert_eq!(request.decision.policies, vec!["playbook:demo-db-outage".to_owned()]);
    assert!(request.auto_approved);
    assert_eq!(request.incident.as_ref().map(|i| i.id.as_str()), Some("INC-7"));
    assert_eq!((grant.ends_at - grant.starts_at).whole_minutes(), 60);
    // On call, by group.
    let (_, on_call) = granted(broker.create_request(&dana(), ask("write", "20m", Some("INC-7"))).await);
    // Neither named nor on call: the usual review, but the request still belongs to the incident.
    let waiting = pending(broker.create_request(&alice(), ask("write", "20m", Some("INC-7"))).await);
    // Outside every policy: a playbook does not arm strangers.
    let refused = broker.create_request(&mallory(), ask("write", "20m", Some("INC-7"))).await;
    assert!(matches!(refused, Err(BrokerError::Open(OpenError::Refused { .. }))), "{refused:?}");
    // The same responder without naming the incident: the usual review, untouched by its close.
    let unrelated = pending(broker.create_request(&erin(), ask("write", "20m", None)).await);
    // Break-glass during the incident belongs to it too.
    let emergency = BreakGlassInput {
        resource: "demo-db".parse().unwrap(),
        role: "write".parse().unwrap(),
        duration: None,
        reason: Reason::parse("INC-7: the table is locked").unwrap(),
        incident: Some("INC-7".parse().unwrap()),
    };
    let broken = broker.break_glass(&dana(), emergency).await.unwrap();

    let mut changes = broker.watch_grants();
    changes.mark_unchanged();
    app.clock.advance(time::Duration::minutes(5));
    let closed = broker.close_incident(&bob(), "INC-7").await.unwrap();
    assert_eq!((closed.grants_revoked, closed.requests_withdrawn), (3, 1));
    assert_eq!(closed.incident.closed_by.as_deref(), Some("bob"));
    assert!(changes.has_changed().unwrap(), "gateways are told at once");
    for id in [grant.id, on_call.id, broken.grant.id] {
        let ended = broker.store().grant(&id.to_string()).await.unwrap().unwrap();
        assert_eq!(ended.state, GrantState::Revoked);
        assert_eq!(ended.closure.unwrap().reason.as_deref(), Some("incident INC-7 closed"));
    }
    let withdrawn = broker.store().request(&waiting.id.to_string()).await.unwrap().unwrap();
    assert_eq!(withdrawn.state, RequestState::Cancelled);
    let untouched = broker.store().request(&unrelated.id.to_string()).await.unwrap().unwrap();
    assert_eq!(untouched.state, RequestState::Pending);

    // Nothing more is given for a closed incident, its id is not reused, and it closes once.
    let late = broker.create_request(&erin(), ask("write", "20m", Some("INC-7"))).await;
    assert!(matches!(late, Err(BrokerError::IncidentNotOpen(_))), "{late:?}");
    let reopened = broker.open_incident(&pager(), incident("INC-7", 1, &["erin"])).await;
    assert!(matches!(reopened, Err(BrokerError::IncidentIdUsed(_))), "{reopened:?}");
    let again = broker.close_incident(&bob(), "INC-7").await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Conflict);

    // The post-mortem: every request made for it, refusals included, with its grant and review.
    let report = broker.report_incident(&bob(), "INC-7", 100).await.unwrap();
    assert_eq!(report.incident.state, IncidentState::Closed);
    let requesters: Vec<&str> = report.story.requests.iter().map(|r| r.request.requester.as_str()).collect();
    assert_eq!(requesters, ["erin", "dana", "alice", "dana"]);
    assert_eq!(report.story.requests.iter().filter(|r| r.grant.is_some()).count(), 3);
    assert_eq!(report.story.refused_requests.len(), 1);
    assert_eq!(report.story.refused_requests[0].requester, "mallory");
    assert_eq!(report.breakglass_reviews.len(), 1);
    let forbidden = broker.report_incident(&erin(), "INC-7", 100).await.unwrap_err();
    assert_eq!(forbidden.kind(), ErrorKind::Forbidden);

    let verified = broker.verify_chain().await.unwrap();
    assert!(verified.intact(), "{:?}", verified.failures);
}

#[tokio::test]
async fn only_managers_run_incidents_and_only_severe_open_ones_arm_anybody() {
    let app = spawn().await;
    let broker = &app.broker;
    for stranger in [erin(), dana(), mallory()] {
        let refused = broker.open_incident(&stranger, incident("INC-1", 0, &[])).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Forbidden);
    }
    assert!(matches!(broker.close_incident(&bob(), "INC-404").await, Err(BrokerError::IncidentNotFound(_))));

    // Severity 3 is milder than the playbook's 2: the responder waits for review like anybody.
    broker.open_incident(&bob(), incident("INC-2", 3, &["erin"])).await.unwrap();
    pending(broker.create_request(&erin(), ask("write", "20m", Some("INC-2"))).await);
    // The playbook names write only; read goes through the policies as usual (one approval).
    broker.open_incident(&bob(), incident("INC-3", 1, &["erin"])).await.unwrap();
    pending(broker.create_request(&erin(), ask("read", "20m", Some("INC-3"))).await);

    // An incident tool's retry changes nothing; a different body under the same id is refused.
    let (_, new) = broker.open_incident(&pager(), incident("INC-3", 1, &["erin"])).await.unwrap();
    assert!(!new);
    let changed = broker.open_incident(&pager(), incident("INC-3", 0, &["erin"])).await;
    assert!(matches!(changed, Err(BrokerError::IncidentDiffers(_))), "{changed:?}");

    let unknown = broker.create_request(&erin(), ask("write", "20m", Some("INC-404"))).await.unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::BadInput);
    let open: Vec<String> = broker.incidents(true, 10).await.unwrap().into_iter().map(|i| i.id.to_string()).collect();
    assert_eq!(open, ["INC-3", "INC-2"]);
}

#[tokio::test]
async fn no_grant_made_for_an_incident_outlives_its_close_however_the_two_race() {
    let app = spawn().await;
    let broker = &app.broker;
    broker.open_incident(&bob(), incident("INC-9", 0, &[])).await.unwrap();
    let mut asks = Vec::new();
    for n in 0..24 {
        let broker = broker.clone();
        asks.push(tokio::spawn(async move {
            let responder = caller(&format!("oncall{n}"), &["oncall"]);
            broker.create_request(&responder, ask("write", "20m", Some("INC-9"))).await
        }));
    }
    let close = {
        let broker = broker.clone();
        tokio::spawn(async move { broker.close_incident(&bob(), "INC-9").await })
    };
    let mut given = 0;
    for outcome in asks {
        match outcome.await.unwrap() {
            Ok((_, Some(_))) => given += 1,
            Err(BrokerError::IncidentNotOpen(_)) => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    let closed = close.await.unwrap().unwrap();
    assert_eq!(closed.grants_revoked, given, "every grant given before the close was revoked by it");
    let live = broker.live_grants().await.unwrap();
    assert!(live.is_empty(), "grants outlived the incident: {live:?}");
}
