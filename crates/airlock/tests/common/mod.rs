//! What the tests of the real `airlock` binary share: `spawn_app()` adds the quickstart's users
//! with `airlock admin user add` and starts `airlock serve` on port 0 over a fresh data directory
//! (stopped with SIGTERM when dropped, its log shown when a test fails); running user and admin
//! commands; reading their exit codes and `--json` documents; waiting for a background effect
//! under a generous deadline; a copy of the quickstart a test may change. Each test binary uses
//! part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");

/// How long to wait for anything that happens in the background before giving up.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The quickstart's people and their groups.
pub const USERS: &[(&str, &[&str])] = &[
    ("alice", &["eng"]),
    ("bob", &["sre"]),
    ("carol", &["sre"]),
    ("dana", &["eng", "oncall"]),
    ("mallory", &["sales"]),
];

pub fn quickstart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart")
}

pub fn quickstart_config() -> PathBuf {
    quickstart().join("airlock.toml")
}

/// The binary, with none of the caller's `AIRLOCK_*` settings leaking in.
pub fn airlock_command() -> Command {
    let mut command = Command::new(AIRLOCK);
    for var in
        ["AIRLOCK_URL", "AIRLOCK_TOKEN", "AIRLOCK_CONFIG", "AIRLOCK_DATA_DIR", "AIRLOCK_LOG", "AIRLOCK_DEVICE_KEY"]
    {
        command.env_remove(var);
    }
    command.env("USER", "ops").stdin(Stdio::null());
    command
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the exit code, showing what the command printed when it is wrong.
#[track_caller]
pub fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "expected exit code {code}\n--- stdout\n{}--- stderr\n{}",
        stdout(output),
        stderr(output)
    );
}

/// The JSON document a successful `--json` command printed.
#[track_caller]
pub fn json_of(output: &Output) -> Value {
    assert_exit(output, 0);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", stdout(output)))
}

/// Calls `f` until it returns something, sleeping briefly in between, for at most [`PATIENCE`].
#[track_caller]
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up after {PATIENCE:?} waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed when dropped, so a failing test leaves nothing running.
/// A broker process: stopped with SIGTERM when dropped (as an operator would stop it, so it
/// stops its throwaway PostgreSQL too), killed if it has not exited after a while.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// SIGKILL: a crash, with no chance to clean up.
    pub fn crash(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Server {
    pub child: KillOnDrop,
    /// Kept open: the broker may print again, and a closed pipe would make that fail.
    pub _stdout: BufReader<ChildStdout>,
}

/// A broker over a fresh data directory, with the quickstart's users and their tokens.
pub struct TestApp {
    pub server: Option<Server>,
    pub url: String,
    pub tokens: HashMap<&'static str, String>,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Where `serve` said the quickstart's throwaway PostgreSQL listens.
    pub throwaway_port: Option<u16>,
    /// Where `serve` said its gateway listens.
    pub gateway_port: Option<u16>,
    pub _root: TempDir,
}

pub fn spawn_app() -> TestApp {
    spawn_app_with(&quickstart_config())
}

pub fn spawn_app_with(config: &Path) -> TestApp {
    spawn_app_in(tempfile::tempdir().expect("a temporary directory"), config)
}

/// A broker whose data directory is `<root>/data` (which a test may have mounted a file system
/// on beforehand).
pub fn spawn_app_in(root: TempDir, config: &Path) -> TestApp {
    let data_dir = root.path().join("data");
    let mut tokens = HashMap::new();
    for (name, groups) in USERS {
        let mut args = vec!["admin", "user", "add", name];
        for group in *groups {
            args.extend(["--group", group]);
        }
        let output = airlock_command()
            .args(&args)
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(&data_dir)
            .output()
            .expect("`airlock admin user add` runs");
        assert_exit(&output, 0);
        let printed = stdout(&output);
        assert!(
            printed.ends_with('\n') && printed.lines().count() == 1 && !printed.trim().is_empty(),
            "`admin user add` must print the token alone on one line, printed {printed:?}"
        );
        tokens.insert(*name, printed.trim().to_owned());
    }
    let log = root.path().join("serve.log");
    let mut app = TestApp {
        server: None,
        url: String::new(),
        tokens,
        config: config.to_owned(),
        data_dir,
        log,
        throwaway_port: None,
        gateway_port: None,
        _root: root,
    };
    app.start();
    app
}

impl TestApp {
    /// Starts `airlock serve` on a free port and waits for it to say where it listens.
    pub fn start(&mut self) {
        assert!(self.server.is_none(), "the broker is already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("the server log opens");
        let mut child = airlock_command()
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("`airlock serve` starts");
        let out = child.stdout.take().expect("stdout is piped");
        let child = KillOnDrop(child);
        // Read on a thread, so a broker that never says anything cannot hang the test.
        let (send, receive) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut line = String::new();
            let (mut throwaway_port, mut gateway_port) = (None, None);
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if let Some(rest) =
                            line.strip_prefix("started a throwaway PostgreSQL for `demo-db` on 127.0.0.1:")
                        {
                            throwaway_port = rest.split(' ').next().and_then(|port| port.parse::<u16>().ok());
                        }
                        if let Some(rest) = line.strip_prefix("airlock gateway listening on 127.0.0.1:") {
                            gateway_port = rest.split(' ').next().and_then(|port| port.parse::<u16>().ok());
                        }
                        if let Some(url) = line.trim_end().strip_prefix("airlock broker listening on ") {
                            let _ = send.send((url.to_owned(), reader, throwaway_port, gateway_port));
                            return;
                        }
                    }
                }
            }
        });
        match receive.recv_timeout(PATIENCE) {
            Ok((url, reader, throwaway_port, gateway_port)) => {
                assert!(url.starts_with("http://127.0.0.1:"), "unexpected address {url}");
                self.url = url;
                self.throwaway_port = throwaway_port;
                self.gateway_port = gateway_port;
                self.server = Some(Server { child, _stdout: reader });
            }
            Err(_) => {
                drop(child);
                panic!("`airlock serve` did not say where it listens; its log:\n{}", self.server_log());
            }
        }
    }

    /// Kills the broker (SIGKILL: no graceful shutdown).
    pub fn kill(&mut self) {
        let server = self.server.take().expect("the broker is running");
        server.child.crash();
    }

    pub fn server_log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    pub fn token(&self, user: &str) -> &str {
        self.tokens.get(user).unwrap_or_else(|| panic!("no user `{user}`"))
    }

    /// Runs a user command as `user`.
    pub fn airlock(&self, user: &str, args: &[&str]) -> Output {
        self.airlock_with(Some(self.token(user)), &self.url, args)
    }

    /// Runs a user command with any token (or none) against any URL.
    pub fn airlock_with(&self, token: Option<&str>, url: &str, args: &[&str]) -> Output {
        let mut command = airlock_command();
        command.env("AIRLOCK_URL", url).args(args);
        if let Some(token) = token {
            command.env("AIRLOCK_TOKEN", token);
        }
        command.output().expect("the airlock binary runs")
    }

    /// Runs a user command as `user` with `--json`, expecting exit code 0.
    #[track_caller]
    /// `GET /metrics` as `user` (or without a token): the status and the body.
    pub fn scrape(&self, user: Option<&str>) -> (u16, String) {
        let address = self.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).expect("the broker accepts connections");
        let auth = user.map(|u| format!("authorization: Bearer {}\r\n", self.token(u))).unwrap_or_default();
        write!(stream, "GET /metrics HTTP/1.1\r\nhost: {address}\r\n{auth}connection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("an HTTP answer");
        let status = answer.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line");
        let body = answer.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
        (status, body)
    }

    pub fn json(&self, user: &str, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        json_of(&self.airlock(user, &args))
    }

    /// Runs an `airlock admin` command on the data directory.
    pub fn admin(&self, args: &[&str]) -> Output {
        airlock_command()
            .arg("admin")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .expect("`airlock admin` runs")
    }

    /// `airlock request demo-db --role ROLE --for DURATION --reason ... --json` as `user`.
    #[track_caller]
    pub fn request(&self, user: &str, role: &str, duration: &str) -> Value {
        self.json(user, &["request", "demo-db", "--role", role, "--for", duration, "--reason", "ticket OPS-1"])
    }

    /// The one grant with this id among those `user` sees.
    #[track_caller]
    pub fn grant_as(&self, user: &str, grant_id: &str) -> Value {
        find(&self.json(user, &["grants"]), grant_id)
    }

    /// The one request with this id among those `user` sees.
    #[track_caller]
    pub fn request_as(&self, user: &str, request_id: &str) -> Value {
        find(&self.json(user, &["requests"]), request_id)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.take();
        if thread::panicking() {
            eprintln!("--- airlock serve log\n{}", self.server_log());
        }
    }
}

/// The element of a JSON array with this `id`.
#[track_caller]
pub fn find(list: &Value, id: &str) -> Value {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .find(|item| item["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no `{id}` in {list:#}"))
}

pub fn str_of<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_else(|| panic!("`{field}` is not a string in {value:#}"))
}

/// Copies the quickstart into `dir`, so a test can break it.
pub fn copy_quickstart(dir: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    copy(&quickstart(), dir);
    dir.join("airlock.toml")
}
