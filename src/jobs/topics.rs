//! Jobs reserved topics, AWS IoT style, under `$aws/things/{thing}/jobs/`: `get`,
//! `start-next`, `{jobId}/get` (`$next` allowed) and `{jobId}/update` are requests, each
//! answered on `/accepted` or `/rejected`; `notify` and `notify-next` are the service's.

use crate::shadow::topics::{valid_name, MAX_THING_NAME};

use super::model::valid_job_id;

/// A jobs request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobsOp {
    /// `jobs/get`: the pending executions.
    GetPending,
    /// `jobs/start-next`.
    StartNext,
    /// `jobs/{jobId}/get`; `None` for `$next`.
    Describe(Option<String>),
    /// `jobs/{jobId}/update`.
    Update(String),
}

/// A parsed request topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsTopic {
    pub thing: String,
    pub op: JobsOp,
}

/// Whether `topic` is under a thing's jobs prefix (requests, replies, notifications).
pub fn is_jobs_topic(topic: &str) -> bool {
    topic
        .strip_prefix("$aws/things/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, rest)| rest == "jobs" || rest.starts_with("jobs/"))
}

/// Parses a request topic; `None` for replies, notifications and anything else.
pub fn parse_request(topic: &str) -> Option<JobsTopic> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let (thing, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("jobs/")?;
    if !valid_name(thing, MAX_THING_NAME) {
        return None;
    }
    let op = match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["get"] => JobsOp::GetPending,
        ["start-next"] => JobsOp::StartNext,
        ["$next", "get"] => JobsOp::Describe(None),
        [id, "get"] if valid_job_id(id) => JobsOp::Describe(Some(id.to_string())),
        [id, "update"] if valid_job_id(id) => JobsOp::Update(id.to_string()),
        _ => return None,
    };
    Some(JobsTopic { thing: thing.into(), op })
}

impl JobsTopic {
    /// The request topic itself.
    pub fn base(&self) -> String {
        let t = &self.thing;
        match &self.op {
            JobsOp::GetPending => format!("$aws/things/{t}/jobs/get"),
            JobsOp::StartNext => format!("$aws/things/{t}/jobs/start-next"),
            JobsOp::Describe(None) => format!("$aws/things/{t}/jobs/$next/get"),
            JobsOp::Describe(Some(id)) => format!("$aws/things/{t}/jobs/{id}/get"),
            JobsOp::Update(id) => format!("$aws/things/{t}/jobs/{id}/update"),
        }
    }

    pub fn reply(&self, kind: &str) -> String {
        format!("{}/{kind}", self.base())
    }
}

/// `$aws/things/{thing}/jobs/notify`.
pub fn notify(thing: &str) -> String {
    format!("$aws/things/{thing}/jobs/notify")
}

/// `$aws/things/{thing}/jobs/notify-next`.
pub fn notify_next(thing: &str) -> String {
    format!("$aws/things/{thing}/jobs/notify-next")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_replies_do_not() {
        let p = |t: &str| parse_request(t).map(|x| x.op);
        assert_eq!(p("$aws/things/t1/jobs/get"), Some(JobsOp::GetPending));
        assert_eq!(p("$aws/things/t1/jobs/start-next"), Some(JobsOp::StartNext));
        assert_eq!(p("$aws/things/t1/jobs/$next/get"), Some(JobsOp::Describe(None)));
        assert_eq!(p("$aws/things/t1/jobs/j-1/get"), Some(JobsOp::Describe(Some("j-1".into()))));
        assert_eq!(p("$aws/things/t1/jobs/j-1/update"), Some(JobsOp::Update("j-1".into())));
        for t in [
            "$aws/things/t1/jobs/get/accepted",
            "$aws/things/t1/jobs/notify",
            "$aws/things/t1/jobs/notify-next",
            "$aws/things/t1/jobs/j-1/update/rejected",
            "$aws/things/t1/jobs/bad id/get",
            "$aws/things/t 1/jobs/get",
            "$aws/things/t1/shadow/get",
        ] {
            assert_eq!(p(t), None, "{t}");
        }
        assert!(is_jobs_topic("$aws/things/t1/jobs/notify"));
        assert!(!is_jobs_topic("$aws/things/t1/shadow/get"));
        let t = parse_request("$aws/things/t1/jobs/j-1/update").unwrap();
        assert_eq!(t.reply("accepted"), "$aws/things/t1/jobs/j-1/update/accepted");
    }
}
