//! The admin API's request and response bodies as types. Handlers parse requests into
//! them and serialize answers from them, and the OpenAPI document (`/api/openapi.json`)
//! is derived from the same types, so the document describes what is served.
//!
//! Field names follow AWS IoT's control-plane API (camelCase).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::jobs::model::{Execution, Job};
use crate::registry::{Group, Thing};

/// Every error answer: a machine-readable code and a message naming the field at fault.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// For example `bad_request`, `not_found`, `conflict`, `version_conflict`.
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn response(status: StatusCode, code: &str, message: &str) -> Response {
        let body = ApiError { code: code.into(), message: message.into() };
        (status, Json(body)).into_response()
    }
}

/// Parses a JSON request body into `T`. An empty body is read as `{}`. A type error
/// names the field (`targets[2]: invalid type: ...`).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            "body: not valid JSON".to_string()
        } else if path == "." {
            format!("body: {inner}")
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// `/healthz` and `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok` or `ready`.
    pub status: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateThing {
    /// 1 to 128 letters, digits, `:`, `_` or `-`.
    pub thing_name: Option<String>,
    pub attributes: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateThing {
    pub attributes: Option<BTreeMap<String, String>>,
    /// Merge into the stored attributes (default) or replace them.
    pub merge: Option<bool>,
    /// Fails with 409 if the stored version differs.
    pub expected_version: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThingView {
    pub thing_name: String,
    pub attributes: BTreeMap<String, String>,
    pub groups: Vec<String>,
    pub version: u64,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

impl From<&Thing> for ThingView {
    fn from(t: &Thing) -> Self {
        ThingView {
            thing_name: t.name.clone(),
            attributes: t.attributes.clone(),
            groups: t.groups.iter().cloned().collect(),
            version: t.version,
            created_at: t.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThingList {
    pub things: Vec<ThingView>,
    /// Pass as `next` for the following page; absent on the last page.
    pub next_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThingDeleted {
    pub thing_name: String,
    pub deleted: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateGroup {
    pub group_name: Option<String>,
    /// At most 2028 bytes.
    pub description: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupCreated {
    pub group_name: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupSummary {
    pub group_name: String,
    pub description: Option<String>,
    pub created_at: u64,
}

impl From<&Group> for GroupSummary {
    fn from(g: &Group) -> Self {
        GroupSummary {
            group_name: g.name.clone(),
            description: g.description.clone(),
            created_at: g.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    pub groups: Vec<GroupSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    #[serde(flatten)]
    pub group: GroupSummary,
    /// Member thing names.
    pub things: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupDeleted {
    pub group_name: String,
    pub deleted: bool,
}

#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutConfig {
    /// 1 to 1000 executions created per minute.
    pub maximum_per_minute: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbortCriterion {
    /// Only `CANCEL`.
    pub action: Option<String>,
    /// `FAILED`, `REJECTED`, `TIMED_OUT` or `ALL`.
    pub failure_type: Option<String>,
    /// Above 0, at most 100.
    pub threshold_percentage: Option<f64>,
    /// At least 1.
    pub min_number_of_executed_things: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbortConfig {
    #[serde(default)]
    pub criteria_list: Vec<AbortCriterion>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryCriterion {
    /// `FAILED`, `TIMED_OUT` or `ALL`.
    pub failure_type: Option<String>,
    /// 0 to 10.
    pub number_of_retries: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryConfig {
    #[serde(default)]
    pub criteria_list: Vec<RetryCriterion>,
}

#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutConfig {
    /// 1 to 10080 minutes.
    pub in_progress_timeout_in_minutes: Option<u32>,
}

/// AWS IoT's CreateJob, minus what Homeport does not do (continuous jobs, presigned URLs).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateJob {
    /// 1 to 64 letters, digits, `-` or `_`.
    pub job_id: Option<String>,
    /// The job document (a JSON object of at most 32 KiB), sent to devices as is.
    #[schema(value_type = Object)]
    pub document: Option<serde_json::Value>,
    /// Thing names, or `group/NAME` for a thing group's members at creation.
    pub targets: Option<Vec<String>>,
    pub description: Option<String>,
    pub job_executions_rollout_config: Option<RolloutConfig>,
    pub abort_config: Option<AbortConfig>,
    pub job_executions_retry_config: Option<RetryConfig>,
    pub timeout_config: Option<TimeoutConfig>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobCreated {
    pub job_id: String,
    pub description: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    pub job_id: String,
    /// `IN_PROGRESS`, `CANCELED` or `COMPLETED`.
    pub status: String,
    pub created_at: u64,
    pub last_updated_at: u64,
    pub completed_at: Option<u64>,
    /// Number of target things.
    pub targets: usize,
}

impl From<&Job> for JobSummary {
    fn from(j: &Job) -> Self {
        JobSummary {
            job_id: j.job_id.clone(),
            status: j.status.as_str().into(),
            created_at: j.created_at,
            last_updated_at: j.last_updated_at,
            completed_at: j.completed_at,
            targets: j.target_count,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
    pub next_token: Option<String>,
}

/// Executions of a job by state, as AWS's DescribeJob reports them.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobProcessDetails {
    pub number_of_queued_things: u64,
    pub number_of_in_progress_things: u64,
    pub number_of_succeeded_things: u64,
    pub number_of_failed_things: u64,
    pub number_of_timed_out_things: u64,
    pub number_of_rejected_things: u64,
    pub number_of_removed_things: u64,
    pub number_of_canceled_things: u64,
    /// Targets the scheduler has not created executions for yet.
    pub number_of_pending_rollout: usize,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobDetail {
    pub job_id: String,
    pub status: String,
    pub description: Option<String>,
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
    pub targets: Vec<String>,
    pub created_at: u64,
    pub last_updated_at: u64,
    pub completed_at: Option<u64>,
    pub force_canceled: bool,
    pub reason_code: Option<String>,
    pub job_executions_rollout_config: RolloutConfig,
    pub timeout_config: TimeoutConfig,
    pub job_process_details: JobProcessDetails,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobDescription {
    pub job: JobDetail,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelJob {
    /// Also cancel executions that are IN_PROGRESS.
    pub force: Option<bool>,
    pub reason_code: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobCanceled {
    pub job_id: String,
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionSummary {
    /// QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, TIMED_OUT, REJECTED, REMOVED or CANCELED.
    pub status: String,
    pub queued_at: u64,
    pub started_at: Option<u64>,
    pub last_updated_at: u64,
    pub execution_number: u64,
    pub retry_attempt: u32,
}

impl From<&Execution> for ExecutionSummary {
    fn from(e: &Execution) -> Self {
        ExecutionSummary {
            status: e.status.as_str().into(),
            queued_at: e.queued_at,
            started_at: e.started_at,
            last_updated_at: e.last_updated_at,
            execution_number: e.execution_number,
            retry_attempt: e.retries,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThingExecution {
    pub thing_name: String,
    pub job_execution_summary: ExecutionSummary,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobExecutions {
    pub execution_summaries: Vec<ThingExecution>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobOfThing {
    pub job_id: String,
    pub job_execution_summary: ExecutionSummary,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThingExecutions {
    pub execution_summaries: Vec<JobOfThing>,
}
