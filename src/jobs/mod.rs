//! Jobs (AWS IoT compatible): job definitions live in the meta group, each thing's
//! executions in its shard. [`Jobs`] serves a device actor's jobs work: the device's
//! reserved-topic requests ([`topics`]), and the service's own calls (queue an execution,
//! time one out, cancel one), returning the replies and notifications to publish.
//! [`scheduler`] rolls jobs out, times executions out, aborts, cancels and completes jobs.
//!
//! Owns: execution rules ([`model`]), the wire shapes, the rollout. Must not touch:
//! sockets or routing (the device actor publishes), nor Raft internals.
//!
//! A thing's device actor is the only writer of its executions; the scheduler asks it.

pub mod model;
pub mod scheduler;
pub mod topics;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::raft::{machine, Command, Groups, Response};
use crate::shadow::Reply;
use crate::telemetry::Metrics;
use model::{By, ErrorCode, ExecStatus, Execution, Job, JobStatus, JobsError};
use topics::{JobsOp, JobsTopic};

/// What a device actor is asked to do about jobs.
#[derive(Debug, Clone)]
pub enum JobsCall {
    /// A request the device published.
    Request { topic: JobsTopic, payload: bytes::Bytes },
    /// The rollout reached this thing: queue an execution (no-op if it has one).
    Queue { job_id: String },
    /// The execution's deadline passed.
    Timeout { job_id: String },
    /// The job was canceled: cancel a queued execution, an in-progress one if `force`.
    Cancel { job_id: String, force: bool },
}

/// What a jobs call came to: the replies and notifications to publish, and whether the
/// call succeeded (a request answered `accepted`, a service call done).
#[derive(Debug, Default)]
pub struct Outcome {
    pub replies: Vec<Reply>,
    pub ok: bool,
}

/// The node's jobs service.
pub struct Jobs {
    groups: Arc<Groups>,
    metrics: Arc<Metrics>,
    /// Milliseconds in a job "minute" (timeouts, rollout rates).
    minute_ms: u64,
}

impl Jobs {
    /// Whether this node leads the meta group (where job definitions are written).
    pub fn leads_meta(&self) -> bool {
        self.groups.is_leader(0)
    }
}

fn internal(e: impl std::fmt::Display) -> JobsError {
    tracing::error!(message = "jobs storage failed", error = %e);
    JobsError::new(ErrorCode::InternalError, "Internal error")
}

fn opt_u64(m: &Map<String, Value>, k: &str) -> Result<Option<u64>, JobsError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            JobsError::new(ErrorCode::InvalidRequest, format!("{k} must be a non-negative integer"))
        }),
    }
}

fn opt_bool(m: &Map<String, Value>, k: &str, default: bool) -> Result<bool, JobsError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(JobsError::new(ErrorCode::InvalidRequest, format!("{k} must be a boolean"))),
    }
}

/// The `rejected` reply to a request refused because the thing has too many waiting.
pub fn throttled(topic: &JobsTopic, payload: &[u8], now_ms: u64) -> Reply {
    let token = model::parse_request(payload).ok().and_then(|m| client_token(&m).ok().flatten());
    let e = JobsError::new(ErrorCode::RequestThrottled, "Too many requests for this thing");
    Reply {
        topic: topic.reply("rejected"),
        payload: e.payload(now_ms / 1000, token.as_deref()),
        to_requester: true,
    }
}

/// The metric label of a device request.
pub fn op_label(op: &JobsOp) -> &'static str {
    match op {
        JobsOp::GetPending => "get_pending",
        JobsOp::StartNext => "start_next",
        JobsOp::Describe(_) => "describe",
        JobsOp::Update(_) => "update",
    }
}

fn client_token(m: &Map<String, Value>) -> Result<Option<String>, JobsError> {
    match m.get("clientToken") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= 64 => Ok(Some(s.clone())),
        Some(_) => Err(JobsError::new(
            ErrorCode::InvalidRequest,
            "clientToken must be a string of at most 64 bytes",
        )),
    }
}

fn with_token(mut v: Value, token: Option<&str>) -> Value {
    if let Some(t) = token {
        v["clientToken"] = Value::String(t.into());
    }
    v
}

/// A step timeout from `stepTimeoutInMinutes` (1 to 10080 minutes, as AWS allows).
fn step_timeout(m: &Map<String, Value>) -> Result<Option<u64>, JobsError> {
    match opt_u64(m, "stepTimeoutInMinutes")? {
        None => Ok(None),
        Some(v) if (1..=10080).contains(&v) => Ok(Some(v)),
        Some(_) => Err(JobsError::new(
            ErrorCode::InvalidRequest,
            "stepTimeoutInMinutes must be 1 to 10080",
        )),
    }
}

impl Jobs {
    pub fn new(groups: Arc<Groups>, metrics: Arc<Metrics>, minute_ms: u64) -> Self {
        Jobs { groups, metrics, minute_ms }
    }

    /// Milliseconds in a job "minute".
    pub fn minute_ms(&self) -> u64 {
        self.minute_ms
    }

    /// A job definition.
    pub fn job(&self, job_id: &str) -> Result<Option<Job>, JobsError> {
        let tree = self.groups.data(0).ok_or_else(|| internal("no meta group"))?;
        machine::read_job(tree, job_id).map_err(internal)
    }

    /// Every execution of `thing`.
    pub fn executions(&self, thing: &str) -> Result<Vec<Execution>, JobsError> {
        let tree =
            self.groups.data(self.groups.shard_of(thing)).ok_or_else(|| internal("no shard"))?;
        let mut out = Vec::new();
        for kv in tree.scan_prefix(machine::thing_exec_prefix(thing)) {
            let (_, v) = kv.map_err(internal)?;
            out.push(crate::store::decode(&v).map_err(internal)?);
        }
        Ok(out)
    }

    async fn write(&self, old: Option<u64>, e: &Execution) -> Result<(), JobsError> {
        let cmd = Command::PutExecution { expect: old, value: e.clone() };
        match self.groups.write_local(self.groups.shard_of(&e.thing), cmd).await {
            Ok(Response::Applied) => Ok(()),
            Ok(_) => {
                Err(JobsError::new(ErrorCode::VersionMismatch, "The execution changed meanwhile"))
            }
            Err(e) => Err(internal(e)),
        }
    }

    /// Sets the deadlines of an execution that is (now) in progress: the job's in-progress
    /// timeout runs from the first start; a step timeout, when given, from now (and
    /// replaces the previous step timer).
    fn set_deadline(&self, job: &Job, e: &mut Execution, step_minutes: Option<u64>, now_ms: u64) {
        if e.job_deadline_ms.is_none() {
            e.job_deadline_ms =
                job.in_progress_timeout_minutes.map(|m| now_ms + u64::from(m) * self.minute_ms);
        }
        if let Some(m) = step_minutes {
            e.step_deadline_ms = Some(now_ms + m * self.minute_ms);
        }
        e.timeout_at_ms = match (e.job_deadline_ms, e.step_deadline_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// After a terminal status: a retry, if the job's criteria allow one.
    fn retry_of(job: &Job, e: &Execution, now: u64) -> Option<Execution> {
        let allowed = job
            .retry
            .iter()
            .filter(|c| c.failure_type.matches(e.status) && e.status != ExecStatus::Rejected)
            .map(|c| c.retries)
            .max()?;
        if e.retries >= allowed || job.status != JobStatus::InProgress {
            return None;
        }
        let mut next = e.clone();
        next.status = ExecStatus::Queued;
        next.status_details.clear();
        next.queued_at = now;
        next.started_at = None;
        next.last_updated_at = now;
        next.version += 1;
        next.execution_number += 1;
        next.timeout_at_ms = None;
        next.job_deadline_ms = None;
        next.step_deadline_ms = None;
        next.retries += 1;
        Some(next)
    }

    /// Serves one call for `thing` and returns the replies and notifications to publish.
    pub async fn handle(&self, thing: &str, call: JobsCall, now_ms: u64) -> Outcome {
        let now = now_ms / 1000;
        let before = match self.executions(thing) {
            Ok(b) => b,
            Err(e) => return Outcome { replies: self.reject(&call, e, now, None), ok: false },
        };
        let res = match &call {
            JobsCall::Request { topic, payload } => match model::parse_request(payload) {
                Ok(req) => match client_token(&req) {
                    Ok(token) => self
                        .request(topic, &req, &before, now_ms)
                        .await
                        .map(|v| {
                            vec![Reply {
                                topic: topic.reply("accepted"),
                                payload: with_token(v, token.as_deref()),
                                to_requester: true,
                            }]
                        })
                        .map_err(|e| (e, token)),
                    Err(e) => Err((e, None)),
                },
                Err(e) => Err((e, None)),
            },
            JobsCall::Queue { job_id } => self
                .queue(thing, job_id, &before, now)
                .await
                .map(|_| Vec::new())
                .map_err(|e| (e, None)),
            JobsCall::Timeout { job_id } => self
                .timeout(thing, job_id, &before, now_ms)
                .await
                .map(|_| Vec::new())
                .map_err(|e| (e, None)),
            JobsCall::Cancel { job_id, force } => self
                .cancel(thing, job_id, *force, &before, now)
                .await
                .map(|_| Vec::new())
                .map_err(|e| (e, None)),
        };
        let mut replies = match res {
            Ok(r) => {
                self.count(&call, "accepted");
                r
            }
            Err((e, token)) => {
                return Outcome { replies: self.reject(&call, e, now, token.as_deref()), ok: false }
            }
        };
        if let Ok(after) = self.executions(thing) {
            replies.extend(self.notifications(thing, &before, &after, now));
        }
        Outcome { replies, ok: true }
    }

    fn count(&self, call: &JobsCall, result: &str) {
        let op = match call {
            JobsCall::Request { topic, .. } => op_label(&topic.op),
            JobsCall::Queue { .. } => "queue",
            JobsCall::Timeout { .. } => "timeout",
            JobsCall::Cancel { .. } => "cancel",
        };
        self.metrics.jobs_requests.with_label_values(&[op, result]).inc();
    }

    fn reject(&self, call: &JobsCall, e: JobsError, now: u64, token: Option<&str>) -> Vec<Reply> {
        self.count(call, e.code.as_str());
        match call {
            JobsCall::Request { topic, .. } => vec![Reply {
                topic: topic.reply("rejected"),
                payload: e.payload(now, token),
                to_requester: true,
            }],
            _ => {
                tracing::warn!(message = "jobs call refused", ?call, code = e.code.as_str(), error = %e.message);
                Vec::new()
            }
        }
    }

    /// `notify` when the pending lists changed, `notify-next` when the next one did.
    fn notifications(
        &self,
        thing: &str,
        before: &[Execution],
        after: &[Execution],
        now: u64,
    ) -> Vec<Reply> {
        let mut out = Vec::new();
        let (b_ip, b_q) = model::pending_lists(before);
        let (a_ip, a_q) = model::pending_lists(after);
        let ids = |l: &[Value]| {
            l.iter().map(|s| (s["jobId"].clone(), s["executionNumber"].clone())).collect::<Vec<_>>()
        };
        if ids(&b_ip) != ids(&a_ip) || ids(&b_q) != ids(&a_q) {
            let mut jobs = Map::new();
            if !a_ip.is_empty() {
                jobs.insert("IN_PROGRESS".into(), Value::Array(a_ip));
            }
            if !a_q.is_empty() {
                jobs.insert("QUEUED".into(), Value::Array(a_q));
            }
            out.push(Reply {
                topic: topics::notify(thing),
                payload: json!({"timestamp": now, "jobs": jobs}),
                to_requester: false,
            });
        }
        let key = |e: Option<&Execution>| e.map(|e| (e.job_id.clone(), e.execution_number));
        let (bn, an) = (model::next_pending(before), model::next_pending(after));
        if key(bn) != key(an) {
            let mut payload = json!({"timestamp": now});
            if let Some(e) = an {
                let doc = self.job(&e.job_id).ok().flatten().map(|j| j.document);
                payload["execution"] = e.full(doc.as_deref());
            }
            out.push(Reply { topic: topics::notify_next(thing), payload, to_requester: false });
        }
        out
    }

    async fn request(
        &self,
        topic: &JobsTopic,
        req: &Map<String, Value>,
        execs: &[Execution],
        now_ms: u64,
    ) -> Result<Value, JobsError> {
        let now = now_ms / 1000;
        match &topic.op {
            JobsOp::GetPending => {
                let (ip, q) = model::pending_lists(execs);
                Ok(json!({"inProgressJobs": ip, "queuedJobs": q, "timestamp": now}))
            }
            JobsOp::StartNext => {
                let details = model::parse_status_details(req.get("statusDetails"))?;
                let step = step_timeout(req)?;
                let Some(next) = model::next_pending(execs) else {
                    return Ok(json!({"timestamp": now}));
                };
                let job = self
                    .job(&next.job_id)?
                    .ok_or_else(|| internal("execution of a missing job"))?;
                let mut e = next.clone();
                e.set_status(ExecStatus::InProgress, By::Device, now)?;
                if let Some(d) = details {
                    e.status_details = d;
                }
                self.set_deadline(&job, &mut e, step, now_ms);
                self.write(Some(next.version), &e).await?;
                Ok(json!({"execution": e.full(Some(&job.document)), "timestamp": now}))
            }
            JobsOp::Describe(id) => {
                let include = opt_bool(req, "includeJobDocument", true)?;
                let number = opt_u64(req, "executionNumber")?;
                let found = match id {
                    None => model::next_pending(execs),
                    Some(id) => execs.iter().find(|e| &e.job_id == id),
                };
                let e =
                    found.filter(|e| number.is_none_or(|n| n == e.execution_number)).ok_or_else(
                        || JobsError::new(ErrorCode::ResourceNotFound, "Job execution not found"),
                    )?;
                let doc = if include { self.job(&e.job_id)?.map(|j| j.document) } else { None };
                Ok(json!({"execution": e.full(doc.as_deref()), "timestamp": now}))
            }
            JobsOp::Update(id) => self.update(id, req, execs, now_ms).await,
        }
    }

    async fn update(
        &self,
        id: &str,
        req: &Map<String, Value>,
        execs: &[Execution],
        now_ms: u64,
    ) -> Result<Value, JobsError> {
        let now = now_ms / 1000;
        let status = match req.get("status") {
            Some(Value::String(s)) => ExecStatus::parse(s).ok_or_else(|| {
                JobsError::new(ErrorCode::InvalidRequest, format!("Unknown status {s}"))
            })?,
            _ => return Err(JobsError::new(ErrorCode::InvalidRequest, "status is required")),
        };
        let details = model::parse_status_details(req.get("statusDetails"))?;
        let expected = opt_u64(req, "expectedVersion")?;
        let number = opt_u64(req, "executionNumber")?;
        let include_state = opt_bool(req, "includeJobExecutionState", false)?;
        let include_doc = opt_bool(req, "includeJobDocument", false)?;
        let step = step_timeout(req)?;
        let cur = execs
            .iter()
            .find(|e| e.job_id == id)
            .filter(|e| number.is_none_or(|n| n == e.execution_number))
            .ok_or_else(|| {
                JobsError::new(ErrorCode::ResourceNotFound, "Job execution not found")
            })?;
        if expected.is_some_and(|v| v != cur.version) {
            let mut err =
                JobsError::new(ErrorCode::VersionMismatch, "expectedVersion does not match");
            err.execution_state = Some(cur.state());
            return Err(err);
        }
        let job = self.job(id)?.ok_or_else(|| internal("execution of a missing job"))?;
        let mut e = cur.clone();
        e.set_status(status, By::Device, now)?;
        if let Some(d) = details {
            e.status_details = d;
        }
        if status == ExecStatus::InProgress {
            self.set_deadline(&job, &mut e, step, now_ms);
        }
        self.write(Some(cur.version), &e).await?;
        if let Some(retry) = Self::retry_of(&job, &e, now) {
            self.write(Some(e.version), &retry).await?;
        }
        let mut v = json!({"timestamp": now});
        if include_state {
            v["executionState"] = e.state();
        }
        if include_doc {
            v["jobDocument"] = serde_json::from_str(&job.document).unwrap_or(Value::Null);
        }
        Ok(v)
    }

    async fn queue(
        &self,
        thing: &str,
        job_id: &str,
        execs: &[Execution],
        now: u64,
    ) -> Result<(), JobsError> {
        if execs.iter().any(|e| e.job_id == job_id) {
            return Ok(());
        }
        let job = self
            .job(job_id)?
            .ok_or_else(|| JobsError::new(ErrorCode::ResourceNotFound, "Job not found"))?;
        if job.status != JobStatus::InProgress {
            return Ok(());
        }
        self.write(None, &Execution::queued(&job, thing, now)).await
    }

    async fn timeout(
        &self,
        thing: &str,
        job_id: &str,
        execs: &[Execution],
        now_ms: u64,
    ) -> Result<(), JobsError> {
        let Some(cur) = execs.iter().find(|e| e.job_id == job_id) else { return Ok(()) };
        if cur.status != ExecStatus::InProgress || cur.timeout_at_ms.is_none_or(|t| t > now_ms) {
            return Ok(());
        }
        let now = now_ms / 1000;
        let mut e = cur.clone();
        e.set_status(ExecStatus::TimedOut, By::System, now)?;
        self.write(Some(cur.version), &e).await?;
        if let Some(job) = self.job(job_id)? {
            if let Some(retry) = Self::retry_of(&job, &e, now) {
                self.write(Some(e.version), &retry).await?;
            }
        }
        tracing::info!(message = "job execution timed out", thing, job = job_id);
        Ok(())
    }

    async fn cancel(
        &self,
        _thing: &str,
        job_id: &str,
        force: bool,
        execs: &[Execution],
        now: u64,
    ) -> Result<(), JobsError> {
        let Some(cur) = execs.iter().find(|e| e.job_id == job_id) else { return Ok(()) };
        let cancel = match cur.status {
            ExecStatus::Queued => true,
            ExecStatus::InProgress => force,
            _ => false,
        };
        if !cancel {
            return Ok(());
        }
        let mut e = cur.clone();
        e.set_status(ExecStatus::Canceled, By::System, now)?;
        self.write(Some(cur.version), &e).await
    }
}

/// How far a job has got: executions by status, over every shard.
pub type Progress = std::collections::BTreeMap<&'static str, u64>;

impl Jobs {
    /// Every job definition.
    pub fn list(&self) -> Result<Vec<Job>, JobsError> {
        let tree = self.groups.data(0).ok_or_else(|| internal("no meta group"))?;
        let mut out = Vec::new();
        for kv in tree.scan_prefix(machine::JOB_PREFIX) {
            let (_, v) = kv.map_err(internal)?;
            out.push(crate::store::decode(&v).map_err(internal)?);
        }
        Ok(out)
    }

    /// Every execution of a job, over every shard.
    pub fn job_executions(&self, job_id: &str) -> Result<Vec<Execution>, JobsError> {
        let prefix = machine::job_index_prefix(job_id);
        let mut out = Vec::new();
        for g in 1..=self.groups.shards() {
            let tree = self.groups.data(g).ok_or_else(|| internal("no shard"))?;
            for kv in tree.scan_prefix(&prefix) {
                let (k, _) = kv.map_err(internal)?;
                let thing = String::from_utf8_lossy(&k[prefix.len()..]).to_string();
                if let Some(e) = machine::read_execution(tree, &thing, job_id).map_err(internal)? {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    /// Executions of a job by status.
    pub fn progress(&self, job_id: &str) -> Result<Progress, JobsError> {
        let mut p: Progress = ExecStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for e in self.job_executions(job_id)? {
            *p.entry(e.status.as_str()).or_default() += 1;
        }
        Ok(p)
    }

    /// A job's target things, in rollout order.
    pub fn targets(&self, job_id: &str) -> Result<Vec<String>, JobsError> {
        let tree = self.groups.data(0).ok_or_else(|| internal("no meta group"))?;
        machine::read_job_targets(tree, job_id).map_err(internal)
    }

    /// Writes a job definition (and at creation its targets) if it is still at version
    /// `expect`.
    pub async fn put_job(
        &self,
        expect: Option<u64>,
        job: Job,
        targets: Option<Vec<String>>,
    ) -> Result<bool, JobsError> {
        match self.groups.write(0, Command::PutJob { expect, value: job, targets }).await {
            Ok(Response::Applied) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(internal(e)),
        }
    }

    /// Deadlines that have passed, over every shard: (thing, job).
    pub fn due_timeouts(&self, now_ms: u64) -> Vec<(String, String)> {
        let mut end = machine::TIMEOUT_PREFIX.to_vec();
        end.extend_from_slice(&(now_ms + 1).to_be_bytes());
        let mut out = Vec::new();
        for g in 1..=self.groups.shards() {
            let Some(tree) = self.groups.data(g) else { continue };
            for (k, _) in
                tree.range(machine::TIMEOUT_PREFIX.to_vec()..end.clone()).filter_map(Result::ok)
            {
                if let Some((_, thing, job)) = machine::parse_timeout_key(&k) {
                    out.push((thing, job));
                }
            }
        }
        out
    }
}
