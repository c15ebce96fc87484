//! Extractors whose failures are JSON errors: the authenticated caller, a JSON body, a query.
//!
//! A handler names the scope its route needs in its caller's type, `Authenticated<scope::Review>`:
//! there is no way to take a caller without saying which scope the token must hold, so no route
//! can forget the check. A call from an enrolled device carries its proof in the
//! `Airlock-Device-Proof` header, signed over the method, the path and query, and the token.

use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};

use airlock_broker::Caller;
use airlock_broker::devices::PresentedProof;
use airlock_core::device::PROOF_HEADER;
use airlock_core::scope::Scope;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Query, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;

/// The scope a route needs, as a type (`None`: any token, for what a caller does to themselves).
pub trait RouteScope {
    const SCOPE: Option<Scope>;
}

/// The scopes routes need.
pub mod scope {
    use airlock_core::scope::Scope;

    use super::RouteScope;

    macro_rules! route_scopes {
        ($($(#[$doc:meta])* $name:ident => $scope:expr;)*) => {$(
            $(#[$doc])*
            pub struct $name;
            impl RouteScope for $name {
                const SCOPE: Option<Scope> = $scope;
            }
        )*};
    }

    route_scopes! {
        /// Any token: who am I, the broker's public key, one's own second factor and login.
        Own => None;
        Read => Some(Scope::Read);
        Request => Some(Scope::Request);
        Review => Some(Scope::Review);
        Incidents => Some(Scope::Incidents);
        Audit => Some(Scope::Audit);
        Gateway => Some(Scope::Gateway);
    }
}

/// The caller, authenticated by `Authorization: Bearer <token>`, whose token holds scope `S`.
pub struct Authenticated<S: RouteScope>(pub Caller, pub PhantomData<S>);

impl<S: RouteScope> FromRequestParts<AppState> for Authenticated<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(ApiError::unauthenticated)?
            .to_owned();
        let SourceIp(source_ip) = SourceIp::from_request_parts(parts, state).await?;
        let header = match parts.headers.get(PROOF_HEADER) {
            Some(value) => Some(value.to_str().map_err(|_| ApiError::bad_input("the device proof is not ASCII"))?),
            None => None,
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let proof = header.map(|header| PresentedProof { header, method: parts.method.as_str(), path });
        let (caller, scopes) = state.broker.authenticate(&token, source_ip, proof).await?;
        match S::SCOPE {
            Some(needed) if !scopes.allows(needed) => Err(ApiError::forbidden(format!(
                "this token does not hold the `{needed}` scope this route needs (it holds: {scopes})"
            ))),
            _ => Ok(Self(caller, PhantomData)),
        }
    }
}

/// Where the caller connected from.
pub struct SourceIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for SourceIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(address)| Self(address.ip()))
            .ok_or_else(|| ApiError::bad_input("the caller's address is unknown"))
    }
}

/// A JSON body; a bad one is a 400 that says what was wrong.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(value)| Self(value))
            .map_err(|rejection: JsonRejection| ApiError::bad_input(rejection.body_text()))
    }
}

/// Query parameters; bad ones are a 400 that says what was wrong.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|rejection: QueryRejection| ApiError::bad_input(rejection.body_text()))
    }
}
