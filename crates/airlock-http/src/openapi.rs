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
        routes::health, routes::ready, routes::openapi_document, routes::whoami, routes::keys,
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
    modifiers(&BearerToken, &StoreUnavailable),
)]
struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Any operation that reads or writes the store may answer 503 with `Retry-After` while the
/// store cannot write (`crate::error`): declared once here rather than on every route.
struct StoreUnavailable;

/// Routes that answer without the store, or declare their own 503.
const WITHOUT_STORE: [&str; 3] = ["/v1/health", "/v1/ready", "/v1/openapi.json"];

impl Modify for StoreUnavailable {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, ResponseBuilder, Type};
        let response = ResponseBuilder::new()
            .description("the store cannot write for now (a full disk, a read-only database, a lock held elsewhere, an I/O error); nothing was changed")
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
            .header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(utoipa::openapi::ObjectBuilder::new().schema_type(Type::Integer))
                    .description(Some("seconds to wait before trying again"))
                    .build(),
            )
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if WITHOUT_STORE.contains(&path.as_str()) {
                continue;
            }
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                operation.responses.responses.entry("503".to_owned()).or_insert_with(|| response.clone().into());
            }
        }
    }
}

/// The document served at `/v1/openapi.json`.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises")
}
