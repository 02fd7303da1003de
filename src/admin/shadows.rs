//! Shadow REST endpoints, for the application side (AWS's UpdateThingShadow and friends):
//! `GET|POST|DELETE /api/things/{thing}/shadow[?name=...]`. Requests go to the thing's
//! device actor, like MQTT requests, so it stays the single writer; `accepted`, `delta`
//! and `documents` are published to MQTT subscribers as for any update.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tokio::sync::oneshot;
use utoipa::IntoParams;

use super::api::ApiError;
use super::{error, AdminState};
use crate::device::ShadowRequest;
use crate::shadow::topics::{valid_name, MAX_SHADOW_NAME, MAX_THING_NAME};
use crate::shadow::{Op, RequestTopic};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ShadowQuery {
    /// A named shadow; absent for the classic one.
    name: Option<String>,
}

fn status_code(code: u64) -> (StatusCode, &'static str) {
    match code {
        400 => (StatusCode::BAD_REQUEST, "bad_request"),
        404 => (StatusCode::NOT_FOUND, "not_found"),
        409 => (StatusCode::CONFLICT, "version_conflict"),
        413 => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        415 => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding"),
        429 => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
        503 => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

async fn request(s: AdminState, thing: String, q: ShadowQuery, op: Op, body: Bytes) -> Response {
    if !valid_name(&thing, MAX_THING_NAME) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "thing: 1 to 128 letters, digits, ':', '_' or '-'",
        );
    }
    let shadow = q.name.unwrap_or_default();
    if !shadow.is_empty() && !valid_name(&shadow, MAX_SHADOW_NAME) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "name: 1 to 64 letters, digits, ':', '_' or '-'",
        );
    }
    let Some(permit) = s.devices.permit(&thing, s.shadow_pending_limit) else {
        s.metrics.shadow_requests.with_label_values(&[op.as_str(), "429"]).inc();
        return error(StatusCode::TOO_MANY_REQUESTS, "throttled", "Too many requests");
    };
    let (tx, rx) = oneshot::channel();
    s.devices.shadow(ShadowRequest {
        topic: RequestTopic { thing, shadow, op },
        payload: body,
        requester: None,
        reply: Some(tx),
        permit: Some(permit),
    });
    let replies = match tokio::time::timeout(TIMEOUT, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "device actor unavailable",
            )
        }
        Err(_) => return error(StatusCode::GATEWAY_TIMEOUT, "timeout", "device actor timed out"),
    };
    let Some(answer) = replies.into_iter().find(|r| r.to_requester) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no answer");
    };
    if answer.topic.ends_with("/accepted") {
        return Json(answer.payload).into_response();
    }
    let code = answer.payload.get("code").and_then(|c| c.as_u64()).unwrap_or(500);
    let message = answer.payload.get("message").and_then(|m| m.as_str()).unwrap_or("");
    let (status, code) = status_code(code);
    error(status, code, message)
}

/// The shadow document, as a device's `get` gets it.
#[utoipa::path(get, path = "/api/things/{thing}/shadow", tag = "shadows",
    params(("thing" = String, Path, description = "thing name"), ShadowQuery),
    responses((status = 200, description = "the document, as on `get/accepted`", body = Object),
        (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn get(
    State(s): State<AdminState>,
    Path(thing): Path<String>,
    Query(q): Query<ShadowQuery>,
) -> Response {
    request(s, thing, q, Op::Get, Bytes::new()).await
}

/// Updates the shadow (usually `{"state": {"desired": ...}}`), as a device's `update`;
/// `delta` and `documents` are published to MQTT subscribers.
#[utoipa::path(post, path = "/api/things/{thing}/shadow", tag = "shadows",
    params(("thing" = String, Path, description = "thing name"), ShadowQuery),
    request_body(content = Object, description = "an update document: state.desired and/or \
        state.reported, optional version and clientToken"),
    responses((status = 200, description = "as on `update/accepted`", body = Object),
        (status = 400, body = ApiError),
        (status = 409, description = "version does not match", body = ApiError),
        (status = 413, body = ApiError),
        (status = 429, description = "too many requests waiting for this thing", body = ApiError)))]
pub async fn update(
    State(s): State<AdminState>,
    Path(thing): Path<String>,
    Query(q): Query<ShadowQuery>,
    body: Bytes,
) -> Response {
    request(s, thing, q, Op::Update, body).await
}

/// Deletes the shadow (its version is kept for 48 hours).
#[utoipa::path(delete, path = "/api/things/{thing}/shadow", tag = "shadows",
    params(("thing" = String, Path, description = "thing name"), ShadowQuery),
    responses((status = 200, description = "as on `delete/accepted`", body = Object),
        (status = 404, body = ApiError)))]
pub async fn delete(
    State(s): State<AdminState>,
    Path(thing): Path<String>,
    Query(q): Query<ShadowQuery>,
) -> Response {
    request(s, thing, q, Op::Delete, Bytes::new()).await
}
