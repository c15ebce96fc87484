//! Audit events and the hash chain.
//!
//! Each record stores the hash of the record before it; its own hash covers its sequence number,
//! chain id, the previous hash, time, kind, actor and the exact JSON text of its details. Editing,
//! deleting, inserting or reordering a record breaks the chain at that record, and [`verify`]
//! names it. The details are hashed as stored text, so the check never depends on how a JSON
//! library orders keys. [`checkpoint`] signs heads of the chain; [`export`] is the JSON Lines
//! format an auditor takes away and verifies offline.

pub mod checkpoint;
pub mod export;

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
    /// A statement ran through the gateway (its outcome: rows, duration, error).
    #[serde(rename = "statement.executed")]
    StatementExecuted,
    /// The gateway's guardrails refused a statement; it never reached the target.
    #[serde(rename = "statement.refused")]
    StatementRefused,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::UserAdded => "user.added",
            EventKind::UserDisabled => "user.disabled",
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
            EventKind::CredentialIssued => "credential.issued",
            EventKind::SessionStarted => "session.started",
            EventKind::SessionRefused => "session.refused",
            EventKind::SessionEnded => "session.ended",
            EventKind::StatementExecuted => "statement.executed",
            EventKind::StatementRefused => "statement.refused",
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

fn record_hash(
    seq: i64,
    chain_id: &str,
    prev_hash: &str,
    at_ms: i64,
    kind: &str,
    actor: &str,
    details: &str,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(seq.to_be_bytes());
    hasher.update(at_ms.to_be_bytes());
    for part in [chain_id, prev_hash, kind, actor, details] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Links `event` after `head` in chain `chain_id`, returning the record to store.
pub fn chain(head: &ChainHead, chain_id: &str, event: &AuditEvent) -> ChainRecord {
    let seq = head.seq + 1;
    let at_ms = unix_ms(event.at);
    let kind = event.kind.as_str();
    let details = event.details.to_string();
    let hash = record_hash(seq, chain_id, &head.hash, at_ms, kind, &event.actor, &details);
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

/// What is wrong with a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("record {seq}: its contents do not match its hash (edited)")]
    Edited { seq: i64 },
    #[error("record {seq}: expected sequence number {expected} (a record was deleted, inserted or moved)")]
    Sequence { seq: i64, expected: i64 },
    #[error("record {seq}: it does not link to the record before it (a record was deleted, inserted or moved)")]
    Link { seq: i64 },
}

impl ChainError {
    pub fn seq(&self) -> i64 {
        match self {
            ChainError::Edited { seq } | ChainError::Sequence { seq, .. } | ChainError::Link { seq } => *seq,
        }
    }
}

/// Checks records of one chain in stored order, from the first; returns the head when intact.
pub fn verify<'a>(records: impl IntoIterator<Item = &'a ChainRecord>) -> Result<ChainHead, ChainError> {
    let mut head = ChainHead::genesis();
    for record in records {
        let expected = head.seq + 1;
        if record.seq != expected {
            return Err(ChainError::Sequence { seq: record.seq, expected });
        }
        let recomputed = record_hash(
            record.seq,
            &record.chain_id,
            &record.prev_hash,
            record.at_ms,
            &record.kind,
            &record.actor,
            &record.details,
        );
        if recomputed != record.hash {
            return Err(ChainError::Edited { seq: record.seq });
        }
        if record.prev_hash != head.hash {
            return Err(ChainError::Link { seq: record.seq });
        }
        head = ChainHead { seq: record.seq, hash: record.hash.clone() };
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain_of(n: i64) -> Vec<ChainRecord> {
        let mut head = ChainHead::genesis();
        (0..n)
            .map(|i| {
                let event = AuditEvent {
                    kind: EventKind::RequestCreated,
                    actor: "alice".into(),
                    at: OffsetDateTime::from_unix_timestamp(1_800_000_000 + i).unwrap(),
                    details: json!({"n": i}),
                };
                let record = chain(&head, "broker", &event);
                head = ChainHead { seq: record.seq, hash: record.hash.clone() };
                record
            })
            .collect()
    }

    #[track_caller]
    fn check(records: &[ChainRecord], expect: Result<i64, &str>) {
        let got = verify(records).map(|h| h.seq).map_err(|e| e.to_string());
        assert_eq!(got, expect.map_err(str::to_owned));
    }

    #[test]
    fn intact_chain_verifies() {
        check(&chain_of(5), Ok(5));
        check(&[], Ok(0));
    }

    #[test]
    fn every_tampering_names_its_record() {
        let mut edited = chain_of(5);
        edited[2].details = r#"{"n":99}"#.into();
        check(&edited, Err("record 3: its contents do not match its hash (edited)"));

        let mut deleted = chain_of(5);
        deleted.remove(1);
        check(&deleted, Err("record 3: expected sequence number 2 (a record was deleted, inserted or moved)"));

        let mut reordered = chain_of(5);
        reordered.swap(1, 2);
        check(&reordered, Err("record 3: expected sequence number 2 (a record was deleted, inserted or moved)"));

        // Renumbering after a deletion still breaks the link.
        let mut renumbered = chain_of(5);
        renumbered.remove(1);
        for (i, r) in renumbered.iter_mut().enumerate() {
            r.seq = i as i64 + 1;
        }
        check(&renumbered, Err("record 2: its contents do not match its hash (edited)"));

        // A forged record with a correct hash of its own still does not link.
        let mut forged = chain_of(3);
        let fake = chain(
            &ChainHead { seq: 1, hash: "f".repeat(64) },
            "broker",
            &AuditEvent {
                kind: EventKind::GrantRevoked,
                actor: "mallory".into(),
                at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
                details: json!({}),
            },
        );
        forged[1] = fake;
        check(
            &forged,
            Err("record 2: it does not link to the record before it (a record was deleted, inserted or moved)"),
        );
    }
}
