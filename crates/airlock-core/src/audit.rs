//! Audit events and the hash chain.
//!
//! Each record stores the hash of the record before it; its own hash covers its sequence number,
//! chain id, the previous hash, time, kind, actor and the exact JSON text of its details. A
//! record's time is when it was appended ([`chain_appended`]), never before the record it
//! follows; the event's own time (a gateway's statement retried late, say) is in its details as
//! [`EVENT_AT`]. Records from before that change carry their event's time and no `event_at`. Editing,
//! deleting, inserting or reordering a record breaks the chain at that record, and
//! [`export::Verifier`] names it. The details are hashed as stored text, so the check never depends on how a JSON
//! library orders keys. [`checkpoint`] signs heads of the chain; [`export`] is the JSON Lines
//! format an auditor takes away and verifies offline; [`redaction`] removes sensitive values
//! before a record is chained, keeping salted commitments to them.

pub mod checkpoint;
pub mod export;
pub mod redaction;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// The hash before the first record of a chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, as a stable dotted name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "user.added")]
    UserAdded,
    #[serde(rename = "user.disabled")]
    UserDisabled,
    /// An administrator lifted the bar a rejected break-glass review put on a user.
    #[serde(rename = "user.breakglass_restored")]
    UserBreakGlassRestored,
    #[serde(rename = "request.created")]
    RequestCreated,
    #[serde(rename = "request.refused")]
    RequestRefused,
    #[serde(rename = "request.approval_added")]
    ApprovalAdded,
    #[serde(rename = "request.approved")]
    RequestApproved,
    #[serde(rename = "request.denied")]
    RequestDenied,
    #[serde(rename = "request.cancelled")]
    RequestCancelled,
    #[serde(rename = "request.expired")]
    RequestExpired,
    #[serde(rename = "grant.started")]
    GrantStarted,
    #[serde(rename = "grant.expired")]
    GrantExpired,
    #[serde(rename = "grant.revoked")]
    GrantRevoked,
    /// A target's per-grant login role was created.
    #[serde(rename = "target.role_created")]
    TargetRoleCreated,
    /// A target's per-grant login role was dropped and its sessions ended.
    #[serde(rename = "target.role_dropped")]
    TargetRoleDropped,
    /// The connector could not bring a target in line with the live grants.
    #[serde(rename = "target.failed")]
    TargetFailed,
    /// The connector is about to create a grant's login role (its outcome follows:
    /// `target.role_created`, `target.failed` or `target.role_unchanged`).
    #[serde(rename = "target.role_creating")]
    TargetRoleCreating,
    /// The connector is about to end a grant's login role (its outcome follows:
    /// `target.role_dropped`, `target.failed` or `target.role_unchanged`).
    #[serde(rename = "target.role_dropping")]
    TargetRoleDropping,
    /// A recorded intent to create or drop a role was not carried out: its grant ended first, or
    /// the connector stopped before it (found at its next pass).
    #[serde(rename = "target.role_unchanged")]
    TargetRoleUnchanged,
    /// The standing privileges the connector found on a target, recorded when they change.
    #[serde(rename = "target.standing")]
    TargetStanding,
    /// A gateway credential was issued for a grant (the token itself is never recorded).
    #[serde(rename = "credential.issued")]
    CredentialIssued,
    /// A session through the gateway began under a grant.
    #[serde(rename = "session.started")]
    SessionStarted,
    /// A connection to the gateway was refused before a session began.
    #[serde(rename = "session.refused")]
    SessionRefused,
    /// A session through the gateway ended, and why.
    #[serde(rename = "session.ended")]
    SessionEnded,
    /// A statement is about to go to the target: recorded (durably, unless the resource says
    /// `audit = "after"`) before it is sent, so a crash can lose its answer but not its record.
    #[serde(rename = "statement.started")]
    StatementStarted,
    /// A statement ran through the gateway (its outcome: rows, duration, error).
    #[serde(rename = "statement.executed")]
    StatementExecuted,
    /// The gateway's guardrails refused a statement; it never reached the target.
    #[serde(rename = "statement.refused")]
    StatementRefused,
    /// A break-glass grant started at once, without review; its review is now owed.
    #[serde(rename = "breakglass.used")]
    BreakGlassUsed,
    /// Somebody other than the holder accepted or rejected a break-glass grant.
    #[serde(rename = "breakglass.reviewed")]
    BreakGlassReviewed,
    /// A break-glass review stayed open past its time and was escalated.
    #[serde(rename = "breakglass.review_overdue")]
    BreakGlassReviewOverdue,
    /// An incident was opened: playbooks may now pre-approve its responders.
    #[serde(rename = "incident.opened")]
    IncidentOpened,
    /// An incident was closed; every grant tied to it ended with it.
    #[serde(rename = "incident.closed")]
    IncidentClosed,
    /// An API token was made for a user (its secret is never recorded).
    #[serde(rename = "token.created")]
    TokenCreated,
    /// An API token was replaced by a new one; the old one stopped working at once.
    #[serde(rename = "token.rotated")]
    TokenRotated,
    /// An API token was revoked.
    #[serde(rename = "token.revoked")]
    TokenRevoked,
    /// A user logged in and a broker session began.
    #[serde(rename = "login.started")]
    LoginStarted,
    /// A broker session ended: logout, inactivity, its time, a disabled user, a reused refresh.
    #[serde(rename = "login.ended")]
    LoginEnded,
    /// The identity provider said a user's groups changed (at login or refresh).
    #[serde(rename = "user.groups_changed")]
    UserGroupsChanged,
    /// A user confirmed a TOTP authenticator (its seed is never recorded).
    #[serde(rename = "mfa.enrolled")]
    MfaEnrolled,
    /// A user proved a second factor for their session.
    #[serde(rename = "mfa.verified")]
    MfaVerified,
    /// A second factor was refused: a wrong or replayed code, or too many attempts.
    #[serde(rename = "mfa.refused")]
    MfaRefused,
    /// An administrator removed a user's authenticator (a lost phone); they must enroll again.
    #[serde(rename = "mfa.reset")]
    MfaReset,
    /// A user registered a device key; it is not trusted until approved.
    #[serde(rename = "device.enrolled")]
    DeviceEnrolled,
    /// An administrator approved a device: it is now trusted.
    #[serde(rename = "device.approved")]
    DeviceApproved,
    /// A device was disabled; every grant bound to it ended.
    #[serde(rename = "device.disabled")]
    DeviceDisabled,
    /// `serve` put a policy bundle of a new version in force, at start or on SIGHUP: its version,
    /// the one before, and the grants it no longer allowed, revoked in the same commit.
    #[serde(rename = "policy.loaded")]
    PolicyLoaded,
    /// A notification reached its channel.
    #[serde(rename = "notification.delivered")]
    NotificationDelivered,
    /// A notification could not be delivered, after every retry.
    #[serde(rename = "notification.failed")]
    NotificationFailed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::UserAdded => "user.added",
            EventKind::UserDisabled => "user.disabled",
            EventKind::UserBreakGlassRestored => "user.breakglass_restored",
            EventKind::RequestCreated => "request.created",
            EventKind::RequestRefused => "request.refused",
            EventKind::ApprovalAdded => "request.approval_added",
            EventKind::RequestApproved => "request.approved",
            EventKind::RequestDenied => "request.denied",
            EventKind::RequestCancelled => "request.cancelled",
            EventKind::RequestExpired => "request.expired",
            EventKind::GrantStarted => "grant.started",
            EventKind::GrantExpired => "grant.expired",
            EventKind::GrantRevoked => "grant.revoked",
            EventKind::TargetRoleCreated => "target.role_created",
            EventKind::TargetRoleDropped => "target.role_dropped",
            EventKind::TargetFailed => "target.failed",
            EventKind::TargetRoleCreating => "target.role_creating",
            EventKind::TargetRoleDropping => "target.role_dropping",
            EventKind::TargetRoleUnchanged => "target.role_unchanged",
            EventKind::TargetStanding => "target.standing",
            EventKind::CredentialIssued => "credential.issued",
            EventKind::SessionStarted => "session.started",
            EventKind::SessionRefused => "session.refused",
            EventKind::SessionEnded => "session.ended",
            EventKind::StatementStarted => "statement.started",
            EventKind::StatementExecuted => "statement.executed",
            EventKind::StatementRefused => "statement.refused",
            EventKind::BreakGlassUsed => "breakglass.used",
            EventKind::BreakGlassReviewed => "breakglass.reviewed",
            EventKind::BreakGlassReviewOverdue => "breakglass.review_overdue",
            EventKind::IncidentOpened => "incident.opened",
            EventKind::IncidentClosed => "incident.closed",
            EventKind::TokenCreated => "token.created",
            EventKind::TokenRotated => "token.rotated",
            EventKind::TokenRevoked => "token.revoked",
            EventKind::LoginStarted => "login.started",
            EventKind::LoginEnded => "login.ended",
            EventKind::UserGroupsChanged => "user.groups_changed",
            EventKind::MfaEnrolled => "mfa.enrolled",
            EventKind::MfaVerified => "mfa.verified",
            EventKind::MfaRefused => "mfa.refused",
            EventKind::MfaReset => "mfa.reset",
            EventKind::DeviceEnrolled => "device.enrolled",
            EventKind::DeviceApproved => "device.approved",
            EventKind::DeviceDisabled => "device.disabled",
            EventKind::PolicyLoaded => "policy.loaded",
            EventKind::NotificationDelivered => "notification.delivered",
            EventKind::NotificationFailed => "notification.failed",
        }
    }
}

/// The actor of scheduled changes (expiry).
pub const SYSTEM_ACTOR: &str = "system";

/// One thing that happened, before it is chained.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub kind: EventKind,
    /// Who caused it: a user name, or [`SYSTEM_ACTOR`].
    pub actor: String,
    pub at: OffsetDateTime,
    /// Everything the record must prove: ids, resource, role, reason, window, approvals, decision.
    pub details: serde_json::Value,
}

/// One stored record of a chain, as read back from storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainRecord {
    pub seq: i64,
    pub chain_id: String,
    pub prev_hash: String,
    pub hash: String,
    /// Unix time in milliseconds.
    pub at_ms: i64,
    pub kind: String,
    pub actor: String,
    /// The details, as the exact JSON text that was hashed.
    pub details: String,
}

/// Where a chain ends: the next record links to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
}

impl ChainHead {
    pub fn genesis() -> Self {
        Self { seq: 0, hash: GENESIS_HASH.to_owned() }
    }
}

/// Unix milliseconds of a time (the precision every stored time has).
pub fn unix_ms(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The time of Unix milliseconds (as records store it); out-of-range values read as the epoch.
pub fn time_of_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A record's SHA-256, as lowercase hex digits (what records store).
type HexDigest = [u8; 64];

fn record_hash(
    seq: i64,
    chain_id: &str,
    prev_hash: &str,
    at_ms: i64,
    kind: &str,
    actor: &str,
    details: &str,
) -> HexDigest {
    let mut hasher = Sha256::new();
    hasher.update(seq.to_be_bytes());
    hasher.update(at_ms.to_be_bytes());
    for part in [chain_id, prev_hash, kind, actor, details] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let mut hex = [0u8; 64];
    hex::encode_to_slice(hasher.finalize(), &mut hex).expect("64 hex digits hold 32 bytes");
    hex
}

fn hex_str(digest: &HexDigest) -> &str {
    std::str::from_utf8(digest).expect("hex digits are ASCII")
}

/// Links `event` after `head` in chain `chain_id`, recorded at the event's own time.
pub fn chain(head: &ChainHead, chain_id: &str, event: &AuditEvent) -> ChainRecord {
    link(head, chain_id, event, unix_ms(event.at))
}

/// Where a record appended later than its event happened keeps the event's own time: this key
/// of its details, as RFC 3339 with milliseconds.
pub const EVENT_AT: &str = "event_at";

/// Links `event` after `head` in chain `chain_id` as appended at `at_ms` (Unix milliseconds:
/// the record's time), first putting the event's own time into its details under [`EVENT_AT`]
/// (when they are a JSON object, as every event's are). The hash covers both, as it covers
/// every record's time and details.
pub fn chain_appended(head: &ChainHead, chain_id: &str, event: &mut AuditEvent, at_ms: i64) -> ChainRecord {
    if let serde_json::Value::Object(details) = &mut event.details {
        let own = time_of_ms(unix_ms(event.at));
        let text = own.format(&time::format_description::well_known::Rfc3339).expect("a time since 1970 formats");
        details.insert(EVENT_AT.to_owned(), serde_json::Value::String(text));
    }
    link(head, chain_id, event, at_ms)
}

fn link(head: &ChainHead, chain_id: &str, event: &AuditEvent, at_ms: i64) -> ChainRecord {
    let seq = head.seq + 1;
    let kind = event.kind.as_str();
    let details = event.details.to_string();
    let hash = hex_str(&record_hash(seq, chain_id, &head.hash, at_ms, kind, &event.actor, &details)).to_owned();
    ChainRecord {
        seq,
        chain_id: chain_id.to_owned(),
        prev_hash: head.hash.clone(),
        hash,
        at_ms,
        kind: kind.to_owned(),
        actor: event.actor.clone(),
        details,
    }
}
