//! Record before answer, from outside: `airlock serve` killed with SIGKILL while a client sends
//! statements through its gateway as fast as they are answered. After the restart, every
//! statement the client saw answered has its record in the audit chain (`statement.started`,
//! committed before the statement went to the database), the session the kill cut short has its
//! end recorded as a crash, and the chain verifies.
//! CI runs a few rounds; `AIRLOCK_CRASH_ROUNDS=20` runs the twenty.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_core::catalog::TlsMode;
use airlock_postgres::tls::TargetTls;
use common::*;

/// Sends `SELECT 'round-R-N'` for N = 1, 2, … until the connection fails, keeping each N answered.
async fn send_until_cut(conninfo: String, round: u32, answered: Arc<Mutex<Vec<u32>>>) {
    let tls = TargetTls::new(&TlsMode::Require, "127.0.0.1").unwrap().unwrap().postgres();
    let (client, connection) = conninfo.parse::<tokio_postgres::Config>().unwrap().connect(tls).await.unwrap();
    tokio::spawn(connection);
    for n in 1.. {
        if client.simple_query(&format!("SELECT 'round-{round}-{n}'")).await.is_err() {
            return;
        }
        answered.lock().unwrap().push(n);
    }
}

async fn audit(app: &TestApp) -> sqlx::SqlitePool {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let options = SqliteConnectOptions::new().filename(app.data_dir.join("airlock.db")).read_only(true);
    SqlitePoolOptions::new().max_connections(1).connect_with(options).await.unwrap()
}

/// Sessions started without a recorded end, and sessions ended by a crash.
async fn session_ends(app: &TestApp) -> (i64, i64) {
    let pool = audit(app).await;
    let unended = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events s WHERE s.kind = 'session.started' AND NOT EXISTS (
             SELECT 1 FROM audit_events e WHERE e.kind = 'session.ended'
             AND json_extract(e.details, '$.session') = json_extract(s.details, '$.session'))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let crashed = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE kind = 'session.ended' AND json_extract(details, '$.reason') = 'crash'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    (unended, crashed)
}

/// The texts of every statement record in the data directory's audit chain.
async fn recorded_texts(app: &TestApp) -> Vec<String> {
    let pool = audit(app).await;
    let texts: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT json_extract(details, '$.text') FROM audit_events
         WHERE kind IN ('statement.started', 'statement.executed')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    texts.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answered_statement_is_lost_when_serve_is_killed() {
    let rounds: u32 = std::env::var("AIRLOCK_CRASH_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(3);
    let mut app = spawn_app();
    let (mut answered_total, mut lost) = (0, Vec::new());
    for round in 1..=rounds {
        let request = app.request("dana", "read", "20m");
        let grant_id = str_of(&request["grant"], "id").to_owned();
        let credentials = app.airlock("dana", &["credentials", &grant_id]);
        assert_exit(&credentials, 0);
        let port = app.gateway_port.expect("serve says where its gateway listens");
        let conninfo = stdout(&credentials).trim().replace("port=6470", &format!("port={port}"));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let sending = tokio::spawn(send_until_cut(conninfo, round, answered.clone()));
        // Kill it mid-traffic: once statements flow, after a little more.
        let started = std::time::Instant::now();
        while answered.lock().unwrap().len() < 20 && started.elapsed() < PATIENCE {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(150 + 50 * u64::from(round % 4))).await;
        app.kill();
        sending.await.unwrap();
        app.start();

        let answered = answered.lock().unwrap().clone();
        assert!(answered.len() >= 20, "round {round}: statements flowed before the kill");
        let recorded = recorded_texts(&app).await;
        for n in &answered {
            let text = format!("SELECT 'round-{round}-{n}'");
            if !recorded.contains(&text) {
                lost.push(text);
            }
        }
        answered_total += answered.len();
        // The session the kill cut short gets its end at the restart, as a crash.
        let deadline = std::time::Instant::now() + PATIENCE;
        while session_ends(&app).await != (0, i64::from(round)) {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: {:?} (unended, crashed)",
                session_ends(&app).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(lost.is_empty(), "{} of {answered_total} answered statements have no record: {lost:?}", lost.len());
    let verify = app.airlock("bob", &["audit", "verify"]);
    assert_exit(&verify, 0);
    eprintln!("{rounds} rounds: {answered_total} answered statements, every one recorded");
}
