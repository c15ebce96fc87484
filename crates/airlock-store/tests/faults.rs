//! The store under faults of its disk and its lock, each followed by recovery in the same
//! process: a full disk (a small tmpfs filled by a file), store files that refuse writes (an
//! ext4 image with the files made immutable: Linux refuses to remount a file system read-only
//! while files on it are open for writing, so this is how a test makes writes through the open
//! files fail), and the database's write lock held by another connection.
//!
//! Mounting needs root; without it, each test prints why and passes without running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use airlock_core::audit::export::Verifier;
use airlock_core::audit::{AuditEvent, EventKind};
use airlock_store::{BROKER_CHAIN, StorageFault, Store, StoreError};
use sqlx::Connection;
use time::OffsetDateTime;

/// A file system mounted for one test, unmounted (lazily: the store may still hold its files)
/// when dropped.
struct Mount {
    at: PathBuf,
    image: Option<PathBuf>,
    _root: tempfile::TempDir,
}

impl Mount {
    /// A tmpfs of `size` (e.g. `8m`), or `None` (with the reason printed) when mounting fails.
    fn tmpfs(size: &str) -> Option<Self> {
        let root = tempfile::tempdir().unwrap();
        let at = root.path().join("data");
        std::fs::create_dir(&at).unwrap();
        let options = format!("size={size},mode=0700");
        Self::run_mount(&["-t", "tmpfs", "-o", &options, "tmpfs"], at, None, root)
    }

    /// An ext4 file system in a loop-mounted image of `megabytes`.
    fn ext4(megabytes: u64) -> Option<Self> {
        let root = tempfile::tempdir().unwrap();
        let image = root.path().join("fs.img");
        std::fs::File::create(&image).unwrap().set_len(megabytes << 20).unwrap();
        let made = Command::new("mkfs.ext4").arg("-q").arg(&image).output();
        if !made.as_ref().is_ok_and(|out| out.status.success()) {
            eprintln!("skipped: cannot make an ext4 file system (mkfs.ext4: {made:?})");
            return None;
        }
        let at = root.path().join("data");
        std::fs::create_dir(&at).unwrap();
        let image_arg = image.to_str().unwrap().to_owned();
        Self::run_mount(&["-o", "loop", &image_arg], at, Some(image), root)
    }

    fn run_mount(args: &[&str], at: PathBuf, image: Option<PathBuf>, root: tempfile::TempDir) -> Option<Self> {
        match Command::new("mount").args(args).arg(&at).output() {
            Ok(out) if out.status.success() => Some(Self { at, image, _root: root }),
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
        loop {
            if let Err(error) = file.write_all(&block) {
                assert_eq!(error.raw_os_error(), Some(28), "the file system fills up (ENOSPC): {error}");
                break;
            }
        }
        let _ = file.flush();
        path
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("--lazy").arg(&self.at).status();
        let _ = self.image.as_ref().map(std::fs::remove_file);
    }
}

fn event(n: usize, bytes: usize) -> AuditEvent {
    AuditEvent {
        kind: EventKind::StatementExecuted,
        actor: "alice".into(),
        at: OffsetDateTime::now_utc(),
        details: serde_json::json!({ "n": n, "text": "x".repeat(bytes) }),
    }
}

/// One write of the kind every use case makes: begin, append, commit.
async fn write(store: &Store, n: usize, bytes: usize) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    tx.append(vec![event(n, bytes)]).await?;
    tx.commit().await
}

/// Writes `count` times from `parallel` tasks at once (so every pooled connection is used),
/// returning the outcomes.
async fn writes(store: &Store, count: usize, parallel: usize, bytes: usize) -> Vec<Result<(), StoreError>> {
    let mut outcomes = Vec::new();
    for round in 0..count.div_ceil(parallel) {
        let tasks: Vec<_> = (0..parallel.min(count - round * parallel))
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { write(&store, round * parallel + i, bytes).await })
            })
            .collect();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
    }
    outcomes
}

#[track_caller]
fn assert_all_ok(outcomes: &[Result<(), StoreError>], what: &str) {
    let failed: Vec<String> = outcomes.iter().filter_map(|o| o.as_ref().err().map(ToString::to_string)).collect();
    assert!(failed.is_empty(), "{what}: {} of {} writes failed: {failed:?}", failed.len(), outcomes.len());
}

#[track_caller]
fn assert_unavailable(outcomes: &[Result<(), StoreError>], fault: StorageFault, what: &str) {
    let failures: Vec<&StoreError> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(!failures.is_empty(), "{what}: some writes fail");
    for failure in &failures {
        assert!(
            matches!(failure, StoreError::Unavailable { fault: f, .. } if *f == fault),
            "{what}: every failure is `{fault}`, got {failure} ({failure:?})"
        );
    }
}

/// Verifies the whole chain (links and hashes); returns its length.
async fn verified_chain(store: &Store) -> i64 {
    let mut verifier = Verifier::new([0; 32], Vec::new());
    for record in store.audit_chain(BROKER_CHAIN).await.unwrap() {
        verifier.stored(&record);
    }
    let report = verifier.finish(false);
    assert!(report.intact(), "the chain verifies: {:?}", report.failures);
    report.records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_as_unavailable_and_they_work_again_once_space_returns() {
    let Some(mount) = Mount::tmpfs("8m") else { return };
    let store = Store::open(&mount.at).await.unwrap();
    assert_all_ok(&writes(&store, 16, 8, 100).await, "before the fault");
    assert!(store.writable(), "writable before the fault");

    let filler = mount.fill();
    let outcomes = writes(&store, 20, 8, 256 * 1024).await;
    assert_unavailable(&outcomes, StorageFault::Full, "disk full");
    assert!(!store.writable(), "a failed write for want of space is remembered");
    assert!(!store.probe().await, "the probe cannot write either");

    std::fs::remove_file(filler).unwrap();
    assert!(store.probe().await, "the probe writes once space returns");
    assert!(store.writable());
    assert_all_ok(&writes(&store, 20, 8, 256 * 1024).await, "after space returned");
    assert_all_ok(&writes(&store, 40, 8, 100).await, "after space returned, on every pooled connection");
    let head = verified_chain(&store).await;
    assert_eq!(head, 16 + 20 + 40 + outcomes.iter().filter(|o| o.is_ok()).count() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_files_that_refuse_writes_fail_them_as_unavailable_until_they_take_them_again() {
    let Some(mount) = Mount::ext4(64) else { return };
    let store = Store::open(&mount.at).await.unwrap();
    assert_all_ok(&writes(&store, 16, 8, 100).await, "before the fault");
    let files: Vec<PathBuf> =
        ["airlock.db", "airlock.db-wal"].iter().map(|name| mount.at.join(name)).filter(|p| p.exists()).collect();
    chattr("+i", &files);
    let outcomes = writes(&store, 20, 8, 64 * 1024).await;
    let faults: Vec<String> = outcomes.iter().filter_map(|o| o.as_ref().err().map(|e| format!("{e:?}"))).collect();
    assert!(outcomes.iter().all(Result::is_err), "no write gets through: {faults:?}");
    assert!(
        outcomes.iter().all(|o| matches!(o, Err(StoreError::Unavailable { .. }))),
        "every failure is unavailable: {faults:?}"
    );
    assert!(!store.writable());
    assert!(!store.probe().await);

    chattr("-i", &files);
    assert!(store.probe().await, "the probe writes once the files take writes again");
    assert_all_ok(&writes(&store, 20, 8, 64 * 1024).await, "after the files took writes again");
    assert_all_ok(&writes(&store, 40, 8, 100).await, "on every pooled connection");
    assert_eq!(verified_chain(&store).await, 16 + 20 + 40);
}

fn chattr(flag: &str, files: &[PathBuf]) {
    let status = Command::new("chattr").arg(flag).args(files).status().unwrap();
    assert!(status.success(), "chattr {flag} {files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_elsewhere_fails_writes_as_busy_and_they_work_again_once_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    assert_all_ok(&writes(&store, 8, 8, 100).await, "before the fault");

    let mut other = holder(dir.path()).await;
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut other).await.unwrap();
    let started = std::time::Instant::now();
    let outcomes = writes(&store, 4, 4, 100).await;
    assert!(outcomes.iter().all(Result::is_err), "no write gets through the other connection's lock");
    assert_unavailable(&outcomes, StorageFault::Busy, "lock held");
    assert!(started.elapsed() < 2 * airlock_store::BUSY_TIMEOUT + Duration::from_secs(5), "bounded waits");
    assert!(!store.writable());

    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    assert!(store.probe().await);
    assert_all_ok(&writes(&store, 40, 8, 100).await, "after the lock was released");
    assert_eq!(verified_chain(&store).await, 8 + 40);
}

async fn holder(dir: &Path) -> sqlx::SqliteConnection {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(dir.join("airlock.db"));
    sqlx::SqliteConnection::connect_with(&options).await.unwrap()
}
