//! Attacks on the gateway's guard from inside a grant, against a real PostgreSQL through the
//! shared harness: the server made to read statement text differently from the guard (a view
//! over `pg_settings` changes `standard_conforming_strings`), in turn and pipelined, and the
//! settings poolers send on every release, which must pass; and the database layer alone, with
//! the guard fooled on purpose: a grant role's own password gets its holder nothing.

use airlock_core::catalog::TlsMode;
use airlock_gateway::gateway::Settings;
use airlock_postgres::roles::{RoleKey, role_name};
use airlock_postgres::tls::TargetTls;
use airlock_testkit::eventually;
use airlock_testkit::gateway::{DATABASE, GatewayHarness, Setup};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// The red team's text: one harmless string to a reader whose backslashes do not escape, a
/// statement (a role setting, visible afterwards) to one whose backslashes do.
const HIDDEN: &str = "SELECT 'x\\''; ALTER ROLE CURRENT_USER SET work_mem = '77kB'; SELECT current_user; --'";
const VIEW: &str = "CREATE TEMP VIEW s AS SELECT * FROM pg_settings";
const TURN_OFF: &str = "UPDATE s SET setting = 'off' WHERE name = 'standard_conforming_strings'";

/// Whether any role got the hidden statement's setting.
async fn hidden_statement_ran(h: &GatewayHarness) -> bool {
    let superuser = h.cluster().connect(DATABASE).await.unwrap();
    let row = superuser
        .query_one("SELECT count(*) FROM pg_db_role_setting WHERE array_to_string(setconfig, ',') LIKE '%77kB%'", &[])
        .await
        .unwrap();
    row.get::<_, i64>(0) > 0
}

async fn session(h: &GatewayHarness) -> Client {
    let grant = h.read_grant("30m").await;
    let token = h.token(&grant).await;
    h.connect("dana", &token).await.expect("the credential logs in").0
}

/// In turn, as `psql -c … -c … -c …` sends them: the session ends as soon as the server reports
/// the changed setting, so the hidden statement never gets there.
#[tokio::test]
async fn a_session_whose_server_reads_text_differently_is_ended() {
    let h = GatewayHarness::start(Settings::default()).await;
    let client = session(&h).await;
    client.batch_execute(VIEW).await.expect("a view over pg_settings is only a view");
    let cut = client.batch_execute(TURN_OFF).await.expect_err("the session ends with the change");
    let message = cut.as_db_error().map(|db| db.message().to_owned()).unwrap_or_default();
    assert!(
        message.contains("reads statement text differently") && message.contains("standard_conforming_strings = off"),
        "{cut}"
    );
    assert!(client.batch_execute(HIDDEN).await.is_err());
    assert!(!hidden_statement_ran(&h).await);
    eventually(|| async { !h.audit("session.ended").await.is_empty() }).await;
    assert_eq!(h.audit("session.ended").await[0]["reason"], "reading_changed");
}

/// Pipelined: the hidden text is sent before the server answers the change, so the gateway
/// cannot know the reading yet. The guard checks it under both readings and refuses it.
#[tokio::test]
async fn a_text_pipelined_behind_the_change_is_checked_under_both_readings() {
    let h = GatewayHarness::start(Settings::default()).await;
    let client = session(&h).await;
    client.batch_execute(VIEW).await.unwrap();
    let (turned, hidden) = tokio::join!(client.batch_execute(TURN_OFF), client.batch_execute(HIDDEN));
    assert!(turned.is_err() && hidden.is_err(), "{turned:?} {hidden:?}");
    assert!(!hidden_statement_ran(&h).await);
    let executed = h.audit("statement.executed").await;
    assert!(executed.iter().all(|s| !s["text"].as_str().unwrap_or_default().contains("ALTER ROLE")), "{executed:?}");
}

/// What poolers and drivers send on every release returns to the grant's own role and the
/// session's own reading, and is let through.
#[tokio::test]
async fn reset_all_and_discard_all_pass_and_keep_the_grant_role() {
    let h = GatewayHarness::start(Settings::default()).await;
    let client = session(&h).await;
    let before: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    client.batch_execute("SET work_mem = '1MB'; RESET ALL").await.expect("RESET ALL passes");
    client.batch_execute("DISCARD ALL").await.expect("DISCARD ALL passes");
    let after: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(before, after);
    let reading: String = client.query_one("SHOW standard_conforming_strings", &[]).await.unwrap().get(0);
    assert_eq!(reading, "on");
}

/// The database layer alone: fool the guard on purpose (the role's password is changed as if
/// `ALTER ROLE CURRENT_USER PASSWORD` had got through), and the holder still cannot log in
/// directly, in plaintext or over TLS, with that password or the derived one: `pg_hba.conf`
/// admits grant roles only with a certificate from the grant CA, which only the gateway makes.
#[tokio::test]
async fn a_grant_roles_own_password_gets_it_nothing_at_the_database() {
    let h = GatewayHarness::start_with(Setup { grant_logins: true, ..Setup::default() }).await;
    let grant = h.read_grant("30m").await;
    let token = h.token(&grant).await;
    let (client, _) = h.connect("dana", &token).await.expect("the gateway logs in with a certificate");
    let role: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(role, role_name(&grant.id));
    let in_group: bool =
        client.query_one("SELECT pg_has_role('airlock_gateway_login', 'MEMBER')", &[]).await.unwrap().get(0);
    assert!(in_group);

    let superuser = h.cluster().connect(DATABASE).await.unwrap();
    superuser.batch_execute(&format!("ALTER ROLE {role} PASSWORD 'chosen-by-the-holder'")).await.unwrap();
    let any_certificate = TargetTls::new(&TlsMode::Require, "127.0.0.1").unwrap().unwrap().postgres();
    for (password, tls) in [
        ("chosen-by-the-holder", false),
        ("chosen-by-the-holder", true),
        (&*RoleKey::new([42; 32]).password(&grant.id), true),
    ] {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(h.cluster().port()).dbname(DATABASE).user(&role).password(password);
        let refused = match tls {
            false => config.connect(NoTls).await.map(drop).unwrap_err(),
            true => config.ssl_mode(SslMode::Require).connect(any_certificate.clone()).await.map(drop).unwrap_err(),
        };
        assert_eq!(refused.code(), Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION), "tls {tls}: {refused}");
    }
    client.query_one("SELECT 1", &[]).await.expect("the gateway's own session goes on");
}

/// `pg_dump` under a read grant: its `set_config(name, …) FROM pg_settings WHERE name = …` and
/// everything else it asks pass the guard, and the dump holds the table.
#[tokio::test]
async fn pg_dump_works_under_a_read_grant() {
    let h = GatewayHarness::start(Settings::default()).await;
    let grant = h.read_grant("30m").await;
    let token = h.token(&grant).await;
    let pg_dump = airlock_postgres::cluster::program("pg_dump").expect("pg_dump is installed");
    let conninfo = format!("host=127.0.0.1 port={} dbname={DATABASE} user=dana sslmode=require", h.port);
    // Not std's Command: waiting on it would hold the runtime the gateway runs on.
    let dump = tokio::process::Command::new(pg_dump)
        .args(["--schema-only", "--table=orders", &conninfo])
        .env("PGPASSWORD", &token)
        .output()
        .await
        .expect("pg_dump runs");
    let (out, err) = (String::from_utf8_lossy(&dump.stdout), String::from_utf8_lossy(&dump.stderr));
    assert!(dump.status.success(), "{err}");
    assert!(out.contains("CREATE TABLE public.orders"), "{out}");
}

/// A statement text longer than `max_statement_bytes` is refused before anything parses it
/// (a parse tree costs tens of times its text): 54000, the session goes on, and the refusal is
/// recorded with the text's size and digest only.
#[tokio::test]
async fn a_statement_longer_than_the_limit_is_refused_unread() {
    let settings = Settings { max_statement_bytes: 64 * 1024, ..Settings::default() };
    let h = GatewayHarness::start(settings).await;
    let client = session(&h).await;
    let long = format!("SELECT {}1", "1,".repeat(64 * 1024));
    let refused = client.batch_execute(&long).await.expect_err("too long");
    assert_eq!(refused.code(), Some(&SqlState::PROGRAM_LIMIT_EXCEEDED), "{refused}");
    client.query_one("SELECT 1", &[]).await.expect("the session goes on");
    eventually(|| async { !h.audit("statement.refused").await.is_empty() }).await;
    let recorded = &h.audit("statement.refused").await[0];
    assert_eq!((recorded["text_bytes"].as_u64(), recorded.get("text").is_none()), (Some(long.len() as u64), true));
}
