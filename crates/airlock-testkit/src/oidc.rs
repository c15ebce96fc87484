//! A real OpenID Connect provider for tests: `oidc-provider` (npm) run by Node.js from
//! `oidc/provider.mjs`, with one confidential client and a few accounts, and a person's part of
//! the sign-in (login and consent pages, the device flow's code page) played over plain HTTP.
//!
//! Its packages are installed once with `npm ci --prefix crates/airlock-testkit/oidc`.
//! The provider issues refresh tokens to the client without `prompt=consent`, rotates them on
//! every use, puts `preferred_username`, `email` and `groups` in the ID token, and requires
//! PKCE (S256). Tests change an account's groups ([`OidcProvider::set_groups`]) or remove it
//! ([`OidcProvider::remove_account`]) while it runs.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use airlock_broker::oidc::OidcSettings;
use reqwest::redirect::Policy;
use reqwest::{Client, Method, StatusCode, Url};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where `provider.mjs` and its `node_modules` live.
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/oidc");

/// A person known to the provider.
#[derive(Debug, Clone)]
pub struct OidcAccount {
    pub sub: String,
    pub preferred_username: String,
    pub email: String,
    pub groups: Vec<String>,
}

impl OidcAccount {
    /// An account whose `sub` is `sub-{username}` and whose email is `{username}@example.com`.
    pub fn new(username: &str, groups: &[&str]) -> Self {
        Self {
            sub: format!("sub-{username}"),
            preferred_username: username.to_owned(),
            email: format!("{username}@example.com"),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }
}

/// What the provider is started with.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// 0 picks a free port.
    pub port: u16,
    pub client_id: String,
    pub client_secret: String,
    /// Where the provider may send browsers back to, compared exactly.
    pub redirect_uris: Vec<Url>,
    pub accounts: Vec<OidcAccount>,
}

impl Default for OidcConfig {
    /// Client `airlock` redirecting to `http://127.0.0.1:8080/v1/auth/oidc/callback`; accounts
    /// `alice` (`eng`) and `bob` (`sre`).
    fn default() -> Self {
        Self {
            port: 0,
            client_id: "airlock".to_owned(),
            client_secret: "airlock-test-client-secret-0d41c9".to_owned(),
            redirect_uris: vec![Url::parse("http://127.0.0.1:8080/v1/auth/oidc/callback").expect("a URL")],
            accounts: vec![OidcAccount::new("alice", &["eng"]), OidcAccount::new("bob", &["sre"])],
        }
    }
}

/// A running provider, stopped on drop.
pub struct OidcProvider {
    config: OidcConfig,
    issuer: Url,
    http: Client,
    _child: Child,
    _logs: tempfile::TempDir,
}

impl OidcProvider {
    /// Starts the provider and waits until it serves. Panics, saying what to do, when Node.js or
    /// the npm packages are missing.
    pub async fn start(config: OidcConfig) -> Self {
        if !Path::new(DIR).join("node_modules/oidc-provider").is_dir() {
            panic!(
                "the test OpenID Connect provider's npm packages are not installed: \
                 run `npm ci --prefix crates/airlock-testkit/oidc` at the repository's root"
            );
        }
        let arguments = json!({
            "port": config.port,
            "client": {
                "client_id": config.client_id,
                "client_secret": config.client_secret,
                "redirect_uris": config.redirect_uris.iter().map(Url::as_str).collect::<Vec<_>>(),
            },
            "accounts": config.accounts.iter().map(|a| json!({
                "sub": a.sub,
                "preferred_username": a.preferred_username,
                "email": a.email,
                "groups": a.groups,
            })).collect::<Vec<_>>(),
        });
        let logs = tempfile::tempdir().expect("a directory for the provider's log");
        let log_path = logs.path().join("provider.log");
        let log = std::fs::File::create(&log_path).expect("the provider's log file");
        let mut child = Command::new("node")
            .arg(Path::new(DIR).join("provider.mjs"))
            .arg(arguments.to_string())
            .current_dir(DIR)
            // The provider exits when its stdin closes, should this process die without dropping it.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` (Node.js 20.19 or later is needed): {e}"));
        let mut stdout = BufReader::new(child.stdout.take().expect("the provider's stdout")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await;
        // Whatever else it prints is read and dropped: a closed pipe would kill it at its next write.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        let line = match ready {
            Ok(Ok(Some(line))) => line,
            _ => panic!(
                "the test OpenID Connect provider did not start; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            ),
        };
        let ready: serde_json::Value = serde_json::from_str(&line).expect("the provider's ready line is JSON");
        let issuer = ready["issuer"].as_str().and_then(|s| Url::parse(s).ok()).expect("the provider names its issuer");
        Self { config, issuer, http: browser(), _child: child, _logs: logs }
    }

    /// The issuer URL, e.g. `http://127.0.0.1:PORT/` (the provider's own has no trailing slash).
    pub fn issuer(&self) -> &Url {
        &self.issuer
    }

    pub fn client_id(&self) -> &str {
        &self.config.client_id
    }

    pub fn client_secret(&self) -> &str {
        &self.config.client_secret
    }

    /// The first registered redirect URI.
    pub fn redirect_uri(&self) -> &Url {
        &self.config.redirect_uris[0]
    }

    /// The broker's settings for this provider, with the default claims and scopes.
    pub fn settings(&self) -> OidcSettings {
        OidcSettings::new(self.issuer.clone(), self.client_id(), self.client_secret())
    }

    /// Plays a person signing in as `sub` in a fresh browser at `authorize_url`: logs in,
    /// consents, and returns where the provider sends the browser back (the client's redirect
    /// URI with `code` and `state`), without going there.
    pub async fn sign_in(&self, authorize_url: &Url, sub: &str) -> Url {
        match walk(&browser(), Method::GET, authorize_url.clone(), &[], sub).await {
            Walked::Left(callback) => callback,
            Walked::Page(url, page) => panic!("the sign-in stopped at {url}:\n{page}"),
        }
    }

    /// Plays `sub` entering `user_code` on the provider's device page, logging in and consenting.
    pub async fn approve_device(&self, user_code: &str, sub: &str) {
        let page = self.device_answer(user_code, &[("confirm", "yes")], sub).await;
        assert!(page.contains("Sign-in Success"), "the device sign-in did not succeed:\n{page}");
    }

    /// Plays `sub` refusing the device sign-in of `user_code` on its confirmation page.
    pub async fn deny_device(&self, user_code: &str, sub: &str) {
        let page = self.device_answer(user_code, &[("confirm", "yes"), ("abort", "yes")], sub).await;
        assert!(page.contains("interrupted"), "the device sign-in was not refused:\n{page}");
    }

    /// Replaces the groups of account `sub`; the next ID token (a refresh's) carries them.
    pub async fn set_groups(&self, sub: &str, groups: &[&str]) {
        let url = self.control(&format!("accounts/{sub}/groups"));
        let response = self.http.post(url).json(&groups).send().await.expect("the provider answers");
        assert_eq!(response.status(), StatusCode::OK, "the groups of `{sub}` are not changed");
    }

    /// Removes account `sub`: its refresh tokens stop working.
    pub async fn remove_account(&self, sub: &str) {
        let response =
            self.http.delete(self.control(&format!("accounts/{sub}"))).send().await.expect("the provider answers");
        assert_eq!(response.status(), StatusCode::OK, "the account `{sub}` is not removed");
    }

    fn control(&self, path: &str) -> Url {
        self.issuer.join(&format!("__test/{path}")).expect("a test route")
    }

    /// Opens the device page, submits `user_code` with `fields` and walks on as `sub`; returns
    /// the page it ends on.
    async fn device_answer(&self, user_code: &str, fields: &[(&str, &str)], sub: &str) -> String {
        let browser = browser();
        let device = self.issuer.join("device").expect("the device page's URL");
        let page = browser.get(device.clone()).send().await.expect("the device page").text().await.expect("a page");
        let xsrf = attribute_after(&page, r#"name="xsrf""#, "value").expect("the device page has an xsrf field");
        let mut form = vec![("xsrf", xsrf.as_str()), ("user_code", user_code)];
        form.extend_from_slice(fields);
        match walk(&browser, Method::POST, device, &form, sub).await {
            Walked::Page(_, page) => page,
            Walked::Left(url) => panic!("the device sign-in left the provider for {url}"),
        }
    }
}

/// A fresh browser: its own cookies, no redirects followed.
fn browser() -> Client {
    // reqwest's rustls needs a process-wide crypto provider even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .cookie_store(true)
        .redirect(Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

enum Walked {
    /// Redirected away from the provider, to this URL.
    Left(Url),
    /// Stopped at a page of the provider that asks nothing more.
    Page(Url, String),
}

/// Sends the request, then follows the provider's redirects and answers its login (as `sub`, any
/// password) and consent pages, until it redirects elsewhere or shows another page.
async fn walk(browser: &Client, method: Method, url: Url, form: &[(&str, &str)], sub: &str) -> Walked {
    let mut request = browser.request(method, url.clone());
    if !form.is_empty() {
        request = request.form(form);
    }
    let mut current = url;
    let mut response = request.send().await.expect("the provider answers");
    for _ in 0..20 {
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .expect("a redirect has a location");
            let next = current.join(location).expect("a valid location");
            if next.origin() != current.origin() {
                return Walked::Left(next);
            }
            current = next;
            response = browser.get(current.clone()).send().await.expect("the provider answers");
            continue;
        }
        let status = response.status();
        let page = response.text().await.expect("a page");
        assert!(status.is_success(), "the provider answered {status} at {current}:\n{page}");
        let answer = if page.contains(r#"name="prompt" value="login""#) {
            vec![("prompt", "login"), ("login", sub), ("password", "any")]
        } else if page.contains(r#"name="prompt" value="consent""#) {
            vec![("prompt", "consent")]
        } else {
            return Walked::Page(current, page);
        };
        let action = attribute_after(&page, "<form", "action").expect("the page's form has an action");
        current = current.join(&unescape(&action)).expect("a valid form action");
        response = browser.post(current.clone()).form(&answer).send().await.expect("the provider answers");
    }
    panic!("the sign-in took more than 20 steps, at {current}");
}

/// The value of attribute `name` in the first tag after `marker` in `page`.
fn attribute_after(page: &str, marker: &str, name: &str) -> Option<String> {
    let rest = &page[page.find(marker)?..];
    let rest = &rest[..rest.find('>')?];
    let start = rest.find(&format!(r#"{name}=""#))? + name.len() + 2;
    let end = rest[start..].find('"')? + start;
    Some(rest[start..end].to_owned())
}

/// Undoes the HTML escaping the provider's templates apply to attribute values.
fn unescape(value: &str) -> String {
    value
        .replace("&#x2F;", "/")
        .replace("&#47;", "/")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}
