//! The gateway against a real PostgreSQL and real clients, through the shared harness
//! ([`airlock_testkit::gateway`]): a throwaway cluster managed by the connector, a broker on the
//! quickstart policies (system clock: PostgreSQL and the credentials check times against the real
//! clock), the gateway on a random port with a generated TLS certificate, and tokio-postgres over
//! rustls as the client. The TLS tests give the database a certificate from a test CA.

use std::time::Duration;

use airlock_core::catalog::TlsMode;
use airlock_core::values::Reason;
use airlock_gateway::gateway::Settings;
use airlock_gateway::target::{self, TargetAddress, TargetError};
use airlock_postgres::tls::TargetTls;
use airlock_testkit::gateway::{DATABASE, GatewayHarness, Setup};
use airlock_testkit::{DatabaseTls, caller, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

fn code(error: &tokio_postgres::Error) -> Option<&SqlState> {
    error.code()
}

fn message(error: &tokio_postgres::Error) -> String {
    error.as_db_error().map(|db| db.message().to_owned()).unwrap_or_else(|| error.to_string())
}

#[tokio::test]
async fn statements_are_relayed_and_recorded() {
    let h = GatewayHarness::start(Settings::default()).await;
    let grant = h.read_grant("30m").await;
    let token = h.token(&grant).await;
    let (client, _) = h.connect("dana", &token).await.expect("the credential logs in");

    let count: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    assert_eq!(count, 3);
    let rows = client.query("SELECT note FROM orders WHERE id > $1 ORDER BY id", &[&1i32]).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>(), ["b", "c"]);
    let refused = client.batch_execute("INSERT INTO orders VALUES (9, 'z')").await.unwrap_err();
    assert_eq!(code(&refused), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "the database's own privileges hold");
    client.batch_execute("SELECT 1; SELECT 2").await.unwrap();
    drop(client);

    eventually(|| async { !h.audit("session.ended").await.is_empty() }).await;
    let statements = h.audit("statement.executed").await;
    let texts: Vec<&str> = statements.iter().map(|s| s["text"].as_str().unwrap()).collect();
    assert!(texts.contains(&"SELECT count(*) FROM orders"), "{texts:?}");
    let with_param = statements.iter().find(|s| s["text"] == "SELECT note FROM orders WHERE id > $1 ORDER BY id");
    let with_param = with_param.expect("the prepared statement is recorded");
    assert_eq!((with_param["params"].as_u64(), with_param["rows"].as_u64()), (Some(1), Some(2)));
    let insert = statements.iter().find(|s| s["text"].as_str().unwrap().starts_with("INSERT")).unwrap();
    assert_eq!(insert["error"]["sqlstate"], "42501");
    assert!(texts.contains(&"SELECT 1") && texts.contains(&"SELECT 2"), "each statement of a string: {texts:?}");
    assert!(statements.iter().all(|s| s["grant"] == grant.id.to_string() && s["session"].is_string()));
    let started = h.audit("session.started").await;
    assert_eq!(started.len(), 1);
    assert_eq!(h.audit("session.ended").await[0]["reason"], "client_left");
    let chain = h.broker.verify_chain().await.unwrap();
    assert!(chain.intact(), "{:?}", chain.failures);
    let all = h.broker.store().audit_chain(airlock_store::BROKER_CHAIN).await.unwrap();
    assert!(all.iter().all(|r| !r.details.contains(&token)), "the token is never recorded");
}

#[tokio::test]
async fn redacted_literals_leave_only_a_commitment_that_proves_the_original() {
    let h = GatewayHarness::start(Settings { redact_literals: true, ..Settings::default() }).await;
    let grant = h.read_grant("30m").await;
    let (client, _) = h.connect("dana", &h.token(&grant).await).await.unwrap();
    let original = "SELECT count(*) FROM orders WHERE note <> 'card 4111111111111111'";
    client.batch_execute(original).await.unwrap();
    drop(client);

    eventually(|| async { !h.audit("session.ended").await.is_empty() }).await;
    let statements = h.audit("statement.executed").await;
    let recorded = statements.iter().find(|s| s["text"] == "SELECT count(*) FROM orders WHERE note <> $1");
    let recorded = recorded.expect("the statement is recorded without its literal");
    let marker = recorded["text_original"].as_str().unwrap();
    let commitment = marker.strip_prefix("[redacted sha256:").and_then(|m| m.strip_suffix(']')).unwrap();
    let all = h.broker.store().audit_chain(airlock_store::BROKER_CHAIN).await.unwrap();
    assert!(all.iter().all(|r| !r.details.contains("4111111111111111")), "the literal never enters the chain");
    assert!(h.broker.verify_chain().await.unwrap().intact());

    let auditor = caller("bob", &["sre"]);
    assert!(h.broker.audit_prove(&auditor, commitment, original).await.unwrap());
    assert!(!h.broker.audit_prove(&auditor, commitment, "SELECT count(*) FROM orders").await.unwrap());
    let holder = caller("dana", &["oncall"]);
    assert!(matches!(
        h.broker.audit_prove(&holder, commitment, original).await,
        Err(airlock_broker::BrokerError::AuditForbidden)
    ));
    assert!(matches!(
        h.broker.audit_prove(&auditor, &"0".repeat(64), original).await,
        Err(airlock_broker::BrokerError::CommitmentNotFound(_))
    ));
}

#[tokio::test]
async fn guardrails_refuse_privilege_changes_without_sending_them() {
    let h = GatewayHarness::start(Settings::default()).await;
    let grant = h.read_grant("30m").await;
    let (client, _) = h.connect("dana", &h.token(&grant).await).await.unwrap();

    for statement in
        ["SET ROLE pg_read_all_data", "GRANT SELECT ON orders TO public", "ALTER SYSTEM SET work_mem = '1GB'"]
    {
        let refused = client.batch_execute(statement).await.unwrap_err();
        assert_eq!(code(&refused), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{statement}: {refused:?}");
        assert!(message(&refused).starts_with("airlock: "), "{}", message(&refused));
    }
    // Extended protocol: a prepared statement is checked before it is parsed by the server.
    let refused = client.prepare("SELECT set_config('role', 'pg_read_all_data', false)").await.unwrap_err();
    assert_eq!(code(&refused), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    // One bad statement refuses the whole string: nothing of it runs.
    let refused = client.batch_execute("SET application_name = 'ran'; RESET ROLE").await.unwrap_err();
    assert_eq!(code(&refused), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    let name: String = client.query_one("SHOW application_name", &[]).await.unwrap().get(0);
    assert_ne!(name, "ran");
    // Inside a transaction the refusal aborts it, as any failed statement does.
    client.batch_execute("BEGIN").await.unwrap();
    assert!(client.batch_execute("SET SESSION AUTHORIZATION DEFAULT").await.is_err());
    let aborted = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(code(&aborted), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.batch_execute("ROLLBACK").await.unwrap();
    // What cannot be parsed is refused too.
    let garbled = client.batch_execute("SELEC 1").await.unwrap_err();
    assert!(message(&garbled).starts_with("airlock: "), "{}", message(&garbled));
    let user: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert!(user.starts_with("airlock_"), "still the grant's role: {user}");

    eventually(|| async { h.audit("statement.refused").await.len() == 7 }).await;
    let refused = h.audit("statement.refused").await;
    assert!(refused.iter().any(|r| r["text"] == "SET ROLE pg_read_all_data"));
}

#[tokio::test]
async fn bad_credentials_are_refused_with_clear_errors() {
    let h = GatewayHarness::start(Settings::default()).await;
    let grant = h.read_grant("30m").await;
    let token = h.token(&grant).await;

    // One character of the signed claims changed.
    let at = token.len() / 2;
    let swapped = if &token[at..=at] == "A" { "B" } else { "A" };
    let forged = format!("{}{swapped}{}", &token[..at], &token[at + 1..]);
    for (user, password, expect) in [
        ("dana", "hunter2", "not an Airlock credential"),
        ("dana", forged.as_str(), "signature"),
        ("alice", token.as_str(), "not issued to `alice`"),
    ] {
        let error = h.connect(user, password).await.expect_err("refused");
        assert_eq!(code(&error), Some(&SqlState::INVALID_PASSWORD), "{user}: {error:?}");
        assert!(message(&error).contains(expect), "{}", message(&error));
    }
    let mut plain = h.config("dana", &token);
    plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let error = plain.connect(NoTls).await.err().expect("plaintext is refused");
    assert!(message(&error).contains("only TLS"), "{}", message(&error));

    // PostgreSQL applies startup parameters as settings: `-c role=…` would change identity.
    let mut sneaky = h.config("dana", &token);
    sneaky.options("-c role=pg_write_all_data");
    let error = sneaky.connect(h.tls.clone()).await.err().expect("startup settings are refused");
    assert_eq!(code(&error), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{error:?}");

    h.broker.revoke(&caller("bob", &["sre"]), &grant.id.to_string(), Reason::parse("done").unwrap()).await.unwrap();
    let error = h.connect("dana", &token).await.expect_err("a revoked grant's credential is refused");
    assert!(message(&error).contains("has ended"), "{}", message(&error));
    eventually(|| async { h.audit("session.refused").await.len() == 6 }).await;
}

#[tokio::test]
async fn a_revoke_ends_every_session_of_the_grant_with_an_error() {
    let h = GatewayHarness::start(Settings::default()).await;
    let grant = h.read_grant("30m").await;
    let token = h.token(&grant).await;
    let (idle, idle_end) = h.connect("dana", &token).await.unwrap();
    let (in_tx, in_tx_end) = h.connect("dana", &token).await.unwrap();
    in_tx.batch_execute("BEGIN; SELECT count(*) FROM orders").await.unwrap();
    let (listening, listening_end) = h.connect("dana", &token).await.unwrap();
    listening.batch_execute("LISTEN news").await.unwrap();
    let (busy, _) = h.connect("dana", &token).await.unwrap();
    let sleeping = tokio::spawn(async move { busy.batch_execute("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    h.broker.revoke(&caller("bob", &["sre"]), &grant.id.to_string(), Reason::parse("done").unwrap()).await.unwrap();
    for end in [idle_end, in_tx_end, listening_end] {
        let ended = tokio::time::timeout(Duration::from_secs(5), end).await.expect("the session ends").unwrap();
        let error = ended.expect_err("the session ends with an error");
        assert_eq!(code(&error), Some(&SqlState::ADMIN_SHUTDOWN), "{error:?}");
        assert!(message(&error).contains("has ended"), "{}", message(&error));
    }
    let slept = tokio::time::timeout(Duration::from_secs(5), sleeping).await.expect("the query is cut").unwrap();
    let error = slept.expect_err("mid-query, the client gets an error");
    assert_eq!(code(&error), Some(&SqlState::ADMIN_SHUTDOWN), "{error:?}");
    assert!(idle.is_closed() && in_tx.is_closed() && listening.is_closed());
    eventually(|| async { h.audit("session.ended").await.len() == 4 }).await;
    assert!(h.audit("session.ended").await.iter().all(|e| e["reason"] == "grant_ended"));
}

/// The gateway cuts a session whose grant is still live (here it shuts down, so the connector
/// has no reason to touch the grant's backends): the statement running at the database is
/// cancelled, not left to run on, and commit, after its session ended.
#[tokio::test]
async fn a_statement_running_when_the_gateway_cuts_its_session_is_cancelled_at_the_database() {
    let mut h = GatewayHarness::start(Settings::default()).await;
    let grant = h.read_grant("30m").await;
    let (client, _) = h.connect("dana", &h.token(&grant).await).await.unwrap();
    let running = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(60)").await });
    let superuser = h.cluster().connect(DATABASE).await.unwrap();
    let sleeping = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(60)'";
    let count = || async { superuser.query_one(sleeping, &[]).await.unwrap().get::<_, i64>(0) };
    eventually(|| async { count().await == 1 }).await;

    h.stop_gateway().await;
    let cut = tokio::time::timeout(Duration::from_secs(5), running).await.expect("the session is cut").unwrap();
    assert_eq!(code(&cut.expect_err("mid-query, the client gets an error")), Some(&SqlState::ADMIN_SHUTDOWN));
    eventually(|| async { count().await == 0 }).await;
    assert!(h.broker.live_grant(&grant.id).await.unwrap().is_some(), "the grant itself is still live");
}

#[tokio::test]
async fn a_session_ends_when_its_grant_expires() {
    let h = GatewayHarness::start(Settings::default()).await;
    let grant = h.read_grant("3s").await;
    let (_client, end) = h.connect("dana", &h.token(&grant).await).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), end).await.expect("the session ends").unwrap();
    let error = ended.expect_err("with an error");
    assert_eq!(code(&error), Some(&SqlState::ADMIN_SHUTDOWN), "{error:?}");
    assert!(message(&error).contains("expired") || message(&error).contains("has ended"), "{}", message(&error));
}

#[tokio::test]
async fn an_idle_session_is_closed() {
    let h = GatewayHarness::start(Settings { idle_timeout: Duration::from_secs(1), ..Settings::default() }).await;
    let grant = h.read_grant("30m").await;
    let (client, end) = h.connect("dana", &h.token(&grant).await).await.unwrap();
    // A statement longer than the timeout is not idleness.
    client.batch_execute("SELECT pg_sleep(1.5)").await.expect("a running statement is not idle");
    let ended = tokio::time::timeout(Duration::from_secs(5), end).await.expect("the session ends").unwrap();
    let error = ended.expect_err("with an error");
    assert_eq!(code(&error), Some(&SqlState::IDLE_SESSION_TIMEOUT), "{error:?}");
}

#[tokio::test]
async fn cancel_requests_reach_only_their_own_backend() {
    let h = GatewayHarness::start(Settings::default()).await;
    let grant = h.read_grant("30m").await;
    let token = h.token(&grant).await;
    let (client, _) = h.connect("dana", &token).await.unwrap();
    let (bystander, _) = h.connect("dana", &token).await.unwrap();
    let cancel = client.cancel_token();
    let running = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(30)").await });
    let other = tokio::spawn(async move { bystander.batch_execute("SELECT pg_sleep(2)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel_query(h.tls.clone()).await.expect("the cancel request is sent");
    let cancelled = tokio::time::timeout(Duration::from_secs(5), running).await.unwrap().unwrap().unwrap_err();
    assert_eq!(code(&cancelled), Some(&SqlState::QUERY_CANCELED));
    other.await.unwrap().expect("the other session's statement is not cancelled");
}

#[tokio::test]
async fn large_results_copy_and_notifications_pass_through() {
    let h = GatewayHarness::start(Settings::default()).await;
    let grant = h.read_grant("30m").await;
    let (client, _) = h.connect("dana", &h.token(&grant).await).await.unwrap();

    let rows = client.query_raw("SELECT g, repeat('x', 20) FROM generate_series(1, 1000000) g", [] as [i32; 0]);
    let mut rows = std::pin::pin!(rows.await.unwrap());
    let mut count = 0u64;
    while let Some(row) = futures_util::StreamExt::next(&mut rows).await {
        row.unwrap();
        count += 1;
    }
    assert_eq!(count, 1_000_000);

    let out = client.copy_out("COPY orders TO STDOUT").await.unwrap();
    let mut out = std::pin::pin!(out);
    let mut copied = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut out).await {
        copied.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(copied).unwrap(), "1\ta\n2\tb\n3\tc\n");

    client.batch_execute("CREATE TEMP TABLE t (x int)").await.unwrap();
    let sink = client.copy_in::<_, bytes::Bytes>("COPY t FROM STDIN").await.unwrap();
    let mut sink = std::pin::pin!(sink);
    futures_util::SinkExt::send(&mut sink, bytes::Bytes::from_static(b"1\n2\n3\n")).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);

    let mut notices = Vec::new();
    let (listener, mut connection) = h.config("dana", &h.token(&grant).await).connect(h.tls.clone()).await.unwrap();
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
            let _ = sender.send(message);
        }
    });
    listener
        .batch_execute("LISTEN news; CREATE TEMP TABLE n (x int); CREATE TEMP TABLE IF NOT EXISTS n (x int)")
        .await
        .unwrap();
    client.batch_execute("NOTIFY news, 'through the gateway'").await.unwrap();
    while notices.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(5), received.recv()).await.unwrap().unwrap();
        notices.push(format!("{message:?}"));
    }
    assert!(notices.iter().any(|n| n.contains("already exists")), "{notices:?}");
    assert!(notices.iter().any(|n| n.contains("through the gateway")), "{notices:?}");
    eventually(|| async { h.audit("statement.executed").await.iter().any(|s| s["rows"] == 1_000_000) }).await;
}

#[tokio::test]
async fn pgbench_runs_through_the_gateway_and_every_statement_is_recorded() {
    let h = GatewayHarness::start(Settings::default()).await;
    let superuser = h.cluster().connect(airlock_testkit::gateway::DATABASE).await.unwrap();
    let pgbench = airlock_postgres::cluster::program("pgbench").expect("pgbench is installed");
    let init = tokio::process::Command::new(&pgbench)
        .args(["-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", &h.cluster().port().to_string()])
        .args(["-U", h.cluster().superuser(), airlock_testkit::gateway::DATABASE])
        .env("PGPASSWORD", h.cluster().superuser_password())
        .output()
        .await
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    drop(superuser);
    let grant = h.read_grant("30m").await;
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname={} user=dana sslmode=require",
        h.port,
        airlock_testkit::gateway::DATABASE
    );
    let run = tokio::process::Command::new(&pgbench)
        .args(["-n", "-S", "-c", "2", "-t", "50", "-M", "prepared", &conninfo])
        .env("PGPASSWORD", h.token(&grant).await)
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{out}{}", String::from_utf8_lossy(&run.stderr));
    assert!(out.contains("number of transactions actually processed: 100/100"), "{out}");
    let selects = || async {
        let executed = h.audit("statement.executed").await;
        executed
            .iter()
            .filter(|s| s["text"].as_str().is_some_and(|t| t.contains("SELECT abalance FROM pgbench_accounts")))
            .count()
    };
    eventually(|| async { selects().await >= 100 }).await;
    assert_eq!(selects().await, 100, "one record per executed statement");
}

#[tokio::test]
async fn a_revoke_ends_a_session_in_the_middle_of_copy() {
    use std::io::Write;
    let h = GatewayHarness::start(Settings::default()).await;
    let grant = h.read_grant("30m").await;
    let psql = airlock_postgres::cluster::program("psql").expect("psql is installed");
    let conninfo = format!("host=127.0.0.1 port={} dbname={} user=dana sslmode=require", h.port, DATABASE);
    let mut copying = std::process::Command::new(psql)
        .args([conninfo.as_str(), "-X", "-c", "CREATE TEMP TABLE t (x int)", "-c", "COPY t FROM STDIN"])
        .env("PGPASSWORD", h.token(&grant).await)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut rows = copying.stdin.take().unwrap();
    rows.write_all(b"1\n2\n").unwrap();
    rows.flush().unwrap();
    eventually(|| async { h.audit("session.started").await.len() == 1 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.revoke(&grant).await;
    eventually(|| async { h.audit("session.ended").await.len() == 1 }).await;
    let _ = rows.write_all(b"3\n\\.\n");
    drop(rows);
    let copied = copying.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&copied.stderr);
    assert!(!copied.status.success() && stderr.contains("has ended"), "the client is told mid-COPY: {stderr}");
    assert_eq!(h.audit("session.ended").await[0]["reason"], "grant_ended");
}

#[tokio::test]
async fn portals_with_row_limits_and_pinned_parsing_settings() {
    let h = GatewayHarness::start(Settings::default()).await;
    // A database default that would make the server read strings differently from the guard.
    let superuser = h.cluster().connect(airlock_testkit::gateway::DATABASE).await.unwrap();
    let database = airlock_testkit::gateway::DATABASE;
    superuser.batch_execute(&format!("ALTER DATABASE {database} SET standard_conforming_strings = off")).await.unwrap();
    let grant = h.read_grant("30m").await;
    let (mut client, _) = h.connect("dana", &h.token(&grant).await).await.unwrap();
    let pinned: String = client.query_one("SHOW standard_conforming_strings", &[]).await.unwrap().get(0);
    assert_eq!(pinned, "on", "the gateway pins it at login");

    let transaction = client.transaction().await.unwrap();
    let statement = transaction.prepare("SELECT g FROM generate_series(1, 10) g").await.unwrap();
    let portal = transaction.bind(&statement, &[]).await.unwrap();
    let first = transaction.query_portal(&portal, 4).await.unwrap();
    let rest = transaction.query_portal(&portal, 0).await.unwrap();
    assert_eq!((first.len(), rest.len()), (4, 6));
    transaction.commit().await.unwrap();
    eventually(|| async {
        let executed = h.audit("statement.executed").await;
        let runs: Vec<u64> = executed
            .iter()
            .filter(|s| s["text"] == "SELECT g FROM generate_series(1, 10) g")
            .filter_map(|s| s["rows"].as_u64())
            .collect();
        runs == [4, 6]
    })
    .await;
}

#[tokio::test]
async fn sessions_reach_a_verified_tls_target_encrypted_and_so_do_cancel_requests() {
    let h = GatewayHarness::start_with(Setup { tls: DatabaseTls::VERIFIED, ..Setup::default() }).await;
    let grant = h.read_grant("30m").await;
    let (client, _) = h.connect("dana", &h.token(&grant).await).await.expect("the credential logs in");
    let ssl = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
    assert!(ssl.get::<_, bool>(0), "the database sees the gateway's session over TLS");
    let count: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    assert_eq!(count, 3);

    let cancel = client.cancel_token();
    let running = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(30)").await });
    let superuser = h.cluster().connect(DATABASE).await.unwrap();
    eventually(|| async {
        let sleeping = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(30)'";
        superuser.query_one(sleeping, &[]).await.unwrap().get::<_, i64>(0) == 1
    })
    .await;
    cancel.cancel_query(h.tls.clone()).await.expect("the cancel request is sent");
    let cancelled = tokio::time::timeout(Duration::from_secs(10), running).await.unwrap().unwrap().unwrap_err();
    assert_eq!(code(&cancelled), Some(&SqlState::QUERY_CANCELED));
}

/// Fail closed: a certificate that does not verify, or a database that does not speak TLS, turns
/// the session away with the reason.
#[tokio::test]
async fn a_target_that_fails_verification_or_refuses_tls_is_refused() {
    for (tls, expect) in [
        (DatabaseTls { server: true, catalog: r#"ca_file = "other-ca.pem""# }, "TLS with the database at 127.0.0.1:"),
        (DatabaseTls { server: false, catalog: r#"ca_file = "ca.pem""# }, "does not accept TLS"),
    ] {
        let h = GatewayHarness::start_with(Setup { tls, ..Setup::default() }).await;
        let grant = h.read_grant("30m").await;
        let error = h.connect("dana", &h.token(&grant).await).await.expect_err("refused");
        assert_eq!(code(&error), Some(&SqlState::CONNECTION_FAILURE), "{error:?}");
        assert!(message(&error).contains(expect), "{tls:?}: {}", message(&error));
        eventually(|| async { h.audit("session.refused").await.len() == 1 }).await;
    }
}

/// A TCP relay for one connection to `port` on 127.0.0.1; it hands back every byte its client
/// sent once the client is gone.
async fn recording_relay(port: u16) -> (u16, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_port = listener.local_addr().unwrap().port();
    let relaying = tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let ((mut from_client, mut to_client), (mut from_server, mut to_server)) =
            (client.into_split(), server.into_split());
        tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
        let (mut sent, mut buffer) = (Vec::new(), [0; 4096]);
        while let Ok(read @ 1..) = from_client.read(&mut buffer).await {
            sent.extend_from_slice(&buffer[..read]);
            if to_server.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
        sent
    });
    (relay_port, relaying)
}

/// PostgreSQL's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// The database behind a relay on `port`, its certificate verified against the CA in `ca`.
fn verified_at(port: u16, ca: std::path::PathBuf) -> TargetAddress {
    let tls = TargetTls::new(&TlsMode::VerifyFull { ca_file: Some(ca) }, "127.0.0.1").unwrap();
    TargetAddress { host: "127.0.0.1".into(), port, database: DATABASE.into(), tls }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// What the gateway sends a database when TLS is asked for, seen on the wire: after the
/// SSLRequest, only TLS records — and nothing at all when TLS is not agreed.
#[tokio::test]
async fn nothing_goes_to_the_target_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = airlock_testkit::managed_database_with(dir.path(), DatabaseTls::VERIFIED).await;
    let (user, password) = (cluster.superuser(), cluster.superuser_password());
    let in_plaintext = |sent: &[u8]| contains(sent, password.as_bytes()) || contains(sent, b"database");
    let tls_follows = |sent: &[u8]| sent.starts_with(&SSL_REQUEST) && sent.get(8) == Some(&0x16);

    let (port, relaying) = recording_relay(cluster.port()).await;
    let session = target::log_in(&verified_at(port, dir.path().join("ca.pem")), user, password, &[]).await;
    drop(session.expect("the right CA logs in through the relay"));
    let sent = relaying.await.unwrap();
    assert!(tls_follows(&sent) && !in_plaintext(&sent), "the startup message and the password are encrypted");

    let (port, relaying) = recording_relay(cluster.port()).await;
    let error = target::log_in(&verified_at(port, dir.path().join("other-ca.pem")), user, password, &[]).await;
    let error = error.err().expect("another CA's certificate is refused");
    assert!(matches!(error, TargetError::Tls { .. }), "{error:?}");
    assert!(error.to_string().contains("invalid peer certificate: UnknownIssuer"), "{error}");
    let sent = relaying.await.unwrap();
    assert!(tls_follows(&sent) && !in_plaintext(&sent), "after a failed handshake nothing follows in plaintext");

    let (port, relaying) = recording_relay(cluster.port()).await;
    target::cancel(&verified_at(port, dir.path().join("ca.pem")), 1, 2).await.expect("the cancel request is sent");
    let sent = relaying.await.unwrap();
    assert!(tls_follows(&sent) && !contains(&sent, &[0, 0, 0, 16, 4, 210, 22, 46]), "the cancel request is encrypted");
    drop(cluster);

    let plain_dir = tempfile::tempdir().unwrap();
    let (cluster, _) = airlock_testkit::managed_database_with(plain_dir.path(), DatabaseTls::OFF).await;
    let (port, relaying) = recording_relay(cluster.port()).await;
    let address = verified_at(port, dir.path().join("ca.pem"));
    let error = target::log_in(&address, cluster.superuser(), cluster.superuser_password(), &[]).await;
    let error = error.err().expect("a database without TLS is refused");
    assert!(matches!(error, TargetError::TlsRefused { .. }), "{error:?}");
    assert_eq!(relaying.await.unwrap(), SSL_REQUEST, "the server said no: only the request was sent");
}
