//! Unit tests of the execution state machine and wire shapes (no I/O).

use super::model::*;

fn job() -> Job {
    Job {
        job_id: "j1".into(),
        document: r#"{"op":"reboot"}"#.into(),
        description: None,
        target_count: 1,
        rolled_out: 0,
        max_per_minute: None,
        abort: Vec::new(),
        retry: Vec::new(),
        in_progress_timeout_minutes: None,
        status: JobStatus::InProgress,
        force_canceled: false,
        reason: None,
        cancel_done: false,
        created_at: 1,
        last_updated_at: 1,
        completed_at: None,
        version: 1,
    }
}

#[test]
fn legal_transitions_only() {
    use ExecStatus::*;
    // Devices: QUEUED or IN_PROGRESS to IN_PROGRESS and the device-settable ends.
    for to in [InProgress, Succeeded, Failed, Rejected] {
        assert!(transition(Queued, to, By::Device).is_ok(), "{to:?}");
        assert!(transition(InProgress, to, By::Device).is_ok(), "{to:?}");
    }
    for to in [TimedOut, Canceled, Removed, Queued] {
        let e = transition(InProgress, to, By::Device).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{to:?}");
    }
    // The service: timeouts only from IN_PROGRESS; cancel and remove from either.
    assert!(transition(InProgress, TimedOut, By::System).is_ok());
    assert_eq!(
        transition(Queued, TimedOut, By::System).unwrap_err().code,
        ErrorCode::InvalidStateTransition
    );
    assert!(transition(Queued, Canceled, By::System).is_ok());
    assert!(transition(InProgress, Removed, By::System).is_ok());
    assert_eq!(
        transition(InProgress, Queued, By::System).unwrap_err().code,
        ErrorCode::InvalidStateTransition
    );
    // Terminal states absorb.
    for from in [Succeeded, Failed, TimedOut, Rejected, Removed, Canceled] {
        for to in ExecStatus::ALL {
            for by in [By::Device, By::System] {
                assert_eq!(
                    transition(from, to, by).unwrap_err().code,
                    ErrorCode::TerminalStateReached
                );
            }
        }
    }
}

#[test]
fn execution_updates_bump_version_and_stamp_start() {
    let mut e = Execution::queued(&job(), "t1", 100);
    assert_eq!((e.version, e.execution_number, e.started_at), (1, 1, None));
    e.set_status(ExecStatus::InProgress, By::Device, 105).unwrap();
    assert_eq!((e.version, e.started_at), (2, Some(105)));
    e.set_status(ExecStatus::InProgress, By::Device, 106).unwrap();
    assert_eq!((e.version, e.started_at, e.last_updated_at), (3, Some(105), 106));
    e.timeout_at_ms = Some(1);
    e.set_status(ExecStatus::Succeeded, By::Device, 107).unwrap();
    assert_eq!(e.timeout_at_ms, None);
    let err = e.set_status(ExecStatus::Failed, By::Device, 108).unwrap_err();
    assert_eq!(err.code, ErrorCode::TerminalStateReached);
    assert_eq!(e.version, 4);
}

#[test]
fn next_pending_prefers_in_progress_then_oldest() {
    let j = job();
    let mut a = Execution::queued(&j, "t", 10);
    a.job_id = "a".into();
    let mut b = Execution::queued(&j, "t", 5);
    b.job_id = "b".into();
    let mut c = Execution::queued(&j, "t", 20);
    c.job_id = "c".into();
    assert_eq!(next_pending([&a, &b, &c]).unwrap().job_id, "b");
    c.set_status(ExecStatus::InProgress, By::Device, 21).unwrap();
    assert_eq!(next_pending([&a, &b, &c]).unwrap().job_id, "c");
    c.set_status(ExecStatus::Succeeded, By::Device, 22).unwrap();
    b.set_status(ExecStatus::Rejected, By::Device, 22).unwrap();
    assert_eq!(next_pending([&a, &b, &c]).unwrap().job_id, "a");
    let (ip, q) = pending_lists([&a, &b, &c]);
    assert!(ip.is_empty());
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["jobId"], "a");
}

#[test]
fn wire_shapes_follow_aws() {
    let mut e = Execution::queued(&job(), "t1", 100);
    e.set_status(ExecStatus::InProgress, By::Device, 101).unwrap();
    e.status_details.insert("step".into(), "download".into());
    let full = e.full(Some(r#"{"op":"reboot"}"#));
    assert_eq!(full["jobId"], "j1");
    assert_eq!(full["thingName"], "t1");
    assert_eq!(full["status"], "IN_PROGRESS");
    assert_eq!(full["statusDetails"]["step"], "download");
    assert_eq!(full["jobDocument"]["op"], "reboot");
    assert_eq!(
        (full["versionNumber"].as_u64(), full["executionNumber"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(full["startedAt"], 101);
    assert!(e.full(None).get("jobDocument").is_none());
    let s = e.summary();
    assert!(s.get("status").is_none());
    assert_eq!(s["queuedAt"], 100);
    let err = JobsError::new(ErrorCode::VersionMismatch, "x");
    let p = err.payload(7, Some("tok"));
    assert_eq!(
        (p["code"].as_str(), p["clientToken"].as_str()),
        (Some("VersionMismatch"), Some("tok"))
    );
}

#[test]
fn status_details_and_requests_are_validated() {
    assert!(parse_status_details(Some(&serde_json::json!({"a": "b"}))).unwrap().is_some());
    assert_eq!(
        parse_status_details(Some(&serde_json::json!({"a": 1}))).unwrap_err().code,
        ErrorCode::InvalidRequest
    );
    assert_eq!(parse_request(b"{nope").unwrap_err().code, ErrorCode::InvalidJson);
    assert_eq!(parse_request(b"[]").unwrap_err().code, ErrorCode::InvalidJson);
    assert!(parse_request(b"").unwrap().is_empty());
    assert!(valid_job_id("fw-update_2"));
    assert!(!valid_job_id("a b"));
    assert!(!valid_job_id(&"a".repeat(65)));
    assert!(FailureType::All.matches(ExecStatus::TimedOut));
    assert!(!FailureType::Failed.matches(ExecStatus::Rejected));
}
