//! `GET /metrics`: the Prometheus text format, for auditors and the `monitoring` group (a
//! scraper authenticates with a service account's token, as `authorization: Bearer …`).
//!
//! The recorder is process-wide (the `metrics` facade allows one): [`install`] sets it up once,
//! in `airlock serve`, with the histogram buckets and help texts of `airlock_broker::metrics`.

use axum::extract::State;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Authenticated, scope};

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process's Prometheus recorder (on the current Tokio runtime, which also runs its
/// upkeep); its handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in airlock_broker::metrics::BUCKETS {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)?;
    }
    let handle = builder.install_recorder()?;
    airlock_broker::metrics::describe();
    // Without upkeep, histogram samples pile up between scrapes (or forever, when none come).
    let upkept = handle.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(UPKEEP_EVERY);
        loop {
            ticks.tick().await;
            upkept.run_upkeep();
        }
    });
    Ok(handle)
}

#[utoipa::path(get, path = "/metrics", security(("token" = [])),
    responses((status = 200, description = "Prometheus text format (docs/metrics.md)", content_type = "text/plain", body = String),
        (status = 401, body = crate::api::ErrorBody), (status = 403, body = crate::api::ErrorBody),
        (status = 404, body = crate::api::ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    Authenticated(caller, _): Authenticated<scope::Audit>,
) -> Result<axum::response::Response, ApiError> {
    state.broker.may_read_metrics(&caller)?;
    let Some(handle) = &state.metrics else {
        return Err(ApiError::not_found("metrics are not recorded in this process"));
    };
    state.broker.refresh_gauges().await?;
    handle.run_upkeep();
    let content_type = [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")];
    Ok((content_type, handle.render()).into_response())
}
