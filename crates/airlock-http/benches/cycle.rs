//! The broker's request → approve → grant cycle over HTTP, with 1 and 50 concurrent clients,
//! beside a bare authenticated HTTP round trip (`GET /v1/whoami`) measured in the same run.
//!
//! Run: `cargo bench -p airlock-http --bench cycle`
//!
//! Each cycle is two calls: alice opens a `read` request on `demo-db` (one approval needed),
//! bob approves it, which starts the grant. Both calls commit a SQLite transaction (WAL,
//! synchronous=NORMAL) with their audit records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_broker::Broker;
use airlock_broker::broker::Settings;
use airlock_broker::bundle::PolicyBundle;
use airlock_broker::clock::SystemClock;
use airlock_broker::config::Config;
use airlock_broker::secrets::load_or_create_key;
use airlock_http::AppState;
use airlock_http::api::{CreateRequest, RequestView};
use airlock_store::Store;

struct Stats {
    count: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn stats(mut latencies: Vec<Duration>, elapsed: Duration) -> Stats {
    latencies.sort();
    let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    Stats {
        count: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

async fn run<F, Fut>(clients: usize, per_client: usize, operation: F) -> Stats
where
    F: Fn(reqwest::Client) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let operation = operation.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut latencies = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let begun = Instant::now();
                    operation(http.clone()).await;
                    latencies.push(begun.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a client task"));
    }
    stats(all, start.elapsed())
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart/airlock.toml");
    let config = Config::load(config_path.as_ref()).expect("the quickstart config");
    let store = Store::open(dir.path()).await.expect("a store");
    let bundle = PolicyBundle::load(&config.policy).expect("the quickstart policies");
    let settings = Settings { pending_ttl: config.broker.pending_ttl, auditors: config.broker.auditors.clone() };
    let broker = Broker::new(store, bundle, Arc::new(SystemClock), settings);
    let alice = broker.add_user(&"alice".parse().unwrap(), &["eng".parse().unwrap()], false, "bench").await.unwrap();
    let bob = broker.add_user(&"bob".parse().unwrap(), &["sre".parse().unwrap()], false, "bench").await.unwrap();
    let key = Arc::new(load_or_create_key(dir.path()).expect("a key"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(airlock_http::serve(listener, AppState { broker, key }, std::future::pending()));

    let (alice, bob, base) = (Arc::new(alice), Arc::new(bob), Arc::new(base));
    let cycle = {
        let (alice, bob, base) = (alice.clone(), bob.clone(), base.clone());
        move |http: reqwest::Client| {
            let (alice, bob, base) = (alice.clone(), bob.clone(), base.clone());
            async move {
                let body = CreateRequest {
                    resource: "demo-db".into(),
                    role: "read".into(),
                    duration: "15m".into(),
                    reason: "benchmark".into(),
                };
                let request: RequestView = http
                    .post(format!("{base}/v1/requests"))
                    .bearer_auth(&*alice)
                    .json(&body)
                    .send()
                    .await
                    .expect("request sent")
                    .json()
                    .await
                    .expect("a request");
                let approved: RequestView = http
                    .post(format!("{base}/v1/requests/{}/approve", request.id))
                    .bearer_auth(&*bob)
                    .json(&serde_json::json!({}))
                    .send()
                    .await
                    .expect("approval sent")
                    .json()
                    .await
                    .expect("an approved request");
                assert!(approved.grant.is_some(), "the approval starts a grant");
            }
        }
    };
    let round_trip = {
        let (alice, base) = (alice.clone(), base.clone());
        move |http: reqwest::Client| {
            let (alice, base) = (alice.clone(), base.clone());
            async move {
                let status = http.get(format!("{base}/v1/whoami")).bearer_auth(&*alice).send().await.unwrap().status();
                assert!(status.is_success());
            }
        }
    };

    // Warm up connections and the SQLite cache.
    run(4, 50, cycle.clone()).await;

    println!("| workload | clients | operations | per second | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut results = Vec::new();
    for (name, clients, per_client) in
        [("whoami round trip", 50, 200), ("request→approve→grant", 1, 500), ("request→approve→grant", 50, 60)]
    {
        let stats = if name.starts_with("whoami") {
            run(clients, per_client, round_trip.clone()).await
        } else {
            run(clients, per_client, cycle.clone()).await
        };
        println!(
            "| {name} | {clients} | {} | {:.0} | {:.2} | {:.2} |",
            stats.count, stats.per_second, stats.p50_ms, stats.p99_ms
        );
        results.push(stats);
    }
    println!(
        "\ncycles per second, 50 clients / 1 client: {:.2}×; 50-client cycle rate vs whoami rate: {:.3}",
        results[2].per_second / results[1].per_second,
        results[2].per_second / results[0].per_second
    );
}
