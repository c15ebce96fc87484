//! What Airlock measures, as Prometheus metrics: the names, what they mean, their histogram
//! buckets, and the recording done by the broker. Recording goes through the `metrics` facade:
//! where no recorder is installed (tests, CLI commands) it costs nothing; `airlock serve`
//! installs the Prometheus recorder and `GET /metrics` renders it (docs/metrics.md).
//!
//! Counters and histograms are recorded where things happen: request outcomes and time to
//! approve from each committed audit record ([`CommitMetrics`], told by the store), time to revoke
//! by the PostgreSQL connector as it drops a grant's role, live sessions by the gateway's
//! registry. Gauges that the database knows better (active grants, open break-glass reviews and
//! incidents,
//! the chain's head, the newest checkpoint) are read at each scrape ([`Broker::refresh_gauges`]).

use std::collections::HashMap;
use std::time::Duration;

use airlock_core::audit::{AuditEvent, EventKind, unix_ms};
use airlock_core::lifecycle::AccessRequest;
use airlock_store::{BROKER_CHAIN, ObserveCommits};
use serde::Deserialize;

use crate::{Broker, BrokerError};

/// The group whose members (besides auditors) may read `/metrics`: a scraper's service account.
pub const MONITORING_GROUP: &str = "monitoring";

/// Access requests by what became of them: `created`, `refused`, `auto_approved`, `approved`,
/// `break_glass`, `denied`, `cancelled`, `expired`.
pub const REQUESTS: &str = "airlock_requests_total";
/// Grants that ended, by how: `expired` or `revoked`.
pub const GRANTS_ENDED: &str = "airlock_grants_ended_total";
/// Seconds from a request to the approval that started its grant (people's approvals only).
pub const TIME_TO_APPROVE: &str = "airlock_time_to_approve_seconds";
/// Seconds from a grant's end to its database role dropped (its sessions on the target ended).
pub const TIME_TO_REVOKE: &str = "airlock_time_to_revoke_seconds";
/// Seconds to commit a transaction that appends audit records, the disk sync included.
pub const AUDIT_APPEND: &str = "airlock_audit_append_seconds";
/// Audit records appended, by kind.
pub const AUDIT_RECORDS: &str = "airlock_audit_records_total";
/// Grants active now.
pub const ACTIVE_GRANTS: &str = "airlock_active_grants";
/// Sessions open through this process's gateway now.
pub const GATEWAY_SESSIONS: &str = "airlock_gateway_sessions";
/// Connections the gateway turned away before their credential was read, by reason:
/// `pending_limit` (too many logging in at once), `startup_timeout` (no login in time),
/// `rate_limited` (a source with too many failed logins).
pub const GATEWAY_LOGINS_REFUSED: &str = "airlock_gateway_logins_refused_total";
/// The audit chain's last sequence number.
pub const AUDIT_HEAD: &str = "airlock_audit_head_seq";
/// Seconds since the newest signed checkpoint was made.
pub const CHECKPOINT_AGE: &str = "airlock_audit_checkpoint_age_seconds";
/// Records appended after the newest signed checkpoint.
pub const UNSIGNED_RECORDS: &str = "airlock_audit_unsigned_records";
/// Notifications by channel and outcome: `delivered`, `failed` (after every attempt), `dropped`
/// (the channel's queue was full).
pub const NOTIFICATIONS: &str = "airlock_notifications_total";
/// Audit records whose notices were dropped before routing, the notification queue being full.
pub const NOTIFICATION_QUEUE_DROPPED: &str = "airlock_notification_queue_dropped_total";
/// Break-glass reviews still open.
pub const REVIEWS_OPEN: &str = "airlock_breakglass_reviews_open";
/// Break-glass reviews still open past their due time (escalated).
pub const REVIEWS_OVERDUE: &str = "airlock_breakglass_reviews_overdue";

/// Failed passes of a background loop, by task: `scheduler`, `appender` (a group commit of
/// gateway and connector records), `checkpointer`, `checkpoint_sink`, `grant_ending`. Each loop
/// backs off while it fails, so this grows by a few a minute at most per task.
pub const BACKGROUND_FAILURES: &str = "airlock_background_failures_total";

/// 1 when the store's last write succeeded, 0 while writes fail for a storage fault (a full
/// disk, a read-only database, a lock held elsewhere, an I/O error).
pub const STORE_WRITABLE: &str = "airlock_store_writable";

/// Incidents open now.
pub const INCIDENTS_OPEN: &str = "airlock_incidents_open";

/// Each histogram's bucket bounds, in seconds.
pub const BUCKETS: [(&str, &[f64]); 3] = [
    (TIME_TO_APPROVE, &[10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14_400.0, 86_400.0]),
    (TIME_TO_REVOKE, &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
    (AUDIT_APPEND, &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
];

/// Registers every metric's help text with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, "Access requests by what became of them (label outcome).");
    describe_counter!(GRANTS_ENDED, "Grants that ended, by how (label how: expired or revoked).");
    describe_histogram!(
        TIME_TO_APPROVE,
        metrics::Unit::Seconds,
        "From a request to the approval that started its grant (people only)."
    );
    describe_histogram!(
        TIME_TO_REVOKE,
        metrics::Unit::Seconds,
        "From a grant's end to its database role dropped and its target sessions ended."
    );
    describe_histogram!(
        AUDIT_APPEND,
        metrics::Unit::Seconds,
        "Commit time of transactions that append audit records, disk sync included."
    );
    describe_counter!(AUDIT_RECORDS, "Audit records appended, by kind.");
    describe_gauge!(ACTIVE_GRANTS, "Grants active now.");
    describe_gauge!(GATEWAY_SESSIONS, "Sessions open through this process's gateway now.");
    describe_counter!(
        GATEWAY_LOGINS_REFUSED,
        "Connections the gateway turned away before reading a credential, by reason (pending_limit, startup_timeout, rate_limited)."
    );
    describe_gauge!(AUDIT_HEAD, "The audit chain's last sequence number.");
    describe_gauge!(CHECKPOINT_AGE, metrics::Unit::Seconds, "Time since the newest signed checkpoint was made.");
    describe_gauge!(UNSIGNED_RECORDS, "Audit records appended after the newest signed checkpoint.");
    describe_counter!(NOTIFICATIONS, "Notifications by channel and outcome: delivered, failed or dropped.");
    describe_counter!(
        NOTIFICATION_QUEUE_DROPPED,
        "Audit records whose notices were dropped before routing because the notification queue was full."
    );
    describe_gauge!(REVIEWS_OPEN, "Break-glass reviews still open.");
    describe_gauge!(REVIEWS_OVERDUE, "Break-glass reviews still open past their due time.");
    describe_gauge!(INCIDENTS_OPEN, "Incidents open now.");
    describe_counter!(
        BACKGROUND_FAILURES,
        "Failed passes of a background loop, by task; each loop backs off while it fails."
    );
    describe_gauge!(STORE_WRITABLE, "1 when the store's last write succeeded, 0 while it fails for a storage fault.");
}

/// Records what each committed audit record says (the store tells it of every commit).
#[derive(Debug)]
pub(crate) struct CommitMetrics;

impl ObserveCommits for CommitMetrics {
    fn committed(&self, events: &[AuditEvent], took: Duration) {
        metrics::histogram!(AUDIT_APPEND).record(took.as_secs_f64());
        // A gateway's batch is mostly one kind: one counter update per kind, not per record.
        let mut by_kind: HashMap<EventKind, u64> = HashMap::new();
        for event in events {
            *by_kind.entry(event.kind).or_default() += 1;
            match event.kind {
                EventKind::GrantExpired => metrics::counter!(GRANTS_ENDED, "how" => "expired").increment(1),
                EventKind::GrantRevoked => metrics::counter!(GRANTS_ENDED, "how" => "revoked").increment(1),
                _ => {
                    if let Some(outcome) = request_outcome(event) {
                        metrics::counter!(REQUESTS, "outcome" => outcome).increment(1);
                    }
                }
            }
        }
        for (kind, count) in by_kind {
            metrics::counter!(AUDIT_RECORDS, "kind" => kind.as_str()).increment(count);
        }
    }
}

/// What became of a request, if `event` says.
fn request_outcome(event: &AuditEvent) -> Option<&'static str> {
    Some(match event.kind {
        EventKind::RequestCreated => "created",
        EventKind::RequestRefused => "refused",
        EventKind::RequestApproved => approved(event),
        EventKind::RequestDenied => "denied",
        EventKind::RequestCancelled => "cancelled",
        EventKind::RequestExpired => "expired",
        _ => return None,
    })
}

/// `approved`, `auto_approved` or `break_glass`; a people's approval also records its time to
/// approve.
fn approved(event: &AuditEvent) -> &'static str {
    let Ok(request) = AccessRequest::deserialize(&event.details["request"]) else { return "approved" };
    if request.auto_approved {
        return "auto_approved";
    }
    if request.break_glass {
        return "break_glass";
    }
    if let Some(last) = request.approvals.last() {
        metrics::histogram!(TIME_TO_APPROVE).record((last.at - request.created_at).as_seconds_f64().max(0.0));
    }
    "approved"
}

/// Records how long after its grant's end a database role was dropped.
pub fn revoked_after(seconds: f64) {
    metrics::histogram!(TIME_TO_REVOKE).record(seconds.max(0.0));
}

/// Counts a session opened through the gateway; the returned guard counts it closed.
pub fn session_opened() -> SessionGauge {
    metrics::gauge!(GATEWAY_SESSIONS).increment(1.0);
    SessionGauge
}

/// Counts a connection the gateway turned away before reading its credential; `reason` is one
/// of those [`GATEWAY_LOGINS_REFUSED`] names.
pub fn gateway_login_refused(reason: &'static str) {
    metrics::counter!(GATEWAY_LOGINS_REFUSED, "reason" => reason).increment(1);
}

/// Held while a gateway session is open.
#[derive(Debug)]
pub struct SessionGauge;

impl Drop for SessionGauge {
    fn drop(&mut self) {
        metrics::gauge!(GATEWAY_SESSIONS).decrement(1.0);
    }
}

impl Broker {
    /// Sets the gauges the database knows: active grants, the chain's head, the newest checkpoint.
    pub async fn refresh_gauges(&self) -> Result<(), BrokerError> {
        let store = self.store();
        // Probes (at most once a second) while the last write failed, so the gauge clears even
        // when nothing else writes.
        metrics::gauge!(STORE_WRITABLE).set(if store.writable_now().await.is_ok() { 1.0 } else { 0.0 });
        metrics::gauge!(ACTIVE_GRANTS).set(store.active_grant_count().await? as f64);
        let reviews = store.open_reviews(self.clock().now()).await?;
        metrics::gauge!(REVIEWS_OPEN).set(reviews.open as f64);
        metrics::gauge!(REVIEWS_OVERDUE).set(reviews.overdue as f64);
        metrics::gauge!(INCIDENTS_OPEN).set(store.open_incident_count().await? as f64);
        let head = store.audit_head(BROKER_CHAIN).await?;
        metrics::gauge!(AUDIT_HEAD).set(head.seq as f64);
        if let Some(checkpoint) = store.latest_checkpoint(BROKER_CHAIN).await? {
            let age_ms = unix_ms(self.clock().now()) - checkpoint.at_ms;
            metrics::gauge!(CHECKPOINT_AGE).set(age_ms.max(0) as f64 / 1000.0);
            metrics::gauge!(UNSIGNED_RECORDS).set((head.seq - checkpoint.seq).max(0) as f64);
        } else {
            metrics::gauge!(UNSIGNED_RECORDS).set(head.seq as f64);
        }
        Ok(())
    }
}
