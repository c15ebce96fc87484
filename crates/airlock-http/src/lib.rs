//! Airlock's HTTP JSON API under `/v1`, and the OpenAPI document that describes it.
//!
//! Layout:
//! - [`api`]: the JSON documents the API accepts and returns (the CLI reads the same types);
//! - [`error`]: every failure becomes a 4xx/5xx JSON error, never a panic or an HTML page;
//! - [`extract`]: the authenticated caller, and JSON/query extractors with JSON errors;
//! - [`routes`]: one handler per route, each checking who is asking;
//! - [`login`]: signing in through the identity provider (`/v1/login/*`), unauthenticated;
//! - [`metrics`]: `/metrics` in the Prometheus format;
//! - [`openapi`]: the document served at `/v1/openapi.json`.
//!
//! Architecture Invariant: this is the only crate that knows HTTP; use cases live in the broker.

pub mod api;
pub mod error;
pub mod extract;
pub mod login;
pub mod metrics;
pub mod openapi;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use airlock_broker::Broker;
use airlock_broker::sso::SingleSignOn;
use tokio::net::TcpListener;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub broker: Broker,
    /// Where this broker's gateway listens, for connection details in credentials.
    pub gateway: Option<SocketAddr>,
    /// Renders `/metrics`, when this process records metrics ([`metrics::install`]).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Single sign-on, when `[identity.oidc]` is configured; without it `/v1/login/*` answers 404.
    pub sso: Option<Arc<SingleSignOn>>,
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = routes::router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
