//! A throwaway local PostgreSQL cluster started from the installed binaries.
//!
//! [`LocalCluster::start`] runs `initdb` into `<dir>/data` with a random superuser password and
//! `scram-sha-256` authentication for every connection (so role passwords are really checked), then
//! `pg_ctl start` on a free port of 127.0.0.1. Tests and the demo database of `airlock serve` use it.
//! [`LocalCluster::start_with_tls`] also turns `ssl` on, with a given certificate and key.
//! The cluster stops in [`LocalCluster::stop`] or, failing that, when it is dropped, so a panicking
//! test leaves no server behind.
//!
//! PostgreSQL refuses to run as root: when we are root, `initdb` and `pg_ctl` run as the `postgres`
//! system user through `runuser`, and the files they need are handed over to that user first.
//!
//! The superuser password never appears in logs, errors or `Debug` output.

use std::fmt;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};

use thiserror::Error;
use tokio::fs;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

const HOST: &str = "127.0.0.1";
const SUPERUSER: &str = "postgres";
/// The system user the server runs as when we are root.
const SYSTEM_USER: &str = "postgres";
/// Where Debian installs each PostgreSQL version, as `<version>/bin`.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// How many ports `start` tries when the one it picked is taken meanwhile.
const START_ATTEMPTS: u32 = 3;
/// How many lines of a log or of a command's output an error quotes.
const TAIL_LINES: usize = 20;
/// The longest socket directory whose `<dir>/.s.PGSQL.<port>` fits in a unix socket address.
const MAX_SOCKET_DIR_LEN: usize = 107 - "/.s.PGSQL.65535".len();

/// Why a local cluster could not start, stop or be reached.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("no PostgreSQL binaries: `initdb` and `pg_ctl` are neither in {DEBIAN_ROOT}/<version>/bin nor on PATH")]
    NoBinaries,
    #[error("running as root, but there is no `{SYSTEM_USER}` system user to run PostgreSQL as")]
    NoPostgresUser,
    #[error("{what} failed ({status}):\n{output}")]
    Command { what: &'static str, status: ExitStatus, output: String },
    #[error("could not {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} on the local cluster: {message}")]
    Sql { what: String, message: String },
    #[error("could not connect to database `{database}` of the local cluster")]
    Connect {
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A certificate (chain) and its private key, in PEM, that a cluster presents to TLS clients.
pub struct ServerCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A running PostgreSQL cluster on 127.0.0.1, stopped when dropped.
pub struct LocalCluster {
    pg_ctl: PathBuf,
    run_as: RunAs,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// A socket directory under /tmp that we created because the one under `dir` was unfit.
    temp_socket_dir: Option<PathBuf>,
    port: u16,
    password: String,
    running: bool,
}

impl LocalCluster {
    /// Creates a cluster in `<dir>/data`, logging to `<dir>/server.log`, and starts it.
    pub async fn start(dir: &Path) -> Result<LocalCluster, ClusterError> {
        Self::start_with(dir, None, None).await
    }

    /// Like [`LocalCluster::start`], with `ssl = on`: the server presents `certificate`, written
    /// into the data directory (`server.crt`, and `server.key` with mode 0600). Clients may still
    /// connect without TLS.
    pub async fn start_with_tls(dir: &Path, certificate: &ServerCertificate) -> Result<LocalCluster, ClusterError> {
        Self::start_with(dir, Some(certificate), None).await
    }

    /// Like [`LocalCluster::start_with_tls`], and grant roles (members of
    /// [`crate::grant_ca::GATEWAY_LOGIN_ROLE`]) log in only with a client certificate from the
    /// grant CA whose certificate is `grant_ca_pem` ([`crate::grant_ca::HBA_LINES`]).
    pub async fn start_with_grant_logins(
        dir: &Path,
        certificate: &ServerCertificate,
        grant_ca_pem: &str,
    ) -> Result<LocalCluster, ClusterError> {
        Self::start_with(dir, Some(certificate), Some(grant_ca_pem)).await
    }

    async fn start_with(
        dir: &Path,
        certificate: Option<&ServerCertificate>,
        grant_ca_pem: Option<&str>,
    ) -> Result<LocalCluster, ClusterError> {
        let binaries = Binaries::find()?;
        let run_as = RunAs::detect().await?;
        fs::create_dir_all(dir).await.map_err(io_error(format!("create {}", dir.display())))?;
        let dir = fs::canonicalize(dir).await.map_err(io_error(format!("resolve {}", dir.display())))?;
        let data_dir = dir.join("data");
        let log_path = dir.join("server.log");
        fs::create_dir_all(&data_dir).await.map_err(io_error(format!("create {}", data_dir.display())))?;
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path).await;
        log.map_err(io_error(format!("create {}", log_path.display())))?;
        if run_as == RunAs::PostgresUser {
            // The server's files are under `dir`, which the `postgres` user must be able to traverse.
            let mode = fs::metadata(&dir).await.map_err(io_error(format!("stat {}", dir.display())))?.permissions();
            fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode.mode() | 0o001))
                .await
                .map_err(io_error(format!("make {} traversable", dir.display())))?;
        }
        let (socket_dir, temp_socket_dir) = socket_dir(&dir).await?;
        // From here on, dropping `cluster` removes a socket directory made under /tmp.
        let mut cluster = LocalCluster {
            pg_ctl: binaries.pg_ctl,
            run_as,
            data_dir,
            log_path,
            temp_socket_dir,
            port: 0,
            password: format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
            running: false,
        };
        run_as.hand_over(&[&cluster.data_dir, &cluster.log_path, &socket_dir]).await?;
        init(&binaries.initdb, run_as, &dir, &cluster.data_dir, &cluster.password).await?;
        // A throwaway cluster need not survive a crash of the machine. Set in the file rather than
        // on the command line, so that a superuser can turn it on with ALTER SYSTEM and a reload
        // (the gateway's bench does, for its durable workload).
        append_setting(&cluster.data_dir, "fsync = off").await?;
        if let Some(certificate) = certificate {
            enable_tls(run_as, &cluster.data_dir, certificate).await?;
        }
        if let Some(pem) = grant_ca_pem {
            admit_grant_roles_by_certificate(run_as, &cluster.data_dir, pem).await?;
        }
        cluster.port = cluster.start_server(&socket_dir).await?;
        cluster.running = true;
        tracing::debug!(port = cluster.port, log = %cluster.log_path.display(), "local PostgreSQL cluster started");
        Ok(cluster)
    }

    /// The TCP port the server listens on, on [`LocalCluster::host`].
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        HOST
    }

    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// The server's log, which errors quote the tail of.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Connects to `database` as the superuser over TCP, driving the connection on a spawned task.
    pub async fn connect(&self, database: &str) -> Result<Client, ClusterError> {
        let (client, connection) = tokio_postgres::Config::new()
            .host(HOST)
            .port(self.port)
            .user(SUPERUSER)
            .password(&self.password)
            .dbname(database)
            .connect(NoTls)
            .await
            .map_err(|source| ClusterError::Connect { database: database.to_owned(), source })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection to the local cluster ended with an error");
            }
        });
        Ok(client)
    }

    /// Stops a server still running from an earlier cluster in `dir` (one whose owner was
    /// killed before it could stop it), so `dir` can be reused. Nothing to stop is not an error.
    pub async fn stop_leftover(dir: &Path) -> Result<(), ClusterError> {
        let data_dir = dir.join("data");
        if !data_dir.join("postmaster.pid").exists() {
            return Ok(());
        }
        let (binaries, run_as) = (Binaries::find()?, RunAs::detect().await?);
        let command = stop_command(run_as, &binaries.pg_ctl, &data_dir);
        let output = command_output("pg_ctl stop", command).await?;
        // pg_ctl says "no server running" (exit 3) when the pid file is stale: that is fine too.
        match output.status.code() {
            Some(0 | 3) => Ok(()),
            _ => Err(command_failed("pg_ctl stop", &output, "")),
        }
    }

    /// Stops the server at once (`pg_ctl -m immediate`), waiting until it is gone.
    pub async fn stop(mut self) -> Result<(), ClusterError> {
        run("pg_ctl stop", self.stop_command()).await?;
        self.running = false;
        Ok(())
    }

    /// Runs `pg_ctl start` on a free port, trying another one when the port was taken meanwhile.
    async fn start_server(&self, socket_dir: &Path) -> Result<u16, ClusterError> {
        let mut attempt = 1;
        loop {
            let port = free_port()?;
            let log_start = std::fs::metadata(&self.log_path).map_or(0, |meta| meta.len());
            let mut command = self.run_as.command(&self.pg_ctl);
            // pg_ctl hands `-o` to a shell; `socket_dir` holds no character a shell would interpret.
            command
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_path)
                .args(["-w", "-o"])
                .arg(format!("-p {port} -k {} -c listen_addresses={HOST}", socket_dir.display()))
                .arg("start");
            let output = command_output("pg_ctl start", command).await?;
            if output.status.success() {
                return Ok(port);
            }
            let log = read_from(&self.log_path, log_start);
            if attempt == START_ATTEMPTS || !log.contains("Address already in use") {
                return Err(command_failed("pg_ctl start", &output, &log));
            }
            tracing::debug!(port, attempt, "port of the local cluster was taken, trying another");
            attempt += 1;
        }
    }

    fn stop_command(&self) -> std::process::Command {
        stop_command(self.run_as, &self.pg_ctl, &self.data_dir)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.running {
            match self.stop_command().output() {
                Ok(output) if output.status.success() => {}
                Ok(output) => tracing::warn!(status = %output.status, "could not stop the local cluster on drop"),
                Err(error) => tracing::warn!(%error, "could not run pg_ctl to stop the local cluster on drop"),
            }
        }
        if let Some(dir) = &self.temp_socket_dir
            && let Err(error) = std::fs::remove_dir_all(dir)
        {
            tracing::debug!(%error, dir = %dir.display(), "could not remove the socket directory");
        }
    }
}

impl fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCluster")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL program (`pgbench`, `psql`…): from the newest Debian installation, else on PATH.
pub fn program(name: &str) -> Option<PathBuf> {
    let installed = std::fs::read_dir(DEBIAN_ROOT).ok().into_iter().flatten().filter_map(Result::ok);
    let newest = installed
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let path = entry.path().join("bin").join(name);
            path.is_file().then_some((version, path))
        })
        .max()
        .map(|(_, path)| path);
    newest.or_else(|| std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file()))
}

/// The `initdb` and `pg_ctl` executables of one PostgreSQL installation.
struct Binaries {
    initdb: PathBuf,
    pg_ctl: PathBuf,
}

impl Binaries {
    /// The newest Debian installation, else the first directory on PATH that has both.
    fn find() -> Result<Self, ClusterError> {
        Self::newest_debian()
            .or_else(|| std::env::split_paths(&std::env::var_os("PATH")?).find_map(|dir| Self::in_dir(&dir)))
            .ok_or(ClusterError::NoBinaries)
    }

    fn newest_debian() -> Option<Self> {
        std::fs::read_dir(DEBIAN_ROOT)
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let version: Vec<u32> =
                    entry.file_name().to_str()?.split('.').map(|part| part.parse().ok()).collect::<Option<_>>()?;
                Some((version, Self::in_dir(&entry.path().join("bin"))?))
            })
            .max_by(|(a, _), (b, _)| a.cmp(b))
            .map(|(_, binaries)| binaries)
    }

    fn in_dir(dir: &Path) -> Option<Self> {
        let (initdb, pg_ctl) = (dir.join("initdb"), dir.join("pg_ctl"));
        (initdb.is_file() && pg_ctl.is_file()).then_some(Binaries { initdb, pg_ctl })
    }
}

/// Who runs `initdb` and `pg_ctl`: we, or the `postgres` system user when we are root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunAs {
    Myself,
    PostgresUser,
}

impl RunAs {
    async fn detect() -> Result<Self, ClusterError> {
        if effective_uid()? != 0 {
            return Ok(RunAs::Myself);
        }
        let mut id = std::process::Command::new("id");
        id.args(["-u", SYSTEM_USER]);
        match command_output("id", id).await?.status.success() {
            true => Ok(RunAs::PostgresUser),
            false => Err(ClusterError::NoPostgresUser),
        }
    }

    /// A command running `program`, from `/` so that it never depends on our working directory.
    fn command(self, program: &Path) -> std::process::Command {
        let mut command = match self {
            RunAs::Myself => std::process::Command::new(program),
            RunAs::PostgresUser => {
                let mut command = std::process::Command::new("runuser");
                command.args(["-u", SYSTEM_USER, "--"]).arg(program);
                command
            }
        };
        command.current_dir("/");
        command
    }

    /// Gives `paths` to the user the server runs as.
    async fn hand_over(self, paths: &[&Path]) -> Result<(), ClusterError> {
        if self == RunAs::Myself {
            return Ok(());
        }
        let mut chown = std::process::Command::new("chown");
        chown.args(["-R", &format!("{SYSTEM_USER}:")]).args(paths);
        run("chown", chown).await
    }
}

/// Runs `initdb` with the superuser password in a file that only exists meanwhile.
fn stop_command(run_as: RunAs, pg_ctl: &Path, data_dir: &Path) -> std::process::Command {
    let mut command = run_as.command(pg_ctl);
    command.arg("-D").arg(data_dir).args(["-m", "immediate", "-w", "stop"]);
    command
}

async fn init(initdb: &Path, run_as: RunAs, dir: &Path, data_dir: &Path, password: &str) -> Result<(), ClusterError> {
    let pwfile = dir.join("superuser-password");
    write_new(&pwfile, password, 0o600).await?;

    let result = async {
        run_as.hand_over(&[&pwfile]).await?;
        let mut command = run_as.command(initdb);
        command
            .arg("-D")
            .arg(data_dir)
            .args(["-U", SUPERUSER, "-A", "scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--no-sync", "--no-instructions"]);
        run("initdb", command).await
    }
    .await;
    let removed = fs::remove_file(&pwfile).await.map_err(io_error(format!("remove {}", pwfile.display())));
    result.and(removed)
}

/// Writes the server's certificate and key where PostgreSQL looks for them by default (the data
/// directory, which `initdb` needs empty before), gives them to the server's user, and turns
/// `ssl` on. PostgreSQL refuses a key that others may read.
async fn enable_tls(run_as: RunAs, data_dir: &Path, certificate: &ServerCertificate) -> Result<(), ClusterError> {
    let (cert, key) = (data_dir.join("server.crt"), data_dir.join("server.key"));
    write_new(&cert, &certificate.cert_pem, 0o644).await?;
    write_new(&key, &certificate.key_pem, 0o600).await?;
    run_as.hand_over(&[&cert, &key]).await?;
    append_setting(data_dir, "ssl = on").await
}

/// Trusts the grant CA for client certificates and puts [`crate::grant_ca::HBA_LINES`] before
/// `initdb`'s own lines in `pg_hba.conf` (the first matching line decides).
async fn admit_grant_roles_by_certificate(run_as: RunAs, data_dir: &Path, pem: &str) -> Result<(), ClusterError> {
    let ca = data_dir.join("grant-ca.pem");
    write_new(&ca, pem, 0o644).await?;
    run_as.hand_over(&[&ca]).await?;
    append_setting(data_dir, "ssl_ca_file = 'grant-ca.pem'").await?;
    let hba = data_dir.join("pg_hba.conf");
    let existing = fs::read_to_string(&hba).await.map_err(io_error(format!("read {}", hba.display())))?;
    let rewritten = format!("{}\n{existing}", crate::grant_ca::HBA_LINES);
    fs::write(&hba, rewritten).await.map_err(io_error(format!("write {}", hba.display())))
}

/// Appends `setting` to the cluster's `postgresql.conf`.
async fn append_setting(data_dir: &Path, setting: &str) -> Result<(), ClusterError> {
    let conf = data_dir.join("postgresql.conf");
    let appended = async {
        let mut file = fs::OpenOptions::new().append(true).open(&conf).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, format!("\n{setting}\n").as_bytes()).await
    };
    appended.await.map_err(io_error(format!("write `{setting}` in {}", conf.display())))
}

/// Creates the file `path` (it must not exist) with `mode`, holding `contents`.
async fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), ClusterError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true).mode(mode);
    let written = async {
        let mut file = options.open(path).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, contents.as_bytes()).await
    };
    written.await.map_err(io_error(format!("write {}", path.display())))
}

/// The socket directory, and whether it is a fresh one under /tmp that the cluster must remove.
///
/// `<dir>/socket` is used when its path is short enough for a socket address and holds only
/// characters that a shell takes literally (pg_ctl passes it through one).
async fn socket_dir(dir: &Path) -> Result<(PathBuf, Option<PathBuf>), ClusterError> {
    let under_dir = dir.join("socket");
    let fit = under_dir.to_str().is_some_and(|path| {
        path.len() <= MAX_SOCKET_DIR_LEN && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    });
    if fit {
        fs::create_dir_all(&under_dir).await.map_err(io_error(format!("create {}", under_dir.display())))?;
        return Ok((under_dir, None));
    }
    let temp = PathBuf::from(format!("/tmp/airlock-pg-{}", Uuid::new_v4().simple()));
    fs::create_dir(&temp).await.map_err(io_error(format!("create {}", temp.display())))?;
    Ok((temp.clone(), Some(temp)))
}

/// A port that was free a moment ago.
fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((HOST, 0)).map_err(io_error("find a free port"))?;
    let address = listener.local_addr().map_err(io_error("find a free port"))?;
    Ok(address.port())
}

fn effective_uid() -> Result<u32, ClusterError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(io_error("read /proc/self/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| ClusterError::Io {
            what: "find the effective uid in /proc/self/status".to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, "no `Uid:` line"),
        })
}

/// Runs `command` to completion, failing if it cannot be run or exits unsuccessfully.
async fn run(what: &'static str, command: std::process::Command) -> Result<(), ClusterError> {
    let output = command_output(what, command).await?;
    match output.status.success() {
        true => Ok(()),
        false => Err(command_failed(what, &output, "")),
    }
}

/// Runs `command` to completion, failing only if it cannot be run.
async fn command_output(what: &'static str, command: std::process::Command) -> Result<Output, ClusterError> {
    tokio::process::Command::from(command).output().await.map_err(io_error(format!("run {what}")))
}

/// The error for a command that ran and failed, quoting its output and then `log`.
fn command_failed(what: &'static str, output: &Output, log: &str) -> ClusterError {
    let text = format!("{}{}{log}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    ClusterError::Command { what, status: output.status, output: tail(&text) }
}

/// What was appended to the file at `path` after its first `start` bytes, empty if unreadable.
fn read_from(path: &Path, start: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(start).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}
