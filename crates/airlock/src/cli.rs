//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{Outcome, connect, gateway, local, remote, report, serve};

/// Just-in-time, time-bound, audited access to production.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the broker's files are.
#[derive(Debug, Clone, Args)]
pub struct Files {
    /// The configuration file.
    #[arg(long, default_value = "airlock.toml", env = "AIRLOCK_CONFIG", global = true)]
    pub config: PathBuf,
    /// The data directory (database, signing key).
    #[arg(long, default_value = "./airlock-data", env = "AIRLOCK_DATA_DIR", global = true)]
    pub data_dir: PathBuf,
}

/// How to reach the broker.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The broker's URL.
    #[arg(long, env = "AIRLOCK_URL", default_value = "http://127.0.0.1:8470")]
    pub url: String,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker: HTTP API, expiry scheduler, audit chain.
    Serve {
        #[command(flatten)]
        files: Files,
        /// Address to listen on (default: the config's `broker.listen`, else 127.0.0.1:8470).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Address the gateway listens on (default: the config's `gateway.listen`); needs a
        /// `[gateway]` section.
        #[arg(long)]
        gateway_listen: Option<SocketAddr>,
    },
    /// Run the PostgreSQL gateway alone, asking the broker at AIRLOCK_URL as the service account
    /// whose token is in AIRLOCK_TOKEN (a member of the `gateways` group).
    Gateway {
        #[command(flatten)]
        files: Files,
        /// Address to listen on (default: the config's `gateway.listen`, else 127.0.0.1:6470).
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Administer the broker's data directory directly (users).
    Admin {
        #[command(flatten)]
        files: Files,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Reports on the catalog's databases.
    Report {
        #[command(flatten)]
        files: Files,
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Check and test policies and the catalog, without a broker.
    Policy {
        /// The configuration file.
        #[arg(long, default_value = "airlock.toml", env = "AIRLOCK_CONFIG", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Show who the API token belongs to.
    Whoami {
        #[command(flatten)]
        remote: Remote,
    },
    /// Ask for a role on a resource, for a while, for a reason.
    Request {
        /// The resource, e.g. `demo-db`.
        resource: String,
        #[arg(long)]
        role: String,
        /// How long, e.g. `90s`, `15m`, `2h`.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        #[arg(long)]
        reason: String,
        /// Wait until the request is decided (exit 1 unless approved).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Approve somebody else's request.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Deny somebody else's request.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Withdraw your own pending request.
    Cancel {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List requests you can see.
    Requests {
        /// Only pending requests.
        #[arg(long)]
        pending: bool,
        /// Only your own.
        #[arg(long)]
        mine: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List grants you can see, with the time they have left.
    Grants {
        /// Only active grants.
        #[arg(long)]
        active: bool,
        /// Only your own.
        #[arg(long)]
        mine: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// End a grant now.
    Revoke {
        grant_id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a gateway connection string (with its credential) for one of your live grants.
    Credentials {
        grant_id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Run psql through the gateway under your live grant on a resource.
    Connect {
        /// The resource, e.g. `demo-db`.
        resource: String,
        /// The role, when you hold several on the resource.
        #[arg(long)]
        role: Option<String>,
        /// The psql program.
        #[arg(long, env = "AIRLOCK_PSQL", default_value = "psql")]
        psql: String,
        /// Arguments for psql, after `--`.
        #[arg(last = true)]
        psql_args: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Read and verify the audit chain.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user and print their API token, once, alone on standard output.
    Add {
        name: String,
        /// A group the user belongs to (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A service account rather than a person.
        #[arg(long)]
        service: bool,
    },
    /// Disable a user, ending all their pending requests and live grants at once.
    Disable { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Database privileges no live grant explains: superusers, permanent members of the mapped
    /// roles, per-grant roles whose grant ended (exit 1 when there are any).
    Standing {
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse and validate the catalog and policies against the Airlock schema.
    Check,
    /// Run policy test cases (default: the config's `policy.tests` directory).
    Test { dir: Option<PathBuf> },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the whole hash chain; exit 0 only if it is intact, else name the first bad record.
    Verify {
        #[command(flatten)]
        remote: Remote,
    },
    /// Show the last records.
    Tail {
        #[arg(short = 'n', default_value_t = 20)]
        n: u32,
        #[command(flatten)]
        remote: Remote,
    },
}

pub async fn run(cli: Cli) -> Outcome {
    match cli.command {
        Command::Serve { files, listen, gateway_listen } => serve::run(&files, listen, gateway_listen).await,
        Command::Gateway { files, listen, remote } => gateway::run(&files, listen, &remote).await,
        Command::Report { files, command: ReportCommand::Standing { json } } => {
            report::standing_privileges(&files, json).await
        }
        Command::Admin { files, command } => local::admin(&files, command).await,
        Command::Policy { config, command } => local::policy(&config, command),
        Command::Whoami { remote } => remote::whoami(&remote).await,
        Command::Request { resource, role, duration, reason, wait, remote } => {
            remote::request(&remote, resource, role, duration, reason, wait).await
        }
        Command::Approve { id, comment, remote } => remote::approve(&remote, &id, comment).await,
        Command::Deny { id, reason, remote } => remote::deny(&remote, &id, reason).await,
        Command::Cancel { id, remote } => remote::cancel(&remote, &id).await,
        Command::Requests { pending, mine, remote } => remote::requests(&remote, pending, mine).await,
        Command::Grants { active, mine, remote } => remote::grants(&remote, active, mine).await,
        Command::Revoke { grant_id, reason, remote } => remote::revoke(&remote, &grant_id, reason).await,
        Command::Credentials { grant_id, remote } => connect::credentials(&remote, &grant_id).await,
        Command::Connect { resource, role, psql, psql_args, remote } => {
            connect::connect(&remote, &resource, role.as_deref(), &psql, &psql_args).await
        }
        Command::Audit { command: AuditCommand::Verify { remote } } => remote::audit_verify(&remote).await,
        Command::Audit { command: AuditCommand::Tail { n, remote } } => remote::audit_tail(&remote, n).await,
    }
}
