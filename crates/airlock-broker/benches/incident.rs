//! Closing an incident: how long the one commit that revokes every grant made for it takes, against
//! revoking the same number of grants one by one, in the same run (the machine is shared and
//! noisy, so the ratio is the figure to read).
//!
//! `cargo bench -p airlock-broker --bench incident`. The broker runs in-process on a SQLite store
//! in a temporary directory (`synchronous=FULL`), with the quickstart's policies and playbook:
//! every grant is a responder's `write` approved at once by the playbook.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_broker::broker::{RequestInput, Settings};
use airlock_broker::bundle::PolicyBundle;
use airlock_broker::clock::SystemClock;
use airlock_broker::config::Config;
use airlock_broker::secrets::load_or_create_key;
use airlock_broker::{Broker, Caller};
use airlock_core::incident::{NewIncident, Severity, Title};
use airlock_core::values::{GrantDuration, Reason};
use airlock_store::Store;

async fn broker(dir: &std::path::Path) -> Broker {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart/airlock.toml"));
    let config = Config::load(&path).expect("the quickstart config loads");
    let bundle = PolicyBundle::load(&config.policy).expect("the quickstart bundle loads");
    let store = Store::open(dir).await.expect("the store opens");
    Broker::new(store, bundle, Arc::new(SystemClock), Settings::from(&config), load_or_create_key(dir).unwrap())
}

fn caller(name: &str, groups: &[&str]) -> Caller {
    airlock_testkit::caller_from(name, groups, [10, 0, 0, 7].into())
}

/// `n` live grants made for incident `id` (opened here), one per on-call responder.
async fn grants_for(broker: &Broker, id: &str, n: usize) -> Vec<String> {
    let manager = caller("bob", &["sre"]);
    let incident = NewIncident {
        id: id.parse().unwrap(),
        severity: Severity::new(0).unwrap(),
        title: Title::parse("bench").unwrap(),
        responders: Vec::new(),
    };
    broker.open_incident(&manager, incident).await.unwrap();
    let mut grants = Vec::with_capacity(n);
    for i in 0..n {
        let input = RequestInput {
            resource: "demo-db".parse().unwrap(),
            role: "write".parse().unwrap(),
            duration: GrantDuration::parse("20m").unwrap(),
            reason: Reason::parse("bench").unwrap(),
            incident: Some(id.parse().unwrap()),
        };
        let responder = caller(&format!("{id}-oncall{i}"), &["oncall"]);
        let (_, grant) = broker.create_request(&responder, input).await.unwrap();
        grants.push(grant.expect("the playbook approves at once").id.to_string());
    }
    grants
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let manager = caller("bob", &["sre"]);
    println!("| grants | close incident ms | per grant µs | one-by-one revokes ms | one-by-one ÷ close |");
    println!("|---:|---:|---:|---:|---:|");
    for n in [10, 100, 1000] {
        grants_for(&broker, &format!("CLOSE-{n}"), n).await;
        let started = Instant::now();
        let closed = broker.close_incident(&manager, &format!("CLOSE-{n}")).await.unwrap();
        let close = started.elapsed();
        assert_eq!(closed.grants_revoked, n);

        let singles = grants_for(&broker, &format!("SINGLE-{n}"), n).await;
        let started = Instant::now();
        for grant in &singles {
            broker.revoke(&manager, grant, Reason::parse("bench").unwrap()).await.unwrap();
        }
        let one_by_one = started.elapsed();
        println!(
            "| {n} | {:.1} | {:.0} | {:.1} | {:.1}× |",
            ms(close),
            close.as_secs_f64() * 1e6 / n as f64,
            ms(one_by_one),
            one_by_one.as_secs_f64() / close.as_secs_f64()
        );
    }
}
