//! `airlock`: the broker (`serve`), its administration (`admin`), policy tools (`policy`) and the
//! user commands that talk to a broker over HTTP.
//!
//! Layout:
//! - [`cli`]: the command line, as clap types;
//! - [`audit`]: `airlock audit`: tail, verify (by the broker, or offline from an export), export, key;
//! - [`local`]: commands that work on files (the config, policies, the data directory);
//! - [`serve`]: the broker process: store, scheduler, HTTP API and PostgreSQL connector;
//! - [`data_dir`]: the data directory kept private, and `serve`'s lock on it;
//! - [`reload`]: the policies `serve` puts in force at start and reads again on SIGHUP;
//! - [`gateway`]: the PostgreSQL gateway's parts from the configuration;
//! - [`throwaway`]: local PostgreSQL clusters for catalog databases without an address;
//! - [`client`]: the HTTP client of the user commands, and [`remote`]: those commands;
//! - [`login`]: `airlock login`/`logout` (single sign-on) and the login file the client falls back on;
//! - [`identity`]: API tokens (`admin token`) and the TOTP second factor (`mfa`, `--otp`);
//! - [`breakglass`]: emergency access and the reviews it owes;
//! - [`incident`]: incidents opened and closed, and their post-mortem report;
//! - [`connect`]: gateway credentials and `psql` through the gateway;
//! - [`report`]: `airlock report` (summary, user and resource stories) and the standing-privilege report;
//! - [`remote_authority`]: the broker over its API, for `airlock gateway`;
//! - [`output`]: tables and JSON for people and scripts.
//!
//! Exit codes: 0 done; 1 refused by the broker (or a failed check), with the reason printed;
//! 2 bad usage, bad configuration or an unreachable broker.

mod audit;
mod breakglass;
mod cli;
mod client;
mod connect;
mod data_dir;
mod device;
mod files;
mod gateway;
mod identity;
mod incident;
mod local;
mod login;
mod output;
mod reload;
mod remote;
mod remote_authority;
mod report;
mod serve;
mod throwaway;

/// mimalloc rather than the system allocator: Cedar's evaluator allocates many small values per
/// decision, and with glibc's allocator decisions were ~20% slower (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

/// A failure and the exit code it deserves.
#[derive(Debug)]
pub enum Failure {
    /// The broker (or a check) said no: exit 1.
    Refused(String),
    /// Bad usage, bad configuration, unreachable broker: exit 2.
    Usage(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Usage(error)
    }
}

impl From<airlock_broker::config::ConfigError> for Failure {
    fn from(error: airlock_broker::config::ConfigError) -> Self {
        Failure::Usage(error.into())
    }
}

impl From<airlock_broker::bundle::BundleError> for Failure {
    fn from(error: airlock_broker::bundle::BundleError) -> Self {
        Failure::Usage(error.into())
    }
}

pub type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("airlock: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(message)) => {
            eprintln!("airlock: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(error)) => {
            eprintln!("airlock: {error:#}");
            ExitCode::from(2)
        }
    }
}
