//! The job scheduler: one task per node (the meta group's leader; on one node, always).
//! Every tick it rolls jobs out at their `maximumPerMinute`, aborts jobs whose failures
//! cross their criteria, cancels the executions of canceled jobs, completes finished jobs
//! and times out executions whose deadline passed. Executions are changed only by asking
//! the thing's device actor, which stays their single writer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::model::{ExecStatus, Job, JobStatus};
use super::{Jobs, JobsCall};
use crate::broker::now_ms;
use crate::device::Devices;
use crate::telemetry::Metrics;

/// How long the scheduler waits for a device actor to take a call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Device actors asked at once (their Raft writes then share log entries).
const PARALLEL: usize = 512;
/// Parallel rounds one job's rollout may take in a tick.
const ROUNDS_PER_TICK: usize = 8;

pub struct Scheduler {
    jobs: Arc<Jobs>,
    devices: Arc<Devices>,
    metrics: Arc<Metrics>,
    /// Rollout budget per job (executions it may create now), refilled at its rate.
    tokens: HashMap<String, f64>,
    last: Instant,
}

/// Starts the scheduler; it stops when `shutdown` flips.
pub fn spawn(
    jobs: Arc<Jobs>,
    devices: Arc<Devices>,
    metrics: Arc<Metrics>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut s = Scheduler { jobs, devices, metrics, tokens: HashMap::new(), last: Instant::now() };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.wait_for(|s| *s) => true,
            };
            if stop {
                return;
            }
            s.tick().await;
        }
    });
}

impl Scheduler {
    async fn call(&self, thing: &str, call: JobsCall) -> bool {
        let rx = self.devices.jobs(thing, call, None, None);
        matches!(tokio::time::timeout(CALL_TIMEOUT, rx).await, Ok(Ok(o)) if o.ok)
    }

    /// Asks many device actors, [`PARALLEL`] at a time; whether each call was taken, in
    /// order.
    async fn call_all(&self, calls: Vec<(String, JobsCall)>) -> Vec<bool> {
        let mut out = Vec::with_capacity(calls.len());
        let mut calls = calls.into_iter().peekable();
        while calls.peek().is_some() {
            let chunk: Vec<_> = calls.by_ref().take(PARALLEL).collect();
            let futs = chunk.iter().map(|(thing, call)| self.call(thing, call.clone()));
            out.extend(futures_util::future::join_all(futs).await);
        }
        out
    }

    async fn tick(&mut self) {
        // In a cluster only the meta group's leader schedules (its copy of the job
        // definitions is the current one, and one scheduler means one rollout).
        if !self.jobs.leads_meta() {
            self.last = Instant::now();
            return;
        }
        let dt = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        let jobs = match self.jobs.list() {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(message = "job scheduler cannot list jobs", error = %e.message);
                return;
            }
        };
        self.tokens.retain(|id, _| {
            jobs.iter().any(|j| &j.job_id == id && j.status == JobStatus::InProgress)
        });
        for job in jobs {
            match job.status {
                JobStatus::InProgress => self.advance(job, dt).await,
                JobStatus::Canceled if !job.cancel_done => self.cancel(job).await,
                _ => {}
            }
        }
        let due = self.jobs.due_timeouts(now_ms());
        self.call_all(
            due.into_iter().map(|(t, job_id)| (t, JobsCall::Timeout { job_id })).collect(),
        )
        .await;
    }

    /// Abort check, rollout and completion of one job in progress.
    async fn advance(&mut self, mut job: Job, dt: f64) {
        let Ok(progress) = self.jobs.progress(&job.job_id) else { return };
        let now = now_ms() / 1000;
        let finished: u64 = progress
            .iter()
            .filter(|(s, _)| ExecStatus::parse(s).is_some_and(ExecStatus::terminal))
            .map(|(_, n)| n)
            .sum();
        for c in &job.abort {
            let failed: u64 = progress
                .iter()
                .filter(|(s, _)| ExecStatus::parse(s).is_some_and(|s| c.failure_type.matches(s)))
                .map(|(_, n)| n)
                .sum();
            if finished >= u64::from(c.min_executed)
                && finished > 0
                && failed as f64 * 100.0 >= c.threshold_percent * finished as f64
            {
                let expect = Some(job.version);
                job.status = JobStatus::Canceled;
                job.reason =
                    Some(format!("ABORTED: {failed} of {finished} finished executions failed"));
                job.last_updated_at = now;
                job.version += 1;
                tracing::warn!(message = "job aborted", job = %job.job_id, failed, finished);
                let _ = self.jobs.put_job(expect, job, None).await;
                return;
            }
        }
        let remaining = job.target_count - job.rolled_out.min(job.target_count);
        if remaining > 0 {
            let n = match job.max_per_minute {
                None => remaining,
                Some(rate) => {
                    let per_sec = f64::from(rate) * 1000.0 / self.jobs.minute_ms() as f64;
                    let t = self.tokens.entry(job.job_id.clone()).or_insert(per_sec.min(1.0));
                    *t = (*t + per_sec * dt).min(per_sec.max(1.0) * 2.0);
                    let n = (t.floor() as usize).min(remaining);
                    *t -= n as f64;
                    n
                }
            };
            if n == 0 {
                return;
            }
            // A bounded number of parallel rounds per tick, so one big job does not hold
            // up timeouts and other jobs.
            let n = n.min(PARALLEL * ROUNDS_PER_TICK);
            let Ok(targets) = self.jobs.targets(&job.job_id) else { return };
            let end = (job.rolled_out + n).min(targets.len());
            let calls = targets[job.rolled_out.min(end)..end]
                .iter()
                .map(|t| (t.clone(), JobsCall::Queue { job_id: job.job_id.clone() }))
                .collect();
            // The rollout moves past the leading targets that were queued; queueing is
            // idempotent, so later ones that succeeded are harmlessly asked again.
            let done = self.call_all(calls).await.iter().take_while(|ok| **ok).count();
            self.metrics.jobs_executions_created.inc_by(done as u64);
            if done > 0 {
                let expect = Some(job.version);
                job.rolled_out += done;
                job.last_updated_at = now;
                job.version += 1;
                let _ = self.jobs.put_job(expect, job, None).await;
            }
            return;
        }
        let pending = progress.get("QUEUED").copied().unwrap_or(0)
            + progress.get("IN_PROGRESS").copied().unwrap_or(0);
        if pending == 0 {
            let expect = Some(job.version);
            job.status = JobStatus::Completed;
            job.completed_at = Some(now);
            job.last_updated_at = now;
            job.version += 1;
            let _ = self.jobs.put_job(expect, job, None).await;
        }
    }

    /// Cancels the pending executions of a canceled job, then marks it done.
    async fn cancel(&mut self, mut job: Job) {
        let Ok(execs) = self.jobs.job_executions(&job.job_id) else { return };
        let call = JobsCall::Cancel { job_id: job.job_id.clone(), force: job.force_canceled };
        let calls: Vec<_> = execs
            .iter()
            .filter(|e| !e.status.terminal())
            .map(|e| (e.thing.clone(), call.clone()))
            .collect();
        if !self.call_all(calls).await.iter().all(|ok| *ok) {
            // Tried again next tick.
            return;
        }
        let expect = Some(job.version);
        job.cancel_done = true;
        job.version += 1;
        let _ = self.jobs.put_job(expect, job, None).await;
    }
}
