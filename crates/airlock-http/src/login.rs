//! Signing in: the routes under `/v1/login` that turn a sign-in at the identity provider into a
//! broker login ([`airlock_broker::sso::SingleSignOn`]). They take no bearer token: they are how
//! one gets one.
//!
//! - `GET /v1/login/oidc[?return_to=…]`: 302 to the provider (authorization code with PKCE);
//! - `GET /v1/login/oidc/callback?code&state`: the login's tokens, or, for a sign-in that named a
//!   loopback `return_to`, 302 there with `?code=HANDOFF`;
//! - `POST /v1/login/handoff {code}`: a handoff code's tokens, once;
//! - `POST /v1/login/device`, then `POST /v1/login/device/poll {handle}`: the device flow;
//! - `POST /v1/login/refresh {refresh_token}`: the next pair.
//!
//! Without `[identity.oidc]` each answers 404 saying so. Answers that carry tokens are marked
//! `Cache-Control: no-store`; redirects that carry a code, `Referrer-Policy: no-referrer`. No
//! token, code, state or handle is ever logged.

use std::sync::Arc;

use airlock_broker::logins::LoginTokens;
use airlock_broker::sso::{Callback, DeviceStatus, Finished, SingleSignOn, SsoError};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::AppState;
use crate::api::{
    CodeBody, DevicePendingView, DevicePollBody, DeviceStartView, ErrorBody, LoginCallbackQuery, LoginStartQuery,
    LoginView, RefreshBody,
};
use crate::error::ApiError;
use crate::extract::SourceIp;
use crate::extract::{Body, Params};

/// The sign-in routes, merged into [`crate::routes::router`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/login/oidc", get(start_browser))
        .route("/v1/login/oidc/callback", get(callback))
        .route("/v1/login/handoff", post(handoff))
        .route("/v1/login/device", post(start_device))
        .route("/v1/login/device/poll", post(poll_device))
        .route("/v1/login/refresh", post(refresh))
}

/// A failed sign-in, as an HTTP answer.
pub enum LoginError {
    Sso(SsoError),
    Api(ApiError),
}

impl From<SsoError> for LoginError {
    fn from(error: SsoError) -> Self {
        Self::Sso(error)
    }
}

impl From<ApiError> for LoginError {
    fn from(error: ApiError) -> Self {
        Self::Api(error)
    }
}

/// The status and stable code of a sign-in's failure (those of the broker's errors are the
/// broker's: [`ApiError`]).
fn status_and_code(error: &SsoError) -> (StatusCode, &'static str) {
    match error {
        SsoError::ReturnTo
        | SsoError::UnknownSignIn
        | SsoError::BadCallback
        | SsoError::UnknownHandoff
        | SsoError::UnknownDevice => (StatusCode::BAD_REQUEST, "bad_input"),
        SsoError::DeviceExpired => (StatusCode::GONE, "expired"),
        SsoError::DeviceDenied | SsoError::SignInRefused(_) | SsoError::BadUserName { .. } => {
            (StatusCode::FORBIDDEN, "forbidden")
        }
        SsoError::RefreshRefused(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        SsoError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        SsoError::Provider(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
        SsoError::Broker(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl IntoResponse for LoginError {
    fn into_response(self) -> Response {
        let error = match self {
            LoginError::Api(error) => return error.into_response(),
            LoginError::Sso(SsoError::Broker(error)) => return ApiError::from(*error).into_response(),
            LoginError::Sso(error) => error,
        };
        let (status, code) = status_and_code(&error);
        if status == StatusCode::BAD_GATEWAY {
            tracing::warn!(error = %error, "single sign-on: the identity provider failed");
        }
        let body = ErrorBody { code: code.to_owned(), error: error.to_string() };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        response
    }
}

/// The broker's single sign-on; a broker without one answers 404 before reading anything else.
struct Sso(Arc<SingleSignOn>);

impl FromRequestParts<AppState> for Sso {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.sso.clone().map(Self).ok_or_else(|| {
            ApiError::not_found(
                "single sign-on is not configured on this broker (no [identity.oidc] in its configuration)",
            )
        })
    }
}

/// The tokens, not to be kept by any cache on the way.
fn tokens(login: &LoginTokens) -> Response {
    let mut response = Json(LoginView::new(login)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// A 302 to `location`, which may carry a code: no cache, no referrer.
fn found(location: &str) -> Result<Response, LoginError> {
    // A parsed URL is written percent-encoded, so this fails only for what was never one.
    let location =
        HeaderValue::from_str(location).map_err(|_| ApiError::bad_input("the redirect URL cannot be sent"))?;
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Ok(response)
}

#[utoipa::path(get, path = "/v1/login/oidc", params(LoginStartQuery),
    responses((status = 302, description = "to the identity provider's sign-in page"),
        (status = 400, body = ErrorBody, description = "`return_to` is not a loopback URL"),
        (status = 404, body = ErrorBody, description = "single sign-on is not configured"),
        (status = 503, body = ErrorBody, description = "too many sign-ins under way")))]
async fn start_browser(Sso(sso): Sso, Params(query): Params<LoginStartQuery>) -> Result<Response, LoginError> {
    let url = sso.start_browser(query.return_to.as_deref())?;
    found(url.as_str())
}

#[utoipa::path(get, path = "/v1/login/oidc/callback", params(LoginCallbackQuery),
    responses((status = 200, body = LoginView, description = "signed in: the login's tokens"),
        (status = 302, description = "to the sign-in's `return_to`, with `code` (a handoff code) or `error`"),
        (status = 400, body = ErrorBody, description = "unknown, used or expired `state`"),
        (status = 403, body = ErrorBody, description = "the identity provider refused, or its user name is not valid here"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "a local account has that name"),
        (status = 502, body = ErrorBody, description = "the identity provider failed")))]
async fn callback(
    Sso(sso): Sso,
    SourceIp(ip): SourceIp,
    Params(query): Params<LoginCallbackQuery>,
) -> Result<Response, LoginError> {
    let callback = Callback {
        code: query.code,
        state: query.state,
        error: query.error,
        error_description: query.error_description,
    };
    match sso.finish_browser(callback, ip).await? {
        Finished::Tokens(login) => Ok(tokens(&login)),
        Finished::Redirect(url) => found(url.as_str()),
    }
}

#[utoipa::path(post, path = "/v1/login/handoff", request_body = CodeBody,
    responses((status = 200, body = LoginView),
        (status = 400, body = ErrorBody, description = "unknown, used or expired code"), (status = 404, body = ErrorBody)))]
async fn handoff(Sso(sso): Sso, Body(body): Body<CodeBody>) -> Result<Response, LoginError> {
    let login = sso.redeem_handoff(&body.code)?;
    Ok(tokens(&login))
}

#[utoipa::path(post, path = "/v1/login/device",
    responses((status = 200, body = DeviceStartView), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "the identity provider failed or offers no device sign-in"),
        (status = 503, body = ErrorBody)))]
async fn start_device(Sso(sso): Sso) -> Result<Response, LoginError> {
    let device = sso.start_device().await?;
    let view = DeviceStartView {
        handle: device.handle,
        user_code: device.user_code,
        verification_uri: device.verification_uri.to_string(),
        verification_uri_complete: device.verification_uri_complete.map(|url| url.to_string()),
        interval_seconds: device.interval.as_secs().max(1),
        expires_in_seconds: device.expires_in.as_secs(),
    };
    let mut response = Json(view).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[utoipa::path(post, path = "/v1/login/device/poll", request_body = DevicePollBody,
    responses((status = 200, body = LoginView, description = "signed in"),
        (status = 202, body = DevicePendingView, description = "not answered yet"),
        (status = 400, body = ErrorBody, description = "unknown or spent handle"),
        (status = 403, body = ErrorBody, description = "refused at the identity provider"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "a local account has that name"),
        (status = 410, body = ErrorBody, description = "expired: start again"), (status = 502, body = ErrorBody)))]
async fn poll_device(
    Sso(sso): Sso,
    SourceIp(ip): SourceIp,
    Body(body): Body<DevicePollBody>,
) -> Result<Response, LoginError> {
    let pending = |status: &str| (StatusCode::ACCEPTED, Json(DevicePendingView { status: status.to_owned() }));
    Ok(match sso.poll_device(&body.handle, ip).await? {
        DeviceStatus::Pending => pending("pending").into_response(),
        DeviceStatus::SlowDown => pending("slow_down").into_response(),
        DeviceStatus::Done(login) => tokens(&login),
    })
}

#[utoipa::path(post, path = "/v1/login/refresh", request_body = RefreshBody,
    responses((status = 200, body = LoginView),
        (status = 401, body = ErrorBody, description = "unknown, used or ended refresh token, or the identity provider refused: the login has ended"),
        (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn refresh(Sso(sso): Sso, Body(body): Body<RefreshBody>) -> Result<Response, LoginError> {
    let login = sso.refresh(&body.refresh_token).await?;
    Ok(tokens(&login))
}
