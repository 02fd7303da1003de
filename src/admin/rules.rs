//! Rule endpoints: `POST|GET /api/rules`, `GET|PUT|DELETE /api/rules/{rule}`, and
//! `POST /api/rules/test` (what a statement outputs for a message, without storing it
//! or running actions). A statement or template that does not compile is a 400 naming
//! the field and, for SQL, the line and column.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{parse, ApiError};
use super::{error, AdminState};
use crate::broker::now_ms;
use crate::rules::engine::RuleCounts;
use crate::rules::store::{ActionDef, RuleDef, RuleStoreError};
use crate::rules::{Dialect, Input, Rule, RuleError, Value};

/// A rule's definition as written.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleInput {
    /// 1 to 128 letters, digits, `_` or `-` (from the path on PUT).
    pub name: Option<String>,
    pub sql: Option<String>,
    /// `emqx` (default) or `aws`.
    pub dialect: Option<Dialect>,
    pub description: Option<String>,
    /// Default true.
    pub enabled: Option<bool>,
    /// PUT: replaces the list when given.
    pub actions: Option<Vec<ActionInput>>,
    /// PUT only: the version being replaced (409 if it moved).
    pub expected_version: Option<u64>,
}

/// One action: `{"republish": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum ActionInput {
    Republish(RepublishInput),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepublishInput {
    /// Topic template: `alerts/${clientid}`, `${topic(2)}/out`.
    pub topic: String,
    /// Default 0.
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    /// Payload template; the output row as JSON when absent.
    pub payload: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleView {
    pub name: String,
    pub sql: String,
    pub dialect: Dialect,
    pub enabled: bool,
    pub description: Option<String>,
    pub actions: Vec<ActionInput>,
    pub created_at: u64,
    pub updated_at: u64,
    pub version: u64,
    /// This node's counters.
    pub metrics: RuleCounts,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RuleList {
    pub rules: Vec<RuleView>,
}

/// A message to try a statement on.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTest {
    pub sql: String,
    pub dialect: Option<Dialect>,
    pub topic: String,
    /// The payload as text (JSON for most rules).
    #[serde(default)]
    pub payload: String,
    pub clientid: Option<String>,
    pub username: Option<String>,
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    #[serde(default)]
    pub user_properties: Vec<(String, String)>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RuleTestResult {
    /// The rows the rule outputs (none: WHERE was not true).
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Value>,
}

/// A 400 whose body also carries the position of a SQL error.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleApiError {
    pub code: String,
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

fn bad(m: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", &m.into())
}

fn at(message: String, pos: Option<(usize, usize)>) -> Response {
    let body = RuleApiError {
        code: "bad_request".into(),
        message,
        line: pos.map(|p| p.0),
        column: pos.map(|p| p.1),
    };
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

fn fail(e: RuleStoreError) -> Response {
    match e {
        RuleStoreError::Invalid { at: pos, .. } => at(e.to_string(), pos),
        RuleStoreError::NotFound(_) => error(StatusCode::NOT_FOUND, "not_found", &e.to_string()),
        RuleStoreError::Conflict(m) => error(StatusCode::CONFLICT, "conflict", &m),
        RuleStoreError::Storage(m) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &m),
    }
}

fn view(s: &AdminState, d: RuleDef) -> RuleView {
    let metrics = s.rules.counts(&d.name);
    RuleView {
        actions: d
            .actions
            .iter()
            .map(|a| match a {
                ActionDef::Republish { topic, qos, retain, payload } => {
                    ActionInput::Republish(RepublishInput {
                        topic: topic.clone(),
                        qos: *qos,
                        retain: *retain,
                        payload: payload.clone(),
                    })
                }
            })
            .collect(),
        name: d.name,
        sql: d.sql,
        dialect: d.dialect,
        enabled: d.enabled,
        description: d.description,
        created_at: d.created_at,
        updated_at: d.updated_at,
        version: d.version,
        metrics,
    }
}

fn actions(a: Vec<ActionInput>) -> Vec<ActionDef> {
    a.into_iter()
        .map(|a| match a {
            ActionInput::Republish(r) => ActionDef::Republish {
                topic: r.topic,
                qos: r.qos,
                retain: r.retain,
                payload: r.payload,
            },
        })
        .collect()
}

/// Creates a rule (409 if the name exists). It runs on every node once the meta group
/// has applied it (within about 200 ms).
#[utoipa::path(post, path = "/api/rules", tag = "rules", request_body = RuleInput,
    responses((status = 201, body = RuleView), (status = 400, body = RuleApiError),
        (status = 409, body = ApiError)))]
pub async fn create(State(s): State<AdminState>, b: axum::body::Bytes) -> Response {
    let v: RuleInput = match parse(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    let (Some(name), Some(sql)) = (v.name, v.sql) else {
        return bad("name and sql are required");
    };
    let now = now_ms() / 1000;
    let def = RuleDef {
        name,
        sql,
        dialect: v.dialect.unwrap_or_default(),
        enabled: v.enabled.unwrap_or(true),
        description: v.description,
        actions: actions(v.actions.unwrap_or_default()),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    match s.rules.store().put(def.clone(), None).await {
        Ok(()) => {
            s.rules.reload();
            (StatusCode::CREATED, Json(view(&s, def))).into_response()
        }
        Err(RuleStoreError::NotFound(n)) => {
            fail(RuleStoreError::Conflict(format!("rule {n} exists")))
        }
        Err(e) => fail(e),
    }
}

/// Every rule, with this node's counters.
#[utoipa::path(get, path = "/api/rules", tag = "rules",
    responses((status = 200, body = RuleList)))]
pub async fn list(State(s): State<AdminState>) -> Response {
    match s.rules.store().all() {
        Ok(defs) => Json(RuleList { rules: defs.into_iter().map(|d| view(&s, d)).collect() })
            .into_response(),
        Err(e) => fail(e),
    }
}

/// One rule.
#[utoipa::path(get, path = "/api/rules/{rule}", tag = "rules",
    params(("rule" = String, Path, description = "rule name")),
    responses((status = 200, body = RuleView), (status = 404, body = ApiError)))]
pub async fn get(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.rules.store().get(&name) {
        Ok(Some(d)) => Json(view(&s, d)).into_response(),
        Ok(None) => fail(RuleStoreError::NotFound(name)),
        Err(e) => fail(e),
    }
}

/// Replaces a rule's definition (fields left out keep their value; `actions` replaces
/// the list when given).
#[utoipa::path(put, path = "/api/rules/{rule}", tag = "rules", request_body = RuleInput,
    params(("rule" = String, Path, description = "rule name")),
    responses((status = 200, body = RuleView), (status = 400, body = RuleApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn update(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    b: axum::body::Bytes,
) -> Response {
    let v: RuleInput = match parse(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    if v.name.as_ref().is_some_and(|n| *n != name) {
        return bad("name: a rule cannot be renamed");
    }
    let old = match s.rules.store().get(&name) {
        Ok(Some(d)) => d,
        Ok(None) => return fail(RuleStoreError::NotFound(name)),
        Err(e) => return fail(e),
    };
    if v.expected_version.is_some_and(|e| e != old.version) {
        return fail(RuleStoreError::Conflict(format!(
            "rule {name} is at version {}",
            old.version
        )));
    }
    let def = RuleDef {
        sql: v.sql.unwrap_or(old.sql.clone()),
        dialect: v.dialect.unwrap_or(old.dialect),
        enabled: v.enabled.unwrap_or(old.enabled),
        description: v.description.or(old.description.clone()),
        actions: v.actions.map(actions).unwrap_or_else(|| old.actions.clone()),
        updated_at: now_ms() / 1000,
        version: old.version + 1,
        ..old.clone()
    };
    match s.rules.store().put(def.clone(), Some(old.version)).await {
        Ok(()) => {
            s.rules.reload();
            Json(view(&s, def)).into_response()
        }
        Err(e) => fail(e),
    }
}

/// Deletes a rule.
#[utoipa::path(delete, path = "/api/rules/{rule}", tag = "rules",
    params(("rule" = String, Path, description = "rule name")),
    responses((status = 204), (status = 404, body = ApiError)))]
pub async fn delete(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let old = match s.rules.store().get(&name) {
        Ok(Some(d)) => d,
        Ok(None) => return fail(RuleStoreError::NotFound(name)),
        Err(e) => return fail(e),
    };
    match s.rules.store().delete(&name, old.version).await {
        Ok(()) => {
            s.rules.reload();
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => fail(e),
    }
}

/// What a statement outputs for one message (nothing is stored, no action runs).
#[utoipa::path(post, path = "/api/rules/test", tag = "rules", request_body = RuleTest,
    responses((status = 200, body = RuleTestResult), (status = 400, body = RuleApiError)))]
pub async fn test(b: axum::body::Bytes) -> Response {
    let t: RuleTest = match parse(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    let rule = match Rule::compile(&t.sql, t.dialect.unwrap_or_default()) {
        Ok(r) => r,
        Err(e @ RuleError::At { line, column, .. }) => {
            return at(format!("sql: {e}"), Some((line, column)))
        }
        Err(e) => return bad(format!("sql: {e}")),
    };
    if !rule.sources().iter().any(|f| crate::mqtt::topic::matches(f, &t.topic)) {
        return bad(format!("topic: {:?} matches none of the rule's sources", t.topic));
    }
    let now = now_ms() as i64;
    let mut input = Input::message(&t.topic, t.payload.as_bytes());
    input.clientid = t.clientid.as_deref().unwrap_or("");
    input.username = t.username.as_deref();
    input.qos = t.qos.min(2);
    input.retain = t.retain;
    input.timestamp_ms = now;
    input.now_ms = now;
    input.user_props = &t.user_properties;
    match rule.eval(&input) {
        // Each row keeps its SELECT order.
        Ok(rows) => Json(RuleTestResult { rows }).into_response(),
        Err(e) => bad(format!("evaluation: {e}")),
    }
}
