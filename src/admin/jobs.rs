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
use serde_json::Value;
use utoipa::IntoParams;

use super::api::{
    parse, ApiError, CancelJob, CreateJob, ExecutionSummary, JobCanceled, JobCreated,
    JobDescription, JobDetail, JobExecutions, JobList, JobOfThing, JobProcessDetails, JobSummary,
    RolloutConfig, ThingExecution, ThingExecutions, TimeoutConfig,
};
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

fn internal(message: &str) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

fn failure_type(t: Option<&str>, field: &str) -> Result<FailureType, String> {
    t.and_then(FailureType::parse)
        .ok_or_else(|| format!("{field}.failureType: one of FAILED, REJECTED, TIMED_OUT, ALL"))
}

fn targets(given: Option<Vec<String>>) -> Result<Vec<String>, String> {
    let given = given.unwrap_or_default();
    if given.is_empty() || given.len() > MAX_TARGETS {
        return Err(format!("targets: required, 1 to {MAX_TARGETS} thing names"));
    }
    let valid = |s: &str| match s.strip_prefix("group/") {
        Some(g) => valid_name(g, MAX_THING_NAME),
        None => valid_name(s, MAX_THING_NAME),
    };
    let mut out = Vec::with_capacity(given.len());
    let mut seen = std::collections::HashSet::new();
    for t in given {
        if !valid(&t) {
            return Err(
                "targets: thing names or group/NAME (letters, digits, ':', '_', '-')".into()
            );
        }
        if seen.insert(t.clone()) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Checks a CreateJob body and makes the job definition and its targets (groups not
/// expanded yet).
fn parse_job(body: CreateJob, now: u64) -> Result<(Job, Vec<String>), String> {
    let job_id = body.job_id.unwrap_or_default();
    if !valid_job_id(&job_id) {
        return Err("jobId: 1 to 64 letters, digits, '-' or '_'".into());
    }
    let document = match body.document {
        Some(d @ Value::Object(_)) => d.to_string(),
        _ => return Err("document: required, a JSON object".into()),
    };
    if document.len() > MAX_DOCUMENT {
        return Err(format!("document: at most {MAX_DOCUMENT} bytes"));
    }
    let targets = targets(body.targets)?;
    if body.description.as_ref().is_some_and(|d| d.len() > 2028) {
        return Err("description: a string of at most 2028 bytes".into());
    }
    let max_per_minute = body.job_executions_rollout_config.and_then(|c| c.maximum_per_minute);
    if max_per_minute.is_some_and(|n| !(1..=1000).contains(&n)) {
        return Err("jobExecutionsRolloutConfig.maximumPerMinute: 1 to 1000".into());
    }
    let mut abort = Vec::new();
    for c in body.abort_config.map(|a| a.criteria_list).unwrap_or_default() {
        let f = "abortConfig.criteriaList[]";
        if c.action.as_deref().unwrap_or("CANCEL") != "CANCEL" {
            return Err(format!("{f}.action: only CANCEL"));
        }
        let threshold = c
            .threshold_percentage
            .filter(|p| *p > 0.0 && *p <= 100.0)
            .ok_or_else(|| format!("{f}.thresholdPercentage: above 0, at most 100"))?;
        let min = c
            .min_number_of_executed_things
            .filter(|n| *n >= 1 && *n <= u64::from(u32::MAX))
            .ok_or_else(|| format!("{f}.minNumberOfExecutedThings: at least 1"))?;
        abort.push(AbortCriteria {
            failure_type: failure_type(c.failure_type.as_deref(), f)?,
            min_executed: min as u32,
            threshold_percent: threshold,
        });
    }
    let mut retry = Vec::new();
    for c in body.job_executions_retry_config.map(|r| r.criteria_list).unwrap_or_default() {
        let f = "jobExecutionsRetryConfig.criteriaList[]";
        let ft = failure_type(c.failure_type.as_deref(), f)?;
        if ft == FailureType::Rejected {
            return Err(format!("{f}.failureType: FAILED, TIMED_OUT or ALL"));
        }
        let n = c
            .number_of_retries
            .filter(|n| *n <= 10)
            .ok_or_else(|| format!("{f}.numberOfRetries: 0 to 10"))?;
        retry.push(RetryCriteria { failure_type: ft, retries: n as u32 });
    }
    let timeout = body.timeout_config.and_then(|t| t.in_progress_timeout_in_minutes);
    if timeout.is_some_and(|n| !(1..=10080).contains(&n)) {
        return Err("timeoutConfig.inProgressTimeoutInMinutes: 1 to 10080".into());
    }
    let job = Job {
        job_id,
        document,
        description: body.description,
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

/// Creates a job; executions are created for its targets at the rollout rate.
#[utoipa::path(post, path = "/api/jobs", tag = "jobs", request_body = CreateJob,
    responses((status = 201, body = JobCreated), (status = 400, body = ApiError),
        (status = 409, description = "a job with this jobId exists", body = ApiError)))]
pub async fn create(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    let (mut job, given) = match parse(&body).and_then(|b| parse_job(b, now_ms() / 1000)) {
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
    let out = JobCreated { job_id: job.job_id.clone(), description: job.description.clone() };
    match s.jobs.put_job(None, job, Some(targets)).await {
        Ok(true) => (StatusCode::CREATED, Json(out)).into_response(),
        Ok(false) => error(StatusCode::CONFLICT, "conflict", "a job with this jobId exists"),
        Err(e) => internal(&e.message),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Jobs after this jobId (the previous page's `nextToken`).
    next: Option<String>,
    /// Page size, 1 to 250 (default 100).
    limit: Option<usize>,
    /// Only jobs in this status.
    status: Option<String>,
}

/// Lists jobs by id, a page at a time.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", params(Page),
    responses((status = 200, body = JobList)))]
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
    let next_token = (page.len() > limit).then(|| page[limit - 1].job_id.clone());
    page.truncate(limit);
    let jobs = page.into_iter().map(JobSummary::from).collect();
    Json(JobList { jobs, next_token }).into_response()
}

/// A job with its execution counts by state.
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobDescription), (status = 404, body = ApiError)))]
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
    let n = |k: &str| p.get(k).copied().unwrap_or(0) as u64;
    let job_process_details = JobProcessDetails {
        number_of_queued_things: n("QUEUED"),
        number_of_in_progress_things: n("IN_PROGRESS"),
        number_of_succeeded_things: n("SUCCEEDED"),
        number_of_failed_things: n("FAILED"),
        number_of_timed_out_things: n("TIMED_OUT"),
        number_of_rejected_things: n("REJECTED"),
        number_of_removed_things: n("REMOVED"),
        number_of_canceled_things: n("CANCELED"),
        number_of_pending_rollout: job.target_count - job.rolled_out.min(job.target_count),
    };
    let job = JobDetail {
        status: job.status.as_str().into(),
        document: serde_json::from_str::<Value>(&job.document).unwrap_or(Value::Null),
        targets,
        created_at: job.created_at,
        last_updated_at: job.last_updated_at,
        completed_at: job.completed_at,
        force_canceled: job.force_canceled,
        reason_code: job.reason,
        job_executions_rollout_config: RolloutConfig { maximum_per_minute: job.max_per_minute },
        timeout_config: TimeoutConfig {
            in_progress_timeout_in_minutes: job.in_progress_timeout_minutes,
        },
        job_process_details,
        job_id: job.job_id,
        description: job.description,
    };
    Json(JobDescription { job }).into_response()
}

/// Cancels a job: queued executions are canceled, and with `force` those in progress too.
#[utoipa::path(post, path = "/api/jobs/{id}/cancel", tag = "jobs", request_body = CancelJob,
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobCanceled), (status = 400, body = ApiError),
        (status = 404, body = ApiError),
        (status = 409, description = "the job is not in progress", body = ApiError)))]
pub async fn cancel(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let body: CancelJob = match parse(&body) {
        Ok(b) => b,
        Err(m) => return bad(m),
    };
    let force = body.force.unwrap_or(false);
    let reason = body.reason_code;
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
            Ok(true) => {
                let status = "CANCELED".to_string();
                return Json(JobCanceled { job_id: id, status }).into_response();
            }
            // The scheduler wrote it meanwhile: read again.
            Ok(false) => continue,
            Err(e) => return internal(&e.message),
        }
    }
    error(StatusCode::CONFLICT, "conflict", "job kept changing; try again")
}

/// Every execution of a job, by thing.
#[utoipa::path(get, path = "/api/jobs/{id}/executions", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobExecutions), (status = 404, body = ApiError)))]
pub async fn job_executions(State(s): State<AdminState>, Path(id): Path<String>) -> Response {
    match s.jobs.job(&id) {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, "not_found", "no such job"),
        Err(e) => return internal(&e.message),
    }
    match s.jobs.job_executions(&id) {
        Ok(execs) => {
            let execution_summaries = execs
                .iter()
                .map(|e| ThingExecution {
                    thing_name: e.thing.clone(),
                    job_execution_summary: ExecutionSummary::from(e),
                })
                .collect();
            Json(JobExecutions { execution_summaries }).into_response()
        }
        Err(e) => internal(&e.message),
    }
}

/// Every job execution of a thing.
#[utoipa::path(get, path = "/api/things/{thing}/jobs", tag = "jobs",
    params(("thing" = String, Path, description = "thing name")),
    responses((status = 200, body = ThingExecutions), (status = 400, body = ApiError)))]
pub async fn thing_executions(State(s): State<AdminState>, Path(thing): Path<String>) -> Response {
    if !valid_name(&thing, MAX_THING_NAME) {
        return bad("thing: 1 to 128 letters, digits, ':', '_' or '-'");
    }
    match s.jobs.executions(&thing) {
        Ok(execs) => {
            let execution_summaries = execs
                .iter()
                .map(|e| JobOfThing {
                    job_id: e.job_id.clone(),
                    job_execution_summary: ExecutionSummary::from(e),
                })
                .collect();
            Json(ThingExecutions { execution_summaries }).into_response()
        }
        Err(e) => internal(&e.message),
    }
}
