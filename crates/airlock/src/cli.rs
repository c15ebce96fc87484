//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use airlock_http::api::{BreakGlassBody, CreateRequest};
use clap::{Args, Parser, Subcommand};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

use crate::{
    Outcome, audit, breakglass, connect, device, gateway, identity, incident, local, login, remote, report, serve,
};

/// A time on the command line: RFC 3339 (`2026-11-01T09:00:00Z`), or a date (midnight UTC).
fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    time::Date::parse(text, format_description!("[year]-[month]-[day]"))
        .map(|date| date.midnight().assume_utc())
        .map_err(|_| format!("`{text}` is neither an RFC 3339 time (2026-11-01T09:00:00Z) nor a date (2026-11-01)"))
}

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
    /// Reports for auditors: with no subcommand, the summary of a window (by default the last
    /// 30 days): access by resource, user and duration, time to approve and to revoke, how
    /// requests were decided, deviations and standing privileges.
    #[command(args_conflicts_with_subcommands = true)]
    Report {
        #[command(subcommand)]
        command: Option<ReportCommand>,
        #[command(flatten)]
        window: ReportWindow,
        #[command(flatten)]
        remote: Remote,
    },
    /// Check and test policies and the catalog, without a broker.
    Policy {
        /// The configuration file.
        #[arg(long, default_value = "airlock.toml", env = "AIRLOCK_CONFIG", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// This machine as a trusted device: enroll its key, list your devices, disable one.
    /// Calls from an approved device carry its proof (`context.device.trusted` in policies),
    /// and credentials for resources bound to devices work only with its key.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Your TOTP second factor: enroll an authenticator app, confirm it, prove a code.
    Mfa {
        #[command(subcommand)]
        command: MfaCommand,
    },
    /// Sign in through the identity provider (single sign-on): prints a code to enter on its
    /// page (the device flow), or with `--browser` signs in in a browser on this machine. The
    /// login is kept in $AIRLOCK_LOGIN_FILE (default ~/.config/airlock/login.json, mode 0600) and
    /// used by the other commands when AIRLOCK_TOKEN is not set.
    Login {
        /// Sign in in a browser on this machine, which hands the login back to a listener on
        /// 127.0.0.1.
        #[arg(long)]
        browser: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// End the login `airlock login` began, and forget it.
    Logout {
        #[command(flatten)]
        remote: Remote,
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
        /// Wait until the request is decided and, once approved, until the grant is usable (its
        /// database role created; up to 60 s). Exit 1 unless approved and usable.
        #[arg(long)]
        wait: bool,
        /// An open incident the access is for: policies see it, a playbook may approve it at
        /// once, and the grant ends when the incident closes.
        #[arg(long, value_name = "ID")]
        incident: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Approve somebody else's request.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        /// A code from your authenticator app, proved first (approving on a sensitive resource
        /// needs a fresh second factor).
        #[arg(long, value_name = "CODE")]
        otp: Option<String>,
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
    /// Emergency access: granted at once where a `break_glass` policy allows it, cut to the
    /// role's break-glass ceiling, and reviewed afterwards by somebody else.
    Breakglass {
        /// The resource, e.g. `demo-db`.
        resource: String,
        #[arg(long)]
        role: String,
        /// Why: the incident, what is broken. Shown to the reviewer and kept in the audit chain.
        #[arg(long)]
        reason: String,
        /// How long, e.g. `30m` (default and most: the role's break_glass_max).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// An open incident the emergency is part of: the grant ends when the incident closes.
        #[arg(long, value_name = "ID")]
        incident: Option<String>,
        /// A code from your authenticator app, proved first (break-glass needs a fresh second
        /// factor).
        #[arg(long, value_name = "CODE")]
        otp: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Incidents: opened and closed by incident managers; while one is open, playbooks approve
    /// access for its responders at once, and closing it ends all access given for it.
    Incident {
        #[command(subcommand)]
        command: IncidentCommand,
    },
    /// Answer the review a break-glass grant owes (ID: the grant's id).
    Review {
        grant_id: String,
        /// The access was justified.
        #[arg(long, conflicts_with = "reject", required_unless_present = "reject")]
        accept: bool,
        /// The access was not justified: ends the grant if it is still live.
        #[arg(long)]
        reject: bool,
        /// What you checked.
        #[arg(long)]
        comment: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List break-glass reviews you can see.
    Reviews {
        /// Only reviews still open.
        #[arg(long)]
        open: bool,
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
    /// Manage API tokens: more than one per user, with scopes and expiry; rotate and revoke.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Approve, disable and list users' devices.
    Device {
        #[command(subcommand)]
        command: AdminDeviceCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminDeviceCommand {
    /// Trust an enrolled device: calls proved by its key are trusted from now on.
    Approve { id: String },
    /// Disable a device for good, ending at once the pending requests made from it and the
    /// grants asked for from it or whose credentials are bound to it.
    Disable {
        id: String,
        /// Why, for the audit.
        #[arg(long, default_value = "disabled by an administrator")]
        reason: String,
    },
    /// Every device, or one user's.
    List {
        #[arg(long)]
        user: Option<String>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Make this machine's device key ($AIRLOCK_DEVICE_KEY, default ~/.config/airlock/device.key,
    /// mode 0600) and register it; an administrator then approves it.
    Enroll {
        /// What to call it (default: the host name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Your devices (with --all, everybody's: auditors only).
    List {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Disable one of your devices (a lost laptop): what it asked for or is bound to ends now.
    Disable {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make another API token for a user and print it, once, alone on standard output.
    Create {
        user: String,
        /// What the token may be used for (repeatable): read, request, review, incidents,
        /// audit, gateway. Default: everything.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// How long it works, e.g. `90d` (default: until revoked).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// Replace a token with a new one (same user, scopes and lifetime): the old one stops
    /// working at once. TOKEN is its id, or the name of a user holding exactly one.
    Rotate { token: String },
    /// End a token now. TOKEN is its id, or the name of a user holding exactly one.
    Revoke { token: String },
    /// A user's tokens, ended ones included.
    List {
        user: String,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MfaCommand {
    /// Start enrolling an authenticator app: prints a QR code and its otpauth:// URI, once.
    Enroll {
        #[command(flatten)]
        remote: Remote,
    },
    /// Finish enrolling with the first code the app shows (it also counts as a step-up).
    Confirm {
        code: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Prove a code for your token: for a while (`[mfa] fresh_for`), what needs a fresh second
    /// factor is allowed, and policies see `context.mfa`.
    Verify {
        code: String,
        #[command(flatten)]
        remote: Remote,
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
    /// Disable a user, ending all their pending requests, live grants, tokens and logins at once.
    Disable { name: String },
    /// Remove a user's authenticator (a lost phone): they enroll again with `airlock mfa enroll`.
    ResetMfa { name: String },
    /// Lift the bar a rejected break-glass review put on a user.
    AllowBreakglass { name: String },
}

/// The time window of a report, and its format.
#[derive(Debug, Clone, Args)]
pub struct ReportWindow {
    /// From this time (RFC 3339, or a date: 2026-11-01); default 30 days before `--until`.
    #[arg(long, value_parser = parse_time)]
    pub since: Option<OffsetDateTime>,
    /// Up to this time (RFC 3339, or a date); default now.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<OffsetDateTime>,
    /// Print CSV: the summary as `section,subject,measure,value` rows, a story as a timeline.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
}

/// Whose story, over which window.
#[derive(Debug, Clone, Args)]
pub struct StoryArgs {
    pub name: String,
    #[command(flatten)]
    pub window: ReportWindow,
    /// List at most this many statements per grant (the counts are always whole).
    #[arg(long, default_value_t = 100)]
    pub statements: u32,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// Open an incident (incident managers). Opening it again the same way changes nothing.
    Open {
        /// The incident's own id, e.g. `INC-1234`.
        id: String,
        /// 0 to 5, lower is more severe.
        #[arg(long)]
        severity: u8,
        #[arg(long)]
        title: String,
        /// A user asked to respond (repeat for several).
        #[arg(long = "responder", value_name = "USER")]
        responders: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Close an incident (incident managers): every grant made for it is revoked and every
    /// request made for it still waiting is withdrawn, at once.
    Close {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List incidents, newest first.
    List {
        /// Only incidents still open.
        #[arg(long)]
        open: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one incident.
    Show {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Which incident's post-mortem.
#[derive(Debug, Clone, Args)]
pub struct IncidentReportArgs {
    pub id: String,
    /// List at most this many statements per grant (the counts are always whole).
    #[arg(long, default_value_t = 100)]
    pub statements: u32,
    /// Print CSV: a timeline with one row per event.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Everything a user asked for, was given and did: each request with its reasons and
    /// approvals, each grant with its sessions and statements, and the reviews they gave.
    User(StoryArgs),
    /// Everything done on a resource: each request, grant, session and statement.
    Resource(StoryArgs),
    /// An incident's post-mortem (auditors and incident managers): who got what for it, when,
    /// why, approved how, and what they did; refusals; break-glass reviews.
    Incident(IncidentReportArgs),
    /// Database privileges no live grant explains: privileged roles, permanent members of the
    /// mapped roles and of the server access roles, what ended grants left, SECURITY DEFINER
    /// functions that lend a privileged owner's power, PUBLIC privileges, large objects (exit 1
    /// when there are any).
    Standing {
        #[command(flatten)]
        files: Files,
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
    /// Check the hash chain and its signed checkpoints: the broker's (default), or an export
    /// file offline with `--file`. Exit 0 only if intact; else each problem names its record.
    Verify {
        /// An export file to check offline, without a broker.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The broker's public key (hex, or a file holding it; see `airlock audit key`).
        #[arg(long, requires = "file")]
        public_key: Option<String>,
        /// Checkpoints a sink kept elsewhere (`[audit] checkpoint_file`), to check against.
        #[arg(long, requires = "file")]
        checkpoints: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Write the records (with their checkpoints and a signed seal) as JSON Lines.
    Export {
        /// From the first record made at or after this time (RFC 3339, or a date: 2026-11-01).
        #[arg(long, value_parser = parse_time)]
        since: Option<OffsetDateTime>,
        /// Up to the last record made before this time (RFC 3339, or a date).
        #[arg(long, value_parser = parse_time)]
        until: Option<OffsetDateTime>,
        /// Write here (whole, or not at all) instead of to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Check whether VALUE is what a redacted value (`[redacted sha256:COMMITMENT]`) was: exit 0
    /// if it is, 1 if not.
    Prove {
        commitment: String,
        /// The value to check (the whole string that was redacted).
        #[arg(long)]
        value: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print the broker's public key, which verifies exports offline.
    Key {
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
        Command::Report { command: None, window, remote } => report::summary(&remote, &window).await,
        Command::Report { command: Some(command), .. } => report_command(command).await,
        Command::Admin { files, command } => local::admin(&files, command).await,
        Command::Policy { config, command } => local::policy(&config, command),
        Command::Login { browser, remote } => login::login(&remote, browser).await,
        Command::Logout { remote } => login::logout(&remote).await,
        Command::Whoami { remote } => remote::whoami(&remote).await,
        Command::Mfa { command } => identity::mfa(command).await,
        Command::Device { command } => device::run(command).await,
        Command::Request { resource, role, duration, reason, wait, incident, remote } => {
            remote::request(&remote, CreateRequest { resource, role, duration, reason, incident }, wait).await
        }
        Command::Approve { id, comment, otp, remote } => {
            identity::step_up(&remote, otp).await?;
            remote::approve(&remote, &id, comment).await
        }
        Command::Deny { id, reason, remote } => remote::deny(&remote, &id, reason).await,
        Command::Cancel { id, remote } => remote::cancel(&remote, &id).await,
        Command::Requests { pending, mine, remote } => remote::requests(&remote, pending, mine).await,
        Command::Grants { active, mine, remote } => remote::grants(&remote, active, mine).await,
        Command::Revoke { grant_id, reason, remote } => remote::revoke(&remote, &grant_id, reason).await,
        Command::Breakglass { resource, role, reason, duration, incident, otp, remote } => {
            identity::step_up(&remote, otp).await?;
            breakglass::break_glass(&remote, BreakGlassBody { resource, role, reason, duration, incident }).await
        }
        Command::Incident { command } => incident::run(command).await,
        Command::Review { grant_id, accept, comment, remote, .. } => {
            breakglass::review(&remote, &grant_id, accept, comment).await
        }
        Command::Reviews { open, remote } => breakglass::reviews(&remote, open).await,
        Command::Credentials { grant_id, remote } => connect::credentials(&remote, &grant_id).await,
        Command::Connect { resource, role, psql, psql_args, remote } => {
            connect::connect(&remote, &resource, role.as_deref(), &psql, &psql_args).await
        }
        Command::Audit { command } => audit_command(command).await,
    }
}

async fn report_command(command: ReportCommand) -> Outcome {
    match command {
        ReportCommand::User(story) => report::story(&story, "user").await,
        ReportCommand::Resource(story) => report::story(&story, "resource").await,
        ReportCommand::Incident(args) => incident::report(&args).await,
        ReportCommand::Standing { files, json } => report::standing_privileges(&files, json).await,
    }
}

async fn audit_command(command: AuditCommand) -> Outcome {
    match command {
        AuditCommand::Verify { file: Some(file), public_key, checkpoints, remote } => {
            let key =
                public_key.ok_or_else(|| anyhow::anyhow!("--file needs --public-key (see `airlock audit key`)"))?;
            audit::verify_file(&file, &key, checkpoints.as_deref(), remote.json)
        }
        AuditCommand::Verify { file: None, remote, .. } => audit::verify_remote(&remote).await,
        AuditCommand::Export { since, until, out, remote } => {
            audit::export(&remote, since, until, out.as_deref()).await
        }
        AuditCommand::Key { remote } => audit::key(&remote).await,
        AuditCommand::Prove { commitment, value, remote } => audit::prove(&remote, &commitment, value).await,
        AuditCommand::Tail { n, remote } => audit::tail(&remote, n).await,
    }
}
