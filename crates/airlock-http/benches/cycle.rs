//! The broker's request → approve → grant cycle over HTTP, beside a bare authenticated HTTP
//! round trip (`GET /v1/whoami`) measured in the same run.
//!
//! Two kinds of load. Closed loop: each client starts its next cycle when the last one ends, so
//! 50 clients find the broker's saturation rate (and, by Little's law, latency = 50 / rate
//! there). Paced: 50 clients each start cycles on a fixed schedule whose total is a share of
//! that saturation rate; latency is measured from the scheduled start, so a client that falls
//! behind counts its wait (no coordinated omission).
//!
//! Run: `cargo bench -p airlock-http --bench cycle`
//!
//! Each cycle is two calls: alice opens a `read` request on `demo-db` (one approval needed),
//! bob approves it, which starts the grant. Both calls commit a SQLite transaction (WAL,
//! synchronous=NORMAL) with their audit records. The client and the broker share the machine's
//! cores.

use std::future::Future;
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

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// How each client starts its operations.
#[derive(Clone, Copy)]
enum Pacing {
    /// The next as soon as the last one ends.
    ClosedLoop,
    /// One every interval, on a fixed schedule; the clients' phases are spread evenly.
    Every(Duration),
}

/// Runs `per_client` operations on each of `clients` concurrent clients. Paced, an operation
/// held up by the one before it counts from its scheduled start; one late only by the timer's
/// millisecond granularity does not (that lateness is the client's, not the broker's).
async fn run<F, Fut>(clients: usize, per_client: u32, pacing: Pacing, operation: F) -> Stats
where
    F: Fn(reqwest::Client) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let operation = operation.clone();
            tokio::spawn(async move {
                let http = airlock_broker::outbound::client(std::time::Duration::from_secs(30)).unwrap();
                let mut latencies = Vec::with_capacity(per_client as usize);
                let mut previous_done = start;
                for n in 0..per_client {
                    let from = match pacing {
                        Pacing::ClosedLoop => Instant::now(),
                        Pacing::Every(interval) => {
                            let scheduled = start + interval.mul_f64(client as f64 / clients as f64) + interval * n;
                            tokio::time::sleep_until(scheduled.into()).await;
                            if previous_done > scheduled { scheduled } else { Instant::now() }
                        }
                    };
                    operation(http.clone()).await;
                    previous_done = Instant::now();
                    latencies.push(previous_done - from);
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

/// `clients` together offering `rate` operations per second for `duration`.
async fn paced<F, Fut>(clients: usize, rate: f64, duration: Duration, operation: F) -> Stats
where
    F: Fn(reqwest::Client) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let interval = Duration::from_secs_f64(clients as f64 / rate);
    let per_client = (duration.as_secs_f64() / interval.as_secs_f64()).ceil() as u32;
    run(clients, per_client, Pacing::Every(interval), operation).await
}

fn row(name: &str, clients: usize, offered: &str, stats: &Stats) {
    println!(
        "| {name} | {clients} | {offered} | {} | {:.0} | {:.2} | {:.2} |",
        stats.count, stats.per_second, stats.p50_ms, stats.p99_ms
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart/airlock.toml");
    let config = Config::load(config_path.as_ref()).expect("the quickstart config");
    let store = Store::open(dir.path()).await.expect("a store");
    let bundle = PolicyBundle::load(&config.policy).expect("the quickstart policies");
    let settings = Settings::from(&config);
    let key = load_or_create_key(dir.path()).expect("a key");
    let broker = Broker::new(store, bundle, Arc::new(SystemClock), settings, key);
    let alice = broker.add_user(&"alice".parse().unwrap(), &["eng".parse().unwrap()], false, "bench").await.unwrap();
    let bob = broker.add_user(&"bob".parse().unwrap(), &["sre".parse().unwrap()], false, "bench").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(airlock_http::serve(
        listener,
        AppState { broker, gateway: None, metrics: None, sso: None },
        std::future::pending(),
    ));

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
                    incident: None,
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
    run(4, 50, Pacing::ClosedLoop, cycle.clone()).await;

    println!("| workload | clients | offered per second | operations | done per second | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let whoami = run(50, 200, Pacing::ClosedLoop, round_trip).await;
    row("whoami round trip, closed loop", 50, "-", &whoami);
    let single = run(1, 500, Pacing::ClosedLoop, cycle.clone()).await;
    row("request→approve→grant, closed loop", 1, "-", &single);
    let saturated = run(50, 60, Pacing::ClosedLoop, cycle.clone()).await;
    row("request→approve→grant, closed loop", 50, "-", &saturated);
    for share in [0.1, 0.25, 0.5] {
        let rate = saturated.per_second * share;
        let stats = paced(50, rate, Duration::from_secs(5), cycle.clone()).await;
        row(
            &format!("request→approve→grant, paced at {:.0}% of saturation", share * 100.0),
            50,
            &format!("{rate:.0}"),
            &stats,
        );
    }
    println!(
        "\nsaturation: {:.0} cycles/s with 50 clients, {:.2}× one client's rate; a cycle costs {:.1} whoami round trips",
        saturated.per_second,
        saturated.per_second / single.per_second,
        whoami.per_second / saturated.per_second
    );
}
