//! The incident commands: open and close an incident (incident managers), list and show them
//! (anybody, to name one in `request --incident`), and its post-mortem (`report incident`).

use airlock_core::ids::{IncidentId, UserName};
use airlock_core::incident::{Severity, Title};
use airlock_core::report::story::IncidentReport;
use airlock_http::api::{ClosedIncidentView, IncidentBody, IncidentView};
use anyhow::anyhow;

use crate::cli::{IncidentCommand, IncidentReportArgs, Remote};
use crate::client::Client;
use crate::output::{self, when};
use crate::report::{print_story, story_csv};
use crate::{Failure, Outcome};

/// An incident id as typed: checked before it goes into a URL.
pub fn incident_id(text: &str) -> Result<String, Failure> {
    IncidentId::parse(text).map(|id| id.to_string()).map_err(|e| anyhow!("{e}").into())
}

pub async fn run(command: IncidentCommand) -> Outcome {
    match command {
        IncidentCommand::Open { id, severity, title, responders, remote } => {
            let body = IncidentBody { id: incident_id(&id)?, severity, title, responders };
            Severity::new(severity).map_err(|e| anyhow!("--severity: {e}"))?;
            Title::parse(&body.title).map_err(|e| anyhow!("--title: {e}"))?;
            for responder in &body.responders {
                UserName::parse(responder).map_err(|e| anyhow!("--responder: {e}"))?;
            }
            let incident: IncidentView = Client::new(&remote)?.post("/v1/incidents", &body).await?;
            show(&remote, &incident);
            Ok(())
        }
        IncidentCommand::Close { id, remote } => {
            let path = format!("/v1/incidents/{}/close", incident_id(&id)?);
            let closed: ClosedIncidentView = Client::new(&remote)?.post(&path, &serde_json::json!({})).await?;
            if remote.json {
                output::json(&closed);
            } else {
                output::incidents(std::slice::from_ref(&closed.incident));
                println!(
                    "\nclosed: {} grant(s) made for it revoked, {} waiting request(s) withdrawn",
                    closed.grants_revoked, closed.requests_withdrawn
                );
            }
            Ok(())
        }
        IncidentCommand::List { open, remote } => {
            let incidents: Vec<IncidentView> = Client::new(&remote)?.get(&format!("/v1/incidents?open={open}")).await?;
            if remote.json {
                output::json(&incidents)
            } else {
                output::incidents(&incidents)
            }
            Ok(())
        }
        IncidentCommand::Show { id, remote } => {
            let path = format!("/v1/incidents/{}", incident_id(&id)?);
            let incident: IncidentView = Client::new(&remote)?.get(&path).await?;
            show(&remote, &incident);
            Ok(())
        }
    }
}

fn show(remote: &Remote, incident: &IncidentView) {
    if remote.json { output::json(incident) } else { output::incidents(std::slice::from_ref(incident)) }
}

/// `airlock report incident ID`.
pub async fn report(args: &IncidentReportArgs) -> Outcome {
    let IncidentReportArgs { id, statements, csv, remote } = args;
    let path = format!("/v1/reports/incidents/{}?statements={statements}", incident_id(id)?);
    let report: IncidentReport = Client::new(remote)?.get(&path).await?;
    if remote.json {
        output::json(&report);
        return Ok(());
    }
    if *csv {
        return story_csv(&report.story);
    }
    let i = &report.incident;
    println!("incident {} (severity {}): {}", i.id, i.severity, i.title.as_str());
    println!("opened by {} {}", i.opened_by, when(i.opened_at));
    match (&i.closed_by, i.closed_at) {
        (Some(by), Some(at)) => println!("closed by {by} {}", when(at)),
        _ => println!("still open"),
    }
    let responders: Vec<String> = i.responders.iter().map(ToString::to_string).collect();
    println!("responders: {}\n", if responders.is_empty() { "-".to_owned() } else { responders.join(", ") });
    print_story(&report.story);
    if !report.breakglass_reviews.is_empty() {
        println!("\nbreak-glass reviews");
        for r in &report.breakglass_reviews {
            let answer = r.answer.as_ref().map_or_else(
                || "not answered yet".to_owned(),
                |a| format!("{:?} by {} {}: {}", a.verdict, a.reviewer, when(a.at), a.comment).to_lowercase(),
            );
            println!("  grant {} of {}: {} — {answer}", r.grant, r.holder, r.state.as_str());
        }
    }
    Ok(())
}
