//! Policies in force in `serve`: recorded at start, and read again on SIGHUP.
//!
//! At start and at every reload, [`Broker::load_policies`] records a new version and revokes the
//! grants it would no longer give. A reload reads the catalog and the `*.cedar` files again (not
//! `airlock.toml`) and is refused, with an error in the log and the policies in force kept, when
//! the bundle does not load, when the incident playbooks or the notification routes do not fit
//! its catalog, or when its catalog changes what the PostgreSQL connector and the gateway were
//! built from at start (a database, or a role's database roles or allowed statements): those
//! need a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use airlock_broker::Broker;
use airlock_broker::config::Config;
use airlock_broker::notify::check_routes;
use airlock_broker::reevaluate::PoliciesLoaded;
use airlock_core::catalog::{Catalog, PostgresTarget};
use airlock_core::ids::{ResourceName, RoleName};
use anyhow::{Context, anyhow};
use tokio::signal::unix::Signal;
use tokio::sync::watch;

use crate::local::load_bundle;

/// One role as the connector (its database roles) and the gateway (its allowed statements) use it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RoleTarget {
    database_roles: Vec<String>,
    allow_statements: Vec<String>,
}

/// What the connector and the gateway were built from, of one catalog: each PostgreSQL
/// resource's database (address, login, TLS) and its roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(BTreeMap<ResourceName, (PostgresTarget, BTreeMap<RoleName, RoleTarget>)>);

impl Targets {
    pub fn of(catalog: &Catalog) -> Self {
        let targets = catalog
            .resources()
            .filter_map(|resource| {
                let postgres = resource.postgres.clone()?;
                let roles = resource
                    .roles
                    .values()
                    .map(|role| {
                        let target = RoleTarget {
                            database_roles: role.database_roles.clone(),
                            allow_statements: role.allow_statements.clone(),
                        };
                        (role.name.clone(), target)
                    })
                    .collect();
                Some((resource.name.clone(), (postgres, roles)))
            })
            .collect();
        Self(targets)
    }

    /// The resources whose target differs in `other`, or that only one of the two has.
    fn changed_in(&self, other: &Targets) -> Vec<ResourceName> {
        let mut changed: Vec<ResourceName> = self
            .0
            .iter()
            .filter(|(name, target)| other.0.get(*name) != Some(*target))
            .map(|(name, _)| name)
            .chain(other.0.keys().filter(|name| !self.0.contains_key(*name)))
            .cloned()
            .collect();
        changed.sort();
        changed
    }
}

/// Logs what putting policies in force did.
pub fn log_loaded(loaded: &PoliciesLoaded) {
    if loaded.changed {
        let revoked: Vec<String> = loaded.revoked.iter().map(ToString::to_string).collect();
        tracing::info!(
            policy_version = %loaded.version,
            previous = loaded.previous.as_deref().unwrap_or("none"),
            grants_revoked = revoked.len(),
            revoked = ?revoked,
            "new policy version in force, every live grant asked again"
        );
    } else {
        tracing::info!(policy_version = %loaded.version, "policies unchanged");
    }
}

/// Reads the policies again at each SIGHUP on `hangups`, until `stop` turns true.
pub async fn run(
    broker: Broker,
    config: Config,
    built_from: Targets,
    mut hangups: Signal,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow_and_update() {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            received = hangups.recv() => {
                if received.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: reading the policies again");
                match reload(&broker, &config, &built_from).await {
                    Ok(loaded) => log_loaded(&loaded),
                    Err(error) => tracing::error!(
                        policy_version = %broker.policies().version,
                        "policy reload refused, the policies in force stay: {error:#}"
                    ),
                }
            }
        }
    }
}

/// Loads and checks the bundle, then puts it in force.
async fn reload(broker: &Broker, config: &Config, built_from: &Targets) -> anyhow::Result<PoliciesLoaded> {
    let bundle = load_bundle(config)?;
    check_routes(&config.notify, &bundle.catalog).context("[notify]")?;
    let changed = built_from.changed_in(&Targets::of(&bundle.catalog));
    if !changed.is_empty() {
        let names: Vec<String> = changed.iter().map(|name| format!("`{name}`")).collect();
        return Err(anyhow!(
            "the catalog changes the PostgreSQL targets of {}, which the connector and the gateway were built from at start: restart `airlock serve` to apply it",
            names.join(", ")
        ));
    }
    broker.load_policies(Arc::new(bundle)).await.context("cannot put the policies in force")
}
