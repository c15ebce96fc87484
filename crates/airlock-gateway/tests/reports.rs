//! Reports over what really happened: grants used through the gateway against a real cluster,
//! a guardrail refusal, revocations carried out by the connector, a grant never used, a request
//! the policies refused; then the summary and the stories, as an auditor reads them.

use airlock_broker::BrokerError;
use airlock_broker::broker::RequestInput;
use airlock_broker::reports::StoryOf;
use airlock_core::report::Window;
use airlock_core::values::{GrantDuration, Reason};
use airlock_gateway::gateway::Settings;
use airlock_testkit::gateway::GatewayHarness;
use airlock_testkit::{caller, eventually};

#[tokio::test]
async fn reports_tell_who_had_what_and_what_they_did_with_it() {
    let h = GatewayHarness::start(Settings::default()).await;
    let used = h.read_grant("30m").await;
    let (client, connection) = h.connect("dana", &h.token(&used).await).await.unwrap();
    client.batch_execute("SELECT count(*) FROM orders").await.unwrap();
    client.query("SELECT note FROM orders WHERE id > $1", &[&1i32]).await.unwrap();
    assert!(client.batch_execute("ALTER SYSTEM SET work_mem = '1GB'").await.is_err());
    let unused = h.write_grant("30m").await;
    let refused = RequestInput {
        resource: "demo-db".parse().unwrap(),
        role: "read".parse().unwrap(),
        duration: GrantDuration::parse("5m").unwrap(),
        reason: Reason::parse("curious").unwrap(),
        incident: None,
    };
    let error = h.broker.create_request(&caller("mallory", &["contractors"]), refused).await.unwrap_err();
    assert_eq!(error.kind(), airlock_broker::ErrorKind::Forbidden, "{error}");
    // Both role creations, then both revocations carried out on the target.
    eventually(|| async { h.audit("target.role_created").await.len() == 2 }).await;
    h.revoke(&used).await;
    h.revoke(&unused).await;
    assert!(connection.await.unwrap().is_err(), "the revoke cut the session");
    eventually(|| async { h.audit("target.role_dropped").await.len() == 2 }).await;
    eventually(|| async { !h.audit("session.ended").await.is_empty() }).await;

    let auditor = caller("bob", &["sre"]);
    let now = h.broker.clock().now();
    let window = Window { since: now - time::Duration::hours(1), until: now + time::Duration::seconds(1) };
    let summary = h.broker.report_summary(&auditor, window).await.unwrap();

    let r = &summary.requests;
    assert_eq!((r.made, r.refused_by_policy, r.auto_approved, r.approved_by_people), (3, 1, 1, 1), "{r:?}");
    assert_eq!(r.challenged_rate, Some(1.0 / 3.0), "the write request went to people");
    assert_eq!(summary.time_to_approve.count, 1, "only the request people approved");
    assert_eq!(summary.time_to_revoke.count, 2, "both grants' access was taken away: {summary:?}");
    let d = &summary.deviations;
    assert!(d.unconfirmed_revocations.is_empty(), "{:?}", d.unconfirmed_revocations);
    assert_eq!(d.unused_grants.iter().map(|g| g.grant).collect::<Vec<_>>(), [unused.id]);
    assert_eq!(d.guardrail_refusals.len(), 1);
    assert_eq!(d.guardrail_refusals[0].text, "ALTER SYSTEM SET work_mem = '1GB'");
    assert_eq!(d.guardrail_refusals[0].grant, used.id);
    assert!(d.used_after_end.is_empty(), "the cut left nothing running: {:?}", d.used_after_end);
    let db = summary.by_resource.iter().find(|l| l.name == "demo-db").expect("demo-db's line");
    assert_eq!((db.grants, db.users, db.sessions, db.refused_statements), (2, 1, 1, 1));
    assert!(db.statements >= 2, "{db:?}");
    assert!(
        summary.standing.iter().any(|f| f.kind == "superuser" && f.database_role == "postgres"),
        "the connector recorded the cluster's superuser as a standing privilege: {:?}",
        summary.standing
    );

    let story = h.broker.report_story(&auditor, StoryOf::User("dana".parse().unwrap()), window, 100).await.unwrap();
    assert_eq!(story.requests.len(), 2);
    let read = story.requests.iter().find_map(|r| r.grant.as_ref().filter(|g| g.grant.id == used.id)).unwrap();
    assert!(read.revoked_in_ms.is_some(), "{read:?}");
    assert_eq!(read.sessions.len(), 1);
    let session = &read.sessions[0];
    assert_eq!(session.end_reason.as_deref(), Some("grant_ended"));
    let texts: Vec<&str> = session.lines.iter().map(|l| l.text.as_str()).collect();
    assert!(texts.contains(&"SELECT count(*) FROM orders"), "{texts:?}");
    assert!(session.lines.iter().any(|l| l.refused.is_some()), "the refusal is in the session's story");
    assert!(session.lines.windows(2).all(|w| w[0].seq < w[1].seq), "in the order they happened");
    let capped = h.broker.report_story(&auditor, StoryOf::User("dana".parse().unwrap()), window, 1).await.unwrap();
    let capped = capped.requests.iter().find_map(|r| r.grant.as_ref().filter(|g| g.grant.id == used.id)).unwrap();
    assert_eq!(capped.statements, read.statements, "counts stay whole when the list is capped");
    assert!(capped.statements_listed < read.statements_listed);

    let reviewer = h.broker.report_story(&auditor, StoryOf::User("carol".parse().unwrap()), window, 0).await.unwrap();
    assert_eq!(reviewer.reviews_given.len(), 1, "carol approved dana's write request");
    assert!(reviewer.requests.is_empty());
    let resource =
        h.broker.report_story(&auditor, StoryOf::Resource("demo-db".parse().unwrap()), window, 0).await.unwrap();
    assert_eq!(resource.requests.len(), 2);
    assert_eq!(resource.refused_requests.len(), 1);

    // Auditors only; a window must run forwards.
    let outsider = caller("dana", &["eng", "oncall"]);
    let forbidden = h.broker.report_summary(&outsider, window).await.unwrap_err();
    assert!(matches!(forbidden, BrokerError::AuditForbidden), "{forbidden}");
    let story_forbidden =
        h.broker.report_story(&outsider, StoryOf::User("dana".parse().unwrap()), window, 1).await.unwrap_err();
    assert!(matches!(story_forbidden, BrokerError::AuditForbidden));
    let backwards = Window { since: window.until, until: window.since };
    assert!(matches!(h.broker.report_summary(&auditor, backwards).await, Err(BrokerError::BadWindow(_))));
    h.shutdown().await;
}
