//! What the user commands print: readable tables, or with `--json` one JSON document.

use airlock_http::api::{AuditRecordView, GrantView, IncidentView, RequestView, ReviewView};
use comfy_table::{Table, presets};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub fn json<T: Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("API documents serialise"));
}

pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_header(header.iter().map(|h| h.to_uppercase()));
    table
}

pub fn when(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// `1h 2m 3s` from seconds.
pub fn remaining(seconds: i64) -> String {
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

fn approvals(request: &RequestView) -> String {
    format!("{}/{}", request.approvals.len(), request.required_approvals)
}

pub fn requests(requests: &[RequestView]) {
    let mut t = table(&["id", "state", "resource", "role", "requester", "for", "approvals", "created", "reason"]);
    for r in requests {
        t.add_row(vec![
            r.id.to_string(),
            r.state.clone(),
            r.resource.clone(),
            r.role.clone(),
            r.requester.clone(),
            r.duration.clone(),
            approvals(r),
            when(r.created_at),
            r.reason.clone(),
        ]);
    }
    println!("{t}");
}

/// One request in full, and its grant when it has one.
pub fn request(r: &RequestView) {
    println!("request   {}", r.id);
    println!("state     {}", r.state);
    println!("access    {} on {} for {}", r.role, r.resource, r.duration);
    println!("requester {}", r.requester);
    println!("reason    {}", r.reason);
    if r.state == "pending" {
        println!(
            "approvals {} ({} more needed; expires unreviewed at {})",
            approvals(r),
            r.approvals_needed,
            when(r.expires_at)
        );
    } else {
        println!("approvals {}", approvals(r));
    }
    for a in &r.approvals {
        let comment = a.comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default();
        println!("          approved by {} at {}{comment}", a.approver, when(a.at));
    }
    let decided_by = if r.decision.policies.is_empty() { "-".to_owned() } else { r.decision.policies.join(", ") };
    let auto = match (r.decision.auto_approved, r.decision.break_glass) {
        (true, _) => " (approved automatically)",
        (_, true) => " (break-glass: granted at once, review owed)",
        _ => "",
    };
    println!("policies  {decided_by}{auto}");
    if let Some(incident) = &r.incident {
        println!("incident  {} (severity {}): the grant ends when it closes", incident.id, incident.severity);
    }
    if let Some(closed) = &r.closed {
        let reason = closed.reason.as_deref().map(|c| format!(": {c}")).unwrap_or_default();
        println!("closed    by {} at {}{reason}", closed.by, when(closed.at));
    }
    if let Some(g) = &r.grant {
        println!(
            "grant     {} {} until {} ({} left)",
            g.id,
            g.state,
            when(g.expires_at),
            remaining(g.remaining_seconds)
        );
        match (g.usable, g.usable_at) {
            (Some(true), Some(at)) => println!("usable    since {}", when(at)),
            (Some(false), None) if g.state == "active" => {
                println!("usable    not yet: its database role is being created")
            }
            _ => {}
        }
    }
}

pub fn grants(grants: &[GrantView]) {
    let mut t = table(&["id", "state", "resource", "role", "holder", "started", "ends", "remaining", "usable"]);
    for g in grants {
        let usable = match g.usable {
            Some(true) => "yes",
            Some(false) if g.state == "active" => "not yet",
            _ => "-",
        };
        t.add_row(vec![
            g.id.to_string(),
            g.state.clone(),
            g.resource.clone(),
            g.role.clone(),
            g.holder.clone(),
            when(g.starts_at),
            when(g.expires_at),
            if g.state == "active" { remaining(g.remaining_seconds) } else { "-".into() },
            usable.into(),
        ]);
    }
    println!("{t}");
}

pub fn reviews(reviews: &[ReviewView]) {
    let mut t = table(&["grant", "state", "resource", "role", "holder", "opened", "due", "answer", "reason"]);
    for r in reviews {
        let state = if r.overdue { format!("{} (overdue)", r.state) } else { r.state.clone() };
        let answer = r
            .answer
            .as_ref()
            .map(|a| format!("{} by {} at {}: {}", a.verdict, a.reviewer, when(a.at), a.comment))
            .unwrap_or_else(|| "-".into());
        t.add_row(vec![
            r.grant.to_string(),
            state,
            r.resource.clone(),
            r.role.clone(),
            r.holder.clone(),
            when(r.opened_at),
            when(r.due_at),
            answer,
            r.reason.clone(),
        ]);
    }
    println!("{t}");
}

pub fn incidents(incidents: &[IncidentView]) {
    let mut t = table(&["id", "severity", "state", "title", "responders", "opened", "closed"]);
    for i in incidents {
        let closed = match (&i.closed_by, i.closed_at) {
            (Some(by), Some(at)) => format!("{} by {by}", when(at)),
            _ => "-".into(),
        };
        t.add_row(vec![
            i.id.clone(),
            i.severity.to_string(),
            i.state.clone(),
            i.title.clone(),
            if i.responders.is_empty() { "-".into() } else { i.responders.join(", ") },
            format!("{} by {}", when(i.opened_at), i.opened_by),
            closed,
        ]);
    }
    println!("{t}");
}

pub fn audit(records: &[AuditRecordView]) {
    let mut t = table(&["seq", "at", "kind", "actor", "subject"]);
    for r in records {
        let subject = ["request", "grant"]
            .iter()
            .find_map(|k| {
                r.details.get(k).and_then(|v| v.get("id")).and_then(|v| v.as_str()).map(|id| format!("{k} {id}"))
            })
            .or_else(|| r.details.get("user").and_then(|v| v.as_str()).map(|u| format!("user {u}")))
            .unwrap_or_default();
        t.add_row(vec![r.seq.to_string(), when(r.at), r.kind.clone(), r.actor.clone(), subject]);
    }
    println!("{t}");
}

#[cfg(test)]
mod tests {
    use super::remaining;

    #[test]
    fn remaining_time_reads_naturally() {
        assert_eq!(remaining(5), "5s");
        assert_eq!(remaining(65), "1m 5s");
        assert_eq!(remaining(3725), "1h 2m 5s");
    }
}
