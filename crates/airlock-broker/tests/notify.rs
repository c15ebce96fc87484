//! Webhook notifications end to end: a real SQLite store in a temporary directory, the quickstart
//! policies over a catalog with `demo-db` (prod) and `stage-db` (staging), a [`ManualClock`],
//! notifications configured through a real `airlock.toml`, and webhook receivers on loopback
//! (`common`: they stand for services elsewhere). Retries wait milliseconds, not seconds.
//! Background work is awaited by polling with an overall timeout; where a test must know that
//! nothing else was sent, it stops the notifier, which returns once every routed notice has a
//! recorded outcome.
//!
//! The quickstart: `eng` may request demo-db read (1 approval) or write (2 approvals); `sre`
//! reviews; `oncall` gets read at once.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_broker::breakglass::BreakGlassInput;
use airlock_broker::broker::{RequestInput, Settings};
use airlock_broker::bundle::PolicyBundle;
use airlock_broker::clock::{Clock, ManualClock};
use airlock_broker::config::Config;
use airlock_broker::notify::{Notifier, RetryPolicy, WARN_BEFORE};
use airlock_broker::{Broker, Caller};
use airlock_core::audit::{AuditEvent, ChainRecord, EventKind};
use airlock_core::incident::{NewIncident, Severity, Title};
use airlock_core::lifecycle::{AccessRequest, RequestState};
use airlock_core::values::{GrantDuration, Reason};
use airlock_store::{BROKER_CHAIN, Store};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tempfile::TempDir;
use time::OffsetDateTime;
use time::macros::datetime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::common::{Received, Receiver, alice, bob, caller, dana, eventually};

const T0: OffsetDateTime = datetime!(2026-11-23 10:00 UTC);
/// The key every test channel signs with (from `secret_file`).
const SECRET: &str = "9c1f0d6e2b7a4c58a3e1f0b9d8c7e6a5";
/// The path of every receiver's URL: a Slack URL's path is a credential.
const HOOK_PATH: &str = "/services/T000/B000/hook-token-5e1ae2";

const CATALOG: &str = r#"
[[resource]]
name = "demo-db"
kind = "postgres"
environment = "prod"
[resource.roles.read]
max_duration = "1h"
[resource.roles.write]
max_duration = "30m"
approvals = 2

[[resource]]
name = "stage-db"
kind = "postgres"
environment = "staging"
[resource.roles.read]
max_duration = "1h"
"#;

/// Fast retries: 3 attempts, 10 ms apart at first.
const FAST: RetryPolicy =
    RetryPolicy { first_delay: Duration::from_millis(10), max_delay: Duration::from_millis(40), attempts: 3 };

/// A broker whose store tells a running notifier of every commit.
struct Notifying {
    broker: Broker,
    clock: Arc<ManualClock>,
    stop: watch::Sender<bool>,
    notifier: JoinHandle<()>,
    _dir: TempDir,
}

/// A channel in `airlock.toml`, signing with [`SECRET`].
fn channel(name: &str, format: &str, url: &str) -> String {
    format!(
        "[[notify.channel]]\nname = \"{name}\"\nformat = \"{format}\"\nurl = \"{url}\"\nsecret_file = \"notify.key\"\n"
    )
}

/// A route in `airlock.toml`; `filters` are its TOML lines after `channel`.
fn route(channel: &str, filters: &str) -> String {
    format!("[[notify.route]]\nchannel = \"{channel}\"\n{filters}\n")
}

async fn spawn(notify: &str, retry: RetryPolicy) -> Notifying {
    let dir = tempfile::tempdir().unwrap();
    let quickstart = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart"));
    std::fs::write(dir.path().join("catalog.toml"), CATALOG).unwrap();
    std::fs::write(dir.path().join("notify.key"), format!("{SECRET}\n")).unwrap();
    let config = format!(
        "[broker]\npending_ttl = \"1h\"\nauditors = [\"sre\"]\n\n\
         [policy]\ncatalog = \"catalog.toml\"\npolicies = \"{}\"\ntests = \"{}\"\n\n\
         [mfa]\nbreakglass = false\n\n\
         [notify]\nbase_url = \"https://airlock.example.com/\"\n\n{notify}",
        quickstart.join("policies").display(),
        quickstart.join("policy-tests").display(),
    );
    std::fs::write(dir.path().join("airlock.toml"), config).unwrap();
    let config = Config::load(&dir.path().join("airlock.toml")).expect("the config loads");
    let bundle = PolicyBundle::load(&config.policy).expect("the catalog and the quickstart policies load");
    let notifier = Notifier::from_config(&config.notify, &bundle.catalog).expect("the channels resolve");
    let notifier = notifier.expect("channels are configured").with_retry(retry);
    let mut store = Store::open(&dir.path().join("data")).await.unwrap();
    store.observe_commits(notifier.observer());
    let clock = Arc::new(ManualClock::new(T0));
    let settings = Settings::from(&config);
    let key = airlock_broker::secrets::load_or_create_key(&dir.path().join("data")).unwrap();
    let broker = Broker::new(store, bundle, clock.clone() as Arc<dyn Clock>, settings, key);
    let (stop, stopped) = watch::channel(false);
    let notifier = tokio::spawn(notifier.run(broker.clone(), stopped));
    Notifying { broker, clock, stop, notifier, _dir: dir }
}

impl Notifying {
    /// Stops the notifier and waits until every notice it routed has a recorded outcome.
    async fn finish(self) -> Broker {
        self.stop.send(true).unwrap();
        self.notifier.await.unwrap();
        self.broker
    }

    async fn ask(&self, who: &Caller, resource: &str, role: &str, duration: &str) -> AccessRequest {
        self.ask_for(who, resource, role, duration, None).await
    }

    /// A request, made for `incident` when one is named.
    async fn ask_for(
        &self,
        who: &Caller,
        resource: &str,
        role: &str,
        duration: &str,
        incident: Option<&str>,
    ) -> AccessRequest {
        let input = RequestInput {
            resource: resource.parse().unwrap(),
            role: role.parse().unwrap(),
            duration: GrantDuration::parse(duration).unwrap(),
            reason: Reason::parse("INC-7: fix the orders table").unwrap(),
            incident: incident.map(|i| i.parse().unwrap()),
        };
        self.broker.create_request(who, input).await.expect("the request opens").0
    }
}

/// Notification records so far, with their details.
async fn notification_records(broker: &Broker) -> Vec<(String, Value)> {
    let records: Vec<ChainRecord> = broker.store().audit_chain(BROKER_CHAIN).await.unwrap();
    records
        .into_iter()
        .filter(|record| record.kind.starts_with("notification."))
        .map(|record| (record.kind, serde_json::from_str(&record.details).unwrap()))
        .collect()
}

/// Waits until `broker` has recorded `n` notification outcomes.
async fn outcomes(broker: &Broker, n: usize) -> Vec<(String, Value)> {
    eventually(&format!("{n} notification records"), async || notification_records(broker).await.len() >= n).await;
    notification_records(broker).await
}

fn body(request: &Received) -> Value {
    serde_json::from_str(&request.body).expect("a JSON body")
}

/// What a receiver does with the signature headers: recomputes the HMAC over `timestamp.body`.
fn signature_valid(secret: &str, timestamp: &str, body: &str, signature: &str) -> bool {
    let Some(hex_mac) = signature.strip_prefix("v1=") else { return false };
    let Ok(mac_bytes) = hex::decode(hex_mac) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{body}").as_bytes());
    mac.verify_slice(&mac_bytes).is_ok()
}

/// No audit record holds a channel's secret, its URL or the URL's path.
async fn assert_no_secrets(broker: &Broker, urls: &[&str]) {
    for record in broker.store().audit_chain(BROKER_CHAIN).await.unwrap() {
        let text = format!("{record:?}");
        assert!(!text.contains(SECRET), "a record holds the secret: {text}");
        assert!(!text.contains(HOOK_PATH), "a record holds a URL's path: {text}");
        for url in urls {
            assert!(!text.contains(url), "a record holds a URL: {text}");
        }
    }
}

#[tokio::test]
async fn a_pending_request_is_announced_in_both_formats_signed_with_its_facts_link_and_commands() {
    let slack = Receiver::start(HOOK_PATH, |_| 200).await;
    let hook = Receiver::start(HOOK_PATH, |_| 200).await;
    let notify = [
        channel("chat", "slack", &slack.url),
        channel("hook", "json", &hook.url),
        route("chat", ""),
        route("hook", ""),
    ];
    let app = spawn(&notify.concat(), FAST).await;
    let request = app.ask(&alice(), "demo-db", "write", "30m").await;
    let id = request.id.to_string();
    let records = outcomes(&app.broker, 2).await;

    let [posted] = hook.received().try_into().expect("one POST to the JSON channel");
    let document = body(&posted);
    let link = format!("https://airlock.example.com/v1/requests/{id}");
    assert_eq!(
        document,
        json!({
            "delivery": posted.headers["x-airlock-delivery"],
            "kind": "review_needed",
            "at": "2026-11-23T10:00:00Z",
            "subject": {"request": id},
            "resource": "demo-db",
            "environment": "prod",
            "role": "write",
            "actor": "alice",
            "summary": "Review needed: alice asks for write on demo-db (prod) for 30m",
            "link": link,
            "requester": "alice",
            "duration": "30m",
            "reason": "INC-7: fix the orders table",
            "approvals_required": 2,
            "expires_at": "2026-11-23T11:00:00Z",
            "commands": {"approve": format!("airlock approve {id}"), "deny": format!("airlock deny {id} --reason TEXT")},
        })
    );
    assert_eq!(posted.headers["content-type"], "application/json");
    assert!(uuid::Uuid::parse_str(&posted.headers["x-airlock-delivery"]).is_ok_and(|d| d.get_version_num() == 4));
    let timestamp = &posted.headers["x-airlock-timestamp"];
    assert_eq!(timestamp, &T0.unix_timestamp().to_string(), "stamped by the broker's clock");
    let signature = &posted.headers["x-airlock-signature"];
    assert!(signature_valid(SECRET, timestamp, &posted.body, signature), "{signature}");
    let tampered = posted.body.replace("\"write\"", "\"read\"");
    assert_ne!(tampered, posted.body);
    assert!(!signature_valid(SECRET, timestamp, &tampered, signature), "a changed body fails");
    assert!(!signature_valid(SECRET, "1", &posted.body, signature), "a changed timestamp fails");
    assert!(!signature_valid("another-secret-of-enough-bytes", timestamp, &posted.body, signature));

    let [message] = slack.received().try_into().expect("one POST to the Slack channel");
    let text = body(&message)["text"].as_str().expect("a Slack text").to_owned();
    assert_eq!(
        text,
        format!(
            "*Review needed: alice asks for write on demo-db (prod) for 30m*\nRequest: `{id}`\nRequester: alice\n\
             Duration: 30m\nReason: INC-7: fix the orders table\nApprovals needed: 2\nExpires: 2026-11-23 11:00 UTC\n\
             Approve: `airlock approve {id}`\nDeny: `airlock deny {id} --reason TEXT`\n<{link}|Open in Airlock>"
        )
    );
    assert!(signature_valid(
        SECRET,
        &message.headers["x-airlock-timestamp"],
        &message.body,
        &message.headers["x-airlock-signature"]
    ));

    let mut delivered: Vec<Value> = records
        .iter()
        .map(|(kind, details)| {
            assert_eq!(kind, "notification.delivered");
            details.clone()
        })
        .collect();
    delivered.sort_by_key(|details| details["channel"].as_str().map(str::to_owned));
    assert_eq!(
        delivered[1],
        json!({
            "channel": "hook", "notice": "review_needed", "delivery": posted.headers["x-airlock-delivery"],
            "subject": {"request": id}, "attempts": 1, "status": 200, "event_at": "2026-11-23T10:00:00Z",
        })
    );
    assert_eq!(delivered[0]["delivery"].as_str(), Some(message.headers["x-airlock-delivery"].as_str()));
    assert_no_secrets(&app.broker, &[&slack.url, &hook.url]).await;
}

#[tokio::test]
async fn failed_attempts_are_retried_with_the_same_delivery_and_a_fresh_signature() {
    let hook = Receiver::start(HOOK_PATH, |n| if n < 2 { 500 } else { 200 }).await;
    let app = spawn(&[channel("hook", "json", &hook.url), route("hook", "")].concat(), FAST).await;
    app.ask(&alice(), "demo-db", "write", "30m").await;
    let records = outcomes(&app.broker, 1).await;

    let attempts = hook.received();
    assert_eq!(attempts.iter().map(|a| a.status).collect::<Vec<_>>(), [500, 500, 200]);
    let delivery = &attempts[0].headers["x-airlock-delivery"];
    for attempt in &attempts {
        assert_eq!(&attempt.headers["x-airlock-delivery"], delivery, "one delivery id on every attempt");
        assert_eq!(attempt.body, attempts[0].body, "one body on every attempt");
        assert!(signature_valid(
            SECRET,
            &attempt.headers["x-airlock-timestamp"],
            &attempt.body,
            &attempt.headers["x-airlock-signature"]
        ));
    }
    assert_eq!(records.len(), 1);
    let (kind, details) = &records[0];
    assert_eq!(kind, "notification.delivered");
    assert_eq!(
        (&details["delivery"], &details["attempts"], &details["status"]),
        (&json!(delivery), &json!(3), &json!(200))
    );
}

#[tokio::test]
async fn a_receiver_that_keeps_failing_is_recorded_as_failed_and_the_request_stands() {
    let broken = Receiver::start(HOOK_PATH, |_| 503).await;
    let gone = Receiver::start(HOOK_PATH, |_| 404).await;
    // Nothing listens on port 1 of loopback: every attempt is refused by the network.
    let nowhere = format!("http://127.0.0.1:1{HOOK_PATH}");
    let notify = [
        channel("broken", "json", &broken.url),
        channel("gone", "slack", &gone.url),
        channel("nowhere", "json", &nowhere),
        route("broken", ""),
        route("gone", ""),
        route("nowhere", ""),
    ];
    let app = spawn(&notify.concat(), FAST).await;
    let request = app.ask(&alice(), "demo-db", "write", "30m").await;
    let mut records = outcomes(&app.broker, 3).await;
    records.sort_by_key(|(_, details)| details["channel"].as_str().map(str::to_owned));

    assert!(records.iter().all(|(kind, _)| kind == "notification.failed"), "{records:?}");
    let summary: Vec<(Value, Value, Value)> = records
        .iter()
        .map(|(_, details)| (details["channel"].clone(), details["attempts"].clone(), details["status"].clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (json!("broken"), json!(3), json!(503)),
            (json!("gone"), json!(1), json!(404)),
            (json!("nowhere"), json!(3), Value::Null),
        ],
        "5xx and network errors are retried up to the limit; other 4xx are final"
    );
    assert_eq!(records[0].1["error"], "the receiver answered 503 Service Unavailable");
    assert_eq!(records[1].1["error"], "the receiver answered 404 Not Found");
    let network = records[2].1["error"].as_str().unwrap();
    assert!(network.starts_with("cannot send"), "{network}");
    assert_eq!((broken.received().len(), gone.received().len()), (3, 1));

    let stored = app.broker.store().request(&request.id.to_string()).await.unwrap().expect("the request is stored");
    assert_eq!(stored.state, RequestState::Pending, "a failed notice never undoes what it was about");
    assert_no_secrets(&app.broker, &[&broken.url, &gone.url, &nowhere]).await;
}

#[tokio::test]
async fn shutdown_cuts_retries_short_and_records_the_outcome() {
    let broken = Receiver::start(HOOK_PATH, |_| 500).await;
    let patient =
        RetryPolicy { first_delay: Duration::from_secs(3600), max_delay: Duration::from_secs(3600), attempts: 6 };
    let app = spawn(&[channel("broken", "json", &broken.url), route("broken", "")].concat(), patient).await;
    app.ask(&alice(), "demo-db", "write", "30m").await;
    eventually("a first attempt", async || !broken.received().is_empty()).await;

    let broker = app.finish().await;
    let records = notification_records(&broker).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let (kind, details) = &records[0];
    assert_eq!(
        (kind.as_str(), &details["attempts"]),
        ("notification.failed", &json!(2)),
        "one last attempt at shutdown"
    );
}

#[tokio::test]
async fn routes_send_each_notice_only_where_it_belongs() {
    let reviews = Receiver::start(HOOK_PATH, |_| 200).await;
    let prod = Receiver::start(HOOK_PATH, |_| 200).await;
    let staging = Receiver::start(HOOK_PATH, |_| 200).await;
    let stage_db = Receiver::start(HOOK_PATH, |_| 200).await;
    let incidents = Receiver::start(HOOK_PATH, |_| 200).await;
    let notify = [
        channel("reviews", "json", &reviews.url),
        channel("prod", "json", &prod.url),
        channel("staging", "json", &staging.url),
        channel("stage-db", "json", &stage_db.url),
        channel("incidents", "json", &incidents.url),
        route("reviews", "events = [\"review_needed\"]\nresources = [\"demo-db\"]"),
        route("prod", "events = [\"request_decided\", \"grant_started\"]\nenvironments = [\"prod\"]"),
        route("staging", "environments = [\"staging\"]"),
        route("stage-db", "resources = [\"stage-db\"]"),
        route("incidents", "events = [\"incident_opened\"]"),
    ];
    let app = spawn(&notify.concat(), FAST).await;
    app.ask(&alice(), "demo-db", "write", "30m").await;
    // Auto-approved: created, approved and started in one commit, so nobody is asked to review it.
    app.ask(&dana(), "demo-db", "read", "20m").await;
    let incident = json!({"incident": {"id": "inc-1", "severity": 1, "title": "orders down"}});
    let opened = AuditEvent { kind: EventKind::IncidentOpened, actor: "bob".into(), at: T0, details: incident };
    app.broker.record(&[opened]).await.unwrap();
    let broker = app.finish().await;

    let kinds = |receiver: &Receiver| -> Vec<String> {
        receiver.received().iter().map(|r| body(r)["kind"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(kinds(&reviews), ["review_needed"]);
    assert_eq!(kinds(&prod), ["request_decided", "grant_started"]);
    assert!(kinds(&staging).is_empty(), "{:?}", kinds(&staging));
    assert!(kinds(&stage_db).is_empty(), "a route for another resource hears nothing");
    assert_eq!(kinds(&incidents), ["incident_opened"], "a notice without a resource reaches unfiltered routes only");
    assert_eq!(notification_records(&broker).await.len(), 4);
}

#[tokio::test]
async fn incidents_are_told_opened_and_closed_with_what_closing_ended() {
    let hook = Receiver::start(HOOK_PATH, |_| 200).await;
    let filters = "events = [\"incident_opened\", \"request_decided\", \"incident_closed\"]";
    let managers = "[incidents]\nmanagers = [\"sre\"]\n[[incidents.playbook]]\nname = \"demo-db-outage\"\n\
                    max_severity = 2\ngroups = [\"oncall\"]\nmax = \"1h\"\n\
                    access = [{ resource = \"demo-db\", role = \"write\" }]\n";
    let app =
        spawn(&[channel("hook", "json", &hook.url), route("hook", filters), managers.into()].concat(), FAST).await;
    let new = NewIncident {
        id: "INC-7".parse().unwrap(),
        severity: Severity::new(1).unwrap(),
        title: Title::parse("orders down").unwrap(),
        responders: vec!["alice".parse().unwrap()],
    };
    app.broker.open_incident(&bob(), new).await.unwrap();
    app.ask_for(&dana(), "demo-db", "write", "20m", Some("INC-7")).await;
    app.broker.close_incident(&bob(), "INC-7").await.unwrap();
    app.finish().await;

    let bodies: Vec<Value> = hook.received().iter().map(body).collect();
    let summaries: Vec<&str> = bodies.iter().map(|b| b["summary"].as_str().unwrap()).collect();
    assert_eq!(
        summaries,
        [
            "Incident opened (severity 1): orders down",
            "dana's request for write on demo-db (prod) was approved by incident playbook demo-db-outage, without review",
            "Incident closed (severity 1): orders down"
        ]
    );
    assert_eq!(bodies[0]["responders"], json!(["alice"]), "{:#}", bodies[0]);
    assert_eq!(bodies[1]["incident"], "INC-7", "{:#}", bodies[1]);
    assert_eq!(bodies[2]["closed_by"], "bob", "{:#}", bodies[2]);
    assert_eq!(bodies[2]["grants_revoked"], 1, "{:#}", bodies[2]);
}

#[tokio::test]
async fn decisions_and_ends_say_who_and_why() {
    let hook = Receiver::start(HOOK_PATH, |_| 200).await;
    let filters = "events = [\"request_decided\", \"grant_ended\"]";
    let app = spawn(&[channel("hook", "json", &hook.url), route("hook", filters)].concat(), FAST).await;
    let read = app.ask(&alice(), "demo-db", "read", "1h").await;
    let (_, grant) = app.broker.approve(&bob(), &read.id.to_string(), Some("ok for INC-7".into())).await.unwrap();
    let grant = grant.expect("one approval starts the grant");
    app.broker.revoke(&bob(), &grant.id.to_string(), Reason::parse("fixed").unwrap()).await.unwrap();
    let write = app.ask(&alice(), "demo-db", "write", "30m").await;
    app.broker
        .deny(&caller("carol", &["sre"]), &write.id.to_string(), Reason::parse("use read").unwrap())
        .await
        .unwrap();
    app.finish().await;

    let documents: Vec<Value> = hook.received().iter().map(body).collect();
    let pick = |keys: &[&str], document: &Value| -> Value {
        keys.iter().map(|key| ((*key).to_owned(), document[key].clone())).collect::<serde_json::Map<_, _>>().into()
    };
    let keys = ["kind", "summary", "outcome", "decided_by", "comments", "decision_reason", "ended_by", "end_reason"];
    let seen: Vec<Value> = documents.iter().map(|document| pick(&keys, document)).collect();
    assert_eq!(
        seen,
        [
            json!({"kind": "request_decided", "summary": "bob approved alice's request for read on demo-db (prod)",
                   "outcome": "approved", "decided_by": ["bob"], "comments": ["bob: ok for INC-7"],
                   "decision_reason": null, "ended_by": null, "end_reason": null}),
            json!({"kind": "grant_ended", "summary": "bob revoked alice's read on demo-db (prod)",
                   "outcome": "revoked", "decided_by": null, "comments": null, "decision_reason": null,
                   "ended_by": "bob", "end_reason": "fixed"}),
            json!({"kind": "request_decided", "summary": "carol denied alice's request for write on demo-db (prod)",
                   "outcome": "denied", "decided_by": ["carol"], "comments": null, "decision_reason": "use read",
                   "ended_by": null, "end_reason": null}),
        ]
    );
    assert_eq!(documents[1]["subject"], json!({"grant": grant.id.to_string(), "request": read.id.to_string()}));
}

#[tokio::test]
async fn grant_ending_is_sent_once_per_grant_ten_minutes_before_its_end() {
    let hook = Receiver::start(HOOK_PATH, |_| 200).await;
    let app =
        spawn(&[channel("hook", "json", &hook.url), route("hook", "events = [\"grant_ending\"]")].concat(), FAST).await;
    let first = app.ask(&dana(), "demo-db", "read", "30m").await;
    app.clock.advance(time::Duration::minutes(5));
    let second = app.ask(&dana(), "demo-db", "read", "30m").await;
    let grant_of = async |request: &AccessRequest| {
        app.broker.store().grant_of_request(&request.id.to_string()).await.unwrap().unwrap()
    };
    let (first, second) = (grant_of(&first).await, grant_of(&second).await);

    // 10 minutes before the first grant's end.
    app.clock.advance(first.ends_at - WARN_BEFORE - app.clock.now());
    outcomes(&app.broker, 1).await;
    // 10 minutes before the second's: the first, now 5 minutes from its end, is not warned again.
    app.clock.advance(second.ends_at - WARN_BEFORE - app.clock.now());
    outcomes(&app.broker, 2).await;
    app.finish().await;

    let warned: Vec<(Value, Value, Value)> = hook
        .received()
        .iter()
        .map(body)
        .map(|document| {
            (document["subject"]["grant"].clone(), document["minutes_left"].clone(), document["summary"].clone())
        })
        .collect();
    assert_eq!(
        warned,
        [
            (
                json!(first.id.to_string()),
                json!(10),
                json!("dana's read on demo-db (prod) ends in 10 minutes, at 2026-11-23 10:30 UTC")
            ),
            (
                json!(second.id.to_string()),
                json!(10),
                json!("dana's read on demo-db (prod) ends in 10 minutes, at 2026-11-23 10:35 UTC")
            ),
        ]
    );
}

#[tokio::test]
async fn breakglass_and_incident_records_are_read_tolerantly() {
    let hook = Receiver::start(HOOK_PATH, |_| 200).await;
    let app = spawn(&[channel("hook", "json", &hook.url), route("hook", "")].concat(), FAST).await;
    let used = json!({
        "request": {"id": "r-9", "requester": "dana", "resource": "demo-db", "role": "write", "reason": "orders down"},
        "grant": {"id": "g-9", "request_id": "r-9", "holder": "dana", "resource": "demo-db", "role": "write",
                  "starts_at": "2026-11-23T10:00:00Z", "ends_at": "2026-11-23T11:00:00Z"},
        "review": {"id": "rv-9", "due_at": "2026-11-24T10:00:00Z"},
    });
    let overdue = json!({"review": {"id": "rv-9", "grant": "g-9", "holder": "dana", "resource": "demo-db"}});
    let record = |kind, details| AuditEvent { kind, actor: "dana".into(), at: T0, details };
    app.broker
        .record(&[
            record(EventKind::BreakGlassUsed, used),
            record(EventKind::BreakGlassReviewOverdue, overdue),
            // Shapes nobody planned for: whatever can be read is, the rest is left out.
            record(EventKind::IncidentClosed, json!({"incident": "not an object"})),
            record(EventKind::IncidentOpened, json!({"incident": {"id": 7, "responders": ["bob", 3, {"x": 1}]}})),
        ])
        .await
        .unwrap();
    app.finish().await;

    let documents: Vec<Value> = hook.received().iter().map(body).collect();
    let summaries: Vec<&str> = documents.iter().map(|d| d["summary"].as_str().unwrap()).collect();
    assert_eq!(
        summaries,
        [
            "Break-glass: dana took write on demo-db (prod) until 2026-11-23 11:00 UTC, without review",
            "Break-glass review overdue: dana's access to demo-db (prod) is still unreviewed",
            "Incident closed",
            "Incident opened",
        ]
    );
    assert_eq!(documents[0]["subject"], json!({"request": "r-9", "grant": "g-9", "review": "rv-9"}));
    assert_eq!(documents[0]["review_due_at"], "2026-11-24T10:00:00Z");
    assert_eq!(documents[0]["link"], "https://airlock.example.com/v1/requests/r-9");
    assert_eq!(documents[2]["subject"], json!({}));
    assert_eq!(
        (&documents[3]["subject"], &documents[3]["responders"]),
        (&json!({"incident": "7"}), &json!(["bob", "3"]))
    );
}

/// A real break-glass approves its request with nobody's approval: the decision says how.
#[tokio::test]
async fn a_break_glass_is_told_as_break_glass_not_as_somebody_s_approval() {
    let hook = Receiver::start(HOOK_PATH, |_| 200).await;
    let app = spawn(&[channel("hook", "json", &hook.url), route("hook", "")].concat(), FAST).await;
    let emergency = BreakGlassInput {
        resource: "demo-db".parse().unwrap(),
        role: "write".parse().unwrap(),
        duration: None,
        reason: Reason::parse("INC-77: orders table locked").unwrap(),
        incident: None,
    };
    app.broker.break_glass(&dana(), emergency).await.unwrap();
    app.finish().await;

    let documents: Vec<Value> = hook.received().iter().map(body).collect();
    let kinds: Vec<&str> = documents.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["request_decided", "grant_started", "breakglass_used"], "no review is asked for");
    assert_eq!(
        documents[0]["summary"],
        "dana's request for write on demo-db (prod) was granted at once by break-glass; its review is owed"
    );
}

/// Secret files are read relative to the config; a missing one stops notifications from starting
/// with an error that names the channel and the file, never the secret or the URL.
#[tokio::test]
async fn channels_that_cannot_be_resolved_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("airlock.toml");
    let catalog: PathBuf = dir.path().join("catalog.toml");
    std::fs::write(&catalog, CATALOG).unwrap();
    let check = |notify: &str, key: Option<&str>| -> String {
        let path: &Path = &config_path;
        std::fs::write(path, format!("[policy]\ncatalog = \"catalog.toml\"\n{notify}")).unwrap();
        match key {
            Some(key) => std::fs::write(dir.path().join("notify.key"), key).unwrap(),
            None => {
                let _ = std::fs::remove_file(dir.path().join("notify.key"));
            }
        }
        let config = Config::load(path).unwrap();
        let catalog = airlock_core::catalog::Catalog::parse(CATALOG).unwrap();
        match Notifier::from_config(&config.notify, &catalog) {
            Ok(_) => "started".to_owned(),
            Err(error) => error.to_string(),
        }
    };
    let url = format!("http://127.0.0.1:9{HOOK_PATH}");
    let hook = channel("hook", "json", &url);
    assert_eq!(check(&[hook.clone(), route("hook", "")].concat(), Some(SECRET)), "started");
    let missing = check(&[hook.clone(), route("hook", "")].concat(), None);
    assert!(missing.starts_with("[notify] channel `hook`: cannot read secret_file"), "{missing}");
    assert!(missing.contains("notify.key"), "{missing}");
    assert_eq!(
        check(&[hook.clone(), route("hook", "")].concat(), Some("short\n")),
        "[notify] channel `hook`: the secret (secret_file) must be at least 16 bytes"
    );
    assert_eq!(
        check(&[hook.clone(), route("hook", "resources = [\"prod-db\"]")].concat(), Some(SECRET)),
        "[notify] the route to `hook` names resource `prod-db`, which is not in the catalog"
    );
    assert_eq!(
        check(&[hook.clone(), route("hook", "environments = [\"qa\"]")].concat(), Some(SECRET)),
        "[notify] the route to `hook` names environment `qa`, which no resource is in"
    );
    // PATH is set in every test run, and holds no URL: its value must not be shown.
    let from_path =
        "[[notify.channel]]\nname = \"hook\"\nformat = \"json\"\nurl_env = \"PATH\"\nsecret_file = \"notify.key\"\n";
    assert_eq!(
        check(&[from_path, &route("hook", "")].concat(), Some(SECRET)),
        "[notify] channel `hook`: environment variable `PATH` (url_env) does not hold an http:// or https:// URL"
    );
    let unset = "[[notify.channel]]\nname = \"hook\"\nformat = \"json\"\nurl_env = \"AIRLOCK_TEST_UNSET_5e1a\"\nsecret_file = \"notify.key\"\n";
    assert_eq!(
        check(&[unset, &route("hook", "")].concat(), Some(SECRET)),
        "[notify] channel `hook`: cannot read url_env: environment variable `AIRLOCK_TEST_UNSET_5e1a` is not set or not UTF-8"
    );
}
