//! Trusted devices end to end, with the real binary, a real broker and gateway, and `psql`:
//! `airlock device enroll` makes a private key and registers it, an administrator approves it,
//! the CLI proves every call with it (policies see `context.device.trusted`), `airlock connect`
//! presents a certificate for it to the gateway, a credential made for one device is refused
//! from another, and disabling the device ends the grant it asked for.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

/// The quickstart, with demo-db's credentials bound to devices and review skipped only for
/// requests made from a trusted device.
fn quickstart_with_devices(dir: &Path) -> PathBuf {
    let config = copy_quickstart(dir);
    let catalog = fs::read_to_string(dir.join("catalog.toml")).unwrap();
    let catalog = catalog.replace("tags = [\"demo\"]\n", "tags = [\"demo\"]\nbind_credentials_to_device = true\n");
    assert!(catalog.contains("bind_credentials_to_device"), "demo-db was edited");
    fs::write(dir.join("catalog.toml"), catalog).unwrap();
    let forbid = "@id(\"review-unless-trusted-device\")\n\
                  forbid (principal, action == Action::\"auto_approve\", resource)\n\
                  unless { context.device.trusted };\n";
    fs::write(dir.join("policies/devices.cedar"), forbid).unwrap();
    config
}

/// `airlock ARGS` as `user`, on the machine whose device key is `key`.
fn on(app: &TestApp, user: &str, key: &Path, args: &[&str]) -> Output {
    airlock_on(app, user, key).args(args).output().expect("the airlock binary runs")
}

fn airlock_on(app: &TestApp, user: &str, key: &Path) -> Command {
    let mut command = airlock_command();
    command.env("AIRLOCK_URL", &app.url).env("AIRLOCK_TOKEN", app.token(user)).env("AIRLOCK_DEVICE_KEY", key);
    command
}

#[track_caller]
fn json_on(app: &TestApp, user: &str, key: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    json_of(&on(app, user, key, &args))
}

/// The conninfo `airlock credentials` printed, with its `sslcert` and `sslkey` replaced by those
/// of another machine (or dropped).
fn with_device_files(conninfo: &str, files: Option<(&str, &str)>) -> String {
    let kept: Vec<&str> =
        conninfo.split(' ').filter(|word| !word.starts_with("sslcert=") && !word.starts_with("sslkey=")).collect();
    let mut conninfo = kept.join(" ");
    if let Some((certificate, key)) = files {
        conninfo.push_str(&format!(" sslcert={certificate} sslkey={key}"));
    }
    conninfo
}

fn psql(conninfo: &str, sql: &str) -> Output {
    Command::new("psql").args([conninfo, "-XAtc", sql]).output().expect("psql runs")
}

#[test]
fn a_trusted_device_proves_its_calls_and_holds_the_only_key_its_credentials_work_with() {
    let root = tempfile::tempdir().unwrap();
    let app = spawn_app_with(&quickstart_with_devices(&root.path().join("quickstart")));
    let laptop = root.path().join("laptop/device.key");
    let desktop = root.path().join("desktop/device.key");
    let nowhere = root.path().join("no-device/device.key");

    // Not enrolled: the read waits for review, and a credential could not be bound anyway.
    let before =
        json_on(&app, "dana", &nowhere, &["request", "demo-db", "--role", "read", "--for", "20m", "--reason", "OPS-1"]);
    assert_eq!(before["state"], "pending", "{before:#}");

    let enrolled = json_on(&app, "dana", &laptop, &["device", "enroll", "--name", "dana-laptop"]);
    assert_eq!((enrolled["name"].as_str(), enrolled["state"].as_str()), (Some("dana-laptop"), Some("pending")));
    let laptop_id = str_of(&enrolled, "id").to_owned();
    assert_eq!(fs::metadata(&laptop).unwrap().permissions().mode() & 0o777, 0o600, "the key is private");
    assert!(fs::read_to_string(&laptop).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
    let again = on(&app, "dana", &laptop, &["device", "enroll"]);
    assert_exit(&again, 2);
    assert!(stderr(&again).contains("already enrolled"), "{}", stderr(&again));

    // Pending: the proof is accepted but not trusted.
    assert_eq!(json_on(&app, "dana", &laptop, &["whoami"])["device"], Value::Null);
    assert_exit(&app.admin(&["device", "approve", &laptop_id]), 0);
    assert_eq!(json_on(&app, "dana", &laptop, &["whoami"])["device"], laptop_id.as_str());
    let listed = json_on(&app, "dana", &laptop, &["device", "list"]);
    assert_eq!(listed[0]["state"], "trusted", "{listed:#}");

    // From the trusted laptop, review is skipped and psql goes through with the device's key.
    let request =
        json_on(&app, "dana", &laptop, &["request", "demo-db", "--role", "read", "--for", "20m", "--reason", "OPS-2"]);
    assert_eq!(request["state"], "approved", "{request:#}");
    let grant_id = str_of(&request["grant"], "id").to_owned();
    let connect = on(&app, "dana", &laptop, &["connect", "demo-db", "--", "-XAtc", "SELECT 'through the gateway'"]);
    assert_exit(&connect, 0);
    assert_eq!(stdout(&connect).trim(), "through the gateway");

    // The same token on a machine without the device cannot get a credential.
    let refused = on(&app, "dana", &nowhere, &["credentials", &grant_id]);
    assert_exit(&refused, 1);
    assert!(stderr(&refused).contains("bound to a trusted device"), "{}", stderr(&refused));

    // A credential made for the laptop works with the laptop's files only: not from the desktop
    // (another of Dana's trusted devices), not without a certificate.
    let desktop_id = str_of(&json_on(&app, "dana", &desktop, &["device", "enroll"]), "id").to_owned();
    assert_exit(&app.admin(&["device", "approve", &desktop_id]), 0);
    let desktop_credential = on(&app, "dana", &desktop, &["credentials", &grant_id]);
    assert_exit(&desktop_credential, 0);
    let credential = on(&app, "dana", &laptop, &["credentials", &grant_id]);
    assert_exit(&credential, 0);
    let conninfo = stdout(&credential).trim().to_owned();
    assert!(conninfo.contains("sslcert=") && conninfo.contains("sslkey="), "{conninfo}");
    let works = psql(&conninfo, "SELECT 'from the laptop'");
    assert_exit(&works, 0);
    let desktop_files = (desktop.with_extension("key.crt"), desktop.clone());
    let stolen =
        with_device_files(&conninfo, Some((desktop_files.0.to_str().unwrap(), desktop_files.1.to_str().unwrap())));
    let from_desktop = psql(&stolen, "SELECT 1");
    assert_exit(&from_desktop, 2);
    assert!(stderr(&from_desktop).contains("another device"), "{}", stderr(&from_desktop));
    let bare = psql(&with_device_files(&conninfo, None), "SELECT 1");
    assert_exit(&bare, 2);
    assert!(stderr(&bare).contains("no client certificate"), "{}", stderr(&bare));

    // Dana loses the laptop: disabling it ends the grant it asked for, and its proofs stop working.
    let disabled = json_on(&app, "dana", &desktop, &["device", "disable", &laptop_id]);
    assert_eq!(disabled["grants_revoked"], 1, "{disabled:#}");
    assert_eq!(app.grant_as("dana", &grant_id)["state"], "revoked");
    let stolen_laptop = on(&app, "dana", &laptop, &["whoami"]);
    assert_exit(&stolen_laptop, 1);
    assert!(stderr(&stolen_laptop).contains("is disabled"), "{}", stderr(&stolen_laptop));
    let after = psql(&conninfo, "SELECT 1");
    assert_exit(&after, 2);

    let tail = app.json("bob", &["audit", "tail", "-n", "40"]).to_string();
    for kind in ["device.enrolled", "device.approved", "device.disabled"] {
        assert!(tail.contains(kind), "{kind} in {tail}");
    }
}
