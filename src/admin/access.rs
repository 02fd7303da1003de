//! Who may call the admin API: bearer tokens checked against the role each request
//! needs (`auth::tokens::required_role`), admin token management (`/api/tokens`), and
//! the audit log (`/api/audit`), to which every mutating request is written with its
//! caller, method, path and answer status, refused ones included.

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::api::{parse, ApiError};
use super::identity_api::{AuditList, CreateToken, TokenList, TokenView};
use super::{error, AdminState};
use crate::auth::records::{AuditEntry, Role};
use crate::auth::tokens::required_role;
use crate::auth::AuthError;
use crate::broker::now_ms;

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks the caller's token against the role the request needs, runs it, and audits
/// it if it changes anything.
pub async fn guard(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let Some(need) = required_role(method.as_str(), &path) else {
        return next.run(req).await;
    };
    let caller = if s.require_token {
        match bearer(&req).and_then(|t| s.auth.admin_identity(t)) {
            Some((actor, role)) if role >= need => Ok(actor),
            Some((actor, _)) => Err((actor, StatusCode::FORBIDDEN)),
            None => Err(("unauthenticated".to_string(), StatusCode::UNAUTHORIZED)),
        }
    } else {
        Ok("anonymous".to_string())
    };
    let (actor, resp) = match caller {
        Ok(actor) => (actor, next.run(req).await),
        Err((actor, status)) => {
            let (code, msg) = if status == StatusCode::FORBIDDEN {
                ("forbidden", format!("this token's role cannot do this (needs {need:?})"))
            } else {
                ("unauthorized", "a valid `Authorization: Bearer <token>` is required".into())
            };
            s.metrics.admin_denied.with_label_values(&[code]).inc();
            (actor, error(status, code, &msg))
        }
    };
    if !matches!(method, Method::GET | Method::HEAD) {
        let entry = AuditEntry {
            seq: 0,
            at_ms: now_ms(),
            actor,
            method: method.to_string(),
            path,
            status: resp.status().as_u16(),
        };
        if let Err(e) = s.auth.audit(entry).await {
            tracing::error!(message = "audit log write failed", error = %e);
        }
    }
    resp
}

fn fail(e: AuthError) -> Response {
    match e {
        AuthError::Invalid(m) => error(StatusCode::BAD_REQUEST, "bad_request", &m),
        AuthError::NotFound(m) => {
            error(StatusCode::NOT_FOUND, "not_found", &format!("{m} not found"))
        }
        AuthError::Conflict(m) => error(StatusCode::CONFLICT, "conflict", &m),
        AuthError::Storage(m) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &m),
    }
}

/// Creates an admin API token; the answer shows it once.
#[utoipa::path(post, path = "/api/tokens", tag = "access", request_body = CreateToken,
    responses((status = 201, body = TokenView), (status = 400, body = ApiError)))]
pub async fn create_token(State(s): State<AdminState>, b: axum::body::Bytes) -> Response {
    let v: CreateToken = match parse(&b) {
        Ok(v) => v,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", &m),
    };
    let Some(name) = v.name else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "name: required");
    };
    let role = v.role.unwrap_or(Role::Viewer);
    match s.auth.create_token(&name, role).await {
        Ok((t, token)) => {
            let mut view = TokenView::from(&t);
            view.token = Some(token);
            (StatusCode::CREATED, Json(view)).into_response()
        }
        Err(e) => fail(e),
    }
}

/// Every token (never the token itself).
#[utoipa::path(get, path = "/api/tokens", tag = "access",
    responses((status = 200, body = TokenList)))]
pub async fn list_tokens(State(s): State<AdminState>) -> Response {
    match s.auth.tokens() {
        Ok(t) => {
            Json(TokenList { tokens: t.iter().map(TokenView::from).collect() }).into_response()
        }
        Err(e) => fail(e),
    }
}

/// Revokes a token at once.
#[utoipa::path(delete, path = "/api/tokens/{id}", tag = "access",
    params(("id" = String, Path, description = "token id")),
    responses((status = 200, body = TokenView), (status = 404, body = ApiError)))]
pub async fn revoke_token(State(s): State<AdminState>, Path(id): Path<String>) -> Response {
    match s.auth.revoke_token(&id).await {
        Ok(t) => Json(TokenView::from(&t)).into_response(),
        Err(e) => fail(e),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries after this sequence number (the previous page's `nextAfter`).
    after: Option<u64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// The audit log, oldest first: every mutating request with caller, time and status.
#[utoipa::path(get, path = "/api/audit", tag = "access", params(AuditQuery),
    responses((status = 200, body = AuditList)))]
pub async fn audit(State(s): State<AdminState>, Query(q): Query<AuditQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match s.auth.audit_entries(q.after.unwrap_or(0), limit) {
        Ok(entries) => {
            let next_after =
                (entries.len() == limit).then(|| entries.last().map(|e| e.seq)).flatten();
            Json(AuditList { entries, next_after }).into_response()
        }
        Err(e) => fail(e),
    }
}
