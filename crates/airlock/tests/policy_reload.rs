//! Policies changed under a running `airlock serve`: the real binary on a copy of the quickstart,
//! its `*.cedar` files and catalog edited, and SIGHUP sent as an operator would (`kill -HUP`).
//! A grant the new policies no longer allow must not survive the reload; a bundle that does not
//! load, or a catalog that changes what the connector and gateway were built from, is refused
//! and the policies in force stay.
//!
//! Nothing here asserts on speed: the tests poll under a generous deadline.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::process::Command;

use serde_json::Value;

use common::*;

/// Sends SIGHUP to the running broker.
fn hang_up(app: &TestApp) {
    let pid = app.server.as_ref().expect("the broker is running").child.0.id();
    let status = Command::new("kill").args(["-HUP", &pid.to_string()]).status().expect("`kill` runs");
    assert!(status.success(), "kill -HUP {pid} failed");
}

/// `GET /v1/health`: the policy version in force.
fn policy_version(app: &TestApp) -> String {
    let address = app.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("the broker accepts connections");
    write!(stream, "GET /v1/health HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an HTTP answer");
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body).expect("a body");
    let health: Value = serde_json::from_str(body).expect("a JSON body");
    health["policy_version"].as_str().expect("a policy version").to_owned()
}

/// The broker's records of `kind`, oldest first.
fn records_of(app: &TestApp, kind: &str) -> Vec<Value> {
    let records = app.json("bob", &["audit", "tail", "-n", "1000"]);
    records.as_array().unwrap().iter().filter(|r| r["kind"] == kind).cloned().collect()
}

/// Waits until the broker's log has a line containing `text` after its first `skip` bytes.
fn logged_after(app: &TestApp, skip: usize, text: &str) -> String {
    eventually(&format!("the log to say {text:?}"), || {
        let log = app.server_log();
        let line = log.get(skip..)?.lines().find(|line| line.contains(text))?.to_owned();
        Some(line)
    })
}

#[test]
fn sighup_revokes_grants_the_new_policies_refuse_and_refuses_a_broken_bundle() {
    let root = tempfile::tempdir().unwrap();
    let config = copy_quickstart(root.path());
    let policies = root.path().join("policies");
    let app = spawn_app_with(&config);

    // At start: the version is recorded, with none before it.
    let started = policy_version(&app);
    let loaded = records_of(&app, "policy.loaded");
    assert_eq!(loaded.len(), 1, "{loaded:#?}");
    assert_eq!(
        (&loaded[0]["details"]["version"], &loaded[0]["details"]["previous"]),
        (&Value::from(started.clone()), &Value::Null)
    );

    // Dana's read is approved at once (on call); alice's by bob.
    let dana = app.request("dana", "read", "30m");
    let dana_grant = str_of(&dana["grant"], "id").to_owned();
    let alice = app.request("alice", "read", "30m");
    let approved = app.json("bob", &["approve", str_of(&alice, "id")]);
    let alice_grant = str_of(&approved["grant"], "id").to_owned();

    // The operator forbids dana's requests and tells the broker.
    let forbid = r#"
        @id("dana-may-not-request")
        forbid (principal == User::"dana", action == Action::"request", resource);
    "#;
    fs::write(policies.join("dana.cedar"), forbid).unwrap();
    let log_length = app.server_log().len();
    hang_up(&app);
    let revoked = eventually("dana's grant to be revoked", || {
        let grant = app.grant_as("dana", &dana_grant);
        (grant["state"] == "revoked").then_some(grant)
    });
    assert_eq!(
        (&revoked["ended"]["by"], &revoked["ended"]["reason"]),
        (&Value::from("system"), &Value::from("policy change"))
    );
    assert_eq!(app.grant_as("alice", &alice_grant)["state"], "active");
    logged_after(&app, log_length, "new policy version in force");
    let changed = policy_version(&app);
    assert_ne!(changed, started);
    let loaded = records_of(&app, "policy.loaded");
    assert_eq!(loaded.len(), 2);
    let details = &loaded[1]["details"];
    assert_eq!((&details["version"], &details["previous"]), (&Value::from(changed.clone()), &Value::from(started)));
    assert_eq!(details["grants_revoked"], serde_json::json!([dana_grant]));
    let revocation = records_of(&app, "grant.revoked").pop().unwrap();
    assert_eq!(revocation["actor"], "system");
    assert_eq!(revocation["details"]["policy_version"], changed);
    let refused = app.airlock("dana", &["request", "demo-db", "--role", "read", "--for", "30m", "--reason", "again"]);
    assert_exit(&refused, 1);

    // A file that does not parse: refused, and the policies in force stay.
    fs::write(policies.join("broken.cedar"), "permit (principal, action, resource").unwrap();
    let log_length = app.server_log().len();
    hang_up(&app);
    let line = logged_after(&app, log_length, "policy reload refused");
    assert!(line.contains("broken.cedar"), "{line}");
    assert_eq!(policy_version(&app), changed);
    let refused = app.airlock("dana", &["request", "demo-db", "--role", "read", "--for", "30m", "--reason", "again"]);
    assert_exit(&refused, 1);
    let pending = app.request("alice", "write", "20m");
    assert_eq!(pending["state"], "pending", "the policies in force still work");

    // A catalog that changes what a grant's database role is made of needs a restart.
    fs::remove_file(policies.join("broken.cedar")).unwrap();
    let catalog = root.path().join("catalog.toml");
    let text = fs::read_to_string(&catalog).unwrap();
    let changed_roles =
        text.replacen(r#"database_roles = ["pg_read_all_data"]"#, r#"database_roles = ["pg_monitor"]"#, 1);
    assert_ne!(changed_roles, text);
    fs::write(&catalog, changed_roles).unwrap();
    let log_length = app.server_log().len();
    hang_up(&app);
    let line = logged_after(&app, log_length, "policy reload refused");
    assert!(line.contains("`demo-db`") && line.contains("restart `airlock serve`"), "{line}");
    assert_eq!(policy_version(&app), changed);
    assert_eq!(records_of(&app, "policy.loaded").len(), 2, "nothing recorded for refused reloads");
    assert_eq!(app.grant_as("alice", &alice_grant)["state"], "active");
}
