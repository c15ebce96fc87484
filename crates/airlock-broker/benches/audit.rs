//! Audit throughput: durable appends (SQLite, `synchronous=FULL`: each commit is on disk before
//! the caller hears back) and offline verification of an export.
//!
//! `cargo bench -p airlock-broker --bench audit`; `AIRLOCK_BENCH_EVENTS` sets how many events
//! each append run writes (default 50,000), `AIRLOCK_BENCH_VERIFY` how many records the
//! verification run checks (default 1,000,000). Every figure is measured in the same run, so the
//! ratios hold on a noisy machine:
//! - appends one at a time by one caller (one disk sync per event: no group commit possible);
//! - appends one event per call by 256 concurrent callers (group commit gathers them);
//! - appends in batches of 1,000 (what a gateway's recorder sends);
//! - verification of an export, single thread, against SHA-256 alone over the same records.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use airlock_broker::Broker;
use airlock_broker::broker::Settings;
use airlock_broker::bundle::PolicyBundle;
use airlock_broker::clock::SystemClock;
use airlock_broker::config::PolicySection;
use airlock_broker::secrets::load_or_create_key;
use airlock_core::audit::checkpoint::{Checkpoint, Seal, SealContents};
use airlock_core::audit::export::{Line, RecordLine, Verifier};
use airlock_core::audit::{AuditEvent, ChainHead, EventKind, chain};
use airlock_core::values::GrantDuration;
use airlock_store::Store;
use ed25519_dalek::SigningKey;
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A statement event as the gateway records it.
fn statement(i: usize) -> AuditEvent {
    AuditEvent {
        kind: EventKind::StatementExecuted,
        actor: "alice".into(),
        at: OffsetDateTime::now_utc(),
        details: json!({
            "grant": "0197a8f3-6a3e-7c3d-9a51-2f0d5b8c4e11",
            "session": "0197a8f3-7b2e-7d4c-8e1a-3c5d7f9a1b22",
            "resource": "orders-db",
            "role": "read",
            "statement": format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i}"),
            "parameters": 0,
            "duration_us": 412,
            "rows": 1,
        }),
    }
}

async fn broker(dir: &std::path::Path) -> Broker {
    let base = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart"));
    let bundle = PolicyBundle::load(&PolicySection {
        catalog: base.join("catalog.toml"),
        policies: base.join("policies"),
        tests: base.join("policy-tests"),
    })
    .expect("the quickstart bundle loads");
    let store = Store::open(dir).await.expect("the store opens");
    let settings = Settings {
        pending_ttl: GrantDuration::parse("1h").unwrap(),
        auditors: Vec::new(),
        breakglass: Default::default(),
        incidents: Default::default(),
        identity: Default::default(),
        mfa: Default::default(),
    };
    Broker::new(store, bundle, Arc::new(SystemClock), settings, load_or_create_key(dir).unwrap())
}

/// Whether the store keeps the index reports find a grant's records by (migration 0004).
#[derive(Clone, Copy, PartialEq)]
enum ReportIndex {
    Kept,
    Dropped,
}

/// Events per second for `events` events appended by `callers` concurrent callers, each call
/// carrying `per_call` events.
async fn appends(events: usize, callers: usize, per_call: usize, index: ReportIndex) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    if index == ReportIndex::Dropped {
        let file = dir.path().join("airlock.db");
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", file.display())).await.unwrap();
        sqlx::query("DROP INDEX audit_events_by_grant").execute(&pool).await.unwrap();
    }
    let calls_each = events / callers / per_call;
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let broker = broker.clone();
            tokio::spawn(async move {
                for call in 0..calls_each {
                    let batch: Vec<AuditEvent> =
                        (0..per_call).map(|i| statement((c * calls_each + call) * per_call + i)).collect();
                    broker.record(&batch).await.expect("appended");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let written = callers * calls_each * per_call;
    let report = broker.verify_chain().await.unwrap();
    assert!(report.intact() && report.records == written as i64, "every event is in an intact chain");
    written as f64 / elapsed.as_secs_f64()
}

/// Verifies an export of `n` records; returns (records per second, SHA-256-only records per second).
fn verification(n: usize) -> (f64, f64) {
    let keypair = SigningKey::from_bytes(&[7; 32]).to_keypair_bytes();
    let public: [u8; 32] = keypair[32..].try_into().unwrap();
    let mut head = ChainHead::genesis();
    let mut text = String::with_capacity(n * 600);
    for i in 0..n {
        let record = chain(&head, "broker", &statement(i));
        text.push_str(&Line::Event(RecordLine::of(&record)).to_json());
        text.push('\n');
        head = ChainHead { seq: record.seq, hash: record.hash.clone() };
        if i % 10_000 == 9_999 {
            let checkpoint = Checkpoint::sign(&keypair, "broker", head.seq, &head.hash, 0).unwrap();
            text.push_str(&Line::Checkpoint(checkpoint).to_json());
            text.push('\n');
        }
    }
    let contents = SealContents {
        chain_id: "broker",
        first_seq: 1,
        last_seq: head.seq,
        last_hash: &head.hash,
        records: n as i64,
        to_head: true,
        at_ms: 0,
    };
    text.push_str(&Line::Seal(Seal::sign(&keypair, &contents).unwrap()).to_json());

    let started = Instant::now();
    let mut verifier = Verifier::new(public, Vec::new());
    for (number, line) in text.lines().enumerate() {
        verifier.line(number as u64 + 1, line);
    }
    let report = verifier.finish(true);
    let verify = started.elapsed();
    assert!(report.intact() && report.records == n as i64, "the export verifies");

    let started = Instant::now();
    let mut digest = [0u8; 32];
    for line in text.lines() {
        digest = Sha256::new().chain_update(digest).chain_update(line.as_bytes()).finalize().into();
    }
    let hash_only = started.elapsed();
    std::hint::black_box(digest);
    (n as f64 / verify.as_secs_f64(), n as f64 / hash_only.as_secs_f64())
}

fn per_second(rate: f64) -> String {
    format!("{:>10.0}/s", rate)
}

#[tokio::main]
async fn main() {
    let events = setting("AIRLOCK_BENCH_EVENTS", 50_000);
    let records = setting("AIRLOCK_BENCH_VERIFY", 1_000_000);
    println!("durable audit appends, {events} events each (SQLite WAL, synchronous=FULL)");
    let single = appends(events / 10, 1, 1, ReportIndex::Kept).await;
    println!("  1 caller, 1 event per call       {}", per_second(single));
    let grouped = appends(events, 256, 1, ReportIndex::Kept).await;
    println!("  256 callers, 1 event per call    {}   {:.1}x the single caller", per_second(grouped), grouped / single);
    let batched = appends(events, 1, 1_000, ReportIndex::Kept).await;
    println!("  1 caller, 1,000 events per call  {}   {:.1}x the single caller", per_second(batched), batched / single);
    let unindexed = appends(events, 1, 1_000, ReportIndex::Dropped).await;
    println!(
        "  the same without the report index {}  the index costs {:.0}% of that rate",
        per_second(unindexed),
        100.0 * (1.0 - batched / unindexed)
    );

    let (verify, hash_only) = verification(records);
    println!("offline verification of {records} records, one thread");
    println!("  verify (parse, hash, link)       {}", per_second(verify));
    println!(
        "  SHA-256 over the same lines      {}   verification runs at {:.0}% of it",
        per_second(hash_only),
        100.0 * verify / hash_only
    );
}
