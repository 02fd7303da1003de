//! Admin HTTP API (axum): `/metrics` (Prometheus text format), `/healthz`, `/readyz`,
//! shadows under `/api/things/{thing}/shadow` ([`shadows`]), jobs under `/api/jobs`
//! ([`jobs`]), and the registry: things and thing groups ([`things`]).
//!
//! Owns: the HTTP surface for operators and applications. Must not touch: broker
//! internals beyond reading metrics and readiness; device state changes go to the device
//! actors. Errors are JSON bodies `{"code": ..., "message": ...}`.

mod jobs;
mod shadows;
mod things;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

use crate::device::Devices;
use crate::jobs::Jobs;
use crate::registry::Registry;
use crate::telemetry::Metrics;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Set once every listener is bound and sessions are restored; cleared at shutdown.
    pub ready: Arc<AtomicBool>,
    /// Where shadow requests go.
    pub devices: Arc<Devices>,
    pub jobs: Arc<Jobs>,
    pub registry: Arc<Registry>,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

async fn metrics(State(s): State<AdminState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "node is starting or stopping")
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/api/things/{thing}/shadow",
            get(shadows::get).post(shadows::update).delete(shadows::delete),
        )
        .route("/api/things/{thing}/jobs", get(jobs::thing_executions))
        .route("/api/things", get(things::list_things).post(things::create_thing))
        .route(
            "/api/things/{thing}",
            get(things::get_thing).patch(things::update_thing).delete(things::delete_thing),
        )
        .route("/api/groups", get(things::list_groups).post(things::create_group))
        .route("/api/groups/{group}", get(things::get_group).delete(things::delete_group))
        .route(
            "/api/groups/{group}/things/{thing}",
            put(things::add_member).delete(things::remove_member),
        )
        .route("/api/jobs", get(jobs::list).post(jobs::create))
        .route("/api/jobs/{id}", get(jobs::describe))
        .route("/api/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/jobs/{id}/executions", get(jobs::job_executions))
        .fallback(not_found)
        .with_state(state)
}

/// Binds the admin server; it runs until `shutdown` flips.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let app = router(state);
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(message = "admin server failed", error = %e);
        }
    });
    Ok(local)
}
