//! The gateway's parts from the configuration (TLS identity, the resources it serves and each
//! role's allowed statements), and `airlock gateway`: the gateway alone, asking a broker over its
//! API. Several can run beside one broker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use airlock_broker::bundle::PolicyBundle;
use airlock_broker::config::{Config, GatewaySection};
use airlock_broker::secrets::read_secret;
use airlock_core::catalog::{AuditTiming, Catalog, GrantLogin};
use airlock_core::ids::ResourceName;
use airlock_gateway::authority::Authority;
use airlock_gateway::gateway::{Parts, ResourceTarget, Settings, Verifier};
use airlock_gateway::guard::Allowed;
use airlock_gateway::limits::FailureLimit;
use airlock_gateway::target::TargetAddress;
use airlock_gateway::tls::{self, Identity};
use airlock_http::api::KeyView;
use airlock_postgres::grant_ca::GrantCa;
use airlock_postgres::roles::RoleKey;
use airlock_postgres::tls::TargetTls;
use anyhow::{Context, anyhow};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Outcome;
use crate::cli::{Files, Remote};
use crate::client::Client;
use crate::remote_authority::RemoteAuthority;
use crate::serve::shutdown_signal;

/// Everything `airlock_gateway::gateway::serve` needs, for the databases at `addresses`.
pub fn parts<A: Authority>(
    authority: A,
    section: &GatewaySection,
    data_dir: &Path,
    catalog: &Catalog,
    public_key: [u8; 32],
    role_key: RoleKey,
    addresses: Vec<(ResourceName, TargetAddress)>,
) -> anyhow::Result<Parts<A>> {
    let identity = match (&section.tls_cert, &section.tls_key) {
        (Some(cert), Some(key)) => Identity::Files { cert: cert.clone(), key: key.clone() },
        _ => Identity::Generated { dir: data_dir.to_owned() },
    };
    let tls = tls::acceptor(&identity).context("the gateway's TLS identity")?;
    let mut targets = HashMap::new();
    for (name, address) in addresses {
        let resource = catalog.resource(&name).ok_or_else(|| anyhow!("unknown resource {name}"))?;
        let mut roles = HashMap::new();
        for role in resource.roles.values() {
            let allowed = Allowed::parse(&role.allow_statements)
                .map_err(|e| anyhow!("resource `{name}`, role `{}`: allow_statements: {e}", role.name))?;
            roles.insert(role.name.clone(), allowed);
        }
        let audit_before = resource.audit == AuditTiming::Before;
        targets.insert(name, ResourceTarget { address, roles, audit_before });
    }
    let seconds = |duration: &airlock_core::values::GrantDuration| Duration::from_secs(duration.as_secs());
    let settings = Settings {
        require_tls: section.require_tls,
        idle_timeout: seconds(&section.idle_timeout),
        redact_literals: section.redact_literals,
        startup_timeout: seconds(&section.startup_timeout),
        max_pending_logins: section.max_pending_logins,
        max_statement_bytes: section.max_statement_bytes.max(1),
        login_failures: FailureLimit {
            max_failures: section.max_failed_logins,
            window: seconds(&section.failed_logins_window),
            ..FailureLimit::default()
        },
        ..Settings::default()
    };
    let name = gateway_name(data_dir)?;
    Ok(Parts { authority, settings, tls: Some(tls), targets, verifier: Verifier { public_key }, role_key, name })
}

/// The gateway's own name (`gateway.id` in the data directory, a UUID made at first start): its
/// records carry it, so after a crash it finds the sessions whose end it could not record.
fn gateway_name(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("gateway.id");
    match std::fs::read_to_string(&path) {
        Ok(name) => {
            let name = name.trim();
            uuid::Uuid::parse_str(name).with_context(|| format!("{} does not hold a UUID", path.display()))?;
            Ok(name.to_owned())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let name = uuid::Uuid::new_v4().to_string();
            std::fs::write(&path, format!("{name}\n")).with_context(|| format!("cannot write {}", path.display()))?;
            Ok(name)
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The catalog's databases that have an address (throwaway ones live inside `serve`), with the
/// TLS each asks for.
fn catalog_addresses(catalog: &Catalog, data_dir: &Path) -> anyhow::Result<Vec<(ResourceName, TargetAddress)>> {
    let mut addresses = Vec::new();
    for resource in catalog.resources() {
        let Some(postgres) = &resource.postgres else { continue };
        let Some((host, port)) = postgres.host_and_port() else { continue };
        let mut tls =
            TargetTls::new(&postgres.tls, host).with_context(|| format!("resource `{}`: tls", resource.name))?;
        if postgres.grant_login == GrantLogin::Certificate {
            let grant_ca = GrantCa::load(data_dir).with_context(|| {
                format!("resource `{}` logs in with grant certificates: the gateway needs the grant CA", resource.name)
            })?;
            tls = tls.map(|tls| tls.with_grant_ca(grant_ca));
        }
        let address = TargetAddress { host: host.to_owned(), port, database: postgres.database.clone(), tls };
        addresses.push((resource.name.clone(), address));
    }
    Ok(addresses)
}

/// `airlock gateway`: serves the catalog's databases, asking the broker at `remote.url` (as the
/// service account whose token is in `AIRLOCK_TOKEN`, in the `gateways` group).
pub async fn run(files: &Files, listen: Option<SocketAddr>, remote: &Remote) -> Outcome {
    // The generated TLS key and certificate go into the data directory: private.
    crate::data_dir::private_umask();
    let config = Config::load(&files.config)?;
    let section = config.gateway.clone().unwrap_or_default();
    let bundle = PolicyBundle::load(&config.policy)?;
    let key_path = files.data_dir.join("connector.key");
    let role_key = RoleKey::new(read_secret(&key_path).with_context(|| {
        format!(
            "the gateway logs in with the connector's key: copy the broker's `connector.key` to {}",
            key_path.display()
        )
    })?);
    let client = Client::for_service(remote)?;
    let key: KeyView = client.get("/v1/keys").await?;
    let public_key: [u8; 32] = hex::decode(&key.public_key)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| anyhow!("the broker's public key is not 32 bytes of hex"))?;
    let addresses = catalog_addresses(&bundle.catalog, &files.data_dir)?;
    if addresses.is_empty() {
        return Err(anyhow!("the catalog names no PostgreSQL database with an address to serve").into());
    }
    let authority = RemoteAuthority::start(client);
    let parts = parts(authority, &section, &files.data_dir, &bundle.catalog, public_key, role_key, addresses)?;
    let listen = listen.unwrap_or(section.listen);
    let listener = TcpListener::bind(listen).await.with_context(|| format!("the gateway cannot listen on {listen}"))?;
    let address = listener.local_addr().context("cannot read the gateway's address")?;
    println!("airlock gateway listening on {address} (PostgreSQL, TLS), broker {}", remote.url);
    let (stop, stopped) = watch::channel(false);
    let serving = tokio::spawn(airlock_gateway::gateway::serve(parts, listener, stopped));
    shutdown_signal().await;
    let _ = stop.send(true);
    let _ = serving.await;
    Ok(())
}

/// The gateway's parts inside `serve`, for the connector's targets.
pub fn in_serve(
    broker: &airlock_broker::Broker,
    section: &GatewaySection,
    data_dir: &Path,
    public_key: [u8; 32],
    role_key: RoleKey,
    targets: &[airlock_postgres::reconciler::Target],
) -> anyhow::Result<Parts<airlock_broker::Broker>> {
    let addresses = targets
        .iter()
        .filter_map(|target| {
            let (host, port) = target.endpoint()?;
            let database = target.database().to_owned();
            Some((target.resource.clone(), TargetAddress { host, port, database, tls: target.tls.clone() }))
        })
        .collect();
    parts(broker.clone(), section, data_dir, &broker.policies().catalog, public_key, role_key, addresses)
}
