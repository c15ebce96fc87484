//! One handler per route. Every route but `/v1/health`, `/v1/ready`, `/v1/openapi.json` and the sign-in routes
//! (`crate::login`, which are how one gets a token) authenticates its caller and checks the scope
//! its token holds; the broker then checks what that caller may do.

use airlock_broker::breakglass::BreakGlassInput;
use airlock_broker::broker::RequestInput;
use airlock_broker::devices::Enrollment;
use airlock_broker::reports::StoryOf;
use std::collections::HashMap;

use airlock_core::audit::export::Report;
use airlock_core::audit::{AuditEvent, EventKind, time_of_ms};
use airlock_core::breakglass::Verdict;
use airlock_core::device::DeviceKey;
use airlock_core::ids::{DeviceId, DeviceName, GrantId, IncidentId, ResourceName, RoleName, UserName};
use airlock_core::incident::{NewIncident, Severity, Title};
use airlock_core::lifecycle::{AccessRequest, Grant};
use airlock_core::report::Window;
use airlock_core::report::story::{IncidentReport, Story};
use airlock_core::report::summary::Summary;
use airlock_core::values::{GrantDuration, Reason};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use time::OffsetDateTime;

use crate::AppState;
use crate::api::*;
use crate::error::ApiError;
use crate::extract::{Authenticated, Body, Params, scope};
use crate::openapi;

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/v1/openapi.json", get(openapi_document))
        .route("/v1/whoami", get(whoami))
        .route("/v1/keys", get(keys))
        .route("/v1/mfa/enroll", post(enroll_mfa))
        .route("/v1/mfa/confirm", post(confirm_mfa))
        .route("/v1/mfa/verify", post(verify_mfa))
        .route("/v1/logout", post(logout))
        .route("/v1/devices", post(enroll_device).get(list_devices))
        .route("/v1/devices/{id}/disable", post(disable_device))
        .route("/v1/requests", post(create_request).get(list_requests))
        .route("/v1/requests/{id}", get(get_request))
        .route("/v1/requests/{id}/approve", post(approve))
        .route("/v1/requests/{id}/deny", post(deny))
        .route("/v1/requests/{id}/cancel", post(cancel))
        .route("/v1/breakglass", post(break_glass))
        .route("/v1/reviews", get(list_reviews))
        .route("/v1/reviews/{grant}", post(review))
        .route("/v1/incidents", post(open_incident).get(list_incidents))
        .route("/v1/incidents/{id}", get(get_incident))
        .route("/v1/incidents/{id}/close", post(close_incident))
        .route("/v1/grants", get(list_grants))
        .route("/v1/grants/{id}/revoke", post(revoke))
        .route("/v1/grants/{id}/credentials", post(issue_credential))
        .route("/v1/gateway/grants", get(gateway_live_grants))
        .route("/v1/gateway/grants/{id}", get(gateway_grant))
        .route("/v1/gateway/events", post(gateway_events))
        .route("/v1/gateway/sessions/unended", get(gateway_unended_sessions))
        .route("/v1/audit", get(audit_tail))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/audit/export", get(audit_export))
        .route("/v1/audit/prove", post(audit_prove))
        .route("/v1/reports/summary", get(report_summary))
        .route("/v1/reports/users/{name}", get(report_user))
        .route("/v1/reports/resources/{name}", get(report_resource))
        .route("/v1/reports/incidents/{id}", get(report_incident))
        .route("/metrics", get(crate::metrics::metrics))
        .merge(crate::login::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(ErrorBody { code: "bad_input".into(), error: "method not allowed".into() }),
            )
        })
        .with_state(state)
}

fn parse<T, E: std::fmt::Display>(field: &str, result: Result<T, E>) -> Result<T, ApiError> {
    result.map_err(|e| ApiError::bad_input(format!("{field}: {e}")))
}

fn incident_named(id: Option<&str>) -> Result<Option<IncidentId>, ApiError> {
    id.map(|id| parse("incident", IncidentId::parse(id))).transpose()
}

#[utoipa::path(get, path = "/v1/health",
    responses((status = 200, body = HealthView, description = "the process answers; `ready` says whether its store can write")))]
async fn health(State(state): State<AppState>) -> Json<HealthView> {
    Json(health_view(&state).await)
}

#[utoipa::path(get, path = "/v1/ready",
    responses((status = 200, body = HealthView, description = "ready: the store can write"),
        (status = 503, body = HealthView, description = "the store cannot write (a full disk, a read-only database, a lock held elsewhere, an I/O error); `Retry-After` says when to ask again")))]
async fn ready(State(state): State<AppState>) -> axum::response::Response {
    let view = health_view(&state).await;
    if view.ready {
        return Json(view).into_response();
    }
    let retry_after = [("retry-after", crate::error::RETRY_AFTER_SECONDS.to_string())];
    (StatusCode::SERVICE_UNAVAILABLE, retry_after, Json(view)).into_response()
}

/// Costs nothing while the store's last write succeeded; otherwise one probe write a second at
/// most, whoever asks.
async fn health_view(state: &AppState) -> HealthView {
    let fault = state.broker.store().writable_now().await.err();
    HealthView {
        status: if fault.is_none() { "ok" } else { "unavailable" }.into(),
        ready: fault.is_none(),
        store: fault.map(|fault| format!("the store cannot write: {fault}")),
        policy_version: state.broker.policies().version.clone(),
    }
}

#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "this document")))]
async fn openapi_document() -> Json<serde_json::Value> {
    Json(openapi::document())
}

#[utoipa::path(get, path = "/v1/whoami", security(("token" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
async fn whoami(State(state): State<AppState>, Authenticated(caller, _): Authenticated<scope::Own>) -> Json<WhoAmI> {
    let mfa_fresh = state.broker.has_fresh_mfa(&caller, state.broker.clock().now());
    Json(WhoAmI {
        name: caller.principal.name.to_string(),
        groups: caller.principal.groups.iter().map(ToString::to_string).collect(),
        service: caller.principal.service,
        source_ip: caller.source_ip.to_string(),
        mfa_at: caller.mfa_at,
        mfa_fresh,
        device: caller.device.map(|device| device.id.to_string()),
    })
}

#[utoipa::path(post, path = "/v1/devices", security(("token" = [])), request_body = EnrollDeviceBody,
    responses((status = 201, body = DeviceView, description = "enrolled, waiting for an administrator's approval"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the key is already enrolled")))]
async fn enroll_device(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Request>,
    Body(body): Body<EnrollDeviceBody>,
) -> Result<(StatusCode, Json<DeviceView>), ApiError> {
    let enrollment = Enrollment {
        name: parse("name", DeviceName::parse(&body.name))?,
        key: parse("public_key", body.public_key.parse::<DeviceKey>())?,
        signature: body.signature,
    };
    let device = state.broker.enroll_device(&caller, enrollment).await?;
    Ok((StatusCode::CREATED, Json(DeviceView::new(&device))))
}

#[utoipa::path(get, path = "/v1/devices", security(("token" = [])), params(DevicesQuery),
    responses((status = 200, body = Vec<DeviceView>), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`all` is for auditors")))]
async fn list_devices(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Read>,
    Params(query): Params<DevicesQuery>,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    let devices = state.broker.devices(&caller, query.all).await?;
    Ok(Json(devices.iter().map(DeviceView::new).collect()))
}

#[utoipa::path(post, path = "/v1/devices/{id}/disable", security(("token" = [])), params(("id" = String, Path)),
    responses((status = 200, body = DisabledDeviceView, description = "disabled; what it asked for or was bound to has ended"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "already disabled")))]
async fn disable_device(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Request>,
    Path(id): Path<String>,
) -> Result<Json<DisabledDeviceView>, ApiError> {
    let id: DeviceId = id.parse().map_err(|_| ApiError::not_found(format!("device `{id}` not found")))?;
    let (device, ended) = state.broker.disable_own_device(&caller, id).await?;
    Ok(Json(DisabledDeviceView {
        device: DeviceView::new(&device),
        requests_cancelled: ended.requests_cancelled,
        grants_revoked: ended.grants_revoked,
    }))
}

#[utoipa::path(post, path = "/v1/mfa/enroll", security(("token" = [])),
    responses((status = 200, body = EnrollmentView), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "an authenticator is already enrolled")))]
async fn enroll_mfa(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Own>,
) -> Result<Json<EnrollmentView>, ApiError> {
    let otpauth_uri = state.broker.enroll_mfa(&caller).await?;
    Ok(Json(EnrollmentView { otpauth_uri }))
}

#[utoipa::path(post, path = "/v1/mfa/confirm", security(("token" = [])), request_body = CodeBody,
    responses((status = 200, body = MfaView, description = "enrolled; the code also counts as a fresh second factor"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "wrong or replayed code"),
        (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn confirm_mfa(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Own>,
    Body(body): Body<CodeBody>,
) -> Result<Json<MfaView>, ApiError> {
    state.broker.confirm_mfa(&caller, &body.code).await?;
    Ok(Json(mfa_view(&state)))
}

#[utoipa::path(post, path = "/v1/mfa/verify", security(("token" = [])), request_body = CodeBody,
    responses((status = 200, body = MfaView), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "wrong or replayed code"),
        (status = 409, body = ErrorBody, description = "no authenticator enrolled"),
        (status = 429, body = ErrorBody, description = "too many wrong codes")))]
async fn verify_mfa(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Own>,
    Body(body): Body<CodeBody>,
) -> Result<Json<MfaView>, ApiError> {
    state.broker.verify_mfa(&caller, &body.code).await?;
    Ok(Json(mfa_view(&state)))
}

fn mfa_view(state: &AppState) -> MfaView {
    MfaView { fresh_until: state.broker.mfa_fresh_until(state.broker.clock().now()) }
}

#[utoipa::path(post, path = "/v1/logout", security(("token" = [])),
    responses((status = 204, description = "the login ended"), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "an API token, not a login")))]
async fn logout(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Own>,
) -> Result<StatusCode, ApiError> {
    state.broker.logout(&caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/keys", security(("token" = [])),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody)))]
async fn keys(State(state): State<AppState>, Authenticated(_, _): Authenticated<scope::Own>) -> Json<KeyView> {
    Json(KeyView {
        algorithm: "ed25519".into(),
        key_id: state.broker.key().key_id.clone(),
        public_key: state.broker.key().public_hex(),
    })
}

#[utoipa::path(post, path = "/v1/requests", security(("token" = [])), request_body = CreateRequest,
    responses(
        (status = 201, body = RequestView, description = "the request; an auto-approved one carries its grant"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "no policy allows the request"),
        (status = 409, body = ErrorBody, description = "the incident it names is closed")))]
async fn create_request(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Request>,
    Body(body): Body<CreateRequest>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    let input = RequestInput {
        resource: parse("resource", ResourceName::parse(&body.resource))?,
        role: parse("role", RoleName::parse(&body.role))?,
        duration: parse("duration", GrantDuration::parse(&body.duration))?,
        reason: parse("reason", Reason::parse(&body.reason))?,
        incident: incident_named(body.incident.as_deref())?,
    };
    let (request, grant) = state.broker.create_request(&caller, input).await?;
    Ok((StatusCode::CREATED, Json(request_view(&state, &request, grant.as_ref()).await?)))
}

#[utoipa::path(get, path = "/v1/requests", security(("token" = [])), params(RequestsQuery),
    responses((status = 200, body = Vec<RequestView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_requests(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Read>,
    Params(query): Params<RequestsQuery>,
) -> Result<Json<Vec<RequestView>>, ApiError> {
    let broker = &state.broker;
    let requests = broker.requests(&caller, query.pending, query.mine, query.limit.unwrap_or(100)).await?;
    let now = broker.clock().now();
    let mut grants = Vec::with_capacity(requests.len());
    for request in &requests {
        let grant = broker
            .store()
            .grant_of_request(&request.id.to_string())
            .await
            .map_err(airlock_broker::BrokerError::from)?;
        grants.push(grant);
    }
    let usable = usable_since(&state, &grants.iter().flatten().collect::<Vec<_>>()).await?;
    let views = requests
        .iter()
        .zip(&grants)
        .map(|(request, grant)| {
            let mut view = RequestView::new(request, grant.as_ref(), now);
            view.grant = grant.as_ref().map(|grant| grant_view(grant, now, &usable));
            view
        })
        .collect();
    Ok(Json(views))
}

#[utoipa::path(get, path = "/v1/requests/{id}", security(("token" = [])), params(("id" = String, Path)),
    responses((status = 200, body = RequestView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_request(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Read>,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    let (request, grant) = state.broker.request(&caller, &id).await?;
    Ok(Json(request_view(&state, &request, grant.as_ref()).await?))
}

#[utoipa::path(post, path = "/v1/requests/{id}/approve", security(("token" = [])), params(("id" = String, Path)),
    request_body = ApproveBody,
    responses(
        (status = 200, body = RequestView, description = "the request; the last approval needed starts its grant"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn approve(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Review>,
    Path(id): Path<String>,
    Body(body): Body<ApproveBody>,
) -> Result<Json<RequestView>, ApiError> {
    let comment = body.comment.map(|c| c.trim().to_owned()).filter(|c| !c.is_empty());
    if comment.as_ref().is_some_and(|c| c.chars().count() > 1000) {
        return Err(ApiError::bad_input("comment: longer than 1000 characters"));
    }
    let (request, grant) = state.broker.approve(&caller, &id, comment).await?;
    Ok(Json(request_view(&state, &request, grant.as_ref()).await?))
}

#[utoipa::path(post, path = "/v1/requests/{id}/deny", security(("token" = [])), params(("id" = String, Path)),
    request_body = ReasonBody,
    responses((status = 200, body = RequestView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn deny(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Review>,
    Path(id): Path<String>,
    Body(body): Body<ReasonBody>,
) -> Result<Json<RequestView>, ApiError> {
    let reason = parse("reason", Reason::parse(&body.reason))?;
    let request = state.broker.deny(&caller, &id, reason).await?;
    Ok(Json(RequestView::new(&request, None, state.broker.clock().now())))
}

#[utoipa::path(post, path = "/v1/requests/{id}/cancel", security(("token" = [])), params(("id" = String, Path)),
    responses((status = 200, body = RequestView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Request>,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    let request = state.broker.cancel(&caller, &id).await?;
    Ok(Json(RequestView::new(&request, None, state.broker.clock().now())))
}

#[utoipa::path(post, path = "/v1/breakglass", security(("token" = [])), request_body = BreakGlassBody,
    responses(
        (status = 201, body = BreakGlassView, description = "the grant started at once; its review is owed"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "no `break_glass` policy allows it, or a rejected review barred the caller"),
        (status = 409, body = ErrorBody, description = "the incident it names is closed")))]
async fn break_glass(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Request>,
    Body(body): Body<BreakGlassBody>,
) -> Result<(StatusCode, Json<BreakGlassView>), ApiError> {
    let input = BreakGlassInput {
        resource: parse("resource", ResourceName::parse(&body.resource))?,
        role: parse("role", RoleName::parse(&body.role))?,
        duration: body.duration.as_deref().map(|d| parse("duration", GrantDuration::parse(d))).transpose()?,
        reason: parse("reason", Reason::parse(&body.reason))?,
        incident: incident_named(body.incident.as_deref())?,
    };
    let broken = state.broker.break_glass(&caller, input).await?;
    let request = request_view(&state, &broken.request, Some(&broken.grant)).await?;
    let now = state.broker.clock().now();
    Ok((
        StatusCode::CREATED,
        Json(BreakGlassView {
            request,
            review: ReviewView::new(&broken.review, now),
            cut_to_ceiling: broken.cut_to_ceiling,
        }),
    ))
}

#[utoipa::path(post, path = "/v1/incidents", security(("token" = [])), request_body = IncidentBody,
    responses(
        (status = 201, body = IncidentView, description = "opened"),
        (status = 200, body = IncidentView, description = "already open with the same severity, title and responders: nothing changed"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "not in an `[incidents] managers` group"),
        (status = 409, body = ErrorBody, description = "the id is taken by an incident with another body, or a closed one")))]
async fn open_incident(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Incidents>,
    Body(body): Body<IncidentBody>,
) -> Result<(StatusCode, Json<IncidentView>), ApiError> {
    let new = NewIncident {
        id: parse("id", IncidentId::parse(&body.id))?,
        severity: parse("severity", Severity::new(body.severity))?,
        title: parse("title", Title::parse(&body.title))?,
        responders: body
            .responders
            .iter()
            .map(|r| parse("responders", UserName::parse(r)))
            .collect::<Result<_, _>>()?,
    };
    let (incident, opened) = state.broker.open_incident(&caller, new).await?;
    let status = if opened { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(IncidentView::new(&incident))))
}

#[utoipa::path(get, path = "/v1/incidents", security(("token" = [])), params(IncidentsQuery),
    responses((status = 200, body = Vec<IncidentView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_incidents(
    State(state): State<AppState>,
    Authenticated(_caller, _): Authenticated<scope::Read>,
    Params(query): Params<IncidentsQuery>,
) -> Result<Json<Vec<IncidentView>>, ApiError> {
    let incidents = state.broker.incidents(query.open, query.limit.unwrap_or(100)).await?;
    Ok(Json(incidents.iter().map(IncidentView::new).collect()))
}

#[utoipa::path(get, path = "/v1/incidents/{id}", security(("token" = [])), params(("id" = String, Path)),
    responses((status = 200, body = IncidentView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_incident(
    State(state): State<AppState>,
    Authenticated(_caller, _): Authenticated<scope::Read>,
    Path(id): Path<String>,
) -> Result<Json<IncidentView>, ApiError> {
    Ok(Json(IncidentView::new(&state.broker.incident(&id).await?)))
}

#[utoipa::path(post, path = "/v1/incidents/{id}/close", security(("token" = [])), params(("id" = String, Path)),
    responses(
        (status = 200, body = ClosedIncidentView, description = "closed: every grant made for it revoked, every request waiting for it withdrawn"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "closed already")))]
async fn close_incident(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Incidents>,
    Path(id): Path<String>,
) -> Result<Json<ClosedIncidentView>, ApiError> {
    let closed = state.broker.close_incident(&caller, &id).await?;
    Ok(Json(ClosedIncidentView {
        incident: IncidentView::new(&closed.incident),
        grants_revoked: closed.grants_revoked,
        requests_withdrawn: closed.requests_withdrawn,
    }))
}

#[utoipa::path(get, path = "/v1/reviews", security(("token" = [])), params(ReviewsQuery),
    responses((status = 200, body = Vec<ReviewView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_reviews(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Read>,
    Params(query): Params<ReviewsQuery>,
) -> Result<Json<Vec<ReviewView>>, ApiError> {
    let reviews = state.broker.reviews(&caller, query.open, query.limit.unwrap_or(100)).await?;
    let now = state.broker.clock().now();
    Ok(Json(reviews.iter().map(|r| ReviewView::new(r, now)).collect()))
}

#[utoipa::path(post, path = "/v1/reviews/{grant}", security(("token" = [])), params(("grant" = String, Path)),
    request_body = ReviewBody,
    responses(
        (status = 200, body = ReviewView, description = "the answered review; a rejection ends the grant"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "the holder, or somebody no policy lets approve the role"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "already answered")))]
async fn review(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Review>,
    Path(grant): Path<String>,
    Body(body): Body<ReviewBody>,
) -> Result<Json<ReviewView>, ApiError> {
    let verdict = match body.verdict.as_str() {
        "accept" => Verdict::Accept,
        "reject" => Verdict::Reject,
        other => return Err(ApiError::bad_input(format!("verdict: `{other}` is neither `accept` nor `reject`"))),
    };
    let comment = parse("comment", Reason::parse(&body.comment))?;
    let review = state.broker.review_break_glass(&caller, &grant, verdict, comment).await?;
    Ok(Json(ReviewView::new(&review, state.broker.clock().now())))
}

#[utoipa::path(get, path = "/v1/grants", security(("token" = [])), params(GrantsQuery),
    responses((status = 200, body = Vec<GrantView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_grants(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Read>,
    Params(query): Params<GrantsQuery>,
) -> Result<Json<Vec<GrantView>>, ApiError> {
    let grants = state.broker.grants(&caller, query.active, query.mine, query.limit.unwrap_or(100)).await?;
    let now = state.broker.clock().now();
    let usable = usable_since(&state, &grants.iter().collect::<Vec<_>>()).await?;
    Ok(Json(grants.iter().map(|g| grant_view(g, now, &usable)).collect()))
}

#[utoipa::path(post, path = "/v1/grants/{id}/credentials", security(("token" = [])), params(("id" = String, Path)),
    responses((status = 200, body = CredentialView, description = "a credential for the caller's own live grant"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the grant is not live")))]
async fn issue_credential(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Request>,
    Path(id): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    let (credential, token) = state.broker.issue_credential(&caller, &id).await?;
    let policies = state.broker.policies();
    let resource = policies.catalog.resource(&credential.resource);
    let database = resource.and_then(|r| r.postgres.as_ref()).map(|postgres| postgres.database.clone());
    Ok(Json(CredentialView {
        grant: credential.grant.to_string(),
        user: credential.holder.to_string(),
        resource: credential.resource.to_string(),
        role: credential.role.to_string(),
        expires_at: credential.expires_at,
        source: credential.source.map(|source| source.to_string()),
        device_key: credential.device.map(|key| key.to_string()),
        token: token.expose().to_owned(),
        gateway: state.gateway.map(|address| address.to_string()),
        database,
    }))
}

/// How long a gateway's `changed_since` question waits for a change at most.
const LONG_POLL: std::time::Duration = std::time::Duration::from_secs(25);

#[utoipa::path(get, path = "/v1/gateway/grants", security(("token" = [])), params(LiveGrantsQuery),
    responses((status = 200, body = LiveGrantsView), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "not a service account in the `gateways` group")))]
async fn gateway_live_grants(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Gateway>,
    Params(query): Params<LiveGrantsQuery>,
) -> Result<Json<LiveGrantsView>, ApiError> {
    let live = state.broker.gateway_live_grants(&caller, query.changed_since, LONG_POLL).await?;
    let now = state.broker.clock().now();
    let grants = live.grants.iter().map(|g| GrantView::new(g, now)).collect();
    Ok(Json(LiveGrantsView { generation: live.generation, grants }))
}

#[utoipa::path(get, path = "/v1/gateway/grants/{id}", security(("token" = [])), params(("id" = String, Path)),
    responses((status = 200, body = GrantView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such grant, or it is not live")))]
async fn gateway_grant(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Gateway>,
    Path(id): Path<String>,
) -> Result<Json<GrantView>, ApiError> {
    let grant_id: GrantId = id.parse().map_err(|_| ApiError::not_found(format!("grant `{id}` not found")))?;
    let grant = state.broker.gateway_grant(&caller, &grant_id).await?;
    let grant = grant.ok_or_else(|| ApiError::not_found(format!("grant `{id}` is not live")))?;
    Ok(Json(GrantView::new(&grant, state.broker.clock().now())))
}

#[utoipa::path(post, path = "/v1/gateway/events", security(("token" = [])), request_body = Vec<GatewayEventView>,
    responses((status = 200, body = RecordedView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn gateway_events(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Gateway>,
    Body(events): Body<Vec<GatewayEventView>>,
) -> Result<Json<RecordedView>, ApiError> {
    let events = events
        .into_iter()
        .map(|event| {
            let kind = serde_json::from_value(serde_json::Value::String(event.kind.clone()));
            let kind = parse("kind", kind.map_err(|_| format!("unknown event kind `{}`", event.kind)))?;
            Ok(AuditEvent { kind, actor: event.actor, at: event.at, details: event.details })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    state.broker.gateway_record(&caller, &events).await?;
    Ok(Json(RecordedView { recorded: events.len() }))
}

#[utoipa::path(get, path = "/v1/gateway/sessions/unended", security(("token" = [])), params(UnendedSessionsQuery),
    responses((status = 200, body = Vec<UnendedSessionView>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn gateway_unended_sessions(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Gateway>,
    Params(query): Params<UnendedSessionsQuery>,
) -> Result<Json<Vec<UnendedSessionView>>, ApiError> {
    let sessions = state.broker.gateway_unended_sessions(&caller, &query.gateway).await?;
    Ok(Json(sessions.into_iter().map(|(actor, details)| UnendedSessionView { actor, details }).collect()))
}

#[utoipa::path(post, path = "/v1/grants/{id}/revoke", security(("token" = [])), params(("id" = String, Path)),
    request_body = ReasonBody,
    responses((status = 200, body = GrantView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn revoke(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Review>,
    Path(id): Path<String>,
    Body(body): Body<ReasonBody>,
) -> Result<Json<GrantView>, ApiError> {
    let reason = parse("reason", Reason::parse(&body.reason))?;
    let grant = state.broker.revoke(&caller, &id, reason).await?;
    let usable = usable_since(&state, &[&grant]).await?;
    Ok(Json(grant_view(&grant, state.broker.clock().now(), &usable)))
}

#[utoipa::path(get, path = "/v1/audit", security(("token" = [])), params(AuditQuery),
    responses((status = 200, body = Vec<AuditRecordView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn audit_tail(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Audit>,
    Params(query): Params<AuditQuery>,
) -> Result<Json<Vec<AuditRecordView>>, ApiError> {
    let records = state.broker.audit_tail(&caller, query.n.unwrap_or(20)).await?;
    Ok(Json(records.iter().map(AuditRecordView::new).collect()))
}

#[utoipa::path(get, path = "/v1/audit/verify", security(("token" = [])),
    responses((status = 200, body = VerifyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn audit_verify(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Audit>,
) -> Result<Json<VerifyView>, ApiError> {
    Ok(Json(verify_view(state.broker.audit_verify(&caller).await?)))
}

/// The answer to a chain check.
pub fn verify_view(report: Report) -> VerifyView {
    let problems: Vec<String> = report.failures.iter().map(ToString::to_string).collect();
    VerifyView {
        intact: report.intact(),
        records: report.records,
        head_hash: report.head.map(|head| head.hash),
        checkpoints: report.checkpoints,
        first_bad_seq: report.failures.iter().find_map(|f| f.place.seq),
        error: problems.first().cloned(),
        problems,
    }
}

#[utoipa::path(post, path = "/v1/audit/prove", security(("token" = [])), request_body = ProveBody,
    responses((status = 200, body = ProveView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn audit_prove(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Audit>,
    Body(body): Body<ProveBody>,
) -> Result<Json<ProveView>, ApiError> {
    let matches = state.broker.audit_prove(&caller, &body.commitment, &body.value).await?;
    Ok(Json(ProveView { commitment: body.commitment, matches }))
}

#[utoipa::path(get, path = "/v1/audit/export", security(("token" = [])), params(ExportQuery),
    responses((status = 200, description = "JSON Lines: records, checkpoints, and a signed seal last",
        content_type = "application/x-ndjson", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn audit_export(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Audit>,
    Params(query): Params<ExportQuery>,
) -> Result<axum::response::Response, ApiError> {
    let export = state.broker.audit_export(&caller, query.since, query.until).await?;
    // A failure mid-way ends the body early: the file then lacks its seal, and verifying it says so.
    let lines = futures_util::stream::try_unfold(export, |mut export| async move {
        Ok::<_, airlock_broker::BrokerError>(export.next_lines().await?.map(|text| (text, export)))
    });
    let body = axum::body::Body::from_stream(lines);
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// The window a report query asks for: by default the 30 days up to now.
fn report_window(state: &AppState, query: &ReportQuery) -> Window {
    let until = query.until.unwrap_or_else(|| state.broker.clock().now());
    Window { since: query.since.unwrap_or(until - time::Duration::days(30)), until }
}

#[utoipa::path(get, path = "/v1/reports/summary", security(("token" = [])), params(ReportQuery),
    responses((status = 200, description = "The summary report (fields in docs/reports.md)", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn report_summary(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Audit>,
    Params(query): Params<ReportQuery>,
) -> Result<Json<Summary>, ApiError> {
    let window = report_window(&state, &query);
    Ok(Json(state.broker.report_summary(&caller, window).await?))
}

#[utoipa::path(get, path = "/v1/reports/users/{name}", security(("token" = [])),
    params(("name" = String, Path), ReportQuery),
    responses((status = 200, description = "The user's story (fields in docs/reports.md)", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn report_user(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Audit>,
    Path(name): Path<String>,
    Params(query): Params<ReportQuery>,
) -> Result<Json<Story>, ApiError> {
    let user = parse("name", UserName::parse(&name))?;
    story(&state, &caller, StoryOf::User(user), &query).await
}

#[utoipa::path(get, path = "/v1/reports/incidents/{id}", security(("token" = [])),
    params(("id" = String, Path), ReportQuery),
    responses((status = 200, description = "The incident's post-mortem (fields in docs/reports.md)", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "neither an auditor nor an incident manager"),
        (status = 404, body = ErrorBody)))]
async fn report_incident(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Audit>,
    Path(id): Path<String>,
    Params(query): Params<ReportQuery>,
) -> Result<Json<IncidentReport>, ApiError> {
    if query.since.is_some() || query.until.is_some() {
        return Err(ApiError::bad_input("an incident's report covers its whole life: leave out since and until"));
    }
    let statements = query.statements.unwrap_or(DEFAULT_STATEMENTS_PER_GRANT);
    Ok(Json(state.broker.report_incident(&caller, &id, statements).await?))
}

#[utoipa::path(get, path = "/v1/reports/resources/{name}", security(("token" = [])),
    params(("name" = String, Path), ReportQuery),
    responses((status = 200, description = "The resource's story (fields in docs/reports.md)", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn report_resource(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Audit>,
    Path(name): Path<String>,
    Params(query): Params<ReportQuery>,
) -> Result<Json<Story>, ApiError> {
    let resource = parse("name", ResourceName::parse(&name))?;
    story(&state, &caller, StoryOf::Resource(resource), &query).await
}

async fn story(
    state: &AppState,
    caller: &airlock_broker::Caller,
    of: StoryOf,
    query: &ReportQuery,
) -> Result<Json<Story>, ApiError> {
    let window = report_window(state, query);
    let statements = query.statements.unwrap_or(DEFAULT_STATEMENTS_PER_GRANT);
    Ok(Json(state.broker.report_story(caller, of, window, statements).await?))
}

/// When each of `grants` became usable ([`GrantView::usable_at`]): at its start on a resource
/// without a database target; else when the connector recorded its database role created,
/// found through the audit records' index on grant ids (one query for all of them).
async fn usable_since(state: &AppState, grants: &[&Grant]) -> Result<HashMap<GrantId, OffsetDateTime>, ApiError> {
    let policies = state.broker.policies();
    let mut usable = HashMap::new();
    let mut waiting = Vec::new();
    for grant in grants {
        match policies.catalog.resource(&grant.resource).is_some_and(|r| r.postgres.is_some()) {
            true => waiting.push(grant.id.to_string()),
            false => {
                usable.insert(grant.id, grant.starts_at);
            }
        }
    }
    if waiting.is_empty() {
        return Ok(usable);
    }
    let created = [EventKind::TargetRoleCreated.as_str()];
    let records =
        state.broker.store().grant_records(&waiting, &created).await.map_err(airlock_broker::BrokerError::from)?;
    for record in records {
        let details: serde_json::Value = serde_json::from_str(&record.details).unwrap_or_default();
        if let Some(grant) = details["grant"].as_str().and_then(|g| g.parse::<GrantId>().ok()) {
            usable.entry(grant).or_insert_with(|| time_of_ms(record.at_ms));
        }
    }
    Ok(usable)
}

/// The view of `grant`, saying whether it is usable at `now`.
fn grant_view(grant: &Grant, now: OffsetDateTime, usable: &HashMap<GrantId, OffsetDateTime>) -> GrantView {
    GrantView::new(grant, now).usable_since(grant, usable.get(&grant.id).copied(), now)
}

/// The view of `request` with its grant, saying whether the grant is usable.
async fn request_view(
    state: &AppState,
    request: &AccessRequest,
    grant: Option<&Grant>,
) -> Result<RequestView, ApiError> {
    let usable = match grant {
        Some(grant) => usable_since(state, &[grant]).await?,
        None => HashMap::new(),
    };
    let now = state.broker.clock().now();
    let mut view = RequestView::new(request, grant, now);
    view.grant = grant.map(|grant| grant_view(grant, now, &usable));
    Ok(view)
}
