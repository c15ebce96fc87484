//! What the audit records about a grant say happened under it: credentials issued, the target's
//! per-grant role created and dropped, gateway sessions with their statements, and statements the
//! guardrails refused.
//!
//! Records are read as stored (details already redacted); one that does not have the fields its
//! kind promises is skipped rather than guessed at, and verification is where such a record is
//! judged.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::audit::time_of_ms;
use crate::audit::{ChainRecord, EventKind};
use crate::ids::GrantId;

/// The kinds of record an [`Activity`] reads, besides executed statements (which are counted,
/// or listed up to a limit, by the caller).
pub const GRANT_RECORD_KINDS: [EventKind; 6] = [
    EventKind::CredentialIssued,
    EventKind::TargetRoleCreated,
    EventKind::TargetRoleDropped,
    EventKind::SessionStarted,
    EventKind::SessionEnded,
    EventKind::StatementRefused,
];

/// A statement, run or refused, as the story of a session tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementLine {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub seq: i64,
    /// The statement as recorded (literals redacted when configured; long ones cut).
    pub text: String,
    pub rows: Option<u64>,
    pub duration_us: Option<u64>,
    /// The database's error, `SQLSTATE: message`.
    pub error: Option<String>,
    /// Why the guardrails refused it; a refused statement never reached the database.
    pub refused: Option<String>,
}

/// One gateway session under a grant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionActivity {
    pub id: String,
    pub client: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// `None` when no end was recorded.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    /// Why it ended: `client_left`, `grant_ended`, `idle`, …
    pub end_reason: Option<String>,
    pub statements: u64,
    pub refused_statements: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_statement_at: Option<OffsetDateTime>,
    /// The statements themselves, when listed (see [`Activity::add_statement`]).
    pub lines: Vec<StatementLine>,
}

/// Everything recorded under one grant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GrantActivity {
    pub credentials_issued: u64,
    pub role_created_at: Option<OffsetDateTime>,
    pub role_dropped_at: Option<OffsetDateTime>,
    /// By session id; ids are UUIDv7, so this is also the order they began in.
    pub sessions: BTreeMap<String, SessionActivity>,
}

impl GrantActivity {
    pub fn statements(&self) -> u64 {
        self.sessions.values().map(|s| s.statements).sum()
    }

    pub fn refused_statements(&self) -> u64 {
        self.sessions.values().map(|s| s.refused_statements).sum()
    }

    /// The last moment anything happened in one of its sessions.
    pub fn last_use(&self) -> Option<OffsetDateTime> {
        self.sessions.values().flat_map(|s| [s.ended_at, s.last_statement_at, s.started_at]).flatten().max()
    }
}

/// How an ended grant's revocation went: the time it took, or what is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Milliseconds from the end to the last session closed and the database role dropped.
    Took(u64),
    /// What was never recorded: a session's end, the role's drop.
    Missing(Vec<String>),
    /// No session and no database role: nothing had to be taken away.
    NothingToTakeAway,
}

impl GrantActivity {
    /// How the access given under the grant was taken away after it `ended`.
    pub fn revocation(&self, ended: OffsetDateTime) -> Revocation {
        let mut missing = Vec::new();
        let mut done: Option<OffsetDateTime> = None;
        for session in self.sessions.values().filter(|s| s.started_at.is_some_and(|at| at <= ended)) {
            match session.ended_at {
                Some(at) => done = done.max(Some(at)),
                None => missing.push(format!("session {} has no recorded end", session.id)),
            }
        }
        if self.role_created_at.is_some() {
            match self.role_dropped_at {
                Some(at) => done = done.max(Some(at)),
                None => missing.push("its database role was never dropped".to_owned()),
            }
        }
        match (missing.is_empty(), done) {
            (false, _) => Revocation::Missing(missing),
            (true, Some(at)) => Revocation::Took(crate::report::millis_between(ended, at)),
            (true, None) => Revocation::NothingToTakeAway,
        }
    }
}

/// A statement refused by the guardrails, as a deviation names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub seq: i64,
    pub user: String,
    pub grant: GrantId,
    pub resource: String,
    pub session: String,
    pub text: String,
    pub refusal: String,
}

/// The activity of many grants, built from their records.
#[derive(Debug, Default)]
pub struct Activity {
    pub grants: HashMap<GrantId, GrantActivity>,
    /// Guardrail refusals, in the order they were read.
    pub refusals: Vec<Refusal>,
}

fn text(details: &Value, field: &str) -> Option<String> {
    details.get(field).and_then(Value::as_str).map(str::to_owned)
}

/// The details of a record about a grant, and that grant.
fn grant_details(record: &ChainRecord) -> Option<(GrantId, Value)> {
    let details: Value = serde_json::from_str(&record.details).ok()?;
    let grant = details.get("grant")?.as_str()?.parse().ok()?;
    Some((grant, details))
}

impl Activity {
    /// Reads one record of a [`GRANT_RECORD_KINDS`] kind, or an executed statement to list.
    pub fn add(&mut self, record: &ChainRecord) {
        let Some((grant, details)) = grant_details(record) else { return };
        let when = time_of_ms(record.at_ms);
        let activity = self.grants.entry(grant).or_default();
        let session_id = text(&details, "session").unwrap_or_default();
        match record.kind.as_str() {
            "credential.issued" => activity.credentials_issued += 1,
            "target.role_created" => activity.role_created_at = Some(when),
            "target.role_dropped" => activity.role_dropped_at = Some(when),
            "session.started" => {
                let session = session_of(activity, &session_id);
                session.started_at = Some(when);
                session.client = text(&details, "client");
            }
            "session.ended" => {
                let session = session_of(activity, &session_id);
                session.ended_at = Some(when);
                session.end_reason = text(&details, "reason");
            }
            "statement.refused" => {
                let refusal = text(&details, "refusal").unwrap_or_default();
                let session = session_of(activity, &session_id);
                session.refused_statements += 1;
                session.lines.push(line(record, &details, when, Some(refusal.clone())));
                self.refusals.push(Refusal {
                    at: when,
                    seq: record.seq,
                    user: record.actor.clone(),
                    grant,
                    resource: text(&details, "resource").unwrap_or_default(),
                    session: session.id.clone(),
                    text: text(&details, "text").unwrap_or_default(),
                    refusal,
                });
            }
            "statement.executed" => session_of(activity, &session_id).lines.push(line(record, &details, when, None)),
            _ => {}
        }
    }

    /// Adds what the store counted of a session's executed statements.
    pub fn add_statements(&mut self, grant: GrantId, session: &str, count: u64, last_at: OffsetDateTime) {
        let session = session_of(self.grants.entry(grant).or_default(), session);
        session.statements += count;
        session.last_statement_at = session.last_statement_at.max(Some(last_at));
    }
}

fn session_of<'a>(activity: &'a mut GrantActivity, id: &str) -> &'a mut SessionActivity {
    activity
        .sessions
        .entry(id.to_owned())
        .or_insert_with(|| SessionActivity { id: id.to_owned(), ..Default::default() })
}

fn line(record: &ChainRecord, details: &Value, at: OffsetDateTime, refused: Option<String>) -> StatementLine {
    let error = details.get("error").map(|e| {
        let field = |name| e.get(name).and_then(Value::as_str).unwrap_or_default();
        format!("{}: {}", field("sqlstate"), field("message"))
    });
    StatementLine {
        at,
        seq: record.seq,
        text: text(details, "text").unwrap_or_default(),
        rows: details.get("rows").and_then(Value::as_u64),
        duration_us: details.get("duration_us").and_then(Value::as_u64),
        error,
        refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: i64, at_ms: i64, kind: &str, details: Value) -> ChainRecord {
        ChainRecord {
            seq,
            chain_id: "broker".into(),
            prev_hash: String::new(),
            hash: String::new(),
            at_ms,
            kind: kind.into(),
            actor: "alice".into(),
            details: details.to_string(),
        }
    }

    #[test]
    fn records_become_sessions_statements_and_role_changes() {
        let grant: GrantId = "0190aaaa-0000-7000-8000-000000000001".parse().unwrap();
        let g = grant.to_string();
        let mut activity = Activity::default();
        for r in [
            record(1, 1_000, "target.role_created", serde_json::json!({ "grant": g })),
            record(
                2,
                2_000,
                "session.started",
                serde_json::json!({ "grant": g, "session": "s1", "client": "10.0.0.1:5" }),
            ),
            record(
                3,
                3_000,
                "statement.refused",
                serde_json::json!({ "grant": g, "session": "s1", "resource": "db",
                "text": "ALTER SYSTEM SET x = 1", "refusal": "ALTER SYSTEM is not allowed" }),
            ),
            record(
                4,
                3_500,
                "statement.executed",
                serde_json::json!({ "grant": g, "session": "s1", "text": "SELECT 1",
                "rows": 1, "duration_us": 40, "error": { "sqlstate": "22012", "message": "division by zero" } }),
            ),
            record(
                5,
                4_000,
                "session.ended",
                serde_json::json!({ "grant": g, "session": "s1", "reason": "grant_ended" }),
            ),
            record(6, 4_100, "target.role_dropped", serde_json::json!({ "grant": g })),
            record(7, 4_200, "session.ended", serde_json::json!({ "grant": { "id": g } })),
            record(8, 4_300, "session.ended", serde_json::json!("not an object")),
        ] {
            activity.add(&r);
        }
        activity.add_statements(grant, "s1", 3, time_of_ms(3_900));
        let a = &activity.grants[&grant];
        assert_eq!(a.role_created_at.map(|t| t.unix_timestamp()), Some(1));
        assert_eq!(a.role_dropped_at.map(|t| t.unix_timestamp()), Some(4));
        assert_eq!(a.sessions.len(), 1, "records without a grant id are skipped");
        let s = &a.sessions["s1"];
        assert_eq!((s.statements, s.refused_statements), (3, 1));
        assert_eq!(s.end_reason.as_deref(), Some("grant_ended"));
        assert_eq!(s.client.as_deref(), Some("10.0.0.1:5"));
        assert_eq!(s.lines[0].refused.as_deref(), Some("ALTER SYSTEM is not allowed"));
        assert_eq!(s.lines[1].error.as_deref(), Some("22012: division by zero"));
        assert_eq!(a.last_use().map(|t| t.unix_timestamp()), Some(4));
        assert_eq!(activity.refusals.len(), 1);
        assert_eq!(activity.refusals[0].text, "ALTER SYSTEM SET x = 1");
    }
}
