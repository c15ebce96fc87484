//! `airlock serve` through faults of its store, each followed by recovery in the same process
//! (design invariant 11): a full disk (the data directory on a small tmpfs, filled by a file),
//! store files that refuse writes (an ext4 image with `airlock.db` and its write-ahead log made
//! immutable — Linux refuses to remount a file system read-only while files on it are open for
//! writing, so this is how writes through the open files are made to fail, with the same
//! `SQLITE_IOERR_WRITE` a file system gone read-only gives), and the database's write lock held
//! by another connection. While the fault lasts, use cases answer 503 with `Retry-After`,
//! `/v1/ready` says 503 and the background loops back off; once it is gone, the same process
//! serves every request and its audit chain verifies.
//!
//! Mounting needs root (CI runs as root); without it, the mounting tests print why and pass
//! without running.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use sqlx::Connection;

/// A file system mounted on `<root>/data` for one test, unmounted lazily when dropped (the
/// broker may still hold its files; it is stopped after).
struct Mount {
    at: PathBuf,
}

impl Mount {
    /// A tmpfs of `size` on `<root>/data`, or `None` (the reason printed) when mounting fails.
    fn tmpfs(root: &Path, size: &str) -> Option<Self> {
        let at = root.join("data");
        std::fs::create_dir(&at).unwrap();
        let options = format!("size={size},mode=0700");
        Self::run_mount(&["-t", "tmpfs", "-o", &options, "tmpfs"], at)
    }

    /// An ext4 file system of `megabytes` in a loop-mounted image beside `<root>/data`.
    fn ext4(root: &Path, megabytes: u64) -> Option<Self> {
        let image = root.join("fs.img");
        std::fs::File::create(&image).unwrap().set_len(megabytes << 20).unwrap();
        let made = Command::new("mkfs.ext4").arg("-q").arg(&image).output();
        if !made.as_ref().is_ok_and(|out| out.status.success()) {
            eprintln!("skipped: cannot make an ext4 file system (mkfs.ext4: {made:?})");
            return None;
        }
        let at = root.join("data");
        std::fs::create_dir(&at).unwrap();
        let mounted = Self::run_mount(&["-o", "loop", image.to_str().unwrap()], at)?;
        std::fs::remove_dir(mounted.at.join("lost+found")).unwrap();
        Some(mounted)
    }

    fn run_mount(args: &[&str], at: PathBuf) -> Option<Self> {
        match Command::new("mount").args(args).arg(&at).output() {
            Ok(out) if out.status.success() => Some(Self { at }),
            outcome => {
                eprintln!("skipped: cannot mount {args:?} (needs root): {outcome:?}");
                None
            }
        }
    }

    /// Writes a file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.at.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0xa5u8; 64 * 1024];
        while let Ok(()) = file.write_all(&block) {}
        path
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("--lazy").arg(&self.at).status();
    }
}

/// The quickstart without its throwaway PostgreSQL (`demo-db` names no database), so the data
/// directory holds only the broker's own files.
fn config_without_database(root: &Path) -> PathBuf {
    let config = copy_quickstart(&root.join("quickstart"));
    let catalog_path = root.join("quickstart/catalog.toml");
    let catalog = std::fs::read_to_string(&catalog_path).unwrap();
    let without = catalog.replace("[resource.postgres]\ndatabase = \"demo\"\n", "");
    assert_ne!(without, catalog, "the quickstart's demo-db names a database");
    std::fs::write(&catalog_path, without).unwrap();
    config
}

/// What the tests ask of the broker over HTTP.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    url: String,
    dana: String,
}

/// An answer: status, `Retry-After`, JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

impl Client {
    fn new(app: &TestApp) -> Self {
        let http = airlock_broker::outbound::client(Duration::from_secs(60)).unwrap();
        Self { http, url: app.url.clone(), dana: app.token("dana").to_owned() }
    }

    async fn answer(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("HTTP {status}: not JSON ({e}): {text:?}"));
        Answer { status, retry_after, body }
    }

    /// dana asks for read on demo-db for `duration`: auto-approved, so a request and a grant.
    async fn request(&self, duration: &str) -> Answer {
        let body = json!({"resource": "demo-db", "role": "read", "duration": duration, "reason": "ticket OPS-1"});
        let sent = self.http.post(format!("{}/v1/requests", self.url)).bearer_auth(&self.dana).json(&body);
        Self::answer(sent.send().await.unwrap()).await
    }

    /// `n` requests, `parallel` at a time.
    async fn requests(&self, n: usize, parallel: usize) -> Vec<Answer> {
        let mut answers = Vec::new();
        for round in 0..n.div_ceil(parallel) {
            let tasks: Vec<_> = (0..parallel.min(n - round * parallel))
                .map(|_| {
                    let client = self.clone();
                    tokio::spawn(async move { client.request("1h").await })
                })
                .collect();
            for task in tasks {
                answers.push(task.await.unwrap());
            }
        }
        answers
    }

    /// dana's gateway credential for `grant` (recorded through the group-commit appender).
    async fn credential(&self, grant: &str) -> Answer {
        let sent = self.http.post(format!("{}/v1/grants/{grant}/credentials", self.url)).bearer_auth(&self.dana);
        Self::answer(sent.send().await.unwrap()).await
    }

    async fn get(&self, path: &str) -> Answer {
        Self::answer(self.http.get(format!("{}{path}", self.url)).send().await.unwrap()).await
    }
}

/// Every answer is a 503 with `Retry-After` and a JSON error naming `fault`.
#[track_caller]
fn assert_all_unavailable(answers: &[Answer], fault: &str) {
    for answer in answers {
        assert_eq!(answer.status, 503, "{answer:?}");
        assert_eq!(answer.retry_after.as_deref(), Some("2"), "{answer:?}");
        assert_eq!(answer.body["code"], "unavailable", "{answer:?}");
        let message = answer.body["error"].as_str().unwrap();
        assert!(message.contains(&format!("the store cannot write: {fault}; retry later")), "{message}");
        assert!(!message.contains("code:") && !message.contains("sqlite"), "no internals: {message}");
    }
}

#[track_caller]
fn assert_all_created(answers: &[Answer], what: &str) {
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 201).collect();
    assert!(failed.is_empty(), "{what}: {} of {} failed: {failed:?}", failed.len(), answers.len());
}

/// `airlock_background_failures_total{task="…"}` from `/metrics`.
fn failures(app: &TestApp, task: &str) -> u64 {
    let (status, text) = app.scrape(Some("bob"));
    assert_eq!(status, 200, "{text}");
    let prefix = format!("airlock_background_failures_total{{task=\"{task}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&prefix)).map_or(0, |n| n.trim().parse().unwrap())
}

/// Waits until `/v1/ready` says ready again.
async fn ready_again(client: &Client) -> Duration {
    let started = Instant::now();
    loop {
        let ready = client.get("/v1/ready").await;
        if ready.status == 200 {
            assert_eq!(ready.body["ready"], true);
            return started.elapsed();
        }
        assert!(started.elapsed() < PATIENCE, "not ready again: {ready:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts that the broker is not ready, for `fault`, and that `/v1/health` still answers.
async fn assert_not_ready(client: &Client, fault: &str) {
    let ready = client.get("/v1/ready").await;
    assert_eq!((ready.status, ready.retry_after.as_deref()), (503, Some("2")), "{ready:?}");
    assert_eq!(ready.body["ready"], false, "{ready:?}");
    assert_eq!(ready.body["store"], format!("the store cannot write: {fault}"), "{ready:?}");
    let health = client.get("/v1/health").await;
    assert_eq!((health.status, &health.body["ready"]), (200, &json!(false)), "alive, not ready: {health:?}");
}

/// After a fault: every request works, the grant that ended meanwhile is expired, and the
/// chain verifies.
async fn assert_recovered(app: &TestApp, client: &Client, ended_grant: &str) {
    let waited = ready_again(client).await;
    eprintln!("ready again {waited:?} after the fault ended");
    assert_all_created(&client.requests(20, 4).await, "after the fault");
    eventually("the grant that ended during the fault to be expired", || {
        (app.grant_as("dana", ended_grant)["state"] == "expired").then_some(())
    });
    let verify = app.airlock("bob", &["audit", "verify"]);
    assert_exit(&verify, 0);
    assert!(stdout(&verify).contains("audit chain intact"), "{}", stdout(&verify));
}

/// Starts a grant that ends in 3 s, so the scheduler has something to commit during the fault.
async fn grant_ending_soon(client: &Client) -> String {
    let answer = client.request("3s").await;
    assert_eq!(answer.status, 201, "{answer:?}");
    answer.body["grant"]["id"].as_str().expect("auto-approved").to_owned()
}

/// A connection of the test's own on the broker's database.
async fn connection(data_dir: &Path) -> sqlx::SqliteConnection {
    let options =
        sqlx::sqlite::SqliteConnectOptions::new().filename(data_dir.join("airlock.db")).busy_timeout(PATIENCE);
    sqlx::SqliteConnection::connect_with(&options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_backs_off_then_the_same_process_serves_again() {
    let root = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::tmpfs(root.path(), "32m") else { return };
    let config = config_without_database(root.path());
    let app = spawn_app_in(root, &config);
    let mount = mount; // dropped (unmounted) before the broker is stopped and its directory removed
    let client = Client::new(&app);
    assert_all_created(&client.requests(5, 5).await, "before the fault");
    let live = client.requests(1, 1).await.remove(0).body["grant"]["id"].as_str().unwrap().to_owned();
    let ending = grant_ending_soon(&client).await;
    assert_eq!(client.get("/v1/ready").await.status, 200);

    // Let the checkpointer sign what was appended, empty the write-ahead log (a log with room
    // in it takes small commits even on a full disk), then fill the disk.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut connection(&mount.at).await).await.unwrap();
    let filler = mount.fill();

    assert_all_unavailable(&client.requests(20, 4).await, "disk full");
    let credentials = [client.credential(&live).await, client.credential(&live).await];
    assert_all_unavailable(&credentials, "disk full");
    assert_not_ready(&client, "disk full").await;

    // The grant has ended by now: the scheduler's sweep cannot commit, and backs off.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (before, started) = (failures(&app, "scheduler"), Instant::now());
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (after, window) = (failures(&app, "scheduler"), started.elapsed());
    eprintln!("scheduler: {} failed passes in {window:?} while the disk was full", after - before);
    assert!(after > before, "the sweep fails while the disk is full");
    assert!(after - before <= 8, "backing off, not spinning: {} failed passes in {window:?}", after - before);
    let appender = failures(&app, "appender");
    assert!((1..=2).contains(&appender), "the appender tried once and rested: {appender} failed commits");

    std::fs::remove_file(filler).unwrap();
    assert_recovered(&app, &client, &ending).await;
    assert_eq!(client.credential(&live).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_files_refusing_writes_answer_503_then_the_same_process_serves_again() {
    let root = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::ext4(root.path(), 64) else { return };
    let config = config_without_database(root.path());
    let app = spawn_app_in(root, &config);
    let mount = mount;
    let client = Client::new(&app);
    assert_all_created(&client.requests(5, 5).await, "before the fault");
    let ending = grant_ending_soon(&client).await;

    let files = [mount.at.join("airlock.db"), mount.at.join("airlock.db-wal")];
    chattr("+i", &files);
    assert_all_unavailable(&client.requests(20, 4).await, "input/output error");
    assert_not_ready(&client, "input/output error").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let scheduler = failures(&app, "scheduler");
    assert!((1..=6).contains(&scheduler), "the sweep fails and backs off: {scheduler} failed passes");

    chattr("-i", &files);
    assert_recovered(&app, &client, &ending).await;
}

fn chattr(flag: &str, files: &[PathBuf]) {
    let status = Command::new("chattr").arg(flag).args(files).status().unwrap();
    assert!(status.success(), "chattr {flag} {files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_elsewhere_answers_503_then_the_same_process_serves_again() {
    let config_root = tempfile::tempdir().unwrap();
    let config = config_without_database(config_root.path());
    let app = spawn_app_with(&config);
    let client = Client::new(&app);
    assert_all_created(&client.requests(5, 5).await, "before the fault");
    let ending = grant_ending_soon(&client).await;

    let mut holder = connection(&app.data_dir).await;
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut holder).await.unwrap();
    let started = Instant::now();
    let answers = client.requests(4, 4).await;
    let took = started.elapsed();
    assert_all_unavailable(&answers, "the database is locked");
    assert!(took < Duration::from_secs(25), "each waits the busy timeout at most once or twice: {took:?}");
    assert_not_ready(&client, "the database is locked").await;

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    assert_recovered(&app, &client, &ending).await;
}
