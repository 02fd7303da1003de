//! Registry REST endpoints: things (`POST|GET /api/things`, `GET|PATCH|DELETE
//! /api/things/{thing}`) and thing groups (`POST|GET /api/groups`, `GET|DELETE
//! /api/groups/{group}`, `PUT|DELETE /api/groups/{group}/things/{thing}`).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error, AdminState};
use crate::broker::now_ms;
use crate::registry::{Group, RegistryError, Thing};
use crate::shadow::topics::{valid_name, MAX_THING_NAME};

fn bad(m: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", &m.into())
}

fn fail(e: RegistryError) -> Response {
    match e {
        RegistryError::Invalid(m) => bad(m),
        RegistryError::NotFound(m) => {
            error(StatusCode::NOT_FOUND, "not_found", &format!("{m} not found"))
        }
        RegistryError::Conflict(m) => error(StatusCode::CONFLICT, "conflict", &m),
        RegistryError::Storage(m) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &m),
    }
}

fn thing_json(t: &Thing) -> Value {
    json!({
        "thingName": t.name,
        "attributes": t.attributes,
        "groups": t.groups,
        "version": t.version,
        "createdAt": t.created_at,
    })
}

/// Field errors are messages; handlers turn them into 400 answers with [`bad`].
fn body(b: &[u8]) -> Result<Value, String> {
    if b.is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(b) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err("body: must be a JSON object".into()),
    }
}

fn attributes(v: &Value) -> Result<BTreeMap<String, String>, String> {
    match v.get("attributes") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(format!("attributes.{k}: must be a string")),
            })
            .collect(),
        Some(_) => Err("attributes: must be an object of strings".into()),
    }
}

fn check_name(field: &str, name: &str) -> Result<(), String> {
    if valid_name(name, MAX_THING_NAME) {
        Ok(())
    } else {
        Err(format!("{field}: 1 to 128 letters, digits, ':', '_' or '-'"))
    }
}

pub async fn create_thing(State(s): State<AdminState>, b: axum::body::Bytes) -> Response {
    let v = match body(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    let name = v.get("thingName").and_then(Value::as_str).unwrap_or_default().to_string();
    if let Err(m) = check_name("thingName", &name) {
        return bad(m);
    }
    let attributes = match attributes(&v) {
        Ok(a) => a,
        Err(m) => return bad(m),
    };
    let t = Thing {
        name,
        attributes,
        groups: Default::default(),
        created_at: now_ms() / 1000,
        version: 1,
    };
    match s.registry.create_thing(t.clone()).await {
        Ok(()) => (StatusCode::CREATED, Json(thing_json(&t))).into_response(),
        Err(e) => fail(e),
    }
}

#[derive(Deserialize)]
pub struct ThingQuery {
    next: Option<String>,
    limit: Option<usize>,
    /// `name=value`: only things with this attribute value.
    attribute: Option<String>,
}

pub async fn list_things(State(s): State<AdminState>, Query(q): Query<ThingQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, 250);
    let filter = match &q.attribute {
        None => None,
        Some(a) => match a.split_once('=') {
            Some((n, v)) if !n.is_empty() => Some((n, v)),
            _ => return bad("attribute: expected name=value"),
        },
    };
    match s.registry.things(q.next.as_deref(), limit, filter) {
        Ok((things, more)) => {
            let next = more.then(|| things.last().map(|t| t.name.clone())).flatten();
            Json(json!({"things": things.iter().map(thing_json).collect::<Vec<_>>(), "nextToken": next}))
                .into_response()
        }
        Err(e) => fail(e),
    }
}

pub async fn get_thing(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.registry.thing(&name) {
        Ok(Some(t)) => Json(thing_json(&t)).into_response(),
        Ok(None) => fail(RegistryError::NotFound(format!("thing {name}"))),
        Err(e) => fail(e),
    }
}

pub async fn update_thing(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    b: axum::body::Bytes,
) -> Response {
    let v = match body(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    let attrs = match attributes(&v) {
        Ok(a) => a,
        Err(m) => return bad(m),
    };
    let merge = match v.get("merge") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return bad("merge: must be a boolean"),
    };
    let expected = match v.get("expectedVersion") {
        None | Some(Value::Null) => None,
        Some(x) => match x.as_u64() {
            Some(n) => Some(n),
            None => return bad("expectedVersion: must be a non-negative integer"),
        },
    };
    match s.registry.update_attributes(&name, attrs, merge, expected).await {
        Ok(t) => Json(thing_json(&t)).into_response(),
        Err(e) => fail(e),
    }
}

pub async fn delete_thing(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.registry.delete_thing(&name).await {
        Ok(()) => Json(json!({"thingName": name, "deleted": true})).into_response(),
        Err(e) => fail(e),
    }
}

pub async fn create_group(State(s): State<AdminState>, b: axum::body::Bytes) -> Response {
    let v = match body(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    let name = v.get("groupName").and_then(Value::as_str).unwrap_or_default().to_string();
    if let Err(m) = check_name("groupName", &name) {
        return bad(m);
    }
    let description = match v.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) if d.len() <= 2028 => Some(d.clone()),
        Some(_) => return bad("description: a string of at most 2028 bytes"),
    };
    let g = Group { name: name.clone(), description, created_at: now_ms() / 1000, version: 1 };
    match s.registry.create_group(g).await {
        Ok(()) => (StatusCode::CREATED, Json(json!({"groupName": name}))).into_response(),
        Err(e) => fail(e),
    }
}

pub async fn list_groups(State(s): State<AdminState>) -> Response {
    match s.registry.all_groups() {
        Ok(gs) => Json(json!({"groups": gs.iter().map(|g| json!({
            "groupName": g.name, "description": g.description, "createdAt": g.created_at})).collect::<Vec<_>>()}))
        .into_response(),
        Err(e) => fail(e),
    }
}

pub async fn get_group(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let g = match s.registry.group(&name) {
        Ok(Some(g)) => g,
        Ok(None) => return fail(RegistryError::NotFound(format!("group {name}"))),
        Err(e) => return fail(e),
    };
    match s.registry.members(&name) {
        Ok(things) => Json(json!({"groupName": g.name, "description": g.description,
            "createdAt": g.created_at, "things": things}))
        .into_response(),
        Err(e) => fail(e),
    }
}

pub async fn delete_group(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.registry.delete_group(&name).await {
        Ok(()) => Json(json!({"groupName": name, "deleted": true})).into_response(),
        Err(e) => fail(e),
    }
}

pub async fn add_member(
    State(s): State<AdminState>,
    Path((group, thing)): Path<(String, String)>,
) -> Response {
    match s.registry.membership(&group, &thing, true).await {
        Ok(t) => Json(thing_json(&t)).into_response(),
        Err(e) => fail(e),
    }
}

pub async fn remove_member(
    State(s): State<AdminState>,
    Path((group, thing)): Path<(String, String)>,
) -> Response {
    match s.registry.membership(&group, &thing, false).await {
        Ok(t) => Json(thing_json(&t)).into_response(),
        Err(e) => fail(e),
    }
}
