//! The user commands: each is one or two API calls and a table (or `--json`).

use std::time::Duration;

use airlock_core::values::{GrantDuration, Reason};
use airlock_http::api::*;
use anyhow::anyhow;

use crate::cli::Remote;
use crate::client::Client;
use crate::{Failure, Outcome, output};

/// How often `request --wait` looks again.
const WAIT_POLL: Duration = Duration::from_millis(500);
/// How often `request --wait` looks again once approved, until the grant is usable.
const USABLE_POLL: Duration = Duration::from_millis(100);
/// How long `request --wait` waits for an approved grant to become usable.
const USABLE_WITHIN: Duration = Duration::from_secs(60);

/// A request id or grant id as typed: checked before it goes into a URL.
pub fn id(text: &str) -> Result<String, Failure> {
    text.parse::<airlock_core::ids::RequestId>()
        .map(|u| u.to_string())
        .map_err(|_| anyhow!("`{text}` is not a request or grant id").into())
}

fn reason(text: &str) -> Result<String, Failure> {
    Reason::parse(text).map(|r| r.to_string()).map_err(|e| anyhow!("--reason: {e}").into())
}

fn show_request(remote: &Remote, request: &RequestView) {
    if remote.json { output::json(request) } else { output::request(request) }
}

pub async fn whoami(remote: &Remote) -> Outcome {
    let me: WhoAmI = Client::new(remote)?.get("/v1/whoami").await?;
    if remote.json {
        output::json(&me);
    } else {
        let kind = if me.service { " (service account)" } else { "" };
        println!("{}{kind}\ngroups: {}", me.name, me.groups.join(", "));
    }
    Ok(())
}

pub async fn request(remote: &Remote, mut body: CreateRequest, wait: bool) -> Outcome {
    let asked = GrantDuration::parse(&body.duration).map_err(|e| anyhow!("--for: {e}"))?;
    body.reason = reason(&body.reason)?;
    if let Some(incident) = &body.incident {
        crate::incident::incident_id(incident)?;
    }
    let client = Client::new(remote)?;
    let mut request: RequestView = client.post("/v1/requests", &body).await?;
    if wait {
        if !remote.json {
            eprintln!("waiting for review of request {} ...", request.id);
        }
        while request.state == "pending" {
            tokio::time::sleep(WAIT_POLL).await;
            request = client.get(&format!("/v1/requests/{}", request.id)).await?;
        }
        // Approved: the grant is usable once its database role exists.
        let give_up = tokio::time::Instant::now() + USABLE_WITHIN;
        let mut said = false;
        while let Some(grant) = request.grant.as_ref().filter(|g| g.usable == Some(false) && g.state == "active") {
            if tokio::time::Instant::now() >= give_up {
                show_request(remote, &request);
                return Err(Failure::Refused(format!(
                    "grant {} was approved, but its database role was not ready within {} s (see `target.failed` in `airlock audit tail`)",
                    grant.id,
                    USABLE_WITHIN.as_secs()
                )));
            }
            if !remote.json && !said {
                eprintln!("approved; waiting for grant {}'s database role ...", grant.id);
                said = true;
            }
            tokio::time::sleep(USABLE_POLL).await;
            request = client.get(&format!("/v1/requests/{}", request.id)).await?;
        }
    }
    show_request(remote, &request);
    if !remote.json && request.duration_seconds < asked.as_secs() {
        println!("note      the duration asked was cut to the incident playbook's maximum, {}", request.duration);
    }
    match request.state.as_str() {
        "approved" | "pending" => Ok(()),
        state => Err(Failure::Refused(format!("request {} was {state}", request.id))),
    }
}

pub async fn approve(remote: &Remote, request_id: &str, comment: Option<String>) -> Outcome {
    let path = format!("/v1/requests/{}/approve", id(request_id)?);
    let request: RequestView = Client::new(remote)?.post(&path, &ApproveBody { comment }).await?;
    show_request(remote, &request);
    Ok(())
}

pub async fn deny(remote: &Remote, request_id: &str, reason_text: String) -> Outcome {
    let path = format!("/v1/requests/{}/deny", id(request_id)?);
    let request: RequestView = Client::new(remote)?.post(&path, &ReasonBody { reason: reason(&reason_text)? }).await?;
    show_request(remote, &request);
    Ok(())
}

pub async fn cancel(remote: &Remote, request_id: &str) -> Outcome {
    let path = format!("/v1/requests/{}/cancel", id(request_id)?);
    let request: RequestView = Client::new(remote)?.post(&path, &serde_json::json!({})).await?;
    show_request(remote, &request);
    Ok(())
}

pub async fn requests(remote: &Remote, pending: bool, mine: bool) -> Outcome {
    let requests: Vec<RequestView> =
        Client::new(remote)?.get(&format!("/v1/requests?pending={pending}&mine={mine}")).await?;
    if remote.json {
        output::json(&requests)
    } else {
        output::requests(&requests)
    }
    Ok(())
}

pub async fn grants(remote: &Remote, active: bool, mine: bool) -> Outcome {
    let grants: Vec<GrantView> = Client::new(remote)?.get(&format!("/v1/grants?active={active}&mine={mine}")).await?;
    if remote.json {
        output::json(&grants)
    } else {
        output::grants(&grants)
    }
    Ok(())
}

pub async fn revoke(remote: &Remote, grant_id: &str, reason_text: String) -> Outcome {
    let path = format!("/v1/grants/{}/revoke", id(grant_id)?);
    let grant: GrantView = Client::new(remote)?.post(&path, &ReasonBody { reason: reason(&reason_text)? }).await?;
    if remote.json {
        output::json(&grant)
    } else {
        output::grants(std::slice::from_ref(&grant))
    }
    Ok(())
}
