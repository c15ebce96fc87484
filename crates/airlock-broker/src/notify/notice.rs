//! What a notice says: its kind, the ids it is about, where (resource, role, environment), one
//! summary line, and the facts and commands people act on. Notices are made from one commit's
//! audit records ([`Notices::of_commit`]) and, for `grant_ending`, from a live grant.
//!
//! Record details are read from their JSON tolerantly: a field that is missing or has another
//! shape is left out of the notice, never a panic, so a producer that changes a field degrades a
//! message rather than losing it. The records are those the store chained, so whatever
//! `[audit]` redacts is redacted here too.

use airlock_core::audit::{AuditEvent, EventKind, SYSTEM_ACTOR};
use airlock_core::catalog::Catalog;
use airlock_core::ids::ResourceName;
use airlock_core::lifecycle::Grant;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

/// What a notice is about; these names are used in routes and in payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// A request waits for review.
    ReviewNeeded,
    /// A request was approved, denied, cancelled or expired unreviewed.
    RequestDecided,
    GrantStarted,
    /// A grant ends within [`super::ending::WARN_BEFORE`].
    GrantEnding,
    /// A grant expired or was revoked.
    GrantEnded,
    /// Somebody took access without review, in an emergency.
    BreakglassUsed,
    /// A break-glass grant's review stayed open past its time.
    ReviewOverdue,
    IncidentOpened,
    IncidentClosed,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::ReviewNeeded => "review_needed",
            NoticeKind::RequestDecided => "request_decided",
            NoticeKind::GrantStarted => "grant_started",
            NoticeKind::GrantEnding => "grant_ending",
            NoticeKind::GrantEnded => "grant_ended",
            NoticeKind::BreakglassUsed => "breakglass_used",
            NoticeKind::ReviewOverdue => "review_overdue",
            NoticeKind::IncidentOpened => "incident_opened",
            NoticeKind::IncidentClosed => "incident_closed",
        }
    }

    /// The notice a record of `kind` may make. Asked of every committed record, so it only
    /// compares kinds; whether the record really makes a notice is decided later.
    pub fn of(kind: EventKind) -> Option<Self> {
        Some(match kind {
            EventKind::RequestCreated => NoticeKind::ReviewNeeded,
            EventKind::RequestApproved
            | EventKind::RequestDenied
            | EventKind::RequestCancelled
            | EventKind::RequestExpired => NoticeKind::RequestDecided,
            EventKind::GrantStarted => NoticeKind::GrantStarted,
            EventKind::GrantExpired | EventKind::GrantRevoked => NoticeKind::GrantEnded,
            EventKind::BreakGlassUsed => NoticeKind::BreakglassUsed,
            EventKind::BreakGlassReviewOverdue => NoticeKind::ReviewOverdue,
            EventKind::IncidentOpened => NoticeKind::IncidentOpened,
            EventKind::IncidentClosed => NoticeKind::IncidentClosed,
            _ => return None,
        })
    }
}

/// One thing people should hear about, before it is formatted for a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub kind: NoticeKind,
    /// When what it tells of happened.
    pub at: OffsetDateTime,
    /// Who caused it: a user name, or `system`.
    pub actor: Option<String>,
    /// The ids it is about, by what they name: `request`, `grant`, `review`, `incident`.
    pub subject: Vec<(&'static str, String)>,
    pub resource: Option<String>,
    /// The resource's environment, from the catalog.
    pub environment: Option<String>,
    pub role: Option<String>,
    /// One line saying what happened.
    pub summary: String,
    /// Where to look it up, under `[notify] base_url`.
    pub link: Option<String>,
    /// What else people act on, in the order shown.
    pub facts: Vec<Fact>,
    /// Commands that act on it, by what they do (`approve`, `deny`).
    pub commands: Vec<(&'static str, String)>,
}

/// One named value of a notice: `key` in JSON payloads, `label` in chat messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    pub key: &'static str,
    pub label: &'static str,
    pub value: FactValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FactValue {
    Text(String),
    Time(OffsetDateTime),
    Count(u64),
    Flag(bool),
    List(Vec<String>),
}

impl Notice {
    fn new(kind: NoticeKind, at: OffsetDateTime, actor: &str) -> Self {
        Self {
            kind,
            at,
            actor: Some(actor.to_owned()).filter(|a| !a.is_empty()),
            subject: Vec::new(),
            resource: None,
            environment: None,
            role: None,
            summary: String::new(),
            link: None,
            facts: Vec::new(),
            commands: Vec::new(),
        }
    }

    fn about(&mut self, what: &'static str, id: Option<String>) {
        if let Some(id) = id {
            self.subject.push((what, id));
        }
    }

    fn fact(&mut self, key: &'static str, label: &'static str, value: Option<FactValue>) {
        if let Some(value) = value {
            self.facts.push(Fact { key, label, value });
        }
    }

    fn text(&mut self, key: &'static str, label: &'static str, value: Option<String>) {
        self.fact(key, label, value.map(FactValue::Text));
    }

    fn time(&mut self, key: &'static str, label: &'static str, value: Option<OffsetDateTime>) {
        self.fact(key, label, value.map(FactValue::Time));
    }

    /// The id named `what` in the subject.
    pub fn id(&self, what: &str) -> Option<&str> {
        self.subject.iter().find(|(name, _)| *name == what).map(|(_, id)| id.as_str())
    }

    /// `write on demo-db (prod)`, or as much of it as is known.
    fn access(&self) -> String {
        let place = match (&self.resource, &self.environment) {
            (Some(resource), Some(environment)) => format!("{resource} ({environment})"),
            (Some(resource), None) => resource.clone(),
            (None, _) => String::new(),
        };
        match (&self.role, place.is_empty()) {
            (Some(role), false) => format!("{role} on {place}"),
            (Some(role), true) => role.clone(),
            (None, false) => format!("access to {place}"),
            (None, true) => "access".to_owned(),
        }
    }
}

/// Makes notices: knows the catalog (for environments) and where links point.
pub struct Notices<'a> {
    pub catalog: &'a Catalog,
    /// `[notify] base_url`, without a trailing slash.
    pub base_url: Option<&'a str>,
}

impl Notices<'_> {
    /// The notices one commit's records make, in the records' order.
    pub fn of_commit(&self, records: &[AuditEvent]) -> Vec<Notice> {
        records.iter().filter_map(|record| self.of_record(record, records)).collect()
    }

    fn of_record(&self, record: &AuditEvent, commit: &[AuditEvent]) -> Option<Notice> {
        let details = &record.details;
        Some(match record.kind {
            EventKind::RequestCreated if awaits_review(&details["request"], commit) => {
                self.review_needed(record, &details["request"])
            }
            EventKind::RequestApproved
            | EventKind::RequestDenied
            | EventKind::RequestCancelled
            | EventKind::RequestExpired => self.request_decided(record, &details["request"]),
            EventKind::GrantStarted => self.grant_started(record, &details["grant"]),
            EventKind::GrantExpired | EventKind::GrantRevoked => self.grant_ended(record, &details["grant"]),
            EventKind::BreakGlassUsed => self.breakglass_used(record, details),
            EventKind::BreakGlassReviewOverdue => self.review_overdue(record, &details["review"]),
            EventKind::IncidentOpened => self.incident(NoticeKind::IncidentOpened, record, &details["incident"]),
            EventKind::IncidentClosed => self.incident(NoticeKind::IncidentClosed, record, &details["incident"]),
            _ => return None,
        })
    }

    /// A notice of `kind` about `record`, placed on the resource and role it names.
    fn notice(&self, kind: NoticeKind, record: &AuditEvent, place: &Value) -> Notice {
        let mut notice = Notice::new(kind, record.at, &record.actor);
        self.place(&mut notice, text(place, "resource"), text(place, "role"));
        notice
    }

    fn place(&self, notice: &mut Notice, resource: Option<String>, role: Option<String>) {
        notice.environment = resource
            .as_deref()
            .and_then(|name| ResourceName::parse(name).ok())
            .and_then(|name| self.catalog.resource(&name))
            .map(|resource| resource.environment.clone());
        notice.resource = resource;
        notice.role = role;
    }

    /// Points the notice at its request, when there is a base URL and a plain id.
    fn link_request(&self, notice: &mut Notice) {
        if let (Some(base), Some(id)) = (self.base_url, notice.id("request").filter(|id| is_plain_id(id))) {
            notice.link = Some(format!("{base}/v1/requests/{id}"));
        }
    }

    fn review_needed(&self, record: &AuditEvent, request: &Value) -> Notice {
        let mut notice = self.notice(NoticeKind::ReviewNeeded, record, request);
        let id = text(request, "id");
        notice.about("request", id.clone());
        let requester = text(request, "requester");
        let duration = text(request, "duration");
        let for_how_long = duration.as_deref().map(|d| format!(" for {d}")).unwrap_or_default();
        notice.summary =
            format!("Review needed: {} asks for {}{for_how_long}", who(requester.as_deref()), notice.access());
        notice.text("requester", "Requester", requester);
        notice.text("duration", "Duration", duration);
        notice.text("reason", "Reason", text(request, "reason"));
        notice.text("incident", "Incident", text(&request["incident"], "id"));
        notice.fact("approvals_required", "Approvals needed", count(request, "required_approvals"));
        notice.time("expires_at", "Expires", time(request, "expires_at"));
        if let Some(id) = id.filter(|id| is_plain_id(id)) {
            notice.commands.push(("approve", format!("airlock approve {id}")));
            notice.commands.push(("deny", format!("airlock deny {id} --reason TEXT")));
        }
        self.link_request(&mut notice);
        notice
    }

    fn request_decided(&self, record: &AuditEvent, request: &Value) -> Notice {
        let mut notice = self.notice(NoticeKind::RequestDecided, record, request);
        notice.about("request", text(request, "id"));
        let requester = text(request, "requester");
        let whose = format!("{}'s request for {}", who(requester.as_deref()), notice.access());
        let closed_by = text(&request["closure"], "by");
        let auto_approved = request["auto_approved"].as_bool() == Some(true);
        let break_glass = request["break_glass"].as_bool() == Some(true);
        let approvers = strings(&request["approvals"], "approver");
        let approved_by = match request["decision"]["policies"][0].as_str().and_then(|p| p.strip_prefix("playbook:")) {
            Some(playbook) => format!("incident playbook {playbook}"),
            None => "policy".to_owned(),
        };
        notice.summary = match record.kind {
            EventKind::RequestApproved if auto_approved => {
                format!("{whose} was approved by {approved_by}, without review")
            }
            EventKind::RequestApproved if break_glass => {
                format!("{whose} was granted at once by break-glass; its review is owed")
            }
            EventKind::RequestApproved => format!("{} approved {whose}", who_all(&approvers)),
            EventKind::RequestDenied => format!("{} denied {whose}", who(closed_by.as_deref())),
            EventKind::RequestExpired => format!("{whose} expired unreviewed"),
            _ if closed_by.is_some() && closed_by == requester => {
                format!("{} cancelled their request for {}", who(requester.as_deref()), notice.access())
            }
            _ => format!("{} cancelled {whose}", who(closed_by.as_deref())),
        };
        notice.text("requester", "Requester", requester);
        notice.text("outcome", "Outcome", text(request, "state"));
        let decided_by =
            if record.kind == EventKind::RequestApproved { approvers } else { closed_by.into_iter().collect() };
        notice.fact("decided_by", "Decided by", non_empty(decided_by));
        notice.fact("auto_approved", "Approved by policy", auto_approved.then_some(FactValue::Flag(true)));
        notice.fact("comments", "Comments", non_empty(comments(&request["approvals"])));
        notice.text("decision_reason", "Why", text(&request["closure"], "reason"));
        notice.text("reason", "Request reason", text(request, "reason"));
        notice.text("incident", "Incident", text(&request["incident"], "id"));
        self.link_request(&mut notice);
        notice
    }

    fn grant_started(&self, record: &AuditEvent, grant: &Value) -> Notice {
        let mut notice = self.notice(NoticeKind::GrantStarted, record, grant);
        about_grant(&mut notice, grant);
        let holder = text(grant, "holder");
        let ends_at = time(grant, "ends_at");
        let until = ends_at.map(|at| format!(" until {}", super::format::clock_time(at))).unwrap_or_default();
        notice.summary = format!("{} now holds {}{until}", who(holder.as_deref()), notice.access());
        notice.text("holder", "Holder", holder);
        notice.time("starts_at", "Starts", time(grant, "starts_at"));
        notice.time("ends_at", "Ends", ends_at);
        self.link_request(&mut notice);
        notice
    }

    /// `grant_ending` for a live grant, at `now`.
    pub fn grant_ending(&self, grant: &Grant, now: OffsetDateTime) -> Notice {
        let mut notice = Notice::new(NoticeKind::GrantEnding, now, SYSTEM_ACTOR);
        self.place(&mut notice, Some(grant.resource.to_string()), Some(grant.role.to_string()));
        notice.about("grant", Some(grant.id.to_string()));
        notice.about("request", Some(grant.request_id.to_string()));
        let minutes = ((grant.ends_at - now).whole_seconds().max(0) as u64).div_ceil(60);
        let plural = if minutes == 1 { "" } else { "s" };
        notice.summary = format!(
            "{}'s {} ends in {minutes} minute{plural}, at {}",
            grant.holder,
            notice.access(),
            super::format::clock_time(grant.ends_at)
        );
        notice.text("holder", "Holder", Some(grant.holder.to_string()));
        notice.time("ends_at", "Ends", Some(grant.ends_at));
        notice.fact("minutes_left", "Minutes left", Some(FactValue::Count(minutes)));
        self.link_request(&mut notice);
        notice
    }

    fn grant_ended(&self, record: &AuditEvent, grant: &Value) -> Notice {
        let mut notice = self.notice(NoticeKind::GrantEnded, record, grant);
        about_grant(&mut notice, grant);
        let holder = text(grant, "holder");
        let ended_by = text(&grant["closure"], "by");
        notice.summary = match record.kind {
            EventKind::GrantExpired => format!("{}'s {} expired", who(holder.as_deref()), notice.access()),
            _ if ended_by.is_some() && ended_by == holder => {
                format!("{} gave up {}", who(holder.as_deref()), notice.access())
            }
            _ => format!("{} revoked {}'s {}", who(ended_by.as_deref()), who(holder.as_deref()), notice.access()),
        };
        notice.text("holder", "Holder", holder);
        notice.text("outcome", "Outcome", text(grant, "state"));
        notice.text("ended_by", "Ended by", ended_by);
        notice.text("end_reason", "Why", text(&grant["closure"], "reason"));
        notice.time("ended_at", "Ended", time(&grant["closure"], "at"));
        self.link_request(&mut notice);
        notice
    }

    fn breakglass_used(&self, record: &AuditEvent, details: &Value) -> Notice {
        let (request, grant, review) = (&details["request"], &details["grant"], &details["review"]);
        let mut notice = Notice::new(NoticeKind::BreakglassUsed, record.at, &record.actor);
        let resource = text(grant, "resource").or_else(|| text(request, "resource"));
        self.place(&mut notice, resource, text(grant, "role").or_else(|| text(request, "role")));
        notice.about("request", text(request, "id").or_else(|| text(grant, "request_id")));
        notice.about("grant", text(grant, "id"));
        notice.about("review", text(review, "id"));
        let holder = text(grant, "holder").or_else(|| text(request, "requester"));
        let ends_at = time(grant, "ends_at");
        let until = ends_at.map(|at| format!(" until {}", super::format::clock_time(at))).unwrap_or_default();
        notice.summary =
            format!("Break-glass: {} took {}{until}, without review", who(holder.as_deref()), notice.access());
        notice.text("holder", "Holder", holder);
        notice.text("reason", "Reason", text(request, "reason"));
        notice.text("incident", "Incident", text(&request["incident"], "id"));
        notice.time("ends_at", "Ends", ends_at);
        notice.time("review_due_at", "Review due", time(review, "due_at"));
        self.link_request(&mut notice);
        notice
    }

    fn review_overdue(&self, record: &AuditEvent, review: &Value) -> Notice {
        let mut notice = self.notice(NoticeKind::ReviewOverdue, record, review);
        notice.about("review", text(review, "id"));
        notice.about("grant", text(review, "grant"));
        notice.about("request", text(review, "request"));
        let holder = text(review, "holder");
        notice.summary =
            format!("Break-glass review overdue: {}'s {} is still unreviewed", who(holder.as_deref()), notice.access());
        notice.text("holder", "Holder", holder);
        notice.text("reason", "Reason", text(review, "reason"));
        notice.time("due_at", "Was due", time(review, "due_at"));
        self.link_request(&mut notice);
        notice
    }

    fn incident(&self, kind: NoticeKind, record: &AuditEvent, incident: &Value) -> Notice {
        let mut notice = Notice::new(kind, record.at, &record.actor);
        notice.about("incident", text(incident, "id"));
        let severity = text(incident, "severity");
        let title = text(incident, "title");
        let verb = if kind == NoticeKind::IncidentOpened { "opened" } else { "closed" };
        let severity_part = severity.as_deref().map(|s| format!(" (severity {s})")).unwrap_or_default();
        let title_part = title.as_deref().map(|t| format!(": {t}")).unwrap_or_default();
        notice.summary = format!("Incident {verb}{severity_part}{title_part}");
        notice.text("severity", "Severity", severity);
        notice.text("title", "Title", title);
        notice.fact("responders", "Responders", list(incident, "responders"));
        notice.text("opened_by", "Opened by", text(incident, "opened_by"));
        notice.time("opened_at", "Opened", time(incident, "opened_at"));
        notice.text("closed_by", "Closed by", text(incident, "closed_by"));
        notice.time("closed_at", "Closed", time(incident, "closed_at"));
        let ended = |key| record.details[key].as_array().map(|ids| FactValue::Count(ids.len() as u64));
        notice.fact("grants_revoked", "Grants revoked", ended("grants_revoked"));
        notice.fact("requests_withdrawn", "Requests withdrawn", ended("requests_withdrawn"));
        notice
    }
}

/// Whether a `request.created` record's request waits for review: it is pending, and the same
/// commit did not also decide it (an auto-approved request is recorded as created while pending,
/// then approved, in one commit).
fn awaits_review(request: &Value, commit: &[AuditEvent]) -> bool {
    let (Some("pending"), Some(id)) = (request["state"].as_str(), request["id"].as_str()) else { return false };
    !commit.iter().any(|record| {
        let other = &record.details["request"];
        other["id"].as_str() == Some(id) && other["state"].as_str().is_some_and(|state| state != "pending")
    })
}

fn about_grant(notice: &mut Notice, grant: &Value) {
    notice.about("grant", text(grant, "id"));
    notice.about("request", text(grant, "request_id"));
}

/// Ids that can go into links and commands as they are: letters, digits, `-` and `_`.
fn is_plain_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

fn who(name: Option<&str>) -> &str {
    name.unwrap_or("someone")
}

fn who_all(names: &[String]) -> String {
    if names.is_empty() { "someone".to_owned() } else { names.join(" and ") }
}

/// A string (or number, or boolean) field as text.
fn text(value: &Value, key: &str) -> Option<String> {
    scalar(&value[key])
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn time(value: &Value, key: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(value[key].as_str()?, &time::format_description::well_known::Rfc3339).ok()
}

fn count(value: &Value, key: &str) -> Option<FactValue> {
    value[key].as_u64().map(FactValue::Count)
}

/// A list of strings (or numbers); other elements are skipped.
fn list(value: &Value, key: &str) -> Option<FactValue> {
    non_empty(value[key].as_array()?.iter().filter_map(scalar).collect())
}

fn non_empty(items: Vec<String>) -> Option<FactValue> {
    (!items.is_empty()).then_some(FactValue::List(items))
}

/// `field` of each object in the array `value`.
fn strings(value: &Value, field: &str) -> Vec<String> {
    value.as_array().map(|items| items.iter().filter_map(|item| text(item, field)).collect()).unwrap_or_default()
}

/// `approver: comment` for each approval that has a comment.
fn comments(approvals: &Value) -> Vec<String> {
    let Some(approvals) = approvals.as_array() else { return Vec::new() };
    approvals
        .iter()
        .filter_map(|approval| {
            Some(format!("{}: {}", who(text(approval, "approver").as_deref()), text(approval, "comment")?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::ids::{GrantId, RequestId};
    use airlock_core::lifecycle::{AccessRequest, NewRequest};
    use airlock_core::policy::Decision;
    use airlock_core::values::{GrantDuration, Reason};
    use time::macros::datetime;
    use uuid::Uuid;

    const T0: OffsetDateTime = datetime!(2026-11-23 10:00 UTC);

    fn catalog() -> Catalog {
        Catalog::parse(
            "[[resource]]\nname = \"demo-db\"\nkind = \"postgres\"\nenvironment = \"prod\"\n\
             [resource.roles.read]\nmax_duration = \"1h\"\n",
        )
        .unwrap()
    }

    /// A request for demo-db read, 30 minutes, opened at T0; `auto`: approved by policy at once.
    fn open(auto: bool) -> (AccessRequest, Vec<AuditEvent>, Option<Grant>) {
        let new = NewRequest {
            id: RequestId::from_uuid(Uuid::from_u128(1)),
            requester: "alice".parse().unwrap(),
            resource: "demo-db".parse().unwrap(),
            role: "read".parse().unwrap(),
            duration: GrantDuration::parse("30m").unwrap(),
            reason: Reason::parse("INC-7").unwrap(),
            incident: None,
            source_ip: [10, 0, 0, 7].into(),
            mfa: false,
            device: None,
        };
        let catalog = catalog();
        let role = &catalog.resource(&new.resource).unwrap().roles[&new.role];
        let decision = |allowed| Decision { allowed, policies: Vec::new(), errors: Vec::new() };
        let grant_id = GrantId::from_uuid(Uuid::from_u128(2));
        let (request, outcome) =
            AccessRequest::open(new, role, &decision(true), &decision(auto), "v1", T0, time::Duration::HOUR, grant_id)
                .unwrap();
        (request, outcome.events, outcome.grant)
    }

    /// The kinds and summaries the notices of one commit have.
    #[track_caller]
    fn check(commit: &[AuditEvent], expected: &[(NoticeKind, &str)]) {
        let catalog = catalog();
        let notices = Notices { catalog: &catalog, base_url: None }.of_commit(commit);
        let seen: Vec<(NoticeKind, &str)> = notices.iter().map(|n| (n.kind, n.summary.as_str())).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn each_change_reads_as_one_line_that_says_who_and_what() {
        use NoticeKind::*;
        let (_, events, grant) = open(true);
        check(
            &events,
            &[
                (RequestDecided, "alice's request for read on demo-db (prod) was approved by policy, without review"),
                (GrantStarted, "alice now holds read on demo-db (prod) until 2026-11-23 10:30 UTC"),
            ],
        );
        let mut grant = grant.unwrap();
        check(
            &[grant.clone().revoke("alice", "done", T0).unwrap()],
            &[(GrantEnded, "alice gave up read on demo-db (prod)")],
        );
        let end = grant.ends_at;
        check(&[grant.expire(end).unwrap()], &[(GrantEnded, "alice's read on demo-db (prod) expired")]);

        let (request, events, _) = open(false);
        check(&events, &[(ReviewNeeded, "Review needed: alice asks for read on demo-db (prod) for 30m")]);
        let alice = "alice".parse().unwrap();
        check(
            &[request.clone().cancel(&alice, T0).unwrap()],
            &[(RequestDecided, "alice cancelled their request for read on demo-db (prod)")],
        );
        check(
            &[request.clone().withdraw("admin:root", "user disabled", T0).unwrap()],
            &[(RequestDecided, "admin:root cancelled alice's request for read on demo-db (prod)")],
        );
        check(
            &[request.clone().expire(request.expires_at).unwrap()],
            &[(RequestDecided, "alice's request for read on demo-db (prod) expired unreviewed")],
        );
    }

    #[test]
    fn records_of_other_kinds_and_odd_shapes_make_no_notice_or_a_partial_one() {
        let record = |kind, details| AuditEvent { kind, actor: String::new(), at: T0, details };
        check(&[record(EventKind::StatementExecuted, serde_json::json!({"sql": "SELECT 1"}))], &[]);
        check(&[record(EventKind::NotificationFailed, serde_json::json!({}))], &[]);
        check(&[record(EventKind::RequestCreated, serde_json::json!({"request": {"state": "pending"}}))], &[]);
        check(
            &[record(
                EventKind::GrantRevoked,
                serde_json::json!({"grant": {"role": "read", "closure": {"by": "bob"}}}),
            )],
            &[(NoticeKind::GrantEnded, "bob revoked someone's read")],
        );
        check(
            &[record(EventKind::IncidentOpened, serde_json::json!(null))],
            &[(NoticeKind::IncidentOpened, "Incident opened")],
        );
    }
}
