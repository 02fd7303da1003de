//! Admin HTTP API (axum): `/metrics` (Prometheus text format), `/healthz`, `/readyz`,
//! shadows under `/api/things/{thing}/shadow` ([`shadows`]), jobs under `/api/jobs`
//! ([`jobs`]), the registry: things and thing groups ([`things`]), and identity and
//! access: credentials, policies, CA and device certificates ([`identity`]), and the
//! cluster: members, groups, placement, init, join, drain, remove, faults ([`cluster`]),
//! and rules ([`rules`]).
//!
//! Owns: the HTTP surface for operators and applications. Must not touch: broker
//! internals beyond reading metrics and readiness; device state changes go to the device
//! actors. Errors are JSON bodies `{"code": ..., "message": ...}`.

mod access;
pub mod api;
pub mod cluster;
mod identity;
pub mod identity_api;
mod jobs;
pub mod rules;
mod shadows;
mod things;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::device::Devices;
use crate::jobs::Jobs;
use crate::registry::Registry;
use crate::telemetry::Metrics;
use api::{ApiError, Status};

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
    pub auth: Arc<crate::auth::Auth>,
    /// `admin.require_token`.
    pub require_token: bool,
    /// `shadow.max_pending_per_thing`: more waiting requests for a thing get 429.
    pub shadow_pending_limit: usize,
    /// The cluster side, once it runs (never on a single node).
    pub cluster: Arc<std::sync::OnceLock<Arc<crate::cluster::Cluster>>>,
    pub rules: Arc<crate::rules::engine::RuleEngine>,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    ApiError::response(status, code, message)
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String,
        content_type = "text/plain")))]
async fn metrics(State(s): State<AdminState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Status)))]
async fn healthz() -> Response {
    Json(Status { status: "ok".into() }).into_response()
}

/// Readiness: listeners bound and sessions restored, and in a cluster this node is on
/// the majority side of the meta group; not ready while stopping.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Status), (status = 503, body = ApiError)))]
async fn readyz(State(s): State<AdminState>) -> Response {
    if !s.ready.load(Ordering::Acquire) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "node is starting or stopping");
    }
    match s.cluster.get() {
        Some(c) if !c.healthy() => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_quorum",
            "this node cannot reach a majority of the cluster's meta group",
        ),
        _ => Json(Status { status: "ready".into() }).into_response(),
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Homeport admin API", description = "Operate a Homeport node: the registry \
        of things and thing groups, device shadows, jobs, health and metrics. Errors are \
        JSON bodies {\"code\", \"message\"}; the message names the field at fault."),
    tags(
        (name = "things", description = "The registry of things (devices)"),
        (name = "groups", description = "Thing groups and membership"),
        (name = "shadows", description = "Device shadows (AWS IoT compatible documents)"),
        (name = "jobs", description = "Jobs and their executions"),
        (name = "identity", description = "Device credentials, certificates and policies"),
        (name = "access", description = "Admin API tokens and the audit log"),
        (name = "operations", description = "Health, readiness and metrics"),
        (name = "cluster", description = "Cluster members, groups, placement and fault injection"),
        (name = "rules", description = "Rules: SQL over messages and events, and their actions"),
    )
)]
struct ApiDoc;

/// The routes and the OpenAPI document derived from the same handler annotations, so a
/// route cannot be served without being documented.
fn documented() -> (Router<AdminState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(shadows::get, shadows::update, shadows::delete))
        .routes(routes!(jobs::thing_executions))
        .routes(routes!(things::list_things, things::create_thing))
        .routes(routes!(things::get_thing, things::update_thing, things::delete_thing))
        .routes(routes!(things::list_groups, things::create_group))
        .routes(routes!(things::get_group, things::delete_group))
        .routes(routes!(things::add_member, things::remove_member))
        .routes(routes!(jobs::list, jobs::create))
        .routes(routes!(jobs::describe))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::job_executions))
        .routes(routes!(identity::create_credential, identity::list_credentials))
        .routes(routes!(identity::delete_credential))
        .routes(routes!(identity::list_policies))
        .routes(routes!(identity::put_policy, identity::get_policy, identity::delete_policy))
        .routes(routes!(identity::attach, identity::detach))
        .routes(routes!(identity::attached))
        .routes(routes!(identity::register_ca, identity::list_cas))
        .routes(routes!(identity::set_ca_status))
        .routes(routes!(identity::register_cert, identity::list_certs))
        .routes(routes!(identity::get_cert, identity::set_cert_status))
        .routes(routes!(identity::list_templates))
        .routes(routes!(identity::put_template, identity::get_template, identity::delete_template))
        .routes(routes!(access::create_token, access::list_tokens))
        .routes(routes!(access::revoke_token))
        .routes(routes!(access::audit))
        .routes(routes!(cluster::status))
        .routes(routes!(cluster::members))
        .routes(routes!(cluster::shards))
        .routes(routes!(cluster::digests))
        .routes(routes!(cluster::init))
        .routes(routes!(cluster::join))
        .routes(routes!(cluster::drain))
        .routes(routes!(cluster::undrain))
        .routes(routes!(cluster::remove))
        .routes(routes!(cluster::list_faults, cluster::set_faults, cluster::heal))
        .routes(routes!(rules::list, rules::create))
        .routes(routes!(rules::test))
        .routes(routes!(rules::get, rules::update, rules::delete))
        .split_for_parts()
}

/// The OpenAPI document of the admin API (also served at `/api/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().1
}

pub fn router(state: AdminState) -> Router {
    let (routes, doc) = documented();
    let doc = Arc::new(doc);
    routes
        .route("/api/openapi.json", get(move || async move { Json(doc.as_ref().clone()) }))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), access::guard))
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

#[cfg(test)]
mod tests {
    #[test]
    fn request_bodies_are_documented_with_their_fields() {
        let doc = serde_json::to_value(super::openapi()).unwrap();
        let create =
            &doc["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"];
        assert_eq!(create["schema"]["$ref"], "#/components/schemas/CreateJob");
        let fields = doc["components"]["schemas"]["CreateJob"]["properties"].as_object().unwrap();
        for f in ["jobId", "document", "targets", "abortConfig", "jobExecutionsRetryConfig"] {
            assert!(fields.contains_key(f), "CreateJob.{f}");
        }
        let list = &doc["paths"]["/api/things"]["get"]["parameters"];
        let names: Vec<_> = list.as_array().unwrap().iter().map(|p| p["name"].clone()).collect();
        assert_eq!(names, ["next", "limit", "attribute"]);
    }
}
