//! `airlock serve`: the store, the signing key, the policies, the expiry scheduler, the audit
//! checkpointer, the API, the PostgreSQL connector when the catalog names PostgreSQL targets, the
//! gateway when the configuration has a `[gateway]` section, and webhook notifications when
//! `[notify]` has channels; and the Prometheus recorder that `/metrics` renders. The policies are
//! recorded before anything serves, and read again on SIGHUP ([`crate::reload`]).
//!
//! Before anything touches the data directory, `serve` takes its lock ([`crate::data_dir`]): a
//! second `serve` on the same directory stops there, with exit code 2.

use std::net::SocketAddr;

use airlock_broker::checkpoints::{self, CheckpointSettings};
use airlock_broker::scheduler;
use airlock_broker::secrets::load_or_create_secret;
use airlock_http::AppState;
use airlock_postgres::grant_ca::GrantCa;
use airlock_postgres::reconciler::{Reconciler, Target};
use airlock_postgres::roles::RoleKey;
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::Outcome;
use crate::cli::Files;
use crate::local::open_serving_broker;
use crate::reload::{self, Targets};
use crate::{data_dir, gateway, throwaway};

const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

pub async fn run(files: &Files, listen: Option<SocketAddr>, gateway_listen: Option<SocketAddr>) -> Outcome {
    data_dir::private_umask();
    // Held until `serve` returns; before it, nothing may touch the directory (the store, the
    // keys, the throwaway clusters of a `serve` already running there).
    let _lock = data_dir::lock_for_serve(&files.data_dir).map_err(anyhow::Error::from)?;
    // What happens before the recorder is installed is not counted.
    let metrics = airlock_http::metrics::install().context("cannot set up the metrics")?;
    let (broker, config, notifier) = open_serving_broker(files).await?;
    // Single sign-on's provider is discovered at start: unreachable, the broker does not start.
    let sso = crate::login::single_sign_on(&broker, &config).await?;
    // Before anything serves: grants the policies no longer allow end before they can be used.
    // The bundle everything below is built from (a reload later swaps the broker's, not this).
    let policies = broker.policies();
    let loaded = broker.load_policies(policies.clone()).await.context("cannot put the policies in force")?;
    reload::log_loaded(&loaded);
    // Watched from now on: SIGHUP's default action would end the process.
    let hangups = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let listen =
        listen.or(config.broker.listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("the default address parses"));
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr().context("cannot read the listening address")?;

    let (stop, stopped) = watch::channel(false);
    let scheduler = tokio::spawn(scheduler::run(broker.clone(), stopped.clone()));
    // Notifications stop after everything that records changes, and before the last checkpoint,
    // so the records of their outcomes are signed.
    let (stop_notifications, notifications_stopped) = watch::channel(false);
    let notifications = notifier.map(|notifier| {
        tracing::info!("notifications started");
        tokio::spawn(notifier.run(broker.clone(), notifications_stopped))
    });
    // The checkpointer stops last, so its final checkpoint covers what the others recorded.
    let (stop_checkpoints, checkpoints_stopped) = watch::channel(false);
    let checkpointer =
        tokio::spawn(checkpoints::run(broker.clone(), CheckpointSettings::from(&config.audit), checkpoints_stopped));
    let grant_ca = GrantCa::load_or_create(&files.data_dir).context("cannot load the grant CA")?;
    let mut targets = Target::from_catalog(&policies.catalog).context("cannot set up the PostgreSQL connector")?;
    for target in &mut targets {
        target.sign_logins_with(&grant_ca);
    }
    let throwaway = throwaway::start(&policies.catalog, &files.data_dir, &grant_ca).await;
    targets.extend(throwaway.targets.iter().cloned());
    let role_key = RoleKey::new(
        load_or_create_secret(&files.data_dir.join("connector.key")).context("cannot load the connector's key")?,
    );
    if gateway_listen.is_some() && config.gateway.is_none() {
        return Err(anyhow::anyhow!("--gateway-listen needs a [gateway] section in the configuration").into());
    }
    let gateway = match &config.gateway {
        Some(section) => {
            let listen = gateway_listen.unwrap_or(section.listen);
            let public_key = broker.key().public_key();
            let parts = gateway::in_serve(&broker, section, &files.data_dir, public_key, role_key.clone(), &targets)?;
            let listener =
                TcpListener::bind(listen).await.with_context(|| format!("the gateway cannot listen on {listen}"))?;
            let address = listener.local_addr().context("cannot read the gateway's address")?;
            println!("airlock gateway listening on {address} (PostgreSQL, TLS)");
            Some((address, tokio::spawn(airlock_gateway::gateway::serve(parts, listener, stopped.clone()))))
        }
        None => None,
    };
    let built_from = Targets::of(&policies.catalog);
    let reloader = tokio::spawn(reload::run(broker.clone(), config.clone(), built_from, hangups, stopped.clone()));
    let connector = if targets.is_empty() {
        None
    } else {
        tracing::info!(targets = targets.len(), "PostgreSQL connector started");
        let reconciler = Reconciler::new(broker.clone(), targets, role_key, Reconciler::DEFAULT_EVERY);
        Some(tokio::spawn(reconciler.run(stopped)))
    };
    tracing::info!(
        policies = policies.engine.policy_count(),
        policy_version = %policies.version,
        data_dir = %files.data_dir.display(),
        key_id = %broker.key().key_id,
        "broker started"
    );
    println!("airlock broker listening on http://{address}");
    let state =
        AppState { broker, gateway: gateway.as_ref().map(|(address, _)| *address), metrics: Some(metrics), sso };
    airlock_http::serve(listener, state, shutdown_signal()).await.context("the HTTP server failed")?;
    let _ = stop.send(true);
    let _ = reloader.await;
    let _ = scheduler.await;
    if let Some((_, gateway)) = gateway {
        let _ = gateway.await;
    }
    if let Some(connector) = connector {
        let _ = connector.await;
    }
    let _ = stop_notifications.send(true);
    if let Some(notifications) = notifications {
        let _ = notifications.await;
    }
    let _ = stop_checkpoints.send(true);
    let _ = checkpointer.await;
    throwaway.stop().await;
    tracing::info!("broker stopped");
    Ok(())
}

/// Completes at SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM can be watched");
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
