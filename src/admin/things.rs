//! Registry REST endpoints: things (`POST|GET /api/things`, `GET|PATCH|DELETE
//! /api/things/{thing}`) and thing groups (`POST|GET /api/groups`, `GET|DELETE
//! /api/groups/{group}`, `PUT|DELETE /api/groups/{group}/things/{thing}`).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::api::{
    parse, ApiError, CreateGroup, CreateThing, GroupCreated, GroupDeleted, GroupList, GroupSummary,
    GroupView, ThingDeleted, ThingList, ThingView, UpdateThing,
};
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

fn thing_json(t: &Thing) -> Json<ThingView> {
    Json(ThingView::from(t))
}

fn attributes(a: Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    a.unwrap_or_default()
}

fn check_name(field: &str, name: &str) -> Result<(), String> {
    if valid_name(name, MAX_THING_NAME) {
        Ok(())
    } else {
        Err(format!("{field}: 1 to 128 letters, digits, ':', '_' or '-'"))
    }
}

/// Registers a thing.
#[utoipa::path(post, path = "/api/things", tag = "things", request_body = CreateThing,
    responses((status = 201, body = ThingView), (status = 400, body = ApiError),
        (status = 409, description = "the thing exists", body = ApiError)))]
pub async fn create_thing(State(s): State<AdminState>, b: axum::body::Bytes) -> Response {
    let v: CreateThing = match parse(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    let name = v.thing_name.unwrap_or_default();
    if let Err(m) = check_name("thingName", &name) {
        return bad(m);
    }
    let t = Thing {
        name,
        attributes: attributes(v.attributes),
        groups: Default::default(),
        created_at: now_ms() / 1000,
        version: 1,
    };
    match s.registry.create_thing(t.clone()).await {
        Ok(()) => (StatusCode::CREATED, thing_json(&t)).into_response(),
        Err(e) => fail(e),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ThingQuery {
    /// The previous page's `nextToken`.
    next: Option<String>,
    /// Page size, 1 to 250 (default 100).
    limit: Option<usize>,
    /// `name=value`: only things with this attribute value.
    attribute: Option<String>,
}

/// Lists things by name, a page at a time.
#[utoipa::path(get, path = "/api/things", tag = "things", params(ThingQuery),
    responses((status = 200, body = ThingList), (status = 400, body = ApiError)))]
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
            let next_token = more.then(|| things.last().map(|t| t.name.clone())).flatten();
            let things = things.iter().map(ThingView::from).collect();
            Json(ThingList { things, next_token }).into_response()
        }
        Err(e) => fail(e),
    }
}

/// One thing.
#[utoipa::path(get, path = "/api/things/{thing}", tag = "things",
    params(("thing" = String, Path, description = "thing name")),
    responses((status = 200, body = ThingView), (status = 404, body = ApiError)))]
pub async fn get_thing(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.registry.thing(&name) {
        Ok(Some(t)) => thing_json(&t).into_response(),
        Ok(None) => fail(RegistryError::NotFound(format!("thing {name}"))),
        Err(e) => fail(e),
    }
}

/// Merges or replaces a thing's attributes.
#[utoipa::path(patch, path = "/api/things/{thing}", tag = "things", request_body = UpdateThing,
    params(("thing" = String, Path, description = "thing name")),
    responses((status = 200, body = ThingView), (status = 400, body = ApiError),
        (status = 404, body = ApiError),
        (status = 409, description = "expectedVersion does not match", body = ApiError)))]
pub async fn update_thing(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    b: axum::body::Bytes,
) -> Response {
    let v: UpdateThing = match parse(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    let merge = v.merge.unwrap_or(true);
    match s
        .registry
        .update_attributes(&name, attributes(v.attributes), merge, v.expected_version)
        .await
    {
        Ok(t) => thing_json(&t).into_response(),
        Err(e) => fail(e),
    }
}

/// Deletes a thing (and its group memberships).
#[utoipa::path(delete, path = "/api/things/{thing}", tag = "things",
    params(("thing" = String, Path, description = "thing name")),
    responses((status = 200, body = ThingDeleted), (status = 404, body = ApiError)))]
pub async fn delete_thing(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    // Its credentials are deleted with it (in the same command); their connections close.
    let credentials = s.auth.credentials(&name).unwrap_or_default();
    match s.registry.delete_thing(&name).await {
        Ok(()) => {
            for c in credentials {
                s.auth.close_connections_of(&c.id);
            }
            Json(ThingDeleted { thing_name: name, deleted: true }).into_response()
        }
        Err(e) => fail(e),
    }
}

/// Creates a thing group.
#[utoipa::path(post, path = "/api/groups", tag = "groups", request_body = CreateGroup,
    responses((status = 201, body = GroupCreated), (status = 400, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn create_group(State(s): State<AdminState>, b: axum::body::Bytes) -> Response {
    let v: CreateGroup = match parse(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    let name = v.group_name.unwrap_or_default();
    if let Err(m) = check_name("groupName", &name) {
        return bad(m);
    }
    if v.description.as_ref().is_some_and(|d| d.len() > 2028) {
        return bad("description: a string of at most 2028 bytes");
    }
    let g = Group {
        name: name.clone(),
        description: v.description,
        created_at: now_ms() / 1000,
        version: 1,
    };
    match s.registry.create_group(g).await {
        Ok(()) => (StatusCode::CREATED, Json(GroupCreated { group_name: name })).into_response(),
        Err(e) => fail(e),
    }
}

/// Every thing group.
#[utoipa::path(get, path = "/api/groups", tag = "groups",
    responses((status = 200, body = GroupList)))]
pub async fn list_groups(State(s): State<AdminState>) -> Response {
    match s.registry.all_groups() {
        Ok(gs) => {
            Json(GroupList { groups: gs.iter().map(GroupSummary::from).collect() }).into_response()
        }
        Err(e) => fail(e),
    }
}

/// A thing group and its members.
#[utoipa::path(get, path = "/api/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "group name")),
    responses((status = 200, body = GroupView), (status = 404, body = ApiError)))]
pub async fn get_group(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let g = match s.registry.group(&name) {
        Ok(Some(g)) => g,
        Ok(None) => return fail(RegistryError::NotFound(format!("group {name}"))),
        Err(e) => return fail(e),
    };
    match s.registry.members(&name) {
        Ok(things) => Json(GroupView { group: GroupSummary::from(&g), things }).into_response(),
        Err(e) => fail(e),
    }
}

/// Deletes a thing group (its things stay).
#[utoipa::path(delete, path = "/api/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "group name")),
    responses((status = 200, body = GroupDeleted), (status = 404, body = ApiError)))]
pub async fn delete_group(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.registry.delete_group(&name).await {
        Ok(()) => Json(GroupDeleted { group_name: name, deleted: true }).into_response(),
        Err(e) => fail(e),
    }
}

/// Adds a thing to a group.
#[utoipa::path(put, path = "/api/groups/{group}/things/{thing}", tag = "groups",
    params(("group" = String, Path, description = "group name"),
        ("thing" = String, Path, description = "thing name")),
    responses((status = 200, body = ThingView), (status = 404, body = ApiError)))]
pub async fn add_member(
    State(s): State<AdminState>,
    Path((group, thing)): Path<(String, String)>,
) -> Response {
    match s.registry.membership(&group, &thing, true).await {
        Ok(t) => thing_json(&t).into_response(),
        Err(e) => fail(e),
    }
}

/// Removes a thing from a group.
#[utoipa::path(delete, path = "/api/groups/{group}/things/{thing}", tag = "groups",
    params(("group" = String, Path, description = "group name"),
        ("thing" = String, Path, description = "thing name")),
    responses((status = 200, body = ThingView), (status = 404, body = ApiError)))]
pub async fn remove_member(
    State(s): State<AdminState>,
    Path((group, thing)): Path<(String, String)>,
) -> Response {
    match s.registry.membership(&group, &thing, false).await {
        Ok(t) => thing_json(&t).into_response(),
        Err(e) => fail(e),
    }
}
