//! Single sign-on from the command line: `airlock login` (the device flow, or with `--browser` a
//! loopback redirect), `airlock logout`, the login file they keep, and the login the HTTP client
//! ([`crate::client`]) calls with when `AIRLOCK_TOKEN` is not set, refreshing its access token when
//! it has expired. And, for `airlock serve`, the broker's [`SingleSignOn`] from `[identity.oidc]`.
//!
//! The login file (`$AIRLOCK_LOGIN_FILE`, else `$XDG_CONFIG_HOME/airlock/login.json`, else
//! `~/.config/airlock/login.json`) holds the broker's URL and the login's tokens, mode 0600
//! ([`crate::files`]). It is replaced whole, and changed only
//! under an exclusive lock on `login.json.lock`, so two commands that find the access token
//! expired at once refresh it once: the second reads the pair the first saved (a refresh token
//! works once; presenting a spent one would end the login).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_broker::Broker;
use airlock_broker::config::Config;
use airlock_broker::sso::SingleSignOn;
use airlock_http::api::{
    CodeBody, DevicePendingView, DevicePollBody, DeviceStartView, ErrorBody, LoginView, RefreshBody,
};
use anyhow::{Context, anyhow};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::Remote;
use crate::files;
use crate::{Failure, Outcome, output};

/// An access token this close to its end is refreshed before use.
const REFRESH_MARGIN: time::Duration = time::Duration::seconds(30);
/// How long `airlock login --browser` waits for the browser to come back.
const BROWSER_PATIENCE: Duration = Duration::from_secs(10 * 60);

/// `airlock serve`: the broker's single sign-on when `[identity.oidc]` is set, its provider
/// discovered now. A provider that cannot be reached stops the broker from starting (exit 2)
/// rather than leaving it up with nobody able to sign in; a supervisor's restart tries again.
pub async fn single_sign_on(broker: &Broker, config: &Config) -> Result<Option<Arc<SingleSignOn>>, Failure> {
    let Some(section) = &config.identity.oidc else {
        return Ok(None);
    };
    let sso = SingleSignOn::from_config(broker.clone(), section)
        .await
        .context("cannot set up single sign-on ([identity.oidc])")?;
    tracing::info!(issuer = %section.issuer, callback = %section.redirect_url, "single sign-on ready");
    Ok(Some(Arc::new(sso)))
}

/// What the login file holds.
#[derive(Clone, Serialize, Deserialize)]
struct LoginFile {
    /// The broker the login belongs to: its tokens are sent nowhere else.
    broker: String,
    #[serde(flatten)]
    login: LoginView,
}

impl LoginFile {
    fn fresh(&self, now: OffsetDateTime) -> bool {
        self.login.access_expires_at - REFRESH_MARGIN > now
    }
}

/// Where the login is kept.
pub fn login_file() -> Result<PathBuf, Failure> {
    files::config_file("AIRLOCK_LOGIN_FILE", "login.json")
}

/// The login file, if there is one.
fn read(path: &Path) -> Result<Option<LoginFile>, Failure> {
    let Some(text) = files::read_if_present(path)? else { return Ok(None) };
    let file = serde_json::from_str(&text).map_err(|e| {
        anyhow!("the login file {} is damaged ({e}): delete it and run `airlock login`", path.display())
    })?;
    Ok(Some(file))
}

/// Replaces the login file with `file`, mode 0600, whole or not at all.
fn write(path: &Path, file: &LoginFile) -> Result<(), Failure> {
    let text = serde_json::to_vec_pretty(file).context("cannot write the login")?;
    files::replace(path, &text, 0o600)
}

/// An exclusive lock on the login file's lock file, held until dropped.
async fn lock(path: &Path) -> Result<File, Failure> {
    files::make_parent(path)?;
    let lock_path = files::beside(path, ".lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
    // Another airlock command may hold it while it refreshes: wait off the runtime's threads.
    let locked = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .context("the lock task failed")?
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    Ok(locked)
}

/// The broker's URL without a trailing slash, checked.
fn base_of(remote: &Remote) -> Result<String, Failure> {
    let base = remote.url.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(anyhow!("AIRLOCK_URL `{base}` must start with http:// or https://").into());
    }
    Ok(base)
}

fn http() -> Result<reqwest::Client, Failure> {
    Ok(airlock_broker::outbound::client(Duration::from_secs(30)).context("cannot build the HTTP client")?)
}

/// POSTs `body` to the broker (without a token) and returns the status and body of the answer.
async fn post<B: Serialize>(http: &reqwest::Client, base: &str, path: &str, body: &B) -> Result<Answer, Failure> {
    let response = http
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach the broker at {base}: {e}"))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| anyhow!("the broker's answer was cut off: {e}"))?;
    Ok(Answer { status, bytes: bytes.to_vec() })
}

struct Answer {
    status: StatusCode,
    bytes: Vec<u8>,
}

impl Answer {
    fn json<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        serde_json::from_slice(&self.bytes)
            .map_err(|e| anyhow!("the broker's answer is not what this version of airlock expects: {e}").into())
    }

    /// The broker's message.
    fn message(&self) -> String {
        serde_json::from_slice::<ErrorBody>(&self.bytes)
            .map(|body| body.error)
            .unwrap_or_else(|_| format!("HTTP {}", self.status))
    }

    /// A refusal (4xx: exit 1) or a failure (exit 2).
    fn failure(&self) -> Failure {
        if self.status.is_client_error() {
            Failure::Refused(self.message())
        } else {
            anyhow!("the broker failed: {}", self.message()).into()
        }
    }
}

/// `airlock login`: signs in at the broker through its identity provider and keeps the login.
pub async fn login(remote: &Remote, browser: bool) -> Outcome {
    let base = base_of(remote)?;
    let path = login_file()?;
    let http = http()?;
    let view = if browser { browser_flow(&http, &base).await? } else { device_flow(&http, &base).await? };
    {
        let _lock = lock(&path).await?;
        write(&path, &LoginFile { broker: base.clone(), login: view.clone() })?;
    }
    if remote.json {
        output::json(&serde_json::json!({
            "user": view.user, "login": view.login, "broker": base,
            "expires_at": output::when(view.expires_at), "file": path.display().to_string(),
        }));
    } else {
        println!(
            "signed in to {base} as {}; the login lasts until {} (kept in {})",
            view.user,
            output::when(view.expires_at),
            path.display()
        );
    }
    if std::env::var("AIRLOCK_TOKEN").is_ok_and(|t| !t.trim().is_empty()) {
        eprintln!("note: AIRLOCK_TOKEN is set, and commands call with it rather than with this login");
    }
    Ok(())
}

/// The device flow: show the code, poll until the person answers at the provider.
async fn device_flow(http: &reqwest::Client, base: &str) -> Result<LoginView, Failure> {
    let started = post(http, base, "/v1/login/device", &serde_json::json!({})).await?;
    if started.status != StatusCode::OK {
        return Err(started.failure());
    }
    let device: DeviceStartView = started.json()?;
    eprintln!("To sign in, open {} and enter the code {}", device.verification_uri, device.user_code);
    if let Some(complete) = &device.verification_uri_complete {
        eprintln!("(or open {complete})");
    }
    eprintln!("waiting for the sign-in ...");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(device.expires_in_seconds);
    let mut interval = Duration::from_secs(device.interval_seconds.max(1));
    let poll = DevicePollBody { handle: device.handle };
    loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::Refused(
                "the sign-in expired before it was approved: run `airlock login` again".into(),
            ));
        }
        let answer = post(http, base, "/v1/login/device/poll", &poll).await?;
        match answer.status {
            StatusCode::OK => return answer.json(),
            StatusCode::ACCEPTED => {
                let pending: DevicePendingView = answer.json()?;
                if pending.status == "slow_down" {
                    interval += airlock_broker::sso::SLOW_DOWN_BY;
                }
            }
            _ => return Err(answer.failure()),
        }
    }
}

/// The browser flow: a listener on loopback that the broker hands the sign-in back to.
async fn browser_flow(http: &reqwest::Client, base: &str) -> Result<LoginView, Failure> {
    let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1 for the browser")?;
    let port = listener.local_addr().context("cannot read the listening address")?.port();
    // Only the sign-in this command started comes back with it: not a code somebody else's
    // sign-in sends to this port.
    let state = airlock_broker::secrets::new_token().context("cannot make a random state")?;
    let return_to = format!("http://127.0.0.1:{port}/callback?state={state}");
    let mut url = Url::parse(&format!("{base}/v1/login/oidc")).with_context(|| format!("`{base}` is not a URL"))?;
    url.query_pairs_mut().append_pair("return_to", &return_to);
    eprintln!("Sign in in your browser; if it does not open, visit:\n  {url}");
    open_browser(url.as_str());
    let code = tokio::time::timeout(BROWSER_PATIENCE, handed_back(&listener, &state)).await.map_err(|_| {
        Failure::Refused("the browser did not come back in time: run `airlock login --browser` again".into())
    })??;
    let answer = post(http, base, "/v1/login/handoff", &CodeBody { code }).await?;
    if answer.status != StatusCode::OK {
        return Err(answer.failure());
    }
    answer.json()
}

/// Asks `$BROWSER`, or else the desktop, to open `url`; a machine without one just has the URL
/// printed.
fn open_browser(url: &str) {
    let desktop = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    let opener = std::env::var("BROWSER").ok().filter(|b| !b.trim().is_empty()).unwrap_or_else(|| desktop.to_owned());
    let _ = tokio::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Waits for the browser to come back to `/callback?state=STATE&code=…` and returns the code.
async fn handed_back(listener: &TcpListener, state: &str) -> Result<String, Failure> {
    loop {
        let (mut socket, _) = listener.accept().await.context("cannot accept the browser's connection")?;
        let Some(target) = request_target(&mut socket).await else { continue };
        let Ok(url) = Url::parse(&format!("http://127.0.0.1{target}")) else { continue };
        let param = |name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
        if url.path() != "/callback" || param("state").as_deref() != Some(state) {
            reply(&mut socket, "404 Not Found", "Not this sign-in.").await;
            continue;
        }
        if let Some(error) = param("error") {
            reply(&mut socket, "200 OK", "The sign-in failed; the terminal says why. You can close this tab.").await;
            let why = param("error_description").unwrap_or_else(|| format!("`{error}`"));
            return Err(Failure::Refused(format!("the sign-in failed: {why}")));
        }
        if let Some(code) = param("code") {
            reply(&mut socket, "200 OK", "Signed in to Airlock. You can close this tab.").await;
            return Ok(code);
        }
        reply(&mut socket, "400 Bad Request", "No code.").await;
    }
}

/// The request target of one HTTP request on `socket` (`/callback?…`), if it is a GET.
async fn request_target(socket: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return None;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buffer)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let line = String::from_utf8_lossy(&head).lines().next()?.to_owned();
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) if target.starts_with('/') => Some(target.to_owned()),
        _ => None,
    }
}

async fn reply(socket: &mut TcpStream, status: &str, text: &str) {
    let body = format!("<!doctype html><title>Airlock</title><p>{text}</p>\n");
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(answer.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// `airlock logout`: ends the login at its broker and forgets it.
pub async fn logout(remote: &Remote) -> Outcome {
    let path = login_file()?;
    let Some(held) = read(&path)? else {
        eprintln!("not signed in (no login at {})", path.display());
        return Ok(());
    };
    // The login lives at its own broker, whatever AIRLOCK_URL says now.
    let session = Session { path: path.clone(), held: tokio::sync::Mutex::new(held.clone()) };
    let http = http()?;
    match session.access_token(&http).await {
        Ok(token) => {
            let response = http
                .post(format!("{}/v1/logout", held.broker))
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| anyhow!("cannot reach the broker at {}: {e}", held.broker))?;
            let status = response.status();
            // 401: the login had already ended.
            if !matches!(status, StatusCode::NO_CONTENT | StatusCode::UNAUTHORIZED) {
                let bytes = response.bytes().await.unwrap_or_default().to_vec();
                return Err(Answer { status, bytes }.failure());
            }
        }
        // Refused a refresh: the login has ended already, nothing is left to end at the broker.
        Err(Failure::Refused(_)) => {}
        // Unreachable: the file is kept, so that the login can still be ended.
        Err(other) => return Err(other),
    }
    {
        let _lock = lock(&path).await?;
        fs::remove_file(&path).with_context(|| format!("cannot delete the login file {}", path.display()))?;
    }
    if remote.json {
        output::json(&serde_json::json!({ "user": held.login.user, "broker": held.broker, "signed_out": true }));
    } else {
        println!("signed out of {} ({})", held.broker, held.login.user);
    }
    Ok(())
}

/// A login the HTTP client calls with: its access token, refreshed when it has expired.
pub struct Session {
    path: PathBuf,
    held: tokio::sync::Mutex<LoginFile>,
}

impl Session {
    /// The login kept in the login file, for calls to the broker at `base`; `None` when nobody is
    /// signed in.
    pub fn load(base: &str) -> Result<Option<Self>, Failure> {
        let path = login_file()?;
        let Some(held) = read(&path)? else {
            return Ok(None);
        };
        if held.broker != base {
            return Err(anyhow!(
                "the login in {} is for the broker at {}, not {base}: run `airlock login` there, or set AIRLOCK_TOKEN",
                path.display(),
                held.broker
            )
            .into());
        }
        if held.login.expires_at <= OffsetDateTime::now_utc() {
            return Err(anyhow!(
                "your login ended at {}: run `airlock login` again",
                output::when(held.login.expires_at)
            )
            .into());
        }
        Ok(Some(Self { path, held: tokio::sync::Mutex::new(held) }))
    }

    /// Where the login is kept, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The access token to call with: the one held while it works, else the next one, from the
    /// file (another command refreshed it) or from the broker (saved for the next command).
    pub async fn access_token(&self, http: &reqwest::Client) -> Result<String, Failure> {
        let mut held = self.held.lock().await;
        if held.fresh(OffsetDateTime::now_utc()) {
            return Ok(held.login.access_token.clone());
        }
        let _lock = lock(&self.path).await?;
        if let Some(on_disk) = read(&self.path)?
            && on_disk.broker == held.broker
            && on_disk.login.login == held.login.login
        {
            *held = on_disk;
            if held.fresh(OffsetDateTime::now_utc()) {
                return Ok(held.login.access_token.clone());
            }
        }
        let body = RefreshBody { refresh_token: held.login.refresh_token.clone() };
        let answer = post(http, &held.broker, "/v1/login/refresh", &body).await?;
        if answer.status == StatusCode::UNAUTHORIZED {
            return Err(Failure::Refused(format!("{}; run `airlock login` again", answer.message())));
        }
        if answer.status != StatusCode::OK {
            return Err(answer.failure());
        }
        let next = LoginFile { broker: held.broker.clone(), login: answer.json()? };
        write(&self.path, &next)?;
        *held = next;
        Ok(held.login.access_token.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_login_file_is_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/airlock/login.json");
        let at = OffsetDateTime::now_utc();
        let file = LoginFile {
            broker: "http://127.0.0.1:8470".into(),
            login: LoginView {
                user: "alice".into(),
                login: uuid::Uuid::nil(),
                access_token: "airlock_access".into(),
                refresh_token: "airlock_refresh".into(),
                access_expires_at: at,
                expires_at: at,
            },
        };
        write(&path, &file).unwrap();
        write(&path, &file).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(mode_of(path.parent().unwrap()), 0o700);
        let back = read(&path).unwrap().unwrap();
        assert_eq!((back.broker.as_str(), back.login.user.as_str()), ("http://127.0.0.1:8470", "alice"));
        assert!(!back.fresh(at), "an access token at its end is refreshed");
        assert!(!path.with_extension("json.new").exists());
    }
}
