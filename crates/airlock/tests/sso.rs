//! Single sign-on through the real binary: `airlock serve` with `[identity.oidc]` pointing at a
//! real OpenID Connect provider (`oidc-provider` on Node.js, from the testkit); `airlock login`
//! with the device flow while the test plays the person approving it at the provider, and with
//! `--browser` while it plays the browser; the other commands calling with the login file (no
//! `AIRLOCK_TOKEN`), refreshing as they go and following the provider's groups; `airlock logout`;
//! `serve` refusing to start without its provider; and the `/v1/login/*` routes at their edges.
//!
//! The provider runs on a tokio runtime the test holds; the test itself runs processes and waits
//! on threads, never on that runtime's workers.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use airlock_testkit::oidc::{OidcAccount, OidcConfig, OidcProvider};
use reqwest::Url;
use serde_json::{Value, json};

use common::*;

const CALLBACK: &str = "http://127.0.0.1:8470/v1/login/oidc/callback";

/// The quickstart in `dir` with single sign-on through `provider`; access tokens last 10 seconds,
/// so every command refreshes (30 seconds before the end, the client counts one as spent).
fn sso_config(dir: &Path, provider: &OidcProvider) -> std::path::PathBuf {
    let config = copy_quickstart(dir);
    std::fs::write(dir.join("oidc.secret"), format!("{}\n", provider.client_secret())).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[identity]\naccess_ttl = \"10s\"\n\n[identity.oidc]\nissuer = \"{}\"\nclient_id = \"{}\"\n\
         client_secret_file = \"oidc.secret\"\nredirect_url = \"{CALLBACK}\"\n",
        provider.issuer(),
        provider.client_id()
    ));
    std::fs::write(&config, text).unwrap();
    config
}

/// A user command against `url` with the login kept in `login_file` and no API token.
fn signed_in(url: &str, login_file: &Path) -> Command {
    let mut command = airlock_command();
    command.env("AIRLOCK_URL", url).env("AIRLOCK_LOGIN_FILE", login_file);
    command
}

/// Runs `airlock login` (the device flow) and approves its code at the provider as `sub`.
fn login(
    runtime: &tokio::runtime::Runtime,
    provider: &OidcProvider,
    url: &str,
    login_file: &Path,
    sub: &str,
) -> Output {
    let mut command = signed_in(url, login_file);
    command.arg("login");
    let (child, code, printed) = watch(command, |line| line.split("enter the code ").nth(1).map(str::trim));
    let user_code = code.recv_timeout(PATIENCE).expect("`airlock login` prints a code to enter");
    runtime.block_on(provider.approve_device(&user_code, sub));
    // The command polls every interval (5 seconds at this provider).
    finish(child, printed, PATIENCE + Duration::from_secs(30), "after the device was approved")
}

/// A running command, and what it printed: standard error (watched line by line on a thread, so
/// a command that never prints cannot hang the test) and standard output.
struct Printed {
    stderr: thread::JoinHandle<String>,
    stdout: thread::JoinHandle<String>,
}

/// Starts `command`, sending on the returned channel what `found` picks out of its standard
/// error lines.
fn watch(mut command: Command, found: fn(&str) -> Option<&str>) -> (KillOnDrop, mpsc::Receiver<String>, Printed) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the command starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (send, picked) = mpsc::channel();
    let stderr = thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(wanted) = found(&line) {
                let _ = send.send(wanted.to_owned());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let stdout = thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    (KillOnDrop(child), picked, Printed { stderr, stdout })
}

/// Waits, at most `patience`, for `child` to end, and returns what it printed.
fn finish(mut child: KillOnDrop, printed: Printed, patience: Duration, after: &str) -> Output {
    let deadline = Instant::now() + patience;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("the command can be waited for") {
            break status;
        }
        assert!(Instant::now() < deadline, "`airlock login` did not finish {after}");
        thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: printed.stdout.join().unwrap().into_bytes(),
        stderr: printed.stderr.join().unwrap().into_bytes(),
    }
}

/// Runs `airlock login --browser` and plays the browser: the broker's sign-in URL it prints, the
/// provider's pages as `sub`, the broker's callback (at the broker's real address: the registered
/// redirect URL names port 8470), and the redirect to the command's loopback listener.
fn browser_login(
    runtime: &tokio::runtime::Runtime,
    provider: &OidcProvider,
    url: &str,
    login_file: &Path,
    sub: &str,
) -> Output {
    let mut command = signed_in(url, login_file);
    command.args(["login", "--browser"]).env("BROWSER", "true");
    let (child, sign_in_url, printed) =
        watch(command, |line| Some(line.trim()).filter(|line| line.starts_with("http")));
    let sign_in_url = sign_in_url.recv_timeout(PATIENCE).expect("`airlock login --browser` prints where to sign in");
    let browser = airlock_broker::outbound::client_without_redirects(Duration::from_secs(30)).unwrap();
    let location = |response: &reqwest::Response| {
        let location = response.headers().get("location").expect("a redirect").to_str().unwrap();
        Url::parse(location).expect("an absolute location")
    };
    runtime.block_on(async {
        let to_provider = browser.get(&sign_in_url).send().await.unwrap();
        assert_eq!(to_provider.status(), 302);
        let back = provider.sign_in(&location(&to_provider), sub).await;
        let at_broker = format!("{url}{}?{}", back.path(), back.query().unwrap_or_default());
        let to_cli = browser.get(at_broker).send().await.unwrap();
        assert_eq!(to_cli.status(), 302, "the callback hands the sign-in back");
        let handed = location(&to_cli);
        assert_eq!(handed.host_str(), Some("127.0.0.1"));
        assert!(handed.query_pairs().any(|(k, _)| k == "code"), "{handed}");
        let page = browser.get(handed).send().await.unwrap();
        assert_eq!(page.status(), 200, "the command's listener answers the browser");
    });
    finish(child, printed, PATIENCE, "after the hand-back")
}

fn login_file_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("the login file")).expect("JSON")
}

#[test]
fn login_whoami_and_logout_with_the_device_flow_and_the_login_file() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let provider = runtime.block_on(OidcProvider::start(OidcConfig {
        redirect_uris: vec![Url::parse(CALLBACK).unwrap()],
        accounts: vec![OidcAccount::new("erin", &["eng", "oncall"])],
        ..OidcConfig::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(&sso_config(dir.path(), &provider));
    let login_file = dir.path().join("home/airlock/login.json");

    let output = login(&runtime, &provider, &app.url, &login_file, "sub-erin");
    assert_exit(&output, 0);
    assert!(stdout(&output).contains("as erin"), "{}", stdout(&output));
    let mode = std::fs::metadata(&login_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the login file is private");
    let first = login_file_json(&login_file);
    assert_eq!((&first["user"], &first["broker"]), (&json!("erin"), &json!(app.url)));
    for secret in ["access_token", "refresh_token"] {
        assert!(!stdout(&output).contains(str_of(&first, secret)), "`{secret}` is not printed");
        assert!(!stderr(&output).contains(str_of(&first, secret)), "`{secret}` is not printed");
    }

    // No AIRLOCK_TOKEN: the login file's login, refreshed (its access token is about to end).
    let me = json_of(&signed_in(&app.url, &login_file).args(["whoami", "--json"]).output().unwrap());
    assert_eq!((&me["name"], &me["groups"]), (&json!("erin"), &json!(["eng", "oncall"])));
    let second = login_file_json(&login_file);
    assert_eq!(second["login"], first["login"], "the same login");
    assert_ne!(second["refresh_token"], first["refresh_token"], "the refreshed pair is saved");
    // Each refresh asks the provider again: groups follow it.
    runtime.block_on(provider.set_groups("sub-erin", &["eng"]));
    let me = json_of(&signed_in(&app.url, &login_file).args(["whoami", "--json"]).output().unwrap());
    assert_eq!(me["groups"], json!(["eng"]));
    // A login is for its broker only: it is not sent elsewhere.
    let elsewhere = signed_in("http://127.0.0.1:9", &login_file).arg("whoami").output().unwrap();
    assert_exit(&elsewhere, 2);
    assert!(stderr(&elsewhere).contains("is for the broker at"), "{}", stderr(&elsewhere));

    let kept = login_file_json(&login_file);
    let output = signed_in(&app.url, &login_file).arg("logout").output().unwrap();
    assert_exit(&output, 0);
    assert!(stdout(&output).contains("signed out"), "{}", stdout(&output));
    assert!(!login_file.exists(), "the login file is gone");
    let after = signed_in(&app.url, &login_file).arg("whoami").output().unwrap();
    assert_exit(&after, 2);
    assert!(stderr(&after).contains("airlock login"), "{}", stderr(&after));
    // The ended login's last tokens are refused by the broker too.
    let token = str_of(&kept, "access_token");
    assert_exit(&app.airlock_with(Some(token), &app.url, &["whoami"]), 1);
    let refresh = http_post(&runtime, &app.url, "/v1/login/refresh", json!({ "refresh_token": kept["refresh_token"] }));
    assert_eq!(refresh.0, 401, "{}", refresh.1);

    // Again, in a browser on this machine.
    let output = browser_login(&runtime, &provider, &app.url, &login_file, "sub-erin");
    assert_exit(&output, 0);
    let me = json_of(&signed_in(&app.url, &login_file).args(["whoami", "--json"]).output().unwrap());
    assert_eq!((&me["name"], &me["groups"]), (&json!("erin"), &json!(["eng"])));

    // The routes' edges, as a browser or a script meets them.
    let client = airlock_broker::outbound::client_without_redirects(Duration::from_secs(30)).unwrap();
    let get = |path: &str| {
        runtime.block_on(async {
            let response = client.get(format!("{}{path}", app.url)).send().await.expect("the broker answers");
            let location = response.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
            (response.status().as_u16(), location, response.text().await.unwrap())
        })
    };
    let (status, location, _) = get("/v1/login/oidc");
    assert_eq!(status, 302);
    assert!(location.unwrap().starts_with(provider.issuer().as_str()), "to the provider");
    let (status, _, body) = get("/v1/login/oidc?return_to=https%3A%2F%2Fevil.example%2Fcb");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("loopback"), "{body}");
    let (status, _, body) = get("/v1/login/oidc/callback?code=c&state=forged");
    assert_eq!(status, 400, "{body}");
    let (status, body) = http_post(&runtime, &app.url, "/v1/login/handoff", json!({ "code": "guess" }));
    assert_eq!(status, 400, "{body}");
    let (status, body) = http_post(&runtime, &app.url, "/v1/login/device/poll", json!({ "handle": "guess" }));
    assert_eq!(status, 400, "{body}");
    let (status, body) = http_post(&runtime, &app.url, "/v1/login/device", json!({}));
    assert_eq!(status, 200, "{body}");
    let started: Value = serde_json::from_str(&body).unwrap();
    let handle = str_of(&started, "handle");
    assert!(!handle.is_empty() && started["interval_seconds"].as_u64() >= Some(1), "{started:#}");
    runtime.block_on(provider.deny_device(str_of(&started, "user_code"), "sub-erin"));
    let (status, body) = http_post(&runtime, &app.url, "/v1/login/device/poll", json!({ "handle": handle }));
    assert_eq!(status, 403, "{body}");
}

/// POSTs JSON to the broker without a token: the status and the body.
fn http_post(runtime: &tokio::runtime::Runtime, base: &str, path: &str, body: Value) -> (u16, String) {
    runtime.block_on(async {
        let client = airlock_broker::outbound::client(Duration::from_secs(30)).unwrap();
        let response = client.post(format!("{base}{path}")).json(&body).send().await.expect("the broker answers");
        (response.status().as_u16(), response.text().await.unwrap())
    })
}

#[test]
fn serve_does_not_start_when_the_identity_provider_cannot_be_reached() {
    let dir = tempfile::tempdir().unwrap();
    let config = copy_quickstart(dir.path());
    std::fs::write(dir.path().join("oidc.secret"), "secret\n").unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    // Port 9 (discard) on loopback: nothing listens there.
    text.push_str(&format!(
        "\n[identity.oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"airlock\"\n\
         client_secret_file = \"oidc.secret\"\nredirect_url = \"{CALLBACK}\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    let mut child = airlock_command()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`airlock serve` starts");
    let stderr = child.stderr.take().unwrap();
    let printed = thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + PATIENCE * 3;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "`airlock serve` kept running without its identity provider");
        thread::sleep(Duration::from_millis(100));
    };
    let printed = printed.join().unwrap();
    assert_eq!(status.code(), Some(2), "{printed}");
    assert!(printed.contains("cannot set up single sign-on ([identity.oidc])"), "{printed}");
    assert!(printed.contains("http://127.0.0.1:9"), "{printed}");
}

#[tokio::test]
async fn without_identity_oidc_the_login_routes_say_single_sign_on_is_not_configured() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = std::fs::read_to_string(quickstart().join("catalog.toml")).unwrap();
    let clock = std::sync::Arc::new(airlock_broker::clock::SystemClock);
    let broker = airlock_testkit::broker(dir.path(), &catalog, clock).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = airlock_http::AppState { broker, gateway: None, metrics: None, sso: None };
    tokio::spawn(airlock_http::serve(listener, state, std::future::pending()));
    let client = airlock_broker::outbound::client_without_redirects(Duration::from_secs(30)).unwrap();
    for (body, path) in [
        (None, "/v1/login/oidc"),
        (None, "/v1/login/oidc/callback?code=c&state=s"),
        (Some(json!({ "code": "c" })), "/v1/login/handoff"),
        (Some(json!({})), "/v1/login/device"),
        (Some(json!({ "handle": "h" })), "/v1/login/device/poll"),
        // Whatever the body: the answer is about the broker, not the request.
        (Some(json!({ "refresh": 1 })), "/v1/login/refresh"),
    ] {
        let request = match body {
            Some(body) => client.post(format!("{url}{path}")).json(&body),
            None => client.get(format!("{url}{path}")),
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("single sign-on is not configured"), "{path}: {body}");
    }
}
