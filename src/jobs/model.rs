//! Jobs data and rules, pure: job definitions, job executions, the execution state machine
//! and the JSON shapes AWS IoT Jobs uses on the wire. No I/O, no clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Status of one job execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExecStatus {
    Queued,
    InProgress,
    Succeeded,
    Failed,
    TimedOut,
    Rejected,
    Removed,
    Canceled,
}

impl ExecStatus {
    pub const ALL: [ExecStatus; 8] = [
        ExecStatus::Queued,
        ExecStatus::InProgress,
        ExecStatus::Succeeded,
        ExecStatus::Failed,
        ExecStatus::TimedOut,
        ExecStatus::Rejected,
        ExecStatus::Removed,
        ExecStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecStatus::Queued => "QUEUED",
            ExecStatus::InProgress => "IN_PROGRESS",
            ExecStatus::Succeeded => "SUCCEEDED",
            ExecStatus::Failed => "FAILED",
            ExecStatus::TimedOut => "TIMED_OUT",
            ExecStatus::Rejected => "REJECTED",
            ExecStatus::Removed => "REMOVED",
            ExecStatus::Canceled => "CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<ExecStatus> {
        ExecStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Terminal states absorb: nothing moves an execution out of them.
    pub fn terminal(self) -> bool {
        !matches!(self, ExecStatus::Queued | ExecStatus::InProgress)
    }

    /// Whether a device may ask for this status.
    pub fn device_settable(self) -> bool {
        matches!(
            self,
            ExecStatus::InProgress
                | ExecStatus::Succeeded
                | ExecStatus::Failed
                | ExecStatus::Rejected
        )
    }
}

/// Who asks for a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Device,
    /// The service itself: timeouts, cancel, removal.
    System,
}

/// AWS IoT Jobs error codes (the `code` of a `/rejected` reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidTopic,
    InvalidJson,
    InvalidRequest,
    InvalidStateTransition,
    ResourceNotFound,
    VersionMismatch,
    InternalError,
    RequestThrottled,
    TerminalStateReached,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidTopic => "InvalidTopic",
            ErrorCode::InvalidJson => "InvalidJson",
            ErrorCode::InvalidRequest => "InvalidRequest",
            ErrorCode::InvalidStateTransition => "InvalidStateTransition",
            ErrorCode::ResourceNotFound => "ResourceNotFound",
            ErrorCode::VersionMismatch => "VersionMismatch",
            ErrorCode::InternalError => "InternalError",
            ErrorCode::RequestThrottled => "RequestThrottled",
            ErrorCode::TerminalStateReached => "TerminalStateReached",
        }
    }
}

/// A refused jobs request.
#[derive(Debug, Clone, PartialEq)]
pub struct JobsError {
    pub code: ErrorCode,
    pub message: String,
    /// For VersionMismatch: the execution's current state.
    pub execution_state: Option<Value>,
}

impl JobsError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        JobsError { code, message: message.into(), execution_state: None }
    }

    /// The `/rejected` payload.
    pub fn payload(&self, now: u64, client_token: Option<&str>) -> Value {
        let mut v = json!({"code": self.code.as_str(), "message": self.message, "timestamp": now});
        if let Some(t) = client_token {
            v["clientToken"] = Value::String(t.into());
        }
        if let Some(s) = &self.execution_state {
            v["executionState"] = s.clone();
        }
        v
    }
}

/// Checks a transition of an execution.
pub fn transition(from: ExecStatus, to: ExecStatus, by: By) -> Result<(), JobsError> {
    if from.terminal() {
        return Err(JobsError::new(
            ErrorCode::TerminalStateReached,
            format!("Job execution is in a terminal state ({})", from.as_str()),
        ));
    }
    if by == By::Device && !to.device_settable() {
        return Err(JobsError::new(
            ErrorCode::InvalidRequest,
            format!("A device cannot set the status {}", to.as_str()),
        ));
    }
    let ok = match (from, to) {
        (ExecStatus::Queued, ExecStatus::InProgress) => true,
        (ExecStatus::InProgress, ExecStatus::InProgress) => true,
        (_, ExecStatus::Succeeded | ExecStatus::Failed | ExecStatus::Rejected) => true,
        (ExecStatus::InProgress, ExecStatus::TimedOut) => by == By::System,
        (_, ExecStatus::Canceled | ExecStatus::Removed) => by == By::System,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(JobsError::new(
            ErrorCode::InvalidStateTransition,
            format!("Cannot go from {} to {}", from.as_str(), to.as_str()),
        ))
    }
}

/// Failure types in abort and retry criteria.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureType {
    Failed,
    Rejected,
    TimedOut,
    All,
}

impl FailureType {
    pub fn parse(s: &str) -> Option<FailureType> {
        Some(match s {
            "FAILED" => FailureType::Failed,
            "REJECTED" => FailureType::Rejected,
            "TIMED_OUT" => FailureType::TimedOut,
            "ALL" => FailureType::All,
            _ => return None,
        })
    }

    pub fn matches(self, s: ExecStatus) -> bool {
        match self {
            FailureType::Failed => s == ExecStatus::Failed,
            FailureType::Rejected => s == ExecStatus::Rejected,
            FailureType::TimedOut => s == ExecStatus::TimedOut,
            FailureType::All => {
                matches!(s, ExecStatus::Failed | ExecStatus::Rejected | ExecStatus::TimedOut)
            }
        }
    }
}

/// Abort the job once `threshold_percent` of at least `min_executed` finished executions
/// failed this way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbortCriteria {
    pub failure_type: FailureType,
    pub min_executed: u32,
    pub threshold_percent: f64,
}

/// Retry an execution that ended this way, up to `retries` times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryCriteria {
    pub failure_type: FailureType,
    pub retries: u32,
}

/// Status of a job as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    InProgress,
    Canceled,
    Completed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::InProgress => "IN_PROGRESS",
            JobStatus::Canceled => "CANCELED",
            JobStatus::Completed => "COMPLETED",
        }
    }
}

/// A job definition (meta group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub job_id: String,
    /// The job document, JSON text.
    pub document: String,
    pub description: Option<String>,
    /// How many things the job targets. The names, in rollout order, are stored apart
    /// (`Jobs::targets`), so reading a job does not decode them.
    pub target_count: usize,
    /// Targets before this index have an execution (the rollout's position).
    pub rolled_out: usize,
    pub max_per_minute: Option<u32>,
    pub abort: Vec<AbortCriteria>,
    pub retry: Vec<RetryCriteria>,
    pub in_progress_timeout_minutes: Option<u32>,
    pub status: JobStatus,
    pub force_canceled: bool,
    pub reason: Option<String>,
    /// Cancellation has reached every execution.
    pub cancel_done: bool,
    pub created_at: u64,
    pub last_updated_at: u64,
    pub completed_at: Option<u64>,
    pub version: u64,
}

/// One thing's execution of one job (the thing's shard).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub job_id: String,
    pub thing: String,
    pub status: ExecStatus,
    pub status_details: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub queued_at: u64,
    pub started_at: Option<u64>,
    pub last_updated_at: u64,
    /// Increments with every update (AWS `versionNumber`).
    pub version: u64,
    /// Increments with every retry (AWS `executionNumber`).
    pub execution_number: u64,
    /// When the execution times out (milliseconds): the earlier of the two below.
    pub timeout_at_ms: Option<u64>,
    /// The job's in-progress timeout, counted from the first start.
    pub job_deadline_ms: Option<u64>,
    /// The device's step timeout, from its last update that set one.
    pub step_deadline_ms: Option<u64>,
    /// Retries used so far.
    pub retries: u32,
}

impl Execution {
    /// A new queued execution.
    pub fn queued(job: &Job, thing: &str, now: u64) -> Execution {
        Execution {
            job_id: job.job_id.clone(),
            thing: thing.into(),
            status: ExecStatus::Queued,
            status_details: BTreeMap::new(),
            queued_at: now,
            started_at: None,
            last_updated_at: now,
            version: 1,
            execution_number: 1,
            timeout_at_ms: None,
            job_deadline_ms: None,
            step_deadline_ms: None,
            retries: 0,
        }
    }

    /// The `JobExecutionSummary` of `/jobs/get` and `/jobs/notify`.
    pub fn summary(&self) -> Value {
        let mut v = json!({
            "jobId": self.job_id,
            "queuedAt": self.queued_at,
            "lastUpdatedAt": self.last_updated_at,
            "versionNumber": self.version,
            "executionNumber": self.execution_number,
        });
        if let Some(s) = self.started_at {
            v["startedAt"] = s.into();
        }
        v
    }

    /// The `JobExecution` object; `document` is the job document when asked for.
    pub fn full(&self, document: Option<&str>) -> Value {
        let mut v = json!({
            "jobId": self.job_id,
            "thingName": self.thing,
            "status": self.status.as_str(),
            "statusDetails": self.status_details,
            "queuedAt": self.queued_at,
            "lastUpdatedAt": self.last_updated_at,
            "versionNumber": self.version,
            "executionNumber": self.execution_number,
        });
        if let Some(s) = self.started_at {
            v["startedAt"] = s.into();
        }
        if let Some(d) = document {
            v["jobDocument"] = serde_json::from_str(d).unwrap_or(Value::Null);
        }
        v
    }

    /// The `executionState` object of update replies.
    pub fn state(&self) -> Value {
        json!({
            "status": self.status.as_str(),
            "statusDetails": self.status_details,
            "versionNumber": self.version,
        })
    }

    /// Moves to `to`, checking the transition; bumps the version.
    pub fn set_status(&mut self, to: ExecStatus, by: By, now: u64) -> Result<(), JobsError> {
        transition(self.status, to, by)?;
        if to == ExecStatus::InProgress && self.started_at.is_none() {
            self.started_at = Some(now);
        }
        if to.terminal() {
            self.timeout_at_ms = None;
            self.job_deadline_ms = None;
            self.step_deadline_ms = None;
        }
        self.status = to;
        self.last_updated_at = now;
        self.version += 1;
        Ok(())
    }
}

/// Which pending execution comes next: IN_PROGRESS ones first, then QUEUED, oldest first
/// (as AWS orders them).
pub fn next_pending<'a>(execs: impl IntoIterator<Item = &'a Execution>) -> Option<&'a Execution> {
    execs
        .into_iter()
        .filter(|e| !e.status.terminal())
        .min_by_key(|e| (e.status != ExecStatus::InProgress, e.queued_at, e.job_id.clone()))
}

/// The `jobs` object of `/jobs/notify`: pending summaries by status.
pub fn pending_lists<'a>(
    execs: impl IntoIterator<Item = &'a Execution>,
) -> (Vec<Value>, Vec<Value>) {
    let mut all: Vec<&Execution> = execs.into_iter().filter(|e| !e.status.terminal()).collect();
    all.sort_by_key(|e| (e.queued_at, e.job_id.clone()));
    let in_progress =
        all.iter().filter(|e| e.status == ExecStatus::InProgress).map(|e| e.summary());
    let queued = all.iter().filter(|e| e.status == ExecStatus::Queued).map(|e| e.summary());
    (in_progress.collect(), queued.collect())
}

/// Reads `statusDetails`: string values only, as AWS requires.
pub fn parse_status_details(
    v: Option<&Value>,
) -> Result<Option<BTreeMap<String, String>>, JobsError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        out.insert(k.clone(), s.clone());
                    }
                    _ => {
                        return Err(JobsError::new(
                            ErrorCode::InvalidRequest,
                            format!("statusDetails.{k} must be a string"),
                        ))
                    }
                }
            }
            Ok(Some(out))
        }
        Some(_) => {
            Err(JobsError::new(ErrorCode::InvalidRequest, "statusDetails must be an object"))
        }
    }
}

/// Parses a request payload into an object (an empty payload is `{}`).
pub fn parse_request(payload: &[u8]) -> Result<Map<String, Value>, JobsError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(JobsError::new(ErrorCode::InvalidJson, "Request must be a JSON object")),
        Err(e) => Err(JobsError::new(ErrorCode::InvalidJson, format!("Invalid JSON: {e}"))),
    }
}

/// Job ids: 1 to 64 letters, digits, `-` and `_` (AWS's rule).
pub fn valid_job_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
