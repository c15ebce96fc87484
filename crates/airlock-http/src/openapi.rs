//! The OpenAPI document, generated from the handlers' annotations and the API types, so it says
//! what the server really accepts.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::*;
use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "Airlock broker API", description = "Just-in-time, time-bound access: requests, reviews, grants and their audit chain."),
    paths(
        routes::health, routes::openapi_document, routes::whoami, routes::keys,
        routes::enroll_mfa, routes::confirm_mfa, routes::verify_mfa, routes::logout,
        routes::enroll_device, routes::list_devices, routes::disable_device,
        routes::create_request, routes::list_requests, routes::get_request,
        routes::approve, routes::deny, routes::cancel, routes::break_glass, routes::list_reviews, routes::review,
        routes::list_grants, routes::revoke, routes::issue_credential, routes::audit_export, routes::audit_prove,
        routes::gateway_live_grants, routes::gateway_grant, routes::gateway_events, routes::gateway_unended_sessions, routes::audit_tail, routes::audit_verify,
        routes::open_incident, routes::list_incidents, routes::get_incident, routes::close_incident,
        routes::report_summary, routes::report_user, routes::report_resource, routes::report_incident,
        crate::metrics::metrics,
        crate::login::start_browser, crate::login::callback, crate::login::handoff,
        crate::login::start_device, crate::login::poll_device, crate::login::refresh,
    ),
    components(schemas(
        ErrorBody, WhoAmI, CreateRequest, ApproveBody, ReasonBody, ProveBody, ProveView, DecisionView, ApprovalView, ClosureView,
        RequestView, GrantView, AuditRecordView, VerifyView, KeyView, HealthView, CredentialView,
        LiveGrantsView, GatewayEventView, RecordedView, UnendedSessionView, BreakGlassBody, BreakGlassView, ReviewBody, ReviewView, AnswerView,
        IncidentBody, IncidentView, ClosedIncidentView, IncidentRefView,
        CodeBody, EnrollmentView, MfaView, EnrollDeviceBody, DeviceView, DisabledDeviceView,
        LoginView, DeviceStartView, DevicePollBody, DevicePendingView, RefreshBody,
    )),
    modifiers(&BearerToken),
)]
struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document served at `/v1/openapi.json`.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises")
}
