//! The host `airlock serve` runs on: its data directory stays private whatever the umask (files
//! 0600, directories 0700; 0711 for the directories the `postgres` user passes through when we
//! are root and a throwaway PostgreSQL runs), files an older version left readable are set right,
//! and a second `serve` on the same directory is refused without touching the first.
//!
//! The throwaway cluster's own directory (`<data>/postgres/<resource>`) is left out of the mode
//! checks: it is made by `airlock_postgres::cluster` (0701 when root, for the `postgres` user, with
//! PostgreSQL's data directory inside 0700 and owned by that user, as PostgreSQL requires).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// What `umask 022` gives, the usual default: what the broker must not rely on.
fn usual_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Makes the directory and what is directly in it readable by all, as an older version left it.
fn as_an_older_version_left_it(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let loose = if entry.file_type().unwrap().is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(entry.path(), fs::Permissions::from_mode(loose)).unwrap();
    }
}

/// Every file and directory under `dir` (the throwaway clusters' own directories excepted), with
/// its mode.
fn modes_under(dir: &Path) -> Vec<(String, bool, u32)> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let is_dir = entry.file_type().unwrap().is_dir();
        found.push((path.display().to_string(), is_dir, mode(&path)));
        if is_dir && entry.file_name() != "postgres" {
            found.extend(modes_under(&path));
        }
    }
    found
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `dana` reads demo-db through the gateway.
#[track_caller]
fn orders_through_the_gateway(app: &TestApp) -> String {
    app.request("dana", "read", "20m");
    let count = app.airlock("dana", &["connect", "demo-db", "--", "-XAtc", "SELECT count(*) FROM orders"]);
    assert_exit(&count, 0);
    stdout(&count).trim().to_owned()
}

#[test]
fn the_data_directory_is_private_whatever_the_umask_and_the_throwaway_database_still_runs() {
    usual_umask();
    let mut app = spawn_app();
    app.server.take();
    as_an_older_version_left_it(&app.data_dir);
    app.start();
    assert!(app.throwaway_port.is_some(), "serve started the throwaway PostgreSQL: {}", app.server_log());

    // Root runs PostgreSQL as `postgres`, which must pass through to its cluster.
    let passable = if is_root() { 0o711 } else { 0o700 };
    assert_eq!(mode(&app.data_dir), passable);
    let found = modes_under(&app.data_dir);
    for name in ["airlock.db", "airlock.db-wal", "airlock.db-shm", "signing.key", "connector.key", "serve.lock"] {
        assert!(found.iter().any(|(path, _, _)| path.ends_with(name)), "{name} is there: {found:?}");
    }
    for (path, is_dir, mode) in &found {
        let expected = if *is_dir { passable } else { 0o600 };
        assert_eq!(*mode, expected, "{path} is {mode:o}");
    }
    assert_eq!(orders_through_the_gateway(&app), "5", "the throwaway database works");
}

#[test]
fn without_a_throwaway_database_everything_is_0700_or_0600() {
    usual_umask();
    let root = tempfile::tempdir().unwrap();
    let config = copy_quickstart(root.path());
    let catalog = root.path().join("catalog.toml");
    let text = fs::read_to_string(&catalog).unwrap();
    let elsewhere = "[resource.postgres]\naddress = \"127.0.0.1:9\"\ndatabase = \"demo\"\nadmin_user = \"airlock\"\n\
                     admin_password_file = \"nowhere.password\"\ntls = \"disable\"\n";
    fs::write(&catalog, text.replacen("[resource.postgres]\ndatabase = \"demo\"\n", elsewhere, 1)).unwrap();
    fs::write(root.path().join("nowhere.password"), "unused").unwrap();

    let mut app = spawn_app_with(&config);
    assert!(app.throwaway_port.is_none(), "demo-db has an address now");
    app.server.take();
    as_an_older_version_left_it(&app.data_dir);
    app.start();
    assert_eq!(mode(&app.data_dir), 0o700);
    let found = modes_under(&app.data_dir);
    assert!(found.len() >= 6, "{found:?}");
    for (path, is_dir, mode) in &found {
        assert_eq!(*mode, if *is_dir { 0o700 } else { 0o600 }, "{path} is {mode:o}");
    }
}

/// `GET /v1/health`'s status code.
fn health(url: &str) -> u16 {
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("the broker accepts connections");
    write!(stream, "GET /v1/health HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an HTTP answer");
    answer.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line")
}

#[test]
fn a_second_serve_on_the_same_data_directory_is_refused_and_the_first_serves_on() {
    let app = spawn_app();
    let first = app.server.as_ref().expect("the first broker runs").child.0.id();
    assert_eq!(orders_through_the_gateway(&app), "5");

    let mut second = airlock_command()
        .arg("serve")
        .arg("--config")
        .arg(&app.config)
        .arg("--data-dir")
        .arg(&app.data_dir)
        .args(["--listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the second `airlock serve` starts");
    let deadline = Instant::now() + PATIENCE;
    while second.try_wait().expect("the second `serve` can be waited for").is_none() {
        if Instant::now() >= deadline {
            let _ = second.kill();
            panic!("the second `serve` did not exit");
        }
        thread::sleep(Duration::from_millis(50));
    }
    let output = second.wait_with_output().expect("its output");
    assert_exit(&output, 2);
    let expected = format!("another `airlock serve` is using `{}` (pid {first})", app.data_dir.display());
    assert!(stderr(&output).contains(&expected), "{}", stderr(&output));
    assert!(stdout(&output).is_empty(), "it started nothing: {}", stdout(&output));

    assert_eq!(health(&app.url), 200, "the first broker still answers");
    assert_eq!(orders_through_the_gateway(&app), "5", "and its throwaway database is untouched");
}
