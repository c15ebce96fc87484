//! Commands that work on files, not on a running broker: `admin` (the data directory, like an
//! administrator's tool on the server) and `policy` (the config's catalog and policies).
//! Opening the data directory makes it private first ([`crate::data_dir`]).

use std::path::Path;
use std::sync::Arc;

use airlock_broker::broker::Settings;
use airlock_broker::bundle::{PolicyBundle, load_cases};
use airlock_broker::clock::SystemClock;
use airlock_broker::config::Config;
use airlock_broker::notify::Notifier;
use airlock_broker::secrets::load_or_create_key;
use airlock_broker::{Broker, BrokerError};
use airlock_core::ids::{GroupName, UserName};
use airlock_core::incident::check_playbooks;
use airlock_core::policy_test::run_case;
use airlock_store::Store;
use anyhow::{Context, anyhow};

use crate::cli::{AdminCommand, Files, PolicyCommand, UserCommand};
use crate::{Failure, Outcome, data_dir};

/// The actor recorded for changes made with `airlock admin`.
pub(crate) fn admin_actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("admin:{user}")
}

/// Whether an opened broker's commits become notifications: only `serve`'s do.
enum Notifications {
    Off,
    AsConfigured,
}

/// Opens the broker over the data directory, as `serve` would (without serving). Its changes
/// send no notifications.
pub async fn open_broker(files: &Files) -> Result<(Broker, Config), Failure> {
    let (broker, config, _) = open(files, Notifications::Off).await?;
    Ok((broker, config))
}

/// Opens the broker for `serve`: when `[notify]` has channels, the store tells the returned
/// notifier of every commit, so it must be run (`Notifier::run`).
pub async fn open_serving_broker(files: &Files) -> Result<(Broker, Config, Option<Notifier>), Failure> {
    open(files, Notifications::AsConfigured).await
}

/// The configuration's policy bundle, with the incident playbooks checked against its catalog:
/// at start, and when `serve` reads the policies again.
pub fn load_bundle(config: &Config) -> anyhow::Result<PolicyBundle> {
    let bundle = PolicyBundle::load(&config.policy)?;
    check_playbooks(&config.incidents.playbooks, &bundle.catalog).map_err(|e| anyhow!("[incidents] {e}"))?;
    Ok(bundle)
}

async fn open(files: &Files, notifications: Notifications) -> Result<(Broker, Config, Option<Notifier>), Failure> {
    data_dir::private_umask();
    let config = Config::load(&files.config)?;
    let bundle = load_bundle(&config)?;
    let passes_through = data_dir::postgres_passes_through(&bundle.catalog);
    data_dir::make_private(&files.data_dir, passes_through).map_err(anyhow::Error::from)?;
    // Before the store: channels whose URL or secret cannot be read stop `serve` from starting.
    let notifier = match notifications {
        Notifications::Off => None,
        Notifications::AsConfigured => {
            Notifier::from_config(&config.notify, &bundle.catalog).map_err(anyhow::Error::from)?
        }
    };
    let mut store = Store::open(&files.data_dir)
        .await
        .with_context(|| format!("cannot open the store in `{}`", files.data_dir.display()))?;
    store.set_redaction(config.audit.redaction().context("[audit] redaction")?);
    if let Some(notifier) = &notifier {
        store.observe_commits(notifier.observer());
    }
    let settings = Settings::from(&config);
    let key = load_or_create_key(&files.data_dir).context("cannot load the signing key")?;
    Ok((Broker::new(store, bundle, Arc::new(SystemClock), settings, key), config, notifier))
}

pub(crate) fn refused_or_usage(error: BrokerError) -> Failure {
    match error.kind() {
        airlock_broker::ErrorKind::Internal | airlock_broker::ErrorKind::Unavailable => Failure::Usage(error.into()),
        _ => Failure::Refused(error.to_string()),
    }
}

pub async fn admin(files: &Files, command: AdminCommand) -> Outcome {
    let command = match command {
        AdminCommand::User { command } => command,
        AdminCommand::Token { command } => return crate::identity::token(files, command).await,
        AdminCommand::Device { command } => return crate::device::admin(files, command).await,
    };
    match command {
        UserCommand::Add { name, groups, service } => {
            let name = UserName::parse(&name).map_err(|e| anyhow!("{e}"))?;
            let groups = groups
                .iter()
                .map(|g| GroupName::parse(g).map_err(|e| anyhow!("--group: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let (broker, _) = open_broker(files).await?;
            let token = broker.add_user(&name, &groups, service, &admin_actor()).await.map_err(refused_or_usage)?;
            eprintln!("added user `{name}`; their API token follows, shown only this once:");
            println!("{token}");
            Ok(())
        }
        UserCommand::Disable { name } => {
            let name = UserName::parse(&name).map_err(|e| anyhow!("{e}"))?;
            let (broker, _) = open_broker(files).await?;
            let done = broker.disable_user(&name, &admin_actor()).await.map_err(refused_or_usage)?;
            println!(
                "disabled `{name}`: {} pending request(s) cancelled, {} grant(s) revoked, {} token(s) and login(s) ended",
                done.requests_cancelled, done.grants_revoked, done.tokens_ended
            );
            Ok(())
        }
        UserCommand::ResetMfa { name } => crate::identity::reset_mfa(files, &name).await,
        UserCommand::AllowBreakglass { name } => {
            let name = UserName::parse(&name).map_err(|e| anyhow!("{e}"))?;
            let (broker, _) = open_broker(files).await?;
            if broker.lift_breakglass_bar(&name, &admin_actor()).await.map_err(refused_or_usage)? {
                println!("`{name}` may break the glass again");
                Ok(())
            } else {
                Err(Failure::Refused(format!("`{name}` is not barred from break-glass")))
            }
        }
    }
}

pub fn policy(config_path: &Path, command: PolicyCommand) -> Outcome {
    let config = Config::load(config_path)?;
    let loaded = PolicyBundle::load(&config.policy);
    match command {
        PolicyCommand::Check => {
            let bundle = loaded.map_err(|e| Failure::Refused(e.to_string()))?;
            let playbooks = &config.incidents.playbooks;
            check_playbooks(playbooks, &bundle.catalog).map_err(|e| Failure::Refused(format!("[incidents] {e}")))?;
            println!(
                "ok: {} policies, {} resources, {} incident playbooks, version {}",
                bundle.engine.policy_count(),
                bundle.catalog.resources().count(),
                playbooks.len(),
                bundle.version
            );
            Ok(())
        }
        PolicyCommand::Test { dir } => {
            let bundle = loaded?;
            let dir = dir.unwrap_or(config.policy.tests);
            let files = load_cases(&dir)?;
            let (mut passed, mut failed) = (0, 0);
            for (file, cases) in &files {
                for case in cases {
                    match run_case(case, &bundle.engine, &bundle.catalog) {
                        Ok(()) => {
                            passed += 1;
                            println!("ok     {file}: {}", case.name);
                        }
                        Err(why) => {
                            failed += 1;
                            println!("FAILED {file}: {}: {why}", case.name);
                        }
                    }
                }
            }
            println!("\n{passed} passed, {failed} failed");
            if passed + failed == 0 {
                return Err(Failure::Usage(anyhow!("no test cases in `{}`", dir.display())));
            }
            if failed > 0 { Err(Failure::Refused(format!("{failed} policy test(s) failed"))) } else { Ok(()) }
        }
    }
}
