//! `airlock report`: the summary of a window, the story of a user or a resource (both from the
//! broker, for auditors; an incident's is in [`crate::incident`]), and `airlock report standing` (read directly from the catalog's
//! databases with the connector's login). Each prints readable sections, one JSON document with
//! `--json`, or CSV with `--csv`: the summary as `section,subject,measure,value` rows, a story as
//! a timeline with one row per event.

use airlock_core::report::activity::StatementLine;
use airlock_core::report::story::{GrantStory, Story};
use airlock_core::report::summary::{AccessLine, Summary};
use airlock_core::report::{GrantLine, Spread};
use airlock_postgres::reconciler::Target;
use airlock_postgres::standing::{Finding, standing};
use anyhow::{Context, anyhow};
use time::OffsetDateTime;

use crate::cli::{Files, Remote, ReportWindow, StoryArgs};
use crate::client::{Client, time_query};
use crate::local::open_broker;
use crate::output::{self, remaining, when};
use crate::{Failure, Outcome};

/// `airlock report`: the summary of the window.
pub async fn summary(remote: &Remote, window: &ReportWindow) -> Outcome {
    let query = time_query(window.since, window.until, &[])?;
    let summary: Summary = Client::new(remote)?.get(&format!("/v1/reports/summary{query}")).await?;
    if remote.json {
        output::json(&summary);
    } else if window.csv {
        summary_csv(&summary)?;
    } else {
        print_summary(&summary);
    }
    Ok(())
}

/// `airlock report user NAME` and `airlock report resource NAME`.
pub async fn story(args: &StoryArgs, kind: &str) -> Outcome {
    let StoryArgs { name, window, statements, remote } = args;
    // Checked here so that the name can only ever be one path segment.
    let checked = match kind {
        "user" => airlock_core::ids::UserName::parse(name).map(|_| ()),
        _ => airlock_core::ids::ResourceName::parse(name).map(|_| ()),
    };
    checked.map_err(|e| anyhow!("{e}"))?;
    let query = time_query(window.since, window.until, &[("statements", statements.to_string())])?;
    let path = format!("/v1/reports/{kind}s/{name}{query}");
    let story: Story = Client::new(remote)?.get(&path).await?;
    if remote.json {
        output::json(&story);
    } else if window.csv {
        story_csv(&story)?;
    } else {
        print_story(&story);
    }
    Ok(())
}

/// A duration for people: `120 ms` below a second, else `2m 5s`.
fn took(ms: u64) -> String {
    if ms < 1000 { format!("{ms} ms") } else { remaining((ms / 1000) as i64) }
}

fn spread(spread: &Spread) -> String {
    match (spread.p50_ms, spread.p90_ms, spread.max_ms) {
        (Some(p50), Some(p90), Some(max)) => {
            format!("p50 {} · p90 {} · max {} (of {})", took(p50), took(p90), took(max), spread.count)
        }
        _ => "none in this window".to_owned(),
    }
}

fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".to_owned(), |s| format!("{:.0}%", s * 100.0))
}

fn access_table(title: &str, lines: &[AccessLine]) {
    println!("\n{title}");
    let mut t = output::table(&["name", "grants", "users", "resources", "held", "sessions", "statements", "refused"]);
    for l in lines {
        t.add_row(vec![
            l.name.clone(),
            l.grants.to_string(),
            l.users.to_string(),
            l.resources.to_string(),
            remaining(l.held_seconds as i64),
            l.sessions.to_string(),
            l.statements.to_string(),
            l.refused_statements.to_string(),
        ]);
    }
    println!("{t}");
}

fn grant_row(g: &GrantLine) -> Vec<String> {
    let ended = g.ended_at.map_or_else(|| "active".to_owned(), when);
    vec![g.grant.to_string(), g.holder.to_string(), g.resource.to_string(), g.role.to_string(), ended]
}

fn print_summary(s: &Summary) {
    let r = &s.requests;
    println!("access report {} → {}", when(s.window.since), when(s.window.until));
    println!("\nREQUESTS");
    println!(
        "{} made: {} auto-approved, {} approved by people, {} break-glass, {} denied, {} expired unreviewed, {} cancelled, {} pending, {} refused by policy",
        r.made,
        r.auto_approved,
        r.approved_by_people,
        r.break_glass,
        r.denied,
        r.expired_unreviewed,
        r.cancelled,
        r.pending,
        r.refused_by_policy
    );
    println!(
        "auto-approved {} of approvals · refused {} · challenged (sent to people) {}",
        percent(r.auto_approved_share),
        percent(r.refused_rate),
        percent(r.challenged_rate)
    );
    println!("time to approve: {}", spread(&s.time_to_approve));
    println!("time to revoke:  {}", spread(&s.time_to_revoke));
    access_table("BY RESOURCE", &s.by_resource);
    access_table("BY USER", &s.by_user);
    println!("\nBY DURATION GIVEN");
    let mut t = output::table(&["up to", "grants"]);
    for b in &s.by_duration {
        t.add_row(vec![b.up_to.clone(), b.grants.to_string()]);
    }
    println!("{t}");
    let d = &s.deviations;
    println!("\nDEVIATIONS");
    let refusals = d.guardrail_refusals.iter().map(|f| {
        vec![when(f.at), f.user.clone(), f.resource.clone(), f.grant.to_string(), f.text.clone(), f.refusal.clone()]
    });
    listing("statements refused by guardrails", &["at", "user", "resource", "grant", "statement", "refusal"], refusals);
    let grant_header = ["grant", "holder", "resource", "role", "ended"];
    listing("grants never used", &grant_header, d.unused_grants.iter().map(grant_row));
    let late = d.used_after_end.iter().map(|late| {
        let mut row = grant_row(&late.grant);
        row.extend([when(late.last_use_at), took(late.after_end_ms)]);
        row
    });
    listing("grants used after their end", &[&grant_header[..], &["last use", "after end"]].concat(), late);
    let unconfirmed = d.unconfirmed_revocations.iter().map(|u| {
        let mut row = grant_row(&u.grant);
        row.push(u.missing.join("; "));
        row
    });
    listing("revocations not confirmed", &[&grant_header[..], &["missing"]].concat(), unconfirmed);
    let unreviewed = d.breakglass_unreviewed.iter().map(|b| {
        let due = if b.overdue { format!("{} (overdue)", when(b.due_at)) } else { when(b.due_at) };
        vec![
            b.grant.clone(),
            b.holder.clone(),
            b.resource.clone(),
            b.role.clone(),
            when(b.started_at),
            due,
            b.reason.clone(),
        ]
    });
    let header = ["grant", "holder", "resource", "role", "started", "review due", "reason"];
    listing("break-glass grants lacking review", &header, unreviewed);
    let standing = s.standing.iter().map(|f| {
        vec![f.resource.clone(), f.database_role.clone(), f.kind.clone(), f.detail.clone(), when(f.observed_at)]
    });
    let header = ["resource", "database role", "finding", "detail", "observed"];
    listing("\nSTANDING PRIVILEGES (the connector's latest findings)", &header, standing);
}

/// `TITLE: N`, then the N rows as a table when there are any.
fn listing(title: &str, header: &[&str], rows: impl ExactSizeIterator<Item = Vec<String>>) {
    println!("{title}: {}", rows.len());
    if rows.len() > 0 {
        let mut table = output::table(header);
        for row in rows {
            table.add_row(row);
        }
        println!("{table}");
    }
}

/// A cell a spreadsheet will not run as a formula: recorded text (statements, reasons, comments)
/// is whatever users typed, so a leading `=`, `+`, `-`, `@`, tab or carriage return gets a `'`.
fn inert(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{cell}") } else { cell.to_owned() }
}

/// Writes CSV rows to standard output.
fn write_csv(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> Outcome {
    let mut out = csv::Writer::from_writer(std::io::stdout().lock());
    out.write_record(header).context("cannot write to standard output")?;
    for row in rows {
        out.write_record(row.iter().map(|cell| inert(cell))).context("cannot write to standard output")?;
    }
    out.flush().context("cannot write to standard output")?;
    Ok(())
}

fn json_of<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("report documents serialise")
}

fn summary_csv(s: &Summary) -> Outcome {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut add = |section: &str, subject: &str, measure: &str, value: String| {
        rows.push(vec![section.into(), subject.into(), measure.into(), value]);
    };
    add("window", "", "since", when(s.window.since));
    add("window", "", "until", when(s.window.until));
    // Each figure under its JSON name, so the CSV and `--json` never disagree.
    let mut figures = |section: &str, subject: &str, value: serde_json::Value| {
        for (measure, value) in value.as_object().into_iter().flatten().filter(|(name, _)| *name != "name") {
            add(section, subject, measure, if value.is_null() { String::new() } else { value.to_string() });
        }
    };
    figures("requests", "", json_of(&s.requests));
    figures("time_to_approve", "", json_of(&s.time_to_approve));
    figures("time_to_revoke", "", json_of(&s.time_to_revoke));
    for (section, lines) in [("by_resource", &s.by_resource), ("by_user", &s.by_user)] {
        for line in lines {
            figures(section, &line.name, json_of(line));
        }
    }
    for b in &s.by_duration {
        add("by_duration", &b.up_to, "grants", b.grants.to_string());
    }
    let d = &s.deviations;
    for f in &d.guardrail_refusals {
        add("guardrail_refusal", &f.grant.to_string(), &when(f.at), format!("{}: {} ({})", f.user, f.text, f.refusal));
    }
    for g in &d.unused_grants {
        add("unused_grant", &g.grant.to_string(), "holder", g.holder.to_string());
    }
    for late in &d.used_after_end {
        add("used_after_end", &late.grant.grant.to_string(), "after_end_ms", late.after_end_ms.to_string());
    }
    for u in &d.unconfirmed_revocations {
        add("unconfirmed_revocation", &u.grant.grant.to_string(), "missing", u.missing.join("; "));
    }
    for b in &d.breakglass_unreviewed {
        add(
            "breakglass_unreviewed",
            &b.grant,
            "review_due",
            format!("{}{}", when(b.due_at), if b.overdue { " (overdue)" } else { "" }),
        );
    }
    for f in &s.standing {
        add("standing", &f.resource, &f.database_role, format!("{}: {}", f.kind, f.detail));
    }
    write_csv(&["section", "subject", "measure", "value"], rows)
}

fn statement_summary(line: &StatementLine) -> String {
    match (&line.refused, &line.error) {
        (Some(refusal), _) => format!("REFUSED ({refusal})"),
        (None, Some(error)) => format!("error {error}"),
        (None, None) => format!(
            "{} rows, {}",
            line.rows.map_or_else(|| "-".to_owned(), |r| r.to_string()),
            took(line.duration_us.unwrap_or(0) / 1000)
        ),
    }
}

fn print_grant(g: &GrantStory) {
    let grant = &g.grant;
    println!("  grant {} {} → {}", grant.id, when(grant.starts_at), when(grant.ends_at));
    match (&g.ended_at, &grant.closure) {
        (Some(ended), Some(closure)) => println!(
            "    ended {} by {}{}",
            when(*ended),
            closure.by,
            closure.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
        ),
        (Some(ended), None) => println!("    ended {} at its end", when(*ended)),
        (None, _) => println!("    still active"),
    }
    if let Some(ms) = g.revoked_in_ms {
        println!("    access taken away {} after the end (sessions closed, database role dropped)", took(ms));
    }
    println!(
        "    {} credential(s), {} session(s), {} statement(s), {} refused",
        g.credentials_issued,
        g.sessions.len(),
        g.statements,
        g.refused_statements
    );
    for s in &g.sessions {
        let started = s.started_at.map_or_else(|| "?".to_owned(), when);
        let ended = s.ended_at.map_or_else(|| "no recorded end".to_owned(), when);
        let reason = s.end_reason.clone().unwrap_or_default();
        let client = s.client.clone().unwrap_or_default();
        println!("    session {} from {client}: {started} → {ended} {reason}", s.id);
        for line in &s.lines {
            println!("      {}  {}  [{}]", when(line.at), line.text, statement_summary(line));
        }
        let unlisted = (s.statements + s.refused_statements).saturating_sub(s.lines.len() as u64);
        if unlisted > 0 {
            println!("      … {unlisted} more (raise --statements, or use `airlock audit export`)");
        }
    }
}

pub(crate) fn print_story(story: &Story) {
    let s = &story.subject;
    println!("{} {}: {} → {}", s.kind, s.name, when(story.window.since), when(story.window.until));
    println!("\n{} request(s)", story.requests.len());
    for r in &story.requests {
        let q = &r.request;
        println!(
            "\nrequest {} by {}: {} on {} for {} ({})",
            q.id,
            q.requester,
            q.role,
            q.resource,
            q.duration,
            q.state.as_str()
        );
        println!("  asked {}: {}", when(q.created_at), q.reason);
        if let Some(incident) = &q.incident {
            println!("  for incident {} (severity {})", incident.id, incident.severity);
        }
        let how = match (q.auto_approved, q.break_glass) {
            (true, _) => "auto-approved by",
            (_, true) => "break-glass, granted at once by",
            _ => "allowed by",
        };
        println!(
            "  {how} {} (policies {})",
            q.decision.policies.join(", "),
            q.decision.policy_version.chars().take(12).collect::<String>()
        );
        for a in &q.approvals {
            println!(
                "  approved by {} {}{}",
                a.approver,
                when(a.at),
                a.comment.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
            );
        }
        if let Some(c) = &q.closure {
            println!(
                "  {} by {} {}{}",
                q.state.as_str(),
                c.by,
                when(c.at),
                c.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
            );
        }
        if let Some(g) = &r.grant {
            print_grant(g);
        }
    }
    if !story.refused_requests.is_empty() {
        println!("\nrefused by policy");
        for r in &story.refused_requests {
            println!("  {} {} asked {} on {}: {}", when(r.at), r.requester, r.role, r.resource, r.reason);
        }
    }
    if s.kind == "user" {
        println!("\nreviews given: {}", story.reviews_given.len());
        for r in &story.reviews_given {
            let comment = r.comment.as_ref().map(|c| format!(": {c}")).unwrap_or_default();
            println!("  {} {} {}'s {} on {}{comment}", when(r.at), r.verdict, r.requester, r.role, r.resource);
        }
    }
}

/// One row of a story's timeline.
struct Event<'a> {
    at: OffsetDateTime,
    event: &'a str,
    request: String,
    grant: String,
    session: String,
    actor: String,
    detail: String,
}

pub(crate) fn story_csv(story: &Story) -> Outcome {
    let mut events: Vec<Event> = Vec::new();
    for r in &story.requests {
        let q = &r.request;
        let event = |at, event, actor: &str, detail: String| Event {
            at,
            event,
            request: q.id.to_string(),
            grant: r.grant.as_ref().map(|g| g.grant.id.to_string()).unwrap_or_default(),
            session: String::new(),
            actor: actor.to_owned(),
            detail,
        };
        let asked = format!("{} on {} for {}: {}", q.role, q.resource, q.duration, q.reason);
        events.push(event(q.created_at, "request", q.requester.as_str(), asked));
        for a in &q.approvals {
            events.push(event(a.at, "approval", a.approver.as_str(), a.comment.clone().unwrap_or_default()));
        }
        if let Some(c) = &q.closure {
            events.push(event(c.at, q.state.as_str(), &c.by, c.reason.clone().unwrap_or_default()));
        }
        let Some(g) = &r.grant else { continue };
        events.push(event(g.grant.starts_at, "grant_started", "", format!("until {}", when(g.grant.ends_at))));
        if let Some(ended) = g.ended_at {
            let by = g.grant.closure.as_ref().map(|c| c.by.as_str()).unwrap_or("system");
            let taken = g.revoked_in_ms.map(|ms| format!("access taken away in {ms} ms")).unwrap_or_default();
            events.push(event(ended, "grant_ended", by, taken));
        }
        for s in &g.sessions {
            let in_session =
                |at, name, detail| Event { session: s.id.clone(), ..event(at, name, q.requester.as_str(), detail) };
            if let Some(at) = s.started_at {
                events.push(in_session(at, "session_started", s.client.clone().unwrap_or_default()));
            }
            for line in &s.lines {
                let name = if line.refused.is_some() { "statement_refused" } else { "statement" };
                events.push(in_session(line.at, name, format!("{} [{}]", line.text, statement_summary(line))));
            }
            if let Some(at) = s.ended_at {
                events.push(in_session(at, "session_ended", s.end_reason.clone().unwrap_or_default()));
            }
        }
    }
    for r in &story.refused_requests {
        let detail = format!("{} on {}: {}", r.role, r.resource, r.reason);
        let e = Event {
            at: r.at,
            event: "refused_by_policy",
            request: String::new(),
            grant: String::new(),
            session: String::new(),
            actor: r.requester.clone(),
            detail,
        };
        events.push(e);
    }
    events.sort_by_key(|e| e.at);
    let header = ["at", "event", "request", "grant", "session", "actor", "detail"];
    write_csv(
        &header,
        events
            .into_iter()
            .map(|e| vec![when(e.at), e.event.to_owned(), e.request, e.grant, e.session, e.actor, e.detail]),
    )
}

/// `airlock report standing`: on every catalog database with an address, and every throwaway
/// database a running `serve` started, the privileges that no live grant explains (read with the
/// connector's login, against the data directory's grants).
pub async fn standing_privileges(files: &Files, json: bool) -> Outcome {
    let (broker, _) = open_broker(files).await?;
    let catalog = &broker.policies().catalog;
    let mut targets = Target::from_catalog(catalog).map_err(|e| anyhow!("{e}"))?;
    targets.extend(crate::throwaway::running(catalog, &files.data_dir));
    if targets.is_empty() {
        return Err(anyhow!(
            "the catalog names no PostgreSQL database with an address, and no throwaway database of a running `airlock serve` is in the data directory"
        )
        .into());
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

#[cfg(test)]
mod tests {
    use super::inert;

    #[test]
    fn recorded_text_never_becomes_a_spreadsheet_formula() {
        assert_eq!(inert("=HYPERLINK(\"http://x\")"), "'=HYPERLINK(\"http://x\")");
        for cell in ["+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert!(inert(cell).starts_with('\''), "{cell}");
        }
        assert_eq!(inert("SELECT 1"), "SELECT 1");
        assert_eq!(inert("2026-11-23T10:00:00Z"), "2026-11-23T10:00:00Z");
    }
}
