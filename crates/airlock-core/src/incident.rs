//! Incidents and the playbooks that arm responders while one is open.
//!
//! An incident is opened (by a person or an incident tool's webhook) with an id of its own, a
//! severity and a title, and later closed. Requests may name an open incident: the policies then
//! see it (`context.incident`), a playbook may approve the request on its own authority, and
//! every grant given under the incident ends when it closes.
//!
//! A playbook stands in for the `request` and `auto_approve` permits, never for a `forbid`: a
//! decision that a forbid made, or that failed to evaluate, stays a refusal
//! ([`Playbook::stand_in`]). As in [`crate::lifecycle`], transitions take `now` and return the
//! audit event that describes them.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{AuditEvent, EventKind};
use crate::catalog::Catalog;
use crate::ids::{GroupName, PlaybookName, ResourceName, RoleName, UserName};
use crate::policy::{Decision, Principal};
use crate::values::GrantDuration;

pub use crate::ids::IncidentId;

/// How severe an incident is: 0 to 5, lower is more severe (SEV0/P1 first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Severity(u8);

/// Why a severity or a title was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncidentValueError {
    #[error("severity {0} is out of range: use 0 to 5, lower is more severe")]
    Severity(u8),
    #[error("an incident needs a title")]
    EmptyTitle,
    #[error("the title is longer than 200 characters")]
    LongTitle,
}

impl Severity {
    pub const LEAST_SEVERE: u8 = 5;

    pub fn new(level: u8) -> Result<Self, IncidentValueError> {
        if level <= Self::LEAST_SEVERE { Ok(Self(level)) } else { Err(IncidentValueError::Severity(level)) }
    }

    pub fn level(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for Severity {
    type Error = IncidentValueError;
    fn try_from(level: u8) -> Result<Self, IncidentValueError> {
        Self::new(level)
    }
}

impl From<Severity> for u8 {
    fn from(severity: Severity) -> u8 {
        severity.0
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A trimmed, non-empty title of at most 200 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Title(String);

impl Title {
    pub fn parse(text: &str) -> Result<Self, IncidentValueError> {
        let trimmed = text.trim();
        match trimmed.chars().count() {
            0 => Err(IncidentValueError::EmptyTitle),
            201.. => Err(IncidentValueError::LongTitle),
            _ => Ok(Self(trimmed.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Title {
    type Error = IncidentValueError;
    fn try_from(value: String) -> Result<Self, IncidentValueError> {
        Self::parse(&value)
    }
}

impl From<Title> for String {
    fn from(title: Title) -> String {
        title.0
    }
}

/// Where an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    Open,
    Closed,
}

impl IncidentState {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Open => "open",
            IncidentState::Closed => "closed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Open, Self::Closed].into_iter().find(|s| s.as_str() == text)
    }
}

/// What opening an incident says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIncident {
    pub id: IncidentId,
    pub severity: Severity,
    pub title: Title,
    /// People asked to respond; playbooks that say so arm them whatever their groups.
    pub responders: Vec<UserName>,
}

impl NewIncident {
    /// The responders as an incident keeps them: sorted, each once.
    fn sorted_responders(&self) -> Vec<UserName> {
        let mut responders = self.responders.clone();
        responders.sort();
        responders.dedup();
        responders
    }
}

/// An incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: IncidentId,
    pub severity: Severity,
    pub title: Title,
    pub responders: Vec<UserName>,
    pub state: IncidentState,
    pub opened_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    pub closed_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub closed_at: Option<OffsetDateTime>,
}

/// What a request records of the incident it names, and what the policies see of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentRef {
    pub id: IncidentId,
    pub severity: Severity,
}

/// Why an incident could not be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("incident `{0}` is closed already")]
pub struct AlreadyClosed(pub IncidentId);

impl Incident {
    /// Opens an incident on `actor`'s word; returns it with its `incident.opened` record.
    pub fn open(new: NewIncident, actor: &str, now: OffsetDateTime) -> (Self, AuditEvent) {
        let incident = Self {
            responders: new.sorted_responders(),
            id: new.id,
            severity: new.severity,
            title: new.title,
            state: IncidentState::Open,
            opened_by: actor.to_owned(),
            opened_at: now,
            closed_by: None,
            closed_at: None,
        };
        let event = incident.event(EventKind::IncidentOpened, actor, now, json!({}));
        (incident, event)
    }

    /// Whether opening `new` again would change nothing: an incident tool may send the same
    /// webhook twice.
    pub fn is_same_as(&self, new: &NewIncident) -> bool {
        self.state == IncidentState::Open
            && self.severity == new.severity
            && self.title == new.title
            && self.responders == new.sorted_responders()
    }

    /// Closes the incident. `ended` says what closing it ended (grants revoked, requests
    /// withdrawn) and is recorded with it.
    pub fn close(
        &mut self,
        actor: &str,
        now: OffsetDateTime,
        ended: serde_json::Value,
    ) -> Result<AuditEvent, AlreadyClosed> {
        if self.state == IncidentState::Closed {
            return Err(AlreadyClosed(self.id.clone()));
        }
        self.state = IncidentState::Closed;
        self.closed_by = Some(actor.to_owned());
        self.closed_at = Some(now);
        Ok(self.event(EventKind::IncidentClosed, actor, now, ended))
    }

    pub fn reference(&self) -> IncidentRef {
        IncidentRef { id: self.id.clone(), severity: self.severity }
    }

    pub fn is_open(&self) -> bool {
        self.state == IncidentState::Open
    }

    fn event(&self, kind: EventKind, actor: &str, at: OffsetDateTime, ended: serde_json::Value) -> AuditEvent {
        let mut details = json!({ "incident": self });
        if let serde_json::Value::Object(ended) = ended {
            details.as_object_mut().expect("an object").extend(ended);
        }
        AuditEvent { kind, actor: actor.to_owned(), at, details }
    }
}

/// One role on one resource a playbook hands out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookAccess {
    pub resource: ResourceName,
    pub role: RoleName,
}

/// Access pre-approved for responders while an incident of some severity is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    pub name: PlaybookName,
    /// Incidents of this severity or more severe (a lower number) arm the playbook.
    pub max_severity: Severity,
    /// Members of these groups are armed.
    #[serde(default)]
    pub groups: Vec<GroupName>,
    /// The incident's named responders are armed too.
    #[serde(default = "yes")]
    pub responders: bool,
    /// Each grant lasts at most this long (and never past the incident's close).
    pub max: GrantDuration,
    pub access: Vec<PlaybookAccess>,
}

fn yes() -> bool {
    true
}

/// Why the playbooks do not fit the catalog, or one another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaybookError {
    #[error("playbook `{0}` is defined twice")]
    Duplicate(PlaybookName),
    #[error("playbook `{0}` arms nobody: give it groups, or leave `responders` true")]
    NoOne(PlaybookName),
    #[error("playbook `{0}` lists no access")]
    NoAccess(PlaybookName),
    #[error("playbook `{playbook}` names resource `{resource}`, which is not in the catalog")]
    UnknownResource { playbook: PlaybookName, resource: ResourceName },
    #[error("playbook `{playbook}` names role `{role}`, which resource `{resource}` does not have")]
    UnknownRole { playbook: PlaybookName, resource: ResourceName, role: RoleName },
}

/// Checks `playbooks` against `catalog`: unique names, somebody armed, access that exists.
pub fn check_playbooks(playbooks: &[Playbook], catalog: &Catalog) -> Result<(), PlaybookError> {
    let mut names = std::collections::HashSet::new();
    for playbook in playbooks {
        let name = &playbook.name;
        if !names.insert(name) {
            return Err(PlaybookError::Duplicate(name.clone()));
        }
        if playbook.groups.is_empty() && !playbook.responders {
            return Err(PlaybookError::NoOne(name.clone()));
        }
        if playbook.access.is_empty() {
            return Err(PlaybookError::NoAccess(name.clone()));
        }
        for access in &playbook.access {
            let resource = catalog.resource(&access.resource).ok_or_else(|| PlaybookError::UnknownResource {
                playbook: name.clone(),
                resource: access.resource.clone(),
            })?;
            if !resource.roles.contains_key(&access.role) {
                return Err(PlaybookError::UnknownRole {
                    playbook: name.clone(),
                    resource: access.resource.clone(),
                    role: access.role.clone(),
                });
            }
        }
    }
    Ok(())
}

impl Playbook {
    /// Whether this playbook arms `principal` for `role` on `resource` while `incident` is open.
    pub fn covers(&self, incident: &Incident, principal: &Principal, resource: &ResourceName, role: &RoleName) -> bool {
        incident.is_open()
            && incident.severity <= self.max_severity
            && self.access.iter().any(|a| &a.resource == resource && &a.role == role)
            && ((self.responders && incident.responders.contains(&principal.name))
                || principal.groups.iter().any(|g| self.groups.contains(g)))
    }

    /// The decision with this playbook standing in for a missing permit. A forbid, or a policy
    /// that failed to evaluate, still refuses: a playbook pre-approves, it does not overrule.
    pub fn stand_in(&self, decision: Decision) -> Decision {
        let default_deny = !decision.allowed && decision.policies.is_empty() && decision.errors.is_empty();
        if default_deny {
            Decision { allowed: true, policies: vec![format!("playbook:{}", self.name)], errors: Vec::new() }
        } else {
            decision
        }
    }
}

/// The first of `playbooks` that arms `principal` for `role` on `resource` under `incident`.
pub fn arming<'a>(
    playbooks: &'a [Playbook],
    incident: &Incident,
    principal: &Principal,
    resource: &ResourceName,
    role: &RoleName,
) -> Option<&'a Playbook> {
    playbooks.iter().find(|p| p.covers(incident, principal, resource, role))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: OffsetDateTime = time::macros::datetime!(2026-11-23 10:00 UTC);

    fn name<T: std::str::FromStr>(text: &str) -> T
    where
        T::Err: fmt::Debug,
    {
        text.parse().unwrap()
    }

    fn incident(severity: u8, responders: &[&str]) -> Incident {
        let new = NewIncident {
            id: name("INC-7"),
            severity: Severity::new(severity).unwrap(),
            title: Title::parse("orders down").unwrap(),
            responders: responders.iter().map(|r| name(r)).collect(),
        };
        Incident::open(new, "pagerduty", T0).0
    }

    fn principal(user: &str, groups: &[&str]) -> Principal {
        Principal { name: name(user), groups: groups.iter().map(|g| name(g)).collect(), service: false }
    }

    fn playbook(responders: bool, groups: &[&str]) -> Playbook {
        Playbook {
            name: name("db-outage"),
            max_severity: Severity::new(2).unwrap(),
            groups: groups.iter().map(|g| name(g)).collect(),
            responders,
            max: GrantDuration::from_secs(7200).unwrap(),
            access: vec![PlaybookAccess { resource: name("db"), role: name("write") }],
        }
    }

    #[test]
    fn values_are_checked() {
        assert_eq!(
            Severity::new(6).unwrap_err().to_string(),
            "severity 6 is out of range: use 0 to 5, lower is more severe"
        );
        assert_eq!(Title::parse("  ").unwrap_err(), IncidentValueError::EmptyTitle);
        assert_eq!(Title::parse(&"x".repeat(201)).unwrap_err(), IncidentValueError::LongTitle);
        assert!(serde_json::from_str::<Severity>("9").is_err());
    }

    #[test]
    fn playbooks_arm_responders_and_groups_for_severe_enough_open_incidents() {
        let (db, write, read) = (name("db"), name("write"), name("read"));
        let sev1 = incident(1, &["carol"]);
        let by_responder = playbook(true, &[]);
        assert!(by_responder.covers(&sev1, &principal("carol", &[]), &db, &write));
        assert!(!by_responder.covers(&sev1, &principal("dave", &["oncall"]), &db, &write), "not a responder");
        assert!(!by_responder.covers(&sev1, &principal("carol", &[]), &db, &read), "role not listed");
        assert!(!by_responder.covers(&incident(3, &["carol"]), &principal("carol", &[]), &db, &write), "too mild");
        assert!(by_responder.covers(&incident(2, &["carol"]), &principal("carol", &[]), &db, &write), "≤ is inclusive");
        let by_group = playbook(false, &["oncall"]);
        assert!(by_group.covers(&sev1, &principal("dave", &["oncall"]), &db, &write));
        assert!(!by_group.covers(&sev1, &principal("carol", &[]), &db, &write), "responders not armed");
        let mut closed = sev1.clone();
        closed.close("bob", T0, json!({})).unwrap();
        assert!(!by_responder.covers(&closed, &principal("carol", &[]), &db, &write), "closed incidents arm nobody");
        let books = [by_group, by_responder];
        assert_eq!(arming(&books, &sev1, &principal("carol", &[]), &db, &write).map(|p| p.responders), Some(true));
    }

    #[test]
    fn a_playbook_stands_in_for_a_missing_permit_but_never_for_a_forbid_or_an_error() {
        let book = playbook(true, &[]);
        let none = Decision { allowed: false, policies: vec![], errors: vec![] };
        assert_eq!(book.stand_in(none).policies, vec!["playbook:db-outage".to_owned()]);
        let forbid = Decision { allowed: false, policies: vec!["no-prod".into()], errors: vec![] };
        assert!(!book.stand_in(forbid).allowed);
        let broken = Decision { allowed: false, policies: vec![], errors: vec!["overflow".into()] };
        assert!(!book.stand_in(broken).allowed);
        let permit = Decision { allowed: true, policies: vec!["eng".into()], errors: vec![] };
        assert_eq!(book.stand_in(permit.clone()), permit, "a permit keeps its own name");
    }

    #[test]
    fn opening_twice_is_recognised_and_closing_twice_refused() {
        let mut open = incident(1, &["carol", "bob", "carol"]);
        assert_eq!(open.responders, vec![name::<UserName>("bob"), name("carol")]);
        let again = NewIncident {
            id: name("INC-7"),
            severity: Severity::new(1).unwrap(),
            title: Title::parse(" orders down ").unwrap(),
            responders: vec![name("carol"), name("bob")],
        };
        assert!(open.is_same_as(&again));
        assert!(!open.is_same_as(&NewIncident { severity: Severity::new(2).unwrap(), ..again.clone() }));
        let closed = open.close("bob", T0, json!({ "grants_revoked": 2 })).unwrap();
        assert_eq!(closed.kind, EventKind::IncidentClosed);
        assert_eq!(closed.details["grants_revoked"], 2);
        assert_eq!(closed.details["incident"]["closed_by"], "bob");
        assert_eq!(open.close("bob", T0, json!({})), Err(AlreadyClosed(name("INC-7"))));
        assert!(!open.is_same_as(&again), "a closed incident is not the same as an open one");
    }

    #[test]
    fn playbooks_are_checked_against_the_catalog() {
        let catalog = Catalog::parse(
            "[[resource]]\nname = \"db\"\nkind = \"postgres\"\nenvironment = \"prod\"\n[resource.roles.write]\n",
        )
        .unwrap();
        assert_eq!(check_playbooks(&[playbook(true, &[])], &catalog), Ok(()));
        let twice = [playbook(true, &[]), playbook(true, &[])];
        assert_eq!(check_playbooks(&twice, &catalog), Err(PlaybookError::Duplicate(name("db-outage"))));
        assert_eq!(check_playbooks(&[playbook(false, &[])], &catalog), Err(PlaybookError::NoOne(name("db-outage"))));
        let mut wrong = playbook(true, &[]);
        wrong.access[0].role = name("admin");
        assert!(matches!(check_playbooks(&[wrong], &catalog), Err(PlaybookError::UnknownRole { .. })));
        let mut wrong = playbook(true, &[]);
        wrong.access[0].resource = name("other");
        assert!(matches!(check_playbooks(&[wrong], &catalog), Err(PlaybookError::UnknownResource { .. })));
    }
}
