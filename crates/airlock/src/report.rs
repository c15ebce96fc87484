//! `airlock report standing`: on every catalog database with an address, the privileges that no
//! live grant explains (read with the connector's login, against the data directory's grants).

use airlock_postgres::reconciler::Target;
use airlock_postgres::standing::{Finding, standing};
use anyhow::anyhow;

use crate::cli::Files;
use crate::local::open_broker;
use crate::{Failure, Outcome, output};

pub async fn standing_privileges(files: &Files, json: bool) -> Outcome {
    let (broker, _) = open_broker(files).await?;
    let targets = Target::from_catalog(&broker.policies().catalog).map_err(|e| anyhow!("{e}"))?;
    if targets.is_empty() {
        return Err(anyhow!("the catalog names no PostgreSQL database with an address").into());
    }
    let live = broker.live_grants().await.map_err(|e| anyhow!("cannot read the live grants: {e}"))?;
    let mut findings: Vec<Finding> = Vec::new();
    for target in &targets {
        findings.extend(standing(target, &live).await.map_err(|e| anyhow!("{e}"))?);
    }
    if json {
        output::json(&findings);
    } else if findings.is_empty() {
        println!("no standing privileges on {} database(s)", targets.len());
    } else {
        let mut table = output::table(&["resource", "database role", "finding", "detail"]);
        for f in &findings {
            table.add_row([f.resource.as_str(), f.database_role.as_str(), f.kind, f.detail.as_str()]);
        }
        println!("{table}");
    }
    match findings.len() {
        0 => Ok(()),
        n => Err(Failure::Refused(format!("{n} standing privilege(s) no live grant explains"))),
    }
}
