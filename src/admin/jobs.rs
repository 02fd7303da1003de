//! Jobs REST endpoints (the AWS IoT CreateJob / ListJobs / DescribeJob / CancelJob /
//! ListJobExecutionsForJob / ListJobExecutionsForThing family):
//! `POST|GET /api/jobs`, `GET /api/jobs/{id}`, `POST /api/jobs/{id}/cancel`,
//! `GET /api/jobs/{id}/executions`, `GET /api/things/{thing}/jobs`.
//! Definitions are written to the meta group; executions are the scheduler's and the
//! device actors' business.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{error, AdminState};
use crate::broker::now_ms;
use crate::jobs::model::{valid_job_id, AbortCriteria, FailureType, Job, JobStatus, RetryCriteria};
use crate::shadow::topics::{valid_name, MAX_THING_NAME};

/// Largest job document, as AWS IoT allows (32 KiB).
const MAX_DOCUMENT: usize = 32 * 1024;
/// Most targets of one job.
const MAX_TARGETS: usize = 100_000;

fn bad(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", &message.into())
}

/// A field error for a 400 answer.
fn invalid(message: impl Into<String>) -> String {
    message.into()
}

fn internal(message: &str) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

fn obj<'a>(v: &'a Value, field: &str) -> Result<Option<&'a Map<String, Value>>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(invalid(format!("{field}: must be an object"))),
    }
}

fn criteria<'a>(m: Option<&'a Map<String, Value>>, field: &str) -> Result<Vec<&'a Value>, String> {
    match m.and_then(|m| m.get("criteriaList")) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a.iter().collect()),
        Some(_) => Err(invalid(format!("{field}.criteriaList: must be an array"))),
    }
}

fn failure_type(c: &Value, field: &str) -> Result<FailureType, String> {
    c.get("failureType").and_then(Value::as_str).and_then(FailureType::parse).ok_or_else(|| {
        invalid(format!("{field}.failureType: one of FAILED, REJECTED, TIMED_OUT, ALL"))
    })
}

/// Reads a CreateJob body into a job definition and its targets (groups not expanded).
fn parse_job(body: &Value, now: u64) -> Result<(Job, Vec<String>), String> {
    let job_id = body.get("jobId").and_then(Value::as_str).unwrap_or_default();
    if !valid_job_id(job_id) {
        return Err(invalid("jobId: 1 to 64 letters, digits, '-' or '_'"));
    }
    let document = match body.get("document") {
        Some(d @ Value::Object(_)) => d.to_string(),
        _ => return Err(invalid("document: required, a JSON object")),
    };
    if document.len() > MAX_DOCUMENT {
        return Err(invalid(format!("document: at most {MAX_DOCUMENT} bytes")));
    }
    let targets: Vec<String> =
        match body.get("targets") {
            Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_TARGETS => {
                let mut out = Vec::with_capacity(a.len());
                let mut seen = std::collections::HashSet::new();
                for t in a {
                    let valid = |s: &str| match s.strip_prefix("group/") {
                        Some(g) => valid_name(g, MAX_THING_NAME),
                        None => valid_name(s, MAX_THING_NAME),
                    };
                    match t.as_str() {
                        Some(s) if valid(s) => {
                            if seen.insert(s) {
                                out.push(s.to_string());
                            }
                        }
                        _ => return Err(invalid(
                            "targets: thing names or group/NAME (letters, digits, ':', '_', '-')",
                        )),
                    }
                }
                out
            }
            _ => return Err(invalid(format!("targets: required, 1 to {MAX_TARGETS} thing names"))),
        };
    let description = match body.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 2028 => Some(s.clone()),
        Some(_) => return Err(invalid("description: a string of at most 2028 bytes")),
    };
    let max_per_minute =
        match obj(body, "jobExecutionsRolloutConfig")?.and_then(|m| m.get("maximumPerMinute")) {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n @ 1..=1000) => Some(n as u32),
                _ => return Err(invalid("jobExecutionsRolloutConfig.maximumPerMinute: 1 to 1000")),
            },
        };
    let mut abort = Vec::new();
    for c in criteria(obj(body, "abortConfig")?, "abortConfig")? {
        let f = "abortConfig.criteriaList[]";
        if c.get("action").and_then(Value::as_str).unwrap_or("CANCEL") != "CANCEL" {
            return Err(invalid(format!("{f}.action: only CANCEL")));
        }
        let threshold = c
            .get("thresholdPercentage")
            .and_then(Value::as_f64)
            .filter(|p| *p > 0.0 && *p <= 100.0)
            .ok_or_else(|| invalid(format!("{f}.thresholdPercentage: above 0, at most 100")))?;
        let min = c
            .get("minNumberOfExecutedThings")
            .and_then(Value::as_u64)
            .filter(|n| *n >= 1 && *n <= u64::from(u32::MAX))
            .ok_or_else(|| invalid(format!("{f}.minNumberOfExecutedThings: at least 1")))?;
        abort.push(AbortCriteria {
            failure_type: failure_type(c, f)?,
            min_executed: min as u32,
            threshold_percent: threshold,
        });
    }
    let mut retry = Vec::new();
    for c in criteria(obj(body, "jobExecutionsRetryConfig")?, "jobExecutionsRetryConfig")? {
        let f = "jobExecutionsRetryConfig.criteriaList[]";
        let ft = failure_type(c, f)?;
        if ft == FailureType::Rejected {
            return Err(invalid(format!("{f}.failureType: FAILED, TIMED_OUT or ALL")));
        }
        let n = c
            .get("numberOfRetries")
            .and_then(Value::as_u64)
            .filter(|n| *n <= 10)
            .ok_or_else(|| invalid(format!("{f}.numberOfRetries: 0 to 10")))?;
        retry.push(RetryCriteria { failure_type: ft, retries: n as u32 });
    }
    let timeout =
        match obj(body, "timeoutConfig")?.and_then(|m| m.get("inProgressTimeoutInMinutes")) {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n @ 1..=10080) => Some(n as u32),
                _ => return Err(invalid("timeoutConfig.inProgressTimeoutInMinutes: 1 to 10080")),
            },
        };
    let job = Job {
        job_id: job_id.into(),
        document,
        description,
        target_count: targets.len(),
        rolled_out: 0,
        max_per_minute,
        abort,
        retry,
        in_progress_timeout_minutes: timeout,
        status: JobStatus::InProgress,
        force_canceled: false,
        reason: None,
        cancel_done: false,
        created_at: now,
        last_updated_at: now,
        completed_at: None,
        version: 1,
    };
    Ok((job, targets))
}

fn summary(j: &Job) -> Value {
    json!({
        "jobId": j.job_id,
        "status": j.status.as_str(),
        "createdAt": j.created_at,
        "lastUpdatedAt": j.last_updated_at,
        "completedAt": j.completed_at,
        "targets": j.target_count,
    })
}

pub async fn create(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad("body: not valid JSON");
    };
    let (mut job, given) = match parse_job(&body, now_ms() / 1000) {
        Ok(j) => j,
        Err(m) => return bad(m),
    };
    // Groups are expanded to their things now (a snapshot of membership, as AWS's
    // SNAPSHOT jobs do).
    let mut targets: Vec<String> = Vec::with_capacity(given.len());
    let mut seen = std::collections::HashSet::new();
    for t in given {
        let things = match t.strip_prefix("group/") {
            None => vec![t],
            Some(g) => match s.registry.group(g) {
                Ok(Some(_)) => match s.registry.members(g) {
                    Ok(m) => m,
                    Err(e) => return internal(&e.to_string()),
                },
                Ok(None) => return bad(format!("targets: no group {g}")),
                Err(e) => return internal(&e.to_string()),
            },
        };
        for thing in things {
            if seen.insert(thing.clone()) {
                targets.push(thing);
            }
        }
    }
    if targets.is_empty() || targets.len() > MAX_TARGETS {
        return bad(format!("targets: 1 to {MAX_TARGETS} things after expanding groups"));
    }
    job.target_count = targets.len();
    let out = json!({"jobId": job.job_id, "description": job.description});
    match s.jobs.put_job(None, job, Some(targets)).await {
        Ok(true) => (StatusCode::CREATED, Json(out)).into_response(),
        Ok(false) => error(StatusCode::CONFLICT, "conflict", "a job with this jobId exists"),
        Err(e) => internal(&e.message),
    }
}

#[derive(Deserialize)]
pub struct Page {
    /// Jobs after this jobId (the previous page's `nextToken`).
    next: Option<String>,
    limit: Option<usize>,
    /// Only jobs in this status.
    status: Option<String>,
}

pub async fn list(State(s): State<AdminState>, Query(p): Query<Page>) -> Response {
    let limit = p.limit.unwrap_or(100).clamp(1, 250);
    let jobs = match s.jobs.list() {
        Ok(j) => j,
        Err(e) => return internal(&e.message),
    };
    let mut page: Vec<&Job> = jobs
        .iter()
        .filter(|j| p.next.as_ref().is_none_or(|n| &j.job_id > n))
        .filter(|j| p.status.as_ref().is_none_or(|st| j.status.as_str() == st))
        .take(limit + 1)
        .collect();
    let next = (page.len() > limit).then(|| page[limit - 1].job_id.clone());
    page.truncate(limit);
    Json(json!({"jobs": page.iter().map(|j| summary(j)).collect::<Vec<_>>(), "nextToken": next}))
        .into_response()
}

pub async fn describe(State(s): State<AdminState>, Path(id): Path<String>) -> Response {
    let job = match s.jobs.job(&id) {
        Ok(Some(j)) => j,
        Ok(None) => return error(StatusCode::NOT_FOUND, "not_found", "no such job"),
        Err(e) => return internal(&e.message),
    };
    let targets = match s.jobs.targets(&id) {
        Ok(t) => t,
        Err(e) => return internal(&e.message),
    };
    let p = match s.jobs.progress(&id) {
        Ok(p) => p,
        Err(e) => return internal(&e.message),
    };
    let n = |k: &str| p.get(k).copied().unwrap_or(0);
    Json(json!({"job": {
        "jobId": job.job_id,
        "status": job.status.as_str(),
        "description": job.description,
        "document": serde_json::from_str::<Value>(&job.document).unwrap_or(Value::Null),
        "targets": targets,
        "createdAt": job.created_at,
        "lastUpdatedAt": job.last_updated_at,
        "completedAt": job.completed_at,
        "forceCanceled": job.force_canceled,
        "reasonCode": job.reason,
        "jobExecutionsRolloutConfig": {"maximumPerMinute": job.max_per_minute},
        "timeoutConfig": {"inProgressTimeoutInMinutes": job.in_progress_timeout_minutes},
        "jobProcessDetails": {
            "numberOfQueuedThings": n("QUEUED"),
            "numberOfInProgressThings": n("IN_PROGRESS"),
            "numberOfSucceededThings": n("SUCCEEDED"),
            "numberOfFailedThings": n("FAILED"),
            "numberOfTimedOutThings": n("TIMED_OUT"),
            "numberOfRejectedThings": n("REJECTED"),
            "numberOfRemovedThings": n("REMOVED"),
            "numberOfCanceledThings": n("CANCELED"),
            "numberOfPendingRollout": job.target_count - job.rolled_out.min(job.target_count),
        },
    }}))
    .into_response()
}

pub async fn cancel(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return bad("body: not valid JSON"),
        }
    };
    let force = match body.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return bad("force: must be a boolean"),
    };
    let reason = body.get("reasonCode").and_then(Value::as_str).map(String::from);
    for _ in 0..5 {
        let mut job = match s.jobs.job(&id) {
            Ok(Some(j)) => j,
            Ok(None) => return error(StatusCode::NOT_FOUND, "not_found", "no such job"),
            Err(e) => return internal(&e.message),
        };
        if job.status != JobStatus::InProgress {
            return error(
                StatusCode::CONFLICT,
                "invalid_state_transition",
                &format!("job is {}", job.status.as_str()),
            );
        }
        let expect = Some(job.version);
        job.status = JobStatus::Canceled;
        job.force_canceled = force;
        job.reason = reason.clone();
        job.last_updated_at = now_ms() / 1000;
        job.version += 1;
        match s.jobs.put_job(expect, job, None).await {
            Ok(true) => return Json(json!({"jobId": id, "status": "CANCELED"})).into_response(),
            // The scheduler wrote it meanwhile: read again.
            Ok(false) => continue,
            Err(e) => return internal(&e.message),
        }
    }
    error(StatusCode::CONFLICT, "conflict", "job kept changing; try again")
}

fn exec_summary(e: &crate::jobs::model::Execution) -> Value {
    json!({
        "status": e.status.as_str(),
        "queuedAt": e.queued_at,
        "startedAt": e.started_at,
        "lastUpdatedAt": e.last_updated_at,
        "executionNumber": e.execution_number,
        "retryAttempt": e.retries,
    })
}

pub async fn job_executions(State(s): State<AdminState>, Path(id): Path<String>) -> Response {
    match s.jobs.job(&id) {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, "not_found", "no such job"),
        Err(e) => return internal(&e.message),
    }
    match s.jobs.job_executions(&id) {
        Ok(execs) => Json(json!({"executionSummaries": execs.iter().map(|e| json!({
            "thingName": e.thing, "jobExecutionSummary": exec_summary(e)})).collect::<Vec<_>>()}))
        .into_response(),
        Err(e) => internal(&e.message),
    }
}

pub async fn thing_executions(State(s): State<AdminState>, Path(thing): Path<String>) -> Response {
    if !valid_name(&thing, MAX_THING_NAME) {
        return bad("thing: 1 to 128 letters, digits, ':', '_' or '-'");
    }
    match s.jobs.executions(&thing) {
        Ok(execs) => Json(json!({"executionSummaries": execs.iter().map(|e| json!({
            "jobId": e.job_id, "jobExecutionSummary": exec_summary(e)})).collect::<Vec<_>>()}))
        .into_response(),
        Err(e) => internal(&e.message),
    }
}
