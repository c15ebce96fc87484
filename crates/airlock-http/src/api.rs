//! The JSON documents of the API. Field names are stable: scripts read them through `--json`.

use airlock_broker::devices::Device;
use airlock_core::audit::ChainRecord;
use airlock_core::breakglass::{Review, Verdict};
use airlock_core::incident::Incident;
use airlock_core::lifecycle::{AccessRequest, Approval, Closure, Grant};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// An error: what was wrong, and a stable code.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// One of `bad_input`, `unauthenticated`, `forbidden`, `mfa_required` (prove a second factor
    /// with `POST /v1/mfa/verify` and try again), `not_found`, `conflict`, `rate_limited`,
    /// `internal`; and at sign-in, `expired` (start again), `unavailable` (too many sign-ins under
    /// way) and `bad_gateway` (the identity provider failed).
    pub code: String,
    pub error: String,
}

/// Who is asking.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub name: String,
    pub groups: Vec<String>,
    pub service: bool,
    pub source_ip: String,
    /// When this token last proved a second factor.
    #[serde(with = "time::serde::rfc3339::option")]
    pub mfa_at: Option<OffsetDateTime>,
    /// Whether that proof is still fresh (`context.mfa` in policies).
    pub mfa_fresh: bool,
    /// The trusted device this call was proved from (`context.device.trusted` in policies).
    pub device: Option<String>,
}

/// A device to enroll: its name, its public key, and the key's signature proving it is held.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollDeviceBody {
    pub name: String,
    /// The Ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// The key's signature of `airlock-device-enrollment-v1\nUSER\nPUBLIC_KEY`, 128 hex digits.
    pub signature: String,
}

/// An enrolled device.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    pub id: String,
    pub user: String,
    pub name: String,
    pub public_key: String,
    /// `pending` (waiting for an administrator), `trusted`, or `disabled`.
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub approved_at: Option<OffsetDateTime>,
    pub approved_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<OffsetDateTime>,
    pub disabled_reason: Option<String>,
}

/// Whose devices to list.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DevicesQuery {
    /// Every user's devices (auditors only); by default the caller's own.
    #[serde(default)]
    pub all: bool,
}

/// A device disabled, and what that ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DisabledDeviceView {
    pub device: DeviceView,
    pub requests_cancelled: usize,
    pub grants_revoked: usize,
}

/// A TOTP code from the caller's authenticator app.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeBody {
    pub code: String,
}

/// A new enrollment: add it to an authenticator app, then confirm with a first code.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentView {
    /// `otpauth://totp/…`, holding the seed: shown this once.
    pub otpauth_uri: String,
}

/// A proved second factor.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MfaView {
    /// The second factor counts as fresh until then.
    #[serde(with = "time::serde::rfc3339")]
    pub fresh_until: OffsetDateTime,
}

/// A new access request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// A resource of the catalog.
    pub resource: String,
    /// One of the resource's roles.
    pub role: String,
    /// How long, e.g. `90s`, `15m`, `2h`: at least 1s and at most the role's maximum.
    pub duration: String,
    /// Why: required, shown to reviewers and kept in the audit chain.
    pub reason: String,
    /// The id of an open incident the request is for: policies see it, a playbook may approve it
    /// at once, and its grant ends when the incident closes.
    pub incident: Option<String>,
}

/// Emergency access, granted at once when a `break_glass` policy allows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassBody {
    pub resource: String,
    pub role: String,
    /// Why: required, shown to the reviewer and kept in the audit chain.
    pub reason: String,
    /// How long, e.g. `30m`; default and most: the role's `break_glass_max`.
    pub duration: Option<String>,
    /// The id of an open incident the emergency is part of: the grant ends when it closes.
    pub incident: Option<String>,
}

/// An incident to open. Unknown fields are refused: an incident tool's webhook payload is mapped
/// to these fields (by the tool's own templating, or a small relay) before it is sent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentBody {
    /// The incident's own id, e.g. `INC-1234`: letters, digits, `-`, `_`, `.`, at most 64.
    pub id: String,
    /// 0 to 5, lower is more severe.
    pub severity: u8,
    pub title: String,
    /// Users asked to respond: playbooks that say so arm them whatever their groups.
    #[serde(default)]
    pub responders: Vec<String>,
}

/// An incident.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IncidentView {
    pub id: String,
    pub severity: u8,
    pub title: String,
    pub responders: Vec<String>,
    /// `open` or `closed`.
    pub state: String,
    pub opened_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    pub closed_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub closed_at: Option<OffsetDateTime>,
}

/// A closed incident, and what closing it ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClosedIncidentView {
    pub incident: IncidentView,
    /// Grants made for the incident that closing it revoked.
    pub grants_revoked: usize,
    /// Requests made for the incident, still waiting for review, that closing it withdrew.
    pub requests_withdrawn: usize,
}

/// Filters of `GET /v1/incidents`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct IncidentsQuery {
    /// Only incidents still open.
    #[serde(default)]
    pub open: bool,
    /// At most this many (1-1000, default 100).
    pub limit: Option<u32>,
}

/// The incident a request was made for, as the request recorded it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IncidentRefView {
    pub id: String,
    pub severity: u8,
}

/// A broken glass: the request, approved at once with its grant, and the review it owes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BreakGlassView {
    pub request: RequestView,
    pub review: ReviewView,
    /// The asked duration was longer than the role's `break_glass_max` and was cut to it.
    pub cut_to_ceiling: bool,
}

/// A verdict on a break-glass grant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    /// `accept` or `reject`.
    pub verdict: String,
    /// Required: what the reviewer checked.
    pub comment: String,
}

/// A reviewer's answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AnswerView {
    pub reviewer: String,
    /// `accept` or `reject`.
    pub verdict: String,
    pub comment: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The review a break-glass grant owes, known by the grant's id.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReviewView {
    pub grant: Uuid,
    pub request: Uuid,
    /// `open`, `accepted` or `rejected`.
    pub state: String,
    pub holder: String,
    pub resource: String,
    pub role: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    /// Still open at this time, the review is overdue and escalated.
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    pub overdue: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub escalated_at: Option<OffsetDateTime>,
    pub answer: Option<AnswerView>,
}

/// Filters of `GET /v1/reviews`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReviewsQuery {
    /// Only reviews still open.
    #[serde(default)]
    pub open: bool,
    /// At most this many (1-1000, default 100).
    pub limit: Option<u32>,
}

/// An approval.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    pub comment: Option<String>,
}

/// A reason for a denial or a revocation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    pub reason: String,
}

/// A value to check against a redacted value's commitment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProveBody {
    /// The 64 hex digits of a `[redacted sha256:…]` marker.
    pub commitment: String,
    pub value: String,
}

/// Whether the value is the one that was redacted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProveView {
    pub commitment: String,
    pub matches: bool,
}

/// Filters of `GET /v1/requests`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RequestsQuery {
    /// Only pending requests.
    #[serde(default)]
    pub pending: bool,
    /// Only the caller's own requests.
    #[serde(default)]
    pub mine: bool,
    /// At most this many (1-1000, default 100).
    pub limit: Option<u32>,
}

/// Filters of `GET /v1/grants`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GrantsQuery {
    /// Only active grants.
    #[serde(default)]
    pub active: bool,
    /// Only the caller's own grants.
    #[serde(default)]
    pub mine: bool,
    /// At most this many (1-1000, default 100).
    pub limit: Option<u32>,
}

/// How many audit records `GET /v1/audit` returns.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// The last `n` records (1-10000, default 20).
    pub n: Option<u32>,
}

/// A policy decision as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecisionView {
    /// The policies that allowed the request (or, when auto-approved, that skipped review);
    /// `playbook:NAME` when an incident playbook did.
    pub policies: Vec<String>,
    /// SHA-256 of the catalog and policies that decided.
    pub policy_version: String,
    pub auto_approved: bool,
    /// Emergency access: granted at once by a `break_glass` policy, reviewed afterwards.
    pub break_glass: bool,
}

/// One reviewer's approval.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApprovalView {
    pub approver: String,
    pub comment: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub policies: Vec<String>,
}

/// How something was closed: by whom, why, when.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClosureView {
    pub by: String,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// An access request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequestView {
    pub id: Uuid,
    /// `pending`, `approved`, `denied`, `expired` or `cancelled`.
    pub state: String,
    pub resource: String,
    pub role: String,
    pub requester: String,
    pub reason: String,
    /// The duration asked for, e.g. `30m`.
    pub duration: String,
    pub duration_seconds: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When a pending request expires unreviewed.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub approvals: Vec<ApprovalView>,
    pub required_approvals: u32,
    /// How many approvals are still needed (0 once decided).
    pub approvals_needed: u32,
    pub decision: DecisionView,
    /// The open incident the request was made for; its grant ends when the incident closes.
    pub incident: Option<IncidentRefView>,
    /// Set when the request was denied, cancelled or expired.
    pub closed: Option<ClosureView>,
    /// The grant, once approved.
    pub grant: Option<GrantView>,
}

/// A time-bound grant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GrantView {
    pub id: Uuid,
    pub request_id: Uuid,
    /// `active`, `expired` or `revoked`.
    pub state: String,
    pub resource: String,
    pub role: String,
    pub holder: String,
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    /// When the grant ends; nothing extends it.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Seconds left while active, else 0.
    pub remaining_seconds: i64,
    /// Set when the grant ended.
    pub ended: Option<ClosureView>,
    /// Whether the grant can be used now: it is live and, on a resource with a database target,
    /// the connector has created its database role (its `target.role_created` record). Absent
    /// where the broker does not work it out (the gateways' endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usable: Option<bool>,
    /// When the grant became usable: when its database role's creation was recorded, or its
    /// start on a resource without a database target. Absent until then.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub usable_at: Option<OffsetDateTime>,
}

/// One audit record, with its place in the chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditRecordView {
    pub seq: i64,
    pub chain_id: String,
    pub prev_hash: String,
    pub hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub kind: String,
    pub actor: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// The result of checking the audit chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerifyView {
    pub intact: bool,
    /// How many records were checked.
    pub records: i64,
    /// The hash of the last record.
    pub head_hash: Option<String>,
    /// How many signed checkpoints were checked against the records they name.
    pub checkpoints: u64,
    /// The first bad record, when the chain is broken.
    pub first_bad_seq: Option<i64>,
    /// The first problem found.
    pub error: Option<String>,
    /// Every problem found (the first 1,000), each naming its record.
    pub problems: Vec<String>,
}

/// Which records an export holds.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// The first record made at or after this time (RFC 3339); from the chain's start if absent.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>)]
    pub since: Option<OffsetDateTime>,
    /// Records made before this time (RFC 3339); up to the chain's head if absent.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>)]
    pub until: Option<OffsetDateTime>,
}

/// How many statements a story lists per grant unless asked.
pub const DEFAULT_STATEMENTS_PER_GRANT: u32 = 100;

/// The window of a report, and how much of it to list.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// From this time (RFC 3339); 30 days before `until` if absent.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>)]
    pub since: Option<OffsetDateTime>,
    /// Up to this time (RFC 3339); now if absent.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>)]
    pub until: Option<OffsetDateTime>,
    /// Stories only: at most this many statements listed per grant (default 100, at most 10000;
    /// the counts are always whole).
    pub statements: Option<u32>,
}

/// What a gateway running apart asks for live grants with.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LiveGrantsQuery {
    /// Answer only once the grants changed after this generation (or after 25 s).
    pub changed_since: Option<u64>,
}

/// The live grants, for gateways, at a generation of the broker's grant changes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LiveGrantsView {
    pub generation: u64,
    pub grants: Vec<GrantView>,
}

/// An event a gateway observed (`session.*`, `statement.*`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GatewayEventView {
    pub kind: String,
    pub actor: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub details: serde_json::Value,
}

/// Which gateway asks for its unended sessions.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UnendedSessionsQuery {
    /// The gateway's own name, as in the `gateway` of its `session.started` records.
    pub gateway: String,
}

/// A session a gateway started whose end is not recorded: its holder and the details of its
/// `session.started`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UnendedSessionView {
    pub actor: String,
    pub details: serde_json::Value,
}

/// How many events were recorded.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecordedView {
    pub recorded: usize,
}

/// A gateway credential for one live grant: the token is the password, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CredentialView {
    pub grant: String,
    pub user: String,
    pub resource: String,
    pub role: String,
    /// The grant's end.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Only connections from this address are accepted, when set.
    pub source: Option<String>,
    /// Only connections proving this device key (a TLS client certificate for it) are accepted,
    /// when set.
    #[serde(default)]
    pub device_key: Option<String>,
    /// The password to give the gateway.
    pub token: String,
    /// Where the gateway that serves this broker listens (`host:port`), when it runs in `serve`.
    pub gateway: Option<String>,
    /// The database to name when connecting.
    pub database: Option<String>,
}

/// The broker's public signing key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    pub algorithm: String,
    pub key_id: String,
    /// The Ed25519 public key, hex.
    pub public_key: String,
}

/// Liveness and readiness: the process answers (`/v1/health`, always 200), and whether its
/// store can write (`ready`; `/v1/ready` answers 503 when it cannot).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    /// `ok`, or `unavailable` while the store cannot write.
    pub status: String,
    /// Whether the store's last write (or a probe, at most once a second) succeeded.
    pub ready: bool,
    /// Why the store cannot write, when it cannot: `the store cannot write: disk full`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    pub policy_version: String,
}

fn closure(c: &Closure) -> ClosureView {
    ClosureView { by: c.by.clone(), reason: c.reason.clone(), at: c.at }
}

fn approval(a: &Approval) -> ApprovalView {
    ApprovalView {
        approver: a.approver.to_string(),
        comment: a.comment.clone(),
        at: a.at,
        policies: a.decision.policies.clone(),
    }
}

impl RequestView {
    pub fn new(request: &AccessRequest, grant: Option<&Grant>, now: OffsetDateTime) -> Self {
        let approvals_needed = match request.state {
            airlock_core::lifecycle::RequestState::Pending => {
                request.required_approvals.saturating_sub(request.approvals.len() as u32)
            }
            _ => 0,
        };
        Self {
            id: request.id.as_uuid(),
            state: request.state.as_str().to_owned(),
            resource: request.resource.to_string(),
            role: request.role.to_string(),
            requester: request.requester.to_string(),
            reason: request.reason.to_string(),
            duration: request.duration.to_string(),
            duration_seconds: request.duration.as_secs(),
            created_at: request.created_at,
            expires_at: request.expires_at,
            approvals: request.approvals.iter().map(approval).collect(),
            required_approvals: request.required_approvals,
            approvals_needed,
            decision: DecisionView {
                policies: request.decision.policies.clone(),
                policy_version: request.decision.policy_version.clone(),
                auto_approved: request.auto_approved,
                break_glass: request.break_glass,
            },
            incident: request
                .incident
                .as_ref()
                .map(|i| IncidentRefView { id: i.id.to_string(), severity: i.severity.level() }),
            closed: request.closure.as_ref().map(closure),
            grant: grant.map(|g| GrantView::new(g, now)),
        }
    }
}

impl DeviceView {
    pub fn new(device: &Device) -> Self {
        let state = match (&device.approved, &device.disabled) {
            (_, Some(_)) => "disabled",
            (Some(_), None) => "trusted",
            (None, None) => "pending",
        };
        Self {
            id: device.id.to_string(),
            user: device.user.to_string(),
            name: device.name.to_string(),
            public_key: device.key.to_string(),
            state: state.to_owned(),
            enrolled_at: device.enrolled_at,
            approved_at: device.approved.as_ref().map(|(at, _)| *at),
            approved_by: device.approved.as_ref().map(|(_, by)| by.clone()),
            disabled_at: device.disabled.as_ref().map(|(at, _, _)| *at),
            disabled_reason: device.disabled.as_ref().map(|(_, _, reason)| reason.clone()),
        }
    }
}

impl IncidentView {
    pub fn new(incident: &Incident) -> Self {
        Self {
            id: incident.id.to_string(),
            severity: incident.severity.level(),
            title: incident.title.as_str().to_owned(),
            responders: incident.responders.iter().map(ToString::to_string).collect(),
            state: incident.state.as_str().to_owned(),
            opened_by: incident.opened_by.clone(),
            opened_at: incident.opened_at,
            closed_by: incident.closed_by.clone(),
            closed_at: incident.closed_at,
        }
    }
}

impl ReviewView {
    pub fn new(review: &Review, now: OffsetDateTime) -> Self {
        Self {
            grant: review.grant.as_uuid(),
            request: review.request.as_uuid(),
            state: review.state.as_str().to_owned(),
            holder: review.holder.to_string(),
            resource: review.resource.to_string(),
            role: review.role.to_string(),
            reason: review.reason.to_string(),
            opened_at: review.opened_at,
            due_at: review.due_at,
            overdue: review.is_overdue(now),
            escalated_at: review.escalated_at,
            answer: review.answer.as_ref().map(|answer| AnswerView {
                reviewer: answer.reviewer.to_string(),
                verdict: match answer.verdict {
                    Verdict::Accept => "accept",
                    Verdict::Reject => "reject",
                }
                .to_owned(),
                comment: answer.comment.to_string(),
                at: answer.at,
            }),
        }
    }
}

impl GrantView {
    pub fn new(grant: &Grant, now: OffsetDateTime) -> Self {
        let remaining = if grant.is_live(now) { (grant.ends_at - now).whole_seconds().max(0) } else { 0 };
        Self {
            id: grant.id.as_uuid(),
            request_id: grant.request_id.as_uuid(),
            state: grant.state.as_str().to_owned(),
            resource: grant.resource.to_string(),
            role: grant.role.to_string(),
            holder: grant.holder.to_string(),
            starts_at: grant.starts_at,
            expires_at: grant.ends_at,
            remaining_seconds: remaining,
            ended: grant.closure.as_ref().map(closure),
            usable: None,
            usable_at: None,
        }
    }

    /// The view saying whether the grant is usable at `now`, given when it became usable
    /// (`usable_at`, if it has).
    pub fn usable_since(mut self, grant: &Grant, usable_at: Option<OffsetDateTime>, now: OffsetDateTime) -> Self {
        self.usable = Some(grant.is_live(now) && usable_at.is_some());
        self.usable_at = usable_at;
        self
    }
}

impl AuditRecordView {
    pub fn new(record: &ChainRecord) -> Self {
        Self {
            seq: record.seq,
            chain_id: record.chain_id.clone(),
            prev_hash: record.prev_hash.clone(),
            hash: record.hash.clone(),
            at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(record.at_ms) * 1_000_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            kind: record.kind.clone(),
            actor: record.actor.clone(),
            details: serde_json::from_str(&record.details).unwrap_or(serde_json::Value::String(record.details.clone())),
        }
    }
}

/// A login's tokens, from a sign-in or a refresh: shown once, keep them secret.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginView {
    pub user: String,
    /// The login's id (`airlock admin token list` shows it; not secret).
    pub login: Uuid,
    /// The bearer token for API calls, until `access_expires_at`.
    pub access_token: String,
    /// Exchanged, once, for the next pair at `POST /v1/login/refresh`.
    pub refresh_token: String,
    #[serde(with = "time::serde::rfc3339")]
    pub access_expires_at: OffsetDateTime,
    /// The login ends then, however often it is refreshed.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl LoginView {
    pub fn new(tokens: &airlock_broker::logins::LoginTokens) -> Self {
        Self {
            user: tokens.user.to_string(),
            login: tokens.login.as_uuid(),
            access_token: tokens.access_token.clone(),
            refresh_token: tokens.refresh_token.clone(),
            access_expires_at: tokens.access_expires_at,
            expires_at: tokens.expires_at,
        }
    }
}

impl std::fmt::Debug for LoginView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginView")
            .field("user", &self.user)
            .field("login", &self.login)
            .field("access_token", &"<redacted>")
            .field("refresh_token", &"<redacted>")
            .field("access_expires_at", &self.access_expires_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// `GET /v1/login/oidc`: where the sign-in ends.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LoginStartQuery {
    /// A loopback URL (`http://127.0.0.1:PORT/…`, `http://[::1]:PORT/…` or
    /// `http://localhost:PORT/…`) the callback redirects to with `?code=HANDOFF` (redeem it at
    /// `POST /v1/login/handoff`) or `?error=…`; without it the callback answers the tokens.
    pub return_to: Option<String>,
}

/// `GET /v1/login/oidc/callback`: what the identity provider sends the browser back with.
#[derive(Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LoginCallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    /// The provider's refusal (`access_denied`, …).
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl std::fmt::Debug for LoginCallbackQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginCallbackQuery")
            .field("code", &self.code.as_ref().map(|_| "<redacted>"))
            .field("state", &self.state.as_ref().map(|_| "<redacted>"))
            .field("error", &self.error)
            .field("error_description", &self.error_description)
            .finish()
    }
}

/// A device sign-in under way: show `user_code` and `verification_uri` to the person, then poll
/// `POST /v1/login/device/poll` with `handle` every `interval_seconds`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceStartView {
    /// What the client polls with; secret until the sign-in ends.
    pub handle: String,
    pub user_code: String,
    pub verification_uri: String,
    /// The verification page with the code filled in, when the provider offers one.
    pub verification_uri_complete: Option<String>,
    pub interval_seconds: u64,
    pub expires_in_seconds: u64,
}

impl std::fmt::Debug for DeviceStartView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStartView")
            .field("handle", &"<redacted>")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("interval_seconds", &self.interval_seconds)
            .field("expires_in_seconds", &self.expires_in_seconds)
            .finish_non_exhaustive()
    }
}

/// `POST /v1/login/device/poll`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePollBody {
    pub handle: String,
}

/// A device sign-in the person has not answered yet.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DevicePendingView {
    /// `pending`: poll again after the interval; `slow_down`: add 5 seconds to the interval first.
    pub status: String,
}

/// `POST /v1/login/refresh`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    pub refresh_token: String,
}
