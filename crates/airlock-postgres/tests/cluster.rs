//! Integration tests of [`LocalCluster`] against the installed PostgreSQL binaries.

use airlock_postgres::cluster::{ClusterError, LocalCluster};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// Connects to the `postgres` database of `cluster` as `user`, driving the connection on a task.
async fn connect_as(cluster: &LocalCluster, user: &str, password: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host(cluster.host())
        .port(cluster.port())
        .user(user)
        .password(password)
        .dbname("postgres")
        .connect(NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn select_one(client: &Client) -> i32 {
    client.query_one("SELECT 1", &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn runs_queries_and_checks_role_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path()).await.unwrap();
    assert_eq!(cluster.host(), "127.0.0.1");
    assert_eq!(cluster.superuser(), "postgres");
    assert!(cluster.log_path().is_file());

    let client = cluster.connect("postgres").await.unwrap();
    assert_eq!(select_one(&client).await, 1);
    let version: String = client.query_one("SHOW server_version", &[]).await.unwrap().get(0);
    assert!(version.split('.').next().unwrap().parse::<u32>().unwrap() >= 10, "{version}");

    client.batch_execute("CREATE ROLE alice LOGIN PASSWORD 'right-password'").await.unwrap();
    let alice = connect_as(&cluster, "alice", "right-password").await.unwrap();
    assert_eq!(select_one(&alice).await, 1);
    let refused = connect_as(&cluster, "alice", "wrong-password").await.expect_err("a wrong password must be refused");
    assert_eq!(refused.code(), Some(&SqlState::INVALID_PASSWORD), "{refused}");
    let refused =
        connect_as(&cluster, "postgres", "wrong-password").await.expect_err("a wrong password must be refused");
    assert_eq!(refused.code(), Some(&SqlState::INVALID_PASSWORD), "{refused}");

    cluster.stop().await.unwrap();
}

#[tokio::test]
async fn two_clusters_run_at_once_and_stop_frees_the_port() {
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Too long for a unix socket address under it, so the cluster puts its socket under /tmp.
    let long_dir = second_dir.path().join("a-directory-name-long-enough-to-push-the-socket-path-past-its-limit");
    let (first, second) = tokio::join!(LocalCluster::start(first_dir.path()), LocalCluster::start(&long_dir));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_ne!(first.port(), second.port());
    assert_ne!(first.superuser_password(), second.superuser_password());

    let first_client = first.connect("postgres").await.unwrap();
    let second_client = second.connect("postgres").await.unwrap();
    assert_eq!(select_one(&first_client).await, 1);
    assert_eq!(select_one(&second_client).await, 1);

    let port = first.port();
    first.stop().await.unwrap();
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "port {port} still accepts");
    assert_eq!(select_one(&second_client).await, 1);
}

#[tokio::test]
async fn a_failed_start_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path()).await.unwrap();
    let error = LocalCluster::start(dir.path()).await.expect_err("the data directory is taken");
    let message = error.to_string();
    assert!(matches!(error, ClusterError::Command { what: "initdb", .. }), "{message}");
    assert!(message.contains("is not empty"), "{message}");
    assert_eq!(select_one(&cluster.connect("postgres").await.unwrap()).await, 1);
}

#[tokio::test]
async fn with_tls_the_server_turns_ssl_on_and_keeps_its_key_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = airlock_testkit::TestCa::new("airlock test CA");
    let cluster = LocalCluster::start_with_tls(dir.path(), &ca.server_certificate()).await.unwrap();
    let client = cluster.connect("postgres").await.unwrap();
    let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(ssl, "on");
    let key = std::fs::metadata(dir.path().join("data/server.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
}
