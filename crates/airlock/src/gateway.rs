//! The gateway's parts from the configuration: TLS identity, the resources it serves (the
//! connector's targets, whose per-grant roles it logs in as) and each role's allowed statements.

use std::collections::HashMap;
use std::path::Path;

use airlock_broker::Broker;
use airlock_broker::config::GatewaySection;
use airlock_broker::secrets::BrokerKey;
use airlock_gateway::gateway::{Parts, ResourceTarget, Settings, Verifier};
use airlock_gateway::guard::Allowed;
use airlock_gateway::target::TargetAddress;
use airlock_gateway::tls::{self, Identity};
use airlock_postgres::reconciler::Target;
use airlock_postgres::roles::RoleKey;
use anyhow::{Context, anyhow};

/// Everything `airlock_gateway::gateway::serve` needs, for the connector's `targets`.
pub fn parts(
    broker: Broker,
    section: &GatewaySection,
    data_dir: &Path,
    key: &BrokerKey,
    role_key: RoleKey,
    targets: &[Target],
) -> anyhow::Result<Parts<Broker>> {
    let identity = match (&section.tls_cert, &section.tls_key) {
        (Some(cert), Some(key)) => Identity::Files { cert: cert.clone(), key: key.clone() },
        _ => Identity::Generated { dir: data_dir.to_owned() },
    };
    let tls = tls::acceptor(&identity).context("the gateway's TLS identity")?;
    let catalog = &broker.policies().catalog;
    let mut resources = HashMap::new();
    for target in targets {
        let resource =
            catalog.resource(&target.resource).ok_or_else(|| anyhow!("unknown resource {}", target.resource))?;
        let Some((host, port)) = target.endpoint() else { continue };
        let mut roles = HashMap::new();
        for role in resource.roles.values() {
            let allowed = Allowed::parse(&role.allow_statements)
                .map_err(|e| anyhow!("resource `{}`, role `{}`: allow_statements: {e}", resource.name, role.name))?;
            roles.insert(role.name.clone(), allowed);
        }
        let address = TargetAddress { host, port, database: target.database().to_owned() };
        resources.insert(resource.name.clone(), ResourceTarget { address, roles });
    }
    let settings = Settings {
        require_tls: section.require_tls,
        idle_timeout: std::time::Duration::from_secs(section.idle_timeout.as_secs()),
        redact_literals: section.redact_literals,
        ..Settings::default()
    };
    let verifier = Verifier { public_key: key.signing.verifying_key().to_bytes() };
    Ok(Parts { authority: broker, settings, tls: Some(tls), targets: resources, verifier, role_key })
}
