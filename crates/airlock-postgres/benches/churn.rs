//! The connector under grant churn: `cargo bench -p airlock-postgres --bench churn`.
//!
//! A throwaway cluster ([`airlock_testkit::managed_database`]), a broker on the system clock with
//! its expiry scheduler, and the reconciler, laid out as `airlock serve` runs them. For
//! `AIRLOCK_CHURN_SECONDS` (60) the bench starts `AIRLOCK_CHURN_RATE` (500) grants a second, each
//! of `AIRLOCK_CHURN_GRANT_SECONDS` (5): dana's `read` on `demo-db`, approved at once by the
//! quickstart policies. Requests are made on a fixed schedule, up to 64 at a time, so a slow
//! store shows as a lower achieved rate rather than as a backlog.
//!
//! When the last grant has ended and every grant role is gone (or after two minutes), it reads
//! the audit chain and prints, per grant:
//! - **ready**: from the grant's start to the connector's `target.role_created` record about it
//!   (the record is made once the role is committed, so this is an upper bound);
//! - **dropped**: from the grant's end to its `target.role_dropped` record;
//! - grants that **never got a role**, and roles **created after their grant's end** (their
//!   `target.role_created` at or after the grant's end; must be 0).
//!
//! Percentiles are nearest-rank over the grants that have the record. The connector's
//! [`Tuning`] can be changed to see what matters: `AIRLOCK_CHURN_CREATING` (4 batches created at
//! once), `AIRLOCK_CHURN_DROPPING` (3), `AIRLOCK_CHURN_BATCH` (32 roles per transaction) and
//! `AIRLOCK_CHURN_IDLE` (8 connections kept open; 0 opens one for each piece of work). A quick run:
//! `AIRLOCK_CHURN_SECONDS=10 AIRLOCK_CHURN_RATE=100 cargo bench -p airlock-postgres --bench churn`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_broker::broker::RequestInput;
use airlock_broker::clock::{Clock, SystemClock};
use airlock_core::audit::unix_ms;
use airlock_core::values::{GrantDuration, Reason};
use airlock_postgres::reconciler::{Reconciler, Target, Tuning};
use airlock_postgres::roles::RoleKey;
use airlock_testkit::caller;
use tokio::sync::{Semaphore, watch};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let rate = setting("AIRLOCK_CHURN_RATE", 500);
    let grant_seconds = setting("AIRLOCK_CHURN_GRANT_SECONDS", 5);
    let seconds = setting("AIRLOCK_CHURN_SECONDS", 60);

    let dir = tempfile::tempdir().expect("a temporary directory");
    let (cluster, catalog) = airlock_testkit::managed_database(dir.path()).await;
    let broker = airlock_testkit::broker(dir.path(), &catalog, Arc::new(SystemClock) as Arc<dyn Clock>).await;
    let targets = Target::from_catalog(&broker.policies().catalog).expect("the target");
    let (stop, stopped) = watch::channel(false);
    let scheduler = tokio::spawn(airlock_broker::scheduler::run(broker.clone(), stopped.clone()));
    let default = Tuning::default();
    let tuning = Tuning {
        creating: setting("AIRLOCK_CHURN_CREATING", default.creating as u64) as usize,
        dropping: setting("AIRLOCK_CHURN_DROPPING", default.dropping as u64) as usize,
        batch: setting("AIRLOCK_CHURN_BATCH", default.batch as u64) as usize,
        idle: setting("AIRLOCK_CHURN_IDLE", default.idle as u64) as usize,
    };
    let every = Reconciler::DEFAULT_EVERY;
    let reconciler = Reconciler::tuned(broker.clone(), targets, RoleKey::new([9; 32]), every, tuning);
    let connector = tokio::spawn(reconciler.run(stopped));

    println!("churn: {rate} grants/s of {grant_seconds} s each for {seconds} s; {tuning:?}");
    let total = rate * seconds;
    let permits = Arc::new(Semaphore::new(64));
    let began = Instant::now();
    let mut requests = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = began + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = permits.clone().acquire_owned().await.expect("the semaphore stays open");
        let broker = broker.clone();
        requests.push(tokio::spawn(async move {
            let input = RequestInput {
                resource: "demo-db".parse().unwrap(),
                role: "read".parse().unwrap(),
                duration: GrantDuration::from_secs(grant_seconds).unwrap(),
                reason: Reason::parse("churn bench").unwrap(),
                incident: None,
            };
            let made = broker.create_request(&caller("dana", &["eng", "oncall"]), input).await;
            drop(permit);
            made.expect("the request is made").1.expect("oncall read is approved at once")
        }));
    }
    let mut grants = Vec::with_capacity(requests.len());
    for request in requests {
        grants.push(request.await.expect("the request task"));
    }
    let made_in = began.elapsed();
    println!(
        "made {} grants in {:.1} s ({:.0}/s)",
        grants.len(),
        made_in.as_secs_f64(),
        grants.len() as f64 / made_in.as_secs_f64()
    );

    // Wait for the last grant to end and for every grant role to be gone.
    let superuser = cluster.connect("postgres").await.expect("the superuser connects");
    let last_end = grants.iter().map(|g| g.ends_at).max().expect("at least one grant");
    let give_up = Instant::now() + Duration::from_secs(grant_seconds + 120);
    loop {
        let left: i64 = superuser
            .query_one("SELECT count(*) FROM pg_roles WHERE rolname ~ '^airlock_[0-9a-f]{32}$'", &[])
            .await
            .expect("counting grant roles")
            .get(0);
        if left == 0 && time::OffsetDateTime::now_utc() > last_end {
            break;
        }
        if Instant::now() > give_up {
            println!("gave up waiting: {left} grant role(s) still on the database");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(true).expect("the connector listens");
    let _ = tokio::join!(connector, scheduler);

    let records = broker.store().audit_chain(airlock_store::BROKER_CHAIN).await.expect("the chain");
    let mut created: HashMap<String, i64> = HashMap::new();
    let mut dropped: HashMap<String, i64> = HashMap::new();
    for record in &records {
        let into = match record.kind.as_str() {
            "target.role_created" => &mut created,
            "target.role_dropped" => &mut dropped,
            _ => continue,
        };
        let details: serde_json::Value = serde_json::from_str(&record.details).expect("details are JSON");
        if let Some(grant) = details["grant"].as_str() {
            into.entry(grant.to_owned()).or_insert(record.at_ms);
        }
    }
    let (mut ready, mut gone, mut never, mut late) = (Vec::new(), Vec::new(), 0, 0);
    for grant in &grants {
        let id = grant.id.to_string();
        let Some(&at) = created.get(&id) else {
            never += 1;
            continue;
        };
        ready.push(at - unix_ms(grant.starts_at));
        if at >= unix_ms(grant.ends_at) {
            late += 1;
        }
        if let Some(&at) = dropped.get(&id) {
            gone.push(at - unix_ms(grant.ends_at));
        }
    }
    println!("role ready after the grant's start: {}", summary(&mut ready));
    println!("role dropped after the grant's end: {}", summary(&mut gone));
    println!("roles created: {}, dropped: {}", created.len(), dropped.len());
    println!("grants that never got a role: {never}");
    println!("roles created after their grant's end: {late}");
    let failed = records.iter().filter(|r| r.kind == "target.failed").count();
    println!("target.failed records: {failed}");
}

/// p50, p99 and the maximum of `values` (milliseconds), nearest-rank.
fn summary(values: &mut [i64]) -> String {
    if values.is_empty() {
        return "none".to_owned();
    }
    values.sort_unstable();
    let rank = |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    format!("p50 {} ms, p99 {} ms, max {} ms (n = {})", rank(0.50), rank(0.99), values[values.len() - 1], values.len())
}
