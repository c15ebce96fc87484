//! What the broker's test binaries share: a broker on the quickstart's catalog, policies and
//! incident playbooks, callers, waiting on background work, and a webhook
//! receiver (a bare HTTP/1.1 listener on loopback that stands for a service elsewhere; it answers
//! each POST with the status a script gives for it and keeps every request). Each test binary uses
//! part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_broker::broker::Settings;
use airlock_broker::bundle::PolicyBundle;
use airlock_broker::clock::{Clock, ManualClock};
use airlock_broker::config::{Config, MfaSection, PolicySection};
use airlock_broker::{Broker, Caller};
use airlock_core::values::GrantDuration;
use airlock_store::Store;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// One request as the receiver saw it, and what it answered.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header names in lowercase.
    pub headers: HashMap<String, String>,
    pub body: String,
    pub status: u16,
}

pub struct Receiver {
    pub url: String,
    requests: watch::Receiver<Vec<Received>>,
}

impl Receiver {
    /// Listens on 127.0.0.1:0 and answers the `n`-th request (from 0) with `status(n)`; `path` is
    /// the URL's path.
    pub async fn start(path: &str, status: fn(usize) -> u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let (kept, requests) = watch::channel(Vec::new());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let Some((headers, body)) = read_request(&mut socket).await else { continue };
                let answer = status(kept.borrow().len());
                kept.send_modify(|requests| requests.push(Received { headers, body, status: answer }));
                let reply = format!("HTTP/1.1 {answer} Test\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        });
        Self { url, requests }
    }

    /// Every request so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.requests.borrow().clone()
    }
}

/// Reads one request's headers and body (as long as its `content-length`).
async fn read_request(socket: &mut TcpStream) -> Option<(HashMap<String, String>, String)> {
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = socket.read(&mut buffer).await.ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&request).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
        let headers: HashMap<String, String> = head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let length = headers.get("content-length").and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
        if body.len() >= length {
            return Some((headers, body.to_owned()));
        }
    }
}

fn quickstart_config() -> Config {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart/airlock.toml"));
    Config::load(&path).expect("the quickstart config loads")
}

/// The quickstart's catalog and policies.
pub fn quickstart_bundle() -> PolicyBundle {
    PolicyBundle::load(&quickstart_config().policy).expect("the quickstart bundle loads")
}

/// Pending requests expire after an hour, `sre` audits, and the quickstart's incident managers and
/// playbooks. Break-glass needs no second factor here: `tests/identity.rs` tests that it does by
/// default, so the other tests can break the glass with plain callers.
pub fn quickstart_settings() -> Settings {
    Settings {
        pending_ttl: GrantDuration::parse("1h").unwrap(),
        auditors: vec!["sre".parse().unwrap()],
        breakglass: Default::default(),
        incidents: quickstart_config().incidents,
        identity: Default::default(),
        mfa: MfaSection { breakglass: false, ..Default::default() },
    }
}

/// A broker on `store` (in `dir`, where its key is kept) with the quickstart's bundle and
/// [`quickstart_settings`], on `clock`.
pub fn quickstart_broker(store: Store, dir: &Path, clock: Arc<ManualClock>) -> Broker {
    let key = airlock_broker::secrets::load_or_create_key(dir).expect("the key");
    Broker::new(store, quickstart_bundle(), clock as Arc<dyn Clock>, quickstart_settings(), key)
}

/// Writes `catalog` and the `*.cedar` `files` under `dir/name` and loads them.
pub fn write_bundle(dir: &Path, name: &str, catalog: &str, files: &[(&str, &str)]) -> PolicyBundle {
    let root = dir.join("bundles").join(name);
    std::fs::create_dir_all(root.join("policies")).unwrap();
    std::fs::write(root.join("catalog.toml"), catalog).unwrap();
    for (file, text) in files {
        std::fs::write(root.join("policies").join(format!("{file}.cedar")), text).unwrap();
    }
    let section = PolicySection {
        catalog: root.join("catalog.toml"),
        policies: root.join("policies"),
        tests: root.join("tests"),
    };
    PolicyBundle::load(&section).expect("the bundle loads")
}

/// Somebody in `groups`, connecting from 10.0.0.7.
pub fn caller(name: &str, groups: &[&str]) -> Caller {
    airlock_testkit::caller_from(name, groups, IpAddr::from([10, 0, 0, 7]))
}

/// The quickstart's people: an engineer.
pub fn alice() -> Caller {
    caller("alice", &["eng"])
}

/// An on-call engineer: read is auto-approved, break-glass allowed, armed by incident playbooks.
pub fn dana() -> Caller {
    caller("dana", &["eng", "oncall"])
}

/// Another engineer, who neither holds nor reviews anything unless named.
pub fn erin() -> Caller {
    caller("erin", &["eng"])
}

/// A reviewer, auditor and incident manager.
pub fn bob() -> Caller {
    caller("bob", &["sre"])
}

/// Another reviewer.
pub fn carol() -> Caller {
    caller("carol", &["sre"])
}

/// Outside every policy.
pub fn mallory() -> Caller {
    caller("mallory", &["sales"])
}

/// Polls `check` until it holds: for waiting on a background task, with a generous overall limit
/// so that a slow machine is not mistaken for a bug.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}
