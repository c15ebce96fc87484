//! The gateway under load, beside what it is measured against in the same run:
//! `cargo bench -p airlock-gateway --bench gateway`.
//!
//! One throwaway cluster (`pgbench -i` by its superuser) is reached five ways:
//! 1. **direct**;
//! 2. a **bare relay** written here (tokio's `copy_bidirectional`, one task per connection): what
//!    any proxy costs at least on this machine;
//! 3. **PgBouncer** in session mode (Debian's, started here on a random port, stopped at the end);
//! 4. the **Airlock gateway**, in this process through the shared harness
//!    (`airlock_testkit::gateway`), recording every statement, without TLS (`require_tls = false`,
//!    `sslmode=disable`) to compare with the plain-text paths;
//! 5. the same gateway with TLS (`sslmode=require`).
//!
//! The first three log in as `bench_direct`, the gateway as each grant's own role; both are
//! members of `app_writer`, which may read and write the pgbench tables. Each gateway run uses a
//! fresh `write` grant of dana's and a credential for it as password.
//!
//! Measured, in this order:
//! - **memory per idle session**: the growth of VmRSS of the process serving the sessions. The
//!   gateway (and the bare relay) run for this in a fresh process, this bench re-executed, laid out
//!   like `airlock serve` (broker, connector and gateway, with mimalloc) over a cluster of its own;
//!   the clients stay in this process. PgBouncer is measured the same way in its own process;
//! - **added latency per statement**, one client (tokio-postgres on its own thread and runtime,
//!   as if in another process): `SELECT abalance FROM pgbench_accounts WHERE aid = …` prepared, and
//!   as simple-protocol text, in blocks that alternate between the paths;
//! - **throughput**: pgbench select-only (`-S`) and TPC-B-like, `-M simple` and `-M prepared`,
//!   and TPC-B-like again with the cluster's `fsync` turned on (every commit waits for the disk,
//!   as on a database whose data matters), the paths interleaved (the starting path rotates each
//!   round), medians over rounds, and the CPU time the proxying process spent per transaction, by
//!   thread (from /proc). After each gateway run the bench waits until every session's records
//!   are in the audit chain and counts the `statement.executed` records against pgbench's
//!   transactions;
//! - **revoke → disconnect** and **expiry → disconnect**: idle sessions under one grant; for
//!   each, the time from the start of `broker.revoke` (or from the grant's `ends_at`) until that
//!   client's connection has received the error and the close.
//!
//! Settings (environment): `AIRLOCK_BENCH_SECONDS` (10, per pgbench run), `AIRLOCK_BENCH_ROUNDS`
//! (3), `AIRLOCK_BENCH_CLIENTS` (8), `AIRLOCK_BENCH_THREADS` (2), `AIRLOCK_BENCH_SCALE` (10),
//! `AIRLOCK_BENCH_PROTOCOLS` (`simple,prepared`), `AIRLOCK_BENCH_STATEMENTS` (10000 per path and
//! kind), `AIRLOCK_BENCH_DURABLE` (`true`: the fsync-on TPC-B-like runs),
//! `AIRLOCK_BENCH_CUT_SESSIONS` (100), `AIRLOCK_BENCH_CUT_ROUNDS` (10),
//! `AIRLOCK_BENCH_EXPIRY_SECONDS` (5, the expiring grants' length), `AIRLOCK_BENCH_CUT_TLS`
//! (`true`: the cut sessions use TLS), `AIRLOCK_BENCH_IDLE_SESSIONS` (500),
//! `AIRLOCK_BENCH_PATHS` (`direct,relay,pgbouncer,gateway,gateway-tls`), `AIRLOCK_BENCH_PARTS` (`memory,latency,throughput,cuts`),
//! `AIRLOCK_BENCH_AUDIT` (`before`, the default: each statement's record is committed before it is
//! sent; `after`: recorded once it completed, as `audit = "after"`). A quick run:
//! `AIRLOCK_BENCH_SECONDS=2 AIRLOCK_BENCH_ROUNDS=1 AIRLOCK_BENCH_CUT_ROUNDS=2 cargo bench -p airlock-gateway --bench gateway`.
//!
//! Everything started here stops when the bench ends, fails or is interrupted (Ctrl-C): the
//! cluster and PgBouncer through their guards, pgbench and the child process on drop.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitCode, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use airlock_core::lifecycle::Grant;
use airlock_gateway::gateway::Settings;
use airlock_postgres::roles::role_name;
use airlock_testkit::gateway::{self as harness, DATABASE, GatewayHarness, Setup};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Set in the server process that [`Server`] starts (this bench, re-executed).
const CHILD: &str = "AIRLOCK_BENCH_CHILD";
const DIRECT_USER: &str = "bench_direct";
const DIRECT_PASSWORD: &str = "bench-direct-7d2b";
const PREPARED: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
/// Sessions opened at once by a client.
const CONNECT_BATCH: usize = 20;

/// Superuser SQL: the pgbench tables for `app_writer` (the `write` role's database role), and a
/// login role in it for the paths that do not go through the gateway.
const PREPARE: &str = "
    GRANT SELECT, INSERT, UPDATE ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO app_writer;
    CREATE ROLE bench_direct LOGIN PASSWORD 'bench-direct-7d2b' IN ROLE app_writer;
";

fn main() -> ExitCode {
    if std::env::var_os(CHILD).is_some() {
        return child::main();
    }
    let tools = match Tools::find() {
        Ok(tools) => tools,
        Err(missing) => {
            eprintln!("error: {missing}");
            return ExitCode::FAILURE;
        }
    };
    let knobs = Knobs::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        tokio::select! {
            code = run(tools, knobs) => code,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted: stopping PgBouncer and the cluster");
                ExitCode::FAILURE
            }
        }
    })
}

/// The external programs the bench drives.
struct Tools {
    pgbench: PathBuf,
    pgbouncer: PathBuf,
}

impl Tools {
    fn find() -> Result<Tools, String> {
        let pgbench = airlock_postgres::cluster::program("pgbench").ok_or(
            "pgbench not found (neither /usr/lib/postgresql/<version>/bin/pgbench nor on PATH); \
             on Debian or Ubuntu: `apt-get install postgresql-15` (or postgresql-contrib), then run the bench again",
        )?;
        let pgbouncer =
            on_path("pgbouncer").or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.is_file()));
        let pgbouncer = pgbouncer.ok_or(
            "pgbouncer not found (neither on PATH nor /usr/sbin/pgbouncer); on Debian or Ubuntu: \
             `apt-get install pgbouncer` (the bench starts its own instance; the system service may stay stopped)",
        )?;
        Ok(Tools { pgbench, pgbouncer })
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(program)).find(|path| path.is_file())
}

/// What the environment sets; see the module documentation.
struct Knobs {
    seconds: u64,
    rounds: usize,
    clients: u32,
    threads: u32,
    scale: u32,
    protocols: Vec<String>,
    statements: usize,
    cut_sessions: usize,
    cut_rounds: usize,
    expiry_seconds: u64,
    cut_tls: bool,
    idle_sessions: usize,
    paths: Vec<Route>,
    parts: Vec<String>,
    /// Also run TPC-B-like with the cluster's fsync on.
    durable: bool,
    /// The gateway records statements once they completed (`audit = "after"`).
    audit_after: bool,
}

impl Knobs {
    fn from_env() -> Knobs {
        let list = |name: &str, default: &str| -> Vec<String> {
            let value = std::env::var(name).unwrap_or_else(|_| default.to_owned());
            value.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
        };
        let paths = list("AIRLOCK_BENCH_PATHS", "direct,relay,pgbouncer,gateway,gateway-tls");
        let paths = paths
            .iter()
            .map(|key| {
                Route::ALL.into_iter().find(|r| r.key() == key).unwrap_or_else(|| panic!("unknown path `{key}`"))
            })
            .collect();
        Knobs {
            seconds: setting("AIRLOCK_BENCH_SECONDS", 10),
            rounds: setting("AIRLOCK_BENCH_ROUNDS", 3),
            clients: setting("AIRLOCK_BENCH_CLIENTS", 8),
            threads: setting("AIRLOCK_BENCH_THREADS", 2),
            scale: setting("AIRLOCK_BENCH_SCALE", 10),
            protocols: list("AIRLOCK_BENCH_PROTOCOLS", "simple,prepared"),
            statements: setting("AIRLOCK_BENCH_STATEMENTS", 10_000),
            durable: setting("AIRLOCK_BENCH_DURABLE", true),
            cut_sessions: setting("AIRLOCK_BENCH_CUT_SESSIONS", 100),
            cut_rounds: setting("AIRLOCK_BENCH_CUT_ROUNDS", 10),
            expiry_seconds: setting("AIRLOCK_BENCH_EXPIRY_SECONDS", 5),
            cut_tls: setting("AIRLOCK_BENCH_CUT_TLS", true),
            idle_sessions: setting("AIRLOCK_BENCH_IDLE_SESSIONS", 500),
            paths,
            parts: list("AIRLOCK_BENCH_PARTS", "memory,latency,throughput,cuts"),
            audit_after: match std::env::var("AIRLOCK_BENCH_AUDIT").as_deref() {
                Ok("after") => true,
                Ok("before") | Err(_) => false,
                Ok(other) => panic!("AIRLOCK_BENCH_AUDIT=`{other}` is neither `before` nor `after`"),
            },
        }
    }

    fn part(&self, name: &str) -> bool {
        self.parts.iter().any(|part| part == name)
    }
}

fn setting<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value.trim().parse().unwrap_or_else(|_| panic!("{name}=`{value}` is not a valid value")),
        Err(_) => default,
    }
}

/// A way to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Route {
    Direct,
    Relay,
    Bouncer,
    Gateway,
    GatewayTls,
}

impl Route {
    const ALL: [Route; 5] = [Route::Direct, Route::Relay, Route::Bouncer, Route::Gateway, Route::GatewayTls];

    fn key(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Relay => "relay",
            Route::Bouncer => "pgbouncer",
            Route::Gateway => "gateway",
            Route::GatewayTls => "gateway-tls",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Relay => "bare relay (copy_bidirectional)",
            Route::Bouncer => "PgBouncer, session mode",
            Route::Gateway => "Airlock gateway, recording",
            Route::GatewayTls => "Airlock gateway, recording, TLS",
        }
    }

    fn gateway(self) -> bool {
        matches!(self, Route::Gateway | Route::GatewayTls)
    }
}

/// Where a client connects, as whom.
#[derive(Clone)]
struct Endpoint {
    port: u16,
    user: String,
    password: String,
    tls: Option<MakeRustlsConnect>,
}

impl Endpoint {
    fn config(&self) -> Config {
        use tokio_postgres::config::SslMode;
        let mut config = Config::new();
        config.host("127.0.0.1").port(self.port).dbname(DATABASE).user(&self.user).password(&self.password);
        config.ssl_mode(if self.tls.is_some() { SslMode::Require } else { SslMode::Disable });
        config
    }
}

type Connection = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

/// Connects; the caller drives the connection.
async fn connect(endpoint: &Endpoint) -> Result<(Client, Connection), tokio_postgres::Error> {
    let config = endpoint.config();
    Ok(match &endpoint.tls {
        Some(tls) => {
            let (client, connection) = config.connect(tls.clone()).await?;
            (client, Box::pin(connection))
        }
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            (client, Box::pin(connection))
        }
    })
}

/// Everything the parts of the bench share.
struct Bench {
    knobs: Knobs,
    tools: Tools,
    harness: GatewayHarness,
    superuser: Client,
    relay_port: u16,
    bouncer: PgBouncer,
    audit: Audit,
}

async fn run(tools: Tools, knobs: Knobs) -> ExitCode {
    let setup = Setup {
        settings: Settings { require_tls: false, ..Settings::default() },
        // PgBouncer keeps its server connections a while after its clients leave.
        max_connections: Some((knobs.idle_sessions + knobs.cut_sessions + 100) as u32),
        audit_after: knobs.audit_after,
        ..Setup::default()
    };
    let harness = GatewayHarness::start_with(setup).await;
    let cluster = harness.cluster();
    eprintln!("pgbench -i -s {} on the throwaway cluster (port {})…", knobs.scale, cluster.port());
    let init =
        pgbench_command(&tools.pgbench, cluster.port(), cluster.superuser(), cluster.superuser_password(), false)
            .args(["-i", "-q", "-s", &knobs.scale.to_string(), DATABASE])
            .output()
            .await
            .expect("pgbench runs");
    assert!(init.status.success(), "pgbench -i failed:\n{}", String::from_utf8_lossy(&init.stderr));
    let superuser = cluster.connect(DATABASE).await.expect("the superuser connects");
    superuser.batch_execute(PREPARE).await.expect("the pgbench tables are granted");
    let relay_port = start_relay(cluster.port()).await;
    let bouncer = PgBouncer::start(&tools.pgbouncer, cluster.port()).await;
    let audit = Audit::open(&harness.store_file()).await;
    let bench = Bench { knobs, tools, harness, superuser, relay_port, bouncer, audit };

    println!("# PostgreSQL gateway bench");
    println!(
        "machine: {} cores; pgbench scale {}; {} clients, {} threads; {} s per run, {} rounds",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bench.knobs.scale,
        bench.knobs.clients,
        bench.knobs.threads,
        bench.knobs.seconds,
        bench.knobs.rounds
    );
    let mut report = Report::default();
    if bench.knobs.part("memory") {
        bench.memory().await;
    }
    if bench.knobs.part("latency") {
        bench.latency().await;
    }
    if bench.knobs.part("throughput") {
        bench.throughput(&mut report).await;
    }
    if bench.knobs.part("cuts") {
        bench.cuts(&mut report).await;
    }
    report.targets();
    let Bench { harness, bouncer, .. } = bench;
    drop(bouncer);
    harness.shutdown().await;
    if report.records_missing {
        eprintln!("error: the gateway lost statement records (see above)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// What the summary compares with the targets.
#[derive(Default)]
struct Report {
    /// (workload, route, median TPS), in the order measured.
    tps: Vec<(String, Route, f64)>,
    cuts: Vec<(&'static str, Percentiles)>,
    revoke_call: Option<Percentiles>,
    records_missing: bool,
}

impl Report {
    fn targets(&self) {
        println!("\n## Targets");
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        let of = |workload: &str, route: Route| {
            self.tps.iter().find(|(w, r, _)| w == workload && *r == route).map(|(_, _, tps)| *tps)
        };
        for (workload, route, gateway) in self.tps.iter().filter(|(_, route, _)| route.gateway()) {
            let note = if *route == Route::GatewayTls { " (TLS: no target, for reference)" } else { "" };
            if workload.starts_with("TPC-B") {
                let (Some(direct), Some(relay)) = (of(workload, Route::Direct), of(workload, Route::Relay)) else {
                    continue;
                };
                println!(
                    "- {workload}, {}: {:.1}% of direct (target ≥ 95%): {}{note}; the bare relay reaches {:.1}% of direct",
                    route.name(),
                    gateway / direct * 100.0,
                    verdict(gateway / direct >= 0.95),
                    relay / direct * 100.0
                );
            } else {
                let (Some(relay), Some(bouncer)) = (of(workload, Route::Relay), of(workload, Route::Bouncer)) else {
                    continue;
                };
                println!(
                    "- {workload}, {}: {:.1}% of the bare relay (target ≥ 90%): {}; {:.2}× PgBouncer (target > 1): {}{note}",
                    route.name(),
                    gateway / relay * 100.0,
                    verdict(gateway / relay >= 0.90),
                    gateway / bouncer,
                    verdict(gateway / bouncer > 1.0)
                );
            }
        }
        for (what, cut) in &self.cuts {
            println!("- {what}: p99 {:.1} ms (target ≤ 100 ms): {}", cut.p99, verdict(cut.p99 <= 100.0));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Paths

/// A bare byte relay to `target` on 127.0.0.1: the least any proxy costs here.
async fn start_relay(target: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port for the relay");
    let port = listener.local_addr().expect("the relay's address").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    port
}

/// PgBouncer in session mode in a temporary directory, killed when dropped.
struct PgBouncer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    async fn start(program: &Path, target: u16) -> PgBouncer {
        let dir = tempfile::tempdir().expect("a directory for PgBouncer");
        let port = free_port();
        let config = format!(
            "[databases]\n\
             {DATABASE} = host=127.0.0.1 port={target} dbname={DATABASE}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = scram-sha-256\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = session\n\
             max_client_conn = 4000\n\
             default_pool_size = 2000\n\
             server_idle_timeout = 10\n\
             ignore_startup_parameters = extra_float_digits\n\
             log_connections = 0\n\
             log_disconnections = 0\n\
             logfile = {dir}/pgbouncer.log\n",
            dir = dir.path().display()
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), config).expect("pgbouncer.ini");
        std::fs::write(dir.path().join("userlist.txt"), format!("\"{DIRECT_USER}\" \"{DIRECT_PASSWORD}\"\n"))
            .expect("userlist.txt");
        let mut command = std::process::Command::new(program);
        // PgBouncer refuses to run as root; `-u` makes it switch to the `postgres` user.
        if std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0 {
            let id = |flag: &str| -> u32 {
                let out = std::process::Command::new("id").args([flag, "postgres"]).output().expect("id runs");
                String::from_utf8_lossy(&out.stdout).trim().parse().expect("a `postgres` system user")
            };
            let (uid, gid) = (id("-u"), id("-g"));
            for path in ["", "pgbouncer.ini", "userlist.txt"] {
                std::os::unix::fs::chown(dir.path().join(path), Some(uid), Some(gid)).expect("chown");
            }
            command.args(["-u", "postgres"]);
        }
        command.arg(dir.path().join("pgbouncer.ini")).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut bouncer = PgBouncer { child: command.spawn().expect("pgbouncer starts"), port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Ok(Some(status)) = bouncer.child.try_wait() {
                let log = std::fs::read_to_string(bouncer._dir.path().join("pgbouncer.log")).unwrap_or_default();
                panic!("pgbouncer exited ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "pgbouncer does not listen on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bouncer
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("an address").port()
}

impl Bench {
    /// Where `route` is reached, and for the gateway the fresh grant it logs in under.
    async fn endpoint(&self, route: Route) -> (Endpoint, Option<Grant>) {
        let direct = |port| Endpoint { port, user: DIRECT_USER.into(), password: DIRECT_PASSWORD.into(), tls: None };
        match route {
            Route::Direct => (direct(self.harness.cluster().port()), None),
            Route::Relay => (direct(self.relay_port), None),
            Route::Bouncer => (direct(self.bouncer.port), None),
            Route::Gateway | Route::GatewayTls => {
                let grant = self.harness.write_grant("30m").await;
                self.role_created(&grant).await;
                let password = self.harness.token(&grant).await;
                let tls = (route == Route::GatewayTls).then(|| self.harness.tls.clone());
                (Endpoint { port: self.harness.port, user: "dana".into(), password, tls }, Some(grant))
            }
        }
    }

    async fn role_created(&self, grant: &Grant) {
        role_created(&self.superuser, grant).await;
    }
}

/// Waits until the connector has created the grant's role, so no login waits for it.
async fn role_created(superuser: &Client, grant: &Grant) {
    let name = role_name(&grant.id);
    for _ in 0..200 {
        let found = superuser.query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name]).await;
        if !found.expect("pg_roles").is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the connector did not create role {name} within 10 s");
}

/// Runs `work` on a thread of its own with a single-threaded runtime, as a client in another
/// process would run, so that its tasks do not share the gateway's scheduler. The answer comes
/// back on the receiver (which fails if the thread panicked).
fn on_client_thread<F, Fut, T>(work: F) -> tokio::sync::oneshot::Receiver<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let _ = sender.send(runtime.block_on(work()));
    });
    receiver
}

/// p50, p99 and the largest of some samples.
#[derive(Debug, Clone, Copy)]
struct Percentiles {
    min: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

fn percentiles(samples: &[f64]) -> Percentiles {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    Percentiles { min: at(0.0), p50: at(0.5), p99: at(0.99), max: at(1.0) }
}

fn median(samples: &[f64]) -> f64 {
    percentiles(samples).p50
}

/// Account ids spread over the table (xorshift; the same sequence on every run).
struct Accounts {
    state: u64,
    count: u64,
}

impl Accounts {
    fn new(scale: u32) -> Self {
        Accounts { state: 0x9e37_79b9_7f4a_7c15, count: u64::from(scale) * 100_000 }
    }

    fn next(&mut self) -> i32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % self.count + 1) as i32
    }
}

// ---------------------------------------------------------------------------------------------
// Memory per idle session

impl Bench {
    async fn memory(&self) {
        let sessions = self.knobs.idle_sessions;
        println!("\n## Memory per idle session\n");
        println!(
            "{sessions} idle sessions, each after one `SELECT 1`; VmRSS of the process that serves them before, while \
             they are open, and after they close. The gateway and the bare relay are measured each in a fresh \
             process (this bench re-executed: a cluster, the broker, the connector, the gateway and a relay, laid \
             out like `airlock serve`, with mimalloc), the clients staying in this one; PgBouncer is its own process.\n"
        );
        println!("| path | VmRSS before KiB | with sessions KiB | after they close KiB | per session KiB |");
        println!("|---|---:|---:|---:|---:|");
        for route in [Route::Gateway, Route::GatewayTls, Route::Relay, Route::Bouncer] {
            if !self.knobs.paths.contains(&route) {
                continue;
            }
            let server = match route {
                Route::Bouncer => None,
                _ => Some(Server::start(sessions).await),
            };
            let (endpoint, pid) = match &server {
                Some(server) => (server.endpoint(route), server.child.id()),
                None => (self.endpoint(route).await.0, self.bouncer.child.id()),
            };
            // Warm up, so that one-time allocations (TLS, caches, SQLite statements) are in the baseline.
            drop(open_idle(&endpoint, 20).await);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = vm_rss_kib(pid);
            let idle = open_idle(&endpoint, sessions).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let with = vm_rss_kib(pid);
            drop(idle);
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = vm_rss_kib(pid);
            let per = (with as f64 - before as f64) / sessions as f64;
            println!("| {} | {before} | {with} | {after} | {per:.1} |", route.name());
            drop(server);
        }
    }
}

/// Opens `sessions` sessions, runs `SELECT 1` on each, and returns them idle.
async fn open_idle(endpoint: &Endpoint, sessions: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(sessions);
    for start in (0..sessions).step_by(CONNECT_BATCH) {
        let batch = (start..sessions.min(start + CONNECT_BATCH)).map(|_| async {
            let (client, connection) = connect(endpoint).await?;
            tokio::spawn(connection);
            client.simple_query("SELECT 1").await?;
            Ok::<_, tokio_postgres::Error>(client)
        });
        for client in futures_util::future::join_all(batch).await {
            clients.push(client.unwrap_or_else(|e| panic!("cannot open {sessions} idle sessions: {e:?}")));
        }
    }
    clients
}

/// A fresh process (this bench, re-executed) serving a gateway and a bare relay over a cluster of
/// its own, until its stdin closes; dropping it closes its stdin and waits for it to clean up.
struct Server {
    child: std::process::Child,
    gateway: u16,
    relay: u16,
    token: String,
    certificate: PathBuf,
}

impl Server {
    async fn start(sessions: usize) -> Server {
        let exe = std::env::current_exe().expect("this bench's executable");
        let mut command = std::process::Command::new(exe);
        command
            .env(CHILD, "server")
            .env("AIRLOCK_BENCH_CHILD_SESSIONS", sessions.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = command.spawn().expect("the server process starts");
        let stdout = child.stdout.take().expect("a stdout");
        let first = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
        });
        // From here on, dropping `server` stops the process.
        let mut server = Server { child, gateway: 0, relay: 0, token: String::new(), certificate: PathBuf::new() };
        let line = tokio::time::timeout(Duration::from_secs(120), first).await;
        let line = line.expect("the server starts within 2 minutes").expect("a reader").expect("the server's output");
        let words: Vec<&str> = line.split_whitespace().collect();
        let [gateway, relay, token, certificate] = words[..] else { panic!("the server said {line:?}") };
        (server.gateway, server.relay) = (gateway.parse().expect("a port"), relay.parse().expect("a port"));
        (server.token, server.certificate) = (token.to_owned(), PathBuf::from(certificate));
        server
    }

    fn endpoint(&self, route: Route) -> Endpoint {
        match route {
            Route::Relay => {
                Endpoint { port: self.relay, user: DIRECT_USER.into(), password: DIRECT_PASSWORD.into(), tls: None }
            }
            _ => {
                let tls = (route == Route::GatewayTls).then(|| harness::client_tls(&self.certificate));
                Endpoint { port: self.gateway, user: "dana".into(), password: self.token.clone(), tls }
            }
        }
    }
}

impl Drop for Server {
    /// Closes its stdin, so that it stops its gateway and cluster, and waits for it (killing it
    /// after 30 s).
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident set of process `pid`, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:")).expect("a VmRSS line");
    line.trim().trim_end_matches("kB").trim().parse().expect("VmRSS in kB")
}

/// The server process of [`Server`]: says `<gateway port> <relay port> <credential> <certificate>`
/// and serves until its stdin closes.
mod child {
    use super::*;

    pub fn main() -> ExitCode {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
        let code = runtime.block_on(async {
            let sessions: usize = std::env::var("AIRLOCK_BENCH_CHILD_SESSIONS")
                .ok()
                .and_then(|n| n.parse().ok())
                .expect("AIRLOCK_BENCH_CHILD_SESSIONS is a number");
            let setup = Setup {
                settings: Settings { require_tls: false, ..Settings::default() },
                max_connections: Some(sessions as u32 + 100),
                ..Setup::default()
            };
            let harness = GatewayHarness::start_with(setup).await;
            let superuser = harness.cluster().connect(DATABASE).await.expect("the superuser connects");
            let create = format!("CREATE ROLE {DIRECT_USER} LOGIN PASSWORD '{DIRECT_PASSWORD}' IN ROLE app_writer");
            superuser.batch_execute(&create).await.expect("the relay's role");
            let relay = start_relay(harness.cluster().port()).await;
            let grant = harness.read_grant("1h").await;
            role_created(&superuser, &grant).await;
            let token = harness.token(&grant).await;
            println!("{} {relay} {token} {}", harness.port, harness.certificate().display());
            let _ = std::io::stdout().flush();
            // Serve until the parent closes stdin (or goes away), or Ctrl-C reaches the process group.
            let stdin = tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()));
            tokio::select! {
                _ = stdin => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            harness.shutdown().await;
            ExitCode::SUCCESS
        });
        // The blocking read of stdin may still be waiting.
        runtime.shutdown_background();
        code
    }
}

// ---------------------------------------------------------------------------------------------
// Added latency per statement

impl Bench {
    async fn latency(&self) {
        let statements = self.knobs.statements;
        let mut endpoints = Vec::new();
        let mut grants = Vec::new();
        for &route in &self.knobs.paths {
            let (endpoint, grant) = self.endpoint(route).await;
            endpoints.push((route, endpoint));
            grants.extend(grant);
        }
        let scale = self.knobs.scale;
        let measured = on_client_thread(move || measure_latency(endpoints, statements, scale));
        let measured = measured.await.expect("the latency client finishes");
        for grant in grants {
            self.harness.revoke(&grant).await;
        }
        println!("\n## Added latency per statement, one client\n");
        println!(
            "`{PREPARED}` with a random aid: prepared (Bind/Execute/Sync) and as simple-protocol text with the literal \
             (a new text each time). {statements} round trips per path and kind, in blocks of {LATENCY_BLOCK} that \
             alternate between the paths; tokio-postgres on a thread and runtime of its own.\n"
        );
        println!("| path | protocol | p50 µs | p99 µs | added p50 µs | added p99 µs |");
        println!("|---|---|---:|---:|---:|---:|");
        for (kind, pick) in [("prepared", 0), ("simple", 1)] {
            let direct = measured.iter().find(|(route, ..)| *route == Route::Direct);
            let direct = direct.map(|(_, prepared, simple)| percentiles(if pick == 0 { prepared } else { simple }));
            for (route, prepared, simple) in &measured {
                let here = percentiles(if pick == 0 { prepared } else { simple });
                let (added50, added99) = match direct {
                    Some(direct) => {
                        (format!("{:+.1}", here.p50 - direct.p50), format!("{:+.1}", here.p99 - direct.p99))
                    }
                    None => ("-".into(), "-".into()),
                };
                println!("| {} | {kind} | {:.1} | {:.1} | {added50} | {added99} |", route.name(), here.p50, here.p99);
            }
        }
    }
}

const LATENCY_BLOCK: usize = 500;

/// Round trips, in µs, per route: (prepared, simple).
async fn measure_latency(
    endpoints: Vec<(Route, Endpoint)>,
    statements: usize,
    scale: u32,
) -> Vec<(Route, Vec<f64>, Vec<f64>)> {
    let mut sessions = Vec::new();
    for (route, endpoint) in endpoints {
        let (client, connection) = connect(&endpoint).await.unwrap_or_else(|e| panic!("{}: {e}", route.name()));
        tokio::spawn(connection);
        let statement = client.prepare(PREPARED).await.expect("the statement is prepared");
        sessions.push((route, client, statement));
    }
    let mut accounts = Accounts::new(scale);
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = sessions.iter().map(|_| (Vec::new(), Vec::new())).collect();
    let blocks = statements.div_ceil(LATENCY_BLOCK) + 1;
    for block in 0..blocks {
        for i in 0..sessions.len() {
            let which = (i + block) % sessions.len();
            let (_, client, statement) = &sessions[which];
            let (prepared, simple) = &mut samples[which];
            for _ in 0..LATENCY_BLOCK {
                let aid = accounts.next();
                let started = Instant::now();
                client.query_one(statement, &[&aid]).await.expect("a prepared round trip");
                prepared.push(started.elapsed().as_secs_f64() * 1e6);
            }
            for _ in 0..LATENCY_BLOCK {
                let text = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {}", accounts.next());
                let started = Instant::now();
                client.simple_query(&text).await.expect("a simple round trip");
                simple.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    // The first block of each is a warm-up.
    let routes = sessions.iter().map(|(route, ..)| *route);
    let trimmed = samples.into_iter().map(|(p, s)| (p[LATENCY_BLOCK..].to_vec(), s[LATENCY_BLOCK..].to_vec()));
    routes.zip(trimmed).map(|(route, (prepared, simple))| (route, prepared, simple)).collect()
}

// ---------------------------------------------------------------------------------------------
// Throughput

/// A pgbench workload.
struct Workload {
    select_only: bool,
    protocol: String,
    /// Run with the cluster's `fsync` on: every commit waits for the disk, as on a database
    /// whose data matters (the throwaway cluster otherwise runs with it off).
    durable: bool,
}

impl Workload {
    fn name(&self) -> String {
        let script = match (self.select_only, self.durable) {
            (true, _) => "select-only (-S)",
            (false, false) => "TPC-B-like",
            (false, true) => "TPC-B-like, durable (fsync on)",
        };
        format!("{script}, -M {}", self.protocol)
    }

    /// Statements a transaction sends (TPC-B-like: BEGIN, 3 UPDATE, SELECT, INSERT, END).
    fn statements(&self) -> u64 {
        if self.select_only { 1 } else { 7 }
    }
}

/// What pgbench reported.
struct Run {
    tps: f64,
    transactions: u64,
}

/// pgbench's connection through the environment (the password never on its command line).
fn pgbench_command(program: &Path, port: u16, user: &str, password: &str, tls: bool) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", user)
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", if tls { "require" } else { "disable" })
        .env_remove("PGOPTIONS")
        .env_remove("PGSERVICE")
        .env_remove("PGCLIENTENCODING")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

impl Bench {
    async fn throughput(&self, report: &mut Report) {
        let mut workloads = Vec::new();
        let kinds = [(true, false), (false, false)].into_iter().chain(self.knobs.durable.then_some((false, true)));
        for (select_only, durable) in kinds {
            for protocol in &self.knobs.protocols {
                workloads.push(Workload { select_only, protocol: protocol.clone(), durable });
            }
        }
        let paths = &self.knobs.paths;
        println!("\n## Throughput (pgbench)\n");
        println!(
            "`pgbench -n -c {} -j {} -T {} -M <protocol> [-S]`, scale {}; before each run, as pgbench does without \
             `-n`: VACUUM pgbench_branches and pgbench_tellers, TRUNCATE pgbench_history (and a CHECKPOINT). Median of \
             {} rounds; the path that goes first rotates each round.",
            self.knobs.clients, self.knobs.threads, self.knobs.seconds, self.knobs.scale, self.knobs.rounds
        );
        let ticks = clock_ticks();
        for workload in workloads {
            self.set_fsync(workload.durable).await;
            let mut tps: HashMap<Route, Vec<f64>> = HashMap::new();
            let mut records = Vec::new();
            // Per route: CPU seconds of the serving process by thread group, and transactions.
            let mut cpu: HashMap<Route, (HashMap<&'static str, f64>, u64)> = HashMap::new();
            for round in 0..self.knobs.rounds {
                for i in 0..paths.len() {
                    let route = paths[(i + round) % paths.len()];
                    self.before_run().await;
                    let (endpoint, grant) = self.endpoint(route).await;
                    let seq = self.audit.head().await;
                    let server = self.serving_process(route);
                    let cpu_before = server.map(|pid| cpu_seconds(pid, ticks));
                    let run = self.pgbench(&endpoint, &workload).await;
                    eprintln!("{} round {}: {}: {:.0} tps", workload.name(), round + 1, route.name(), run.tps);
                    // Taken before waiting for the last records (tens of ms of writing), so that the
                    // bench's own counting queries are not in it.
                    if let (Some(pid), Some(before)) = (server, cpu_before) {
                        let (groups, transactions) = cpu.entry(route).or_default();
                        for (group, seconds) in cpu_seconds(pid, ticks) {
                            let spent = seconds - before.get(group).copied().unwrap_or(0.0);
                            *groups.entry(group).or_default() += spent.max(0.0);
                        }
                        *transactions += run.transactions;
                    }
                    let mut settled = None;
                    if grant.is_some() {
                        let finished = Instant::now();
                        settled = Some((self.audit.settle(seq).await, finished.elapsed()));
                    }
                    if let (Some(grant), Some((counts, caught_up))) = (grant, settled) {
                        let expected = run.transactions * workload.statements();
                        if (counts.executed as u64) < expected {
                            report.records_missing = true;
                        }
                        records.push((round, route, run.transactions, expected, counts, caught_up));
                        self.harness.revoke(&grant).await;
                    }
                    tps.entry(route).or_default().push(run.tps);
                }
            }
            let name = workload.name();
            println!("\n### {name}\n");
            println!(
                "| path | median TPS | min–max | vs direct | vs bare relay | vs PgBouncer | proxy CPU µs per transaction |"
            );
            println!("|---|---:|---:|---:|---:|---:|---:|");
            let medians: HashMap<Route, f64> = tps.iter().map(|(route, runs)| (*route, median(runs))).collect();
            for route in paths {
                let runs = &tps[route];
                let here = medians[route];
                let ratio =
                    |other: Route| medians.get(&other).map_or("-".into(), |o| format!("{:.1}%", here / o * 100.0));
                let (low, high) =
                    (runs.iter().copied().fold(f64::MAX, f64::min), runs.iter().copied().fold(0.0, f64::max));
                let proxy_cpu = cpu.get(route).map_or("-".into(), |(groups, transactions)| {
                    format!("{:.0}", groups.values().sum::<f64>() / *transactions as f64 * 1e6)
                });
                println!(
                    "| {} | {here:.0} | {low:.0}–{high:.0} | {} | {} | {} | {proxy_cpu} |",
                    route.name(),
                    ratio(Route::Direct),
                    ratio(Route::Relay),
                    ratio(Route::Bouncer)
                );
                report.tps.push((name.clone(), *route, here));
            }
            println!(
                "\nProxy CPU: user + system time of the serving process (this bench for the relay and the gateway, \
                 pgbouncer for PgBouncer) over the runs, per transaction pgbench counted. By thread, per statement \
                 ({} a transaction):\n",
                workload.statements()
            );
            for route in paths.iter().filter(|route| route.gateway() || **route == Route::Relay) {
                if let Some((groups, transactions)) = cpu.get(route) {
                    let mut groups: Vec<_> = groups.iter().collect();
                    groups.sort_by(|a, b| b.1.total_cmp(a.1));
                    let statements = (*transactions * workload.statements()) as f64;
                    let parts: Vec<String> = groups
                        .iter()
                        .map(|(group, seconds)| (group, *seconds / statements * 1e6))
                        .filter(|(_, micros)| *micros >= 0.05)
                        .map(|(group, micros)| format!("{group} {micros:.1}"))
                        .collect();
                    println!("- {}: {} µs", route.name(), parts.join(", "));
                }
            }
            if !records.is_empty() {
                println!(
                    "\nStatements recorded by the gateway (`statement.executed` in the audit chain after the run's \
                     sessions ended) against pgbench's transactions × {}; pgbench also sends 2 statements of its own \
                     at start, and the transactions in flight at the end are not counted by pgbench:\n",
                    workload.statements()
                );
                println!(
                    "| round | path | transactions | statements expected | recorded | difference | all recorded after |"
                );
                println!("|---:|---|---:|---:|---:|---:|---:|");
                for (round, route, transactions, expected, counts, caught_up) in records {
                    let difference = counts.executed - expected as i64;
                    let flag = if difference < 0 { " **MISSING**" } else { "" };
                    println!(
                        "| {} | {} | {transactions} | {expected} | {}{flag} | {difference:+} | {} ms |",
                        round + 1,
                        route.name(),
                        counts.executed,
                        caught_up.as_millis()
                    );
                }
            }
        }
    }

    /// The process whose CPU a route's proxying costs.
    fn serving_process(&self, route: Route) -> Option<u32> {
        match route {
            Route::Direct => None,
            Route::Bouncer => Some(self.bouncer.child.id()),
            Route::Relay | Route::Gateway | Route::GatewayTls => Some(std::process::id()),
        }
    }

    /// Turns the cluster's `fsync` on or off (ALTER SYSTEM, then a reload), waiting until it took.
    async fn set_fsync(&self, on: bool) {
        let value = if on { "on" } else { "off" };
        // Two calls: ALTER SYSTEM refuses to run in the implicit transaction of a multi-statement text.
        for statement in [&format!("ALTER SYSTEM SET fsync = {value}"), "SELECT pg_reload_conf()"] {
            self.superuser.batch_execute(statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        for _ in 0..100 {
            let row = self.superuser.query_one("SHOW fsync", &[]).await.expect("SHOW fsync");
            if row.get::<_, String>(0) == value {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the cluster did not take fsync = {value}");
    }

    /// What pgbench does before a run unless told `-n`, done here as the superuser for every path.
    async fn before_run(&self) {
        for statement in ["VACUUM pgbench_branches", "VACUUM pgbench_tellers", "TRUNCATE pgbench_history", "CHECKPOINT"]
        {
            self.superuser.batch_execute(statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
    }

    async fn pgbench(&self, endpoint: &Endpoint, workload: &Workload) -> Run {
        let knobs = &self.knobs;
        let mut command = pgbench_command(
            &self.tools.pgbench,
            endpoint.port,
            &endpoint.user,
            &endpoint.password,
            endpoint.tls.is_some(),
        );
        command.args(["-n", "-c", &knobs.clients.to_string(), "-j", &knobs.threads.to_string()]).args([
            "-T",
            &knobs.seconds.to_string(),
            "-M",
            &workload.protocol,
        ]);
        if workload.select_only {
            command.arg("-S");
        }
        let output = command.arg(DATABASE).output().await.expect("pgbench runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "pgbench failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let value = |prefix: &str| {
            let line = stdout.lines().find_map(|line| line.strip_prefix(prefix));
            line.and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '/').find(|w| !w.is_empty()))
                .unwrap_or_else(|| panic!("no `{prefix}` in pgbench's output:\n{stdout}"))
                .to_owned()
        };
        Run {
            tps: value("tps = ").parse().expect("tps"),
            transactions: value("number of transactions actually processed:").parse().expect("a count"),
        }
    }
}

/// The kernel's clock ticks per second, in which /proc reports CPU time.
fn clock_ticks() -> f64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output();
    out.ok().and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok()).unwrap_or(100.0)
}

/// CPU time (user + system, seconds) of process `pid` by group of threads: tokio's workers,
/// sqlx's SQLite threads, the rest; exited threads count in "other".
fn cpu_seconds(pid: u32, ticks: f64) -> HashMap<&'static str, f64> {
    // Fields after the `(comm)` of /proc/…/stat: state is the first, utime the 12th, stime the 13th.
    let times = |stat: &str| -> Option<(String, f64)> {
        let (open, close) = (stat.find('(')?, stat.rfind(')')?);
        let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
        let busy = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some((stat[open + 1..close].to_owned(), busy / ticks))
    };
    let total = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| times(&stat));
    let total = total.map_or(0.0, |(_, seconds)| seconds);
    let mut groups: HashMap<&'static str, f64> = HashMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    for task in tasks {
        let Some((name, seconds)) = std::fs::read_to_string(task.path().join("stat")).ok().and_then(|s| times(&s))
        else {
            continue;
        };
        let group = match name.as_str() {
            name if name.starts_with("tokio") => "tokio workers",
            name if name.starts_with("sqlx-sqlite") => "SQLite threads",
            _ => continue,
        };
        *groups.entry(group).or_default() += seconds;
    }
    let named: f64 = groups.values().sum();
    groups.insert("other threads", (total - named).max(0.0));
    groups
}

// ---------------------------------------------------------------------------------------------
// Revoke → disconnect, expiry → disconnect

/// When and how a client's connection ended.
struct End {
    at: Instant,
    wall: OffsetDateTime,
    how: &'static str,
}

fn how(result: &Result<(), tokio_postgres::Error>) -> &'static str {
    use tokio_postgres::error::SqlState;
    match result.as_ref().err().map(|error| error.as_db_error()) {
        None => "closed without an error",
        Some(None) => "closed without an error message",
        Some(Some(db)) if db.code() == &SqlState::ADMIN_SHUTDOWN && db.message().starts_with("airlock:") => {
            "the gateway's FATAL 57P01"
        }
        Some(Some(db)) if db.code() == &SqlState::ADMIN_SHUTDOWN => "the database's FATAL 57P01 (backend terminated)",
        Some(Some(_)) => "another database error",
    }
}

/// Opens `sessions` idle sessions, says so on `ready`, and returns how each ended.
async fn hold_until_cut(
    endpoint: Endpoint,
    sessions: usize,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
) -> Vec<End> {
    let mut clients = Vec::with_capacity(sessions);
    let mut endings = Vec::with_capacity(sessions);
    for start in (0..sessions).step_by(CONNECT_BATCH) {
        let batch = (start..sessions.min(start + CONNECT_BATCH)).map(|_| connect(&endpoint));
        for connected in futures_util::future::join_all(batch).await {
            match connected {
                Ok((client, connection)) => {
                    clients.push(client);
                    endings.push(tokio::spawn(async move {
                        let result = connection.await;
                        End { at: Instant::now(), wall: OffsetDateTime::now_utc(), how: how(&result) }
                    }));
                }
                Err(error) => {
                    let message = error.as_db_error().map_or_else(|| error.to_string(), |db| db.message().to_owned());
                    let _ = ready.send(Err(message));
                    return Vec::new();
                }
            }
        }
    }
    let _ = ready.send(Ok(()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut ends = Vec::with_capacity(sessions);
    for ending in endings {
        match tokio::time::timeout_at(deadline, ending).await {
            Ok(Ok(end)) => ends.push(end),
            _ => ends.push(End { at: Instant::now(), wall: OffsetDateTime::now_utc(), how: "not cut within 60 s" }),
        }
    }
    drop(clients);
    ends
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    Revoke,
    Expiry,
}

impl Bench {
    async fn cuts(&self, report: &mut Report) {
        let (sessions, rounds) = (self.knobs.cut_sessions, self.knobs.cut_rounds);
        println!("\n## Sessions cut when their grant ends\n");
        println!(
            "{sessions} idle {} sessions (tokio-postgres on a thread of its own) under one `read` grant, {rounds} \
             rounds. Revoke: from the start of `broker.revoke` until each client's connection has received the \
             error and the close. Expiry ({}-second grants): from the grant's `ends_at` to the same point.\n",
            if self.knobs.cut_tls { "TLS" } else { "plain-text" },
            self.knobs.expiry_seconds
        );
        println!("| event | samples | min ms | p50 ms | p99 ms | max ms | how the sessions ended |");
        println!("|---|---:|---:|---:|---:|---:|---|");
        for cut in [Cut::Revoke, Cut::Expiry] {
            let (samples, hows, calls) = self.cut_rounds(cut, sessions, rounds).await;
            let stats = percentiles(&samples);
            let mut hows: Vec<_> = hows.into_iter().collect();
            hows.sort();
            let hows: Vec<String> = hows.iter().map(|(how, n)| format!("{n}× {how}")).collect();
            let what = if cut == Cut::Revoke { "revoke → disconnect" } else { "expiry → disconnect" };
            println!(
                "| {what} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                samples.len(),
                stats.min,
                stats.p50,
                stats.p99,
                stats.max,
                hows.join(", ")
            );
            if cut == Cut::Revoke {
                let calls = percentiles(&calls);
                report.cuts.push(("revoke → disconnect", stats));
                report.revoke_call = Some(calls);
            } else {
                report.cuts.push(("expiry → disconnect", stats));
            }
        }
        if let Some(calls) = report.revoke_call {
            println!(
                "\nThe `broker.revoke` call itself (its SQLite transaction): p50 {:.1} ms, max {:.1} ms.",
                calls.p50, calls.max
            );
        }
    }

    /// Samples in ms, how the sessions ended, and how long each revoke call took (ms).
    async fn cut_rounds(
        &self,
        cut: Cut,
        sessions: usize,
        rounds: usize,
    ) -> (Vec<f64>, HashMap<&'static str, usize>, Vec<f64>) {
        let (mut samples, mut hows, mut calls) = (Vec::new(), HashMap::new(), Vec::new());
        for round in 0..rounds {
            let duration = match cut {
                Cut::Revoke => "30m".to_owned(),
                Cut::Expiry => format!("{}s", self.knobs.expiry_seconds),
            };
            let grant = self.harness.read_grant(&duration).await;
            self.role_created(&grant).await;
            let password = self.harness.token(&grant).await;
            let tls = self.knobs.cut_tls.then(|| self.harness.tls.clone());
            let endpoint = Endpoint { port: self.harness.port, user: "dana".into(), password, tls };
            let (ready, is_ready) = tokio::sync::oneshot::channel();
            let ends = on_client_thread(move || hold_until_cut(endpoint, sessions, ready));
            if let Err(error) = is_ready.await.expect("the client thread answers") {
                panic!("cannot open {sessions} sessions through the gateway: {error}");
            }
            let origin = match cut {
                Cut::Revoke => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let from = Instant::now();
                    self.harness.revoke(&grant).await;
                    calls.push(from.elapsed().as_secs_f64() * 1000.0);
                    Ok(from)
                }
                Cut::Expiry => {
                    let stored = self.harness.broker.store().grant(&grant.id.to_string()).await;
                    let ends_at = stored.expect("the store").expect("the grant").ends_at;
                    assert!(
                        OffsetDateTime::now_utc() < ends_at,
                        "the sessions were not all open before the grant ended; raise AIRLOCK_BENCH_EXPIRY_SECONDS"
                    );
                    Err(ends_at)
                }
            };
            let ends = ends.await.expect("the client thread finishes");
            let mut slowest = 0.0_f64;
            for end in ends {
                *hows.entry(end.how).or_insert(0) += 1;
                let sample = match origin {
                    Ok(from) => end.at.saturating_duration_since(from).as_secs_f64() * 1000.0,
                    Err(ends_at) => (end.wall - ends_at).as_seconds_f64() * 1000.0,
                };
                slowest = slowest.max(sample);
                samples.push(sample);
            }
            eprintln!(
                "{} round {}: {} sessions cut, the last after {slowest:.1} ms",
                if cut == Cut::Revoke { "revoke" } else { "expiry" },
                round + 1,
                sessions
            );
        }
        (samples, hows, calls)
    }
}

// ---------------------------------------------------------------------------------------------
// The audit chain, read directly

/// The broker's SQLite database, read beside the broker to count records.
struct Audit(SqlitePool);

/// Records of a kind appended since some point.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    started: i64,
    ended: i64,
    executed: i64,
}

impl Audit {
    async fn open(file: &Path) -> Audit {
        let options = SqliteConnectOptions::new().filename(file).read_only(true);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await;
        Audit(pool.expect("the broker's SQLite database opens"))
    }

    /// The sequence number of the last record.
    async fn head(&self) -> i64 {
        let head = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM audit_events WHERE chain_id = 'broker'");
        head.fetch_one(&self.0).await.expect("the chain's head")
    }

    async fn counts(&self, since: i64) -> Counts {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT kind, count(*) FROM audit_events WHERE chain_id = 'broker' AND seq > ? \
             AND kind IN ('session.started', 'session.ended', 'statement.executed') GROUP BY kind",
        )
        .bind(since)
        .fetch_all(&self.0)
        .await
        .expect("counts of audit records");
        let mut counts = Counts::default();
        for (kind, n) in rows {
            match kind.as_str() {
                "session.started" => counts.started = n,
                "session.ended" => counts.ended = n,
                _ => counts.executed = n,
            }
        }
        counts
    }

    /// Waits until every session started after `since` has its `session.ended` record, which
    /// the gateway queues after all of the session's statements.
    async fn settle(&self, since: i64) -> Counts {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let counts = self.counts(since).await;
            if counts.started > 0 && counts.ended >= counts.started {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway's sessions are not all recorded after 5 minutes: {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
