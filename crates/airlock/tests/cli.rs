//! End-to-end tests of the real `airlock` binary: `spawn_app()` (in `common`, shared with the
//! other test binaries) adds the quickstart's users with `airlock admin user add`, starts
//! `airlock serve` on port 0 over a fresh data directory, and the tests drive it with the user
//! commands (and, for the API's edges, with an HTTP client), checking exit codes, `--json`
//! documents and what the broker wrote.
//!
//! Nothing here asserts on speed: where a background effect (expiry) must happen, the tests poll
//! with short sleeps under a generous deadline.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::*;

#[test]
fn quickstart_flow_request_two_approvals_grant_and_revoke() {
    let app = spawn_app();

    let me = app.json("alice", &["whoami"]);
    assert_eq!(me["name"], "alice");
    assert_eq!(me["groups"], json!(["eng"]));

    let request = app.json(
        "alice",
        &["request", "demo-db", "--role", "write", "--for", "20m", "--reason", "migrate the orders table"],
    );
    for field in [
        "id",
        "state",
        "resource",
        "role",
        "requester",
        "reason",
        "created_at",
        "expires_at",
        "approvals",
        "required_approvals",
        "decision",
    ] {
        assert!(request.get(field).is_some(), "no `{field}` in {request:#}");
    }
    assert_eq!(request["state"], "pending");
    assert_eq!(request["resource"], "demo-db");
    assert_eq!(request["role"], "write");
    assert_eq!(request["requester"], "alice");
    assert_eq!(request["reason"], "migrate the orders table");
    assert_eq!(request["duration_seconds"], 1200);
    assert_eq!(request["approvals"], json!([]));
    assert_eq!(request["required_approvals"], 2);
    assert_eq!(request["approvals_needed"], 2);
    assert_eq!(request["decision"]["policies"], json!(["eng-may-request-demo-db"]));
    assert_eq!(request["decision"]["auto_approved"], false);
    assert_eq!(request["grant"], Value::Null);
    let id = str_of(&request, "id");

    let own = app.airlock("alice", &["approve", id]);
    assert_exit(&own, 1);
    assert!(stderr(&own).contains("you cannot review your own request"), "{}", stderr(&own));

    let after_bob = app.json("bob", &["approve", id, "--comment", "looks fine"]);
    assert_eq!(after_bob["state"], "pending");
    assert_eq!(after_bob["approvals"][0]["approver"], "bob");
    assert_eq!(after_bob["approvals"][0]["comment"], "looks fine");
    assert_eq!(after_bob["approvals_needed"], 1);
    assert_eq!(after_bob["grant"], Value::Null);

    let twice = app.airlock("bob", &["approve", id]);
    assert_exit(&twice, 1);
    assert!(stderr(&twice).contains("already approved"), "{}", stderr(&twice));

    let after_carol = app.json("carol", &["approve", id]);
    assert_eq!(after_carol["state"], "approved");
    assert_eq!(after_carol["approvals_needed"], 0);
    let grant = &after_carol["grant"];
    assert_eq!(grant["state"], "active");
    assert_eq!(grant["holder"], "alice");
    assert_eq!(grant["request_id"], id);
    let grant_id = str_of(grant, "id");

    let active = find(&app.json("alice", &["grants", "--active"]), grant_id);
    assert_eq!(active["state"], "active");
    assert_eq!(active["resource"], "demo-db");
    assert_eq!(active["role"], "write");
    assert_eq!(active["expires_at"], grant["expires_at"]);
    assert!(active["remaining_seconds"].as_i64().unwrap() > 0);

    let revoked = app.json("alice", &["revoke", grant_id, "--reason", "done early"]);
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["ended"]["by"], "alice");
    assert_eq!(revoked["ended"]["reason"], "done early");
    assert_eq!(revoked["remaining_seconds"], 0);
    assert_eq!(app.json("alice", &["grants", "--active"]), json!([]));

    let verify = app.airlock("bob", &["audit", "verify"]);
    assert_exit(&verify, 0);
    assert!(stdout(&verify).contains("audit chain intact"), "{}", stdout(&verify));
    let not_auditor = app.airlock("alice", &["audit", "verify"]);
    assert_exit(&not_auditor, 1);

    // The connector records each change twice (its intent, then its outcome).
    let tail = app.airlock("bob", &["audit", "tail", "-n", "5"]);
    assert_exit(&tail, 0);
    assert!(stdout(&tail).contains("grant.revoked"), "{}", stdout(&tail));
    // The connector's records about demo-db's throwaway database interleave with the broker's.
    let records = app.json("bob", &["audit", "tail", "-n", "12"]);
    let (target, broker): (Vec<&Value>, Vec<&Value>) =
        records.as_array().unwrap().iter().partition(|r| str_of(r, "kind").starts_with("target."));
    let kinds: Vec<&str> = broker.iter().map(|r| str_of(r, "kind")).collect();
    assert_eq!(kinds[kinds.len() - 3..], ["request.approved", "grant.started", "grant.revoked"]);
    assert_eq!(broker.last().unwrap()["actor"], "alice");
    assert!(target.iter().all(|r| r["actor"] == "system"), "{records:#}");
}

/// What a command should exit with and say on standard error.
struct Case {
    name: &'static str,
    user: Option<&'static str>,
    url: Option<&'static str>,
    args: &'static [&'static str],
    code: i32,
    stderr: &'static str,
}

#[track_caller]
fn check(app: &TestApp, case: &Case) {
    let token = case.user.map(|user| app.token(user).to_owned());
    let output = app.airlock_with(token.as_deref(), case.url.unwrap_or(&app.url), case.args);
    assert_eq!(
        output.status.code(),
        Some(case.code),
        "{}: expected exit code {}\n--- stdout\n{}--- stderr\n{}",
        case.name,
        case.code,
        stdout(&output),
        stderr(&output)
    );
    assert!(
        stderr(&output).contains(case.stderr),
        "{}: stderr lacks {:?}:\n{}",
        case.name,
        case.stderr,
        stderr(&output)
    );
}

#[test]
fn auto_approval_and_refusals_with_their_exit_codes() {
    let app = spawn_app();

    let request = app.request("dana", "read", "10m");
    assert_eq!(request["state"], "approved");
    assert_eq!(request["decision"]["auto_approved"], true);
    assert_eq!(request["grant"]["state"], "active");
    assert_eq!(request["grant"]["holder"], "dana");

    const READ: &[&str] = &["request", "demo-db", "--role", "read", "--for", "10m", "--reason", "debugging"];
    let cases = [
        Case {
            name: "above the role's maximum",
            user: Some("dana"),
            url: None,
            args: &["request", "demo-db", "--role", "write", "--for", "2h", "--reason", "batch job"],
            code: 1,
            stderr: "maximum of 30m",
        },
        Case {
            name: "no policy allows",
            user: Some("mallory"),
            url: None,
            args: READ,
            code: 1,
            stderr: "no policy allows",
        },
        Case {
            name: "unknown role",
            user: Some("alice"),
            url: None,
            args: &["request", "demo-db", "--role", "admin", "--for", "10m", "--reason", "x"],
            code: 1,
            stderr: "no role `admin`",
        },
        Case {
            name: "a duration that does not parse",
            user: Some("alice"),
            url: None,
            args: &["request", "demo-db", "--role", "read", "--for", "soon", "--reason", "debugging"],
            code: 2,
            stderr: "--for",
        },
        Case {
            name: "a blank reason",
            user: Some("alice"),
            url: None,
            args: &["request", "demo-db", "--role", "read", "--for", "10m", "--reason", "  "],
            code: 2,
            stderr: "--reason",
        },
        Case {
            name: "a missing argument",
            user: Some("alice"),
            url: None,
            args: &["request", "demo-db", "--for", "10m", "--reason", "x"],
            code: 2,
            stderr: "--role",
        },
        Case { name: "no token", user: None, url: None, args: READ, code: 2, stderr: "AIRLOCK_TOKEN" },
        Case {
            name: "an unreachable broker",
            user: Some("alice"),
            url: Some("http://127.0.0.1:1"),
            args: READ,
            code: 2,
            stderr: "cannot reach the broker",
        },
        Case {
            name: "not a URL",
            user: Some("alice"),
            url: Some("127.0.0.1:8470"),
            args: READ,
            code: 2,
            stderr: "must start with http://",
        },
        Case {
            name: "not an id",
            user: Some("bob"),
            url: None,
            args: &["approve", "not-an-id"],
            code: 2,
            stderr: "is not a request or grant id",
        },
    ];
    for case in &cases {
        check(&app, case);
    }

    let wrong = app.airlock_with(Some("not-a-real-token"), &app.url, READ);
    assert_exit(&wrong, 1);
    assert!(stderr(&wrong).contains("missing or invalid API token"), "{}", stderr(&wrong));

    // A policy's refusal is part of the record; what was rejected before the broker was asked is not.
    let records = app.json("bob", &["audit", "tail", "-n", "100"]);
    let records = records.as_array().unwrap();
    let of_kind =
        |kind: &str| records.iter().filter(|r| r["kind"] == kind).map(|r| str_of(r, "actor")).collect::<Vec<_>>();
    assert_eq!(of_kind("request.created"), ["dana"]);
    assert_eq!(of_kind("request.refused"), ["mallory"]);
}

#[test]
fn deny_and_cancel() {
    let app = spawn_app();

    let first = app.request("alice", "write", "10m");
    let first_id = str_of(&first, "id");
    let denied = app.json("bob", &["deny", first_id, "--reason", "not during the freeze"]);
    assert_eq!(denied["state"], "denied");
    assert_eq!(denied["closed"]["by"], "bob");
    assert_eq!(denied["closed"]["reason"], "not during the freeze");
    assert_eq!(denied["grant"], Value::Null);
    let late = app.airlock("carol", &["approve", first_id]);
    assert_exit(&late, 1);
    assert!(stderr(&late).contains("request is denied"), "{}", stderr(&late));
    let self_deny = app.request("alice", "read", "5m");
    let own = app.airlock("alice", &["deny", str_of(&self_deny, "id"), "--reason", "never mind"]);
    assert_exit(&own, 1);

    let second = app.request("alice", "read", "10m");
    let second_id = str_of(&second, "id");
    let not_theirs = app.airlock("bob", &["cancel", second_id]);
    assert_exit(&not_theirs, 1);
    assert!(stderr(&not_theirs).contains("only the requester can cancel"), "{}", stderr(&not_theirs));
    let nobody = app.airlock("mallory", &["cancel", second_id]);
    assert_exit(&nobody, 1);
    assert!(stderr(&nobody).contains("not found"), "{}", stderr(&nobody));

    let cancelled = app.json("alice", &["cancel", second_id]);
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["closed"]["by"], "alice");
    assert_exit(&app.airlock("alice", &["cancel", second_id]), 1);

    let pending: Vec<String> = app
        .json("alice", &["requests", "--pending", "--mine"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| str_of(r, "id").to_owned())
        .collect();
    assert_eq!(pending, [str_of(&self_deny, "id")]);
    assert_eq!(app.request_as("bob", first_id)["state"], "denied");
    assert_eq!(app.request_as("bob", second_id)["state"], "cancelled");
}

/// Enrolls an authenticator for `user` through the CLI, as a person with a phone would: the
/// enrollment's URI goes into the "app" (totp-rs here), whose first code confirms it. Returns the
/// app.
fn enroll_mfa(app: &TestApp, user: &str) -> totp_rs::Totp {
    let enrollment = app.json(user, &["mfa", "enroll"]);
    let phone = totp_rs::Totp::from_url(str_of(&enrollment, "otpauth_uri")).expect("an otpauth URI");
    let code = phone.generate(time::OffsetDateTime::now_utc().unix_timestamp() as u64).to_string();
    let confirmed = app.airlock(user, &["mfa", "confirm", &code]);
    assert_exit(&confirmed, 0);
    assert!(stdout(&confirmed).contains("enrolled; fresh until"), "{}", stdout(&confirmed));
    // The same code again is a replay.
    let replayed = app.airlock(user, &["mfa", "verify", &code]);
    assert_exit(&replayed, 1);
    assert!(stderr(&replayed).contains("already used"), "{}", stderr(&replayed));
    assert_exit(&app.airlock(user, &["mfa", "verify", "12345"]), 2);
    assert_eq!(app.json(user, &["whoami"])["mfa_fresh"], true);
    phone
}

#[test]
fn break_glass_is_granted_at_once_and_answered_for_afterwards() {
    let app = spawn_app();
    let emergency = ["breakglass", "demo-db", "--reason", "INC-77: orders table locked"];

    // Break-glass needs a fresh second factor: dana enrolls an authenticator first.
    let without = app.airlock("dana", &[&emergency[..], &["--role", "write"]].concat());
    assert_exit(&without, 1);
    assert!(stderr(&without).contains("needs a fresh second factor"), "{}", stderr(&without));
    enroll_mfa(&app, "dana");

    let broken = app.json("dana", &[&emergency[..], &["--role", "write", "--for", "4h"]].concat());
    assert_eq!(broken["request"]["state"], "approved");
    assert_eq!(broken["request"]["decision"]["break_glass"], true);
    assert_eq!(broken["request"]["duration"], "1h", "cut to the role's break_glass_max");
    assert_eq!(broken["cut_to_ceiling"], true);
    assert_eq!(broken["request"]["grant"]["state"], "active");
    assert_eq!(broken["review"]["state"], "open");
    let write_grant = str_of(&broken["request"]["grant"], "id").to_owned();

    let text = app.airlock("dana", &[&emergency[..], &["--role", "read"]].concat());
    assert_exit(&text, 0);
    assert!(stdout(&text).contains("break-glass: granted at once, review owed"), "{}", stdout(&text));
    assert!(stdout(&text).contains("review    owed by somebody else: `airlock review"), "{}", stdout(&text));

    let refused = app.airlock("alice", &[&emergency[..], &["--role", "read"]].concat());
    assert_exit(&refused, 1);
    assert!(stderr(&refused).contains("no policy allows `alice`"), "{}", stderr(&refused));
    assert_exit(&app.airlock("dana", &[&emergency[..], &["--role", "read", "--for", "soon"]].concat()), 2);
    assert_exit(&app.airlock("bob", &["review", &write_grant, "--comment", "neither verdict"]), 2);
    assert_exit(&app.airlock("bob", &["review", &write_grant, "--accept", "--reject", "--comment", "both"]), 2);

    let own = app.airlock("dana", &["review", &write_grant, "--accept", "--comment", "all fine, trust me"]);
    assert_exit(&own, 1);
    assert!(stderr(&own).contains("your own break-glass grant"), "{}", stderr(&own));
    assert_eq!(app.json("bob", &["reviews", "--open"]).as_array().unwrap().len(), 2);
    assert_eq!(app.json("alice", &["reviews"]).as_array().unwrap().len(), 0, "not hers to see");

    let rejected = app.json("bob", &["review", &write_grant, "--reject", "--comment", "no incident INC-77 on record"]);
    assert_eq!(rejected["state"], "rejected");
    assert_eq!(rejected["answer"]["reviewer"], "bob");
    assert_eq!(app.grant_as("dana", &write_grant)["state"], "revoked");
    let again = app.airlock("carol", &["review", &write_grant, "--accept", "--comment", "second opinion"]);
    assert_exit(&again, 1);

    let barred = app.airlock("dana", &[&emergency[..], &["--role", "read"]].concat());
    assert_exit(&barred, 1);
    assert!(stderr(&barred).contains("a review rejected your break-glass grant"), "{}", stderr(&barred));
    assert_exit(&app.admin(&["user", "allow-breakglass", "dana"]), 0);
    assert_exit(&app.admin(&["user", "allow-breakglass", "dana"]), 1);
    let allowed = app.json("dana", &[&emergency[..], &["--role", "read", "--for", "5m"]].concat());
    assert_eq!(allowed["request"]["duration"], "5m");

    let report = app.json("bob", &["report"]);
    assert_eq!(report["requests"]["break_glass"], 3);
    let unreviewed = report["deviations"]["breakglass_unreviewed"].as_array().unwrap();
    assert_eq!(unreviewed.len(), 2, "the two read grants still lack a review: {unreviewed:?}");
    assert!(unreviewed.iter().all(|u| u["holder"] == "dana" && u["overdue"] == false));
    let text = app.airlock("bob", &["report"]);
    assert!(stdout(&text).contains("break-glass grants lacking review: 2"), "{}", stdout(&text));
}

#[test]
fn api_tokens_are_scoped_expire_rotate_and_revoke() {
    let app = spawn_app();
    let created = app.admin(&["token", "create", "alice", "--scope", "read", "--scope", "request", "--expires", "90d"]);
    assert_exit(&created, 0);
    let ci_token = stdout(&created).trim().to_owned();
    assert!(ci_token.starts_with("airlock_"), "the token alone on stdout: {ci_token:?}");
    assert!(stderr(&created).contains("scopes read,request, expires"), "{}", stderr(&created));

    let as_ci = |args: &[&str]| app.airlock_with(Some(&ci_token), &app.url, args);
    assert_exit(&as_ci(&["requests"]), 0);
    // The attack: a CI token used to approve, or to read the audit trail, is refused by scope.
    let approve = as_ci(&["approve", &uuid::Uuid::new_v4().to_string()]);
    assert_exit(&approve, 1);
    assert!(stderr(&approve).contains("does not hold the `review` scope"), "{}", stderr(&approve));
    assert_exit(&as_ci(&["audit", "tail"]), 1);

    let listed = json_of(&app.admin(&["token", "list", "alice", "--json"]));
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|t| str_of(t, "id")).collect();
    assert_eq!(ids.len(), 2, "the first token and the CI one: {listed}");
    let ci_id = ids[0];
    assert_eq!(listed[0]["scopes"], json!(["read", "request"]));

    // Rotation: the old token stops working at once, the new one has the same scopes.
    let rotated = app.admin(&["token", "rotate", ci_id]);
    assert_exit(&rotated, 0);
    let new_token = stdout(&rotated).trim().to_owned();
    let stolen = as_ci(&["whoami"]);
    assert_exit(&stolen, 1);
    assert!(stderr(&stolen).contains("invalid API token"), "{}", stderr(&stolen));
    let as_new = |args: &[&str]| app.airlock_with(Some(&new_token), &app.url, args);
    assert_eq!(json_of(&as_new(&["whoami", "--json"]))["name"], "alice");
    assert_exit(&as_new(&["audit", "tail"]), 1);
    assert_exit(&app.admin(&["token", "rotate", ci_id]), 1);

    // By user name when they hold exactly one live token; ambiguous otherwise.
    assert_exit(&app.admin(&["token", "revoke", "alice"]), 2);
    let new_id = str_of(&json_of(&app.admin(&["token", "list", "alice", "--json"]))[0], "id").to_owned();
    assert_exit(&app.admin(&["token", "revoke", &new_id]), 0);
    assert_exit(&as_new(&["whoami"]), 1);
    assert_exit(&app.admin(&["token", "create", "alice", "--scope", "root"]), 2);
    assert_exit(&app.admin(&["token", "create", "alice", "--expires", "soonish"]), 2);
    assert_exit(&app.admin(&["token", "create", "nobody"]), 1);

    let kinds: Vec<String> = app
        .json("bob", &["audit", "tail", "-n", "50"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| str_of(r, "kind").to_owned())
        .collect();
    for kind in ["token.created", "token.rotated", "token.revoked"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
}

#[test]
fn request_wait_returns_once_approved() {
    let app = spawn_app();

    let waiting = airlock_command()
        .env("AIRLOCK_URL", &app.url)
        .env("AIRLOCK_TOKEN", app.token("alice"))
        .args(["request", "demo-db", "--role", "write", "--for", "15m", "--reason", "hotfix", "--wait", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`airlock request --wait` starts");
    let mut waiting = KillOnDrop(waiting);

    let id = eventually("alice's request to be pending", || {
        let pending = app.json("bob", &["requests", "--pending"]);
        pending.as_array().unwrap().iter().find(|r| r["requester"] == "alice").map(|r| str_of(r, "id").to_owned())
    });
    assert!(waiting.0.try_wait().unwrap().is_none(), "`request --wait` returned while the request was pending");
    assert_eq!(app.json("bob", &["approve", &id])["state"], "pending");
    assert_eq!(app.json("carol", &["approve", &id])["state"], "approved");

    eventually("`request --wait` to return", || waiting.0.try_wait().unwrap());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    waiting.0.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    waiting.0.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    let output = Output { status: waiting.0.wait().unwrap(), stdout: out, stderr: err };
    let request = json_of(&output);
    assert_eq!(request["id"], id.as_str());
    assert_eq!(request["state"], "approved");
    assert_eq!(request["grant"]["state"], "active");
    // It returned once the grant could be used: its role on the quickstart's database exists.
    assert_eq!(request["grant"]["usable"], true, "{request:#}");
    let created = app.json("bob", &["audit", "tail", "-n", "20"]);
    let created = created
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "target.role_created" && r["details"]["grant"] == request["grant"]["id"]);
    assert!(created.is_some(), "the role's creation is recorded");
}

#[test]
fn grants_expire_on_their_own_and_the_audit_chain_says_so() {
    let app = spawn_app();

    let request = app.request("dana", "read", "2s");
    assert_eq!(request["state"], "approved");
    let grant_id = str_of(&request["grant"], "id").to_owned();

    let expired = eventually("the grant to expire", || {
        let grants = app.json("dana", &["grants", "--mine"]);
        let grant = find(&grants, &grant_id);
        (grant["state"] == "expired").then_some(grant)
    });
    assert_eq!(expired["remaining_seconds"], 0);
    assert_eq!(expired["ended"]["by"], "system");
    assert_eq!(app.json("dana", &["grants", "--active"]), json!([]));

    let records = app.json("bob", &["audit", "tail", "-n", "10"]);
    let record = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "grant.expired")
        .unwrap_or_else(|| panic!("no grant.expired record in {records:#}"));
    assert_eq!(record["actor"], "system");
    assert_eq!(record["details"]["grant"]["id"], grant_id.as_str());
    assert_exit(&app.airlock("bob", &["audit", "verify"]), 0);
}

#[test]
fn grants_that_ended_while_the_broker_was_down_expire_at_restart() {
    let mut app = spawn_app();

    let request = app.request("dana", "read", "3s");
    let grant = &request["grant"];
    assert_eq!(grant["state"], "active");
    let grant_id = str_of(grant, "id").to_owned();
    let ends = time::OffsetDateTime::parse(str_of(grant, "expires_at"), &time::format_description::well_known::Rfc3339)
        .expect("expires_at is RFC 3339");

    app.kill();
    let old_url = app.url.clone();
    // Wait, with the broker down, until the grant's end has passed.
    while time::OffsetDateTime::now_utc() <= ends + time::Duration::milliseconds(500) {
        thread::sleep(Duration::from_millis(100));
    }
    assert_exit(&app.airlock_with(Some(app.token("dana")), &old_url, &["whoami"]), 2);

    app.start();
    let expired = eventually("the grant to expire after the restart", || {
        let grant = app.grant_as("dana", &grant_id);
        (grant["state"] == "expired").then_some(grant)
    });
    assert_eq!(expired["ended"]["by"], "system");
    assert_exit(&app.airlock("bob", &["audit", "verify"]), 0);
}

#[test]
fn disabling_a_user_ends_their_requests_and_grants_and_their_token() {
    let app = spawn_app();

    let pending = app.request("alice", "write", "10m");
    let pending_id = str_of(&pending, "id");
    let read = app.request("alice", "read", "30m");
    let approved = app.json("bob", &["approve", str_of(&read, "id")]);
    assert_eq!(approved["state"], "approved");
    let grant_id = str_of(&approved["grant"], "id");

    let again = app.admin(&["user", "add", "alice", "--group", "eng"]);
    assert_exit(&again, 1);
    assert!(stderr(&again).contains("already exists"), "{}", stderr(&again));
    assert_exit(&app.admin(&["user", "disable", "nobody"]), 1);

    let disable = app.admin(&["user", "disable", "alice"]);
    assert_exit(&disable, 0);
    assert_eq!(
        stdout(&disable),
        "disabled `alice`: 1 pending request(s) cancelled, 1 grant(s) revoked, 1 token(s) and login(s) ended\n"
    );

    let request = app.request_as("bob", pending_id);
    assert_eq!(request["state"], "cancelled");
    assert_eq!(request["closed"]["by"], "admin:ops");
    assert_eq!(request["closed"]["reason"], "user disabled");
    let grant = app.grant_as("bob", grant_id);
    assert_eq!(grant["state"], "revoked");
    assert_eq!(grant["ended"]["by"], "admin:ops");

    let locked_out = app.airlock("alice", &["whoami"]);
    assert_exit(&locked_out, 1);
    assert!(stderr(&locked_out).contains("missing or invalid API token"), "{}", stderr(&locked_out));
    assert_exit(&app.airlock("bob", &["audit", "verify"]), 0);
}

#[tokio::test]
async fn editing_the_audit_chain_is_refused_and_then_detected() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    let app = spawn_app();
    let request = app.request("alice", "write", "10m");
    app.json("bob", &["approve", str_of(&request, "id")]);
    assert_exit(&app.airlock("bob", &["audit", "verify"]), 0);

    let options = SqliteConnectOptions::new().filename(app.data_dir.join("airlock.db"));
    let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.expect("the store opens");
    let kind: String =
        sqlx::query_scalar("SELECT kind FROM audit_events WHERE seq = 3").fetch_one(&pool).await.unwrap();
    assert_eq!(kind, "user.added");

    let refused = sqlx::query("UPDATE audit_events SET details = '{\"user\":\"eve\"}' WHERE seq = 3")
        .execute(&pool)
        .await
        .expect_err("audit records cannot be updated");
    assert!(refused.to_string().contains("append-only"), "{refused}");
    let refused = sqlx::query("DELETE FROM audit_events WHERE seq = 3").execute(&pool).await.expect_err("nor deleted");
    assert!(refused.to_string().contains("append-only"), "{refused}");

    sqlx::query("DROP TRIGGER audit_events_no_update").execute(&pool).await.unwrap();
    let done = sqlx::query("UPDATE audit_events SET details = '{\"user\":\"eve\"}' WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
    pool.close().await;

    let verify = app.airlock("bob", &["audit", "verify"]);
    assert_exit(&verify, 1);
    assert!(stderr(&verify).contains("record 3"), "{}", stderr(&verify));
    let output = app.airlock("bob", &["audit", "verify", "--json"]);
    assert_exit(&output, 1);
    let check: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(check["intact"], false);
    assert_eq!(check["first_bad_seq"], 3);
    assert_eq!(check["problems"][0], "record 3: its contents do not match its hash (edited)");
}

#[tokio::test]
async fn exports_verify_offline_and_a_rewrite_by_the_key_holder_is_caught_by_the_sink() {
    use airlock_core::audit::AuditEvent;
    use airlock_core::audit::checkpoint::Checkpoint;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    let root = tempfile::tempdir().unwrap();
    let config = copy_quickstart(&root.path().join("quickstart"));
    fs::create_dir_all(root.path().join("elsewhere")).unwrap();
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str("\n[audit]\ncheckpoint_file = \"../elsewhere/checkpoints.jsonl\"\n");
    fs::write(&config, text).unwrap();
    let sink = root.path().join("elsewhere/checkpoints.jsonl");
    let app = spawn_app_with(&config);
    let request = app.request("alice", "write", "10m");
    app.json("bob", &["approve", str_of(&request, "id")]);
    app.json("carol", &["approve", str_of(&request, "id")]);
    let head = app.json("bob", &["audit", "verify"])["records"].as_i64().unwrap();

    let key = app.airlock("bob", &["audit", "key"]);
    assert_exit(&key, 0);
    let key_file = root.path().join("broker.pub");
    fs::write(&key_file, stdout(&key)).unwrap();
    // The checkpointer signs the head within a second and copies it to the sink.
    eventually("the head's checkpoint in the sink", || {
        let kept = fs::read_to_string(&sink).unwrap_or_default();
        let seqs = kept.lines().map(|line| serde_json::from_str::<Value>(line).unwrap()["checkpoint"]["seq"].as_i64());
        seqs.flatten().any(|seq| seq >= head).then_some(())
    });

    let export = root.path().join("export.jsonl");
    let out = export.to_str().unwrap();
    assert_exit(&app.airlock("bob", &["audit", "export", "--out", out]), 0);
    assert_exit(&app.airlock("alice", &["audit", "export", "--out", out]), 1);
    let verify = |file: &Path, key: &str| {
        airlock_command()
            .args(["audit", "verify", "--file"])
            .arg(file)
            .args(["--public-key", key, "--checkpoints"])
            .arg(&sink)
            .output()
            .unwrap()
    };
    let intact = verify(&export, key_file.to_str().unwrap());
    assert_exit(&intact, 0);
    assert!(stdout(&intact).contains("export intact: records 1..="), "{}", stdout(&intact));
    let other_key = verify(&export, &"ab".repeat(32));
    assert_exit(&other_key, 1);
    assert!(stdout(&other_key).contains("signed by key"), "{}", stdout(&other_key));

    // Someone with the database and the signing key rewrites the chain and re-signs everything.
    let signing = airlock_broker::secrets::load_or_create_key(&app.data_dir).unwrap();
    let options = SqliteConnectOptions::new().filename(app.data_dir.join("airlock.db"));
    let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
    let records: Vec<(i64, String, i64, String, String, String)> =
        sqlx::query_as("SELECT seq, chain_id, at_ms, kind, actor, details FROM audit_events ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    for statement in ["DROP TRIGGER audit_checkpoints_no_delete", "DELETE FROM audit_checkpoints"] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let forged = records.into_iter().map(|(_, chain_id, at_ms, kind, actor, details)| {
        let event = AuditEvent {
            kind: serde_json::from_value(json!(kind)).unwrap(),
            actor,
            at: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000).unwrap(),
            details: serde_json::from_str(&details.replace("\"carol\"", "\"mallory\"")).unwrap(),
        };
        (chain_id, event)
    });
    let head_now = airlock_testkit::rewrite_chain(&pool, forged).await;
    let resigned = Checkpoint::sign(&signing.keypair(), "broker", head_now.seq, &head_now.hash, 1).unwrap();
    sqlx::query("INSERT INTO audit_checkpoints VALUES (?, ?, ?, ?, ?, ?)")
        .bind(&resigned.chain_id)
        .bind(resigned.seq)
        .bind(&resigned.head_hash)
        .bind(resigned.at_ms)
        .bind(&resigned.key_id)
        .bind(&resigned.signature)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    // The broker's own check cannot tell; the sink, kept elsewhere, can.
    assert_exit(&app.airlock("bob", &["audit", "verify"]), 0);
    let rewritten = root.path().join("rewritten.jsonl");
    assert_exit(&app.airlock("bob", &["audit", "export", "--out", rewritten.to_str().unwrap()]), 0);
    let caught = verify(&rewritten, key_file.to_str().unwrap());
    assert_exit(&caught, 1);
    assert!(stdout(&caught).contains("the sink's checkpoint for record"), "{}", stdout(&caught));
    assert!(stderr(&caught).contains("audit export broken"), "{}", stderr(&caught));

    // No redacted value has this commitment: refused, exit 1.
    let unknown = app.airlock("bob", &["audit", "prove", &"0".repeat(64), "--value", "x"]);
    assert_exit(&unknown, 1);
    assert!(stderr(&unknown).contains("can be proven"), "{}", stderr(&unknown));

    // Bad usage is exit 2.
    let no_key = airlock_command().args(["audit", "verify", "--file"]).arg(&export).output().unwrap();
    assert_exit(&no_key, 2);
    assert!(stderr(&no_key).contains("--file needs --public-key"), "{}", stderr(&no_key));
    let bad_time = app.airlock("bob", &["audit", "export", "--since", "yesterday"]);
    assert_exit(&bad_time, 2);
    assert!(stderr(&bad_time).contains("neither an RFC 3339 time"), "{}", stderr(&bad_time));
}

/// Every route of `airlock_http::routes::router`, as (path, method).
const ROUTES: &[(&str, &str)] = &[
    ("/v1/health", "get"),
    ("/v1/ready", "get"),
    ("/v1/openapi.json", "get"),
    ("/v1/whoami", "get"),
    ("/v1/keys", "get"),
    ("/v1/mfa/enroll", "post"),
    ("/v1/mfa/confirm", "post"),
    ("/v1/mfa/verify", "post"),
    ("/v1/logout", "post"),
    ("/v1/devices", "get"),
    ("/v1/devices", "post"),
    ("/v1/devices/{id}/disable", "post"),
    ("/v1/requests", "get"),
    ("/v1/requests", "post"),
    ("/v1/requests/{id}", "get"),
    ("/v1/requests/{id}/approve", "post"),
    ("/v1/requests/{id}/deny", "post"),
    ("/v1/requests/{id}/cancel", "post"),
    ("/v1/breakglass", "post"),
    ("/v1/reviews", "get"),
    ("/v1/reviews/{grant}", "post"),
    ("/v1/incidents", "get"),
    ("/v1/incidents", "post"),
    ("/v1/incidents/{id}", "get"),
    ("/v1/incidents/{id}/close", "post"),
    ("/v1/grants", "get"),
    ("/v1/grants/{id}/revoke", "post"),
    ("/v1/grants/{id}/credentials", "post"),
    ("/v1/gateway/grants", "get"),
    ("/v1/gateway/grants/{id}", "get"),
    ("/v1/gateway/events", "post"),
    ("/v1/gateway/sessions/unended", "get"),
    ("/v1/audit", "get"),
    ("/v1/audit/verify", "get"),
    ("/v1/audit/export", "get"),
    ("/v1/audit/prove", "post"),
    ("/v1/reports/summary", "get"),
    ("/v1/reports/users/{name}", "get"),
    ("/v1/reports/resources/{name}", "get"),
    ("/v1/reports/incidents/{id}", "get"),
    ("/metrics", "get"),
    ("/v1/login/oidc", "get"),
    ("/v1/login/oidc/callback", "get"),
    ("/v1/login/handoff", "post"),
    ("/v1/login/device", "post"),
    ("/v1/login/device/poll", "post"),
    ("/v1/login/refresh", "post"),
];

#[tokio::test]
async fn the_http_api_answers_json_errors_and_matches_its_openapi_document() {
    let app = spawn_app();
    let http = airlock_broker::outbound::client(std::time::Duration::from_secs(30)).unwrap();
    let url = |path: &str| format!("{}{path}", app.url);
    let bob = app.token("bob");

    async fn answer(response: reqwest::Response) -> (u16, Value) {
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("HTTP {status}: not JSON ({e}): {text:?}"));
        (status, body)
    }

    let response = http.get(url("/v1/whoami")).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (status, body) = answer(response).await;
    assert_eq!((status, &body["code"]), (401, &json!("unauthenticated")), "{body}");
    let (status, body) = answer(http.get(url("/v1/whoami")).bearer_auth("wrong").send().await.unwrap()).await;
    assert_eq!((status, &body["code"]), (401, &json!("unauthenticated")), "{body}");

    let (status, body) = answer(
        http.post(url("/v1/requests"))
            .bearer_auth(bob)
            .header("content-type", "application/json")
            .body("{\"resource\": \"demo-db\",")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &body["code"]), (400, &json!("bad_input")), "{body}");

    let unknown_field = json!({"resource": "demo-db", "role": "read", "duration": "10m", "reason": "x", "sudo": true});
    let (status, body) =
        answer(http.post(url("/v1/requests")).bearer_auth(bob).json(&unknown_field).send().await.unwrap()).await;
    assert_eq!((status, &body["code"]), (400, &json!("bad_input")), "{body}");
    assert!(str_of(&body, "error").contains("sudo"), "{body}");

    let (status, body) = answer(http.get(url("/v1/requests?limit=lots")).bearer_auth(bob).send().await.unwrap()).await;
    assert_eq!((status, &body["code"]), (400, &json!("bad_input")), "{body}");

    let (status, body) = answer(http.get(url("/v1/nowhere")).bearer_auth(bob).send().await.unwrap()).await;
    assert_eq!((status, &body["code"], &body["error"]), (404, &json!("not_found"), &json!("no such route")));

    let (status, _) = answer(
        http.get(url(&format!("/v1/requests/{}/approve", uuid::Uuid::new_v4()))).bearer_auth(bob).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    let (status, _) = answer(http.delete(url("/v1/grants")).bearer_auth(bob).send().await.unwrap()).await;
    assert_eq!(status, 405);

    for id in ["not-a-uuid".to_owned(), uuid::Uuid::new_v4().to_string()] {
        let (status, body) =
            answer(http.get(url(&format!("/v1/requests/{id}"))).bearer_auth(bob).send().await.unwrap()).await;
        assert_eq!((status, &body["code"]), (404, &json!("not_found")), "{id}: {body}");
        assert_ne!(body["error"], "no such route");
    }

    let (status, document) = answer(http.get(url("/v1/openapi.json")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    let documented: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .expect("`paths` is an object")
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("a path item").keys();
            methods
                .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                .map(move |m| (path.clone(), m.clone()))
        })
        .collect();
    let routes: BTreeSet<(String, String)> = ROUTES.iter().map(|(p, m)| (p.to_string(), m.to_string())).collect();
    assert_eq!(documented, routes, "the OpenAPI document and the router disagree");

    for (path, method) in &documented {
        let concrete = path.replace("{id}", &uuid::Uuid::new_v4().to_string()).replace("{name}", "demo-db");
        let builder = match method.as_str() {
            "get" => http.get(url(&concrete)),
            "post" => http.post(url(&concrete)).json(&json!({})),
            other => unreachable!("{other}"),
        };
        let response = builder.bearer_auth(bob).send().await.unwrap();
        if path == "/metrics" {
            assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
            assert!(response.text().await.unwrap().contains("# TYPE airlock_active_grants gauge"));
            continue;
        }
        if path == "/v1/audit/export" {
            // JSON Lines rather than one JSON document.
            assert_eq!(response.headers()["content-type"], "application/x-ndjson");
            assert!(response.text().await.unwrap().lines().last().unwrap().starts_with("{\"seal\":"));
            continue;
        }
        let (status, body) = answer(response).await;
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(status != 404 || body["error"] != "no such route", "{method} {path} is documented but not routed");
        assert!(status < 500, "{method} {path}: {status} {body}");
    }
}

#[test]
fn policy_check_and_policy_tests() {
    let check = airlock_command().args(["policy", "check", "--config"]).arg(quickstart_config()).output().unwrap();
    assert_exit(&check, 0);
    assert!(
        stdout(&check).starts_with("ok: 4 policies, 1 resources, 1 incident playbooks, version "),
        "{}",
        stdout(&check)
    );

    let test = airlock_command().args(["policy", "test", "--config"]).arg(quickstart_config()).output().unwrap();
    assert_exit(&test, 0);
    assert!(stdout(&test).contains("9 passed, 0 failed"), "{}", stdout(&test));
    assert!(!stdout(&test).contains("FAILED"), "{}", stdout(&test));

    let dir = tempfile::tempdir().unwrap();
    let config = copy_quickstart(dir.path());
    let cases = dir.path().join("policy-tests/demo-db.toml");
    let text = fs::read_to_string(&cases).unwrap();
    fs::write(&cases, text.replacen("expect = \"deny\"", "expect = \"allow\"", 1)).unwrap();
    let flipped = airlock_command().args(["policy", "test", "--config"]).arg(&config).output().unwrap();
    assert_exit(&flipped, 1);
    assert!(stdout(&flipped).contains("FAILED demo-db.toml: people outside eng may not ask"), "{}", stdout(&flipped));
    assert!(stdout(&flipped).contains("8 passed, 1 failed"), "{}", stdout(&flipped));
    assert!(stderr(&flipped).contains("1 policy test(s) failed"), "{}", stderr(&flipped));

    fs::write(dir.path().join("policies/broken.cedar"), "permit (principal, action, resource\n").unwrap();
    let broken = airlock_command().args(["policy", "check", "--config"]).arg(&config).output().unwrap();
    assert_exit(&broken, 1);
    assert!(stderr(&broken).contains("broken.cedar"), "{}", stderr(&broken));

    let missing =
        airlock_command().args(["policy", "check", "--config"]).arg(dir.path().join("nope.toml")).output().unwrap();
    assert_exit(&missing, 2);
}

/// A throwaway cluster that the quickstart's demo-db points at (with a connector login that has
/// only CREATEROLE and the mapped roles, as docs/postgres.md asks), and a broker on that quickstart.
async fn app_on_a_cluster(root: &Path) -> (airlock_postgres::cluster::LocalCluster, TestApp) {
    let cluster = airlock_postgres::cluster::LocalCluster::start(&root.join("pg")).await.expect("a cluster");
    let connector = "CREATE ROLE airlock_connector LOGIN CREATEROLE PASSWORD 'connector-3d1c';
        GRANT pg_read_all_data, pg_write_all_data TO airlock_connector WITH ADMIN OPTION;";
    cluster.connect("postgres").await.unwrap().batch_execute(connector).await.unwrap();
    let config = copy_quickstart(&root.join("quickstart"));
    fs::write(root.join("quickstart/connector.password"), "connector-3d1c").unwrap();
    let catalog = fs::read_to_string(root.join("quickstart/catalog.toml")).unwrap().replace(
        "[resource.postgres]\ndatabase = \"demo\"\n",
        &format!(
            "[resource.postgres]\naddress = \"127.0.0.1:{}\"\ndatabase = \"postgres\"\n\
             admin_user = \"airlock_connector\"\nadmin_password_file = \"connector.password\"\ntls = \"disable\"\n",
            cluster.port()
        ),
    );
    assert!(catalog.contains("admin_user"), "the quickstart's demo-db section was replaced");
    fs::write(root.join("quickstart/catalog.toml"), catalog).unwrap();
    (cluster, spawn_app_with(&config))
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_gives_a_grant_a_database_role_and_takes_it_away_on_revoke() {
    let root = tempfile::tempdir().unwrap();
    let (cluster, app) = app_on_a_cluster(root.path()).await;

    let superuser = cluster.connect("postgres").await.unwrap();
    let roles = async || -> Vec<String> {
        let rows = superuser
            .query("SELECT rolname::text FROM pg_roles WHERE rolname ~ '^airlock_[0-9a-f]{32}$'", &[])
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    };
    let request = app.request("dana", "read", "20m");
    let grant_id = str_of(&request["grant"], "id").to_owned();
    let role = format!("airlock_{}", grant_id.replace('-', ""));
    let deadline = Instant::now() + PATIENCE;
    while roles().await != [role.clone()] {
        assert!(Instant::now() < deadline, "the grant's role never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let member: bool =
        superuser.query_one("SELECT pg_has_role($1, 'pg_read_all_data', 'USAGE')", &[&role]).await.unwrap().get(0);
    assert!(member, "the role has the catalog's database role");

    assert_exit(&app.airlock("dana", &["revoke", &grant_id, "--reason", "done"]), 0);
    let deadline = Instant::now() + PATIENCE;
    while !roles().await.is_empty() {
        assert!(Instant::now() < deadline, "the grant's role outlived its revocation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tail = app.json("bob", &["audit", "tail", "-n", "5"]).to_string();
    assert!(tail.contains("target.role_created") && tail.contains("target.role_dropped"), "{tail}");
    assert!(!tail.contains(cluster.superuser_password()), "the connector's password is never audited");

    let report = airlock_command()
        .args(["report", "standing", "--config"])
        .arg(&app.config)
        .arg("--data-dir")
        .arg(&app.data_dir)
        .output()
        .unwrap();
    assert_exit(&report, 1);
    assert!(
        stdout(&report).contains("superuser"),
        "the connector's superuser login is standing privilege: {}",
        stdout(&report)
    );
}

/// `psql` on `conninfo`, kept open, with `first` sent; more statements go to the returned input.
fn psql_session(conninfo: &str, first: &str) -> (Child, std::process::ChildStdin) {
    let mut session = Command::new("psql")
        .args([conninfo, "-XAt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql runs");
    let mut input = session.stdin.take().unwrap();
    writeln!(input, "{first}").unwrap();
    input.flush().unwrap();
    (session, input)
}

#[test]
fn the_quickstart_database_is_reached_through_the_gateway_until_the_grant_is_revoked() {
    let app = spawn_app();
    let request = app.request("dana", "read", "20m");
    let grant_id = str_of(&request["grant"], "id").to_owned();
    assert!(app.throwaway_port.is_some(), "serve said it started a throwaway PostgreSQL for demo-db");

    let connect = |sql: &str| app.airlock("dana", &["connect", "demo-db", "--", "-XAtc", sql]);
    let stuck = connect("SELECT count(*) FROM orders WHERE status = 'stuck'");
    assert_exit(&stuck, 0);
    assert_eq!(stdout(&stuck).trim(), "2");
    let write = connect("UPDATE orders SET status = 'shipped'");
    assert_exit(&write, 1);
    assert!(stderr(&write).contains("permission denied"), "{}", stderr(&write));
    let escalate = connect("SET ROLE postgres");
    assert_exit(&escalate, 1);
    assert!(
        stderr(&escalate).contains("airlock:") && stderr(&escalate).contains("role_change"),
        "{}",
        stderr(&escalate)
    );

    // Any client, with the printed connection string; one session stays open across the revoke.
    let credentials = app.airlock("dana", &["credentials", &grant_id]);
    assert_exit(&credentials, 0);
    let conninfo = stdout(&credentials).trim().to_owned();
    assert!(conninfo.contains("sslmode=require") && conninfo.contains("password=v4.public."), "{conninfo}");
    let (open, mut input) = psql_session(&conninfo, "SELECT 'before';");
    thread::sleep(Duration::from_millis(500));
    let (status, metrics) = app.scrape(Some("bob"));
    assert_eq!(status, 200, "{metrics}");
    for line in [
        "airlock_gateway_sessions 1\n",
        "airlock_active_grants 1\n",
        "airlock_requests_total{outcome=\"auto_approved\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert_exit(&app.airlock("dana", &["revoke", &grant_id, "--reason", "done"]), 0);
    thread::sleep(Duration::from_millis(500));
    let _ = input.write_all(b"SELECT 'after';\n");
    drop(input);
    let session = open.wait_with_output().unwrap();
    assert!(stdout(&session).contains("before") && !stdout(&session).contains("after"), "{}", stdout(&session));
    assert!(stderr(&session).contains("has ended"), "the client is told why: {}", stderr(&session));

    let after = connect("SELECT 1");
    assert_exit(&after, 1);
    assert!(stderr(&after).contains("no live grant"), "{}", stderr(&after));
    let tail = app.json("bob", &["audit", "tail", "-n", "30"]).to_string();
    for kind in ["credential.issued", "session.started", "statement.executed", "statement.refused", "session.ended"] {
        assert!(tail.contains(kind), "{kind} in {tail}");
    }
    assert!(tail.contains("status = 'stuck'"), "the statement text is recorded");
    assert!(!tail.contains("v4.public."), "a credential is never recorded");

    // Reports, as an auditor reads them.
    let summary = app.json("bob", &["report"]);
    assert_eq!(summary["requests"]["auto_approved"], 1, "{summary:#}");
    let refusals = summary["deviations"]["guardrail_refusals"].as_array().unwrap();
    assert!(refusals.iter().any(|r| r["text"] == "SET ROLE postgres" && r["user"] == "dana"), "{summary:#}");
    let dana = summary["by_user"].as_array().unwrap().iter().find(|l| l["name"] == "dana").unwrap();
    assert_eq!((dana["grants"].as_u64(), dana["sessions"].as_u64()), (Some(1), Some(4)), "{dana:#}");
    let csv = app.airlock("bob", &["report", "--csv"]);
    assert_exit(&csv, 0);
    let csv = stdout(&csv);
    assert!(csv.starts_with("section,subject,measure,value\n"), "{csv}");
    assert!(csv.contains("requests,,auto_approved,1\n") && csv.contains("by_user,dana,grants,1\n"), "{csv}");
    let timeline = app.airlock("bob", &["report", "user", "dana", "--csv"]);
    assert_exit(&timeline, 0);
    let timeline = stdout(&timeline);
    assert!(timeline.starts_with("at,event,request,grant,session,actor,detail\n"), "{timeline}");
    for event in ["request", "grant_started", "session_started", "statement", "statement_refused", "grant_ended"] {
        assert!(timeline.contains(&format!(",{event},")), "{event} in {timeline}");
    }
    assert!(timeline.contains("SET ROLE postgres"), "{timeline}");
    let story = app.airlock("bob", &["report", "resource", "demo-db", "--since", "2026-01-01"]);
    assert_exit(&story, 0);
    assert!(stdout(&story).contains("status = 'stuck'") && stdout(&story).contains("REFUSED"), "{}", stdout(&story));
    let text = app.airlock("bob", &["report"]);
    assert_exit(&text, 0);
    assert!(stdout(&text).contains("statements refused by guardrails: 1"), "{}", stdout(&text));
    let not_auditor = app.airlock("dana", &["report"]);
    assert_exit(&not_auditor, 1);
    assert!(stderr(&not_auditor).contains("auditor"), "{}", stderr(&not_auditor));
    let backwards = app.airlock("bob", &["report", "--since", "2026-12-01", "--until", "2026-11-01"]);
    assert_exit(&backwards, 1);
    assert!(stderr(&backwards).contains("`since` must come before `until`"), "{}", stderr(&backwards));
    let both = app.airlock("bob", &["report", "--csv", "--json"]);
    assert_exit(&both, 2);

    // Metrics: the revocation measured once the connector dropped the role; auditors only.
    let metrics = eventually("the revocation in the metrics", || {
        let (_, metrics) = app.scrape(Some("bob"));
        metrics.contains("airlock_time_to_revoke_seconds_count 1\n").then_some(metrics)
    });
    for line in [
        "airlock_gateway_sessions 0\n",
        "airlock_active_grants 0\n",
        "airlock_grants_ended_total{how=\"revoked\"} 1\n",
        "# TYPE airlock_audit_append_seconds histogram\n",
        "airlock_audit_records_total{kind=\"statement.refused\"} 1\n",
        "# TYPE airlock_audit_checkpoint_age_seconds gauge\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert_eq!(app.scrape(Some("dana")).0, 403);
    assert_eq!(app.scrape(None).0, 401);
}

/// An incident tool drives incidents over the API with a service account's token, as its webhook
/// would; a named responder gets write at once under the quickstart's playbook, uses it through the
/// gateway, and loses it, live session included, the moment the incident closes.
#[tokio::test(flavor = "multi_thread")]
async fn an_incident_arms_its_responders_through_a_playbook_until_it_closes() {
    let app = spawn_app();
    let added = app.admin(&["user", "add", "pagerduty", "--group", "incident-tools", "--service"]);
    assert_exit(&added, 0);
    let tool = stdout(&added).trim().to_owned();
    let http = airlock_broker::outbound::client(Duration::from_secs(30)).unwrap();
    let webhook = |token: &str, path: &str, body: Value| {
        let request = http.post(format!("{}{path}", app.url)).bearer_auth(token).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let inc7 = json!({"id": "INC-7", "severity": 1, "title": "orders stuck", "responders": ["alice"]});
    let (status, opened) = webhook(&tool, "/v1/incidents", inc7.clone()).await;
    assert_eq!((status, opened["state"].as_str()), (201, Some("open")), "{opened}");
    assert_eq!(webhook(&tool, "/v1/incidents", inc7.clone()).await.0, 200, "a retried webhook changes nothing");
    assert_eq!(webhook(app.token("dana"), "/v1/incidents", inc7.clone()).await.0, 403, "not an incident manager");
    let (status, error) = webhook(&tool, "/v1/incidents", json!({"id": "INC-8", "severity": 9, "title": "x"})).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"].as_str().unwrap().contains("severity 9 is out of range"), "{error}");
    assert_eq!(webhook(&tool, "/v1/incidents", json!({"id": "INC-8", "severity": 1})).await.0, 400);
    let listed = app.airlock("alice", &["incident", "list", "--open"]);
    assert_exit(&listed, 0);
    assert!(stdout(&listed).contains("INC-7") && stdout(&listed).contains("orders stuck"), "{}", stdout(&listed));

    let for_incident = ["request", "demo-db", "--role", "write", "--for", "2h", "--reason", "fix stuck orders"];
    let text = app.airlock("alice", &[&for_incident[..], &["--incident", "INC-7"]].concat());
    assert_exit(&text, 0);
    let shown = stdout(&text);
    assert!(shown.contains("state     approved") && shown.contains("playbook:demo-db-outage"), "{shown}");
    assert!(shown.contains("incident  INC-7 (severity 1)"), "{shown}");
    assert!(shown.contains("cut to the incident playbook's maximum, 1h"), "{shown}");
    let grant_id = str_of(&app.json("alice", &["grants", "--active"])[0], "id").to_owned();
    let unknown = app.airlock("alice", &[&for_incident[..], &["--incident", "INC-404"]].concat());
    assert_exit(&unknown, 1);
    assert!(stderr(&unknown).contains("unknown incident `INC-404`"), "{}", stderr(&unknown));
    assert_exit(&app.airlock("alice", &[&for_incident[..], &["--incident", "not an id"]].concat()), 2);

    let credentials = app.airlock("alice", &["credentials", &grant_id]);
    assert_exit(&credentials, 0);
    let (session, mut input) =
        psql_session(stdout(&credentials).trim(), "UPDATE orders SET status = 'retried' WHERE status = 'stuck';");
    eventually("the update in the audit chain", || {
        app.json("bob", &["audit", "tail", "-n", "10"]).to_string().contains("'retried'").then_some(())
    });

    let (status, closed) = webhook(&tool, "/v1/incidents/INC-7/close", json!({})).await;
    assert_eq!((status, closed["grants_revoked"].as_u64()), (200, Some(1)), "{closed}");
    thread::sleep(Duration::from_millis(500));
    let _ = input.write_all(b"SELECT 'after';\n");
    drop(input);
    let ended = session.wait_with_output().unwrap();
    assert!(stdout(&ended).contains("UPDATE 2") && !stdout(&ended).contains("after"), "{}", stdout(&ended));
    assert!(stderr(&ended).contains("has ended"), "the client is told why: {}", stderr(&ended));
    assert_eq!(app.grant_as("alice", &grant_id)["state"], "revoked");
    let late = app.airlock("alice", &[&for_incident[..], &["--incident", "INC-7"]].concat());
    assert_exit(&late, 1);
    assert!(stderr(&late).contains("incident `INC-7` is closed"), "{}", stderr(&late));
    assert_eq!(webhook(&tool, "/v1/incidents/INC-7/close", json!({})).await.0, 409);

    let postmortem = app.airlock("bob", &["report", "incident", "INC-7"]);
    assert_exit(&postmortem, 0);
    let told = stdout(&postmortem);
    for part in ["incident INC-7 (severity 1): orders stuck", "closed by pagerduty", "playbook:demo-db-outage"] {
        assert!(told.contains(part), "{part} in {told}");
    }
    assert!(told.contains("status = 'retried'") && told.contains("incident INC-7 closed"), "{told}");
    let report = json_of(&app.airlock_with(Some(&tool), &app.url, &["report", "incident", "INC-7", "--json"]));
    assert_eq!(report["story"]["requests"].as_array().unwrap().len(), 1, "{report:#}");
    let forbidden = app.airlock("alice", &["report", "incident", "INC-7"]);
    assert_exit(&forbidden, 1);
    assert!(stderr(&forbidden).contains("incident manager"), "{}", stderr(&forbidden));
    let (_, metrics) = app.scrape(Some("bob"));
    assert!(metrics.contains("airlock_incidents_open 0\n"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_running_apart_asks_the_broker_and_cuts_sessions_on_revoke() {
    let root = tempfile::tempdir().unwrap();
    let (_cluster, app) = app_on_a_cluster(root.path()).await;
    let service = app.admin(&["user", "add", "gw1", "--service", "--group", "gateways"]);
    assert_exit(&service, 0);
    let gateway_token = stdout(&service).trim().to_owned();
    let gateway_dir = root.path().join("gateway-data");
    fs::create_dir(&gateway_dir).unwrap();
    fs::copy(app.data_dir.join("connector.key"), gateway_dir.join("connector.key")).unwrap();

    let mut gateway = airlock_command();
    gateway
        .args(["gateway", "--listen", "127.0.0.1:0", "--config"])
        .arg(&app.config)
        .arg("--data-dir")
        .arg(&gateway_dir)
        .env("AIRLOCK_URL", &app.url)
        .env("AIRLOCK_TOKEN", &gateway_token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = gateway.spawn().expect("`airlock gateway` starts");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let _gateway = KillOnDrop(child);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let address =
        line.strip_prefix("airlock gateway listening on ").expect(&line).split(' ').next().unwrap().to_owned();
    let port = address.rsplit_once(':').unwrap().1.to_owned();

    let request = app.request("dana", "read", "20m");
    let grant_id = str_of(&request["grant"], "id").to_owned();
    let credential = app.json("dana", &["credentials", &grant_id]);
    let conninfo = format!(
        "host=127.0.0.1 port={port} dbname=postgres user=dana sslmode=require password={}",
        str_of(&credential, "token")
    );
    let psql = |sql: &str| Command::new("psql").args([conninfo.as_str(), "-XAtc", sql]).output().expect("psql runs");
    let read = psql("SELECT current_user LIKE 'airlock_%'");
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(stdout(&read).trim(), "t");

    let mut open = Command::new("psql")
        .args([conninfo.as_str(), "-XAt"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = open.stdin.take().unwrap();
    input.write_all(b"SELECT 1;\n").unwrap();
    thread::sleep(Duration::from_millis(500));
    assert_exit(&app.airlock("dana", &["revoke", &grant_id, "--reason", "done"]), 0);
    thread::sleep(Duration::from_millis(500));
    let _ = input.write_all(b"SELECT 2;\n");
    drop(input);
    let session = open.wait_with_output().unwrap();
    assert!(stderr(&session).contains("has ended"), "the push reached the gateway: {}", stderr(&session));
    let after = psql("SELECT 1");
    assert!(!after.status.success() && stderr(&after).contains("has ended"), "{}", stderr(&after));

    let tail = app.json("bob", &["audit", "tail", "-n", "20"]).to_string();
    assert!(tail.contains("session.started") && tail.contains("statement.executed"), "{tail}");
    // Only the gateway's service account may ask for live grants or record events.
    let http = airlock_broker::outbound::client(std::time::Duration::from_secs(30)).unwrap();
    let asked = http.get(format!("{}/v1/gateway/grants", app.url)).bearer_auth(app.token("bob")).send().await.unwrap();
    assert_eq!(asked.status(), 403);
    let forged =
        serde_json::json!([{ "kind": "grant.revoked", "actor": "x", "at": "2026-01-01T00:00:00Z", "details": {} }]);
    let told = http.post(format!("{}/v1/gateway/events", app.url)).bearer_auth(&gateway_token).json(&forged).send();
    assert_eq!(told.await.unwrap().status(), 400, "a gateway records only session and statement events");
}

/// A webhook receiver on loopback for `serve`'s notifications (it stands for a service
/// elsewhere): answers 200 to every POST and hands on each request's headers and body.
fn webhook_receiver() -> (String, mpsc::Receiver<(String, String)>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (send, receive) = mpsc::channel();
    thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while let Ok(n) = socket.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
                let length = head
                    .lines()
                    .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    let _ = send.send((head.to_ascii_lowercase(), body.to_owned()));
                    break;
                }
            }
        }
    });
    (url, receive)
}

#[test]
fn serve_sends_signed_notifications_and_refuses_to_start_without_their_secret() {
    let root = tempfile::tempdir().unwrap();
    let config = copy_quickstart(&root.path().join("quickstart"));
    let (url, received) = webhook_receiver();
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[notify]\nbase_url = \"https://airlock.example.com\"\n\
         [[notify.channel]]\nname = \"hook\"\nformat = \"json\"\nurl = \"{url}\"\nsecret_file = \"notify.key\"\n\
         [[notify.route]]\nchannel = \"hook\"\nevents = [\"review_needed\"]\n"
    ));
    fs::write(&config, text).unwrap();

    // Without its secret, `serve` does not start, and says which channel and file.
    let refused = airlock_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(root.path().join("unused"))
        .output()
        .unwrap();
    assert_exit(&refused, 2);
    assert!(stderr(&refused).contains("[notify] channel `hook`: cannot read secret_file"), "{}", stderr(&refused));
    assert!(!stderr(&refused).contains(&url), "the URL is never shown: {}", stderr(&refused));

    fs::write(config.with_file_name("notify.key"), "a-test-key-of-32-bytes-0123456789\n").unwrap();
    let app = spawn_app_with(&config);
    let request = app.request("alice", "write", "10m");
    let id = str_of(&request, "id");
    let (head, body) = received.recv_timeout(PATIENCE).expect("a notification reaches the receiver");
    assert!(head.contains("x-airlock-signature: v1=") && head.contains("x-airlock-delivery: "), "{head}");
    let notice: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((notice["kind"].as_str(), notice["subject"]["request"].as_str()), (Some("review_needed"), Some(id)));
    assert_eq!(notice["link"], format!("https://airlock.example.com/v1/requests/{id}"));
    assert_eq!(notice["commands"]["approve"], format!("airlock approve {id}"));
    let delivered = eventually("the delivery's audit record", || {
        let tail = app.json("bob", &["audit", "tail", "-n", "50"]).to_string();
        tail.contains("notification.delivered").then_some(tail)
    });
    assert!(!delivered.contains(&url), "no record holds the URL");
}
