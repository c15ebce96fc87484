//! The audit chain for auditors: signed checkpoints, their sinks, exports verified offline, and
//! a rewrite of the whole table caught. A real SQLite store in a temporary directory; the
//! webhook sink's receiver is a bare HTTP listener on loopback (`common`: it stands for a
//! service elsewhere). Background work is awaited by polling with an overall timeout.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use airlock_broker::checkpoints::{self, CheckpointSettings, Sink};
use airlock_broker::clock::{Clock, ManualClock};
use airlock_broker::{Broker, BrokerError};
use airlock_core::audit::checkpoint::Checkpoint;
use airlock_core::audit::export::{Line, Report, Verifier};
use airlock_core::audit::redaction::{RedactionRules, markers};
use airlock_core::audit::{AuditEvent, EventKind};
use airlock_store::{BROKER_CHAIN, Store};
use serde_json::json;
use time::macros::datetime;
use tokio::sync::watch;

use crate::common::{Receiver, caller, eventually, quickstart_broker};

async fn broker(dir: &Path) -> Broker {
    broker_redacting(dir, RedactionRules::new(&[], &[]).unwrap()).await
}

async fn broker_redacting(dir: &Path, rules: RedactionRules) -> Broker {
    let mut store = Store::open(dir).await.expect("the store opens");
    store.set_redaction(rules);
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-23 10:00 UTC)));
    quickstart_broker(store, dir, clock)
}

/// Appends `n` records (users added).
async fn records(broker: &Broker, from: usize, n: usize) {
    for i in from..from + n {
        broker.add_user(&format!("user{i}").parse().unwrap(), &[], false, "test").await.unwrap();
    }
}

async fn export(broker: &Broker, since: Option<time::OffsetDateTime>) -> Vec<String> {
    let mut export = broker.audit_export(&caller("bob", &["sre"]), since, None).await.unwrap();
    let mut text = String::new();
    while let Some(lines) = export.next_lines().await.unwrap() {
        text.push_str(&lines);
    }
    text.lines().map(str::to_owned).collect()
}

fn verify(broker: &Broker, lines: &[String], sink: Vec<Checkpoint>) -> Report {
    let mut verifier = Verifier::new(broker.key().public_key(), sink);
    for (i, line) in lines.iter().enumerate() {
        verifier.line(i as u64 + 1, line);
    }
    verifier.finish(true)
}

fn problems(report: &Report) -> Vec<String> {
    report.failures.iter().map(ToString::to_string).collect()
}

fn sink_lines(path: &Path) -> Vec<Checkpoint> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| match serde_json::from_str::<Line<'_>>(line).unwrap() {
            Line::Checkpoint(checkpoint) => checkpoint,
            other => panic!("not a checkpoint: {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn checkpoints_sign_the_head_once_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    assert_eq!(broker.checkpoint().await.unwrap(), None, "nothing to sign on an empty chain");
    records(&broker, 0, 3).await;
    let first = broker.checkpoint().await.unwrap().expect("a checkpoint of the head");
    assert_eq!(first.seq, 3);
    assert_eq!(first.verify(&broker.key().public_key()), Ok(()));
    assert_eq!(broker.checkpoint().await.unwrap(), None, "the head is already signed");
    records(&broker, 3, 2).await;
    assert_eq!(broker.checkpoint().await.unwrap().map(|c| c.seq), Some(5));

    let report = broker.verify_chain().await.unwrap();
    assert!(report.intact(), "{:?}", problems(&report));
    assert_eq!((report.records, report.checkpoints), (5, 2));
}

#[tokio::test]
async fn exports_are_for_auditors_and_verify_offline() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    records(&broker, 0, 5).await;
    broker.checkpoint().await.unwrap();
    records(&broker, 5, 5).await;

    let refused = broker.audit_export(&caller("alice", &["eng"]), None, None).await;
    assert!(matches!(refused, Err(BrokerError::AuditForbidden)));

    let lines = export(&broker, None).await;
    assert_eq!(lines.len(), 10 + 1 + 1, "records, one checkpoint, the seal");
    assert!(lines[5].starts_with("{\"checkpoint\":"), "the checkpoint follows record 5: {}", lines[5]);
    let report = verify(&broker, &lines, Vec::new());
    assert!(report.intact(), "{:?}", problems(&report));
    assert_eq!((report.records, report.checkpoints, report.head.unwrap().seq), (10, 1, 10));

    // Every record is stamped with the manual clock's time, so `since` after it leaves none.
    let empty = export(&broker, Some(datetime!(2026-11-24 00:00 UTC))).await;
    assert_eq!(empty.len(), 1, "only the seal: {empty:?}");
    assert!(verify(&broker, &empty, Vec::new()).intact());
}

#[tokio::test]
async fn a_rewrite_of_the_whole_table_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    records(&broker, 0, 4).await;
    let signed = broker.checkpoint().await.unwrap().unwrap();

    // Behind the broker's back: drop the guards and write a whole new chain with valid hashes.
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("airlock.db"));
    let raw = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let forged = (0..4).map(|i| {
        let event = AuditEvent {
            kind: EventKind::UserAdded,
            actor: "test".into(),
            at: datetime!(2026-11-23 10:00 UTC),
            details: json!({"user": format!("someone-else{i}")}),
        };
        (BROKER_CHAIN.to_owned(), event)
    });
    let head = airlock_testkit::rewrite_chain(&raw, forged).await;
    raw.close().await;

    let report = broker.verify_chain().await.unwrap();
    assert_eq!(
        problems(&report),
        [format!(
            "record 4: the checkpoint signed at record 4 names hash {}, but the record's hash is {} (records rewritten)",
            signed.head_hash, head.hash
        )]
    );
    let lines = export(&broker, None).await;
    assert!(!verify(&broker, &lines, Vec::new()).intact());
}

#[tokio::test]
async fn configured_fields_and_patterns_are_redacted_before_chaining_and_can_be_proven() {
    let dir = tempfile::tempdir().unwrap();
    let rules = RedactionRules::new(&["api_key".into()], &[r"\b\d{16}\b".into()]).unwrap();
    let broker = broker_redacting(dir.path(), rules).await;
    let event = AuditEvent {
        kind: EventKind::SessionStarted,
        actor: "alice".into(),
        at: datetime!(2026-11-23 10:00 UTC),
        details: json!({"api_key": "k-123", "note": "paid with 4111111111111111"}),
    };
    broker.record(&[event]).await.unwrap();
    let record = broker.store().audit_chain(BROKER_CHAIN).await.unwrap().pop().unwrap();
    assert!(!record.details.contains("k-123") && !record.details.contains("4111111111111111"), "{}", record.details);
    let commitments: Vec<&str> = markers(&record.details).collect();
    assert_eq!(commitments.len(), 2, "{}", record.details);
    assert!(broker.verify_chain().await.unwrap().intact());
    let auditor = caller("bob", &["sre"]);
    let proven = [
        broker.audit_prove(&auditor, commitments[0], "k-123").await.unwrap(),
        broker.audit_prove(&auditor, commitments[1], "4111111111111111").await.unwrap(),
        broker.audit_prove(&auditor, commitments[1], "4111111111111112").await.unwrap(),
    ];
    assert_eq!(proven, [true, true, false]);
}

#[tokio::test]
async fn the_checkpointer_feeds_its_sinks_and_signs_the_head_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let sink = dir.path().join("elsewhere").join("checkpoints.jsonl");
    std::fs::create_dir_all(sink.parent().unwrap()).unwrap();
    // The webhook refuses the first delivery (HTTP 500) and takes every later one.
    let webhook = Receiver::start("/checkpoints", |n| if n == 0 { 500 } else { 200 }).await;
    let settings = CheckpointSettings {
        every: Duration::from_secs(3600),
        every_records: 3,
        sinks: vec![Sink::File(sink.clone()), Sink::Webhook(webhook.url.clone())],
    };
    let (stop, stopped) = watch::channel(false);
    let checkpointer = tokio::spawn(checkpoints::run(broker.clone(), settings, stopped));

    // Three records, and no tick for an hour: the count alone brings a checkpoint.
    records(&broker, 0, 3).await;
    eventually("a checkpoint in the file sink", async || sink_lines(&sink).iter().any(|c| c.seq == 3)).await;
    records(&broker, 3, 1).await;
    stop.send(true).unwrap();
    checkpointer.await.unwrap();

    let kept = sink_lines(&sink);
    assert_eq!(kept.last().map(|c| c.seq), Some(4), "the head at shutdown is signed and copied");
    let lines = export(&broker, None).await;
    let report = verify(&broker, &lines, kept);
    assert!(report.intact(), "{:?}", problems(&report));
    assert_eq!(report.sink_checkpoints, 2);

    // The webhook refused the first delivery (HTTP 500); a retry brought it the newest checkpoint,
    // which vouches for everything before it.
    let accepted: Vec<_> = webhook.received().into_iter().filter(|request| request.status == 200).collect();
    assert!(accepted.iter().all(|request| request.headers["content-type"] == "application/json"), "{accepted:?}");
    let posted: Vec<i64> = accepted
        .into_iter()
        .map(|request| match serde_json::from_str::<Line<'_>>(&request.body).unwrap() {
            Line::Checkpoint(checkpoint) => checkpoint.seq,
            other => panic!("not a checkpoint: {other:?}"),
        })
        .collect();
    assert_eq!(posted.last(), Some(&4), "{posted:?}");
}

/// Honest time: a record's time is when it was appended (the broker's clock at the append),
/// never before the record it follows, even for a gateway's record retried an hour late or a
/// clock stepped back; the event's own time is in its details (`event_at`). Every record is in
/// the hash, and the chain and its export verify.
#[tokio::test]
async fn records_are_timed_when_appended_and_never_go_back_with_their_event_time_beside_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let t0 = datetime!(2026-11-23 10:00 UTC);
    let clock = Arc::new(ManualClock::new(t0));
    let broker = quickstart_broker(store, dir.path(), clock.clone());
    let statement = |at| AuditEvent {
        kind: EventKind::StatementExecuted,
        actor: "alice".into(),
        at,
        details: json!({"session": "s-1", "statement": "SELECT 1"}),
    };

    records(&broker, 0, 1).await;
    clock.advance(time::Duration::minutes(1));
    // A gateway's batch that could not be recorded for an hour (the broker was unreachable).
    broker
        .record(&[statement(t0 - time::Duration::hours(1)), statement(t0 - time::Duration::minutes(59))])
        .await
        .unwrap();
    // The system clock steps back ten minutes (NTP): records keep going forward.
    clock.advance(time::Duration::minutes(-10));
    broker.record(&[statement(clock.now())]).await.unwrap();
    records(&broker, 1, 1).await;
    clock.advance(time::Duration::minutes(20));
    records(&broker, 2, 1).await;

    let chain = broker.store().audit_chain(BROKER_CHAIN).await.unwrap();
    let at = |ms: i64| airlock_core::audit::time_of_ms(ms);
    let times: Vec<_> = chain.iter().map(|record| (record.kind.as_str(), at(record.at_ms))).collect();
    let minute = |m: i64| t0 + time::Duration::minutes(m);
    assert_eq!(
        times,
        [
            ("user.added", minute(0)),
            ("statement.executed", minute(1)),
            ("statement.executed", minute(1)),
            ("statement.executed", minute(1)),
            ("user.added", minute(1)),
            ("user.added", minute(11)),
        ],
        "appended at the clock's time, never before the record before"
    );
    assert!(chain.windows(2).all(|pair| pair[0].at_ms <= pair[1].at_ms), "times never go backwards");
    let event_at = |seq: usize| {
        let details: serde_json::Value = serde_json::from_str(&chain[seq].details).unwrap();
        details["event_at"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        [event_at(0), event_at(1), event_at(2), event_at(3), event_at(4)],
        [
            "2026-11-23T10:00:00Z",
            "2026-11-23T09:00:00Z",
            "2026-11-23T09:01:00Z",
            "2026-11-23T09:51:00Z",
            "2026-11-23T09:51:00Z"
        ],
        "the event's own time beside the record's"
    );

    let report = verify(&broker, &export(&broker, None).await, Vec::new());
    assert!(report.intact(), "{:?}", problems(&report));
    assert_eq!(report.records, 6);
}
